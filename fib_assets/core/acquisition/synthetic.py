"""Deterministic synthetic FIB-SEM sample generator.

A :class:`SyntheticSample` is an analytically defined cell (plasma membrane, nucleus with a nuclear
envelope and pores, mitochondria with cristae, ER sheets and tubules, Golgi stacks, vesicles) in a
volume of ``shape_zyx`` voxels. Every object is a closed-form shape whose parameters are drawn once
from ``numpy.random.default_rng(seed)``; every random field (texture, shot/read noise, artefact
patches) is seeded per ``(seed, z, channel)``. Any z-slab can therefore be rendered on its own, and
rendering ``[0, Z)`` at once gives exactly the bytes of rendering ``[0, k)`` and ``[k, Z)``
separately. Memory is bounded by the slab (internally by sub-slabs of about a million voxels), never
by the volume.

Conventions: arrays are ``(z, y, x)``; raw arrays are ``(channel, z, y, x)`` with channel 0 the
InLens-like and channel 1 the ESB-like detector; lengths are voxels (px) unless a name ends in
``_nm``. Voxels are isotropic (``voxel_size_nm``, the milling step equals the pixel size). Labels
follow the COSEM / CellMap class ids (:data:`CLASS_IDS`). Labels describe the acquired pixel grid,
so with ``lateral_drift`` they move with the raw image.

Contrast mimics inverted backscatter FIB-SEM: heavy-metal-stained membranes are dark on a light
cytosol, the nucleus is a darker grey with darker heterochromatin, the mitochondrial matrix is
darker than the cytosol. Raw values stay well inside int16 unless the ``saturation`` (or
``charging``) artefact is requested.

Writers: :func:`write_region` (one Janelia ``.dat`` per slice plus ``region.yaml``, written last),
:func:`write_ground_truth` (dense class ids as Zarr v3) and :func:`write_sample` (several regions,
idempotent).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from scipy import ndimage
from tqdm import tqdm

from fib_assets.core.acquisition.dat import write_dat
from fib_assets.core.geometry import validate_region_key

__all__ = [
    "ARTEFACTS",
    "CHANNELS",
    "CLASS_IDS",
    "RegionInfo",
    "SyntheticSample",
    "write_ground_truth",
    "write_region",
    "write_sample",
]

Array = npt.NDArray[Any]

#: Artefact names accepted by :class:`SyntheticSample` (and recorded in ``region.yaml``).
ARTEFACTS: tuple[str, ...] = (
    "curtaining",
    "charging",
    "brightness_drift",
    "lateral_drift",
    "dropped_slices",
    "duplicated_slices",
    "truncated_file",
    "saturation",
)

#: Detector channel names, in the order of the raw array's first axis and of DetA/DetB.
CHANNELS: tuple[str, str] = ("InLens", "ESB")

#: COSEM class ids the generator can emit (name -> id).
CLASS_IDS: dict[str, int] = {
    "ecs": 1,
    "pm": 2,
    "mito_mem": 3,
    "mito_lum": 4,
    "mito_ribo": 5,
    "golgi_mem": 6,
    "golgi_lum": 7,
    "ves_mem": 8,
    "ves_lum": 9,
    "er_mem": 16,
    "er_lum": 17,
    "ne_mem": 20,
    "ne_lum": 21,
    "np_out": 22,
    "np_in": 23,
    "nucpl": 28,
    "cyto": 35,
}

# SampleID is an S25 field of the v9 header; the id also prefixes every file name.
_SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,24}$")

# --- materials: finer than classes, so that e.g. the mitochondrial intermembrane space (class 3)
# can be brighter than the membranes around it. Each material maps to one COSEM class.
(
    _ECS,
    _PM,
    _CYTO,
    _NE_MEM,
    _NE_LUM,
    _NP_OUT,
    _NP_IN,
    _NUCPL,
    _HCHROM,
    _MITO_MEM,
    _MITO_IMS,
    _MITO_CRISTA,
    _MITO_MATRIX,
    _MITO_NUCLEOID,
    _GOLGI_MEM,
    _GOLGI_LUM,
    _VES_MEM,
    _VES_LUM,
    _ER_MEM,
    _ER_LUM,
) = range(20)

_MATERIAL_CLASS = np.array(
    [
        CLASS_IDS["ecs"],
        CLASS_IDS["pm"],
        CLASS_IDS["cyto"],
        CLASS_IDS["ne_mem"],
        CLASS_IDS["ne_lum"],
        CLASS_IDS["np_out"],
        CLASS_IDS["np_in"],
        CLASS_IDS["nucpl"],
        CLASS_IDS["nucpl"],  # heterochromatin is part of the nucleoplasm class
        CLASS_IDS["mito_mem"],
        CLASS_IDS["mito_mem"],  # intermembrane space: too thin to be its own class
        CLASS_IDS["mito_mem"],  # cristae are inner-membrane folds
        CLASS_IDS["mito_lum"],
        CLASS_IDS["mito_ribo"],
        CLASS_IDS["golgi_mem"],
        CLASS_IDS["golgi_lum"],
        CLASS_IDS["ves_mem"],
        CLASS_IDS["ves_lum"],
        CLASS_IDS["er_mem"],
        CLASS_IDS["er_lum"],
    ],
    dtype=np.uint8,
)

# Noise-free signal per material, 0 = black, 1 = bright, for (InLens, ESB). ESB is the more
# compositional detector: membranes and the mitochondrial matrix are relatively darker.
_SIGNAL = np.array(
    [
        # InLens, ESB
        [0.80, 0.84],  # ECS (resin)
        [0.30, 0.20],  # PM
        [0.72, 0.76],  # cytosol
        [0.30, 0.20],  # NE membrane
        [0.66, 0.70],  # NE lumen
        [0.40, 0.32],  # pore ring
        [0.55, 0.56],  # pore channel
        [0.60, 0.56],  # nucleoplasm
        [0.46, 0.38],  # heterochromatin
        [0.28, 0.18],  # mito membranes
        [0.62, 0.62],  # mito intermembrane space
        [0.34, 0.25],  # cristae
        [0.50, 0.42],  # mito matrix
        [0.38, 0.30],  # mito nucleoid
        [0.30, 0.20],  # golgi membrane
        [0.68, 0.72],  # golgi lumen
        [0.30, 0.20],  # vesicle membrane
        [0.70, 0.74],  # vesicle lumen
        [0.32, 0.22],  # ER membrane
        [0.62, 0.64],  # ER lumen
    ],
    dtype=np.float64,
).T  # -> (channel, material)

# Detector model per channel: expected electrons per pixel at signal 1, counts per electron
# (int16 units per unit signal), dark offset and Gaussian read noise (int16 units).
_PHOTONS = (90.0, 35.0)
_SCALE = (14000.0, 9000.0)
_OFFSET = (-1500.0, -600.0)
_READ_NOISE = (120.0, 150.0)
_BEAM_SIGMA_PX = 0.8
_SATURATION_GAIN = 5.0  # contrast set too high: values are stretched around the pivot and clip
_SATURATION_PIVOT = 0.45  # signal level that keeps its value under the saturation gain

_INT16_MIN, _INT16_MAX = -32768, 32767
_SUBSLAB_VOXELS = 1 << 20  # bounds internal float temporaries to a few tens of MB

# Acquisition metadata written into every .dat header and region.yaml.
_MACHINE_ID = "Merlin-6281"
_EHT_KV = 1.2
_SEM_CURRENT_A = 2.0e-9
_SCAN_RATE_HZ = 3.125e6
_WD0_MM = 5.2
_DAT_VERSION = 9


# ---------------------------------------------------------------------------------------------
# small geometry helpers
# ---------------------------------------------------------------------------------------------


def _unit(v: Array) -> Array:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else np.array([1.0, 0.0, 0.0])


def _random_rotation(rng: np.random.Generator) -> Array:
    """A uniformly random proper rotation; columns are the local axes in world (z, y, x)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smoothstep(t: Array) -> Array:
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class _Wobble:
    """Low-order radial perturbation on the unit sphere: r_surface(u) = 1 + sum a cos(f u.d + p)."""

    dirs: Array  # (k, 3) unit vectors
    freqs: Array
    phases: Array
    amps: Array

    @property
    def max_amp(self) -> float:
        return float(np.abs(self.amps).sum())

    def __call__(self, u0: Array, u1: Array, u2: Array) -> Array:
        out = np.zeros(np.broadcast_shapes(u0.shape, u1.shape, u2.shape))
        for d, f, p, a in zip(self.dirs, self.freqs, self.phases, self.amps, strict=True):
            out += a * np.cos(f * (u0 * d[0] + u1 * d[1] + u2 * d[2]) + p)
        return out


def _make_wobble(rng: np.random.Generator, amplitude: float, k: int = 4) -> _Wobble:
    dirs = np.stack([_unit(rng.standard_normal(3)) for _ in range(k)])
    return _Wobble(
        dirs=dirs,
        freqs=rng.uniform(1.5, 4.5, k),
        phases=rng.uniform(0, 2 * np.pi, k),
        amps=rng.uniform(0.3, 1.0, k) * amplitude / k * 2.0,
    )


@dataclass(frozen=True)
class _Ellipsoid:
    """A perturbed ellipsoid; ``rot`` columns are its local axes in world coordinates (z, y, x)."""

    center: Array
    semi: Array
    rot: Array
    wobble: _Wobble

    def half_extent(self, pad: float) -> Array:
        reach = self.semi * (1.0 + self.wobble.max_amp)
        return np.asarray(np.sqrt(((self.rot * reach[None, :]) ** 2).sum(axis=1)) + pad)

    def local(self, zz: Array, yy: Array, xx: Array) -> tuple[Array, Array, Array]:
        d0, d1, d2 = zz - self.center[0], yy - self.center[1], xx - self.center[2]
        r = self.rot
        return (
            d0 * r[0, 0] + d1 * r[1, 0] + d2 * r[2, 0],
            d0 * r[0, 1] + d1 * r[1, 1] + d2 * r[2, 1],
            d0 * r[0, 2] + d1 * r[1, 2] + d2 * r[2, 2],
        )

    def signed_distance(self, q0: Array, q1: Array, q2: Array) -> Array:
        """First-order signed distance (px, negative inside) to the perturbed surface."""
        a0, a1, a2 = self.semi
        n0, n1, n2 = q0 / a0, q1 / a1, q2 / a2
        r = np.maximum(np.sqrt(n0 * n0 + n1 * n1 + n2 * n2), 1e-9)
        g = np.sqrt((n0 / a0) ** 2 + (n1 / a1) ** 2 + (n2 / a2) ** 2) / r
        g = np.maximum(g, 1.0 / float(self.semi.max()))
        surface = 1.0 + self.wobble(n0 / r, n1 / r, n2 / r)
        return np.asarray((r - surface) / g)

    def contains(self, p: Array, shrink: float = 0.0, grow: float = 0.0) -> bool:
        """Whether ``p`` lies inside the unperturbed ellipsoid with semi-axes changed by px."""
        q = self.rot.T @ (p - self.center)
        semi = self.semi * (1 - self.wobble.max_amp) - shrink + grow
        if np.any(semi <= 0):
            return False
        return float(np.sum((q / semi) ** 2)) < 1.0


@dataclass(frozen=True)
class _Cap:
    """A spherical-cap surface patch (sphere centre, unit axis, radius, half-angle) with thickness.

    Distance to the patch is exact: |rho - R| over the cap, distance to the rim circle beyond it.
    """

    center: Array
    axis: Array
    radius: float
    half_angle: float
    half_thickness: float

    @property
    def apex(self) -> Array:
        return np.asarray(self.center + self.radius * self.axis)

    def reach(self) -> float:
        return 2.0 * self.radius * math.sin(self.half_angle / 2.0) + self.half_thickness

    def field(self, zz: Array, yy: Array, xx: Array) -> Array:
        """Distance to the lumen boundary (px): negative in the lumen."""
        v0, v1, v2 = zz - self.center[0], yy - self.center[1], xx - self.center[2]
        rho = np.maximum(np.sqrt(v0 * v0 + v1 * v1 + v2 * v2), 1e-9)
        cos_a = (v0 * self.axis[0] + v1 * self.axis[1] + v2 * self.axis[2]) / rho
        alpha = np.arccos(np.clip(cos_a, -1.0, 1.0))
        beyond = np.maximum(alpha - self.half_angle, 0.0)
        r = self.radius
        rim = np.sqrt(np.maximum(rho * rho + r * r - 2.0 * rho * r * np.cos(beyond), 0.0))
        dist = np.where(alpha <= self.half_angle, np.abs(rho - r), rim)
        return np.asarray(dist - self.half_thickness)


@dataclass(frozen=True)
class _Mito:
    body: _Ellipsoid
    cristae_pos: Array  # positions along the long local axis (px)
    cristae_side: Array  # +1 / -1: which side of the inner membrane the fold grows from
    cristae_reach: Array  # fraction of the width spanned
    nucleoids: Array  # (k, 3) local positions
    nucleoid_radius: float


@dataclass(frozen=True)
class _Pore:
    center: Array
    normal: Array
    radius: float


@dataclass(frozen=True)
class _Segment:
    a: Array
    b: Array
    radius: float


@dataclass(frozen=True)
class _Sphere:
    center: Array
    radius: float


class _ValueNoise:
    """Smooth seeded 3D noise on a lattice of spacing ``cell`` px, evaluated slice by slice.

    Lattice planes are drawn from ``default_rng((*key, iz))`` so values depend only on the world
    position, never on which slab asked for them.
    """

    def __init__(
        self, key: tuple[int, ...], cell: float, shape_zyx: tuple[int, int, int], margin: float
    ):
        self._key = key
        self._cell = float(cell)
        _, ny, nx = shape_zyx
        self._origin = -float(margin) - self._cell
        self._ny = int(math.ceil((ny + 2 * margin) / self._cell)) + 3
        self._nx = int(math.ceil((nx + 2 * margin) / self._cell)) + 3

    def _plane(self, iz: int, cache: dict[int, Array]) -> Array:
        if iz not in cache:
            rng = np.random.default_rng((*self._key, iz))
            cache[iz] = rng.standard_normal((self._ny, self._nx))
        return cache[iz]

    def _weights(self, coords: Array, n: int) -> Array:
        f = (coords - self._origin) / self._cell
        j = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
        s = _smoothstep(np.clip(f - j, 0.0, 1.0))
        w = np.zeros((coords.size, n))
        rows = np.arange(coords.size)
        w[rows, j] = 1.0 - s
        w[rows, j + 1] = s
        return w

    def box(
        self, z0: int, z1: int, ys: Array, xs: Array, drift: Array
    ) -> Array:  # (z1-z0, len(ys), len(xs))
        out = np.empty((z1 - z0, ys.size, xs.size))
        cache: dict[int, Array] = {}
        for i, z in enumerate(range(z0, z1)):
            fz = z / self._cell
            iz = math.floor(fz)
            t = float(_smoothstep(np.asarray(fz - iz)))
            plane = (1.0 - t) * self._plane(iz, cache) + t * self._plane(iz + 1, cache)
            wy = self._weights(ys + drift[z, 0], self._ny)
            wx = self._weights(xs + drift[z, 1], self._nx)
            out[i] = wy @ plane @ wx.T
        return out


# ---------------------------------------------------------------------------------------------
# the sample
# ---------------------------------------------------------------------------------------------


class SyntheticSample:
    """A deterministic synthetic FIB-SEM cell of ``shape_zyx`` voxels (isotropic ``voxel_size_nm``).

    Geometry parameters come from ``default_rng(seed)`` and do not depend on ``artefacts``, so a
    sample with artefacts shows the same cell as the clean one (``lateral_drift`` translates the
    slices, and the labels with them). File-level artefacts (``dropped_slices``,
    ``duplicated_slices``, ``truncated_file``) only change what :func:`write_region` writes; see
    :attr:`dropped_slices`, :attr:`duplicated_slices` and :attr:`truncated_slice`.
    """

    def __init__(
        self,
        shape_zyx: tuple[int, int, int],
        *,
        voxel_size_nm: float = 8.0,
        seed: int = 0,
        artefacts: Sequence[str] = (),
    ) -> None:
        shape = tuple(int(s) for s in shape_zyx)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise ValueError(f"shape_zyx must be three positive ints (z, y, x), got {shape_zyx!r}")
        if min(shape[1:]) < 8:
            raise ValueError(f"shape_zyx {shape_zyx!r}: y and x need at least 8 px for a cell")
        if not (math.isfinite(voxel_size_nm) and voxel_size_nm > 0):
            raise ValueError(f"voxel_size_nm must be a positive number, got {voxel_size_nm!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if isinstance(artefacts, str):
            raise ValueError(f"artefacts must be a sequence of names, got the string {artefacts!r}")
        unknown = [a for a in artefacts if a not in ARTEFACTS]
        if unknown:
            raise ValueError(
                f"unknown artefact(s) {unknown}; valid names are: {', '.join(ARTEFACTS)}"
            )
        self.shape_zyx: tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self.voxel_size_nm = float(voxel_size_nm)
        self.seed = int(seed)
        # canonical order and no repeats, so equal requests compare equal
        self.artefacts: tuple[str, ...] = tuple(a for a in ARTEFACTS if a in set(artefacts))

        nz, ny, nx = self.shape_zyx
        self._t_mem = max(1.25, 9.0 / self.voxel_size_nm)  # membrane thickness, px
        self._init_artefacts()
        # texture lattices cover the field of view plus a margin that depends on the shape only,
        # so a sample with lateral drift has the same texture as the clean one (beyond the
        # margin the texture is clamped, not wrong)
        margin = 0.25 * max(ny, nx) + 8.0
        self._noise_stain = _ValueNoise((self.seed, 10), 12.0, self.shape_zyx, margin)
        self._noise_fine = _ValueNoise((self.seed, 11), 1.6, self.shape_zyx, margin)
        self._build_geometry(np.random.default_rng(self.seed))
        self._chrom_noise = _ValueNoise(
            (self.seed, 12), max(2.0, 0.05 * self._scale), self.shape_zyx, margin
        )
        rng_acq = np.random.default_rng((self.seed, 4))
        self.first_fib_slice: int = int(rng_acq.integers(100, 20000))
        self.acquisition_started: datetime = datetime(2024, 1, 8, 9, 0, tzinfo=UTC) + timedelta(
            days=int(rng_acq.integers(0, 365)), minutes=int(rng_acq.integers(0, 600))
        )

    # -- public facts -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"SyntheticSample(shape_zyx={self.shape_zyx}, voxel_size_nm={self.voxel_size_nm}, "
            f"seed={self.seed}, artefacts={self.artefacts})"
        )

    @property
    def dropped_slices(self) -> tuple[int, ...]:
        """z indices :func:`write_region` skips (``dropped_slices`` artefact), else empty."""
        return self._dropped

    @property
    def duplicated_slices(self) -> tuple[int, ...]:
        """z indices written twice with the same FIBSliceNum (``duplicated_slices``)."""
        return self._duplicated

    @property
    def charged_slices(self) -> tuple[int, ...]:
        """z indices with a charging patch (``charging`` artefact), else empty."""
        return tuple(sorted(self._charged))

    @property
    def truncated_slice(self) -> int | None:
        """z index whose ``.dat`` is cut short (``truncated_file``), else ``None``."""
        return self._truncated

    @property
    def lateral_drift_px(self) -> Array:
        """(Z, 2) offsets (dy, dx) px: pixel (y, x) of slice z images world point (y+dy, x+dx)."""
        return self._drift.copy()

    # -- artefact parameters (O(Z) memory) ----------------------------------------------------

    def _init_artefacts(self) -> None:
        shape_zyx = self.shape_zyx
        nz, ny, nx = shape_zyx
        on = set(self.artefacts)

        def rng(i: int) -> np.random.Generator:
            return np.random.default_rng((self.seed, 1, i))

        # lateral drift: random walk of sub-pixel steps with a few stage jumps of 4-7 px
        self._drift = np.zeros((nz, 2))
        if "lateral_drift" in on and nz > 1:
            r = rng(0)
            steps = r.normal(0.0, 0.6, (nz, 2))
            steps[0] = 0.0
            n_jumps = max(1, nz // 12)
            for z in r.choice(np.arange(1, nz), size=min(n_jumps, nz - 1), replace=False):
                angle = r.uniform(0, 2 * np.pi)
                steps[z] = r.uniform(4.0, 7.0) * np.array([math.sin(angle), math.cos(angle)])
            self._drift = np.cumsum(steps, axis=0)

        # brightness drift: linear gain along z, 25-40 % end to end, random direction
        self._gain = np.ones(nz)
        if "brightness_drift" in on and nz > 1:
            r = rng(1)
            total = r.uniform(0.25, 0.40) * (1 if r.random() < 0.5 else -1)
            self._gain = 1.0 + total * np.arange(nz) / (nz - 1)

        # curtaining: vertical streaks (Gaussian profiles along x, constant along y) whose
        # amplitude varies slowly with z
        self._curtains: tuple[Array, ...] = ()
        if "curtaining" in on:
            r = rng(2)
            k = max(6, nx // 6)
            self._curtains = (
                r.uniform(0, nx, k),  # centre x, px
                r.uniform(0.6, 2.5, k),  # width sigma, px
                r.uniform(0.12, 0.3, k) * np.where(r.random(k) < 0.6, -1.0, 1.0),  # amplitude
                r.uniform(20.0, 80.0, k),  # z period, slices
                r.uniform(0, 2 * np.pi, k),  # z phase
            )

        # charging: a few slices get a bright, saturating patch smeared along the scan (+x)
        self._charged: frozenset[int] = frozenset()
        if "charging" in on:
            r = rng(3)
            n = max(1, round(0.15 * nz))
            self._charged = frozenset(int(z) for z in r.choice(nz, size=n, replace=False))

        # file-level artefacts; the first and last slice are never dropped, so a drop always
        # shows as a jump in FIBSliceNum
        interior = np.arange(1, nz - 1) if nz >= 3 else np.arange(nz)
        self._dropped: tuple[int, ...] = ()
        if "dropped_slices" in on:
            if nz < 3:
                raise ValueError(f"dropped_slices needs at least 3 slices, shape is {shape_zyx}")
            r = rng(4)
            n = min(max(1, round(0.05 * nz)), interior.size)
            self._dropped = tuple(sorted(int(z) for z in r.choice(interior, n, replace=False)))
        self._duplicated: tuple[int, ...] = ()
        if "duplicated_slices" in on:
            r = rng(5)
            pool = np.array([z for z in range(nz) if z not in self._dropped])
            n = min(max(1, round(0.03 * nz)), pool.size)
            self._duplicated = tuple(sorted(int(z) for z in r.choice(pool, n, replace=False)))
        self._truncated: int | None = None
        if "truncated_file" in on:
            r = rng(6)
            pool = np.array([z for z in interior if z not in self._dropped])
            if pool.size == 0:
                pool = np.array([z for z in range(nz) if z not in self._dropped])
            self._truncated = int(r.choice(pool))

    # -- geometry (parameters only; O(number of objects) memory) ------------------------------

    def _build_geometry(self, rng: np.random.Generator) -> None:
        nz, ny, nx = self.shape_zyx
        t = self._t_mem
        vox = self.voxel_size_nm
        ident = np.eye(3)

        # cell: fills the field of view but for the corners (extracellular space); deeper than
        # the volume so every slice cuts through it. Cell and nucleus are centred in z: their
        # cross-sections then change symmetrically along z and do not masquerade as a
        # brightness drift in the slice means.
        semi = np.array([max(0.9 * nz, 0.5 * min(ny, nx)), 0.6 * ny, 0.6 * nx])
        semi *= rng.uniform(0.95, 1.05, 3)
        center = np.array([nz / 2, ny / 2, nx / 2]) + rng.uniform(-0.03, 0.03, 3) * np.array(
            [0, ny, nx]
        )
        self._cell = _Ellipsoid(center, semi, ident, _make_wobble(rng, 0.05))
        scale = float(np.prod(semi) ** (1 / 3))  # characteristic cell size, px
        self._scale = scale

        # nucleus: well off-centre in y/x so the cytoplasm has room on the other side
        n_semi = scale * rng.uniform(0.28, 0.36, 3)
        n_semi[0] = min(n_semi[0], 0.8 * semi[0])
        angle = rng.uniform(0, 2 * np.pi)
        offset = np.array([0.0, 0.45 * math.sin(angle), 0.45 * math.cos(angle)]) * semi
        self._nucleus = _Ellipsoid(
            center + offset, n_semi, _random_rotation(rng), _make_wobble(rng, 0.06)
        )
        self._ne_gap = max(1.0, min(0.04 * scale, 40.0 / vox))  # perinuclear space, px
        ne_outer = 2 * t + self._ne_gap

        # nuclear pores on the envelope
        n_pores = int(np.clip(round(0.02 * scale**2 / 4), 3, 40))
        pores = []
        nuc = self._nucleus
        for _ in range(n_pores):
            u = _unit(rng.standard_normal(3))
            w = float(nuc.wobble(u[0:1], u[1:2], u[2:3])[0])
            q = nuc.semi * u * (1.0 + w)
            normal = _unit(nuc.rot @ (q / nuc.semi**2))
            pores.append(
                _Pore(
                    center=nuc.center + nuc.rot @ q + normal * (ne_outer / 2.0),
                    normal=normal,
                    radius=max(1.5, min(0.03 * scale, 50.0 / vox)),
                )
            )
        self._pores = tuple(pores)

        placed: list[_Sphere] = []

        def place(
            radius: float, gap: float, tries: int = 80, offsets: Sequence[Array] = ()
        ) -> Array | None:
            """Rejection-sample a centre whose spheres (centre + offsets, ``radius`` px) lie in
            the cytoplasm, clear of the nucleus and of everything placed so far."""
            lo = np.array([0.5, 0.5, 0.5])
            hi = np.array([nz - 0.5, ny - 0.5, nx - 0.5])
            for _ in range(tries):
                p = rng.uniform(lo, hi)
                points = [p] + [p + o for o in offsets]
                if not all(
                    self._cell.contains(q, shrink=radius + 2 * t)
                    and not self._nucleus.contains(q, grow=radius + ne_outer + gap)
                    and all(np.linalg.norm(q - s.center) >= s.radius + radius + gap for s in placed)
                    for q in points
                ):
                    continue
                placed.extend(_Sphere(q, radius) for q in points)
                return p
            return None

        nuc_vol = 4 / 3 * np.pi * float(np.prod(n_semi))
        cyto_vol = max(4 / 3 * np.pi * float(np.prod(semi)) - nuc_vol, 1.0)

        # Golgi: stacks of concentric curved cisternae
        golgi: list[_Cap] = []
        self._golgi_centres: list[tuple[Array, float]] = []
        h_g = max(0.6, 0.012 * scale)
        spacing = 2 * h_g + 2 * t + max(1.3, 0.012 * scale)
        n_cis = int(np.clip(scale // 10, 3, 6))
        for _ in range(1 if scale < 80 else 2):
            arc = max(5.0, scale * rng.uniform(0.18, 0.26))
            r0 = arc * rng.uniform(1.3, 2.2)
            brad = math.hypot(arc, n_cis * spacing / 2) + t
            b = place(brad, 2.0)
            if b is None:
                continue
            axis = _unit(rng.standard_normal(3))
            r_mid = r0 + (n_cis - 1) / 2 * spacing
            c = b - r_mid * axis
            for k in range(n_cis):
                rk = r0 + k * spacing
                arc_k = arc * rng.uniform(0.7, 1.0)
                golgi.append(_Cap(c, axis, rk, min(arc_k / rk, 1.2), h_g))
            self._golgi_centres.append((b, brad))
        self._golgi = tuple(golgi)

        # mitochondria: double-membrane ellipsoids with lamellar cristae and nucleoids
        ims = max(0.75, min(0.01 * scale, 12.0 / vox))
        self._mito_ims = ims
        b_mito = float(np.clip(0.085 * scale, 2 * t + ims + 2.0, 160.0 / vox))
        mean_len = 2.6 * b_mito
        n_mito = int(
            np.clip(round(0.07 * cyto_vol / (4 / 3 * np.pi * b_mito**2 * mean_len)), 3, 80)
        )
        mitos = []
        for _ in range(n_mito):
            b_ = b_mito * rng.uniform(0.85, 1.15)
            a_ = b_ * rng.uniform(1.6, 3.6)
            rot = _random_rotation(rng)
            # a capsule of spheres along the long axis stands in for the ellipsoid
            along = [k * (a_ - b_) * rot[:, 0] for k in (-1.0, -0.5, 0.5, 1.0)]
            p = place(b_ + 1, 1.5, offsets=along)
            if p is None:
                continue
            body = _Ellipsoid(
                p, np.array([a_, b_, b_ * rng.uniform(0.8, 1.0)]), rot, _make_wobble(rng, 0.05)
            )
            step = max(3.5, 0.8 * b_)
            pos = np.arange(-0.8 * a_, 0.8 * a_, step) + rng.uniform(-0.3, 0.3) * step
            n_c = pos.size
            n_nuc = int(rng.integers(0, 3))
            mitos.append(
                _Mito(
                    body=body,
                    cristae_pos=pos + rng.uniform(-0.2, 0.2, n_c) * step,
                    cristae_side=np.where(rng.random(n_c) < 0.5, -1.0, 1.0),
                    cristae_reach=rng.uniform(0.5, 0.85, n_c),
                    nucleoids=np.column_stack(
                        [
                            rng.uniform(-0.6, 0.6, n_nuc) * a_,
                            rng.uniform(-0.2, 0.2, n_nuc) * b_,
                            rng.uniform(-0.2, 0.2, n_nuc) * b_,
                        ]
                    ),
                    nucleoid_radius=max(1.0, 0.22 * b_),
                )
            )
        self._mitos = tuple(mitos)

        # vesicles: half clustered around the Golgi, half anywhere in the cytoplasm
        r_ves = float(np.clip(0.045 * scale, t + 1.0, 45.0 / vox))
        n_ves = int(np.clip(round(0.6 * scale), 6, 200))
        vesicles = []
        for i in range(n_ves):
            r = r_ves * rng.uniform(0.8, 1.25)
            if self._golgi_centres and i % 2 == 0:
                b, brad = self._golgi_centres[i // 2 % len(self._golgi_centres)]
                for _ in range(20):
                    p = b + _unit(rng.standard_normal(3)) * brad * rng.uniform(0.75, 1.25)
                    if self._cell.contains(p, shrink=r + 2 * t) and not any(
                        np.linalg.norm(p - s.center) < s.radius + r + 0.5
                        for s in placed
                        if s.radius < brad
                    ):
                        placed.append(_Sphere(p, r))
                        vesicles.append(_Sphere(p, r))
                        break
            else:
                p_ = place(r, 1.0, tries=30)
                if p_ is not None:
                    vesicles.append(_Sphere(p_, r))
        self._vesicles = tuple(vesicles)

        # ER: sheets (single-lumen caps) and tubules (random-walk polylines), merged in one field
        h_er = max(0.6, min(0.015 * scale, 25.0 / vox))
        sheets = []
        for _ in range(int(np.clip(round(scale / 12), 1, 15))):
            arc = scale * rng.uniform(0.15, 0.3)
            p = self._random_cyto_point(rng, ne_outer + 2)
            if p is None:
                continue
            axis = _unit(rng.standard_normal(3))
            r = arc * rng.uniform(1.5, 4.0)
            sheets.append(_Cap(p - r * axis, axis, r, arc / r, h_er))
        self._er_sheets = tuple(sheets)

        r_tub = float(np.clip(0.035 * scale, 0.8, 40.0 / vox))
        seg_len = max(3.0, 0.12 * scale)
        segments = []
        for i in range(int(np.clip(round(scale / 3), 4, 60))):
            if i % 2 == 0:  # start on the nuclear envelope: the ER is continuous with it
                u = _unit(rng.standard_normal(3))
                q = nuc.semi * u
                normal = _unit(nuc.rot @ (q / nuc.semi**2))
                start: Array | None = nuc.center + nuc.rot @ q + normal * (ne_outer + r_tub)
                direction = normal
            else:
                start = self._random_cyto_point(rng, ne_outer + 2)
                direction = _unit(rng.standard_normal(3))
            if start is None or not self._cell.contains(start, shrink=2 * t):
                continue
            for _ in range(int(rng.integers(4, 10))):
                for _ in range(6):
                    d = _unit(direction + 0.7 * rng.standard_normal(3))
                    end = start + seg_len * rng.uniform(0.7, 1.3) * d
                    if self._cell.contains(end, shrink=r_tub + 2 * t) and not (
                        self._nucleus.contains(end, grow=ne_outer + r_tub)
                    ):
                        break
                else:
                    break
                segments.append(_Segment(start, end, r_tub))
                start, direction = end, d
        self._er_segments = tuple(segments)

    def _random_cyto_point(self, rng: np.random.Generator, clearance: float) -> Array | None:
        nz, ny, nx = self.shape_zyx
        for _ in range(40):
            p = rng.uniform([0.5, 0.5, 0.5], [nz - 0.5, ny - 0.5, nx - 0.5])
            if self._cell.contains(p, shrink=2 * self._t_mem) and not self._nucleus.contains(
                p, grow=clearance
            ):
                return p
        return None

    # -- rendering ------------------------------------------------------------------------------

    def _check_range(self, z0: int, z1: int) -> None:
        if not (0 <= z0 < z1 <= self.shape_zyx[0]):
            raise ValueError(
                f"slab [{z0}, {z1}) is not a non-empty range inside [0, {self.shape_zyx[0]})"
            )

    def _subslabs(self, z0: int, z1: int) -> Iterator[tuple[int, int]]:
        step = max(1, _SUBSLAB_VOXELS // (self.shape_zyx[1] * self.shape_zyx[2]))
        for a in range(z0, z1, step):
            yield a, min(a + step, z1)

    def _box(
        self, z0: int, z1: int, lo: Array, hi: Array
    ) -> tuple[tuple[slice, slice, slice], Array, Array, Array] | None:
        """Pixel box (relative to slab start z0) covering world box [lo, hi], or None if empty."""
        nz, ny, nx = self.shape_zyx
        dz = self._drift[z0:z1]
        za, zb = max(z0, math.floor(lo[0])), min(z1, math.ceil(hi[0]) + 1)
        ya = max(0, math.floor(lo[1] - dz[:, 0].max()))
        yb = min(ny, math.ceil(hi[1] - dz[:, 0].min()) + 1)
        xa = max(0, math.floor(lo[2] - dz[:, 1].max()))
        xb = min(nx, math.ceil(hi[2] - dz[:, 1].min()) + 1)
        if za >= zb or ya >= yb or xa >= xb:
            return None
        zz = np.arange(za, zb, dtype=np.float64)[:, None, None]
        yy = np.arange(ya, yb, dtype=np.float64)[None, :, None] + self._drift[za:zb, 0, None, None]
        xx = np.arange(xa, xb, dtype=np.float64)[None, None, :] + self._drift[za:zb, 1, None, None]
        sl = (slice(za - z0, zb - z0), slice(ya, yb), slice(xa, xb))
        return sl, zz, yy, xx

    def _materials(self, z0: int, z1: int) -> npt.NDArray[np.uint8]:
        """Material index per voxel of slab [z0, z1) (a sub-slab; memory ~ a few slab copies)."""
        nz, ny, nx = self.shape_zyx
        t = self._t_mem
        full = self._box(z0, z1, np.array([z0, -1e9, -1e9]), np.array([z1 - 1, 1e9, 1e9]))
        assert full is not None
        _, zz, yy, xx = full
        mat = np.full((z1 - z0, ny, nx), _CYTO, dtype=np.uint8)

        # cell body and plasma membrane
        d = self._cell.signed_distance(*self._cell.local(zz, yy, xx))
        mat[d >= 0] = _ECS
        mat[(d < 0) & (d >= -t)] = _PM
        del d

        # nucleus, envelope (inner membrane, lumen, outer membrane outside the nucleoplasm)
        nuc = self._nucleus
        ne_outer = 2 * t + self._ne_gap
        box = self._box(z0, z1, *self._around(nuc.center, nuc.half_extent(ne_outer + 1)))
        if box is not None:
            sl, bz, by, bx = box
            sub = mat[sl]
            d = nuc.signed_distance(*nuc.local(bz, by, bx))
            free = sub == _CYTO
            nucpl = free & (d < 0)
            chrom = self._chrom_noise.box(
                z0 + sl[0].start,
                z0 + sl[0].stop,
                np.arange(sl[1].start, sl[1].stop, dtype=np.float64),
                np.arange(sl[2].start, sl[2].stop, dtype=np.float64),
                self._drift,
            )
            band = max(1.5, 0.04 * self._scale)
            hchrom = nucpl & (((d > -band) & (chrom > -0.3)) | (chrom > 0.55))
            sub[nucpl] = _NUCPL
            sub[hchrom] = _HCHROM
            sub[free & (d >= 0) & (d < t)] = _NE_MEM
            sub[free & (d >= t) & (d < t + self._ne_gap)] = _NE_LUM
            sub[free & (d >= t + self._ne_gap) & (d < ne_outer)] = _NE_MEM
            del d, chrom, free, nucpl, hchrom
        for pore in self._pores:
            reach = pore.radius + t + ne_outer
            box = self._box(z0, z1, pore.center - reach, pore.center + reach)
            if box is None:
                continue
            sl, bz, by, bx = box
            sub = mat[sl]
            v0, v1, v2 = bz - pore.center[0], by - pore.center[1], bx - pore.center[2]
            ax = v0 * pore.normal[0] + v1 * pore.normal[1] + v2 * pore.normal[2]
            perp = np.sqrt(np.maximum(v0 * v0 + v1 * v1 + v2 * v2 - ax * ax, 0.0))
            env = ((sub == _NE_MEM) | (sub == _NE_LUM)) & (np.abs(ax) <= ne_outer / 2 + 1.0)
            sub[env & (perp < pore.radius + t)] = _NP_OUT
            sub[env & (perp < pore.radius)] = _NP_IN

        # mitochondria
        for m in self._mitos:
            self._paint_mito(mat, z0, z1, m)

        # Golgi cisternae
        for cap in self._golgi:
            self._paint_field(mat, z0, z1, cap, _GOLGI_LUM, _GOLGI_MEM)

        # vesicles
        for v in self._vesicles:
            box = self._box(z0, z1, v.center - v.radius - 1, v.center + v.radius + 1)
            if box is None:
                continue
            sl, bz, by, bx = box
            sub = mat[sl]
            dist = np.sqrt(
                (bz - v.center[0]) ** 2 + (by - v.center[1]) ** 2 + (bx - v.center[2]) ** 2
            )
            free = sub == _CYTO
            sub[free & (dist < v.radius - t)] = _VES_LUM
            sub[free & (dist >= v.radius - t) & (dist < v.radius)] = _VES_MEM

        # ER: one merged field so tubules join sheets without internal walls
        er = np.full(mat.shape, np.inf, dtype=np.float32)
        touched = False
        for cap in self._er_sheets:
            pad = cap.reach() + t + 1
            box = self._box(z0, z1, cap.apex - pad, cap.apex + pad)
            if box is not None:
                sl, bz, by, bx = box
                np.minimum(er[sl], cap.field(bz, by, bx), out=er[sl])
                touched = True
        for s in self._er_segments:
            pad = s.radius + t + 1
            box = self._box(z0, z1, np.minimum(s.a, s.b) - pad, np.maximum(s.a, s.b) + pad)
            if box is None:
                continue
            sl, bz, by, bx = box
            ab = s.b - s.a
            denom = max(float(ab @ ab), 1e-9)
            p0, p1, p2 = bz - s.a[0], by - s.a[1], bx - s.a[2]
            u = np.clip((p0 * ab[0] + p1 * ab[1] + p2 * ab[2]) / denom, 0.0, 1.0)
            dist = np.sqrt((p0 - u * ab[0]) ** 2 + (p1 - u * ab[1]) ** 2 + (p2 - u * ab[2]) ** 2)
            np.minimum(er[sl], dist - s.radius, out=er[sl])
            touched = True
        if touched:
            free = mat == _CYTO
            mat[free & (er < 0)] = _ER_LUM
            mat[free & (er >= 0) & (er < t)] = _ER_MEM
        return mat

    @staticmethod
    def _around(center: Array, half: Array) -> tuple[Array, Array]:
        return center - half, center + half

    def _paint_field(
        self, mat: Array, z0: int, z1: int, cap: _Cap, lumen: int, membrane: int
    ) -> None:
        t = self._t_mem
        pad = cap.reach() + t + 1
        box = self._box(z0, z1, cap.apex - pad, cap.apex + pad)
        if box is None:
            return
        sl, bz, by, bx = box
        sub = mat[sl]
        f = cap.field(bz, by, bx)
        free = sub == _CYTO
        sub[free & (f < 0)] = lumen
        sub[free & (f >= 0) & (f < t)] = membrane

    def _paint_mito(self, mat: Array, z0: int, z1: int, m: _Mito) -> None:
        t = self._t_mem
        body = m.body
        box = self._box(z0, z1, *self._around(body.center, body.half_extent(1.0)))
        if box is None:
            return
        sl, bz, by, bx = box
        sub = mat[sl]
        q0, q1, q2 = body.local(bz, by, bx)
        d = body.signed_distance(q0, q1, q2)
        free = (sub == _CYTO) & (d < 0)
        if not free.any():
            return
        ims = self._mito_ims
        inner = -(t + ims)
        matrix = d < inner - t
        out = np.full(d.shape, _MITO_MATRIX, dtype=np.uint8)
        out[d >= -t] = _MITO_MEM
        out[(d < -t) & (d >= inner)] = _MITO_IMS
        out[(d < inner) & (d >= inner - t)] = _MITO_MEM
        b = float(body.semi[1])
        for pos, side, reach in zip(m.cristae_pos, m.cristae_side, m.cristae_reach, strict=True):
            fold = matrix & (np.abs(q0 - pos) < t / 2 + 0.25) & (side * q1 / b >= 1 - 2 * reach)
            out[fold] = _MITO_CRISTA
        for c in m.nucleoids:
            near = ((q0 - c[0]) ** 2 + (q1 - c[1]) ** 2 + (q2 - c[2]) ** 2) < m.nucleoid_radius**2
            out[near & (out == _MITO_MATRIX)] = _MITO_NUCLEOID
        sub[free] = out[free]

    def _signal(self, z0: int, z1: int, mat: Array) -> Array:
        """Noise-free detector signal (channel, z, y, x) after texture, blur and artefacts."""
        nz, ny, nx = self.shape_zyx
        ys = np.arange(ny, dtype=np.float64)
        xs = np.arange(nx, dtype=np.float64)
        stain = self._noise_stain.box(z0, z1, ys, xs, self._drift)
        fine = self._noise_fine.box(z0, z1, ys, xs, self._drift)
        # ribosome-like speckle in cytosol and nucleoplasm, a gentle staining gradient everywhere
        speckle = np.isin(mat, (_CYTO, _NUCPL, _HCHROM, _MITO_MATRIX))
        sig = np.empty((2, z1 - z0, ny, nx))
        for c in range(2):
            s = _SIGNAL[c][mat]
            s *= 1.0 + 0.04 * stain
            # granular texture plus sparse dark ribosome-sized dots (~2-3 px at 8 nm)
            s += np.where(speckle, 0.04 * fine - 0.25 * np.clip(fine - 0.7, 0.0, None), 0.0)
            sig[c] = s
        del stain, fine, speckle

        if self._curtains:
            cx, cw, ca, cp, cph = self._curtains
            zf = np.arange(z0, z1, dtype=np.float64)[:, None, None]
            phase = 2 * np.pi * zf / cp[None, :, None] + cph[None, :, None]
            amp = ca[None, :, None] * (0.7 + 0.3 * np.sin(phase))  # (nz, k, 1)
            shape = np.exp(-0.5 * ((xs[None, :] - cx[:, None]) / cw[:, None]) ** 2)  # (k, X)
            profile = (amp * shape[None]).sum(axis=1)  # (nz, X)
            sig += profile[None, :, None, :]

        sig = ndimage.gaussian_filter(sig, sigma=(0, 0, _BEAM_SIGMA_PX, _BEAM_SIGMA_PX))

        for i, z in enumerate(range(z0, z1)):
            if z in self._charged:
                sig[:, i] += self._charging_patch(z)[None]
        sig *= self._gain[None, z0:z1, None, None]
        return np.asarray(sig)

    def _charging_patch(self, z: int) -> Array:
        """Bright blob plus an exponentially decaying streak along +x (the scan direction)."""
        _, ny, nx = self.shape_zyx
        r = np.random.default_rng((self.seed, 3, z))
        yc = r.uniform(0.25, 0.75) * ny
        xc = r.uniform(0.15, 0.55) * nx
        sigma = max(2.0, 0.08 * min(ny, nx))
        amp = r.uniform(4.0, 6.0)
        decay = r.uniform(0.15, 0.35) * nx
        y = np.arange(ny, dtype=np.float64)[:, None]
        x = np.arange(nx, dtype=np.float64)[None, :]
        blob = amp * np.exp(-0.5 * ((y - yc) ** 2 + (x - xc) ** 2) / sigma**2)
        rows = np.exp(-0.5 * ((y - yc) / (1.2 * sigma)) ** 2)
        streak = 0.35 * amp * rows * np.where(x >= xc, np.exp(-(x - xc) / decay), 0.0)
        return np.asarray(blob + streak)

    def _detect(self, z0: int, sig: Array) -> npt.NDArray[np.int16]:
        """Shot + read noise per (seed, z, channel), detector offset/scale, int16 clipping."""
        out = np.empty(sig.shape, dtype=np.int16)
        saturate = "saturation" in self.artefacts
        for c in range(2):
            for i in range(sig.shape[1]):
                rng = np.random.default_rng((self.seed, 2, z0 + i, c))
                lam = np.clip(sig[c, i], 0.0, None) * _PHOTONS[c]
                counts = rng.poisson(lam).astype(np.float64)
                v = _OFFSET[c] + _SCALE[c] / _PHOTONS[c] * counts
                v += rng.normal(0.0, _READ_NOISE[c], v.shape)
                if saturate:
                    pivot = _OFFSET[c] + _SCALE[c] * _SATURATION_PIVOT
                    v = pivot + (v - pivot) * _SATURATION_GAIN
                out[c, i] = np.clip(np.rint(v), _INT16_MIN, _INT16_MAX).astype(np.int16)
        return out

    def labels(self, z0: int, z1: int) -> npt.NDArray[np.uint8]:
        """COSEM class ids of slices [z0, z1): array (z1-z0, Y, X) uint8."""
        return self.render(z0, z1, raw=False)[0]

    def raw(self, z0: int, z1: int) -> npt.NDArray[np.int16]:
        """Detector values of slices [z0, z1): (2, z1-z0, Y, X) int16, channels (InLens, ESB)."""
        raw = self.render(z0, z1, raw=True)[1]
        assert raw is not None
        return raw

    def render(
        self, z0: int, z1: int, *, raw: bool = True
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int16] | None]:
        """Labels (z, y, x) uint8 and, if ``raw``, raw (channel, z, y, x) int16 of [z0, z1).

        One geometry pass serves both, so writers that need both call this.
        """
        self._check_range(z0, z1)
        _, ny, nx = self.shape_zyx
        labels = np.empty((z1 - z0, ny, nx), dtype=np.uint8)
        out = np.empty((2, z1 - z0, ny, nx), dtype=np.int16) if raw else None
        for a, b in self._subslabs(z0, z1):
            mat = self._materials(a, b)
            labels[a - z0 : b - z0] = _MATERIAL_CLASS[mat]
            if out is not None:
                out[:, a - z0 : b - z0] = self._detect(a, self._signal(a, b, mat))
        return labels, out


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionInfo:
    """What :func:`write_region` wrote into one landing-zone folder (facts of ``region.yaml``)."""

    region: str
    sample_id: str
    path: Path
    shape_zyx: tuple[int, int, int]
    voxel_size_nm: float
    n_files: int
    channels: tuple[str, ...]
    seed: int
    artefacts: tuple[str, ...]
    first_fib_slice: int
    dropped_slices: tuple[int, ...] = ()
    duplicated_slices: tuple[int, ...] = ()
    truncated_files: tuple[str, ...] = ()
    files: tuple[Path, ...] = field(default=(), repr=False)

    @classmethod
    def from_region_dir(cls, region_dir: Path) -> RegionInfo:
        """Read ``region_dir/region.yaml`` (and list its ``.dat`` files)."""
        region_dir = Path(region_dir)
        doc = yaml.safe_load((region_dir / "region.yaml").read_text())
        syn = doc.get("synthetic", {})
        vs = doc["voxel_size_nm"]
        return cls(
            region=str(doc["region"]),
            sample_id=str(doc["sample_id"]),
            path=region_dir,
            shape_zyx=(
                int(doc["shape_zyx"][0]),
                int(doc["shape_zyx"][1]),
                int(doc["shape_zyx"][2]),
            ),
            voxel_size_nm=float(vs["x"]),
            n_files=int(doc["n_files"]),
            channels=tuple(doc["channels"]),
            seed=int(syn.get("seed", -1)),
            artefacts=tuple(syn.get("artefacts", ())),
            first_fib_slice=int(doc["acquisition"]["first_fib_slice"]),
            dropped_slices=tuple(int(z) for z in syn.get("dropped_slices", ())),
            duplicated_slices=tuple(int(z) for z in syn.get("duplicated_slices", ())),
            truncated_files=tuple(str(f) for f in syn.get("truncated_files", ())),
            files=tuple(sorted(region_dir.glob("*.dat"))),
        )


def _dat_name(sample_id: str, z: int, duplicate: bool = False) -> str:
    # "." < "_" so "<id>_000005_0-0-0.dat" sorts right before "<id>_000005_0-0-0_dup.dat", and
    # both before "<id>_000006_...": sorted names are z order
    return f"{sample_id}_{z:06d}_0-0-0{'_dup' if duplicate else ''}.dat"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _truncate_atomically(path: Path, keep_bytes: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read(keep_bytes))
    os.replace(tmp, path)


def _slab_depth(sample: SyntheticSample, multiple: int = 1) -> int:
    _, ny, nx = sample.shape_zyx
    depth = max(1, (4 * _SUBSLAB_VOXELS) // (ny * nx))
    return max(multiple, depth // multiple * multiple)


def write_region(
    region_dir: Path,
    sample: SyntheticSample,
    *,
    region: str,
    sample_id: str,
    progress: bool = False,
) -> RegionInfo:
    """Write ``sample`` as a landing-zone folder: one Janelia v9 ``.dat`` per slice, then metadata.

    Files are ``{sample_id}_{z:06d}_0-0-0.dat`` (2 channels InLens/ESB, int16, PixelSize =
    voxel size nm, WD in mm decreasing by the milling step per slice, FIBSliceNum =
    ``first_fib_slice + z``). Dropped slices leave a z gap, a duplicated slice adds
    ``..._0-0-0_dup.dat`` (same pixels and FIBSliceNum, sorted right after the original), a
    truncated file is cut inside its pixel block. ``region.yaml`` is written last and atomically:
    its presence marks the folder complete. Slabs are generated one at a time (memory bounded by
    the slab).
    """
    validate_region_key(region)
    if not _SAMPLE_ID_RE.match(sample_id):
        raise ValueError(f"sample_id {sample_id!r} must match {_SAMPLE_ID_RE.pattern}")
    region_dir = Path(region_dir)
    region_dir.mkdir(parents=True, exist_ok=True)
    marker = region_dir / "region.yaml"
    marker.unlink(missing_ok=True)  # the folder is incomplete while we (re)write it

    nz, ny, nx = sample.shape_zyx
    vox = sample.voxel_size_nm
    step_mm = vox * 1e-6
    planned: list[tuple[int, bool]] = []
    for z in range(nz):
        if z in sample.dropped_slices:
            continue
        planned.append((z, False))
        if z in sample.duplicated_slices:
            planned.append((z, True))
    names = {_dat_name(sample_id, z, dup) for z, dup in planned}
    for stale in region_dir.glob("*.dat"):
        if stale.name not in names:
            stale.unlink()

    notes = (
        f"synthetic FIB-SEM sample seed={sample.seed}; FIB milling {vox:g} nm/slice; "
        f"artefacts={','.join(sample.artefacts) or 'none'}"
    )
    written: list[Path] = []
    truncated: list[str] = []
    depth = _slab_depth(sample)
    with tqdm(total=nz, desc=f"{region} .dat", unit="slice", disable=not progress) as bar:
        for z0 in range(0, nz, depth):
            z1 = min(nz, z0 + depth)
            raw = sample.raw(z0, z1)
            for z, dup in planned:
                if not z0 <= z < z1:
                    continue
                path = region_dir / _dat_name(sample_id, z, dup)
                fields: dict[str, Any] = {
                    "PixelSize": vox,
                    "WD": _WD0_MM - z * step_mm,
                    "FIBSliceNum": sample.first_fib_slice + z,
                    "MachineID": _MACHINE_ID,
                    "SampleID": sample_id,
                    "DetA": CHANNELS[0],
                    "DetB": CHANNELS[1],
                    "EHT": _EHT_KV,
                    "SEMCurr": _SEM_CURRENT_A,
                    "ScanRate": _SCAN_RATE_HZ,
                    "Notes": notes,
                }
                write_dat(
                    path, np.ascontiguousarray(raw[:, z - z0]), fields=fields, version=_DAT_VERSION
                )
                if z == sample.truncated_slice and not dup:
                    pixel_bytes = 2 * ny * nx * 2
                    _truncate_atomically(path, 1024 + pixel_bytes * 2 // 5)
                    truncated.append(path.name)
                written.append(path)
            bar.update(z1 - z0)

    info = RegionInfo(
        region=region,
        sample_id=sample_id,
        path=region_dir,
        shape_zyx=sample.shape_zyx,
        voxel_size_nm=vox,
        n_files=len(written),
        channels=CHANNELS,
        seed=sample.seed,
        artefacts=sample.artefacts,
        first_fib_slice=sample.first_fib_slice,
        dropped_slices=sample.dropped_slices,
        duplicated_slices=sample.duplicated_slices,
        truncated_files=tuple(truncated),
        files=tuple(sorted(written)),
    )
    doc = {
        "region": region,
        "sample_id": sample_id,
        "voxel_size_nm": {"z": vox, "y": vox, "x": vox},
        "shape_zyx": [nz, ny, nx],
        "n_files": len(written),
        "channels": list(CHANNELS),
        "instrument": {
            "machine_id": _MACHINE_ID,
            "detectors": {"A": CHANNELS[0], "B": CHANNELS[1]},
            "eht_kv": _EHT_KV,
            "sem_current_na": _SEM_CURRENT_A * 1e9,
            "scan_rate_mhz": _SCAN_RATE_HZ / 1e6,
            "dat_file_version": _DAT_VERSION,
        },
        "acquisition": {
            "started": sample.acquisition_started.isoformat(),
            "operator": "synthetic",
            "milling_step_nm": vox,
            "first_fib_slice": sample.first_fib_slice,
            "working_distance_mm": {
                "first": round(_WD0_MM, 6),
                "last": round(_WD0_MM - (nz - 1) * step_mm, 6),
            },
            "file_pattern": "{sample_id}_{z:06d}_0-0-0.dat",
        },
        "synthetic": {
            "generator": "fib_assets.core.acquisition.synthetic",
            "seed": sample.seed,
            "artefacts": list(sample.artefacts),
            "dropped_slices": list(sample.dropped_slices),
            "duplicated_slices": list(sample.duplicated_slices),
            "truncated_files": truncated,
        },
    }
    _atomic_write_text(marker, yaml.safe_dump(doc, sort_keys=False))
    return info


def write_ground_truth(path: Path, sample: SyntheticSample, *, progress: bool = False) -> None:
    """Write ``sample.labels(0, Z)`` as a Zarr v3 uint8 array (z, y, x), slab by slab.

    Chunks are ``min(64, dim)`` per axis; attributes: ``voxel_size_nm`` [z, y, x], ``class_ids``
    (name -> id of the classes present), ``seed``. The array is built next to ``path`` and moved
    into place at the end, so ``path`` is either absent, the previous version, or complete.
    """
    import zarr  # local: keeps the generator importable where only numpy/scipy are needed

    path = Path(path)
    nz, ny, nx = sample.shape_zyx
    chunks = (min(64, nz), min(64, ny), min(64, nx))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    arr = zarr.create_array(
        store=str(tmp),
        shape=(nz, ny, nx),
        chunks=chunks,
        dtype="uint8",
        dimension_names=["z", "y", "x"],
        fill_value=0,
    )
    present = np.zeros(256, dtype=bool)
    depth = _slab_depth(sample, multiple=chunks[0])
    with tqdm(total=nz, desc=f"{path.name}", unit="slice", disable=not progress) as bar:
        for z0 in range(0, nz, depth):
            z1 = min(nz, z0 + depth)
            lab = sample.labels(z0, z1)
            present |= np.bincount(lab.ravel(), minlength=256) > 0
            arr[z0:z1] = lab
            bar.update(z1 - z0)
    vox = sample.voxel_size_nm
    arr.attrs.update(
        {
            "voxel_size_nm": [vox, vox, vox],
            "class_ids": {n: i for n, i in CLASS_IDS.items() if present[i]},
            "seed": sample.seed,
        }
    )
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_sample(
    out_dir: Path,
    *,
    n_regions: int,
    shape_zyx: tuple[int, int, int],
    seed: int,
    artefacts: Sequence[str] = (),
    artefact_regions: Sequence[str] | None = None,
    sample_id: str = "synthcell",
    voxel_size_nm: float = 8.0,
    progress: bool = False,
) -> list[RegionInfo]:
    """Write ``n_regions`` regions ``r001, r002, ...`` (seed ``seed + index``) of one sample.

    Each region lands in ``out_dir/landing/<region>/`` (see :func:`write_region`) with its ground
    truth in ``out_dir/groundtruth/<region>.zarr``. ``artefacts`` apply to the regions named in
    ``artefact_regions`` (default: all). Ground truth is written first and ``region.yaml`` last, so
    a region with ``region.yaml`` is complete: if it matches (seed, shape, voxel size, sample id,
    artefacts) it is skipped, otherwise a ValueError names the folder.
    """
    if n_regions < 1:
        raise ValueError(f"n_regions must be >= 1, got {n_regions}")
    names = [f"r{i + 1:03d}" for i in range(n_regions)]
    if artefact_regions is None:
        targets = set(names)
    else:
        targets = set(artefact_regions)
        unknown = sorted(targets - set(names))
        if unknown:
            raise ValueError(f"artefact_regions {unknown} are not among the regions {names}")
    out_dir = Path(out_dir)
    (out_dir / "landing").mkdir(parents=True, exist_ok=True)
    (out_dir / "groundtruth").mkdir(parents=True, exist_ok=True)

    infos = []
    for i, name in enumerate(tqdm(names, desc="regions", disable=not progress)):
        sample = SyntheticSample(
            shape_zyx,
            voxel_size_nm=voxel_size_nm,
            seed=seed + i,
            artefacts=tuple(artefacts) if name in targets else (),
        )
        region_dir = out_dir / "landing" / name
        gt_path = out_dir / "groundtruth" / f"{name}.zarr"
        if (region_dir / "region.yaml").exists():
            info = RegionInfo.from_region_dir(region_dir)
            expected = {
                "seed": sample.seed,
                "shape_zyx": sample.shape_zyx,
                "voxel_size_nm": sample.voxel_size_nm,
                "sample_id": sample_id,
                "artefacts": sample.artefacts,
            }
            found = {k: getattr(info, k) for k in expected}
            if found != expected:
                diff = {k: (found[k], expected[k]) for k in expected if found[k] != expected[k]}
                raise ValueError(
                    f"{region_dir} already holds a different synthetic region "
                    f"(found vs requested: {diff}); remove it or choose another out_dir"
                )
            if not gt_path.exists():
                write_ground_truth(gt_path, sample, progress=progress)
            infos.append(info)
            continue
        write_ground_truth(gt_path, sample, progress=progress)
        infos.append(
            write_region(region_dir, sample, region=name, sample_id=sample_id, progress=progress)
        )
    return infos
