"""The landing-zone sensor: every new complete region folder becomes a partition and a run."""

import json
from pathlib import Path

import dagster as dg

from fib_assets.core.acquisition.region import check_region_complete
from fib_assets.core.geometry import RegionKeyError, validate_region_key
from fib_assets.defs.acquisitions.assets import raw_acquisition, raw_volume
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource


def scan_landing_zone(landing: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Split the landing zone's folders into (complete regions, rejected, pending) with reasons.

    Rejected folders have names that are not valid region keys (they never become partitions);
    pending ones are valid but not complete yet (no region.yaml, or files still arriving).
    """
    complete: list[str] = []
    rejected: dict[str, str] = {}
    pending: dict[str, str] = {}
    if not landing.is_dir():
        return complete, rejected, pending
    for folder in sorted(p for p in landing.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            validate_region_key(folder.name)
        except RegionKeyError as exc:
            rejected[folder.name] = str(exc)
            continue
        reason = check_region_complete(folder)
        if reason is None:
            complete.append(folder.name)
        else:
            pending[folder.name] = reason
    return complete, rejected, pending


@dg.sensor(
    name="landing_zone_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=[raw_acquisition, raw_volume],
    description="Watches the landing zone; each new complete region folder (region.yaml "
    "written) becomes a `regions` partition and a run of its raw acquisition assets. Invalid "
    "folder names and incomplete folders are reported in the cursor, never added.",
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult | dg.SkipReason:
    complete, rejected, pending = scan_landing_zone(Path(storage.landing_zone))
    known = set(context.instance.get_dynamic_partitions(regions.name or "regions"))
    new = [r for r in complete if r not in known]
    for name, why in rejected.items():
        context.log.warning(f"landing zone: rejected folder {name!r}: {why}")
    for name, why in pending.items():
        context.log.info(f"landing zone: waiting for {name!r}: {why}")
    cursor = json.dumps(
        {"regions": sorted(known | set(new)), "rejected": rejected, "pending": pending},
        sort_keys=True,
    )
    if not new:
        return dg.SensorResult(skip_reason=dg.SkipReason("no new complete regions"), cursor=cursor)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"region-{r}", partition_key=r) for r in new],
        dynamic_partitions_requests=[regions.build_add_request(new)],
        cursor=cursor,
    )
