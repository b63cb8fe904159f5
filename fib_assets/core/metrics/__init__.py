"""Segmentation metrics without Dagster: semantic (:mod:`.semantic`), instance (:mod:`.instance`)
and blockwise evaluation of volumes larger than memory (:mod:`.blockwise`).

Arrays are (z, y, x); voxel sizes and distances are nm. See each module for the conventions
(empty masks, what blockwise results are exact).
"""

from fib_assets.core.metrics.blockwise import (
    ArrayReader,
    SemanticEvaluation,
    above,
    evaluate_instances_blockwise,
    evaluate_semantic,
    foreground,
)
from fib_assets.core.metrics.instance import (
    CellMapInstanceScore,
    InstanceEvaluation,
    InstanceScores,
    Matching,
    OverlapTable,
    cellmap_instance_score,
    cellmap_max_distance,
    cellmap_overall_score,
    evaluate_instances,
    instance_scores,
    label_instances,
    match_instances,
    normalized_hausdorff,
    relabel_instances,
)
from fib_assets.core.metrics.semantic import (
    COSEM_TOLERANCE_NM,
    Confusion,
    Hausdorff,
    SemanticScores,
    boundary_band_mask,
    confusion,
    hausdorff,
    semantic_scores,
    tolerance_confusion,
)

__all__ = [
    "COSEM_TOLERANCE_NM",
    "ArrayReader",
    "CellMapInstanceScore",
    "Confusion",
    "Hausdorff",
    "InstanceEvaluation",
    "InstanceScores",
    "Matching",
    "OverlapTable",
    "SemanticEvaluation",
    "SemanticScores",
    "above",
    "boundary_band_mask",
    "cellmap_instance_score",
    "cellmap_max_distance",
    "cellmap_overall_score",
    "confusion",
    "evaluate_instances",
    "evaluate_instances_blockwise",
    "evaluate_semantic",
    "foreground",
    "hausdorff",
    "instance_scores",
    "label_instances",
    "match_instances",
    "normalized_hausdorff",
    "relabel_instances",
    "semantic_scores",
    "tolerance_confusion",
]
