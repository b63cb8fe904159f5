"""The landing-zone sensor: every new complete region folder becomes a partition and a run."""

import json
from pathlib import Path

import dagster as dg

from fib_assets.core.acquisition.region import check_region_complete
from fib_assets.core.geometry import RegionKeyError, validate_region_key
from fib_assets.defs.acquisitions.assets import raw_acquisition, raw_volume
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource

# regions of the last batch named in the cursor (the count is always exact)
MAX_CURSOR_ADDED = 100


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
    complete, rejected, pending = scan_landing_zone(storage.landing_path())
    known = set(context.instance.get_dynamic_partitions(regions.name or "regions"))
    new = [r for r in complete if r not in known]
    for name, why in rejected.items():
        context.log.warning(f"landing zone: rejected folder {name!r}: {why}")
    for name, why in pending.items():
        context.log.info(f"landing zone: waiting for {name!r}: {why}")
    # the cursor is stored with every tick: it carries only what a curator must act on
    # (rejected and pending folders) and the last batch added, never every known region
    # (the instance's partition list is the record of those)
    previous = json.loads(context.cursor) if context.cursor else {}
    last_added = new or list(previous.get("last_added", []))
    cursor = json.dumps(
        {
            "last_added": last_added[:MAX_CURSOR_ADDED],
            "last_added_count": len(new) if new else previous.get("last_added_count", 0),
            "rejected": rejected,
            "pending": pending,
        },
        sort_keys=True,
    )
    if not new:
        return dg.SensorResult(skip_reason=dg.SkipReason("no new complete regions"), cursor=cursor)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"region-{r}", partition_key=r) for r in new],
        dynamic_partitions_requests=[regions.build_add_request(new)],
        cursor=cursor,
    )
