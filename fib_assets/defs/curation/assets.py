"""The curator loop: proofreading_tasks[region] (blocks where the models are least sure, exported
as Paintera containers with a task list) → simulated_corrections[region] (an oracle curator on
held-out truth, with an effort model, submitting corrected containers to the annotations inbox,
exactly where a person's corrections arrive; ground_truth_crops then makes the next revision).
Logic lives in fib_assets/core/curation.

Storage: both run on a local or an ``s3://`` storage root through fib_assets.core.storage
(predictions are read where they are; the task folder is exported locally and published, on S3
uploaded, read back and marked complete last). The annotations inbox the corrections go to is a
filesystem path (a shared ReadWriteMany volume on Kubernetes)."""

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

from fib_assets.core import storage as object_storage
from fib_assets.core.blockwise import fingerprint
from fib_assets.core.curation import simulate, tasks, uncertainty
from fib_assets.core.geometry import Roi
from fib_assets.core.ml.classes import resolve_class
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.metadata import (
    all_materializations,
    latest_materialization,
    record_metadata,
)
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource, default_data_dir
from fib_assets.defs.training.assets import _revision_store, current_split

GROUP = "curation"
OWNERS = ["team:curators"]
PREDICTIONS = dg.AssetKey("predictions")
PROOFREADING_TASKS = dg.AssetKey("proofreading_tasks")
SIMULATED_CURATOR = "simulated-curator"


def _latest_predictions(instance: dg.DagsterInstance, region: str) -> dict[str, str]:
    """experiment -> newest predictions container of ``region`` (one per experiment)."""
    out: dict[str, str] = {}
    for rec in all_materializations(instance, PREDICTIONS, region):
        meta = record_metadata(rec)
        out.setdefault(str(meta.get("experiment")), str(meta["dagster/uri"]))
    return out


class ProofreadingConfig(dg.Config):
    experiments: list[str] = Field(
        default_factory=list,
        description="Experiments whose predictions are ranked (default: every experiment with "
        "predictions of the region; two or more add disagreement to the score).",
    )
    k: int = Field(default=3, ge=1, le=100, description="Tasks exported (top-K blocks).")
    block_edge: int = Field(default=32, ge=8, description="Edge of the ranked blocks (voxels).")


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    partitions_def=regions,
    kinds={"n5", "json"},
    code_version=code_version_of(uncertainty, tasks),
    deps=[PREDICTIONS, "raw_volume", "training_split"],
)
def proofreading_tasks(
    context: dg.AssetExecutionContext, storage: StorageResource, config: ProofreadingConfig
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The K blocks of the region where the models are least sure (voxels near the decision
    boundary, disagreement between experiments), each exported as a Paintera container (raw +
    the model's labels to correct) with a task list (tasks.md / tasks.json) a curator follows.
    Test regions get no tasks: correcting their labels would leak the held-out truth."""
    region = context.partition_key
    split = current_split(context.instance)
    role = split[0].get(region, "not in split") if split else "no split"
    if role == "test":
        return dg.MaterializeResult(
            metadata={"region_role": role, "n_tasks": 0, "why": "test regions are not curated"}
        )
    available = _latest_predictions(context.instance, region)
    names = config.experiments or sorted(available)
    missing = [n for n in names if n not in available]
    if missing or not names:
        raise dg.Failure(f"predictions[{region}] missing for experiments {missing or names}")
    raw = latest_materialization(context.instance, dg.AssetKey("raw_volume"), region)
    if raw is None:
        raise dg.Failure(f"raw_volume[{region}] is not materialized")
    maps = [uncertainty.PredictionMaps(available[n]) for n in names]
    # blocks touching a held-out (test) crop are never proposed: a correction there would put
    # test labels into training (ground_truth_crops' blocking check would reject the revision)
    revision = _revision_store(storage, region).current()
    held_out = [c.roi for c in (revision.crops if revision else []) if c.split != "train"]
    ranked = [
        b
        for b in uncertainty.rank_blocks(maps, (config.block_edge,) * 3)
        if all(b.roi.intersect(t).size == 0 for t in held_out)
    ]
    first = maps[0]
    label_source = tasks.PredictionLabelSource(
        first, {c: resolve_class(c).ids[0] for c in first.classes}, _voxel_size(raw)
    )
    version = fingerprint({"predictions": [available[n] for n in names], "k": config.k,
                           "block": config.block_edge})[:12]  # fmt: skip
    out = object_storage.join(storage.asset_url("proofreading_tasks", region), version)
    # Paintera containers are written as local files (staged in scratch on an object store)
    with object_storage.Staging(out, need_bytes=_tasks_bytes(config)) as stage:
        task_list = tasks.export_tasks(
            region, str(raw["metadata"]["dagster/uri"]), label_source, ranked, stage.path,
            k=config.k, label_source=f"predictions of {names[0]}", published_as=out,
        )  # fmt: skip
        stage.publish({"n_tasks": len(task_list.tasks)})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/uri": dg.MetadataValue.path(out),
            "region_role": role,
            "experiments": dg.MetadataValue.json(names),
            "n_tasks": len(task_list.tasks),
            "tasks_json": dg.MetadataValue.path(task_list.json_location),
            "tasks": dg.MetadataValue.md(task_list.markdown()),
            "blocks_ranked": len(ranked),
            "blocks_excluded_test_crops": dg.MetadataValue.json([r.to_dict() for r in held_out]),
        },
    )


def _tasks_bytes(config: ProofreadingConfig) -> int:
    """Scratch for staged task containers: raw uint8 + uint64 labels per block, with headroom
    for the multiscale levels."""
    return 2 * config.k * (1 + 8) * config.block_edge**3 + 2**20


def _voxel_size(raw: dict[str, Any]) -> Any:
    from fib_assets.core import labels

    return labels.raw_grid(str(raw["metadata"]["dagster/uri"])).voxel_size


class _ZarrTruth:
    """Held-out dense truth (the synthetic generator's Zarr array), read one ROI at a time."""

    def __init__(self, path: Path) -> None:
        import zarr

        if not path.exists():
            raise dg.Failure(f"{path}: held-out truth for the simulated curator not found")
        self.array = zarr.open_array(str(path), mode="r")

    def read(self, roi: Roi) -> np.ndarray:
        return np.asarray(self.array[roi.to_slices()])


class SimulatedCuratorConfig(dg.Config):
    truth_dir: str = Field(
        default="",
        description="Folder of held-out dense truth <region>.zarr (default "
        "<FIB_ASSETS_DATA>/groundtruth, where the synthetic sample writes it).",
    )
    correction_round: int = Field(default=1, ge=1, description="Correction round number.")
    effort_model: str = Field(
        default="", description="Effort model YAML (default: the packaged one)."
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    partitions_def=regions,
    kinds={"n5"},
    code_version=code_version_of(simulate),
    deps=[PROOFREADING_TASKS],
)
def simulated_corrections(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    annotations: AnnotationsResource,
    config: SimulatedCuratorConfig,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """A simulated curator (oracle on held-out truth) corrects the region's proofreading tasks
    and submits each corrected container to the annotations inbox, as a person would; the
    effort model charges minutes per corrected object, slice and voxel (recorded, with its
    assumptions). Materialize ground_truth_crops afterwards to make the next revision."""
    region = context.partition_key
    rec = latest_materialization(context.instance, PROOFREADING_TASKS, region)
    if rec is None:
        raise dg.Failure(f"proofreading_tasks[{region}] is not materialized")
    if not rec["metadata"].get("n_tasks"):
        return dg.MaterializeResult(
            metadata={"n_tasks": 0, "curator_minutes": 0.0, "why": "no tasks for this region"}
        )
    task_list = tasks.TaskList.load(str(rec["metadata"]["dagster/uri"]))
    truth_dir = Path(config.truth_dir or Path(default_data_dir()) / "groundtruth")
    truth = _ZarrTruth(truth_dir / f"{region}.zarr")
    effort = (
        simulate.EffortModel.from_yaml(config.effort_model)
        if config.effort_model
        else simulate.EffortModel.from_yaml()
    )
    maps = uncertainty.PredictionMaps(
        next(iter(_latest_predictions(context.instance, region).values()))
    )
    labels_now = tasks.PredictionLabelSource(
        maps, {c: resolve_class(c).ids[0] for c in maps.classes}, task_list.tasks[0].voxel_size
    )
    sim = simulate.simulate_corrections(labels_now, truth, task_list.tasks, effort)
    # the corrected containers go to the annotations inbox (a filesystem); the curator's
    # "saved" copies before that are local files: beside the storage root, or pod-local scratch
    # when the root is an object store
    if storage.is_remote:
        folder = object_storage.scratch_root() / "simulated_corrections" / region
    else:
        folder = Path(storage.asset_url("simulated_corrections", region))
    scratch = folder / f"round{config.correction_round}"
    submitted = []
    for task, corr in zip(task_list.tasks, sim.corrections, strict=True):
        saved = simulate.write_corrected_container(task, corr, scratch / f"{task.task_id}.n5")
        submitted.append(
            str(
                tasks.submit_correction(
                    task,
                    saved,
                    annotations.inbox_path(),
                    annotator=SIMULATED_CURATOR,
                    minutes_spent=corr.minutes,
                    split="train",
                )  # fmt: skip
            )
        )
    return dg.MaterializeResult(
        metadata={
            "correction_round": config.correction_round,
            "n_tasks": len(sim.corrections),
            "curator_minutes": float(sim.minutes),
            "voxels_changed": sim.voxels_changed,
            "objects_changed": sim.objects_changed,
            "submissions": dg.MetadataValue.json(submitted),
            "round": dg.MetadataValue.json(sim.to_dict()),
        },
    )
