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
    partitions_def=regions,
    description="Re-verify the raw source files of one region against their sha256 manifest.",
)
package_fixity_job = dg.define_asset_job(
    "package_fixity_job",
    selection=dg.AssetSelection.checks(package_fixity),
    description="bagit full validation of the latest deposit package.",
)


def fixity_run_requests(instance: dg.DagsterInstance, scheduled_at: str) -> list[dg.RunRequest]:
    """One run per region that has a raw_acquisition to verify (partitioned check), plus one
    for the latest deposit package if there is one."""
    requests = []
    for region in instance.get_dynamic_partitions(regions.name or "regions"):
        flt = dg.AssetRecordsFilter(asset_key=raw_acquisition.key, asset_partitions=[region])
        if instance.fetch_materializations(flt, limit=1).records:
            requests.append(
                dg.RunRequest(
                    run_key=f"fixity-{region}-{scheduled_at}",
                    job_name=source_fixity_job.name,
                    partition_key=region,
                )
            )
    if instance.fetch_materializations(deposit_package.key, limit=1).records:
        requests.append(
            dg.RunRequest(
                run_key=f"fixity-package-{scheduled_at}", job_name=package_fixity_job.name
            )
        )
    return requests


def build_fixity_schedule(cron: str | None = None) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="fixity_schedule",
        cron_schedule=cron or os.environ.get("FIB_ASSETS_FIXITY_CRON", DEFAULT_FIXITY_CRON),
        execution_timezone="UTC",
        jobs=[source_fixity_job, package_fixity_job],
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly fixity: re-hash every region's raw source files and validate the "
        "latest deposit package; drift fails the source_fixity / package_fixity checks.",
    )
    def _fixity_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        stamp = (
            context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
            if context.scheduled_execution_time
            else "now"
        )
        requests = fixity_run_requests(context.instance, stamp)
        return requests or dg.SkipReason("nothing materialized yet: no checksums to verify")

    return _fixity_schedule


fixity_schedule = build_fixity_schedule()
