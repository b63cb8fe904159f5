"""Parquet volume variant: one row per compressed 3-D chunk, with a checksum per chunk.

Layout (a directory that ``pyarrow.dataset`` / ``pq.read_table`` reads as one dataset)::

    <name>.parquet/
      part-<bz>_<by>_<bx>.parquet   one file per write block (block-grid index z, y, x);
                                    rows = the block's chunks in C order (z slowest), a few
                                    rows per row group so a random ROI reads only its chunks
      _common_metadata              the schema with the volume metadata, written at publish
                                    (a "_" file: dataset readers skip it)

Columns: ``cz, cy, cx`` (int32 chunk-grid index, z, y, x), ``codec`` (e.g. ``"zstd-3"``),
``data`` (the chunk's voxels, C order (z, y, x), little-endian, chunk-shaped — edge chunks
clipped to the volume — compressed with numcodecs Zstd; Parquet's own compression is off for
this column), ``sha256`` (hex, of the uncompressed chunk bytes) and ``shape`` (the chunk's
(z, y, x) voxel counts). Every part's Arrow schema metadata holds ``b"fib_assets"`` (volume
shape, dtype, voxel size in nm, chunks, codec, block shape, index rule — the same JSON in
every part) and ``b"fib_assets_part"`` (that part's index: the chunk indices of each row
group). Pages carry CRC checksums (``write_page_checksum``), verified on read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fib_assets.core.blockwise import BlockLedger, run_plan
from fib_assets.core.formats.base import (
    CorruptChunkError,
    FormatError,
    VolumeInfo,
    VolumeSource,
    WritePlan,
    WriteResult,
    check_roi,
    ledger_dir,
    plan_fingerprint,
    publish,
    staging_path,
    tree_size,
)
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize

SUFFIX = ".parquet"
FORMAT = "parquet"
DEFAULT_CHUNKS = (64, 64, 64)
BLOCK_FACTOR = 4  # default block (= part file) edge: 4 chunks per axis, 64 chunks per part
METADATA_KEY = b"fib_assets"
PART_KEY = b"fib_assets_part"
COMMON_METADATA = "_common_metadata"
PART_CACHE = 32  # open part files a reader keeps (footer parsed once per part)

SCHEMA = pa.schema(
    [
        pa.field("cz", pa.int32(), nullable=False),
        pa.field("cy", pa.int32(), nullable=False),
        pa.field("cx", pa.int32(), nullable=False),
        pa.field("codec", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int32(), 3), nullable=False),
    ]
)
# column (leaf path) -> Parquet compression: chunk bytes are already zstd-compressed
_COLUMN_COMPRESSION = {
    "cz": "zstd",
    "cy": "zstd",
    "cx": "zstd",
    "codec": "zstd",
    "data": "none",
    "sha256": "zstd",
    "shape.list.element": "zstd",
}


def _positive_triple(name: str, value: Sequence[int]) -> tuple[int, int, int]:
    v = tuple(int(x) for x in value)
    if len(v) != 3 or any(x <= 0 for x in v):
        raise ValueError(f"{name} must be 3 positive voxel counts (z, y, x), got {list(value)!r}")
    return (v[0], v[1], v[2])


def part_name(block_index: Sequence[int]) -> str:
    """File name of the part holding block ``block_index`` (block grid, z, y, x)."""
    return "part-{}_{}_{}.parquet".format(*block_index)


def plan_write(
    path: str | Path,
    source: VolumeInfo,
    *,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    chunks_per_row_group: int = 1,
    compression_level: int = 3,
) -> WritePlan:
    """Describe a Parquet variant of ``source`` at ``path`` (a directory ending ``.parquet``).

    Sizes are voxels (z, y, x). ``chunks`` (default: the source's, else 64³; clipped to the
    shape) is what one row holds. ``block_shape`` (default 4 chunks per axis) is one part file
    and the unit of work and resumption; it must be whole chunks per axis (or cover the axis).
    ``chunks_per_row_group`` (default 1) keeps row groups small so a random ROI reads only the
    row groups of its chunks. Chunks are compressed with Zstd at ``compression_level``.
    Pure: touches no file.
    """
    if not str(path).rstrip("/").endswith(SUFFIX):
        raise ValueError(f"{path}: a Parquet variant path must end in {SUFFIX!r}")
    shape = _positive_triple("source shape", source.shape)
    want = _positive_triple("chunks", chunks or source.chunks or DEFAULT_CHUNKS)
    c = (min(want[0], shape[0]), min(want[1], shape[1]), min(want[2], shape[2]))
    if block_shape is None:
        block = (BLOCK_FACTOR * c[0], BLOCK_FACTOR * c[1], BLOCK_FACTOR * c[2])
    else:
        block = _positive_triple("block_shape", block_shape)
    if not all(b >= s or b % ch == 0 for b, ch, s in zip(block, c, shape, strict=True)):
        raise ValueError(
            f"block_shape {list(block)} must be a whole number of chunks {list(c)} per axis "
            "(or cover the axis): a chunk is one row of exactly one part file"
        )
    if not isinstance(chunks_per_row_group, int) or chunks_per_row_group < 1:
        raise ValueError(f"chunks_per_row_group must be >= 1, got {chunks_per_row_group!r}")
    if not isinstance(compression_level, int) or not -7 <= compression_level <= 22:
        raise ValueError(f"zstd compression_level must be in -7..22, got {compression_level!r}")
    if np.dtype(source.dtype).kind not in "uif":
        raise ValueError(f"{path}: unsupported dtype {source.dtype!r} (integers and floats only)")
    return WritePlan(
        format=FORMAT,
        path=str(path),
        source=source,
        chunks=c,
        block_shape=block,
        options={
            "codec": f"zstd-{compression_level}",
            "chunks_per_row_group": chunks_per_row_group,
        },
    )


def _volume_metadata(plan: WritePlan) -> dict[str, Any]:
    grid = BlockPlan(plan.source.shape, plan.block_shape).grid_shape
    return {
        "format_version": 1,
        "axes": ["z", "y", "x"],
        "shape": list(plan.source.shape),
        "dtype": np.dtype(plan.source.dtype).name,
        "byte_order": "little",
        "voxel_size_nm": plan.source.voxel_size.to_dict(),
        "chunks": list(plan.chunks),
        "codec": plan.options["codec"],
        "block_shape": list(plan.block_shape),
        "block_grid": list(grid),
        "chunks_per_row_group": plan.options["chunks_per_row_group"],
        "index": (
            "chunk (cz, cy, cx) lives in part-{bz}_{by}_{bx}.parquet with b = c * chunks // "
            "block_shape; that part's b'fib_assets_part' metadata lists the chunks of each "
            "row group"
        ),
    }


def _le_dtype(dtype: str) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("<")


def _codec(name: str) -> numcodecs.Zstd:
    kind, _, level = name.partition("-")
    if kind != "zstd" or not level.lstrip("-").isdigit():
        raise FormatError(f"unsupported chunk codec {name!r} (expected 'zstd-<level>')")
    return numcodecs.Zstd(level=int(level))


def _chunk_indices(roi: Roi, chunks: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Chunk-grid indices (z, y, x) of the chunks ``roi`` touches, in C order."""
    ranges = [
        range(o // c, -(-e // c)) for o, e, c in zip(roi.offset, roi.end, chunks, strict=True)
    ]
    for idx in itertools.product(*ranges):
        yield (idx[0], idx[1], idx[2])


def _chunk_roi(chunk: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> Roi:
    """The voxels of chunk ``chunk``, clipped to the volume."""
    off = [i * c for i, c in zip(chunk, chunks, strict=True)]
    size = [min(c, s - o) for c, s, o in zip(chunks, shape, off, strict=True)]
    return Roi((off[0], off[1], off[2]), (size[0], size[1], size[2]))


def _encode(raw: np.ndarray, codec: numcodecs.Zstd) -> tuple[bytes, str]:
    return bytes(codec.encode(raw)), hashlib.sha256(raw.data).hexdigest()


def _write_part(
    target: Path,
    block: Block,
    data: np.ndarray,
    plan: WritePlan,
    volume_json: bytes,
    pool: Executor,
) -> None:
    """Encode the chunks of one block (in parallel: zstd and sha256 release the GIL) and
    write them as one part file, fsynced and renamed into place."""
    chunks, k = plan.chunks, int(plan.options["chunks_per_row_group"])
    codec_name = str(plan.options["codec"])
    codec = _codec(codec_name)
    le = _le_dtype(plan.source.dtype)
    indices = list(_chunk_indices(block.write_roi, chunks))
    pieces = []
    for idx in indices:
        box = _chunk_roi(idx, chunks, plan.source.shape)
        local = tuple(
            slice(o - bo, o - bo + s)
            for o, bo, s in zip(box.offset, block.write_roi.offset, box.shape, strict=True)
        )
        pieces.append(np.ascontiguousarray(data[local], dtype=le))
    encoded = list(pool.map(lambda raw: _encode(raw, codec), pieces))
    part_meta = {
        "block_id": block.block_id,
        "block_index": list(block.index),
        "row_groups": [
            [list(i) for i in indices[start : start + k]] for start in range(0, len(indices), k)
        ],
    }
    table = pa.Table.from_arrays(
        [
            pa.array([i[0] for i in indices], pa.int32()),
            pa.array([i[1] for i in indices], pa.int32()),
            pa.array([i[2] for i in indices], pa.int32()),
            pa.array([codec_name] * len(indices), pa.string()),
            pa.array([e[0] for e in encoded], pa.binary()),
            pa.array([e[1] for e in encoded], pa.string()),
            pa.array([list(p.shape) for p in pieces], pa.list_(pa.int32(), 3)),
        ],
        schema=SCHEMA.with_metadata(
            {METADATA_KEY: volume_json, PART_KEY: json.dumps(part_meta).encode()}
        ),
    )
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(
        table,
        tmp,
        row_group_size=k,
        compression=_COLUMN_COMPRESSION,
        use_dictionary=["codec"],
        write_statistics=["cz", "cy", "cx"],
        write_page_checksum=True,
    )
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _check_source(plan: WritePlan, source: VolumeSource) -> None:
    info = source.info
    if tuple(info.shape) != tuple(plan.source.shape) or info.dtype != plan.source.dtype:
        raise ValueError(
            f"{plan.path}: the plan is for a {plan.source.dtype} {list(plan.source.shape)} "
            f"volume, the source is {info.dtype} {list(info.shape)}"
        )


def _library_versions() -> dict[str, str]:
    out = {}
    for package in ("pyarrow", "numcodecs", "numpy"):
        with suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def write_volume(plan: WritePlan, source: VolumeSource, *, progress: bool = False) -> WriteResult:
    """Write ``source`` (z, y, x) as planned: one part file per block, then publish.

    Peak memory is about two blocks (the source block and its encoded chunks). A block is
    marked done (``ledger_dir(plan)``) only after its part file was read back through the
    reader's decode path (page CRCs, sha256 per chunk) and equals the source, so a rerun of
    the same plan resumes in the same staging directory. ``block_checksums``: sha256 of each
    block's C-order bytes, keyed by block id.
    """
    t0 = time.perf_counter()
    _check_source(plan, source)
    final, staging = Path(plan.path), staging_path(plan)
    ledger = BlockLedger(ledger_dir(plan), plan_fingerprint(plan))
    if not staging.exists():
        # markers without their staging directory (removed by hand) describe nothing on disk
        shutil.rmtree(ledger.directory, ignore_errors=True)
        staging.mkdir(parents=True)
    volume_json = json.dumps(_volume_metadata(plan), sort_keys=True).encode()
    dtype = np.dtype(plan.source.dtype)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:

        def write_block(block: Block) -> dict[str, Any]:
            roi = block.write_roi
            data = np.ascontiguousarray(source.read(roi))
            if data.shape != roi.shape or data.dtype != dtype:
                raise ValueError(
                    f"source returned {data.dtype} {list(data.shape)} for ROI {roi.to_dict()}, "
                    f"expected {dtype} {list(roi.shape)}"
                )
            target = staging / part_name(block.index)
            _write_part(target, block, data, plan, volume_json, pool)
            part = _Part(target, pool)
            try:
                back = part.read_chunks(roi, plan.chunks, plan.source.shape, dtype)
            finally:
                part.close()
            if not np.array_equal(back, data):
                first = tuple(o // c for o, c in zip(roi.offset, plan.chunks, strict=True))
                raise CorruptChunkError(str(target), first, "part read back after writing differs")
            return {"sha256": hashlib.sha256(data.data).hexdigest()}

        results = run_plan(
            BlockPlan(plan.source.shape, plan.block_shape),
            write_block,
            ledger,
            progress=progress,
            desc=final.name,
        )

    schema = SCHEMA.with_metadata({METADATA_KEY: volume_json})
    pq.write_metadata(schema, staging / COMMON_METADATA)
    publish(staging, final)
    shutil.rmtree(ledger.directory, ignore_errors=True)
    with suppress(OSError):
        ledger_dir(plan).rmdir()
    nbytes, nfiles = tree_size(final)
    return WriteResult(
        path=str(final),
        plan=plan,
        bytes_on_disk=nbytes,
        file_count=nfiles,
        seconds=time.perf_counter() - t0,
        block_checksums={bid: str(info["sha256"]) for bid, info in results.items()},
        library_versions=_library_versions(),
    )


class _Part:
    """One opened part file: its row-group index and chunk decoding with verification."""

    def __init__(self, path: Path, pool: Executor | None = None) -> None:
        self.path = path
        self._pool = pool
        self._file: pq.ParquetFile | None = None
        self._row_group_of: dict[tuple[int, int, int], int] = {}

    def _open(self, chunk: tuple[int, int, int]) -> pq.ParquetFile:
        if self._file is not None:
            return self._file
        if not self.path.is_file():
            raise CorruptChunkError(str(self.path), chunk, "part file is missing")
        try:
            pf = pq.ParquetFile(str(self.path), page_checksum_verification=True)
            meta = json.loads((pf.schema_arrow.metadata or {})[PART_KEY])
        except (OSError, ValueError, KeyError, pa.ArrowException) as err:
            raise CorruptChunkError(str(self.path), chunk, f"unreadable part file: {err}") from err
        for rg, members in enumerate(meta["row_groups"]):
            for c in members:
                self._row_group_of[(int(c[0]), int(c[1]), int(c[2]))] = rg
        self._file = pf
        return pf

    def row_group(self, chunk: tuple[int, int, int]) -> int:
        self._open(chunk)
        if chunk not in self._row_group_of:
            raise CorruptChunkError(str(self.path), chunk, "chunk is not in the part's index")
        return self._row_group_of[chunk]

    def _rows(
        self, rg: int, wanted: Sequence[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int], dict[str, Any]]:
        """The rows of chunks ``wanted`` from row group ``rg`` (one ``read_row_group`` call)."""
        pf = self._open(wanted[0])
        try:
            rows = pf.read_row_group(rg).to_pylist()
        except (OSError, ValueError, pa.ArrowException) as err:
            raise CorruptChunkError(str(self.path), wanted[0], f"row group {rg}: {err}") from err
        at = {(int(r["cz"]), int(r["cy"]), int(r["cx"])): r for r in rows}
        for chunk in wanted:
            if chunk not in at:
                raise CorruptChunkError(str(self.path), chunk, f"no row in row group {rg}")
        return {chunk: at[chunk] for chunk in wanted}

    def _decode(
        self,
        chunk: tuple[int, int, int],
        row: dict[str, Any],
        chunks: Sequence[int],
        shape: Sequence[int],
        dtype: np.dtype[Any],
    ) -> np.ndarray:
        """One row's chunk as an array (z, y, x), verified (shape, size, sha256)."""
        expected = _chunk_roi(chunk, chunks, shape).shape
        if tuple(row["shape"]) != expected:
            raise CorruptChunkError(str(self.path), chunk, f"shape {row['shape']} != {expected}")
        try:
            raw = bytes(_codec(row["codec"]).decode(row["data"]))
        except (RuntimeError, ValueError) as err:
            raise CorruptChunkError(str(self.path), chunk, f"cannot decode: {err}") from err
        le = _le_dtype(dtype.name)
        if len(raw) != math.prod(expected) * le.itemsize:
            raise CorruptChunkError(
                str(self.path), chunk, f"decoded {len(raw)} bytes, expected shape {expected}"
            )
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            raise CorruptChunkError(str(self.path), chunk, "sha256 mismatch")
        return np.frombuffer(raw, dtype=le).reshape(expected).astype(dtype, copy=False)

    def read_chunks(
        self, roi: Roi, chunks: Sequence[int], shape: Sequence[int], dtype: np.dtype[Any]
    ) -> np.ndarray:
        """Voxels ``roi`` (z, y, x), which must lie inside this part: reads only the row
        groups of its chunks, then decodes the chunks (in parallel when given a pool)."""
        by_group: dict[int, list[tuple[int, int, int]]] = {}
        for chunk in _chunk_indices(roi, chunks):
            by_group.setdefault(self.row_group(chunk), []).append(chunk)
        rows: dict[tuple[int, int, int], dict[str, Any]] = {}
        for rg in sorted(by_group):
            rows.update(self._rows(rg, by_group[rg]))

        def decode(chunk: tuple[int, int, int]) -> np.ndarray:
            return self._decode(chunk, rows[chunk], chunks, shape, dtype)

        wanted = list(rows)
        if self._pool is not None and len(wanted) > 1:
            decoded = list(self._pool.map(decode, wanted))
        else:
            decoded = [decode(c) for c in wanted]
        out = np.empty(roi.shape, dtype=dtype)
        for chunk, arr in zip(wanted, decoded, strict=True):
            box = _chunk_roi(chunk, chunks, shape).intersect(roi)
            src = tuple(
                slice(b - c * n, b - c * n + s)
                for b, c, n, s in zip(box.offset, chunk, chunks, box.shape, strict=True)
            )
            dst = tuple(
                slice(b - r, b - r + s)
                for b, r, s in zip(box.offset, roi.offset, box.shape, strict=True)
            )
            out[dst] = arr[src]
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ParquetVolume:
    """A Parquet chunk dataset opened for ROI reads (pyarrow; decoding with numcodecs).

    ``read`` opens only the part files of the ROI's chunks and reads only the row groups
    that hold them (``ParquetFile.read_row_group``); chunks of a row group are decoded in
    parallel threads (zstd and sha256 release the GIL). Every chunk is verified (page CRC,
    shape, size, sha256) and a failure is a :class:`CorruptChunkError` naming the part file.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._root = Path(path)
        if not self._root.exists():
            raise FileNotFoundError(f"{self._path}: no such Parquet volume")
        common = self._root / COMMON_METADATA
        if not common.is_file():
            raise FormatError(
                f"{self._path}: no {COMMON_METADATA} (not a complete fib_assets Parquet volume)"
            )
        try:
            meta = json.loads((pq.read_schema(common).metadata or {})[METADATA_KEY])
        except (OSError, ValueError, KeyError, pa.ArrowException) as err:
            raise FormatError(f"{self._path}: unreadable volume metadata: {err}") from err
        shape = _positive_triple("shape", meta["shape"])
        self._chunks = _positive_triple("chunks", meta["chunks"])
        self._block_shape = _positive_triple("block_shape", meta["block_shape"])
        self._dtype = np.dtype(meta["dtype"])
        self._info = VolumeInfo(
            shape, self._dtype.name, VoxelSize.from_dict(meta["voxel_size_nm"]), self._chunks
        )
        self._parts: OrderedDict[tuple[int, int, int], _Part] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None  # chunk decoding, made on first use
        self._closed = False

    @property
    def info(self) -> VolumeInfo:
        return self._info

    @property
    def path(self) -> str:
        return self._path

    def _part(self, block: tuple[int, int, int]) -> _Part:
        part = self._parts.pop(block, None)
        if part is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
            part = _Part(self._root / part_name(block), self._pool)
            if len(self._parts) >= PART_CACHE:
                self._parts.popitem(last=False)[1].close()
        self._parts[block] = part
        return part

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of ``roi`` (z, y, x), decoding only the chunks it touches."""
        if self._closed:
            raise ValueError(f"{self._path}: volume is closed")
        check_roi(self._path, self._info.shape, roi)
        out = np.empty(roi.shape, dtype=self._dtype)
        if roi.size == 0:
            return out
        by_block: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
        for chunk in _chunk_indices(roi, self._chunks):
            b = [i * c // s for i, c, s in zip(chunk, self._chunks, self._block_shape, strict=True)]
            by_block.setdefault((b[0], b[1], b[2]), []).append(chunk)
        for block in by_block:
            lo = [
                max(o, i * s) for o, i, s in zip(roi.offset, block, self._block_shape, strict=True)
            ]
            hi = [
                min(e, (i + 1) * s)
                for e, i, s in zip(roi.end, block, self._block_shape, strict=True)
            ]
            sub = Roi((lo[0], lo[1], lo[2]), (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]))
            data = self._part(block).read_chunks(sub, self._chunks, self._info.shape, self._dtype)
            out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, roi.offset, strict=True))] = (
                data
            )
        return out

    def close(self) -> None:
        for part in self._parts.values():
            part.close()
        self._parts.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._closed = True

    def __enter__(self) -> ParquetVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_volume(path: str | Path) -> ParquetVolume:
    """Open a Parquet chunk dataset (see :class:`ParquetVolume`)."""
    return ParquetVolume(path)
