"""HDF5 volumes: one file holding one chunked, compressed (z, y, x) dataset ``/volume``.

Layout of a file written here::

    <name>.h5
      /volume              dataset (z, y, x) in voxels, chunked (plan.chunks), compressed:
                           zstd (hdf5plugin, default level 3), gzip (level 1) or none;
                           fletcher32 chunk checksums unless ``checksum=False``
        voxel_size_nm      float64[3], (z, y, x), nanometres
        axes               "zyx"
        element_size_um    float32[3], (z, y, x), micrometres (what Fiji's HDF5 plugin and
                           ilastik read)
        fib_assets         JSON: shape, dtype, voxel size, the write plan and its fingerprint

Writing is blockwise (one hyperslab per block, peak memory one block), resumable and atomic:
the file is built at :func:`base.staging_path`; after each block HDF5's caches are flushed to
the OS (so a killed process never leaves a done marker ahead of its data) and the block's
marker is written; a rerun reopens the staging file ``r+``, re-reads the done blocks and
checks them against their markers' block checksums (HDF5 files of a killed writer are not trusted
blindly; any mismatch starts the file over), then writes the rest and publishes with
:func:`base.publish`. ``fsync=True`` also survives a crashed node (fsync per block and before
publishing) at the cost of waiting for the disk.

Importing this module imports ``hdf5plugin``, which registers the zstd filter before any file
is opened. HDF5's per-chunk lookup (``get_chunk_info_by_coord``) scans the whole chunk index,
so chunk presence is only ever checked with one pass (count or ``chunk_iter``).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np

from fib_assets.core.blockwise import BlockLedger, run_blocks
from fib_assets.core.formats.base import (
    BaseReader,
    CorruptChunkError,
    FormatError,
    VolumeInfo,
    VolumeSource,
    WritePlan,
    WriteResult,
    block_checksum,
    check_source,
    check_verify,
    checksum_matches,
    chunk_indices,
    clear_ledger,
    clip_triple,
    fsync_one,
    ledger_dir,
    marker_checksum,
    plan_fingerprint,
    positive_triple,
    publish,
    read_block,
    staging_path,
    storage_dtype,
    write_result,
)
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize

__all__ = ["SUFFIX", "Hdf5VolumeReader", "open_volume", "plan_write", "write_volume"]

SUFFIX = ".h5"
FORMAT = "hdf5"
DATASET = "volume"
AXES = "zyx"

Compression = Literal["zstd", "gzip"]
Verify = Literal["structure", "data"]

#: compression -> level used when none is given (zstd-3 and gzip-1: see DESIGN.md figures)
DEFAULT_LEVELS: dict[str, int] = {"zstd": 3, "gzip": 1}
#: chunks (z, y, x) in voxels when neither the caller nor the source gives any
DEFAULT_CHUNKS = (64, 64, 64)
#: default blocks are the largest chunk-aligned slabs of at most this many bytes
BLOCK_BUDGET_BYTES = 64 * 2**20

ChunkIndex = tuple[int, int, int]


# --- describe ------------------------------------------------------------------------------


def plan_write(
    path: str | Path,
    source: VolumeInfo,
    *,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    compression: Compression | None = "zstd",
    compression_level: int | None = None,
    checksum: bool = True,
    verify: Verify = "structure",
    fsync: bool = False,
) -> WritePlan:
    """Describe writing ``source`` to the HDF5 file ``path`` (pure: touches no file).

    ``chunks`` (z, y, x voxels; default the source's chunks, else 64³) are clipped to the
    volume shape. ``block_shape`` (z, y, x voxels) is honoured exactly when given (blocks that
    are not chunk-aligned work, but chunks shared by two blocks are written twice); the
    default is the largest chunk-aligned slab of at most 64 MiB. ``compression`` is ``"zstd"``
    (level 3 by default), ``"gzip"`` (level 1) or None. ``checksum`` adds HDF5's fletcher32
    filter so corrupt chunks are detected even when uncompressed. ``verify="structure"``
    trusts HDF5's own error reporting per block and checks the number of stored chunks once
    at the end; ``"data"`` also reads each block back and compares its block checksum (one decode
    per block). ``fsync`` makes every block durable before its marker, and the file before
    it is published.
    """
    shape = source.shape
    dtype = storage_dtype(source.dtype, path)
    if not Path(path).name.endswith(SUFFIX):
        raise ValueError(f"{path}: an HDF5 volume path must end with {SUFFIX!r}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"{path}: volume shape must be positive, got {list(shape)}")
    if compression is not None and compression not in DEFAULT_LEVELS:
        raise ValueError(f"{path}: compression must be 'zstd', 'gzip' or None, got {compression!r}")
    level = None
    if compression is not None:
        level = DEFAULT_LEVELS[compression] if compression_level is None else compression_level
        if compression == "gzip" and not 0 <= level <= 9:
            raise ValueError(f"{path}: gzip level must be 0..9, got {level}")
        if compression == "zstd" and not -131072 <= level <= 22:
            raise ValueError(f"{path}: zstd level must be -131072..22, got {level}")
    check_verify(path, verify)
    requested = chunks if chunks is not None else (source.chunks or DEFAULT_CHUNKS)
    c = clip_triple(positive_triple("chunks", requested, path), shape)
    if block_shape is None:
        b = default_block_shape(shape, c, dtype.itemsize)
    else:
        b = clip_triple(positive_triple("block_shape", block_shape, path), shape)
    return WritePlan(
        format=FORMAT,
        path=str(path),
        source=source,
        chunks=c,
        block_shape=b,
        options={
            "dataset": f"/{DATASET}",
            "compression": compression,
            "compression_level": level,
            "checksum": bool(checksum),
            "verify": verify,
            "fsync": bool(fsync),
        },
    )


def default_block_shape(
    shape: Sequence[int], chunks: Sequence[int], itemsize: int, budget: int = BLOCK_BUDGET_BYTES
) -> tuple[int, int, int]:
    """Largest chunk-aligned block (z, y, x voxels) of at most ``budget`` bytes.

    Full (y, x) slabs of whole chunk rows when one chunk row fits, else rows of chunks, else
    runs of chunks along x; never smaller than one chunk.
    """
    z, y, x = (int(s) for s in shape)
    cz, cy, cx = (int(c) for c in chunks)
    slab = cz * y * x * itemsize
    if slab <= budget:
        return (min(z, cz * (budget // slab)), y, x)
    row = cz * cy * x * itemsize
    if row <= budget:
        return (cz, min(y, cy * (budget // row)), x)
    chunk = cz * cy * cx * itemsize
    return (cz, cy, min(x, cx * max(1, budget // chunk)))


# --- do ------------------------------------------------------------------------------------


def write_volume(plan: WritePlan, source: VolumeSource, *, progress: bool = False) -> WriteResult:
    """Write ``source`` as ``plan`` describes, block by block; resume a failed earlier run.

    Each block is read once from ``source``, written as one hyperslab, verified (see
    ``plan_write``'s ``verify``) and recorded with the :func:`base.block_checksum` of its C-order
    bytes (``"sha256:<hex>"`` for blocks resumed from older markers). The file is
    built at :func:`base.staging_path` and published atomically, so an older variant at
    ``plan.path`` stays readable until the new one is complete.
    """
    started = time.perf_counter()
    if plan.format != FORMAT:
        raise ValueError(f"{plan.path}: not an HDF5 plan (format {plan.format!r})")
    check_source(plan, source)
    final = Path(plan.path)
    staging = staging_path(plan)
    fingerprint = plan_fingerprint(plan)
    ledger = BlockLedger(ledger_dir(plan), fingerprint)
    blocks = list(BlockPlan(plan.source.shape, plan.block_shape).blocks())
    dtype = storage_dtype(plan.source.dtype, plan.path)
    final.parent.mkdir(parents=True, exist_ok=True)

    f = _open_staging(plan, staging, ledger, blocks, fingerprint)
    try:
        dset = f[DATASET]

        def write_block(block: Block) -> dict[str, Any]:
            data = read_block(source, block, dtype, plan.path)
            digest = block_checksum(data)  # XXH3: ~0.03 CPU-s/GiB
            dset[block.write_roi.to_slices()] = data
            f.flush()  # HDF5's caches -> OS: a killed process keeps what is marked done
            if plan.options["fsync"]:
                fsync_one(staging)
            if plan.options["verify"] == "data":
                _read_back(dset, block, digest, str(staging))
            return {"checksum": digest}

        results = run_blocks(
            blocks, write_block, ledger, total=len(blocks), progress=progress, desc=final.name
        )
        expected = math.prod(math.ceil(s / c) for s, c in zip(dset.shape, plan.chunks, strict=True))
        stored = int(dset.id.get_num_chunks())
        if stored != expected:
            raise FormatError(f"{staging}: {stored} chunks stored, expected {expected}")
    finally:
        f.close()
    if plan.options["fsync"]:
        fsync_one(staging)
    publish(staging, final)
    if plan.options["fsync"]:
        fsync_one(final.parent)  # the rename itself
    clear_ledger(plan, ledger.directory)  # (its directory only when no other plan's are left)
    checksums = {bid: marker_checksum(info) for bid, info in results.items()}
    return write_result(plan, final, started, checksums, library_versions())


def library_versions() -> dict[str, str]:
    return {
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "hdf5plugin": hdf5plugin.version,
        "numpy": np.__version__,
    }


def _open_staging(
    plan: WritePlan, staging: Path, ledger: BlockLedger, blocks: list[Block], fingerprint: str
) -> h5py.File:
    """The staging file to write into: the one an earlier run of this plan left, if it can be
    trusted (see :func:`_resumable`), else a new one (and the old markers are dropped)."""
    if ledger.done_ids() and staging.exists():
        try:
            f = h5py.File(staging, "r+")
        except OSError:
            pass
        else:
            try:
                if _resumable(f, plan, ledger, blocks, fingerprint):
                    return f
            except (OSError, KeyError, ValueError):
                pass
            f.close()
    shutil.rmtree(ledger.directory, ignore_errors=True)
    staging.unlink(missing_ok=True)
    return _create(plan, staging, fingerprint)


def _resumable(
    f: h5py.File, plan: WritePlan, ledger: BlockLedger, blocks: list[Block], fingerprint: str
) -> bool:
    """Whether every block marked done still reads back with its marker's block checksum
    (in the algorithm the marker names: older markers recorded sha256).

    Costs one decode of the done part, only on resume. It catches what a marker cannot: HDF5
    metadata of a killed writer, or data a crashed node never wrote to disk.
    """
    dset = f[DATASET]
    meta = json.loads(dset.attrs["fib_assets"])
    if meta.get("plan_fingerprint") != fingerprint or tuple(dset.chunks) != plan.chunks:
        return False
    done = ledger.done_ids()
    stored = _stored_chunks(dset, plan.chunks)
    for block in blocks:
        if block.block_id not in done:
            continue
        if not stored.issuperset(chunk_indices(block.write_roi, plan.chunks)):
            return False
        recorded = marker_checksum(ledger.info(block.block_id))
        if not checksum_matches(dset[block.write_roi.to_slices()], recorded):
            return False
    return True


def _create(plan: WritePlan, staging: Path, fingerprint: str) -> h5py.File:
    info = plan.source
    dtype = storage_dtype(info.dtype, plan.path)
    vs = info.voxel_size
    f = h5py.File(staging, "w")
    try:
        dset = f.create_dataset(
            DATASET,
            shape=info.shape,
            dtype=dtype,
            chunks=plan.chunks,
            fletcher32=bool(plan.options["checksum"]),
            **_compression_kwargs(plan),
        )
        dset.attrs["voxel_size_nm"] = np.array(vs.as_tuple(), dtype=np.float64)
        dset.attrs["axes"] = AXES
        dset.attrs["element_size_um"] = np.array([v / 1000 for v in vs.as_tuple()], np.float32)
        dset.attrs["fib_assets"] = json.dumps(
            {
                "format": FORMAT,
                "shape": list(info.shape),
                "dtype": dtype.name,
                "axes": AXES,
                "voxel_size_nm": vs.to_dict(),
                "plan": plan.to_dict(),
                "plan_fingerprint": fingerprint,
            },
            sort_keys=True,
        )
    except BaseException:
        f.close()
        raise
    return f


def _compression_kwargs(plan: WritePlan) -> dict[str, Any]:
    compression = plan.options["compression"]
    level = plan.options["compression_level"]
    if compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=int(level)))
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": int(level)}
    return {}


def _read_back(dset: h5py.Dataset, block: Block, digest: str, where: str) -> None:
    """``verify="data"``: the block reads back with the checksum it was written with."""
    if not checksum_matches(dset[block.write_roi.to_slices()], digest):
        raise FormatError(f"{where}: block {block.block_id} reads back different voxels")


# --- read ----------------------------------------------------------------------------------


class Hdf5VolumeReader(BaseReader):
    """An opened HDF5 volume; ``read(roi)`` reads only the ROI's hyperslab, (z, y, x)."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such HDF5 volume")
        self._path = str(p)
        try:
            self._file = h5py.File(p, "r")
        except OSError as err:
            raise FormatError(f"{p}: not a readable HDF5 file: {err}") from err
        try:
            dset = self._file.get(DATASET)
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 3:
                raise FormatError(f"{p}: no 3-D dataset /{DATASET}")
            shape = (int(dset.shape[0]), int(dset.shape[1]), int(dset.shape[2]))
            self._dset = dset
            self._chunks: tuple[int, int, int] | None = (
                None if dset.chunks is None else positive_triple("chunks", dset.chunks, p)
            )
            self._info = VolumeInfo(
                shape, np.dtype(dset.dtype).name, _voxel_size(dset, self._path), self._chunks
            )
            self._complete: bool | None = None
            self._stored: set[ChunkIndex] = set()
        except BaseException:
            self._file.close()
            raise

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of ``roi`` (z, y, x); CorruptChunkError for a missing or undecodable chunk."""
        self._check_open(roi)
        if roi.size == 0:
            return np.empty(roi.shape, dtype=self._info.dtype)
        if self._chunks is not None:
            stored = self._stored_chunks()
            if stored is not None:
                for index in chunk_indices(roi, self._chunks):
                    if index not in stored:
                        raise CorruptChunkError(self._path, index, "chunk is not stored")
        try:
            out: np.ndarray = self._dset[roi.to_slices()]
        except OSError as err:
            raise self._locate(roi, err) from err
        return out

    def _stored_chunks(self) -> set[ChunkIndex] | None:
        """None when every chunk is stored (one count of HDF5's chunk index, on first read),
        else the stored chunks' indices: h5py returns fill values for missing chunks."""
        if self._complete is None:
            assert self._chunks is not None
            expected = math.prod(
                math.ceil(s / c) for s, c in zip(self._info.shape, self._chunks, strict=True)
            )
            self._complete = int(self._dset.id.get_num_chunks()) == expected
            if not self._complete:
                self._stored = _stored_chunks(self._dset, self._chunks)
        return None if self._complete else self._stored

    def _locate(self, roi: Roi, err: OSError) -> FormatError:
        """Find the chunk that fails to decode (only on the error path: decodes chunk by chunk)."""
        if self._chunks is None:
            return FormatError(f"{self._path}: reading {roi.to_dict()} failed: {err}")
        for index in chunk_indices(roi, self._chunks):
            cell = Roi(
                tuple(i * c for i, c in zip(index, self._chunks, strict=True)),  # type: ignore[arg-type]
                self._chunks,
            ).intersect(roi)
            try:
                self._dset[cell.to_slices()]
            except OSError as chunk_err:
                return CorruptChunkError(self._path, index, f"chunk fails to decode: {chunk_err}")
        first = next(chunk_indices(roi, self._chunks))
        return CorruptChunkError(self._path, first, f"reading {roi.to_dict()} failed: {err}")

    def _close(self) -> None:
        self._file.close()


def open_volume(path: str | Path) -> Hdf5VolumeReader:
    """Open an HDF5 volume lazily (FileNotFoundError naming ``path`` when it is missing)."""
    return Hdf5VolumeReader(path)


def _voxel_size(dset: h5py.Dataset, path: str) -> VoxelSize:
    """Voxel size (nm) from our JSON, else ``voxel_size_nm``, else ``element_size_um``."""
    attrs = dset.attrs
    if "fib_assets" in attrs:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return VoxelSize.from_dict(json.loads(attrs["fib_assets"])["voxel_size_nm"])
    if "voxel_size_nm" in attrs:
        z, y, x = (float(v) for v in attrs["voxel_size_nm"])
        return VoxelSize(z, y, x)
    if "element_size_um" in attrs:
        z, y, x = (float(v) * 1000 for v in attrs["element_size_um"])
        return VoxelSize(z, y, x)
    raise FormatError(f"{path}: /{DATASET} has no voxel size (voxel_size_nm / element_size_um)")


# --- helpers -------------------------------------------------------------------------------


def _stored_chunks(dset: h5py.Dataset, chunks: Sequence[int]) -> set[ChunkIndex]:
    """Indices (z, y, x) of the chunks stored in the file, from one pass over HDF5's index.

    (Per-chunk ``get_chunk_info_by_coord`` scans the whole index: milliseconds per call on
    big volumes, so it is never called in a loop.)
    """
    stored: set[ChunkIndex] = set()

    def add(info: Any) -> None:
        if info.byte_offset is not None and info.size > 0:
            o = info.chunk_offset
            stored.add((o[0] // chunks[0], o[1] // chunks[1], o[2] // chunks[2]))

    dset.id.chunk_iter(add)
    return stored
