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

import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fib_assets.core.blockwise import BlockLedger, run_plan
from fib_assets.core.formats.base import (
    BaseReader,
    CorruptChunkError,
    FormatError,
    Verify,
    VolumeInfo,
    VolumeSource,
    WritePlan,
    WriteResult,
    block_checksum,
    bound_allocator_retention,
    check_level,
    check_source,
    check_suffix,
    check_verify,
    chunk_indices,
    chunk_roi,
    clear_ledger,
    clip_triple,
    cores,
    fsync_one,
    ledger_dir,
    library_versions,
    marker_checksum,
    paste,
    plan_fingerprint,
    positive_triple,
    publish,
    read_block,
    sha256_array,
    staging_path,
    tiles,
    write_result,
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
    verify: Verify = "structure",
) -> WritePlan:
    """Describe a Parquet variant of ``source`` at ``path`` (a directory ending ``.parquet``).

    Sizes are voxels (z, y, x). ``chunks`` (default: the source's, else 64³; clipped to the
    shape) is what one row holds. ``block_shape`` (default 4 chunks per axis) is one part file
    and the unit of work and resumption; it must be whole chunks per axis (or cover the axis).
    ``chunks_per_row_group`` (default 1) keeps row groups small so a random ROI reads only the
    row groups of its chunks. Chunks are compressed with Zstd at ``compression_level``.
    ``verify="structure"`` (default) checks each written part's footer (row groups, rows and
    their chunk indices, column sizes) without decoding; ``"data"`` also decodes every chunk
    (page CRCs, sha256) and compares it with the source. Pure: touches no file.
    """
    check_suffix(path, SUFFIX, "a Parquet variant")
    shape = positive_triple("source shape", source.shape)
    want = positive_triple("chunks", chunks or source.chunks or DEFAULT_CHUNKS)
    c = clip_triple(want, shape)
    if block_shape is None:
        block = (BLOCK_FACTOR * c[0], BLOCK_FACTOR * c[1], BLOCK_FACTOR * c[2])
    else:
        block = positive_triple("block_shape", block_shape)
    if not tiles(block, c, shape):
        raise ValueError(
            f"block_shape {list(block)} must be a whole number of chunks {list(c)} per axis "
            "(or cover the axis): a chunk is one row of exactly one part file"
        )
    if not isinstance(chunks_per_row_group, int) or chunks_per_row_group < 1:
        raise ValueError(f"chunks_per_row_group must be >= 1, got {chunks_per_row_group!r}")
    check_level("zstd", compression_level, -7, 22)
    check_verify(path, verify)
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
            "verify": verify,
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


def _row_groups(indices: Sequence[tuple[int, int, int]], k: int) -> list[list[list[int]]]:
    """The chunk indices of each row group of a part (``k`` chunks per row group, C order)."""
    return [[list(i) for i in indices[start : start + k]] for start in range(0, len(indices), k)]


def _write_part(
    target: Path,
    block: Block,
    data: np.ndarray,
    plan: WritePlan,
    volume_json: bytes,
    pool: Executor,
) -> list[tuple[int, int, int]]:
    """Write the chunks of one block as one part file, fsynced and renamed into place.

    One pool task per chunk copies it out of ``data`` (little-endian), hashes and compresses
    it (zstd and sha256 release the GIL); each row group is written as soon as its chunks
    are encoded, so besides ``data`` only a few encoded chunks are alive."""
    chunks, k = plan.chunks, int(plan.options["chunks_per_row_group"])
    codec_name = str(plan.options["codec"])
    codec = _codec(codec_name)
    le = _le_dtype(plan.source.dtype)
    roi = block.write_roi
    indices = list(chunk_indices(roi, chunks))
    part_meta = {
        "block_id": block.block_id,
        "block_index": list(block.index),
        "row_groups": _row_groups(indices, k),
    }
    schema = SCHEMA.with_metadata(
        {METADATA_KEY: volume_json, PART_KEY: json.dumps(part_meta).encode()}
    )

    def encode(idx: tuple[int, int, int]) -> tuple[bytes, str, tuple[int, ...]]:
        box = chunk_roi(idx, chunks, plan.source.shape)
        local = tuple(
            slice(o - bo, o - bo + s)
            for o, bo, s in zip(box.offset, roi.offset, box.shape, strict=True)
        )
        raw = np.ascontiguousarray(data[local], dtype=le)
        return bytes(codec.encode(raw)), sha256_array(raw), raw.shape

    tmp = target.with_name(f".{target.name}.tmp")
    with pq.ParquetWriter(
        tmp,
        schema,
        compression=_COLUMN_COMPRESSION,
        use_dictionary=["codec"],
        write_statistics=["cz", "cy", "cx"],
        write_page_checksum=True,
    ) as writer:
        encoded = pool.map(encode, indices)
        for start in range(0, len(indices), k):
            group = indices[start : start + k]
            rows = [next(encoded) for _ in group]
            writer.write_table(
                pa.Table.from_arrays(
                    [
                        pa.array([i[0] for i in group], pa.int32()),
                        pa.array([i[1] for i in group], pa.int32()),
                        pa.array([i[2] for i in group], pa.int32()),
                        pa.array([codec_name] * len(group), pa.string()),
                        pa.array([r[0] for r in rows], pa.binary()),
                        pa.array([r[1] for r in rows], pa.string()),
                        pa.array([list(r[2]) for r in rows], pa.list_(pa.int32(), 3)),
                    ],
                    schema=schema,
                ),
                row_group_size=k,
            )
            del rows
    fsync_one(tmp)
    os.replace(tmp, target)
    return indices


def check_part(path: Path, indices: Sequence[tuple[int, int, int]], k: int) -> None:
    """Structural check of a written part without decoding a chunk: its footer parses, has
    one row group per ``k`` chunks with the right row count, the index metadata lists them,
    every row group's chunk-index statistics match, and no ``data`` column chunk is empty.
    :class:`CorruptChunkError` names the part and the first chunk of the failing row group."""
    groups = _row_groups(indices, k)
    first = indices[0]
    try:
        pf = pq.ParquetFile(str(path))
        meta = pf.metadata
        part = json.loads((pf.schema_arrow.metadata or {})[PART_KEY])
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        raise CorruptChunkError(str(path), first, f"unreadable part file: {err}") from err
    try:
        if part["row_groups"] != groups or meta.num_row_groups != len(groups):
            raise CorruptChunkError(
                str(path), first, f"{meta.num_row_groups} row groups, expected {len(groups)}"
            )
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        at = {n: names.index(n) for n in ("cz", "cy", "cx", "data")}
        for rg, members in enumerate(groups):
            group = meta.row_group(rg)
            chunk = (members[0][0], members[0][1], members[0][2])
            if group.num_rows != len(members):
                raise CorruptChunkError(
                    str(path), chunk, f"row group {rg} has {group.num_rows} rows"
                )
            for axis, name in enumerate(("cz", "cy", "cx")):
                stats = group.column(at[name]).statistics
                want = [m[axis] for m in members]
                if stats is None or (stats.min, stats.max) != (min(want), max(want)):
                    raise CorruptChunkError(
                        str(path), chunk, f"row group {rg}: {name} statistics do not match"
                    )
            if group.column(at["data"]).total_compressed_size <= 0:
                raise CorruptChunkError(str(path), chunk, f"row group {rg}: no chunk data")
    finally:
        pf.close()


def _library_versions() -> dict[str, str]:
    return library_versions("pyarrow", "numcodecs", "numpy")


def use_system_memory_pool() -> None:
    """Make pyarrow allocate with the system allocator (process-wide, idempotent).

    pyarrow's default pool (mimalloc or jemalloc) keeps freed pages for reuse: ~100 MiB
    above what a Parquet write really holds were measured at a 64 MiB budget. With the
    system allocator (and :func:`base.bound_allocator_retention`) freed column buffers go
    back to the OS; Arrow buffers here are few and large, so speed is unaffected."""
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def write_volume(plan: WritePlan, source: VolumeSource, *, progress: bool = False) -> WriteResult:
    """Write ``source`` (z, y, x) as planned: one part file per block, then publish.

    Peak memory is about one block (the source block) plus a few chunks per core (being
    copied, encoded, or buffered for their row group). A block is marked done
    (``ledger_dir(plan)``) only after its part file was fsynced and checked (``verify``, see
    :func:`plan_write`), so a rerun of the same plan resumes in the same staging directory.
    ``block_checksums``: :func:`base.block_checksum` of each block's C-order bytes, keyed by
    block id (``"sha256:<hex>"`` for blocks resumed from older markers). The per-chunk
    ``sha256`` column stays sha256 (it is part of the file format readers verify).
    """
    t0 = time.perf_counter()
    check_source(plan, source)
    bound_allocator_retention()
    use_system_memory_pool()
    final, staging = Path(plan.path), staging_path(plan)
    ledger = BlockLedger(ledger_dir(plan), plan_fingerprint(plan))
    if not staging.exists():
        # markers without their staging directory (removed by hand) describe nothing on disk
        shutil.rmtree(ledger.directory, ignore_errors=True)
        staging.mkdir(parents=True)
    volume_json = json.dumps(_volume_metadata(plan), sort_keys=True).encode()
    dtype = np.dtype(plan.source.dtype)
    k = int(plan.options["chunks_per_row_group"])
    verify = str(plan.options.get("verify", "structure"))

    with ThreadPoolExecutor(max_workers=cores()) as pool:

        def write_block(block: Block) -> dict[str, Any]:
            data = read_block(source, block, dtype, plan.path)
            digest = block_checksum(data)  # XXH3: ~0.03 CPU-s/GiB
            target = staging / part_name(block.index)
            indices = _write_part(target, block, data, plan, volume_json, pool)
            check_part(target, indices, k)
            if verify == "data":
                part = _Part(target, pool)
                try:
                    part.compare(block.write_roi, data, plan.chunks, plan.source.shape)
                finally:
                    part.close()
            return {"checksum": digest}

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
    clear_ledger(plan, ledger.directory)
    checksums = {bid: marker_checksum(info) for bid, info in results.items()}
    return write_result(plan, final, t0, checksums, _library_versions())


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
    ) -> dict[tuple[int, int, int], tuple[str, pa.Buffer, str, list[int]]]:
        """(codec, compressed bytes, sha256, shape) of chunks ``wanted`` from row group ``rg``
        (one ``read_row_group`` call; the chunk bytes are not copied out of Arrow)."""
        pf = self._open(wanted[0])
        try:
            table = pf.read_row_group(rg)
        except (OSError, ValueError, pa.ArrowException) as err:
            raise CorruptChunkError(str(self.path), wanted[0], f"row group {rg}: {err}") from err
        cols = {n: table.column(n).combine_chunks() for n in SCHEMA.names}
        at = {
            (int(z), int(y), int(x)): row
            for row, (z, y, x) in enumerate(
                zip(
                    cols["cz"].to_pylist(),
                    cols["cy"].to_pylist(),
                    cols["cx"].to_pylist(),
                    strict=True,
                )
            )
        }
        out = {}
        for chunk in wanted:
            if chunk not in at:
                raise CorruptChunkError(str(self.path), chunk, f"no row in row group {rg}")
            r = at[chunk]
            out[chunk] = (
                str(cols["codec"][r]),
                cols["data"][r].as_buffer(),
                str(cols["sha256"][r]),
                [int(v) for v in cols["shape"][r].as_py()],
            )
        return out

    def _decode(
        self,
        chunk: tuple[int, int, int],
        row: tuple[str, pa.Buffer, str, list[int]],
        chunks: Sequence[int],
        shape: Sequence[int],
        dtype: np.dtype[Any],
    ) -> np.ndarray:
        """One row's chunk as an array (z, y, x), verified (shape, size, sha256)."""
        codec, data, digest, stored = row
        expected = chunk_roi(chunk, chunks, shape).shape
        if tuple(stored) != expected:
            raise CorruptChunkError(str(self.path), chunk, f"shape {stored} != {expected}")
        le = _le_dtype(dtype.name)
        raw = np.empty(expected, dtype=le)
        try:
            got = _codec(codec).decode(data)
        except (RuntimeError, ValueError) as err:
            raise CorruptChunkError(str(self.path), chunk, f"cannot decode: {err}") from err
        if len(got) != raw.nbytes:
            raise CorruptChunkError(
                str(self.path), chunk, f"decoded {len(got)} bytes, expected shape {expected}"
            )
        raw.reshape(-1).view(np.uint8)[:] = np.frombuffer(got, dtype=np.uint8)
        del got
        if sha256_array(raw) != digest:
            raise CorruptChunkError(str(self.path), chunk, "sha256 mismatch")
        return raw.astype(dtype, copy=False)

    def _chunks_of(
        self, roi: Roi, chunks: Sequence[int]
    ) -> dict[tuple[int, int, int], tuple[str, pa.Buffer, str, list[int]]]:
        by_group: dict[int, list[tuple[int, int, int]]] = {}
        for chunk in chunk_indices(roi, chunks):
            by_group.setdefault(self.row_group(chunk), []).append(chunk)
        rows: dict[tuple[int, int, int], tuple[str, pa.Buffer, str, list[int]]] = {}
        for rg in sorted(by_group):
            rows.update(self._rows(rg, by_group[rg]))
        return rows

    def _each(self, fn: Any, items: list[Any]) -> None:
        if self._pool is not None and len(items) > 1:
            for _ in self._pool.map(fn, items):
                pass
        else:
            for item in items:
                fn(item)

    def read_chunks(
        self, roi: Roi, chunks: Sequence[int], shape: Sequence[int], dtype: np.dtype[Any]
    ) -> np.ndarray:
        """Voxels ``roi`` (z, y, x), which must lie inside this part: reads only the row
        groups of its chunks, then decodes each chunk straight into the result (in parallel
        when given a pool)."""
        rows = self._chunks_of(roi, chunks)
        out = np.empty(roi.shape, dtype=dtype)

        def fill(chunk: tuple[int, int, int]) -> None:
            arr = self._decode(chunk, rows[chunk], chunks, shape, dtype)
            paste(out, roi, arr, chunk_roi(chunk, chunks, shape))

        self._each(fill, list(rows))
        return out

    def compare(
        self, roi: Roi, data: np.ndarray, chunks: Sequence[int], shape: Sequence[int]
    ) -> None:
        """``verify="data"``: every chunk of ``roi`` decodes (and verifies) to ``data``,
        one row group at a time (CorruptChunkError naming the first differing chunk)."""
        for chunk in chunk_indices(roi, chunks):
            rows = self._chunks_of(chunk_roi(chunk, chunks, shape), chunks)
            arr = self._decode(chunk, rows[chunk], chunks, shape, data.dtype)
            box = chunk_roi(chunk, chunks, shape)
            local = tuple(
                slice(o - r, o - r + s)
                for o, r, s in zip(box.offset, roi.offset, box.shape, strict=True)
            )
            if not np.array_equal(arr, data[local]):
                raise CorruptChunkError(
                    str(self.path), chunk, "chunk read back after writing differs"
                )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ParquetVolume(BaseReader):
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
        shape = positive_triple("shape", meta["shape"], path)
        self._chunks = positive_triple("chunks", meta["chunks"], path)
        self._block_shape = positive_triple("block_shape", meta["block_shape"], path)
        self._dtype = np.dtype(meta["dtype"])
        self._info = VolumeInfo(
            shape, self._dtype.name, VoxelSize.from_dict(meta["voxel_size_nm"]), self._chunks
        )
        self._parts: OrderedDict[tuple[int, int, int], _Part] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None  # chunk decoding, made on first use

    def _part(self, block: tuple[int, int, int]) -> _Part:
        part = self._parts.pop(block, None)
        if part is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=cores())
            part = _Part(self._root / part_name(block), self._pool)
            if len(self._parts) >= PART_CACHE:
                self._parts.popitem(last=False)[1].close()
        self._parts[block] = part
        return part

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of ``roi`` (z, y, x), decoding only the chunks it touches."""
        self._check_open(roi)
        out = np.empty(roi.shape, dtype=self._dtype)
        if roi.size == 0:
            return out
        by_block: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
        for chunk in chunk_indices(roi, self._chunks):
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

    def _close(self) -> None:
        for part in self._parts.values():
            part.close()
        self._parts.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def open_volume(path: str | Path) -> ParquetVolume:
    """Open a Parquet chunk dataset (see :class:`ParquetVolume`)."""
    return ParquetVolume(path)
