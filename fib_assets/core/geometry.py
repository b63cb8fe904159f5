"""Geometry value objects: voxel sizes, regions of interest and block plans.

Every array in fib_assets is indexed (z, y, x) in voxels; physical sizes are nanometres.
These objects are frozen, validate on construction (naming the bad value) and round-trip
to/from plain dicts so they can be stored as provenance and shown as asset metadata.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

REGION_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class RegionKeyError(ValueError):
    """A sample-region key that is not safe to use as a partition key or a path segment."""


def validate_region_key(key: str) -> str:
    """Return ``key`` if it matches ``^[a-z0-9][a-z0-9_-]{0,62}$``, else raise RegionKeyError.

    Region keys become Dagster partition keys and directory names, so this runs before a key
    touches a path (no ``..``, slashes, upper case or whitespace can get through).
    """
    if not isinstance(key, str) or not REGION_KEY_PATTERN.fullmatch(key):
        raise RegionKeyError(
            f"invalid region key {key!r}: must match {REGION_KEY_PATTERN.pattern} "
            "(lower-case letters, digits, '_' or '-', at most 63 characters)"
        )
    return key


def _triple(name: str, value: Sequence[Any], kind: type) -> tuple[Any, Any, Any]:
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 values (z, y, x), got {list(value)!r}")
    return (kind(value[0]), kind(value[1]), kind(value[2]))


@dataclass(frozen=True)
class VoxelSize:
    """Physical voxel size in nanometres, (z, y, x)."""

    z: float
    y: float
    x: float

    def __post_init__(self) -> None:
        for axis in ("z", "y", "x"):
            v = getattr(self, axis)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"voxel size {axis} must be a positive number of nm, got {v!r}")

    @classmethod
    def isotropic(cls, nm: float) -> VoxelSize:
        return cls(nm, nm, nm)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VoxelSize:
        missing = {"z", "y", "x"} - set(d)
        if missing:
            raise ValueError(f"voxel size is missing axes {sorted(missing)}: {d!r}")
        return cls(float(d["z"]), float(d["y"]), float(d["x"]))

    def to_dict(self) -> dict[str, float]:
        return {"z": self.z, "y": self.y, "x": self.x}

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.z, self.y, self.x)

    def scaled(self, factors: Sequence[int]) -> VoxelSize:
        fz, fy, fx = _triple("factors", factors, int)
        return VoxelSize(self.z * fz, self.y * fy, self.x * fx)


@dataclass(frozen=True)
class Roi:
    """An axis-aligned box in voxels: ``offset`` (z, y, x) and ``shape`` (z, y, x)."""

    offset: tuple[int, int, int]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset", _triple("Roi offset", self.offset, int))
        object.__setattr__(self, "shape", _triple("Roi shape", self.shape, int))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"Roi shape must be non-negative, got {self.shape}")

    @property
    def end(self) -> tuple[int, int, int]:
        return (
            self.offset[0] + self.shape[0],
            self.offset[1] + self.shape[1],
            self.offset[2] + self.shape[2],
        )

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def to_slices(self) -> tuple[slice, slice, slice]:
        e = self.end
        return (
            slice(self.offset[0], e[0]),
            slice(self.offset[1], e[1]),
            slice(self.offset[2], e[2]),
        )

    def intersect(self, other: Roi) -> Roi:
        lo = tuple(max(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        hi = tuple(min(a, b) for a, b in zip(self.end, other.end, strict=True))
        shape = tuple(max(0, h - lo_) for lo_, h in zip(lo, hi, strict=True))
        return Roi(lo, shape)  # type: ignore[arg-type]

    def contains(self, other: Roi) -> bool:
        return all(
            a <= b and ea >= eb
            for a, b, ea, eb in zip(self.offset, other.offset, self.end, other.end, strict=True)
        )

    def grow(self, halo: Sequence[int]) -> Roi:
        h = _triple("halo", halo, int)
        return Roi(
            tuple(o - m for o, m in zip(self.offset, h, strict=True)),  # type: ignore[arg-type]
            tuple(s + 2 * m for s, m in zip(self.shape, h, strict=True)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {"offset": list(self.offset), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Roi:
        return cls(tuple(d["offset"]), tuple(d["shape"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Block:
    """One unit of blockwise work: ``write_roi`` is what the block owns, ``read_roi`` adds halo
    (clipped to the volume)."""

    index: tuple[int, int, int]
    write_roi: Roi
    read_roi: Roi

    @property
    def block_id(self) -> str:
        """Stable, file-name-safe identifier used for done markers."""
        return "{}_{}_{}".format(*self.index)


@dataclass(frozen=True)
class BlockPlan:
    """A regular tiling of a (z, y, x) volume into blocks, with an optional halo.

    Peak memory of blockwise work is bounded by ``max_block_bytes(itemsize)``: the largest
    block with its halo, never the volume.
    """

    volume_shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    halo: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "volume_shape", _triple("volume_shape", self.volume_shape, int))
        object.__setattr__(self, "block_shape", _triple("block_shape", self.block_shape, int))
        object.__setattr__(self, "halo", _triple("halo", self.halo, int))
        if any(s <= 0 for s in self.volume_shape):
            raise ValueError(f"volume_shape must be positive, got {self.volume_shape}")
        if any(b <= 0 for b in self.block_shape):
            raise ValueError(f"block_shape must be positive, got {self.block_shape}")
        if any(h < 0 for h in self.halo):
            raise ValueError(f"halo must be non-negative, got {self.halo}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            math.ceil(v / b) for v, b in zip(self.volume_shape, self.block_shape, strict=True)
        )

    def __len__(self) -> int:
        g = self.grid_shape
        return g[0] * g[1] * g[2]

    def blocks(self) -> Iterator[Block]:
        """Blocks in C order (z slowest); edge blocks are clipped to the volume."""
        volume = Roi((0, 0, 0), self.volume_shape)
        for idx in itertools.product(*(range(n) for n in self.grid_shape)):
            off = tuple(i * b for i, b in zip(idx, self.block_shape, strict=True))
            write = Roi(off, self.block_shape).intersect(volume)  # type: ignore[arg-type]
            read = write.grow(self.halo).intersect(volume)
            yield Block(idx, write, read)  # type: ignore[arg-type]

    def max_block_bytes(self, itemsize: int) -> int:
        return math.prod(b + 2 * h for b, h in zip(self.block_shape, self.halo, strict=True)) * (
            itemsize
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "volume_shape": list(self.volume_shape),
            "block_shape": list(self.block_shape),
            "halo": list(self.halo),
            "n_blocks": len(self),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockPlan:
        return cls(
            tuple(d["volume_shape"]), tuple(d["block_shape"]), tuple(d.get("halo", (0, 0, 0)))
        )  # type: ignore[arg-type]


def pyramid_shapes(
    shape: Sequence[int], *, factor: int = 2, min_size: int = 32, max_levels: int = 8
) -> list[tuple[int, int, int]]:
    """Shapes of a multiscale pyramid s0..sN: each level downsampled by ``factor`` per axis
    (ceil), stopping before any axis would drop below ``min_size`` voxels."""
    levels = [_triple("shape", shape, int)]
    while len(levels) < max_levels:
        nxt = tuple(math.ceil(s / factor) for s in levels[-1])
        if min(nxt) < min_size:
            break
        levels.append(nxt)  # type: ignore[arg-type]
    return levels
