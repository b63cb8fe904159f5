"""The fixity schedule: weekly by default, every region's source files and the latest deposit
package re-verified against their stored checksums; drift shows as a failing ERROR check."""

import os

import dagster as dg

from fib_assets.defs.acquisitions.assets import raw_acquisition
from fib_assets.defs.partitions import regions
from fib_assets.defs.provenance.assets import deposit_package
from fib_assets.defs.provenance.checks import package_fixity, source_fixity

# Sunday 03:00 (UTC): off-peak for the storage; FIB_ASSETS_FIXITY_CRON overrides it per deployment
DEFAULT_FIXITY_CRON = "0 3 * * 0"

source_fixity_job = dg.define_asset_job(
    "source_fixity_job",
    selection=dg.AssetSelection.checks(source_fixity),
    description="Re-verify the raw source files of one region against their sha256 manifest.",
)
package_fixity_job = dg.define_asset_job(
    "package_fixity_job",
    selection=dg.AssetSelection.checks(package_fixity),
    description="bagit full validation of the latest deposit package.",
)


def source_fixity_requests(instance: dg.DagsterInstance, stamp: str) -> list[dg.RunRequest]:
    """One run per region that has a raw_acquisition to verify."""
    requests = []
    for region in instance.get_dynamic_partitions(regions.name or "regions"):
        flt = dg.AssetRecordsFilter(asset_key=raw_acquisition.key, asset_partitions=[region])
        if instance.fetch_materializations(flt, limit=1).records:
            # a job of checks only has no partitions definition in dagster 1.13 (it is inferred
            # from selected *assets*), so RunRequest(partition_key=...) is refused; the run's
            # partition tag is what partition_key would set, and the check reads it
            requests.append(
                dg.RunRequest(
                    run_key=f"fixity-{region}-{stamp}", tags={"dagster/partition": region}
                )
            )
    return requests


def _stamp(context: dg.ScheduleEvaluationContext) -> str:
    try:
        return context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    except Exception:  # a context built without a tick time (tests, manual evaluation)
        return "manual"


def build_fixity_schedules(cron: str | None = None) -> list[dg.ScheduleDefinition]:
    """The weekly (default) fixity schedules; ``cron`` or $FIB_ASSETS_FIXITY_CRON overrides."""
    cron = cron or os.environ.get("FIB_ASSETS_FIXITY_CRON", DEFAULT_FIXITY_CRON)

    @dg.schedule(
        name="fixity_schedule",
        cron_schedule=cron,
        execution_timezone="UTC",
        job=source_fixity_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly fixity of raw data: re-hash every region's source files against "
        "their sha256 manifest; drift fails the source_fixity check of that region.",
    )
    def _sources(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        requests = source_fixity_requests(context.instance, _stamp(context))
        return requests or dg.SkipReason("no raw_acquisition materialized: nothing to verify")

    @dg.schedule(
        name="package_fixity_schedule",
        cron_schedule=cron,
        execution_timezone="UTC",
        job=package_fixity_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly fixity of the latest deposit package (bagit full validation).",
    )
    def _package(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if not context.instance.fetch_materializations(deposit_package.key, limit=1).records:
            return dg.SkipReason("no deposit package yet")
        return dg.RunRequest(run_key=f"fixity-package-{_stamp(context)}")

    return [_sources, _package]


fixity_schedules = build_fixity_schedules()
