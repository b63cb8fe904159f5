"""Fixity checks: stored checksums re-verified on a schedule; drift is a failing ERROR check.

``source_fixity`` re-hashes a region's raw source files against the sha256 manifest its
``raw_acquisition`` recorded (and the manifest against its recorded sha256);
``package_fixity`` runs bagit's full validation (sha256 and sha512) of the latest deposit
package — where it is stored: a local folder, or an ``s3://`` bag whose objects are streamed
through both digests (never downloaded) after its completion marker is found. Both are
standalone checks, so they can run without re-materializing anything.
"""

import dagster as dg

from fib_assets.audit import fixity_of_metadata
from fib_assets.core.provenance.bag import BagInvalid, validate_bag_at
from fib_assets.defs.acquisitions.assets import raw_acquisition
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.provenance.assets import deposit_package

SOURCE_FIXITY = "source_fixity"
PACKAGE_FIXITY = "package_fixity"


@dg.asset_check(
    asset=raw_acquisition,
    name=SOURCE_FIXITY,
    partitions_def=regions,
    description="Re-hashes every raw source file of the region (sha256, streaming) and compares "
    "it with the manifest recorded by raw_acquisition; fails naming each changed or missing file "
    "and its path. Runs weekly (fixity_schedule) and on demand.",
)
def source_fixity(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    region = context.partition_key
    latest = latest_materialization(context.instance, raw_acquisition.key, region)
    if latest is None:
        return dg.AssetCheckResult(
            passed=False,
            description=f"raw_acquisition[{region}] is not materialized: no manifest to verify",
        )
    fx = fixity_of_metadata(latest["metadata"], verify=True)
    if fx is None:
        return dg.AssetCheckResult(
            passed=False,
            description=f"raw_acquisition[{region}] records no manifest/source metadata",
        )
    problems = [
        f"{p.path}: missing"
        if p.actual is None
        else f"{p.path}: sha256 {p.actual}, expected {p.expected}"
        for p in fx.problems
    ]
    if fx.error:
        problems.insert(0, fx.error)
    if fx.manifest_expected_sha256 and fx.manifest_actual_sha256 != fx.manifest_expected_sha256:
        problems.insert(0, f"manifest {fx.manifest} changed since it was recorded")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"all {fx.n_files} source files under {fx.root} match their sha256"
            if not problems
            else f"fixity drift in {len(problems)} place(s): " + "; ".join(problems[:5])
        ),
        metadata={
            "n_files": fx.n_files,
            "source": dg.MetadataValue.path(fx.root),
            "manifest": dg.MetadataValue.path(fx.manifest),
            "problems": dg.MetadataValue.json(problems[:200]),
        },
    )


@dg.asset_check(
    asset=deposit_package,
    name=PACKAGE_FIXITY,
    description="bagit's full validation of the latest deposit package: every payload and tag "
    "file against its sha256 and sha512 manifests; fails naming each altered, missing or "
    "unexpected file.",
)
def package_fixity(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    recs = context.instance.fetch_materializations(deposit_package.key, limit=1).records
    if not recs:
        return dg.AssetCheckResult(passed=False, description="deposit_package is not materialized")
    mat = recs[0].event_log_entry.asset_materialization
    assert mat is not None
    # a local folder (bagit) or an s3:// bag (every object streamed through sha256 + sha512)
    path = str(mat.metadata["dagster/uri"].value)
    try:
        summary = validate_bag_at(path)
    except BagInvalid as exc:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc)
        )
    return dg.AssetCheckResult(
        passed=True,
        description=f"bag {path}: {summary['payload_files']} payload files valid "
        f"({', '.join(summary['algorithms'])})",
        metadata={
            "payload_files": summary["payload_files"],
            "bag": dg.MetadataValue.path(path),
        },
    )
