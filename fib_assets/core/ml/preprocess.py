"""Pre-processing pipelines (named, recorded steps) and training augmentations.

A :class:`Pipeline` is a list of steps, each a frozen value object with a ``name`` and its
parameters. ``fit`` estimates data-dependent parameters (percentiles, mean and standard
deviation) from a seeded, bounded sample of the volume and returns a pipeline whose every
number is explicit, so ``to_dict()`` is the exact provenance record and ``from_dict`` replays it.

Steps are applied lazily to ROIs (``wrap``): pointwise steps map voxels, :class:`Clahe` reads the
contextual tiles its output depends on. Because CLAHE tiles are anchored to the volume's origin
(not to a block), any block computed with its tile halo equals the same voxels of the
whole-volume result: there are no seams between blocks.

Steps (ASEM 2022 uses CLAHE with clip limit 0.02; COSEM normalizes intensities):

- ``percentile_stretch``: ``(x - low) / (high - low)`` clipped to [0, 1]; ``low``/``high`` are the
  ``low_percentile``/``high_percentile`` of the data.
- ``clahe``: contrast-limited adaptive histogram equalization of [0, 1] data in 3D tiles of
  ``kernel_size`` voxels (z, y, x), output in [0, 1].
- ``zscore``: ``(x - mean) / std``.

Arrays are (z, y, x) float32 after any step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fib_assets.core.formats.base import VolumeInfo, VolumeSource
from fib_assets.core.geometry import Roi

ReadFn = Callable[[Roi], npt.NDArray[Any]]
Float = npt.NDArray[np.float32]


def _triple(name: str, value: Sequence[int]) -> tuple[int, int, int]:
    v = tuple(int(x) for x in value)
    if len(v) != 3 or any(x < 1 for x in v):
        raise ValueError(f"{name} must be 3 positive ints (z, y, x), got {list(value)!r}")
    return (v[0], v[1], v[2])


def sample_values(
    read: ReadFn,
    shape: Sequence[int],
    *,
    max_voxels: int = 1 << 22,
    box: int = 32,
    seed: int = 0,
) -> Float:
    """A seeded sample of at most ``max_voxels`` voxel values: the whole volume when it is that
    small, else random ``box``³ boxes (bounded memory on any volume size)."""
    n = math.prod(shape)
    if n <= max_voxels:
        return np.asarray(read(Roi((0, 0, 0), tuple(shape))), dtype=np.float32).ravel()  # type: ignore[arg-type]
    rng = np.random.default_rng((seed, 7))
    b = [min(box, s) for s in shape]
    parts = []
    for _ in range(max(1, max_voxels // math.prod(b))):
        off = tuple(int(rng.integers(0, s - bb + 1)) for s, bb in zip(shape, b, strict=True))
        parts.append(np.asarray(read(Roi(off, tuple(b))), dtype=np.float32).ravel())  # type: ignore[arg-type]
    return np.concatenate(parts)


class Step(Protocol):
    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]: ...

    def fit(self, read: ReadFn, shape: tuple[int, int, int], seed: int) -> Step: ...

    def wrap(self, read: ReadFn, shape: tuple[int, int, int]) -> ReadFn: ...


def _step_dict(step: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name}
    for f in fields(step):
        v = getattr(step, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@dataclass(frozen=True)
class PercentileStretch:
    """Map [low, high] to [0, 1] and clip; ``low``/``high`` come from ``fit`` if not given."""

    name: ClassVar[str] = "percentile_stretch"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                "percentile_stretch needs 0 <= low_percentile < high_percentile <= 100, got "
                f"{self.low_percentile!r}, {self.high_percentile!r}"
            )
        if self.low is not None and self.high is not None and not self.high > self.low:
            raise ValueError(f"percentile_stretch high {self.high!r} must exceed low {self.low!r}")

    def to_dict(self) -> dict[str, Any]:
        return _step_dict(self)

    def fit(self, read: ReadFn, shape: tuple[int, int, int], seed: int) -> PercentileStretch:
        if self.low is not None and self.high is not None:
            return self
        values = sample_values(read, shape, seed=seed)
        lo, hi = np.percentile(values, [self.low_percentile, self.high_percentile])
        if not hi > lo:
            hi = lo + 1.0
        return replace(self, low=float(lo), high=float(hi))

    def wrap(self, read: ReadFn, shape: tuple[int, int, int]) -> ReadFn:
        if self.low is None or self.high is None:
            raise ValueError("percentile_stretch is not fitted (low/high unknown): call fit()")
        lo, scale = np.float32(self.low), np.float32(1.0 / (self.high - self.low))

        def apply(roi: Roi) -> Float:
            x = np.asarray(read(roi), dtype=np.float32)
            return np.asarray(np.clip((x - lo) * scale, 0.0, 1.0), dtype=np.float32)

        return apply


@dataclass(frozen=True)
class ZScore:
    """``(x - mean) / std``; ``mean``/``std`` come from ``fit`` if not given."""

    name: ClassVar[str] = "zscore"
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.std is not None and not self.std > 0:
            raise ValueError(f"zscore std must be positive, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        return _step_dict(self)

    def fit(self, read: ReadFn, shape: tuple[int, int, int], seed: int) -> ZScore:
        if self.mean is not None and self.std is not None:
            return self
        values = sample_values(read, shape, seed=seed).astype(np.float64)
        std = float(values.std())
        return replace(self, mean=float(values.mean()), std=std if std > 0 else 1.0)

    def wrap(self, read: ReadFn, shape: tuple[int, int, int]) -> ReadFn:
        if self.mean is None or self.std is None:
            raise ValueError("zscore is not fitted (mean/std unknown): call fit()")
        mean, inv = np.float32(self.mean), np.float32(1.0 / self.std)

        def apply(roi: Roi) -> Float:
            return ((np.asarray(read(roi), dtype=np.float32) - mean) * inv).astype(np.float32)

        return apply


@dataclass(frozen=True)
class Clahe:
    """3D CLAHE of [0, 1] data with tiles of ``kernel_size`` voxels anchored at the origin.

    ``clip_limit`` is normalized like scikit-image's (fraction of a tile's voxels one bin may
    hold; ASEM: 0.02). Each voxel's value is the trilinear interpolation of the clipped-CDF
    mappings of the (up to) 8 tiles whose centres surround it (nearest tile beyond the outer
    centres). A block therefore depends only on the whole tiles around it, which ``wrap`` reads.
    """

    name: ClassVar[str] = "clahe"
    kernel_size: tuple[int, int, int] = (32, 32, 32)
    clip_limit: float = 0.02
    nbins: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", _triple("clahe kernel_size", self.kernel_size))
        if not 0.0 < self.clip_limit <= 1.0:
            raise ValueError(f"clahe clip_limit must be in (0, 1], got {self.clip_limit!r}")
        if not 2 <= self.nbins <= 65536:
            raise ValueError(f"clahe nbins must be in 2..65536, got {self.nbins!r}")

    def to_dict(self) -> dict[str, Any]:
        return _step_dict(self)

    def fit(self, read: ReadFn, shape: tuple[int, int, int], seed: int) -> Clahe:
        return self

    def tile_range(self, roi: Roi, shape: Sequence[int]) -> Roi:
        """The tile-aligned region (clipped to ``shape``) whose tiles determine ``roi``."""
        lo, hi = [], []
        for a, b, k, n in zip(roi.offset, roi.end, self.kernel_size, shape, strict=True):
            n_tiles = -(-n // k)
            t0 = max(0, math.floor((a - (k - 1) / 2) / k))
            t1 = min(n_tiles - 1, math.floor((b - 1 - (k - 1) / 2) / k) + 1)
            lo.append(t0 * k)
            hi.append(min((t1 + 1) * k, n))
        return Roi(tuple(lo), tuple(h - low for h, low in zip(hi, lo, strict=True)))  # type: ignore[arg-type]

    def wrap(self, read: ReadFn, shape: tuple[int, int, int]) -> ReadFn:
        def apply(roi: Roi) -> Float:
            region = self.tile_range(roi, shape)
            data = np.asarray(read(region), dtype=np.float32)
            return self._equalize(data, region, roi)

        return apply

    def _equalize(self, data: Float, region: Roi, roi: Roi) -> Float:
        k = self.kernel_size
        nb = self.nbins
        q = np.clip((data * nb).astype(np.int64), 0, nb - 1)
        # tile index of every voxel of the (tile-aligned) region
        t_shape = tuple(-(-s // kk) for s, kk in zip(region.shape, k, strict=True))
        tz, ty, tx = (np.arange(s) // kk for s, kk in zip(region.shape, k, strict=True))
        tile = (tz[:, None, None] * t_shape[1] + ty[None, :, None]) * t_shape[2] + tx[None, None, :]
        n_tiles = math.prod(t_shape)
        hist = np.bincount((tile * nb + q).ravel(), minlength=n_tiles * nb).astype(np.float64)
        hist = hist.reshape(n_tiles, nb)
        counts = hist.sum(axis=1, keepdims=True)
        limit = np.maximum(1.0, self.clip_limit * counts)
        excess = np.maximum(hist - limit, 0.0).sum(axis=1, keepdims=True)
        hist = np.minimum(hist, limit) + excess / nb
        lut = np.cumsum(hist, axis=1) / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)
        lut = lut.astype(np.float32).reshape(*t_shape, nb)
        # interpolation between the tile centres around every output voxel (global coords)
        idx0, idx1, w1 = [], [], []
        for axis in range(3):
            p = np.arange(roi.offset[axis], roi.end[axis], dtype=np.float64)
            kk = k[axis]
            first_tile = region.offset[axis] // kk
            t = (p - (kk - 1) / 2) / kk
            i0 = np.floor(t)
            frac = (t - i0).astype(np.float32)
            n_all = t_shape[axis] + first_tile
            lo_i = np.clip(i0, first_tile, n_all - 1).astype(np.int64) - first_tile
            hi_i = np.clip(i0 + 1, first_tile, n_all - 1).astype(np.int64) - first_tile
            frac = np.where(lo_i == hi_i, 0.0, frac).astype(np.float32)
            idx0.append(lo_i)
            idx1.append(hi_i)
            w1.append(frac)
        sl = tuple(
            slice(o - r, o - r + s)
            for o, r, s in zip(roi.offset, region.offset, roi.shape, strict=True)
        )
        qb = q[sl]
        out = np.zeros(roi.shape, dtype=np.float32)
        for cz in (0, 1):
            iz = (idx1 if cz else idx0)[0][:, None, None]
            wz = (w1[0] if cz else 1.0 - w1[0])[:, None, None]
            for cy in (0, 1):
                iy = (idx1 if cy else idx0)[1][None, :, None]
                wy = (w1[1] if cy else 1.0 - w1[1])[None, :, None]
                for cx in (0, 1):
                    ix = (idx1 if cx else idx0)[2][None, None, :]
                    wx = (w1[2] if cx else 1.0 - w1[2])[None, None, :]
                    out += (wz * wy * wx) * lut[iz, iy, ix, qb]
        return out


STEPS: dict[str, type[Any]] = {s.name: s for s in (PercentileStretch, Clahe, ZScore)}


def step_from_dict(d: Mapping[str, Any]) -> Step:
    if not isinstance(d, Mapping) or "name" not in d:
        raise ValueError(f"a pre-processing step is a mapping with a 'name', got {d!r}")
    name = d["name"]
    if name not in STEPS:
        raise ValueError(f"unknown pre-processing step {name!r}; known: {', '.join(STEPS)}")
    cls = STEPS[name]
    params = {k: v for k, v in d.items() if k != "name"}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"pre-processing step {name!r}: unknown parameters {unknown}")
    if "kernel_size" in params:
        params["kernel_size"] = tuple(params["kernel_size"])
    step: Step = cls(**params)
    return step


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of pre-processing steps (empty: just float32)."""

    steps: tuple[Step, ...] = field(default_factory=tuple)

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    @classmethod
    def from_dict(cls, items: Sequence[Mapping[str, Any]] | None) -> Pipeline:
        return cls(tuple(step_from_dict(d) for d in (items or ())))

    def fit(self, source: VolumeSource, seed: int = 0) -> Pipeline:
        """Estimate every step's data-dependent parameters on the output of the steps before."""
        shape = source.info.shape
        read: ReadFn = source.read
        fitted: list[Step] = []
        for step in self.steps:
            s = step.fit(read, shape, seed)
            fitted.append(s)
            read = s.wrap(read, shape)
        return Pipeline(tuple(fitted))

    def wrap(self, read: ReadFn, shape: tuple[int, int, int]) -> ReadFn:
        for step in self.steps:
            read = step.wrap(read, shape)
        return read


def mirror_indices(start: int, stop: int, n: int) -> npt.NDArray[np.int64]:
    """Indices into an axis of length ``n`` for positions [start, stop), mirrored at the
    borders without repeating the edge voxel (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros(stop - start, dtype=np.int64)
    p = np.arange(start, stop, dtype=np.int64)
    period = 2 * (n - 1)
    p = np.mod(p, period)
    return np.where(p < n, p, period - p)


class PreprocessedVolume:
    """A :class:`VolumeSource` of float32 pre-processed voxels, with mirror padding.

    ``read(roi)`` requires ``roi`` inside the volume; ``read_padded(roi)`` accepts any ROI and
    mirrors the pre-processed volume at its borders, so a patch near a border is the same
    whether it is cut from the whole volume or read on its own.
    """

    def __init__(self, source: VolumeSource, pipeline: Pipeline | None = None) -> None:
        self.source = source
        self.pipeline = pipeline or Pipeline()
        self._shape = source.info.shape
        self._read = self.pipeline.wrap(source.read, self._shape)
        self._info = VolumeInfo(self._shape, "float32", source.info.voxel_size, source.info.chunks)

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> Float:
        return np.asarray(self._read(roi), dtype=np.float32)

    def read_padded(self, roi: Roi) -> Float:
        volume = Roi((0, 0, 0), self._shape)
        if volume.contains(roi):
            return self.read(roi)
        idx = [
            mirror_indices(o, e, n)
            for o, e, n in zip(roi.offset, roi.end, self._shape, strict=True)
        ]
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        box = Roi((lo[0], lo[1], lo[2]), (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]))
        data = self.read(box)
        return np.ascontiguousarray(
            data[np.ix_(idx[0] - lo[0], idx[1] - lo[1], idx[2] - lo[2])], dtype=np.float32
        )


# --- augmentations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentations (all draws from the generator passed to ``apply``).

    Geometric ones (flips, axis transposes among axes with equal voxel size and patch shape,
    optional elastic deformation) move raw and labels together; intensity ones (scale, shift,
    gamma) change raw only. Ranges are (min, max); ``None`` disables an augmentation.

    Acquisition artefacts of FIB-SEM, off by default, applied after the intensity ones in the
    order the instrument makes them: ``gain_ramp`` = (max gain change, max offset change) end
    to end along a random axis (brightness drift: ``raw * (1 + a t) + b t``, ``t`` in
    [-1/2, 1/2]); ``streaks`` = the largest standard deviation of per-column offsets constant
    along y (curtaining; smooth along x); ``saturation`` = (min, max) fraction of the patch's
    brightest voxels clipped to the value at that quantile (a detector gain set too high).
    """

    flips: bool = True
    transposes: bool = True
    intensity_scale: tuple[float, float] | None = (0.9, 1.1)
    intensity_shift: tuple[float, float] | None = (-0.1, 0.1)
    gamma: tuple[float, float] | None = (0.8, 1.25)
    elastic_sigma_vox: float | None = None  # displacement magnitude (voxels); None: off
    elastic_grid: int = 4  # control points per axis of the smooth displacement field
    gain_ramp: tuple[float, float] | None = None
    streaks: float | None = None
    saturation: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("intensity_scale", "intensity_shift", "gamma"):
            r = getattr(self, name)
            if r is not None:
                r = (float(r[0]), float(r[1]))
                if not r[0] <= r[1]:
                    raise ValueError(f"augmentation {name} must be (min, max), got {list(r)}")
                if name != "intensity_shift" and r[0] <= 0:
                    raise ValueError(f"augmentation {name} must be positive, got {list(r)}")
                object.__setattr__(self, name, r)
        if self.elastic_sigma_vox is not None and self.elastic_sigma_vox < 0:
            raise ValueError(f"elastic_sigma_vox must be >= 0, got {self.elastic_sigma_vox!r}")
        if self.gain_ramp is not None:
            g = (float(self.gain_ramp[0]), float(self.gain_ramp[1]))
            if not (0.0 <= g[0] < 2.0 and g[1] >= 0.0):
                raise ValueError(
                    "augmentation gain_ramp must be (max gain change in [0, 2), max offset "
                    f"change >= 0), got {list(self.gain_ramp)}"
                )
            object.__setattr__(self, "gain_ramp", g)
        if self.streaks is not None and not self.streaks >= 0:
            raise ValueError(f"augmentation streaks must be >= 0, got {self.streaks!r}")
        if self.saturation is not None:
            f = (float(self.saturation[0]), float(self.saturation[1]))
            if not 0.0 <= f[0] <= f[1] < 1.0:
                raise ValueError(
                    f"augmentation saturation must be fractions 0 <= min <= max < 1, got {list(f)}"
                )
            object.__setattr__(self, "saturation", f)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _listify(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Augmentation:
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown augmentation keys {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    @classmethod
    def none(cls) -> Augmentation:
        return cls(False, False, None, None, None, None, 4, None, None, None)

    def apply(
        self,
        raw: Float,
        labels: npt.NDArray[Any],
        rng: np.random.Generator,
        voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> tuple[Float, npt.NDArray[Any]]:
        """Augment a raw patch and the label patch centred on the same point (z, y, x)."""
        if any((r - s) % 2 for r, s in zip(raw.shape, labels.shape, strict=True)):
            raise ValueError(
                f"raw {raw.shape} and labels {labels.shape} must differ by an even number of "
                "voxels per axis (both centred on the same point)"
            )
        if self.elastic_sigma_vox:
            raw, labels = _elastic(raw, labels, rng, self.elastic_sigma_vox, self.elastic_grid)
        if self.flips:
            for axis in range(3):
                if rng.random() < 0.5:
                    raw, labels = np.flip(raw, axis), np.flip(labels, axis)
        if self.transposes:
            perm = list(rng.permutation(3))
            ok = all(
                raw.shape[a] == raw.shape[p]
                and labels.shape[a] == labels.shape[p]
                and voxel_size[a] == voxel_size[p]
                for a, p in enumerate(perm)
            )
            if ok:
                raw, labels = raw.transpose(perm), labels.transpose(perm)
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        if self.gamma is not None:
            g = float(np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
            lo, hi = float(raw.min()), float(raw.max())
            if hi > lo:
                raw = (lo + (hi - lo) * ((raw - lo) / (hi - lo)) ** g).astype(np.float32)
        if self.intensity_scale is not None:
            raw = raw * np.float32(rng.uniform(*self.intensity_scale))
        if self.intensity_shift is not None:
            raw = raw + np.float32(rng.uniform(*self.intensity_shift))
        raw = self._artefacts(raw, rng)
        return np.ascontiguousarray(raw, dtype=np.float32), np.ascontiguousarray(labels)

    def _artefacts(self, raw: Float, rng: np.random.Generator) -> Float:
        """Brightness drift, curtaining and saturation (see the class docstring)."""
        if self.gain_ramp is not None:
            axis = int(rng.integers(0, 3))
            n = raw.shape[axis]
            t = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / max(n - 1, 1)
            shape = [1, 1, 1]
            shape[axis] = n
            t = t.reshape(shape)
            a = np.float32(rng.uniform(-self.gain_ramp[0], self.gain_ramp[0]))
            b = np.float32(rng.uniform(-self.gain_ramp[1], self.gain_ramp[1]))
            raw = raw * (1 + a * t) + b * t
        if self.streaks:
            sigma = float(rng.uniform(0.0, self.streaks))
            nz, _, nx = raw.shape
            offsets = rng.normal(0.0, sigma, size=(nz, 1, nx)).astype(np.float32)
            raw = raw + ndimage.uniform_filter1d(offsets, size=3, axis=2, mode="nearest")
        if self.saturation is not None:
            f = float(rng.uniform(*self.saturation))
            if f > 0:
                raw = np.minimum(raw, np.float32(np.quantile(raw, 1.0 - f)))
        return np.asarray(raw, dtype=np.float32)


def _listify(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _elastic(
    raw: Float, labels: npt.NDArray[Any], rng: np.random.Generator, sigma: float, grid: int
) -> tuple[Float, npt.NDArray[Any]]:
    """Smooth random displacement (cubic-interpolated control grid) applied to both arrays
    about their common centre; raw linear, labels nearest."""
    box = [max(r, s) for r, s in zip(raw.shape, labels.shape, strict=True)]
    coarse = rng.normal(0.0, sigma, (3, grid, grid, grid))
    field_ = np.stack(
        [
            ndimage.zoom(c, [b / grid for b in box], order=3, mode="nearest")[
                : box[0], : box[1], : box[2]
            ]
            for c in coarse
        ]
    )

    def warp(a: npt.NDArray[Any], order: int) -> npt.NDArray[Any]:
        off = [(b - s) // 2 for b, s in zip(box, a.shape, strict=True)]
        grids = np.meshgrid(*(np.arange(s) for s in a.shape), indexing="ij")
        sl = tuple(slice(o, o + s) for o, s in zip(off, a.shape, strict=True))
        coords = [g + field_[i][sl] for i, g in enumerate(grids)]
        return np.asarray(
            ndimage.map_coordinates(a, coords, order=order, mode="mirror").astype(a.dtype)
        )

    return warp(raw, 1), warp(labels, 0)
