"""Evaluation and the tables of the curator loop: evaluation[region] → segmentation_benchmark →
intervention_benchmark, and infrastructure_benchmark (where training/inference ran, for how long,
at what price). Logic lives in fib_assets/core/{crop_evaluation,tables}.py."""

import math
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from fib_assets.core import benchmark, crop_evaluation, tables
from fib_assets.core import storage as object_storage
from fib_assets.core.blockwise import fingerprint
from fib_assets.core.ml.classes import resolve_class
from fib_assets.core.ml.experiments import Experiment
from fib_assets.core.preview import markdown_image
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.deployment import deployment_profile
from fib_assets.defs.metadata import (
    all_materializations,
    latest_materialization,
    record_metadata,
)
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource
from fib_assets.defs.training import DECLARED
from fib_assets.defs.training.assets import _revision_store, current_split

GROUP = "evaluation"
OWNERS = ["team:research-computing"]
TABLE_VALID = "table_valid"
SEGMENTATION = dg.AssetKey("segmentation")
PREDICTIONS = dg.AssetKey("predictions")
ORGANELLE_MODEL = dg.AssetKey("organelle_model")
EVALUATION = dg.AssetKey("evaluation")
SIMULATED_CORRECTIONS = dg.AssetKey("simulated_corrections")


def _write_table(
    storage: StorageResource, name: str, df: pd.DataFrame, md: str, png: bytes | None = None
) -> str:
    """``<root>/<name>/<basename>-<time>-<hash>.parquet`` with its ``.md`` (and ``.png``) beside
    it, on a local or ``s3://`` root alike (core.tables.write_table: atomic, read back)."""
    base = name.rsplit("/", 1)[-1]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    location = object_storage.join(
        storage.root, name, f"{base}-{stamp}-{fingerprint(md)[:8]}{tables.TABLE_SUFFIX}"
    )
    return tables.write_table(location, df, markdown=md, png=png).parquet


def _check(name: str, gx: dict[str, Any], description: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=TABLE_VALID,
        passed=bool(gx["success"]),
        description=description,
        metadata={
            "evaluated_expectations": gx["evaluated"],
            "failed_expectations": dg.MetadataValue.json(gx["failed"]),
        },
    )


class EvaluationConfig(dg.Config):
    tolerance_nm: float = Field(default=40.0, description="COSEM tolerance distance (nm).")
    band_nm: float | None = Field(
        default=16.0, description="ASEM boundary band excluded around true boundaries (nm)."
    )
    iou_threshold: float = Field(default=0.5, description="Instance match threshold (IoU).")


class SegmentationBenchmarkConfig(dg.Config):
    n_regions: int = Field(default=1, ge=1, description="Test regions in the seeded sample.")
    seed: int = Field(default=0, description="Seed of the region sample and the bootstrap.")
    n_resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples.")


def _variant_uri(instance: dg.DagsterInstance, region: str) -> str:
    rec = latest_materialization(instance, dg.AssetKey("volume_zarr"), region)
    if rec is None:
        raise dg.Failure(f"volume_zarr[{region}] is not materialized")
    return str(rec["metadata"]["dagster/uri"])


def _evaluation_tables(instance: dg.DagsterInstance, regions_: list[str]) -> pd.DataFrame:
    frames = []
    for r in regions_:
        rec = latest_materialization(instance, EVALUATION, r)
        if rec is not None and rec["metadata"].get("dagster/row_count", 0):
            frames.append(tables.read_table(str(rec["metadata"]["dagster/uri"])))
    if not frames:
        return pd.DataFrame(columns=tables.EVALUATION_COLUMNS)
    return pd.concat(frames, ignore_index=True)


class InterventionBenchmarkConfig(dg.Config):
    metric: str = Field(default="dice", description="Metric of the segmentation benchmark.")
    preprocessing_minutes: float = Field(
        default=15.0,
        description="ASSUMED curator minutes to choose a pre-processing (not measured; recorded "
        "with the table).",
    )
    transfer_learning_minutes: float = Field(
        default=30.0,
        description="ASSUMED curator minutes to pick a source model and set up fine-tuning.",
    )


def _baseline(declared: Mapping[str, Experiment], name: str) -> str | None:
    exp = declared[name]
    if exp.initialization.source is not None:
        return exp.initialization.source
    same = [
        n
        for n, e in declared.items()
        if e.curator_intervention == "none" and e.classes == exp.classes and n != name
    ]
    return same[0] if same else None


def _minutes_of(
    instance: dg.DagsterInstance, intervention: str, assumed: Mapping[str, float]
) -> float:
    """Curator minutes of an intervention: the simulated (or logged) curator minutes of
    correction round N summed over regions (newest simulated_corrections per region of that
    round), else the configured assumption; NaN when unknown (no row is made)."""
    if intervention.startswith("correction_round_"):
        n = int(intervention.rsplit("_", 1)[1])
        latest: dict[str, float] = {}
        for rec in all_materializations(instance, SIMULATED_CORRECTIONS):
            m = record_metadata(rec)
            part = rec.event_log_entry.dagster_event.partition or ""
            if m.get("correction_round") == n and part not in latest:
                latest[part] = float(m.get("curator_minutes", 0.0))
        return sum(latest.values()) if latest else math.nan
    return float(assumed.get(intervention, math.nan))


def _compute_runs(instance: dg.DagsterInstance) -> list[tables.ComputeRun]:
    runs = []
    profile = deployment_profile()
    for key, kind, seconds_key in (
        (ORGANELLE_MODEL, "training", "wall_time_s"),
        (PREDICTIONS, "inference", "seconds"),
    ):
        for rec in all_materializations(instance, key):
            m = record_metadata(rec)
            seconds = float(m.get(seconds_key, 0.0) or 0.0)
            if seconds <= 0:
                continue
            device = str(m.get("device") or m.get("plan", {}).get("device", "cpu"))
            where = m.get("infrastructure") or tables.infrastructure_of(device, profile, {})
            partition = rec.event_log_entry.dagster_event.partition or ""
            runs.append(
                tables.ComputeRun(
                    rec.run_id,
                    key.to_user_string(),
                    partition,
                    kind,
                    str(m.get("experiment") if kind == "inference" else partition),
                    device,
                    seconds,
                    str(where["infrastructure"]),
                    where.get("price_tier"),
                    where.get("instance_type"),
                )  # fmt: skip
            )
    return runs


def build_evaluation_assets(declared: Mapping[str, Experiment]) -> list[dg.AssetsDefinition]:
    """The four assets of this module for the ``declared`` experiments (the code location's
    experiments/ folder; tests pass their own)."""

    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        partitions_def=regions,
        kinds={"parquet", "pandas"},
        code_version=code_version_of(crop_evaluation, tables),
        deps=[dg.AssetDep(SEGMENTATION), dg.AssetDep("ground_truth_crops"), "training_split"],
        check_specs=[
            dg.AssetCheckSpec(
                TABLE_VALID,
                asset="evaluation",
                partitions_def=regions,
                description="great-expectations suite: columns, one row per experiment × "
                "organelle, scores in [0, 1], distances >= 0.",
            )
        ],
    )
    def evaluation(
        context: dg.AssetExecutionContext, storage: StorageResource, config: EvaluationConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Metrics per organelle per experiment of a TEST region (Dice, IoU, precision, recall,
        COSEM 40 nm tolerance Dice, ASEM band Dice, Hausdorff max/95 % in nm, instance F1, CellMap
        score) of each experiment's latest segmentation against the region's current ground-truth
        revision. Training and validation regions get no rows (their scores are biased)."""
        region = context.partition_key
        split = current_split(context.instance)
        role = split[0].get(region, "not in split") if split else "no split"
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        revision = _revision_store(storage, region).current()
        if role == "test" and revision is not None:
            for rec in all_materializations(context.instance, SEGMENTATION, region):
                seg = record_metadata(rec)
                exp = str(seg.get("experiment"))
                if exp in seen or exp not in declared:
                    continue
                seen.add(exp)
                # crops live on the raw grid, which every variant (and the predictions) share
                raw = _variant_uri(context.instance, region)
                classes = [
                    resolve_class(str(a).split("/")[1])
                    for a in seg.get("arrays", [])
                    if "/" in str(a)
                ]
                for row in crop_evaluation.evaluate_crops(
                    revision, str(raw), str(seg["dagster/uri"]), classes,
                    tolerance_nm=config.tolerance_nm, band_nm=config.band_nm,
                    iou_threshold=config.iou_threshold,
                ):  # fmt: skip
                    rows.append(
                        {
                            **row,
                            "region": region,
                            "experiment": exp,
                            "curator_intervention": declared[exp].curator_intervention,
                            "ground_truth_revision": revision.number,
                        }
                    )
        df = pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS)
        md = (
            tables.markdown_table(
                df,
                [
                    "experiment",
                    "organelle",
                    "dice",
                    "dice_tolerance",
                    "hausdorff95_nm",
                    "instance_f1",
                    "cellmap_score",
                ],
            )  # fmt: skip
            if len(df)
            else f"no rows: region role is **{role}** (only test regions are evaluated)"
        )
        path = _write_table(storage, f"evaluation/{region}", df, md)
        if len(df):
            check = _check(
                "evaluation", tables.validate_evaluation(df, [region]), f"{len(df)} rows"
            )
        else:
            check = dg.AssetCheckResult(
                check_name=TABLE_VALID,
                passed=role != "test",
                description=f"role {role}: no rows by design"
                if role != "test"
                else "test region without any segmentation or ground truth to evaluate",
            )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(fingerprint(df.to_json())),
            metadata={
                "dagster/uri": dg.MetadataValue.path(path),
                "dagster/row_count": len(df),
                "region_role": role,
                "experiments": dg.MetadataValue.json(sorted(seen)),
                "ground_truth_revision": revision.number if revision else -1,
                "table": dg.MetadataValue.md(md),
            },
            check_results=[check],
        )

    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet", "pandas"},
        code_version=code_version_of(tables.segmentation_table, tables.bootstrap_ci),
        deps=[dg.AssetDep(EVALUATION, partition_mapping=dg.AllPartitionMapping())],
        check_specs=[
            dg.AssetCheckSpec(
                TABLE_VALID,
                asset="segmentation_benchmark",
                description="great-expectations suite: unique keys, CI lower <= mean <= upper, and "
                "every row over as many regions as the sample asked for.",
            )
        ],
    )
    def segmentation_benchmark(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        config: SegmentationBenchmarkConfig,
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Per organelle × experiment × metric: the mean over a seeded random sample of test regions
        with a bootstrap 95 % confidence interval. The check fails when the table covers fewer
        regions than the sample asked for."""
        split = current_split(context.instance)
        test = sorted(r for r, role in (split[0] if split else {}).items() if role == "test")
        ev = _evaluation_tables(context.instance, test)
        evaluated = sorted(set(ev["region"]))
        sample = benchmark.sample_regions(
            evaluated, min(config.n_regions, len(evaluated)), config.seed
        )
        if not sample:
            raise dg.Failure("no test region has evaluation rows: materialize evaluation first")
        df = tables.segmentation_table(ev, sample, seed=config.seed, n_resamples=config.n_resamples)
        md = tables.markdown_table(
            df[df.metric.isin(["dice", "dice_tolerance", "instance_f1"])],
            ["experiment", "organelle", "metric", "n_regions", "mean", "ci_low", "ci_high"],
        )
        dice = df[df.metric == "dice"]
        png = tables.plot_intervals(
            dice, label=["experiment", "organelle"], value="mean", low="ci_low", high="ci_high",
            title=f"Dice on {len(sample)} test region(s), bootstrap 95 % CI",
        )  # fmt: skip
        path = _write_table(storage, "segmentation_benchmark", df, md, png)
        gx = tables.validate_segmentation(df, config.n_regions)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(fingerprint(df.to_json())),
            metadata={
                "dagster/uri": dg.MetadataValue.path(path),
                "dagster/row_count": len(df),
                "regions_sampled": dg.MetadataValue.json(sample),
                "regions_requested": config.n_regions,
                "test_regions_evaluated": dg.MetadataValue.json(evaluated),
                "seed": config.seed,
                "table": dg.MetadataValue.md(md),
                "plot": dg.MetadataValue.md(markdown_image(png, "Dice per experiment")),
            },
            check_results=[_check("segmentation_benchmark", gx, f"{len(df)} rows")],
        )

    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet", "pandas"},
        code_version=code_version_of(tables.intervention_table),
        deps=[
            "segmentation_benchmark",
            dg.AssetDep(ORGANELLE_MODEL, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(SIMULATED_CORRECTIONS, partition_mapping=dg.AllPartitionMapping()),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                TABLE_VALID,
                asset="intervention_benchmark",
                description="great-expectations suite: columns, unique keys, non-negative effort.",
            )
        ],
    )
    def intervention_benchmark(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        config: InterventionBenchmarkConfig,
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Metric gain of each intervention over its baseline experiment (its ``from:`` source, else
        the scratch experiment with the same classes), per curator-hour and per device-hour of
        training. Curator minutes of pre-processing and transfer set-up are configured assumptions
        (recorded in the metadata); correction round N takes the simulated curator's logged
        minutes of round N summed over regions."""
        res = context.instance.fetch_materializations(
            dg.AssetKey("segmentation_benchmark"), limit=1
        )
        if not res.records:
            raise dg.Failure("segmentation_benchmark is not materialized")
        meta = record_metadata(res.records[0])
        seg = tables.read_table(str(meta["dagster/uri"]))
        n_regions = len(meta.get("regions_sampled") or [])
        costs = []
        minutes = {
            "none": 0.0,
            "preprocessing": config.preprocessing_minutes,
            "transfer_learning": config.transfer_learning_minutes,
        }
        for name, exp in declared.items():
            model = latest_materialization(context.instance, ORGANELLE_MODEL, name)
            if model is None:
                continue
            m = model["metadata"]
            costs.append(
                tables.InterventionCost(
                    name,
                    exp.curator_intervention,
                    _baseline(declared, name),
                    _minutes_of(context.instance, exp.curator_intervention, minutes),
                    float(m.get("wall_time_s", 0.0)) / 3600.0,
                    str(m.get("device", "")),
                )  # fmt: skip
            )
        df = tables.intervention_table(seg, [c for c in costs if not math.isnan(c.curator_minutes)])
        cols = ["experiment", "organelle", "curator_intervention", "baseline", "gain",
                "curator_minutes", "device_hours", "gain_per_curator_hour",
                "gain_per_device_hour"]  # fmt: skip
        md = (
            tables.markdown_table(df, cols)
            if len(df)
            else "no experiment with an intervention and a trained baseline yet"
        )
        gx = (
            tables.validate_intervention(df, n_regions)
            if len(df)
            else {"success": True, "evaluated": 0, "failed": []}
        )
        png = (
            tables.plot_bars(df, label=["experiment", "organelle"], value="gain",
                             title=f"{config.metric} gain over baseline")
            if len(df) else None
        )  # fmt: skip
        plot = {"plot": dg.MetadataValue.md(markdown_image(png, "gain"))} if png else {}
        path = _write_table(storage, "intervention_benchmark", df, md, png)
        return dg.MaterializeResult(
            metadata={
                "dagster/uri": dg.MetadataValue.path(path),
                "dagster/row_count": len(df),
                "assumed_minutes": dg.MetadataValue.json(minutes),
                "table": dg.MetadataValue.md(md),
                **plot,
            },
            check_results=[_check("intervention_benchmark", gx, f"{len(df)} rows")],
        )

    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet", "pandas"},
        code_version=code_version_of(tables.infrastructure_table, tables.load_price_table),
        deps=[
            dg.AssetDep(ORGANELLE_MODEL, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(PREDICTIONS, partition_mapping=dg.AllPartitionMapping()),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                TABLE_VALID,
                asset="infrastructure_benchmark",
                description="great-expectations suite: one row per run and step, known "
                "infrastructures, positive wall time, non-negative cost.",
            )
        ],
    )
    def infrastructure_benchmark(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """One row per recorded training (organelle_model) and inference (predictions) run: where
        it ran (as the step's process recorded it: $FIB_ASSETS_INFRASTRUCTURE, else local CPU/GPU
        from the device for the local deployment), wall time, device-hours and cost from the price
        table (fib_assets/config/prices.yaml or $FIB_ASSETS_PRICES, with sources and dates).
        Infrastructures never used are absent; a rate nobody looked up leaves the cost empty."""
        prices = tables.load_price_table()
        runs = _compute_runs(context.instance)
        if not runs:
            raise dg.Failure("no training or inference run recorded yet")
        df = tables.infrastructure_table(runs, prices)
        summary = (
            df.groupby(["infrastructure", "kind"], as_index=False)
            .agg(runs=("run_id", "count"), device_hours=("device_hours", "sum"),
                 cost_usd=("cost_usd", "sum"))
        )  # fmt: skip
        md = tables.markdown_table(
            summary, ["infrastructure", "kind", "runs", "device_hours", "cost_usd"],
            {"cost_usd": lambda v: f"{v:.4f}"},
        )  # fmt: skip
        path = _write_table(storage, "infrastructure_benchmark", df, md)
        gx = tables.validate_infrastructure(df, [*tables.INFRASTRUCTURES, "unknown"])
        return dg.MaterializeResult(
            metadata={
                "dagster/uri": dg.MetadataValue.path(path),
                "dagster/row_count": len(df),
                "price_table": dg.MetadataValue.path(prices.path),
                "price_table_date": prices.date,
                "summary": dg.MetadataValue.md(md),
            },
            check_results=[_check("infrastructure_benchmark", gx, f"{len(df)} runs")],
        )

    return [evaluation, segmentation_benchmark, intervention_benchmark, infrastructure_benchmark]


ASSETS = build_evaluation_assets(DECLARED)
