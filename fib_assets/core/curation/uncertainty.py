"""Rank the blocks of a region by model uncertainty, for proofreading.

Reads prediction containers written by ``fib_assets.core.ml.predict`` (a Zarr v3 group whose
``fib_assets.plan.classes`` attribute lists the classes, each an array
``predictions/<class>/s0`` of uint8 (z, y, x) maps where > 127 is foreground). Two signals per
block, each a fraction of voxels in [0, 1]:

- *boundary*: voxels whose map value is within ``margin`` of the decision boundary 127.5
  (default 64: probability in about [0.25, 0.75]), averaged over classes and experiments;
- *disagreement*: voxels where two or more experiments' thresholded masks differ, averaged
  over classes (0 with a single experiment).

``score = boundary_weight x boundary + disagreement_weight x disagreement``. Blockwise: memory is
one block of one class map per experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core import storage
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize

#: the project's uint8 decision boundary (``fib_assets.core.ml.targets.UINT8_THRESHOLD``)
THRESHOLD_UINT8 = 127


class PredictionMaps:
    """The per-class uint8 maps of one prediction container (read lazily by ROI), at a local
    path or an ``s3://`` URL (:mod:`fib_assets.core.storage`)."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = storage.normalize(path)
        meta = storage.join(self.path, "zarr.json")
        if not storage.exists(meta):
            raise FileNotFoundError(f"{self.path}: not a prediction container (no zarr.json)")
        attrs = storage.read_json(meta).get("attributes", {}).get("fib_assets", {})
        plan = attrs.get("plan") or {}
        classes = plan.get("classes")
        if not classes:
            raise ValueError(f"{self.path}: no fib_assets.plan.classes attribute")
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.complete = bool(attrs.get("complete", False))
        self._arrays: dict[str, Any] = {}
        for c in self.classes:
            try:
                store = storage.zarr_store(
                    storage.join(self.path, "predictions", c, "s0"), read_only=True
                )
                self._arrays[c] = zarr.open_array(store, mode="r")
            except Exception as err:  # zarr raises its own not-found errors
                raise ValueError(f"{self.path}: no array predictions/{c}/s0 ({err})") from err
        shapes = {tuple(int(s) for s in a.shape) for a in self._arrays.values()}
        if len(shapes) != 1:
            raise ValueError(f"{self.path}: class maps differ in shape {sorted(shapes)}")
        s = shapes.pop()
        self.shape: tuple[int, int, int] = (s[0], s[1], s[2])
        vox = plan.get("voxel_size_nm")
        self.voxel_size = VoxelSize(*(float(v) for v in vox)) if vox else None
        self.experiment = str(attrs.get("experiment", Path(storage.name(self.path)).stem))

    def read(self, name: str, roi: Roi) -> npt.NDArray[np.uint8]:
        if name not in self._arrays:
            raise KeyError(f"{self.path}: no class {name!r}; classes: {list(self.classes)}")
        return np.asarray(self._arrays[name][roi.to_slices()], dtype=np.uint8)


@dataclass(frozen=True)
class BlockScore:
    """Uncertainty of one block: ROI in voxels (z, y, x), the two signals and the score."""

    index: tuple[int, int, int]
    roi: Roi
    boundary: float
    disagreement: float
    score: float
    per_class: dict[str, dict[str, float]]

    @property
    def why(self) -> str:
        """One line a curator can read: which signal and which class drive the score."""
        worst = max(
            self.per_class.items(),
            key=lambda kv: kv[1]["boundary"] + kv[1]["disagreement"],
            default=(None, {}),
        )[0]
        parts = [f"{self.boundary:.1%} of voxels near the decision boundary"]
        if self.disagreement > 0:
            parts.append(f"{self.disagreement:.1%} where experiments disagree")
        return "; ".join(parts) + (f" (most in class {worst!r})" if worst else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "roi": self.roi.to_dict(),
            "boundary": self.boundary,
            "disagreement": self.disagreement,
            "score": self.score,
            "per_class": self.per_class,
            "why": self.why,
        }


def boundary_fraction(maps: npt.NDArray[np.uint8], margin: int = 64) -> float:
    """Fraction of voxels with ``|value - 127.5| <= margin`` (uint8 maps)."""
    if maps.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(maps.astype(np.float32) - 127.5) <= margin) / maps.size)


def disagreement_fraction(maps: Sequence[npt.NDArray[np.uint8]]) -> float:
    """Fraction of voxels where the thresholded (> 127) masks of the maps are not all equal."""
    if len(maps) < 2 or maps[0].size == 0:
        return 0.0
    masks = np.stack([m > THRESHOLD_UINT8 for m in maps])
    return float(np.count_nonzero(masks.any(axis=0) & ~masks.all(axis=0)) / masks[0].size)


def rank_blocks(
    predictions: Sequence[str | Path | PredictionMaps],
    block_shape: Sequence[int] = (64, 64, 64),
    *,
    classes: Sequence[str] | None = None,
    margin: int = 64,
    boundary_weight: float = 1.0,
    disagreement_weight: float = 1.0,
) -> list[BlockScore]:
    """Score every block of the region's prediction(s) and return them best first (ties keep
    block order). Several containers (experiments) must share shape and classes."""
    if not predictions:
        raise ValueError("rank_blocks needs at least one prediction container")
    if not 0 <= margin <= 128:
        raise ValueError(f"margin must be in [0, 128] (uint8 units), got {margin}")
    preds = [p if isinstance(p, PredictionMaps) else PredictionMaps(p) for p in predictions]
    shape = preds[0].shape
    for p in preds[1:]:
        if p.shape != shape:
            raise ValueError(f"{p.path}: shape {list(p.shape)} differs from {list(shape)}")
    names = tuple(classes) if classes is not None else preds[0].classes
    for p in preds:
        missing = [c for c in names if c not in p.classes]
        if missing:
            raise ValueError(f"{p.path}: classes {missing} missing (has {list(p.classes)})")
    plan = BlockPlan(shape, tuple(block_shape))  # type: ignore[arg-type]
    out: list[BlockScore] = []
    for block in plan.blocks():
        per: dict[str, dict[str, float]] = {}
        for c in names:
            maps = [p.read(c, block.write_roi) for p in preds]
            per[c] = {
                "boundary": float(np.mean([boundary_fraction(m, margin) for m in maps])),
                "disagreement": disagreement_fraction(maps),
            }
        b = float(np.mean([v["boundary"] for v in per.values()])) if per else 0.0
        d = float(np.mean([v["disagreement"] for v in per.values()])) if per else 0.0
        score = boundary_weight * b + disagreement_weight * d
        out.append(BlockScore(block.index, block.write_roi, b, d, score, per))
    return sorted(out, key=lambda s: -s.score)


def top_k(scores: Sequence[BlockScore], k: int) -> list[BlockScore]:
    """The ``k`` highest-scoring blocks (``scores`` as returned by :func:`rank_blocks`)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return sorted(scores, key=lambda s: -s.score)[:k]
