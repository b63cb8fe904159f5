"""The verbs every format module shares, and the value objects they exchange.

Each module in ``fib_assets.core.formats`` (tiff, hdf5, zarr, parquet, n5) exposes:

- ``SUFFIX``: the path suffix that identifies the format (dispatch lives in ``__init__``);
- ``plan_write(path, source: VolumeInfo, *, chunks=None, block_shape=None, **options)
  -> WritePlan`` — pure: what will be written where, with which layout;
- ``write_volume(plan, source: VolumeSource, *, progress=False) -> WriteResult`` — blockwise
  (peak memory bounded by ``plan.block_shape``), resumable per block (done markers, see
  :mod:`fib_assets.core.blockwise`) and atomic (a half-written variant is never visible at
  ``plan.path``; an existing one is replaced only when the new one is complete);
- ``open_volume(path) -> VolumeReader`` — lazy; ``read(roi)`` decodes only what the ROI needs.

Errors: a missing path is ``FileNotFoundError`` naming it; a missing, truncated or corrupt
chunk is :class:`CorruptChunkError` naming the file and the chunk index — never zeros.
All arrays are (z, y, x); voxel sizes are nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fib_assets.core.geometry import Block, Roi, VoxelSize


class FormatError(ValueError):
    """A volume file that cannot be read as its format (names the path and the problem)."""


class CorruptChunkError(FormatError):
    """A chunk that is missing, truncated or fails to decode / verify."""

    def __init__(self, path: str, chunk_index: tuple[int, ...], problem: str) -> None:
        self.path = path
        self.chunk_index = tuple(chunk_index)
        self.problem = problem
        super().__init__(f"{path}: chunk {list(chunk_index)}: {problem}")


@dataclass(frozen=True)
class VolumeInfo:
    """Shape (z, y, x) in voxels, numpy dtype name, voxel size (nm) and chunking of a volume."""

    shape: tuple[int, int, int]
    dtype: str
    voxel_size: VoxelSize
    chunks: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "voxel_size_nm": self.voxel_size.to_dict(),
            "chunks": list(self.chunks) if self.chunks else None,
        }


class VolumeSource(Protocol):
    """Anything blockwise writers can read from (e.g. the canonical raw volume)."""

    @property
    def info(self) -> VolumeInfo: ...

    def read(self, roi: Roi) -> np.ndarray: ...


class VolumeReader(VolumeSource, Protocol):
    """An opened volume of some format."""

    @property
    def path(self) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WritePlan:
    """Describe-then-do: everything that determines a written variant."""

    format: str
    path: str
    source: VolumeInfo
    chunks: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "source": self.source.to_dict(),
            "chunks": list(self.chunks),
            "block_shape": list(self.block_shape),
            "options": dict(self.options),
        }


@dataclass(frozen=True)
class WriteResult:
    path: str
    plan: WritePlan
    bytes_on_disk: int
    file_count: int
    seconds: float
    block_checksums: dict[str, str]
    library_versions: dict[str, str]

    @property
    def throughput_mib_s(self) -> float:
        nbytes = int(np.prod(self.plan.source.shape)) * np.dtype(self.plan.source.dtype).itemsize
        return nbytes / 2**20 / max(self.seconds, 1e-9)

    @property
    def compression_ratio(self) -> float:
        nbytes = int(np.prod(self.plan.source.shape)) * np.dtype(self.plan.source.dtype).itemsize
        return nbytes / max(self.bytes_on_disk, 1)


class ArraySource:
    """A VolumeSource over an in-memory array (tests, small data)."""

    def __init__(self, data: np.ndarray, voxel_size: VoxelSize) -> None:
        if data.ndim != 3:
            raise ValueError(f"expected a (z, y, x) array, got shape {data.shape}")
        self.data = data
        self._info = VolumeInfo(
            (int(data.shape[0]), int(data.shape[1]), int(data.shape[2])),
            str(data.dtype),
            voxel_size,
        )

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> np.ndarray:
        return np.asarray(self.data[roi.to_slices()])


def plan_fingerprint(plan: WritePlan) -> str:
    """Identity of a write: the same plan resumes the same staging area and block markers."""
    from fib_assets.core.blockwise import fingerprint

    return fingerprint(plan.to_dict())


def staging_path(plan: WritePlan) -> Path:
    """Where a variant is built before it is published (same directory, so rename is atomic)."""
    final = Path(plan.path)
    return final.with_name(f".{final.name}.partial-{plan_fingerprint(plan)[:16]}")


def ledger_dir(plan: WritePlan) -> Path:
    """Block done-markers of a write, beside (never inside) the variant."""
    final = Path(plan.path)
    return final.with_name(f".{final.name}.blocks")


def publish(staging: Path, final: Path) -> None:
    """Atomically put a finished file or directory at ``final``, replacing an older variant.

    For directories the old one is first renamed aside, so a reader sees either the old or the
    new variant, never a mixture; the old one is removed only after the new one is in place.
    """
    import os
    import shutil

    if staging.is_dir() and final.exists():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True) if aside.is_dir() else aside.unlink()
    else:
        os.replace(staging, final)


def check_roi(path: str, shape: tuple[int, int, int], roi: Roi) -> None:
    """Raise ValueError (naming the volume) when ``roi`` is not inside ``shape``."""
    if any(o < 0 for o in roi.offset) or any(e > s for e, s in zip(roi.end, shape, strict=True)):
        raise ValueError(
            f"{path}: ROI {roi.to_dict()} is outside the volume of shape {list(shape)}"
        )


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, file count) of a file or a directory tree."""
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def check_source(plan: WritePlan, source: VolumeSource) -> None:
    """Raise ValueError (naming the target) when ``source`` is not what ``plan`` was made for:
    shape, dtype and voxel size must all match."""
    got, want = source.info, plan.source
    if (got.shape, np.dtype(got.dtype), got.voxel_size) != (
        want.shape,
        np.dtype(want.dtype),
        want.voxel_size,
    ):
        raise ValueError(
            f"{plan.path}: source is {got.shape} {got.dtype} {got.voxel_size}, but the plan "
            f"was made for {want.shape} {want.dtype} {want.voxel_size}"
        )


def read_block(source: VolumeSource, block: Block, dtype: np.dtype[Any], path: str) -> np.ndarray:
    """The block's voxels from ``source`` as a C-contiguous array of the stored dtype."""
    data = np.asarray(source.read(block.write_roi))
    if data.shape != block.write_roi.shape:
        raise ValueError(
            f"{path}: source returned shape {data.shape} for block {block.block_id} "
            f"{block.write_roi.to_dict()}"
        )
    if not np.can_cast(data.dtype, dtype, "safe"):
        raise ValueError(f"{path}: source block {block.block_id} is {data.dtype}, not {dtype}")
    return np.ascontiguousarray(data, dtype=dtype)


def sha256_array(data: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (the block checksums of every format)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(data).data).hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory and the files directly in it."""
    import os

    paths = [*path.iterdir(), path] if path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
