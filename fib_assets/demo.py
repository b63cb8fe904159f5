"""`make demo`: a synthetic sample through the whole asset graph on the embedded instance."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from fib_assets.core.acquisition.region import check_region_complete
from fib_assets.defs.metadata import record_metadata
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import REPO_ROOT

# Console logs of demo runs: warnings and errors only (everything is in the instance's event log)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# Each demo region shows something: two clean regions, one with image artefacts that the
# (warning) image-quality checks flag, one with acquisition faults that the blocking checks
# catch so its downstream assets are skipped.
DEMO_REGIONS: dict[str, tuple[str, ...]] = {
    "r001": (),
    "r002": (),
    "r003": ("curtaining", "brightness_drift", "lateral_drift", "saturation"),
    "r004": ("dropped_slices", "duplicated_slices", "truncated_file"),
}


# Ground-truth crops the synthetic "curator" delivers per region (z, y, x voxels; two train, one
# held out): about 0.5 x 0.6 x 0.6 um at 8 nm, the scale of a COSEM crop. Smaller 48^3 crops
# held too few mitochondria (1.5-8 % of their voxels) for the demo model to learn from.
DEMO_CROP_SHAPE = (64, 80, 80)
DEMO_CROPS_PER_REGION = 3


def default_dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home")


def prepare_dagster_home(home: Path) -> Path:
    """Create DAGSTER_HOME with the repo's dagster.yaml (SQLite storage under it)."""
    home.mkdir(parents=True, exist_ok=True)
    src = REPO_ROOT / "dagster.yaml"
    dst = home / "dagster.yaml"
    if src.exists() and (not dst.exists() or dst.read_text() != src.read_text()):
        dst.write_text(src.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def synthesize_demo_sample(
    data_dir: Path, *, shape: tuple[int, int, int], seed: int, progress: bool = True
) -> list[str]:
    """Write the demo regions into ``data_dir/landing`` (skipping complete ones) and their
    ground truth into ``data_dir/groundtruth``."""
    from fib_assets.core.acquisition.synthetic import (
        SyntheticSample,
        write_ground_truth,
        write_region,
    )
    from fib_assets.core.labels import deliver_synthetic_annotations

    written = []
    for i, (region, artefacts) in enumerate(DEMO_REGIONS.items()):
        region_dir = data_dir / "landing" / region
        gt = data_dir / "groundtruth" / f"{region}.zarr"
        sample = SyntheticSample(shape, seed=seed + i, artefacts=artefacts)
        if check_region_complete(region_dir) is not None:
            write_region(
                region_dir, sample, region=region, sample_id="synthcell", progress=progress
            )
            written.append(region)
        if not gt.exists():
            write_ground_truth(gt, sample)
        # the synthetic truth reaches the annotations inbox as Paintera containers, exactly as a
        # curator's export would (idempotent)
        deliver_synthetic_annotations(
            gt,
            data_dir / "annotations",
            region,
            raw_voxel_size_nm=sample.voxel_size_nm,
            n_crops=DEMO_CROPS_PER_REGION,
            crop_shape=DEMO_CROP_SHAPE,
            seed=seed + i,
        )
    return written


@dataclass
class DemoRegionOutcome:
    region: str
    success: bool
    reused: bool
    failed_checks: list[str]
    skipped_assets: list[str]


def register_regions(instance: dg.DagsterInstance, landing: Path) -> list[str]:
    """Add every complete, valid landing-zone region as a partition (what the sensor does)."""
    from fib_assets.defs.acquisitions.sensors import scan_landing_zone

    complete, rejected, _ = scan_landing_zone(landing)
    for name, why in rejected.items():
        print(f"  rejected landing-zone folder {name!r}: {why}")
    known = set(instance.get_dynamic_partitions(regions.name or "regions"))
    new = [r for r in complete if r not in known]
    if new:
        instance.add_dynamic_partitions(regions.name or "regions", new)
    return complete


# groups that need trained models: the demo runs them after all regions (materialize_training,
# materialize_evaluation), never in the per-region runs
LATE_GROUPS = frozenset({"training", "evaluation", "curation"})

# assets the demo never runs by itself: uploading to the institutional repository is a curator's
# decision (and needs FIGSHARE_TOKEN); the deposit package is built on request (fib-assets deposit)
NOT_IN_DEMO = {"repository_draft", "deposit_package"}


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[dg.AssetKey],
    partition: str | None,
    tags: dict[str, str],
    ops_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize exactly ``keys`` with only the resources they need (so a resource such as the
    repository token is never resolved for runs that do not use it)."""
    wanted = set(keys)
    assets = [
        a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and wanted & set(a.keys)
    ]
    needed = {r for a in assets for r in a.required_resource_keys}
    return dg.materialize(
        assets,
        selection=dg.AssetSelection.assets(*keys),
        partition_key=partition,
        instance=instance,
        resources={k: v for k, v in (defs.resources or {}).items() if k in needed},
        raise_on_error=False,
        tags=tags,
        run_config={**QUIET, "ops": ops_config} if ops_config else QUIET,
    )


def _region_outcome_from_instance(
    defs: dg.Definitions, instance: dg.DagsterInstance, region: str
) -> DemoRegionOutcome:
    from fib_assets.status import collect_status

    graph = defs.resolve_asset_graph()
    rows = [
        r
        for r in collect_status(defs, instance)
        if r.partition == region
        # training outputs are produced after all regions, not by the per-region demo runs
        and graph.get(dg.AssetKey.from_user_string(r.asset)).group_name not in LATE_GROUPS
    ]
    failed = [
        f"{r.asset}:{c.name} ({(c.severity or 'error').lower()})"
        for r in rows
        for c in r.checks
        if c.status == "FAILED"
    ]
    skipped = [r.asset for r in rows if not r.materialized]
    return DemoRegionOutcome(region, not failed and not skipped, True, failed, skipped)


def materialize_region(
    defs: dg.Definitions, instance: dg.DagsterInstance, region: str
) -> DemoRegionOutcome:
    """Materialize every region-partitioned asset (and its checks) for one region, unless a
    demo run already covered the same asset selection (then it is reused: idempotent)."""
    from fib_assets.core.blockwise import fingerprint

    graph = defs.resolve_asset_graph()
    keys = sorted(
        (
            k
            for k in graph.materializable_asset_keys
            if graph.get(k).partitions_def == regions
            # predictions need a trained model first: the training family runs after all regions
            and graph.get(k).group_name not in LATE_GROUPS
        ),
        key=lambda k: k.to_user_string(),
    )
    selection_id = fingerprint([k.to_user_string() for k in keys])[:16]
    tags = {"fib_assets/demo": "1", "fib_assets/demo_selection": selection_id}
    previous = instance.get_runs(
        dg.RunsFilter(
            tags={**tags, "dagster/partition": region},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=1,
    )
    if previous:
        return _region_outcome_from_instance(defs, instance, region)
    result = _materialize(defs, instance, keys, region, tags)
    failed = [
        f"{ev.asset_key.to_user_string()}:{ev.check_name} ({ev.severity.value.lower()})"
        for ev in result.get_asset_check_evaluations()
        if not ev.passed
    ]
    materialized = {ev.asset_key for ev in result.get_asset_materialization_events()}
    skipped = [k.to_user_string() for k in keys if k not in materialized]
    return DemoRegionOutcome(region, result.success, False, failed, skipped)


def materialize_unpartitioned(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, str]:
    """Materialize the cross-region assets (benchmark tables) that are not materialized yet;
    returns {asset: "ok" | "reused" | "FAILED"}."""
    graph = defs.resolve_asset_graph()
    keys = [
        k
        for k in graph.materializable_asset_keys
        if graph.get(k).partitions_def is None
        and k.to_user_string() not in NOT_IN_DEMO
        and graph.get(k).group_name not in LATE_GROUPS
    ]
    out = {}
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        if instance.fetch_materializations(key, limit=1).records:
            out[key.to_user_string()] = "reused"
            continue
        result = _materialize(defs, instance, [key], None, {"fib_assets/demo": "1"})
        out[key.to_user_string()] = "ok" if result.success else "FAILED"
    return out


# --- training: after all regions --------------------------------------------------------------


@dataclass
class DemoTraining:
    """What the demo's training step did: the split, each model ("ok", "reused" or "FAILED"),
    and the Dice per class of each experiment's segmentation on each test region."""

    split: dict[str, list[str]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    test_dice: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    segmentations: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (training runs in process)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return float(r.ru_utime + r.ru_stime)


def _segmentation_of(
    instance: dg.DagsterInstance, region: str, experiment: str, sha: str
) -> dict[str, Any] | None:
    """Metadata of the newest segmentation[region] made with this checkpoint, or None."""
    res = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("segmentation"), asset_partitions=[region]),
        limit=20,
    )
    for rec in res.records:
        meta = record_metadata(rec)
        if meta.get("experiment") == experiment and meta.get("checkpoint_sha256") == sha:
            return meta
    return None


def materialize_training(
    defs: dg.Definitions, instance: dg.DagsterInstance, experiments: list[str] | None = None
) -> DemoTraining:
    """training_split → organelle_model for the demo experiments → predictions and
    segmentation of every test region with each of them. Idempotent: a materialized split or
    model is reused, and a test region already segmented with the same checkpoint is not
    predicted again."""
    from fib_assets.defs.training import demo_experiments
    from fib_assets.defs.training.assets import current_split
    from fib_assets.defs.training.partitions import ROLES, regions_with_role

    out = DemoTraining()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    names = experiments if experiments is not None else demo_experiments()
    tags = {"fib_assets/demo": "1"}
    split_key = dg.AssetKey("training_split")
    if not instance.fetch_materializations(split_key, limit=1).records:
        _materialize(defs, instance, [split_key], None, tags)
    split = current_split(instance)
    if split is None:
        out.models = dict.fromkeys(names, "FAILED (no training split)")
        return out
    assignment = split[0]
    out.split = {role: regions_with_role(assignment, role) for role in ROLES}
    model_key = dg.AssetKey("organelle_model")
    for name in names:
        filt = dg.AssetRecordsFilter(asset_key=model_key, asset_partitions=[name])
        if instance.fetch_materializations(filt, limit=1).records:
            out.models[name] = "reused"
        else:
            ok = _materialize(defs, instance, [model_key], name, tags).success
            out.models[name] = "ok" if ok else "FAILED"
        recs = instance.fetch_materializations(filt, limit=1).records
        if not recs:
            continue
        meta = record_metadata(recs[0])
        out.validation[name] = {
            k.removeprefix("validation_dice_"): float(v)
            for k, v in meta.items()
            if k.startswith("validation_dice_")
        }
        sha = str(meta["checkpoint_sha256"])
        for region in out.split["test"]:
            seg = _segmentation_of(instance, region, name, sha)
            state = "reused"
            if seg is None:
                cfg = {"config": {"experiment": name}}
                result = _materialize(
                    defs,
                    instance,
                    [dg.AssetKey("predictions"), dg.AssetKey("segmentation")],
                    region,
                    tags,
                    {"predictions": cfg, "segmentation": cfg},
                )
                state = "ok" if result.success else "FAILED"
                seg = _segmentation_of(instance, region, name, sha)
            out.segmentations[f"{name}/{region}"] = state
            if seg is not None:
                out.test_dice.setdefault(name, {})[region] = {
                    k.removeprefix("dice_"): float(v)
                    for k, v in seg.items()
                    if k.startswith("dice_") and isinstance(v, int | float)
                }
    out.wall_seconds = time.perf_counter() - t0
    out.cpu_seconds = _cpu_seconds() - c0
    return out


def materialize_evaluation(
    defs: dg.Definitions, instance: dg.DagsterInstance, test_regions: list[str]
) -> dict[str, Any]:
    """evaluation[test region] → segmentation_benchmark (over every evaluated test region) →
    intervention_benchmark and infrastructure_benchmark; returns their states and headline
    rows (segmentation Dice with CI, intervention gains, compute cost per infrastructure)."""
    import pandas as pd

    tags = {"fib_assets/demo": "1"}
    out: dict[str, Any] = {"states": {}, "headline": {}}
    for region in test_regions:
        ok = _materialize(defs, instance, [dg.AssetKey("evaluation")], region, tags).success
        out["states"][f"evaluation[{region}]"] = "ok" if ok else "FAILED"
    cfg = {"segmentation_benchmark": {"config": {"n_regions": max(1, len(test_regions))}}}
    for name in ("segmentation_benchmark", "intervention_benchmark", "infrastructure_benchmark"):
        result = _materialize(
            defs, instance, [dg.AssetKey(name)], None, tags,
            cfg if name == "segmentation_benchmark" else None,
        )  # fmt: skip
        checks = [ev.passed for ev in result.get_asset_check_evaluations()]
        out["states"][name] = (
            ("ok" if all(checks) else "ok, table check FAILED") if result.success else "FAILED"
        )
        recs = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
        if result.success and recs:
            uri = str(record_metadata(recs[0])["dagster/uri"])
            out["headline"][name] = pd.read_parquet(uri)
    return out


# the demo's curator-in-the-loop round: corrections of demo_mito_scratch's most uncertain blocks
DEMO_ROUND = {"baseline": "demo_mito_scratch", "experiment": "demo_mito_round1", "round": 1}


def materialize_correction_round(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    train_regions: list[str],
    *,
    baseline: str = DEMO_ROUND["baseline"],  # type: ignore[assignment]
    experiment: str = DEMO_ROUND["experiment"],  # type: ignore[assignment]
    correction_round: int = DEMO_ROUND["round"],  # type: ignore[assignment]
) -> tuple[dict[str, str], float, DemoTraining]:
    """One simulated correction round: for each training region, predictions of ``baseline`` →
    proofreading_tasks → simulated_corrections (into the inbox) → ground_truth_crops (the next
    revision); then organelle_model[``experiment``] on it and the test regions' segmentation.
    Idempotent: skipped when the round's model exists. Returns (states, curator minutes,
    the training step's outcome)."""
    tags = {"fib_assets/demo": "1"}
    states: dict[str, str] = {}
    minutes = 0.0
    model = dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("organelle_model"), asset_partitions=[experiment]
    )
    if not instance.fetch_materializations(model, limit=1).records:
        for region in train_regions:
            steps: list[tuple[str, dict[str, Any] | None]] = [
                ("predictions", {"predictions": {"config": {"experiment": baseline}}}),
                ("proofreading_tasks",
                 {"proofreading_tasks": {"config": {"experiments": [baseline]}}}),
                ("simulated_corrections",
                 {"simulated_corrections": {"config": {"correction_round": correction_round}}}),
                ("ground_truth_crops", None),
            ]  # fmt: skip
            for key, cfg in steps:
                result = _materialize(defs, instance, [dg.AssetKey(key)], region, tags, cfg)
                states[f"{key}[{region}]"] = "ok" if result.success else "FAILED"
                if not result.success:
                    break
                if key == "simulated_corrections":
                    for ev in result.get_asset_materialization_events():
                        meta = ev.materialization.metadata
                        minutes += float(meta["curator_minutes"].value)  # type: ignore[arg-type]
    else:
        states["correction round"] = "reused"
        recs = instance.fetch_materializations(dg.AssetKey("simulated_corrections"), 100).records
        seen: set[str] = set()
        for rec in recs:
            part = (
                rec.event_log_entry.dagster_event.partition
                if rec.event_log_entry.dagster_event
                else None
            )
            meta = record_metadata(rec)
            if part not in seen and meta.get("correction_round") == correction_round:
                seen.add(str(part))
                minutes += float(meta.get("curator_minutes", 0.0))
    return states, minutes, materialize_training(defs, instance, [experiment])
