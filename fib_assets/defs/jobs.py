"""Project-wide jobs and automation: one job per asset family and the nightly backfill of
regions that arrived (or gained new assets) since the last night."""

import dagster as dg

from fib_assets.defs.partitions import regions

acquisitions_job = dg.define_asset_job(
    "acquisitions_job",
    selection=dg.AssetSelection.groups("acquisitions"),
    description="Raw acquisitions of one region: inventory, fixity, canonical volume, QC.",
)
formats_job = dg.define_asset_job(
    "formats_job",
    selection=dg.AssetSelection.groups("formats"),
    description="All format variants of one region, each verified against the canonical volume.",
)
benchmarks_job = dg.define_asset_job(
    "benchmarks_job",
    selection=dg.AssetSelection.groups("benchmarks"),
    description="Cross-region benchmark tables.",
)
region_pipeline_job = dg.define_asset_job(
    "region_pipeline_job",
    selection=dg.AssetSelection.all().materializable()
    # ground truth is driven by the annotations inbox sensor: a region without annotations yet
    # is not a failure of the nightly backfill
    - dg.AssetSelection.groups("benchmarks", "provenance", "ground_truth", "training"),
    description="Every region-partitioned asset of one region (what the nightly backfill runs).",
)


# regions per run-storage query (bounded IN (...) lists; SQLite allows 32,766 parameters)
RUN_QUERY_BATCH = 500


def regions_needing_work(
    instance: dg.DagsterInstance, keys: list[dg.AssetKey]
) -> tuple[list[str], dict[str, str]]:
    """Regions with any asset in ``keys`` never materialized, minus those whose latest run
    failed (a blocking check or an error needs a curator first); returns (todo, skipped).

    Batched so that the cost does not grow with queries per region: one query per asset for
    its materialized partitions, then the runs of the regions still missing something, a few
    hundred regions per query (newest first, so the first run seen of a region is its latest).
    """
    todo: list[str] = []
    skipped: dict[str, str] = {}
    all_regions = instance.get_dynamic_partitions(regions.name or "regions")
    done = [instance.get_materialized_partitions(k) for k in keys]
    candidates = [r for r in all_regions if not all(r in d for d in done)]
    latest: dict[str, dg.DagsterRun] = {}
    for i in range(0, len(candidates), RUN_QUERY_BATCH):
        batch = candidates[i : i + RUN_QUERY_BATCH]
        for run in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": batch})):
            latest.setdefault(run.tags.get("dagster/partition", ""), run)
    for region in candidates:
        run = latest.get(region)
        if run is not None and run.status == dg.DagsterRunStatus.FAILURE:
            skipped[region] = f"latest run {run.run_id[:8]} failed; fix and rerun by hand"
        elif run is not None and not run.is_finished:
            skipped[region] = f"run {run.run_id[:8]} still in progress"
        else:
            todo.append(region)
    return todo, skipped


@dg.schedule(
    name="nightly_region_backfill",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    job=region_pipeline_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night at 02:00 UTC, runs the region pipeline for every region with an "
    "asset never materialized (new regions, or new asset families). Regions whose latest run "
    "failed are left for a curator. (Partitioned-job schedules do not support dynamic "
    "partitions, so this schedule computes the regions itself.)",
)
def nightly_region_backfill(
    context: dg.ScheduleEvaluationContext,
) -> dg.SkipReason | list[dg.RunRequest]:
    graph = context.repository_def.asset_graph if context.repository_def else None
    keys = (
        [
            k
            for k in graph.materializable_asset_keys
            if graph.get(k).partitions_def == regions
            and graph.get(k).group_name not in ("ground_truth", "provenance", "training")
        ]
        if graph is not None
        else []
    )
    todo, skipped = regions_needing_work(context.instance, keys)
    for region, why in skipped.items():
        context.log.info(f"nightly backfill skips {region}: {why}")
    stamp = context.scheduled_execution_time.strftime("%Y%m%d")
    if not todo:
        return dg.SkipReason(f"no region needs work ({len(skipped)} left for curators)")
    return [dg.RunRequest(run_key=f"nightly-{stamp}-{r}", partition_key=r) for r in todo]
