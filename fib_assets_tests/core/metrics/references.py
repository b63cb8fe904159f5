"""Independent brute-force references for the metrics tests (pairwise distances between voxel
centres in nm with scipy.spatial; exhaustive matching)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial.distance import cdist


def coords_nm(mask: np.ndarray, voxel) -> np.ndarray:
    return np.argwhere(mask).astype(np.float64) * np.asarray(voxel, dtype=np.float64)


def min_distances(src: np.ndarray, dst: np.ndarray, voxel) -> np.ndarray:
    """Distance (nm) of every src voxel (C order) to the nearest dst voxel, by cdist."""
    a, b = coords_nm(src, voxel), coords_nm(dst, voxel)
    if len(a) == 0:
        return np.zeros(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return cdist(a, b).min(axis=1)


def brute_tolerance_counts(truth, pred, voxel, tol):
    """COSEM tolerance counts, written from the definition (cdist, no distance transform)."""
    fp = int((min_distances(pred, truth, voxel) > tol).sum())
    fn = int((min_distances(truth, pred, voxel) > tol).sum())
    union = int((truth | pred).sum())
    return union - fp - fn, fp, fn, int(truth.size) - union


def brute_band_mask(truth, voxel, band):
    """Scored voxels: not within ``band`` nm of a voxel of the other truth class."""
    out = np.ones(truth.shape, bool)
    fg_d = np.full(truth.shape, np.inf)
    bg_d = np.full(truth.shape, np.inf)
    fg_d[truth] = min_distances(truth, ~truth, voxel)
    bg_d[~truth] = min_distances(~truth, truth, voxel)
    out[truth & (fg_d <= band)] = False
    out[~truth & (bg_d <= band)] = False
    return out


def brute_matching(truth: np.ndarray, pred: np.ndarray, threshold: float):
    """(best summed IoU, matches) over every one-to-one matching of pairs with
    IoU >= threshold and > 0, by exhaustive search (tiny instance counts only)."""
    tids = [int(i) for i in np.unique(truth) if i]
    pids = [int(i) for i in np.unique(pred) if i]
    iou = {}
    for t in tids:
        for p in pids:
            a, b = truth == t, pred == p
            inter = int((a & b).sum())
            if inter:
                v = inter / int((a | b).sum())
                if v >= threshold:
                    iou[t, p] = v
    best = (0.0, 0)
    # assign each truth instance to one prediction or to nothing (None)
    for choice in itertools.product([None, *pids], repeat=len(tids)):
        used = [c for c in choice if c is not None]
        if len(used) != len(set(used)):
            continue
        if any(c is not None and (t, c) not in iou for t, c in zip(tids, choice, strict=True)):
            continue
        s = sum(iou[t, c] for t, c in zip(tids, choice, strict=True) if c is not None)
        if s > best[0] + 1e-12:
            best = (s, len(used))
    return best
