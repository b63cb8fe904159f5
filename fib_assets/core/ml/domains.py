"""Synthetic "sample types" for transfer-learning experiments, wrapped around
:class:`~fib_assets.core.acquisition.synthetic.SyntheticSample` (which stays unchanged).

A :class:`Domain` changes what a detector and a preparation would: which detector channel,
contrast (gain around mid-grey), brightness, gamma, inversion, extra noise and blur, the voxel
size (the cell is rendered at ``render_voxel_size_nm`` and resampled to ``voxel_size_nm``, so
organelles span a different number of voxels), and the cell itself (seed offset and a
``field_scale`` that renders a larger or smaller cell around the same field of view, changing
organelle size and density per voxel). :data:`DOMAIN_A` is the plain generator output;
:data:`DOMAIN_B` differs in all of these at once.

Rendered volumes are held in memory: this is for demo- and test-sized regions (a 96x128x128
region takes about 3 s).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fib_assets.core.acquisition.synthetic import SyntheticSample
from fib_assets.core.formats import format_module
from fib_assets.core.formats.base import ArraySource
from fib_assets.core.geometry import VoxelSize


@dataclass(frozen=True)
class Domain:
    """How a synthetic region is turned into a uint8 (z, y, x) image of one sample type."""

    name: str
    voxel_size_nm: float = 8.0
    render_voxel_size_nm: float = 8.0
    channel: int = 1  # 0 InLens-like, 1 ESB-like
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    invert: bool = False
    noise_sigma: float = 0.0  # extra Gaussian noise, fraction of the [0, 1] range
    blur_sigma_vox: float = 0.0
    seed_offset: int = 0
    field_scale: float = 1.0  # >1: the cell is rendered larger than the field of view

    def __post_init__(self) -> None:
        for name in ("voxel_size_nm", "render_voxel_size_nm", "gamma", "contrast", "field_scale"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v > 0):
                raise ValueError(f"Domain.{name} must be a positive number, got {v!r}")
        if self.channel not in (0, 1):
            raise ValueError(f"Domain.channel must be 0 (InLens) or 1 (ESB), got {self.channel!r}")
        for name in ("noise_sigma", "blur_sigma_vox", "seed_offset"):
            if getattr(self, name) < 0:
                raise ValueError(f"Domain.{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DOMAIN_A = Domain("a")
# A shift that per-volume pre-processing cannot undo: inverted contrast (membranes bright, as in
# a secondary-electron image instead of inverted backscatter), stronger noise and blur, 10 nm
# voxels resampled from a 6 nm rendering (organelles span fewer voxels) and a cell rendered 1.25x
# larger around the same field of view (other organelle size and density per voxel). With the
# milder shift of session 1 (no inversion, 8 nm) domain A's model scored 0.83 on B as-is and
# fine-tuning had nothing to add.
DOMAIN_B = Domain(
    "b",
    voxel_size_nm=10.0,
    render_voxel_size_nm=6.0,
    channel=0,
    gamma=0.7,
    contrast=0.8,
    brightness=0.05,
    invert=True,
    noise_sigma=0.1,
    blur_sigma_vox=0.6,
    seed_offset=1000,
    field_scale=1.25,
)


@dataclass(frozen=True)
class DomainVolume:
    """A rendered region: ``raw`` uint8 and ``labels`` uint8 class ids, both (z, y, x)."""

    domain: Domain
    seed: int
    raw: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    voxel_size: VoxelSize

    def raw_source(self) -> ArraySource:
        return ArraySource(self.raw, self.voxel_size)

    def labels_source(self) -> ArraySource:
        return ArraySource(self.labels, self.voxel_size)


def render_domain(domain: Domain, shape: tuple[int, int, int], seed: int) -> DomainVolume:
    """Render a (z, y, x) region of ``shape`` voxels at ``domain.voxel_size_nm``."""
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    zoom = domain.voxel_size_nm / domain.render_voxel_size_nm
    field = [max(8, round(s * zoom * domain.field_scale)) for s in shape]
    sample = SyntheticSample(
        (field[0], field[1], field[2]),
        voxel_size_nm=domain.render_voxel_size_nm,
        seed=seed + domain.seed_offset,
    )
    labels_full, raw_full = sample.render(0, field[0])
    assert raw_full is not None
    # the field of view: the centre of the (possibly larger) rendered cell
    view = [max(1, round(s * zoom)) for s in shape]
    lo = [(f - v) // 2 for f, v in zip(field, view, strict=True)]
    sl = tuple(slice(a, a + v) for a, v in zip(lo, view, strict=True))
    img = raw_full[domain.channel][sl].astype(np.float32)
    lab = labels_full[sl]
    p_lo, p_hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - p_lo) / max(p_hi - p_lo, 1e-6), 0.0, 1.0)
    if zoom != 1.0:
        factors = [s / v for s, v in zip(shape, view, strict=True)]
        if zoom > 1.0:  # downsampling: low-pass first
            img = ndimage.gaussian_filter(img, sigma=0.5 * zoom)
        img = _resize(img, factors, shape, order=1)
        lab = _resize(lab, factors, shape, order=0)
    if domain.blur_sigma_vox > 0:
        img = ndimage.gaussian_filter(img, domain.blur_sigma_vox)
    if domain.invert:
        img = 1.0 - img
    img = np.clip(img, 0.0, 1.0) ** domain.gamma
    img = 0.5 + (img - 0.5) * domain.contrast + domain.brightness
    if domain.noise_sigma > 0:
        rng = np.random.default_rng((seed, domain.seed_offset, 99))
        img = img + rng.normal(0.0, domain.noise_sigma, img.shape)
    raw = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return DomainVolume(
        domain,
        seed,
        raw,
        np.ascontiguousarray(lab, dtype=np.uint8),
        VoxelSize.isotropic(domain.voxel_size_nm),
    )


def _resize(
    a: npt.NDArray[Any], factors: list[float], shape: tuple[int, int, int], order: int
) -> npt.NDArray[Any]:
    out = ndimage.zoom(a, factors, order=order, mode="nearest", grid_mode=True)
    pad = [(0, max(0, s - o)) for s, o in zip(shape, out.shape, strict=True)]
    out = np.pad(out, pad, mode="edge")[: shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(out)


def write_domain_volume(
    volume: DomainVolume, out_dir: str | Path, *, fmt: str = "zarr", stem: str | None = None
) -> tuple[Path, Path]:
    """Write raw and labels of ``volume`` as format variants (``fmt``: tiff, hdf5, zarr,
    parquet, n5) under ``out_dir``; returns (raw path, labels path)."""
    module = format_module(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{volume.domain.name}-{volume.seed}"
    paths = []
    for kind, source in (("raw", volume.raw_source()), ("labels", volume.labels_source())):
        path = out / f"{stem}-{kind}{module.SUFFIX}"
        if not path.exists():
            plan = module.plan_write(path, source.info, chunks=(32, 32, 32))
            module.write_volume(plan, source)
        paths.append(path)
    return paths[0], paths[1]
