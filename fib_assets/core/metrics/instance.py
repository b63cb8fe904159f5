"""Instance segmentation metrics: connected components, a sparse truth x prediction overlap
table, Hungarian matching on IoU, instance F1 / precision / recall at IoU thresholds, and the
CellMap Segmentation Challenge's normalized Hausdorff distance and combined scores.

Label volumes are (z, y, x) unsigned integers, 0 = background, any other value one instance;
voxel sizes and distances are nm.

CellMap definitions (janelia-cellmap/cellmap-segmentation-challenge, ``docs/source/evaluation.rst``
and ``src/cellmap_segmentation_challenge/utils/eval_utils/{scoring,distance,instance_matching,
aggregation}.py``), reproduced here:

- predictions are relabelled by connected components (``cc3d.connected_components``, 26-connected);
- truth and prediction instances are matched one-to-one maximising the summed IoU over pairs that
  overlap (CellMap solves it as a min-cost flow; here Hungarian assignment,
  :func:`scipy.optimize.linear_sum_assignment`, per connected component of the overlap graph —
  the same optimum);
- one Hausdorff distance (nm) per truth instance against its matched prediction (an unmatched
  truth instance gets the cap), plus the cap for every unmatched prediction; distances are capped
  at ``min_axis(voxel size x shape) / 2`` (``compute_max_distance``);
- normalized Hausdorff = ``1.01 ** (-distance / ||voxel size||)`` (``normalize_distance``),
  averaged over those entries;
- instance combined score = ``sqrt(F1 x mean normalized Hausdorff)`` (geometric mean of
  accuracy and normalized Hausdorff, ``evaluation.rst``);
- overall score = ``sqrt(mean instance combined score x mean semantic IoU)``
  (``aggregation.combine_scores``), both means optionally voxel-weighted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from fib_assets.core.geometry import VoxelSize
from fib_assets.core.metrics.semantic import Confusion, as_voxel_size

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9)


def label_instances(mask: npt.ArrayLike, connectivity: int = 6) -> tuple[U64, int]:
    """Connected components of a boolean (z, y, x) mask (connected-components-3d): labels
    1..n (uint64) in scan order and n. ``connectivity`` is 6 (faces), 18 or 26."""
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return _cc3d(np.asarray(mask, dtype=bool), connectivity)


def _cc3d(arr: npt.NDArray[Any], connectivity: int) -> tuple[U64, int]:
    """cc3d with a workaround: connected-components-3d 4.1.1 raises "maximum length exception"
    for 18/26-connectivity on volumes with an axis shorter than 3 voxels (e.g. [[[1, 0, 1]]]);
    a background border around such tiny volumes changes no component and avoids it."""
    pad = min(arr.shape, default=0) < 3
    a = np.ascontiguousarray(np.pad(arr, 1) if pad else arr)
    labels, n = cc3d.connected_components(a, connectivity=connectivity, return_N=True)  # type: ignore[call-overload]
    out = np.asarray(labels, dtype=np.uint64)
    return (out[1:-1, 1:-1, 1:-1].copy() if pad else out), int(n)


def relabel_instances(labels: npt.ArrayLike, connectivity: int = 26) -> tuple[U64, int]:
    """Split every label into its connected components (multi-label cc3d, as CellMap relabels
    submitted predictions): touching objects with different ids stay apart."""
    arr = np.ascontiguousarray(np.asarray(labels))
    if arr.dtype.kind not in "ui":
        raise ValueError(f"instance labels must be integers, got {arr.dtype}")
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return _cc3d(arr, connectivity)


def _count(ids: U64) -> tuple[U64, I64]:
    u, c = np.unique(ids, return_counts=True)
    return u.astype(np.uint64), c.astype(np.int64)


def _count_pairs(a: U64, b: U64) -> tuple[U64, U64, I64]:
    if a.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.ones(a.size, dtype=bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, a.size)).astype(np.int64)
    return a[starts], b[starts], counts


def _sum_by_id(ids: U64, counts: I64) -> tuple[U64, I64]:
    u, inv = np.unique(ids, return_inverse=True)
    return u.astype(np.uint64), np.bincount(inv, weights=counts, minlength=u.size).astype(np.int64)


@dataclass(frozen=True)
class OverlapTable:
    """Sizes (voxels) of every truth and predicted instance and the voxel counts of every
    overlapping (truth, prediction) pair — sparse, and additive across blocks (``a + b``)."""

    truth_ids: U64
    truth_sizes: I64
    pred_ids: U64
    pred_sizes: I64
    pair_truth: U64
    pair_pred: U64
    pair_counts: I64

    @classmethod
    def empty(cls) -> OverlapTable:
        z, zi = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return cls(z, zi, z, zi, z, z, zi)

    @classmethod
    def from_labels(cls, truth: npt.ArrayLike, pred: npt.ArrayLike) -> OverlapTable:
        t = np.asarray(truth)
        p = np.asarray(pred)
        if t.shape != p.shape:
            raise ValueError(f"truth {t.shape} and prediction {p.shape} shapes differ")
        for name, a in (("truth", t), ("prediction", p)):
            if a.dtype.kind not in "ui" or (a.size and int(a.min()) < 0):
                raise ValueError(f"{name} instance labels must be non-negative integers")
        t = t.ravel().astype(np.uint64)
        p = p.ravel().astype(np.uint64)
        tid, tsz = _count(t[t > 0])
        pid, psz = _count(p[p > 0])
        both = (t > 0) & (p > 0)
        pt, pp, pc = _count_pairs(t[both], p[both])
        return cls(tid, tsz, pid, psz, pt, pp, pc)

    def __add__(self, other: OverlapTable) -> OverlapTable:
        tid, tsz = _sum_by_id(
            np.concatenate([self.truth_ids, other.truth_ids]),
            np.concatenate([self.truth_sizes, other.truth_sizes]),
        )
        pid, psz = _sum_by_id(
            np.concatenate([self.pred_ids, other.pred_ids]),
            np.concatenate([self.pred_sizes, other.pred_sizes]),
        )
        a = np.concatenate([self.pair_truth, other.pair_truth])
        b = np.concatenate([self.pair_pred, other.pair_pred])
        c = np.concatenate([self.pair_counts, other.pair_counts])
        if a.size:
            order = np.lexsort((b, a))
            a, b, c = a[order], b[order], c[order]
            new = np.ones(a.size, dtype=bool)
            new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
            starts = np.flatnonzero(new)
            c = np.add.reduceat(c, starts).astype(np.int64)
            a, b = a[starts], b[starts]
        return OverlapTable(tid, tsz, pid, psz, a, b, c)

    @property
    def n_truth(self) -> int:
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def pair_iou(self) -> F64:
        """IoU of every overlapping pair (same order as ``pair_truth``/``pair_pred``)."""
        ts = self.truth_sizes[np.searchsorted(self.truth_ids, self.pair_truth)]
        ps = self.pred_sizes[np.searchsorted(self.pred_ids, self.pair_pred)]
        inter = self.pair_counts.astype(np.float64)
        return np.asarray(inter / (ts + ps - self.pair_counts), dtype=np.float64)


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of truth to predicted instances (pairs with their IoU)."""

    truth_ids: U64
    pred_ids: U64
    iou: F64
    n_truth: int
    n_pred: int
    iou_threshold: float

    @property
    def tp(self) -> int:
        return int(self.truth_ids.size)

    @property
    def confusion(self) -> Confusion:
        """Instance counts: TP matched pairs, FP unmatched predictions, FN unmatched truth."""
        return Confusion(self.tp, self.n_pred - self.tp, self.n_truth - self.tp)

    def pred_to_truth(self) -> dict[int, int]:
        return {int(p): int(t) for t, p in zip(self.truth_ids, self.pred_ids, strict=True)}

    def truth_to_pred(self) -> dict[int, int]:
        return {int(t): int(p) for t, p in zip(self.truth_ids, self.pred_ids, strict=True)}


def match_instances(table: OverlapTable, iou_threshold: float = 0.0) -> Matching:
    """Hungarian matching maximising the summed IoU over pairs with IoU >= ``iou_threshold``
    (and > 0: instances that do not overlap are never matched).

    The overlap graph is split into connected components and each is solved densely with
    :func:`scipy.optimize.linear_sum_assignment`, so memory follows the largest cluster of
    mutually overlapping instances, never n_truth x n_pred.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    iou = table.pair_iou()
    keep = (iou > 0) & (iou >= iou_threshold)
    ti = np.searchsorted(table.truth_ids, table.pair_truth[keep])
    pi = np.searchsorted(table.pred_ids, table.pair_pred[keep])
    w = iou[keep]
    nt, npr = table.n_truth, table.n_pred
    out_t: list[int] = []
    out_p: list[int] = []
    out_w: list[float] = []
    if w.size:
        graph = sparse.coo_matrix(
            (np.ones(w.size), (ti, nt + pi)), shape=(nt + npr, nt + npr)
        ).tocsr()
        _, comp = connected_components(graph, directed=False)
        edge_comp = comp[ti]
        order = np.argsort(edge_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        for group in np.split(order, bounds):
            gt, gp, gw = ti[group], pi[group], w[group]
            if group.size == 1:
                rows_t, rows_p, vals = gt, gp, gw
            else:
                ut, it = np.unique(gt, return_inverse=True)
                up, ip = np.unique(gp, return_inverse=True)
                dense = np.zeros((ut.size, up.size))
                dense[it, ip] = gw
                r, c = linear_sum_assignment(dense, maximize=True)
                ok = dense[r, c] > 0
                rows_t, rows_p, vals = ut[r[ok]], up[c[ok]], dense[r[ok], c[ok]]
            out_t.extend(int(x) for x in rows_t)
            out_p.extend(int(x) for x in rows_p)
            out_w.extend(float(x) for x in vals)
    order_t = np.argsort(np.asarray(out_t, dtype=np.int64), kind="stable")
    return Matching(
        truth_ids=table.truth_ids[np.asarray(out_t, dtype=np.int64)[order_t]],
        pred_ids=table.pred_ids[np.asarray(out_p, dtype=np.int64)[order_t]],
        iou=np.asarray(out_w, dtype=np.float64)[order_t],
        n_truth=nt,
        n_pred=npr,
        iou_threshold=iou_threshold,
    )


@dataclass(frozen=True)
class InstanceScores:
    """Instance precision / recall / F1 at each IoU threshold (one matching per threshold)."""

    n_truth: int
    n_pred: int
    by_threshold: dict[float, Confusion]
    mean_matched_iou: float  # over the matching without threshold (1.0 when nothing to match)

    def f1(self, threshold: float) -> float:
        return self.by_threshold[threshold].f1

    def to_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "iou_threshold": t,
                "n_truth": self.n_truth,
                "n_pred": self.n_pred,
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
            }
            for t, c in sorted(self.by_threshold.items())
        ]


def instance_scores(
    table: OverlapTable, thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS
) -> InstanceScores:
    """Instance F1 / precision / recall at every IoU threshold from an overlap table (a true
    positive is a matched pair with IoU >= threshold; empty-set ratios are 1.0)."""
    base = match_instances(table, 0.0)
    mean_iou = float(base.iou.mean()) if base.iou.size else (1.0 if not table.n_truth else 0.0)
    by = {float(t): match_instances(table, float(t)).confusion for t in thresholds}
    return InstanceScores(table.n_truth, table.n_pred, by, mean_iou)


# --- CellMap normalized Hausdorff and combined scores --------------------------------------------


def cellmap_max_distance(
    voxel_size: VoxelSize | Sequence[float] | float, shape: Sequence[int]
) -> float:
    """CellMap's Hausdorff cap (``compute_max_distance``): half the volume's smallest physical
    extent, ``min_axis(voxel size x shape) / 2`` in nm."""
    v = as_voxel_size(voxel_size).as_tuple()
    return float(min(vv * s / 2 for vv, s in zip(v, shape, strict=True)))


def normalized_hausdorff(
    distance_nm: float | npt.ArrayLike, voxel_size: VoxelSize | Sequence[float] | float
) -> F64:
    """CellMap's ``normalize_distance``: ``1.01 ** (-d / ||voxel size||)`` in [0, 1];
    ``inf`` -> 0."""
    d = np.asarray(distance_nm, dtype=np.float64)
    norm = float(np.linalg.norm(as_voxel_size(voxel_size).as_tuple()))
    return np.asarray(np.where(np.isinf(d), 0.0, 1.01 ** (-d / norm)), dtype=np.float64)


def bounding_boxes(labels: npt.ArrayLike) -> dict[int, tuple[slice, ...]]:
    """Bounding box (slices) of every non-zero label, in one pass over the volume."""
    arr = np.asarray(labels)
    ids, inverse = np.unique(arr, return_inverse=True)
    found = ndimage.find_objects(inverse.reshape(arr.shape).astype(np.int64) + 1)
    return {int(i): box for i, box in zip(ids.tolist(), found, strict=True) if i and box}


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    pairs = zip(a, b, strict=True)
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in pairs)


def _bbox(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...] | None:
    found = ndimage.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def pair_hausdorff(
    a: npt.ArrayLike, b: npt.ArrayLike, voxel_size: VoxelSize | Sequence[float] | float
) -> float:
    """Symmetric Hausdorff distance (nm) between two masks (all voxels), computed inside the
    bounding box of their union (exact: every voxel of both lies inside it). Both empty -> 0,
    one empty -> ``inf``."""
    am = np.asarray(a, dtype=bool)
    bm = np.asarray(b, dtype=bool)
    if not am.any() and not bm.any():
        return 0.0
    if not am.any() or not bm.any():
        return math.inf
    box = _bbox(am | bm)
    assert box is not None
    am, bm = am[box], bm[box]
    v = as_voxel_size(voxel_size).as_tuple()
    d_to_b = ndimage.distance_transform_edt(~bm, sampling=v)
    d_to_a = ndimage.distance_transform_edt(~am, sampling=v)
    return float(max(d_to_b[am].max(), d_to_a[bm].max()))


@dataclass(frozen=True)
class CellMapInstanceScore:
    """CellMap's instance scores of one class in one volume (module docstring)."""

    tp: int
    fp: int
    fn: int
    hausdorff_nm: tuple[float, ...]  # per truth instance (sorted ids), then per unmatched pred
    max_distance_nm: float
    voxel_size: tuple[float, float, float]
    exact: bool = True  # False: some blockwise distances are lower bounds (see .blockwise)
    inexact_instances: int = 0

    @property
    def f1(self) -> float:
        return Confusion(self.tp, self.fp, self.fn).f1

    @property
    def mean_hausdorff_nm(self) -> float:
        return float(np.mean(self.hausdorff_nm)) if self.hausdorff_nm else 0.0

    @property
    def normalized_hausdorff(self) -> float:
        """Mean normalized Hausdorff over the entries; 1.0 when there are none (no truth and no
        prediction instance: nothing to penalise)."""
        if not self.hausdorff_nm:
            return 1.0
        return float(np.mean(normalized_hausdorff(np.asarray(self.hausdorff_nm), self.voxel_size)))

    @property
    def combined(self) -> float:
        return math.sqrt(self.f1 * self.normalized_hausdorff)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "f1": self.f1,
            "hausdorff_nm": self.mean_hausdorff_nm,
            "normalized_hausdorff": self.normalized_hausdorff,
            "combined_score": self.combined,
            "max_distance_nm": self.max_distance_nm,
            "exact": self.exact,
            "inexact_instances": self.inexact_instances,
        }


def cellmap_hausdorff_entries(
    per_truth: Mapping[int, float], n_unmatched_pred: int, max_distance_nm: float
) -> tuple[float, ...]:
    """CellMap's list of distances: each truth instance's (capped) distance in id order, then
    the cap once per unmatched prediction."""
    vals = [min(float(per_truth[k]), max_distance_nm) for k in sorted(per_truth)]
    return tuple(vals + [max_distance_nm] * n_unmatched_pred)


def cellmap_instance_score(
    truth_labels: npt.ArrayLike,
    pred_labels: npt.ArrayLike,
    voxel_size: VoxelSize | Sequence[float] | float,
    *,
    relabel_prediction: bool = True,
    max_distance_nm: float | None = None,
) -> CellMapInstanceScore:
    """CellMap's instance score of one class in one (in-memory) volume: relabel the prediction
    by 26-connected components (``relabel_prediction``), match on IoU, F1 from the matching and
    the per-instance Hausdorff distances capped at ``max_distance_nm`` (default
    :func:`cellmap_max_distance`)."""
    t = np.asarray(truth_labels)
    p = np.asarray(pred_labels)
    if relabel_prediction:
        p, _ = relabel_instances(p)
    vox = as_voxel_size(voxel_size)
    cap = cellmap_max_distance(vox, t.shape) if max_distance_nm is None else max_distance_nm
    table = OverlapTable.from_labels(t, p)
    matching = match_instances(table, 0.0)
    t2p = matching.truth_to_pred()
    t_box, p_box = bounding_boxes(t), bounding_boxes(p)
    per_truth: dict[int, float] = {}
    for tid in table.truth_ids.tolist():
        pid = t2p.get(int(tid))
        if pid is None:
            per_truth[int(tid)] = cap
        else:
            box = _union(t_box[int(tid)], p_box[pid])  # both instances lie inside it
            per_truth[int(tid)] = pair_hausdorff(t[box] == tid, p[box] == pid, vox)
    entries = cellmap_hausdorff_entries(per_truth, table.n_pred - matching.tp, cap)
    c = matching.confusion
    return CellMapInstanceScore(c.tp, c.fp, c.fn, entries, cap, vox.as_tuple())


@dataclass(frozen=True)
class WeightedScore:
    value: float
    weight: float = 1.0


def cellmap_overall_score(
    instance_combined: Sequence[float | WeightedScore],
    semantic_iou: Sequence[float | WeightedScore],
) -> dict[str, float]:
    """CellMap's overall score: ``sqrt(mean instance combined score x mean semantic IoU)``.
    Each input is a score or a :class:`WeightedScore` (e.g. weighted by voxels, as the
    challenge weights volumes); an empty side counts as 0 (as in ``combine_scores``)."""

    def mean(items: Sequence[float | WeightedScore]) -> float:
        ws = [i if isinstance(i, WeightedScore) else WeightedScore(float(i)) for i in items]
        total = sum(w.weight for w in ws)
        return sum(w.value * w.weight for w in ws) / total if total > 0 else 0.0

    inst, sem = mean(instance_combined), mean(semantic_iou)
    return {
        "overall_instance_score": inst,
        "overall_semantic_score": sem,
        "overall_score": math.sqrt(inst * sem),
    }


@dataclass(frozen=True)
class InstanceEvaluation:
    """Everything instance-level about one class: thresholds, CellMap scores, overlap table."""

    scores: InstanceScores
    cellmap: CellMapInstanceScore
    table: OverlapTable = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_truth": self.scores.n_truth,
            "n_pred": self.scores.n_pred,
            "mean_matched_iou": self.scores.mean_matched_iou,
        }
        for t, c in sorted(self.scores.by_threshold.items()):
            out[f"f1@{t:g}"] = c.f1
            out[f"precision@{t:g}"] = c.precision
            out[f"recall@{t:g}"] = c.recall
        out.update({f"cellmap_{k}": v for k, v in self.cellmap.to_dict().items()})
        return out


def evaluate_instances(
    truth_labels: npt.ArrayLike,
    pred_labels: npt.ArrayLike,
    voxel_size: VoxelSize | Sequence[float] | float,
    *,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    relabel_prediction: bool = True,
    max_distance_nm: float | None = None,
) -> InstanceEvaluation:
    """In-memory instance evaluation of one class (crops; blockwise:
    :func:`fib_assets.core.metrics.blockwise.evaluate_instances_blockwise`)."""
    p = np.asarray(pred_labels)
    if relabel_prediction:
        p, _ = relabel_instances(p)
    t = np.asarray(truth_labels)
    table = OverlapTable.from_labels(t, p)
    return InstanceEvaluation(
        scores=instance_scores(table, thresholds),
        cellmap=cellmap_instance_score(
            t, p, voxel_size, relabel_prediction=False, max_distance_nm=max_distance_nm
        ),
        table=table,
    )
