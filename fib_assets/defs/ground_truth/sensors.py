"""The annotations-inbox sensor: a new or corrected submission becomes a run of
``ground_truth_crops`` for its region."""

import json

import dagster as dg

from fib_assets.core.geometry import RegionKeyError, validate_region_key
from fib_assets.core.labels import scan_inbox
from fib_assets.defs.ground_truth.assets import RAW_VOLUME, ground_truth_crops
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions


@dg.sensor(
    name="annotations_inbox_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=[ground_truth_crops],
    description="Watches the annotations inbox; when a region's complete submissions (Paintera "
    "containers with annotation.yaml) are new or changed, requests a ground_truth_crops run "
    "for that region (once its raw_volume exists). Invalid folders, incomplete submissions and "
    "unusable sidecars are reported in the cursor.",
)
def annotations_inbox_sensor(
    context: dg.SensorEvaluationContext, annotations: AnnotationsResource
) -> dg.SensorResult:
    previous = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = dict(previous.get("seen", {}))
    pending: dict[str, str] = {}
    rejected: dict[str, str] = {}
    requests = []
    inbox = annotations.inbox_path()
    known = set(context.instance.get_dynamic_partitions(regions.name or "regions"))
    folders = sorted(p.name for p in inbox.iterdir() if p.is_dir()) if inbox.is_dir() else []
    for name in (n for n in folders if not n.startswith(".")):
        try:
            region = validate_region_key(name)
        except RegionKeyError as err:
            rejected[name] = str(err)
            continue
        scan = scan_inbox(inbox, region)
        for sub, why in scan.pending.items():
            pending[f"{region}/{sub}"] = why
        for sub, why in scan.rejected.items():
            rejected[f"{region}/{sub}"] = why
        if not scan.submissions and not scan.rejected:
            continue
        fp = scan.fingerprint + ("-rejected" if scan.rejected else "")
        if seen.get(region) == fp:
            continue
        if region not in known:
            pending[region] = "not a known region (no landing-zone acquisition yet)"
            continue
        if latest_materialization(context.instance, RAW_VOLUME, region) is None:
            pending[region] = "raw_volume not materialized yet"
            continue
        requests.append(
            dg.RunRequest(run_key=f"annotations-{region}-{fp[:16]}", partition_key=region)
        )
        seen[region] = fp
    for key, why in {**pending, **rejected}.items():
        context.log.info(f"annotations inbox: {key}: {why}")
    cursor = json.dumps({"seen": seen, "pending": pending, "rejected": rejected}, sort_keys=True)
    if not requests:
        return dg.SensorResult(
            skip_reason=dg.SkipReason("no new or corrected annotations"), cursor=cursor
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor)
