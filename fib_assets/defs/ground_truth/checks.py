"""Checks of ground-truth crops, evaluated on every revision. Those whose failure would poison
training are blocking (class ids, bounds, voxel size, empty crops, train/test overlap); the
annotated fraction only warns."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from fib_assets.core import labels
from fib_assets.defs.partitions import regions

ASSET = "ground_truth_crops"

_DESCRIPTIONS = {
    labels.IDS_IN_CLASS_MAP: "Every label id of every crop is 0 (unannotated) or a class of the "
    "class map (COSEM/CellMap ids by default). Fails naming the crops and the unknown ids.",
    labels.CROPS_INSIDE_RAW: "Every crop's ROI (raw voxels) lies inside the current raw volume.",
    labels.VOXEL_SIZE_COMPATIBLE: "Every crop's voxel size equals the raw voxel size or an "
    "integer fraction of it (e.g. CellMap labels at 2x the raw resolution).",
    labels.CROPS_NOT_EMPTY: "The revision has crops and every crop has annotated voxels.",
    labels.ANNOTATED_FRACTION: "Fraction of annotated (non-zero) voxels per crop, against the "
    "annotations resource's min_annotated_fraction (warning only).",
    labels.SPLIT_DISJOINT: "No crop of the test split overlaps a training crop (in raw voxels), "
    "so test metrics are never measured on training data.",
}

GROUND_TRUTH_CHECKS = [
    dg.AssetCheckSpec(
        name,
        asset=ASSET,
        partitions_def=regions,
        blocking=name in labels.BLOCKING_CHECKS,
        description=description,
    )
    for name, description in _DESCRIPTIONS.items()
]


def ground_truth_results(outcomes: Sequence[labels.LabelCheck]) -> list[dg.AssetCheckResult]:
    """Dagster check results from the core outcomes (ERROR when blocking, else WARN)."""
    return [
        dg.AssetCheckResult(
            check_name=o.name,
            asset_key=ASSET,
            passed=bool(o.passed),
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            description=o.description,
            metadata={"value": float(o.value), "details": dg.MetadataValue.json(o.details)},
        )
        for o in outcomes
    ]
