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

import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.metadata
import itertools
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import numpy as np
import xxhash

from fib_assets.core.geometry import Block, Roi, VoxelSize

#: how a writer checks each block before its done marker: ``"structure"`` (the stored
#: chunks/pages exist, are inside their files and their stored checksums are consistent;
#: no decode) or ``"data"`` (also decode the block back and compare its sha256)
Verify = Literal["structure", "data"]
VERIFY_MODES: tuple[str, ...] = ("structure", "data")


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


def read_block(
    source: VolumeSource | Callable[[Roi], np.ndarray],
    block: Block,
    dtype: np.dtype[Any],
    path: str,
) -> np.ndarray:
    """The block's voxels from ``source`` (a VolumeSource or its ``read``) as a C-contiguous
    array of the stored dtype; ValueError naming ``path`` for a wrong shape or dtype."""
    read = source if callable(source) else source.read
    data = np.asarray(read(block.write_roi))
    if data.shape != block.write_roi.shape:
        raise ValueError(
            f"{path}: source returned shape {data.shape} for block {block.block_id} "
            f"{block.write_roi.to_dict()}"
        )
    if not np.can_cast(data.dtype, dtype, "safe"):
        raise ValueError(f"{path}: source block {block.block_id} is {data.dtype}, not {dtype}")
    return np.ascontiguousarray(data, dtype=dtype)


def sha256_array(data: np.ndarray) -> str:
    """sha256 (hex) of an array's bytes in C order (the block checksum algorithm before
    :data:`BLOCK_CHECKSUM`; still verified in markers that recorded it)."""

    return hashlib.sha256(np.ascontiguousarray(data).data).hexdigest()


#: the algorithm of every format's block checksums (``WriteResult.block_checksums``, block
#: done markers, ``verify="data"`` and ``verify.verify_same_voxels``): XXH3 with 128-bit
#: output. Block checksums detect corruption and prove "decodes to the same bytes"; nobody
#: forges them (file-level fixity for provenance and deposits stays sha256/sha512). XXH3-128
#: passes SMHasher's quality tests, its 2^-128 collision odds for random changes match
#: sha256's for this purpose, and it hashes at ~0.03 CPU-s/GiB here vs sha256's 0.6 (SHA-NI):
#: sha256 was ~5 % of the Zarr writer's CPU.
BLOCK_CHECKSUM = "xxh3_128"
#: algorithms :func:`checksum_matches` can verify: the current one and the legacy sha256
CHECKSUM_ALGORITHMS: dict[str, Callable[[np.ndarray], str]] = {
    "xxh3_128": lambda data: xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data).data),
    "sha256": sha256_array,
}


def block_checksum(data: np.ndarray) -> str:
    """The block checksum of an array's bytes in C order, as ``"<algorithm>:<hex digest>"``
    (the algorithm is recorded with every checksum, so older ones stay verifiable)."""
    return f"{BLOCK_CHECKSUM}:{CHECKSUM_ALGORITHMS[BLOCK_CHECKSUM](data)}"


def split_checksum(recorded: str) -> tuple[str, str]:
    """(algorithm, hex digest) of a recorded block checksum. A bare 64-digit hex string is a
    sha256 recorded before algorithms were named; anything else unknown is a ValueError."""
    algorithm, sep, digest = recorded.partition(":")
    if not sep:
        algorithm, digest = "sha256", recorded
    expected = {"sha256": 64, "xxh3_128": 32}.get(algorithm)
    if (
        algorithm not in CHECKSUM_ALGORITHMS
        or len(digest) != expected
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise ValueError(f"not a block checksum this version can verify: {recorded!r}")
    return algorithm, digest


def checksum_matches(data: np.ndarray, recorded: str) -> bool:
    """Whether ``data`` (C order) has the recorded block checksum, in the algorithm it names."""
    algorithm, digest = split_checksum(recorded)
    return CHECKSUM_ALGORITHMS[algorithm](data) == digest


def marker_checksum(info: dict[str, Any]) -> str:
    """The block checksum a done marker recorded: ``"checksum"`` (algorithm-prefixed), or the
    ``"sha256"`` of markers written before algorithms were named (returned as ``sha256:…``)."""
    if "checksum" in info:
        return str(info["checksum"])
    return f"sha256:{info['sha256']}"


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory and the files directly in it."""
    for p in [*path.iterdir(), path] if path.is_dir() else [path]:
        fsync_one(p)


def fsync_one(path: Path) -> None:
    """fsync one file or directory entry (not what a directory contains)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- plan checks shared by the format modules ----------------------------------------------


def positive_triple(
    name: str, value: Sequence[int], where: str | Path | None = None
) -> tuple[int, int, int]:
    """``value`` as 3 positive ints (z, y, x); ValueError naming ``name`` (and ``where``)."""
    prefix = f"{where}: " if where is not None else ""
    try:
        v = tuple(int(x) for x in value)
    except (TypeError, ValueError):
        v = ()
    if len(v) != 3 or any(x <= 0 for x in v):
        raise ValueError(
            f"{prefix}{name} must be 3 positive voxel counts (z, y, x), got {list(value)!r}"
        )
    return (v[0], v[1], v[2])


def clip_triple(value: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """``value`` clipped to ``shape`` per axis."""
    return (min(value[0], shape[0]), min(value[1], shape[1]), min(value[2], shape[2]))


def tiles(block: Sequence[int], unit: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether ``block`` is a whole number of ``unit`` on every axis (or covers the axis)."""
    return all(b >= s or b % u == 0 for b, u, s in zip(block, unit, shape, strict=True))


def check_suffix(path: str | Path, suffix: str, what: str) -> None:
    """ValueError unless ``path`` ends in ``suffix`` (``what`` names the format)."""
    if not str(path).rstrip("/").endswith(suffix):
        raise ValueError(f"{path}: {what} path must end in {suffix!r}")


def check_level(codec: str, level: object, lo: int, hi: int) -> int:
    """A compression level of ``codec`` in ``lo..hi`` (ints only), else ValueError."""
    if not isinstance(level, int) or isinstance(level, bool) or not lo <= level <= hi:
        raise ValueError(f"{codec} compression_level must be in {lo}..{hi}, got {level!r}")
    return level


def check_levels(levels: object) -> int:
    """A pyramid level count (integer >= 1), else ValueError."""
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    return levels


def check_verify(path: str | Path, verify: object) -> str:
    """One of :data:`VERIFY_MODES`, else ValueError naming ``path``."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"{path}: verify must be 'structure' or 'data', got {verify!r}")
    return str(verify)


# --- chunk grids ---------------------------------------------------------------------------


def chunk_indices(roi: Roi, chunks: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Chunk-grid indices (z, y, x) of the chunks a non-empty ``roi`` touches, in C order."""
    ranges = [
        range(o // c, -(-e // c)) for o, e, c in zip(roi.offset, roi.end, chunks, strict=True)
    ]
    for idx in itertools.product(*ranges):
        yield (idx[0], idx[1], idx[2])


def chunk_roi(chunk: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> Roi:
    """The voxels of chunk ``chunk`` (grid index z, y, x), clipped to the volume ``shape``."""
    off = [i * c for i, c in zip(chunk, chunks, strict=True)]
    size = [min(c, s - o) for c, s, o in zip(chunks, shape, off, strict=True)]
    return Roi((off[0], off[1], off[2]), (size[0], size[1], size[2]))


def paste(out: np.ndarray, out_roi: Roi, data: np.ndarray, data_roi: Roi) -> None:
    """Copy the part of ``data`` (covering ``data_roi``) that lies in ``out_roi`` into ``out``."""
    part = data_roi.intersect(out_roi)
    src = tuple(
        slice(p - d, p - d + s)
        for p, d, s in zip(part.offset, data_roi.offset, part.shape, strict=True)
    )
    dst = tuple(
        slice(p - o, p - o + s)
        for p, o, s in zip(part.offset, out_roi.offset, part.shape, strict=True)
    )
    out[dst] = data[src]


# --- the common tail of a write ------------------------------------------------------------


def library_versions(*packages: str, **extra: str) -> dict[str, str]:
    """Installed versions of ``packages`` (missing ones left out), plus ``extra`` entries."""
    out = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return {**out, **extra}


def clear_ledger(plan: WritePlan, ledger_directory: Path) -> None:
    """Drop a finished write's block markers, and their directory once no other plan's are left."""
    shutil.rmtree(ledger_directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        ledger_dir(plan).rmdir()


def write_result(
    plan: WritePlan,
    final: str | Path,
    started: float,
    checksums: dict[str, str],
    versions: dict[str, str],
) -> WriteResult:
    """The :class:`WriteResult` of a published local variant (size counted on disk)."""
    nbytes, nfiles = tree_size(Path(final))
    return WriteResult(
        path=str(final),
        plan=plan,
        bytes_on_disk=nbytes,
        file_count=nfiles,
        seconds=time.perf_counter() - started,
        block_checksums=checksums,
        library_versions=versions,
    )


# --- memory --------------------------------------------------------------------------------

#: glibc's malloc serves allocations of at least this many bytes with their own mmap, so a
#: freed block-sized buffer goes back to the OS at once, while chunk-sized ones (64³ uint16
#: is 512 KiB) are recycled inside the heap (see :func:`bound_allocator_retention`)
MMAP_THRESHOLD_BYTES = 2**20
#: glibc malloc arenas (heaps) threads may spread over (see :func:`limit_malloc_arenas`)
ARENA_MAX = 1
_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers, glibc malloc.h
_M_ARENA_MAX = -8
_allocator_bounded: bool | None = None
_arenas_limited: bool | None = None


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt`` through ctypes; False where there is none (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only (musl has none)
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(mallopt(param, value))
    return False


def limit_malloc_arenas() -> bool:
    """Let every thread of this process share :data:`ARENA_MAX` glibc malloc arena(s)
    (Linux/glibc only; idempotent; True if set). Called when this module is imported.

    Chunk-sized buffers (below the mmap threshold) are recycled inside malloc's heaps, and
    glibc gives threads up to 8 x cores arenas, each keeping its own freed chunks: with
    tensorstore's and the codecs' thread pools the Zarr conversion's peak RSS grew with the
    volume (148 -> 219 MiB from 1 to 4 GiB). One arena keeps it about flat at the same
    CPU-s/GiB (81-100 -> 99-103 MiB over repeated runs): chunk-sized allocations are few
    (about one per 64³ chunk) and small ones come from glibc's lock-free per-thread cache.
    An arena a thread made before the limit stays (limited from ``write_volume`` only, one
    such arena gave 106 -> 153 -> 160 MiB for 1 / 4 / 16 GiB), hence the call at import: the
    format layer is imported before the writers' thread pools start. ``malloc_trim`` after
    every block flattened it further (86 -> 87 MiB) but cost ~0.7 CPU-s/GiB (page faults
    again on reuse), so it is not done. ``MALLOC_ARENA_MAX`` (if set) wins.
    """
    global _arenas_limited
    if _arenas_limited is None:
        _arenas_limited = "MALLOC_ARENA_MAX" not in os.environ and _mallopt(_M_ARENA_MAX, ARENA_MAX)
    return _arenas_limited


def bound_allocator_retention() -> bool:
    """Make freed large buffers go back to the OS (Linux/glibc only; idempotent; True if set).

    glibc raises its mmap threshold after the first large free (dynamically up to 32 MiB), so
    block-sized buffers freed by numpy and by tensorstore's/zlib's threads are kept in malloc
    arenas and a writer's resident memory grows beyond the blocks it holds (measured before
    this: +70 % for Zarr at a 64 MiB budget; Zarr's peak RSS grew from 255 to 434 MiB
    between 1 and 16 GiB conversions). Fixing ``M_MMAP_THRESHOLD`` at
    :data:`MMAP_THRESHOLD_BYTES` (which also turns the dynamic adjustment off) returns every
    block at once. 1 MiB rather than glibc's initial 128 KiB: at 128 KiB every chunk buffer
    is a fresh mmap whose page faults cost ~35 % more CPU for Parquet and ~15 % for Zarr
    (measured), for no lower peak. Also makes sure of :func:`limit_malloc_arenas`.

    Process-wide: called by every ``write_volume`` so a process that converts volumes keeps
    its peak memory near its block budget. The environment variable
    ``MALLOC_MMAP_THRESHOLD_`` (if set) wins: then the threshold is left alone.
    """
    global _allocator_bounded
    limit_malloc_arenas()
    if _allocator_bounded is None:
        _allocator_bounded = "MALLOC_MMAP_THRESHOLD_" not in os.environ and _mallopt(
            _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES
        )
    return _allocator_bounded


def blocks_in_flight(block_bytes: int, budget_bytes: int | None, per_block: float, cap: int) -> int:
    """How many blocks a pipelined writer may have in flight: ``cap`` (about one per core),
    fewer when ``budget_bytes`` is given and ``per_block`` x ``block_bytes`` each would not
    fit; never less than 1."""
    if budget_bytes is None:
        return max(1, cap)
    return max(1, min(cap, int(budget_bytes // max(1.0, per_block * block_bytes))))


def cores() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --- readers -------------------------------------------------------------------------------


class BaseReader:
    """What every format's reader shares: ``path``, ``info``, ``close`` (idempotent) and the
    context manager. Subclasses set ``_path`` and ``_info`` and call :meth:`_check_open`
    (and :func:`check_roi`) at the start of ``read``; ``_close`` releases their handles."""

    _path: str
    _info: VolumeInfo
    _closed: bool = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def _check_open(self, roi: Roi) -> None:
        if self._closed:
            raise ValueError(f"{self._path}: volume is closed")
        check_roi(self._path, self._info.shape, roi)

    def _close(self) -> None:
        """Release the reader's files and threads (override)."""

    def close(self) -> None:
        if not self._closed:
            self._close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def storage_dtype(dtype: str, path: str | Path) -> np.dtype[Any]:
    """The native-byte-order integer or float dtype stored for a source dtype (ValueError
    naming ``path`` otherwise)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"{path}: unknown dtype {dtype!r}") from err
    if dt.kind not in "uif":
        raise ValueError(f"{path}: dtype must be an integer or float type, got {dtype!r}")
    return dt.newbyteorder("=")


# before any writer's thread pool exists (see limit_malloc_arenas)
limit_malloc_arenas()
