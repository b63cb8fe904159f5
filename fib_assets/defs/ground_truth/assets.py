"""Ground-truth crops: curators' annotations imported as revisions of dense label crops."""

from typing import Any

import dagster as dg
import pandas as pd

import fib_assets.core.formats.paintera as paintera_module
from fib_assets.core import labels
from fib_assets.core import storage as object_storage
from fib_assets.core.formats.paintera import OmeZarrImage
from fib_assets.core.preview import markdown_image
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.ground_truth import checks
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource

OWNERS = ["team:curation"]
GROUP = "ground_truth"
RAW_VOLUME = dg.AssetKey("raw_volume")


@dg.asset(
    partitions_def=regions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"zarr", "n5", "parquet"},
    code_version=code_version_of(labels, paintera_module),
    deps=[RAW_VOLUME],
    check_specs=checks.GROUND_TRUTH_CHECKS,
)
def ground_truth_crops(
    context: dg.AssetExecutionContext, storage: StorageResource, annotations: AnnotationsResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Dense label crops of a region (COSEM/CellMap class ids, uint8, Zarr v3) with their ROI in
    the raw volume's voxels, imported from curators' Paintera/CellMap/TIFF exports in the
    annotations inbox. Every import of a new or corrected annotation is a new revision (number,
    annotator, minutes spent, source checksum) with a new data version, so every model trained
    on the previous one shows as stale. Bad input fails the run naming the container, and the
    previous revision stays current; a revision becomes current only when its blocking checks
    pass."""
    region = context.partition_key
    raw = latest_materialization(context.instance, RAW_VOLUME, region)
    if raw is None or "dagster/uri" not in raw["metadata"]:
        raise dg.Failure(f"raw_volume[{region}] is not materialized: crops need its voxel grid")
    raw_uri = str(raw["metadata"]["dagster/uri"])
    grid = labels.raw_grid(raw_uri)
    # a local folder or an s3:// prefix: revisions are published through core.storage (the
    # annotations inbox itself stays a filesystem path, a shared ReadWriteMany volume)
    store = labels.RevisionStore(storage.asset_url("ground_truth_crops", region))
    scan = labels.scan_inbox(annotations.inbox_path(), region)
    for name, why in scan.pending.items():
        context.log.info(f"{region}: waiting for {name}: {why}")
    try:
        result = labels.import_revision(
            store,
            scan,
            grid,
            annotations.class_map(),
            min_annotated_fraction=annotations.min_annotated_fraction,
        )
    except labels.LabelImportError as err:
        current = store.current()
        kept = f"revision {current.number} stays current" if current else "no revision is current"
        raise dg.Failure(
            description=f"annotation import failed, {kept}: {err}",
            metadata={"container": err.container, "problem": err.problem},
        ) from err
    revision = result.revision
    context.log.info(
        f"{region}: {'reused' if result.reused else 'wrote'} revision {revision.number}"
    )
    if not result.accepted:
        context.log.warning(f"{region}: revision {revision.number} failed blocking checks")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(revision.data_version),
        metadata=_metadata(result, annotations.class_map(), grid, raw, raw_uri),
        check_results=checks.ground_truth_results(result.checks),
    )


def _crops_table(revision: labels.Revision) -> str:
    rows = [
        "| crop | split | ROI offset (z,y,x) | shape (raw vox) | factor | annotated | "
        "annotator | minutes | imported in |",
        "|" + "---|" * 9,
    ]
    for c in revision.crops:
        rows.append(
            f"| {c.name} | {c.split} | {list(c.roi.offset)} | {list(c.roi.shape)} | "
            f"{list(c.factor)} | {c.annotated_fraction:.1%} | {c.annotator or ''} | "
            f"{'' if c.minutes_spent is None else c.minutes_spent} | rev {c.imported_in} |"
        )
    return "\n".join(rows)


def _md_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append(
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
        )
    return "\n".join(lines)


def _metadata(
    result: labels.ImportResult,
    class_map: labels.ClassMap,
    grid: labels.RawGrid,
    raw: dict[str, Any],
    raw_uri: str,
) -> dict[str, Any]:
    revision, current, plan = result.revision, result.current, result.plan
    stats = revision.label_stats()
    image = OmeZarrImage(raw_uri)
    png = labels.revision_overlay_png(revision, image.read, class_map)
    minutes = [c.minutes_spent for c in revision.crops if c.minutes_spent is not None]
    return {
        "dagster/uri": dg.MetadataValue.path(revision.location),
        "revision": revision.number,
        "current_revision": current.number if current else -1,
        "accepted": result.accepted,
        "reused_existing": result.reused,
        "n_crops": len(revision.crops),
        "n_train": sum(c.split == "train" for c in revision.crops),
        "n_test": sum(c.split == "test" for c in revision.crops),
        "annotated_voxels": int(stats.loc[stats["class_id"] != 0, "voxels"].sum()),
        "curator_minutes": float(sum(minutes)),
        "annotators": dg.MetadataValue.json(sorted({c.annotator or "?" for c in revision.crops})),
        "crops": dg.MetadataValue.md(_crops_table(revision)),
        "crop_checksums": dg.MetadataValue.json({c.name: c.checksum for c in revision.crops}),
        "sources": dg.MetadataValue.json({c.name: c.source for c in revision.crops}),
        "imported": dg.MetadataValue.json(list(revision.imported)),
        "carried_over": dg.MetadataValue.json(list(revision.carried_over)),
        "superseded": dg.MetadataValue.json(list(revision.superseded)),
        "plan": dg.MetadataValue.json(plan.to_dict()),
        "label_stats": dg.MetadataValue.path(
            object_storage.join(revision.location, "label_stats.parquet")
        ),
        "class_summary": dg.MetadataValue.md(_md_table(labels.class_summary(stats, class_map))),
        "overlay": dg.MetadataValue.md(markdown_image(png, "crops with class overlay")),
        "raw_volume": dg.MetadataValue.json(
            {
                "uri": raw_uri,
                "data_version": raw.get("data_version"),
                "storage_id": raw.get("storage_id"),
                "grid": grid.to_dict(),
            }
        ),
        "class_map": dg.MetadataValue.json(class_map.to_dict()),
    }
