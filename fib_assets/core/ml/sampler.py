"""Class-balanced training patches read through :func:`fib_assets.core.formats.open_volume`.

Raw and label volumes are paths of any format variant (tiff, hdf5, zarr, parquet, n5) or any
:class:`~fib_assets.core.formats.base.VolumeSource`, so training throughput can be measured per
format. Labels are dense COSEM class ids on the raw grid, placed at ``label_offset`` (z, y, x
voxels) inside the raw volume; id 0 means unannotated.

Sampling: an index of per-cell class counts is built once (labels read cell by cell, bounded
memory). Each patch first draws a class uniformly among the training classes present (or, with
the same probability, "anywhere"), then a cell weighted by that class's voxel count, then one of
the class's voxels in the cell as the patch centre. A patch whose annotated fraction is below
``min_annotated`` is rejected and redrawn. Patch ``i`` uses ``default_rng((seed, i))``, so a
batch depends only on its step: training resumes on exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fib_assets.core.blockwise import fingerprint
from fib_assets.core.formats import open_volume
from fib_assets.core.formats.base import VolumeSource
from fib_assets.core.geometry import BlockPlan, Roi
from fib_assets.core.ml.classes import UNANNOTATED, ClassSpec, class_index_map
from fib_assets.core.ml.preprocess import Augmentation, Pipeline, PreprocessedVolume
from fib_assets.core.ml.targets import TANH_SCALE_NM, distance_targets

TargetKind = Literal["distance", "classes"]
_OUTSIDE = 1 << 20  # flag added to label ids beyond the crop while they are augmented


class SamplingError(RuntimeError):
    """No acceptable patch could be drawn (names the volume and the threshold)."""


@dataclass(frozen=True)
class Batch:
    """``raw`` (B, 1, z, y, x) float32; ``target`` (B, C, z, y, x) float32 for distance targets
    or (B, z, y, x) int64 class indices (-1 unannotated); ``mask`` (B, 1, z, y, x) bool."""

    raw: npt.NDArray[np.float32]
    target: npt.NDArray[Any]
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class _Index:
    cell: tuple[int, int, int]
    grid: tuple[int, int, int]
    counts: npt.NDArray[np.int64]  # (n_cells, n_classes)
    annotated: npt.NDArray[np.int64]  # (n_cells,)
    labels_sha256: str


def _open(source: str | Path | VolumeSource) -> tuple[VolumeSource, str]:
    if isinstance(source, str | Path):
        return open_volume(source), str(source)
    return source, type(source).__name__


def _triple(name: str, v: Sequence[int]) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3 or any(x < 1 for x in t):
        raise ValueError(f"{name} must be 3 positive ints (z, y, x), got {list(v)!r}")
    return (t[0], t[1], t[2])


class PatchSampler:
    """Deterministic, class-balanced patches for a valid-padded (or same-padded) U-Net.

    ``input_shape`` is the raw patch and ``output_shape`` the target patch (z, y, x voxels),
    centred on each other. ``pipeline`` is fitted on the raw volume if it is not already.
    Distance targets are computed on the label patch grown by ``distance_margin_nm`` (replicating
    labels beyond the crop), then cropped, so patch borders do not fake object boundaries.
    """

    def __init__(
        self,
        raw: str | Path | VolumeSource,
        labels: str | Path | VolumeSource,
        classes: Sequence[ClassSpec],
        *,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        target: TargetKind = "distance",
        pipeline: Pipeline | None = None,
        augmentation: Augmentation | None = None,
        label_offset: Sequence[int] = (0, 0, 0),
        min_annotated: float = 0.5,
        class_balance: bool = True,
        seed: int = 0,
        max_tries: int = 50,
        distance_margin_nm: float = 2.5 * TANH_SCALE_NM,
        cell_shape: Sequence[int] | None = None,
    ) -> None:
        self.raw, self.raw_name = _open(raw)
        self.labels, self.labels_name = _open(labels)
        if not classes:
            raise ValueError("at least one class is needed")
        self.classes = tuple(classes)
        self.input_shape = _triple("input_shape", input_shape)
        self.output_shape = _triple("output_shape", output_shape)
        if any(
            i < o or (i - o) % 2 for i, o in zip(self.input_shape, self.output_shape, strict=True)
        ):
            raise ValueError(
                f"input_shape {list(self.input_shape)} must be >= output_shape "
                f"{list(self.output_shape)} and differ by an even number of voxels per axis"
            )
        if target not in ("distance", "classes"):
            raise ValueError(f"target must be 'distance' or 'classes', got {target!r}")
        if target == "classes":
            class_index_map(np.zeros((1, 1, 1), np.uint8), self.classes)  # checks disjointness
        self.target: TargetKind = target
        if not 0.0 <= min_annotated <= 1.0:
            raise ValueError(f"min_annotated must be in [0, 1], got {min_annotated!r}")
        self.min_annotated = float(min_annotated)
        self.class_balance = bool(class_balance)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        self.label_offset = tuple(int(x) for x in label_offset)
        if len(self.label_offset) != 3:
            raise ValueError(f"label_offset must be (z, y, x), got {list(label_offset)!r}")
        raw_info, lab_info = self.raw.info, self.labels.info
        if not Roi((0, 0, 0), raw_info.shape).contains(Roi(self.label_offset, lab_info.shape)):  # type: ignore[arg-type]
            raise ValueError(
                f"labels {self.labels_name} {list(lab_info.shape)} at offset "
                f"{list(self.label_offset)} do not lie inside raw {self.raw_name} "
                f"{list(raw_info.shape)}"
            )
        if np.dtype(lab_info.dtype).kind not in "ui":
            raise ValueError(f"labels {self.labels_name} must be integer, got {lab_info.dtype}")
        self.voxel_size = raw_info.voxel_size.as_tuple()
        pipe = pipeline or Pipeline()
        self.pipeline = pipe.fit(self.raw, seed=self.seed)
        self.volume = PreprocessedVolume(self.raw, self.pipeline)
        self.augmentation = augmentation or Augmentation.none()
        self.margin = (
            tuple(math.ceil(distance_margin_nm / v) for v in self.voxel_size)
            if target == "distance"
            else (0, 0, 0)
        )
        self._index = self._build_index(
            _triple("cell_shape", cell_shape)
            if cell_shape is not None
            else tuple(min(o, s) for o, s in zip(self.output_shape, lab_info.shape, strict=True))  # type: ignore[arg-type]
        )
        self.rejected = 0
        self.drawn = 0

    # --- index ---------------------------------------------------------------------------------

    def _build_index(self, cell: tuple[int, int, int]) -> _Index:
        plan = BlockPlan(self.labels.info.shape, cell)
        counts = np.zeros((len(plan), len(self.classes)), dtype=np.int64)
        annotated = np.zeros(len(plan), dtype=np.int64)
        digest = hashlib.sha256()
        for i, block in enumerate(plan.blocks()):
            lab = np.ascontiguousarray(self.labels.read(block.write_roi))
            digest.update(lab.tobytes())
            annotated[i] = int(np.count_nonzero(lab != UNANNOTATED))
            for k, c in enumerate(self.classes):
                counts[i, k] = int(np.count_nonzero(c.mask(lab)))
        return _Index(cell, plan.grid_shape, counts, annotated, digest.hexdigest())

    @property
    def class_voxels(self) -> dict[str, int]:
        """Annotated voxels per class in the whole label volume."""
        totals = self._index.counts.sum(axis=0)
        return {c.name: int(t) for c, t in zip(self.classes, totals, strict=True)}

    def data_versions(self) -> dict[str, str]:
        """Content version of the labels (sha256 of their voxels) and an identity of the raw
        volume and its pre-processing; recorded in checkpoints."""
        return {
            "labels": f"sha256:{self._index.labels_sha256}",
            "raw": "fp:"
            + fingerprint({"raw": self.raw_name, "info": self.raw.info.to_dict()})[:32],
            "preprocessing": "fp:" + fingerprint(self.pipeline.to_dict())[:32],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "raw": self.raw_name,
            "labels": self.labels_name,
            "classes": [c.to_dict() for c in self.classes],
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "target": self.target,
            "label_offset": list(self.label_offset),
            "min_annotated": self.min_annotated,
            "class_balance": self.class_balance,
            "seed": self.seed,
            "preprocessing": self.pipeline.to_dict(),
            "augmentation": self.augmentation.to_dict(),
            "voxel_size_nm": list(self.voxel_size),
        }

    # --- drawing -------------------------------------------------------------------------------

    def _centre(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A patch centre in label coordinates."""
        shape = self.labels.info.shape
        present = [k for k in range(len(self.classes)) if self._index.counts[:, k].sum() > 0]
        choice = int(rng.integers(0, len(present) + 1)) if self.class_balance else len(present)
        if choice < len(present):
            k = present[choice]
            weights = self._index.counts[:, k].astype(np.float64)
            cell_i = int(rng.choice(len(weights), p=weights / weights.sum()))
            gz, gy, gx = self._index.grid
            idx = (cell_i // (gy * gx), (cell_i // gx) % gy, cell_i % gx)
            off = tuple(i * c for i, c in zip(idx, self._index.cell, strict=True))
            roi = Roi(off, self._index.cell).intersect(Roi((0, 0, 0), shape))  # type: ignore[arg-type]
            where = np.flatnonzero(self.classes[k].mask(self.labels.read(roi)))
            pos = np.unravel_index(int(where[rng.integers(0, where.size)]), roi.shape)
            return (
                roi.offset[0] + int(pos[0]),
                roi.offset[1] + int(pos[1]),
                roi.offset[2] + int(pos[2]),
            )
        c = [int(rng.integers(0, s)) for s in shape]
        return (c[0], c[1], c[2])

    def _place(self, centre: tuple[int, int, int]) -> Roi:
        """The output ROI (label coordinates) around ``centre``, kept inside the labels when
        they are at least as large as the patch."""
        off = []
        for c, o, s in zip(centre, self.output_shape, self.labels.info.shape, strict=True):
            start = c - o // 2
            if s >= o:
                start = min(max(start, 0), s - o)
            else:
                start = -((o - s) // 2)
            off.append(start)
        return Roi((off[0], off[1], off[2]), self.output_shape)

    def _read_labels(self, roi: Roi) -> npt.NDArray[Any]:
        """Labels of ``roi`` (may extend beyond the crop): 0 outside."""
        shape = self.labels.info.shape
        inner = roi.intersect(Roi((0, 0, 0), shape))
        out = np.zeros(roi.shape, dtype=np.dtype(self.labels.info.dtype))
        if inner.size:
            sl = tuple(
                slice(a - o, a - o + s)
                for a, o, s in zip(inner.offset, roi.offset, inner.shape, strict=True)
            )
            out[sl] = self.labels.read(inner)
        return out

    def sample(
        self, index: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """Patch ``index``: raw (z, y, x), target ((C,) z, y, x) and annotated mask (z, y, x)."""
        rng = np.random.default_rng((self.seed, int(index)))
        for _ in range(self.max_tries):
            self.drawn += 1
            out_roi = self._place(self._centre(rng))
            grown = out_roi.grow(self.margin)
            lab = self._read_labels(grown)
            m = self.margin
            core = lab[
                m[0] : m[0] + out_roi.shape[0],
                m[1] : m[1] + out_roi.shape[1],
                m[2] : m[2] + out_roi.shape[2],
            ]
            if np.count_nonzero(core != UNANNOTATED) < self.min_annotated * core.size:
                self.rejected += 1
                continue
            ctx = [(i - o) // 2 for i, o in zip(self.input_shape, self.output_shape, strict=True)]
            raw_off = tuple(
                a + lo - c for a, lo, c in zip(out_roi.offset, self.label_offset, ctx, strict=True)
            )
            raw = self.volume.read_padded(Roi(raw_off, self.input_shape))  # type: ignore[arg-type]
            raw, lab = self._pad_and_augment(raw, lab, grown, rng)
            return self._targets(raw, lab)
        raise SamplingError(
            f"{self.labels_name}: no patch of {list(self.output_shape)} voxels with at least "
            f"{self.min_annotated:.0%} annotated voxels in {self.max_tries} tries "
            f"(min_annotated={self.min_annotated})"
        )

    def _pad_and_augment(
        self,
        raw: npt.NDArray[np.float32],
        lab: npt.NDArray[Any],
        grown: Roi,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
        """Augment raw and labels together; labels come back as int32 with :data:`_OUTSIDE`
        added where a voxel lies beyond the crop (there the edge labels are replicated for
        the distance computation, and the loss mask excludes them)."""
        inside = grown.intersect(Roi((0, 0, 0), self.labels.info.shape))
        flagged = lab.astype(np.int32)
        if inside.shape != grown.shape:
            known = np.zeros(grown.shape, dtype=bool)
            if inside.size:
                lo = [a - o for a, o in zip(inside.offset, grown.offset, strict=True)]
                sl = tuple(slice(a, a + s) for a, s in zip(lo, inside.shape, strict=True))
                pad = [
                    (a, g - a - s) for a, g, s in zip(lo, grown.shape, inside.shape, strict=True)
                ]
                known[sl] = True
                flagged = np.pad(flagged[sl], pad, mode="edge")
            flagged = flagged + np.where(known, 0, _OUTSIDE).astype(np.int32)
        raw, flagged = self.augmentation.apply(raw, flagged, rng, self.voxel_size)
        return raw, flagged

    def _targets(
        self, raw: npt.NDArray[np.float32], flagged: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any], npt.NDArray[np.bool_]]:
        outside = flagged >= _OUTSIDE
        lab = np.where(outside, flagged - _OUTSIDE, flagged)
        m = self.margin
        o = self.output_shape
        sl = (slice(m[0], m[0] + o[0]), slice(m[1], m[1] + o[1]), slice(m[2], m[2] + o[2]))
        mask = (lab[sl] != UNANNOTATED) & ~outside[sl]
        if self.target == "distance":
            t, _ = distance_targets(lab, self.classes, self.voxel_size)
            return raw, np.ascontiguousarray(t[(slice(None), *sl)]), mask
        idx = class_index_map(lab[sl], self.classes)
        idx[~mask] = -1
        return raw, idx, mask

    def batch(self, step: int, batch_size: int) -> Batch:
        """Batch of training ``step``: patches ``step * batch_size ... + batch_size - 1``."""
        raws, targets, masks = [], [], []
        for j in range(batch_size):
            r, t, m = self.sample(step * batch_size + j)
            raws.append(r[None])
            targets.append(t)
            masks.append(m[None])
        return Batch(np.stack(raws), np.stack(targets), np.stack(masks))


def measure_throughput(
    sampler: PatchSampler, n_patches: int = 16, start: int = 0
) -> dict[str, float]:
    """Patches/s and raw input voxels/s of ``sampler`` (reading, pre-processing, targets)."""
    t0 = time.perf_counter()
    for i in range(start, start + n_patches):
        sampler.sample(i)
    dt = max(time.perf_counter() - t0, 1e-9)
    vox = math.prod(sampler.input_shape)
    return {"patches_per_s": n_patches / dt, "voxels_per_s": n_patches * vox / dt, "seconds": dt}
