"""Quality checks of raw acquisitions. Continuity and readability are blocking: a region with
missing, duplicated or truncated slices must not feed any downstream asset."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from fib_assets.core import qc
from fib_assets.core.acquisition.region import RegionInventory
from fib_assets.defs.partitions import regions

SLICE_CONTINUITY = "slice_continuity"
SOURCE_FILES_READABLE = "source_files_readable"
SATURATION = "saturation"
BRIGHTNESS_DRIFT = "brightness_drift"
CURTAINING = "curtaining"
LATERAL_DRIFT = "lateral_drift"

RAW_ACQUISITION_CHECKS = [
    dg.AssetCheckSpec(
        SLICE_CONTINUITY,
        asset="raw_acquisition",
        partitions_def=regions,
        blocking=True,
        description="FIBSliceNum increases by one from slice to slice: no dropped slice (gap) "
        "and no slice written twice (duplicate). Fails naming the offending files.",
    ),
    dg.AssetCheckSpec(
        SOURCE_FILES_READABLE,
        asset="raw_acquisition",
        partitions_def=regions,
        blocking=True,
        description="Every source file has a valid header and all its pixel bytes (no "
        "truncated .dat file). Fails naming each file and how many bytes are missing.",
    ),
]

RAW_VOLUME_CHECKS = [
    dg.AssetCheckSpec(
        SATURATION,
        asset="raw_volume",
        partitions_def=regions,
        description="Fraction of voxels clipped at the detector's extreme values, per slice.",
    ),
    dg.AssetCheckSpec(
        BRIGHTNESS_DRIFT,
        asset="raw_volume",
        partitions_def=regions,
        description="Relative change of mean slice brightness along z (robust linear fit).",
    ),
    dg.AssetCheckSpec(
        CURTAINING,
        asset="raw_volume",
        partitions_def=regions,
        description="Vertical streak energy (FIB curtaining) relative to the image variance.",
    ),
    dg.AssetCheckSpec(
        LATERAL_DRIFT,
        asset="raw_volume",
        partitions_def=regions,
        description="Shift between consecutive slices (phase correlation on a central crop), px.",
    ),
]


def outcome_result(
    asset: str, check: str, outcome: qc.QCOutcome, *, severity: dg.AssetCheckSeverity
) -> dg.AssetCheckResult:
    """A Dagster check result from a core QC outcome: value, threshold and offending slices."""
    return dg.AssetCheckResult(
        check_name=check,
        asset_key=asset,
        passed=bool(outcome.passed),
        severity=severity,
        description=outcome.description,
        metadata={
            "value": float(outcome.value),
            "threshold": float(outcome.threshold),
            "offending_slices": dg.MetadataValue.json(list(outcome.offending_slices[:200])),
            "n_offending_slices": len(outcome.offending_slices),
            "details": dg.MetadataValue.json(outcome.details),
        },
    )


def readability_outcome(inv: RegionInventory) -> qc.QCOutcome:
    bad = [f for f in inv.files if not f.readable]
    return qc.QCOutcome(
        name=SOURCE_FILES_READABLE,
        passed=not bad,
        value=float(len(bad)),
        threshold=0.0,
        offending_slices=[i for i, f in enumerate(inv.files) if not f.readable],
        description=(
            f"all {len(inv.files)} source files readable"
            if not bad
            else f"{len(bad)} of {len(inv.files)} source files unreadable: "
            + "; ".join(f.error or f.name for f in bad[:3])
        ),
        details={"files": {f.name: f.error for f in bad}},
    )


def raw_acquisition_results(inv: RegionInventory) -> list[dg.AssetCheckResult]:
    nums = [(f.header or {}).get("FIBSliceNum") for f in inv.files]
    if any(n is None for n in nums):
        # TIFF stacks and old FileVersions carry no slice number: continuity is the file order
        nums = list(range(len(inv.files)))
    continuity = qc.check_slice_continuity([int(n) for n in nums], [f.name for f in inv.files])
    sev = dg.AssetCheckSeverity.ERROR
    return [
        outcome_result("raw_acquisition", SLICE_CONTINUITY, continuity, severity=sev),
        outcome_result(
            "raw_acquisition", SOURCE_FILES_READABLE, readability_outcome(inv), severity=sev
        ),
    ]


def raw_volume_results(
    stats: pd.DataFrame, shifts: pd.DataFrame, thresholds: qc.QCThresholds
) -> list[dg.AssetCheckResult]:
    # image-quality problems leave the data usable: they warn, and curators decide
    sev = dg.AssetCheckSeverity.WARN
    return [
        outcome_result(
            "raw_volume", SATURATION, qc.check_saturation(stats, thresholds), severity=sev
        ),
        outcome_result(
            "raw_volume",
            BRIGHTNESS_DRIFT,
            qc.check_brightness_drift(stats, thresholds),
            severity=sev,
        ),
        outcome_result(
            "raw_volume", CURTAINING, qc.check_curtaining(stats, thresholds), severity=sev
        ),
        outcome_result(
            "raw_volume", LATERAL_DRIFT, qc.check_lateral_drift(shifts, thresholds), severity=sev
        ),
    ]
