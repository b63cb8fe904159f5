"""Blockwise evaluation of volumes larger than memory, over a :class:`BlockPlan` with a halo.

Inputs are anything with a shape and ``read(roi) -> ndarray`` (z, y, x): a format reader
(``fib_assets.core.formats.open_volume(path)``, ``.info.shape``), a Paintera label group
(``.shape``), :class:`ArrayReader` over an in-memory array, or a numpy array. A *mask function*
turns what was read into the boolean class mask (:func:`foreground` for class ids,
:func:`above` for the uint8 prediction maps of ``fib_assets.core.ml.predict``).

Each block reads its write ROI grown by the halo (clipped at the volume border, where the
in-memory computation has no voxels either) and contributes additive partial results for its
write ROI only; memory is one block with its halo. With ``ledger_dir`` each block's partial
result is a durable JSON marker (:class:`fib_assets.core.blockwise.BlockLedger`), so a killed
run resumes where it stopped; a failing block leaves no marker.

What is exact blockwise and what is bounded (``H`` = the halo in nm, the smallest of
``halo_voxels x voxel size`` over the axes; :attr:`SemanticEvaluation.halo_nm`):

- confusion counts, Dice, IoU, precision, recall: exact (counts add up);
- COSEM tolerance counts: exact, the halo is grown to cover ``tolerance_nm``;
- ASEM boundary-band counts: exact, the halo is grown to cover ``band_nm``;
- instance overlap table, matching and instance F1 at every threshold: exact (overlap counts add
  up; the matching runs once on the summed table);
- Hausdorff distances: every voxel's distance to the other mask is exact when it is <= ``H`` and
  known to be > ``H`` otherwise. The max and the percentile are therefore exact whenever the
  value (or the order statistics it interpolates) is <= ``H``; otherwise the result is the lower
  bound ``H`` with ``exact = False``. Pass ``hausdorff_halo_nm`` to widen the halo.
- CellMap per-instance Hausdorff: exact when ``H`` >= the CellMap cap (distances are capped
  there), otherwise per instance as above (``inexact_instances`` counts the lower bounds).
Instance inputs must carry *global* ids (a whole-volume labelling, e.g. the ``instances/<class>``
arrays written by ``fib_assets.core.ml.predict``); CellMap's 26-connected relabelling of
predictions is not done blockwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fib_assets.core.blockwise import BlockLedger, fingerprint
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize
from fib_assets.core.metrics.instance import (
    DEFAULT_IOU_THRESHOLDS,
    CellMapInstanceScore,
    InstanceEvaluation,
    OverlapTable,
    cellmap_hausdorff_entries,
    cellmap_max_distance,
    instance_scores,
    match_instances,
)
from fib_assets.core.metrics.semantic import (
    COSEM_TOLERANCE_NM,
    Confusion,
    Hausdorff,
    SemanticScores,
    as_voxel_size,
    boundary_band_mask,
    distance_to,
)

Array = npt.NDArray[Any]
BoolArray = npt.NDArray[np.bool_]
MaskFn = Callable[[Array], BoolArray]


class Readable(Protocol):
    """What blockwise evaluation reads from: ``read(roi)`` returns the (z, y, x) voxels of
    ``roi``; the shape comes from ``.shape`` or ``.info.shape``."""

    def read(self, roi: Roi) -> Array: ...


class ArrayReader:
    """A :class:`Readable` over an in-memory (z, y, x) array (tests, small crops)."""

    def __init__(self, data: npt.ArrayLike) -> None:
        self.data = np.asarray(data)
        if self.data.ndim != 3:
            raise ValueError(f"expected a (z, y, x) array, got shape {self.data.shape}")
        self.shape = (int(self.data.shape[0]), int(self.data.shape[1]), int(self.data.shape[2]))

    def read(self, roi: Roi) -> Array:
        return np.asarray(self.data[roi.to_slices()])


def readable(source: Readable | npt.ArrayLike) -> Readable:
    """``source`` itself if it can ``read(roi)``, else an :class:`ArrayReader` over it."""
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    return ArrayReader(source)


def volume_shape(source: Any) -> tuple[int, int, int]:
    """(z, y, x) shape of a readable: ``.shape`` or ``.info.shape``."""
    shape = getattr(source, "shape", None)
    if shape is None and hasattr(source, "info"):
        shape = source.info.shape
    if shape is None or len(shape) != 3:
        raise ValueError(f"{type(source).__name__}: no 3-D shape (.shape or .info.shape)")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def foreground(ids: Iterable[int] | None = None) -> MaskFn:
    """Mask function for label volumes: voxels whose label is in ``ids`` (default: any
    non-zero label)."""
    if ids is None:
        return lambda a: np.asarray(a) > 0
    wanted = np.asarray(sorted({int(i) for i in ids}))
    return lambda a: np.isin(np.asarray(a), wanted)


def above(threshold: int = 127) -> MaskFn:
    """Mask function for uint8 prediction maps: ``value > threshold`` (127 is the
    project's decision boundary, ``fib_assets.core.ml.targets.UINT8_THRESHOLD``)."""
    return lambda a: np.asarray(a) > threshold


def halo_voxels(
    voxel_size: VoxelSize | Sequence[float] | float, distance_nm: float
) -> tuple[int, int, int]:
    """Voxels per axis (z, y, x) that cover ``distance_nm``: ``ceil(distance / voxel size)``."""
    v = as_voxel_size(voxel_size).as_tuple()
    h = [math.ceil(distance_nm / vv - 1e-9) if distance_nm > 0 else 0 for vv in v]
    return (h[0], h[1], h[2])


def _halo_nm(voxel_size: VoxelSize, halo: Sequence[int]) -> float:
    return float(min(h * v for h, v in zip(halo, voxel_size.as_tuple(), strict=True)))


def _inner(block: Block) -> tuple[slice, slice, slice]:
    """Slices of the write ROI inside an array read at the read ROI."""
    w, r = block.write_roi, block.read_roi
    return (
        slice(w.offset[0] - r.offset[0], w.end[0] - r.offset[0]),
        slice(w.offset[1] - r.offset[1], w.end[1] - r.offset[1]),
        slice(w.offset[2] - r.offset[2], w.end[2] - r.offset[2]),
    )


def _read(source: Readable, roi: Roi, where: str) -> Array:
    data = np.asarray(source.read(roi))
    if data.shape != roi.shape:
        raise ValueError(f"{where}: read {roi.to_dict()} returned shape {list(data.shape)}")
    return data


def _map_blocks(
    plan: BlockPlan,
    fn: Callable[[Block], dict[str, Any]],
    ledger_dir: str | Path | None,
    identity: dict[str, Any],
    prefix: str,
) -> list[dict[str, Any]]:
    if ledger_dir is None:
        return [fn(b) for b in plan.blocks()]
    ledger = BlockLedger(Path(ledger_dir), fingerprint(identity), prefix=prefix)
    out = []
    for block in plan.blocks():
        if ledger.is_done(block.block_id):
            out.append(ledger.info(block.block_id))
            continue
        info = fn(block)
        ledger.mark_done(block.block_id, info)
        out.append(info)
    return out


# --- exact distance histograms -------------------------------------------------------------------


@dataclass
class DistanceHistogram:
    """Exact counts of distance values <= ``limit_nm`` plus the number known to exceed it.

    On a voxel grid the distances take few distinct values, so the counts stay small; the
    percentile follows numpy's default (linear) interpolation on the sorted values.
    """

    limit_nm: float
    counts: dict[float, int]
    censored: int = 0

    @classmethod
    def of(cls, values: npt.NDArray[np.float64], limit_nm: float) -> DistanceHistogram:
        ok = values <= limit_nm
        u, c = np.unique(values[ok], return_counts=True)
        return cls(
            limit_nm,
            {float(a): int(b) for a, b in zip(u, c, strict=True)},
            int(values.size - ok.sum()),
        )

    def add(self, other: DistanceHistogram) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.censored += other.censored

    @property
    def n(self) -> int:
        return sum(self.counts.values()) + self.censored

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self.counts)
        return {"values": keys, "counts": [self.counts[k] for k in keys], "censored": self.censored}

    @classmethod
    def from_dict(cls, d: dict[str, Any], limit_nm: float) -> DistanceHistogram:
        counts = {float(k): int(c) for k, c in zip(d["values"], d["counts"], strict=True)}
        return cls(limit_nm, counts, int(d["censored"]))

    def _rank(self, k: int, values: list[float], cum: npt.NDArray[np.int64]) -> float | None:
        i = int(np.searchsorted(cum, k, side="right"))
        return values[i] if i < len(values) else None

    def maximum(self) -> tuple[float, bool]:
        """(max, exact); a censored maximum is the lower bound ``limit_nm``."""
        if self.censored:
            return self.limit_nm, False
        return (max(self.counts) if self.counts else 0.0), True

    def percentile(self, q: float) -> tuple[float, bool]:
        """(``q``-th percentile, exact) as ``numpy.percentile`` (linear); when an order statistic
        it interpolates falls among the censored values (> ``limit_nm``) the result is a lower
        bound (interpolated towards ``limit_nm``) and ``exact`` is false."""
        n = self.n
        if n == 0:
            return 0.0, True
        values = sorted(self.counts)
        cum = np.cumsum([self.counts[v] for v in values])
        pos = (q / 100.0) * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        a, b = self._rank(lo, values, cum), self._rank(hi, values, cum)
        t = pos - lo
        if a is None:
            return self.limit_nm, False
        if b is None:  # b > limit: interpolating towards limit bounds the percentile from below
            return a + (self.limit_nm - a) * t, False
        # numpy's _lerp: a + (b - a) t, computed from the upper end when t >= 0.5
        return (b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t), True


def _hausdorff_from(
    hist_tp: DistanceHistogram,
    hist_pt: DistanceHistogram,
    n_truth: int,
    n_pred: int,
    percentile: float,
) -> Hausdorff:
    if n_truth == 0 and n_pred == 0:
        return Hausdorff(0.0, 0.0, 0.0, 0.0, percentile)
    if n_truth == 0 or n_pred == 0:
        inf = math.inf
        return Hausdorff(inf, inf, inf if n_truth else 0.0, inf if n_pred else 0.0, percentile)
    m_tp, e1 = hist_tp.maximum()
    m_pt, e2 = hist_pt.maximum()
    p_tp, e3 = hist_tp.percentile(percentile)
    p_pt, e4 = hist_pt.percentile(percentile)
    return Hausdorff(
        max_nm=max(m_tp, m_pt),
        percentile_nm=max(p_tp, p_pt),
        truth_to_pred_nm=m_tp,
        pred_to_truth_nm=m_pt,
        percentile=percentile,
        exact=e1 and e2 and e3 and e4,
    )


# --- semantic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticEvaluation:
    """Blockwise semantic scores with the plan that produced them and the halo (nm) within
    which every distance is exact."""

    scores: SemanticScores
    plan: BlockPlan
    halo_nm: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores.to_dict(), "halo_nm": self.halo_nm, "plan": self.plan.to_dict()}


def _conf(d: dict[str, int]) -> Confusion:
    return Confusion(int(d["tp"]), int(d["fp"]), int(d["fn"]), int(d["tn"]))


def _conf_dict(c: Confusion) -> dict[str, int]:
    return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}


def evaluate_semantic(
    truth: Readable | npt.ArrayLike,
    pred: Readable | npt.ArrayLike,
    *,
    voxel_size: VoxelSize | Sequence[float] | float,
    block_shape: Sequence[int] = (64, 64, 64),
    truth_mask: MaskFn | None = None,
    pred_mask: MaskFn | None = None,
    valid: MaskFn | None = None,
    tolerance_nm: float = COSEM_TOLERANCE_NM,
    band_nm: float | None = None,
    percentile: float = 95.0,
    hausdorff_halo_nm: float | None = None,
    ledger_dir: str | Path | None = None,
    run_id: str = "",
) -> SemanticEvaluation:
    """Semantic scores of one class over a block plan (module doc for what is exact).

    ``truth_mask``/``pred_mask`` turn what was read into boolean masks (default: non-zero);
    ``valid`` (applied to the truth voxels) restricts the counts to annotated voxels, as
    ``mask`` of :func:`fib_assets.core.metrics.semantic.semantic_scores`. Equal to
    ``semantic_scores(truth_mask(T), pred_mask(P), voxel_size, mask=valid(T), ...)`` on the
    whole volume. ``run_id`` (e.g. the inputs' data versions) keys the resumable markers.
    """
    vox = as_voxel_size(voxel_size)
    t_src, p_src = readable(truth), readable(pred)
    shape = volume_shape(t_src)
    if volume_shape(p_src) != shape:
        raise ValueError(f"truth {list(shape)} and prediction {list(volume_shape(p_src))} differ")
    tmask = truth_mask or foreground()
    pmask = pred_mask or foreground()
    needs = [tolerance_nm, band_nm or 0.0, hausdorff_halo_nm or 0.0]
    halo = tuple(max(h) for h in zip(*(halo_voxels(vox, d) for d in needs), strict=True))
    plan = BlockPlan(shape, tuple(block_shape), halo)  # type: ignore[arg-type]
    limit = _halo_nm(vox, plan.halo)

    def block_fn(block: Block) -> dict[str, Any]:
        T = _read(t_src, block.read_roi, "truth")
        P = _read(p_src, block.read_roi, "prediction")
        t, p = np.asarray(tmask(T), bool), np.asarray(pmask(P), bool)
        m = np.ones(t.shape, bool) if valid is None else np.asarray(valid(T), bool)
        w = _inner(block)
        tw, pw, mw = t[w], p[w], m[w]
        plain = _counts(tw, pw, mw)
        to_t, to_p = distance_to(t, vox), distance_to(p, vox)
        tm, pm = t & m, p & m
        to_tm = to_t if valid is None else distance_to(tm, vox)
        to_pm = to_p if valid is None else distance_to(pm, vox)
        fp = int(np.count_nonzero(pm[w] & (to_tm[w] > tolerance_nm)))
        fn = int(np.count_nonzero(tm[w] & (to_pm[w] > tolerance_nm)))
        union = int(np.count_nonzero(tm[w] | pm[w]))
        tol = Confusion(union - fp - fn, fp, fn, int(np.count_nonzero(mw)) - union)
        out: dict[str, Any] = {"plain": _conf_dict(plain), "tolerance": _conf_dict(tol)}
        if band_nm is not None:
            scored = boundary_band_mask(t, vox, band_nm)[w] & mw
            out["band"] = _conf_dict(_counts(tw, pw, scored))
        d_tp = to_p[w][tw]
        d_pt = to_t[w][pw]
        out["n_truth"] = int(tw.sum())
        out["n_pred"] = int(pw.sum())
        out["d_tp"] = DistanceHistogram.of(d_tp, limit).to_dict()
        out["d_pt"] = DistanceHistogram.of(d_pt, limit).to_dict()
        return out

    identity = {
        "run_id": run_id,
        "plan": plan.to_dict(),
        "voxel_size": vox.to_dict(),
        "tolerance_nm": tolerance_nm,
        "band_nm": band_nm,
    }
    parts = _map_blocks(plan, block_fn, ledger_dir, identity, "semantic-")
    plain = tol_c = Confusion(0, 0, 0, 0)
    band_c: Confusion | None = Confusion(0, 0, 0, 0) if band_nm is not None else None
    h_tp = DistanceHistogram(limit, {})
    h_pt = DistanceHistogram(limit, {})
    n_t = n_p = 0
    for part in parts:
        plain = plain + _conf(part["plain"])
        tol_c = tol_c + _conf(part["tolerance"])
        if band_c is not None:
            band_c = band_c + _conf(part["band"])
        h_tp.add(DistanceHistogram.from_dict(part["d_tp"], limit))
        h_pt.add(DistanceHistogram.from_dict(part["d_pt"], limit))
        n_t += int(part["n_truth"])
        n_p += int(part["n_pred"])
    scores = SemanticScores(
        confusion=plain,
        tolerance=tol_c,
        tolerance_nm=tolerance_nm,
        band=band_c,
        band_nm=band_nm,
        hausdorff=_hausdorff_from(h_tp, h_pt, n_t, n_p, percentile),
    )
    return SemanticEvaluation(scores, plan, limit)


def _counts(t: BoolArray, p: BoolArray, m: BoolArray) -> Confusion:
    tp = int(np.count_nonzero(t & p & m))
    fp = int(np.count_nonzero(p & m)) - tp
    fn = int(np.count_nonzero(t & m)) - tp
    return Confusion(tp, fp, fn, int(np.count_nonzero(m)) - tp - fp - fn)


# --- instances -----------------------------------------------------------------------------------


def _table_dict(t: OverlapTable) -> dict[str, list[int]]:
    return {
        "truth_ids": t.truth_ids.tolist(),
        "truth_sizes": t.truth_sizes.tolist(),
        "pred_ids": t.pred_ids.tolist(),
        "pred_sizes": t.pred_sizes.tolist(),
        "pair_truth": t.pair_truth.tolist(),
        "pair_pred": t.pair_pred.tolist(),
        "pair_counts": t.pair_counts.tolist(),
    }


def _table_from(d: dict[str, list[int]]) -> OverlapTable:
    def u(k: str) -> npt.NDArray[np.uint64]:
        return np.asarray(d[k], dtype=np.uint64)

    def i(k: str) -> npt.NDArray[np.int64]:
        return np.asarray(d[k], dtype=np.int64)

    return OverlapTable(
        u("truth_ids"),
        i("truth_sizes"),
        u("pred_ids"),
        i("pred_sizes"),
        u("pair_truth"),
        u("pair_pred"),
        i("pair_counts"),
    )


def _directed_max(
    src: BoolArray, dst: BoolArray, w: tuple[slice, ...], vox: VoxelSize, limit: float
) -> tuple[float, bool]:
    """Largest distance of ``src`` voxels inside ``w`` to ``dst`` (anywhere in the array):
    (max of the exact distances <= limit, whether any distance exceeds limit)."""
    sw = np.zeros_like(src)
    sw[w] = src[w]
    if not sw.any():
        return 0.0, False
    if not dst.any():
        return 0.0, True
    found = ndimage.find_objects((sw | dst).astype(np.uint8))[0]
    d = ndimage.distance_transform_edt(~dst[found], sampling=vox.as_tuple())[sw[found]]
    ok = d <= limit
    return (float(d[ok].max()) if ok.any() else 0.0), bool((~ok).any())


def evaluate_instances_blockwise(
    truth_labels: Readable | npt.ArrayLike,
    pred_labels: Readable | npt.ArrayLike,
    *,
    voxel_size: VoxelSize | Sequence[float] | float,
    block_shape: Sequence[int] = (64, 64, 64),
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    max_distance_nm: float | None = None,
    hausdorff_halo_nm: float | None = None,
    ledger_dir: str | Path | None = None,
    run_id: str = "",
) -> InstanceEvaluation:
    """Instance scores of one class over a block plan, from globally labelled truth and
    prediction instances (module doc). Pass 1 sums the overlap table (no halo) and matches once;
    pass 2 (halo ``hausdorff_halo_nm``, default the CellMap cap, which makes it exact) measures
    each matched pair's Hausdorff distance. Equal to
    ``evaluate_instances(T, P, relabel_prediction=False)`` when exact."""
    vox = as_voxel_size(voxel_size)
    t_src, p_src = readable(truth_labels), readable(pred_labels)
    shape = volume_shape(t_src)
    if volume_shape(p_src) != shape:
        raise ValueError(f"truth {list(shape)} and prediction {list(volume_shape(p_src))} differ")
    cap = cellmap_max_distance(vox, shape) if max_distance_nm is None else max_distance_nm
    identity: dict[str, Any] = {"run_id": run_id, "shape": list(shape), "block": list(block_shape)}

    plan1 = BlockPlan(shape, tuple(block_shape))  # type: ignore[arg-type]

    def overlaps(block: Block) -> dict[str, Any]:
        T = _read(t_src, block.write_roi, "truth")
        P = _read(p_src, block.write_roi, "prediction")
        return _table_dict(OverlapTable.from_labels(T, P))

    table = OverlapTable.empty()
    for part in _map_blocks(plan1, overlaps, ledger_dir, identity, "overlaps-"):
        table = table + _table_from(part)
    scores = instance_scores(table, thresholds)
    matching = match_instances(table, 0.0)
    t2p = matching.truth_to_pred()
    p2t = matching.pred_to_truth()

    halo = halo_voxels(vox, cap if hausdorff_halo_nm is None else hausdorff_halo_nm)
    plan2 = BlockPlan(shape, tuple(block_shape), halo)  # type: ignore[arg-type]
    limit = _halo_nm(vox, halo)

    def distances(block: Block) -> dict[str, Any]:
        tv = _read(t_src, block.read_roi, "truth")
        pv = _read(p_src, block.read_roi, "prediction")
        w = _inner(block)
        pairs = {int(t): t2p[int(t)] for t in np.unique(tv[w]).tolist() if int(t) in t2p}
        for p in np.unique(pv[w]).tolist():
            if int(p) in p2t:
                pairs[p2t[int(p)]] = int(p)
        out: dict[str, list[Any]] = {"truth": [], "max": [], "censored": []}
        for t, p in sorted(pairs.items()):
            a, b = np.equal(tv, t), np.equal(pv, p)
            m1, c1 = _directed_max(a, b, w, vox, limit)
            m2, c2 = _directed_max(b, a, w, vox, limit)
            out["truth"].append(t)
            out["max"].append(max(m1, m2))
            out["censored"].append(c1 or c2)
        return out

    identity2 = {**identity, "halo": list(halo), "matching": sorted(t2p.items())}
    best: dict[int, float] = {}
    censored: set[int] = set()
    for part in _map_blocks(plan2, distances, ledger_dir, identity2, "hausdorff-"):
        for t, m, c in zip(part["truth"], part["max"], part["censored"], strict=True):
            best[int(t)] = max(best.get(int(t), 0.0), float(m))
            if c:
                censored.add(int(t))
    per_truth: dict[int, float] = {}
    inexact = 0
    for tid in table.truth_ids.tolist():
        t = int(tid)
        if t not in t2p:
            per_truth[t] = cap
            continue
        d = best.get(t, 0.0)
        if t in censored:
            d = max(d, limit)
            if limit < cap:
                inexact += 1
        per_truth[t] = min(d, cap)
    entries = cellmap_hausdorff_entries(per_truth, table.n_pred - matching.tp, cap)
    c = matching.confusion
    cellmap = CellMapInstanceScore(
        c.tp, c.fp, c.fn, entries, cap, vox.as_tuple(), exact=not inexact, inexact_instances=inexact
    )
    return InstanceEvaluation(scores=scores, cellmap=cellmap, table=table)
