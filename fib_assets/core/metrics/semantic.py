"""Semantic (voxel-wise) segmentation metrics: confusion counts, COSEM's tolerance variants,
ASEM's boundary-band exclusion mask and Hausdorff distances in nm.

Every array is (z, y, x); masks are boolean (``True`` = the class); voxel sizes and distances
are nanometres, anisotropic voxels allowed. Distances come from
:func:`scipy.ndimage.distance_transform_edt` with ``sampling = voxel size``: the distance of a
voxel to a mask is the Euclidean distance (nm) between voxel centres to the nearest voxel of the
mask (0 inside the mask).

Conventions (the same in memory and blockwise, see :mod:`fib_assets.core.metrics.blockwise`):

- A ratio whose denominator is 0 is **1.0**: with nothing predicted and nothing true there is
  nothing wrong (Dice = IoU = precision = recall = 1); with truth but no prediction precision is
  1.0 (nothing claimed) and recall 0.0, so Dice/F1 is 0. This is scikit-learn's
  ``zero_division=1.0`` and CellMap's "IoU 1.0 when TP + FP + FN = 0".
- Hausdorff distance to an empty mask: both masks empty -> 0.0; exactly one empty -> ``inf``
  (no voxel to measure to). CellMap's capped variant (:mod:`.instance`) caps it instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fib_assets.core.geometry import VoxelSize

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

#: COSEM's tolerance distance (Heinrich et al. 2021; CNNectome ``CremiEvaluator(tol_distance=40)``)
COSEM_TOLERANCE_NM = 40.0


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def as_voxel_size(voxel_size: VoxelSize | Sequence[float] | float) -> VoxelSize:
    """A :class:`VoxelSize` from a VoxelSize, a (z, y, x) sequence or one isotropic number."""
    if isinstance(voxel_size, VoxelSize):
        return voxel_size
    if isinstance(voxel_size, int | float):
        return VoxelSize.isotropic(float(voxel_size))
    v = [float(x) for x in voxel_size]
    if len(v) != 3:
        raise ValueError(f"voxel size must have 3 values (z, y, x) in nm, got {v}")
    return VoxelSize(v[0], v[1], v[2])


def _masks(truth: npt.ArrayLike, pred: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} shapes differ")
    if t.ndim != 3:
        raise ValueError(f"expected (z, y, x) masks, got {t.ndim} axes")
    return t, p


@dataclass(frozen=True)
class Confusion:
    """Voxel (or instance) confusion counts. Counts add up across blocks (``a + b``), so every
    ratio computed from summed counts is exact blockwise."""

    tp: int
    fp: int
    fn: int
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def dice(self) -> float:
        """Dice = F1 = 2 TP / (2 TP + FP + FN)."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def f1(self) -> float:
        return self.dice

    @property
    def iou(self) -> float:
        """IoU (Jaccard) = TP / (TP + FP + FN)."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
            "dice": self.dice,
            "iou": self.iou,
        }


def confusion(
    truth: npt.ArrayLike, pred: npt.ArrayLike, mask: npt.ArrayLike | None = None
) -> Confusion:
    """Voxel confusion counts of boolean ``pred`` against ``truth``, only where ``mask`` is true
    (default: everywhere)."""
    t, p = _masks(truth, pred)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        t, p = t[m], p[m]
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return Confusion(tp, fp, fn, int(t.size) - tp - fp - fn)


def distance_to(mask: npt.ArrayLike, voxel_size: VoxelSize | Sequence[float] | float) -> FloatArray:
    """Distance (nm) of every voxel to the nearest ``True`` voxel of ``mask`` (0 inside it);
    ``inf`` everywhere when ``mask`` has no ``True`` voxel."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    vox = as_voxel_size(voxel_size).as_tuple()
    out: FloatArray = np.asarray(ndimage.distance_transform_edt(~m, sampling=vox), dtype=np.float64)
    return out


def tolerance_confusion(
    truth: npt.ArrayLike,
    pred: npt.ArrayLike,
    voxel_size: VoxelSize | Sequence[float] | float,
    tolerance_nm: float = COSEM_TOLERANCE_NM,
    mask: npt.ArrayLike | None = None,
) -> Confusion:
    """COSEM's confusion counts with a tolerance distance (Heinrich et al., Nature 2021).

    As CNNectome's ``CremiEvaluator`` (saalfeldlab/CNNectome,
    ``CNNectome/validation/organelles/cremi_scores.py``): a predicted voxel farther than
    ``tolerance_nm`` from every true voxel is a false positive; a true voxel farther than
    ``tolerance_nm`` from every predicted voxel is a false negative (so a voxel within the
    tolerance of the other mask counts as matched); TP = |pred ∪ truth| − FP − FN and TN the
    rest. Only voxels where ``mask`` is true take part (truth and prediction outside it are
    treated as absent, also as targets of distances). ``tolerance_nm = 0`` gives
    :func:`confusion`.
    """
    if tolerance_nm < 0 or not math.isfinite(tolerance_nm):
        raise ValueError(f"tolerance_nm must be a non-negative number, got {tolerance_nm}")
    t, p = _masks(truth, pred)
    m = np.ones(t.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    t, p = t & m, p & m
    fp = int(np.count_nonzero(p & (distance_to(t, voxel_size) > tolerance_nm)))
    fn = int(np.count_nonzero(t & (distance_to(p, voxel_size) > tolerance_nm)))
    union = int(np.count_nonzero(t | p))
    return Confusion(union - fp - fn, fp, fn, int(np.count_nonzero(m)) - union)


def boundary_band_mask(
    truth: npt.ArrayLike, voxel_size: VoxelSize | Sequence[float] | float, band_nm: float
) -> BoolArray:
    """ASEM's evaluation mask (Gallusser et al., bioRxiv 2022): ``True`` where a voxel is scored,
    ``False`` for voxels within ``band_nm`` of the true object boundary, on either side.

    A foreground voxel is in the band when its distance to the nearest background voxel is at
    most ``band_nm``; a background voxel when its distance to the nearest foreground voxel is.
    So ``band_nm = 0`` excludes nothing and ``band_nm`` = one voxel size excludes one voxel layer
    on each side of the boundary. A truth without boundary (all or no foreground) excludes
    nothing.
    """
    if band_nm < 0 or not math.isfinite(band_nm):
        raise ValueError(f"band_nm must be a non-negative number, got {band_nm}")
    t = np.asarray(truth, dtype=bool)
    near_bg = distance_to(~t, voxel_size) <= band_nm  # for foreground voxels
    near_fg = distance_to(t, voxel_size) <= band_nm  # for background voxels
    return np.asarray(~((t & near_bg) | (~t & near_fg)))


@dataclass(frozen=True)
class Hausdorff:
    """Symmetric Hausdorff distance (nm) and its ``percentile`` variant.

    ``max_nm`` = max(directed truth->pred, directed pred->truth), each the largest distance of a
    voxel of one mask to the other mask. ``percentile_nm`` = max of the two directed
    ``percentile``-th percentiles (numpy's linear interpolation) over all voxels of each mask,
    as CellMap's ``method="percentile"``. ``exact`` is false only for blockwise results that are
    lower bounds (see :mod:`.blockwise`).
    """

    max_nm: float
    percentile_nm: float
    truth_to_pred_nm: float
    pred_to_truth_nm: float
    percentile: float = 95.0
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "hausdorff_nm": self.max_nm,
            f"hausdorff_p{self.percentile:g}_nm": self.percentile_nm,
            "hausdorff_truth_to_pred_nm": self.truth_to_pred_nm,
            "hausdorff_pred_to_truth_nm": self.pred_to_truth_nm,
            "hausdorff_exact": self.exact,
        }


def directed_distances(
    source: npt.ArrayLike, target: npt.ArrayLike, voxel_size: VoxelSize | Sequence[float] | float
) -> FloatArray:
    """Distances (nm) of every ``source`` voxel (C order) to the nearest ``target`` voxel."""
    s = np.asarray(source, dtype=bool)
    return np.asarray(distance_to(target, voxel_size)[s], dtype=np.float64)


def hausdorff(
    truth: npt.ArrayLike,
    pred: npt.ArrayLike,
    voxel_size: VoxelSize | Sequence[float] | float,
    percentile: float = 95.0,
) -> Hausdorff:
    """Hausdorff distance (max and ``percentile``) between two masks in nm (module conventions
    for empty masks: both empty 0.0, one empty ``inf``)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    t, p = _masks(truth, pred)
    nt, np_ = int(np.count_nonzero(t)), int(np.count_nonzero(p))
    if nt == 0 and np_ == 0:
        return Hausdorff(0.0, 0.0, 0.0, 0.0, percentile)
    if nt == 0 or np_ == 0:
        inf = math.inf
        return Hausdorff(inf, inf, inf if nt else 0.0, inf if np_ else 0.0, percentile)
    d_tp = directed_distances(t, p, voxel_size)
    d_pt = directed_distances(p, t, voxel_size)
    return Hausdorff(
        max_nm=float(max(d_tp.max(), d_pt.max())),
        percentile_nm=float(max(np.percentile(d_tp, percentile), np.percentile(d_pt, percentile))),
        truth_to_pred_nm=float(d_tp.max()),
        pred_to_truth_nm=float(d_pt.max()),
        percentile=percentile,
    )


@dataclass(frozen=True)
class SemanticScores:
    """Every semantic metric of one class: plain counts, COSEM tolerance counts, counts inside
    ASEM's band mask (``None`` without a band) and the Hausdorff distances."""

    confusion: Confusion
    tolerance: Confusion
    tolerance_nm: float
    band: Confusion | None
    band_nm: float | None
    hausdorff: Hausdorff

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.confusion.to_dict()}
        out.update({f"tol_{k}": v for k, v in self.tolerance.to_dict().items()})
        out["tolerance_nm"] = self.tolerance_nm
        if self.band is not None:
            out.update({f"band_{k}": v for k, v in self.band.to_dict().items()})
            out["band_nm"] = self.band_nm
        out.update(self.hausdorff.to_dict())
        return out


def semantic_scores(
    truth: npt.ArrayLike,
    pred: npt.ArrayLike,
    voxel_size: VoxelSize | Sequence[float] | float,
    *,
    tolerance_nm: float = COSEM_TOLERANCE_NM,
    band_nm: float | None = None,
    percentile: float = 95.0,
    mask: npt.ArrayLike | None = None,
) -> SemanticScores:
    """All semantic metrics of boolean ``pred`` vs ``truth`` in memory (for crops; use
    :func:`fib_assets.core.metrics.blockwise.evaluate_semantic` for large volumes). ``mask``
    restricts the counts (not the Hausdorff distance) to annotated voxels."""
    t, p = _masks(truth, pred)
    band = None
    if band_nm is not None:
        scored = boundary_band_mask(t, voxel_size, band_nm)
        if mask is not None:
            scored &= np.asarray(mask, dtype=bool)
        band = confusion(t, p, scored)
    return SemanticScores(
        confusion=confusion(t, p, mask),
        tolerance=tolerance_confusion(t, p, voxel_size, tolerance_nm, mask),
        tolerance_nm=tolerance_nm,
        band=band,
        band_nm=band_nm,
        hausdorff=hausdorff(t, p, voxel_size, percentile),
    )
