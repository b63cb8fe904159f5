"""Training targets from dense label crops.

COSEM (Heinrich et al. 2021): per class, the signed Euclidean distance (nm; positive inside the
class, negative outside) to the class boundary, squashed by ``tanh(d / 50 nm)``; prediction
maps are stored as uint8 ``round((p + 1) * 127.5)`` so that 127 is the zero-distance threshold.
ASEM (Gallusser et al. 2022): class indices for a cross-entropy loss
(:func:`fib_assets.core.ml.classes.class_index_map`).

Arrays are (z, y, x); voxel sizes are nm (z, y, x), so anisotropic voxels are handled exactly.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fib_assets.core.ml.classes import UNANNOTATED, ClassSpec

# edt (seung-lab) is ~3x faster than scipy on large crops; scipy gives the same distances and
# keeps this module working where edt is not installed
_EDT: ModuleType | None = (
    importlib.import_module("edt") if importlib.util.find_spec("edt") is not None else None
)

#: COSEM's distance squashing scale: target = tanh(signed distance / 50 nm).
TANH_SCALE_NM = 50.0
#: uint8 prediction maps: values above this are foreground (tanh output > 0, probability > 0.5).
UINT8_THRESHOLD = 127


def _voxel_size(voxel_size_nm: Sequence[float]) -> tuple[float, float, float]:
    v = tuple(float(x) for x in voxel_size_nm)
    if len(v) != 3 or any(not np.isfinite(x) or x <= 0 for x in v):
        raise ValueError(f"voxel_size_nm must be 3 positive numbers (z, y, x), got {voxel_size_nm}")
    return (v[0], v[1], v[2])


def signed_distance(
    mask: npt.NDArray[np.bool_], voxel_size_nm: Sequence[float]
) -> npt.NDArray[np.float32]:
    """Signed distance (nm) of every voxel to the boundary of ``mask`` (z, y, x).

    Inside: distance to the nearest voxel outside; outside: minus the distance to the nearest
    voxel inside (voxel centres, Euclidean with the given anisotropic voxel size). Without any
    boundary in the array the distance is +inf (all inside) or -inf (all outside).
    """
    if mask.ndim != 3:
        raise ValueError(f"expected a (z, y, x) mask, got shape {mask.shape}")
    vs = _voxel_size(voxel_size_nm)
    m = np.ascontiguousarray(mask, dtype=bool)
    if m.all():
        return np.full(m.shape, np.inf, dtype=np.float32)
    if not m.any():
        return np.full(m.shape, -np.inf, dtype=np.float32)
    if _EDT is not None:
        # edt's anisotropy follows the array's axis order for C-contiguous input (checked
        # against scipy.ndimage.distance_transform_edt in the tests)
        inside = _EDT.edt(m, anisotropy=vs, black_border=False)
        outside = _EDT.edt(~m, anisotropy=vs, black_border=False)
    else:
        inside = ndimage.distance_transform_edt(m, sampling=vs)
        outside = ndimage.distance_transform_edt(~m, sampling=vs)
    return np.asarray(inside - outside, dtype=np.float32)


def tanh_distance(
    mask: npt.NDArray[np.bool_],
    voxel_size_nm: Sequence[float],
    scale_nm: float = TANH_SCALE_NM,
) -> npt.NDArray[np.float32]:
    """``tanh(signed_distance / scale_nm)`` in [-1, 1] (COSEM target for one class)."""
    if not scale_nm > 0:
        raise ValueError(f"scale_nm must be positive, got {scale_nm!r}")
    d = signed_distance(mask, voxel_size_nm) / np.float32(scale_nm)
    return np.asarray(np.tanh(d), dtype=np.float32)


def distance_targets(
    labels: npt.NDArray[Any],
    classes: Sequence[ClassSpec],
    voxel_size_nm: Sequence[float],
    scale_nm: float = TANH_SCALE_NM,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """COSEM targets of a label crop: ``(C, z, y, x)`` float32 in [-1, 1] and the annotated
    mask ``(z, y, x)`` (label id != 0). Unannotated voxels count as outside every class."""
    targets = np.stack([tanh_distance(c.mask(labels), voxel_size_nm, scale_nm) for c in classes])
    return targets, np.asarray(labels != UNANNOTATED)


def border_reliable(
    sdf_nm: npt.NDArray[np.floating[Any]], voxel_size_nm: Sequence[float]
) -> npt.NDArray[np.bool_]:
    """Voxels whose distance cannot change with data beyond the array: ``|d|`` is at most the
    distance (nm) to the array's faces. Use on a crop's own extent (patches are cut from a
    larger computed region instead)."""
    vs = _voxel_size(voxel_size_nm)
    dist = np.full(sdf_nm.shape, np.inf, dtype=np.float64)
    for axis, n in enumerate(sdf_nm.shape):
        idx = np.arange(n, dtype=np.float64)
        d = (np.minimum(idx, n - 1 - idx) + 1.0) * vs[axis]
        shape = [1, 1, 1]
        shape[axis] = n
        dist = np.minimum(dist, d.reshape(shape))
    return np.asarray(np.abs(sdf_nm) <= dist)


def tanh_to_uint8(pred: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Map tanh outputs [-1, 1] to uint8 ``round((p + 1) * 127.5)``; ``> 127`` is inside."""
    v = np.rint((pred.astype(np.float32) + 1.0) * 127.5)
    return np.asarray(np.clip(v, 0, 255), dtype=np.uint8)


def probability_to_uint8(prob: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Map probabilities [0, 1] to uint8 ``round(p * 255)``; ``> 127`` is p > 0.5."""
    v = np.rint(prob.astype(np.float32) * 255.0)
    return np.asarray(np.clip(v, 0, 255), dtype=np.uint8)
