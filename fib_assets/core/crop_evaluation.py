"""Score a segmentation container against the ground-truth crops of a revision (no Dagster).

One row per class with every metric of :data:`fib_assets.core.tables.METRICS`, pooled over
the revision's crops: voxel and tolerance counts are summed over crops (so Dice, IoU,
precision and recall are those of all annotated voxels together, never a mean of crop
scores); Hausdorff distances are the maximum over crops (the 95th-percentile column is the
largest per-crop 95th percentile: an upper bound of the pooled percentile); instance F1 sums
matched/unmatched instances over crops at IoU >= ``iou_threshold``; the CellMap score is
``sqrt(instance combined x semantic IoU)`` with crops weighted by their annotated voxels.
Unannotated voxels (label 0) are never scored. Crops are read one at a time (bounded memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fib_assets.core import labels
from fib_assets.core.formats import open_volume
from fib_assets.core.metrics.instance import (
    WeightedScore,
    cellmap_overall_score,
    evaluate_instances,
    label_instances,
)
from fib_assets.core.metrics.semantic import COSEM_TOLERANCE_NM, Confusion, semantic_scores
from fib_assets.core.ml.classes import ClassSpec
from fib_assets.core.ml.crops import crop_labels
from fib_assets.core.ml.predict import read_container_roi


@dataclass
class _Pool:
    confusion: Confusion = field(default_factory=lambda: Confusion(0, 0, 0))
    tolerance: Confusion = field(default_factory=lambda: Confusion(0, 0, 0))
    band: Confusion = field(default_factory=lambda: Confusion(0, 0, 0))
    hausdorff: float = 0.0
    hausdorff95: float = 0.0
    instances: Confusion = field(default_factory=lambda: Confusion(0, 0, 0))
    true_instances: int = 0
    pred_instances: int = 0
    cellmap_instance: list[WeightedScore] = field(default_factory=list)
    cellmap_semantic: list[WeightedScore] = field(default_factory=list)


def _finite_or_nan(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def evaluate_crops(
    revision: labels.Revision,
    raw_path: str | Path,
    container: str | Path,
    classes: Sequence[ClassSpec],
    *,
    tolerance_nm: float = COSEM_TOLERANCE_NM,
    band_nm: float | None = None,
    iou_threshold: float = 0.5,
    crops: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Metrics per class of the instance segmentation ``container`` (``instances/<class>/s0``,
    z, y, x on the raw grid of ``raw_path``) against the crops of ``revision`` (all, or the
    named ``crops``). Distances in nm with the raw volume's (anisotropic) voxel size.
    Hausdorff columns are NaN when one side is empty in some crop (infinite distance)."""
    raw = open_volume(raw_path)
    try:
        voxel = raw.info.voxel_size
        pools = {c.name: _Pool() for c in classes}
        chosen = [c for c in revision.crops if crops is None or c.name in crops]
        if crops is not None and len(chosen) != len(set(crops)):
            missing = sorted(set(crops) - {c.name for c in chosen})
            raise ValueError(f"revision {revision.number} has no crops {missing}")
        for crop in chosen:
            truth_labels = crop_labels(revision, crop, raw)
            annotated = truth_labels != labels.UNANNOTATED
            n_annotated = int(np.count_nonzero(annotated))
            for spec in classes:
                pool = pools[spec.name]
                truth = spec.mask(truth_labels) & annotated
                pred_ids = read_container_roi(container, f"instances/{spec.name}", crop.roi)
                pred_ids = np.where(annotated, pred_ids, 0)
                s = semantic_scores(
                    truth, pred_ids > 0, voxel, tolerance_nm=tolerance_nm, band_nm=band_nm,
                    mask=annotated,
                )  # fmt: skip
                pool.confusion = pool.confusion + s.confusion
                pool.tolerance = pool.tolerance + s.tolerance
                if s.band is not None:
                    pool.band = pool.band + s.band
                pool.hausdorff = max(pool.hausdorff, s.hausdorff.max_nm)
                pool.hausdorff95 = max(pool.hausdorff95, s.hausdorff.percentile_nm)
                true_inst, _ = label_instances(truth)
                inst = evaluate_instances(true_inst, pred_ids, voxel, thresholds=(iou_threshold,))
                pool.instances = pool.instances + inst.scores.by_threshold[float(iou_threshold)]
                pool.true_instances += inst.scores.n_truth
                pool.pred_instances += inst.scores.n_pred
                pool.cellmap_instance.append(WeightedScore(inst.cellmap.combined, n_annotated))
                pool.cellmap_semantic.append(WeightedScore(s.confusion.iou, n_annotated))
    finally:
        raw.close()
    rows = []
    for spec in classes:
        p = pools[spec.name]
        overall = cellmap_overall_score(p.cellmap_instance, p.cellmap_semantic)
        rows.append(
            {
                "organelle": spec.name,
                "n_crops": len(chosen),
                "true_voxels": p.confusion.tp + p.confusion.fn,
                "predicted_voxels": p.confusion.tp + p.confusion.fp,
                "true_instances": p.true_instances,
                "predicted_instances": p.pred_instances,
                "dice": p.confusion.dice,
                "iou": p.confusion.iou,
                "precision": p.confusion.precision,
                "recall": p.confusion.recall,
                "dice_tolerance": p.tolerance.dice,
                "dice_band": p.band.dice if band_nm is not None else math.nan,
                "hausdorff_nm": _finite_or_nan(p.hausdorff),
                "hausdorff95_nm": _finite_or_nan(p.hausdorff95),
                "instance_f1": p.instances.f1,
                "cellmap_score": overall["overall_score"],
            }
        )
    return rows
