"""OME-Zarr v0.5 (Zarr v3, sharded) multiscale images: the canonical volume format and the
single-image Zarr format variant.

Layout of a canonical container (written by the raw-volume assembler with zarr-python via
:func:`create_multiscale_image`)::

    <name>.ome.zarr/            zarr group; attributes "ome" {"version": "0.5"}, "fib_assets"
      raw/                      multiscale image, axes (c, z, y, x), uint16 detector channels
        s0, s1, ...             arrays, each level downsampled 2x per spatial axis (mean)
      uint8/                    multiscale image, axes (z, y, x), contrast-adjusted uint8

Layout of a format variant (the verbs of :mod:`fib_assets.core.formats.base`: ``plan_write``,
``write_volume``, ``open_volume``; written and read with tensorstore)::

    <name>.ome.zarr/            zarr group = one multiscale image, axes (z, y, x) in nanometer;
                                attributes "ome" (NGFF 0.5 multiscales, voxel size as scale)
                                and "fib_assets" (written_shards per level, set at publish)
      s0/, s1/, ...             Zarr v3 arrays, sharding_indexed (shard = block of the write),
                                inner chunks bytes + zstd (level 3, frame checksum),
                                shard index crc32c; every chunk is stored, even all-zero ones

Spatial units are nanometres; ``scale``/``translation`` follow the NGFF 0.5 spec (pixel
centres move by (f-1)/2 of a voxel at each mean-downsampling level).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c  # zarr's own dependency (its crc32c codec)
import numpy as np
import tensorstore as ts
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from fib_assets.core import storage
from fib_assets.core.blockwise import BlockLedger
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
    blocks_in_flight,
    bound_allocator_retention,
    check_level,
    check_levels,
    check_source,
    check_suffix,
    check_verify,
    checksum_matches,
    chunk_indices,
    clip_triple,
    cores,
    fsync_one,
    ledger_dir,
    library_versions,
    marker_checksum,
    plan_fingerprint,
    positive_triple,
    publish,
    read_block,
    staging_path,
    tiles,
)
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize

NGFF_VERSION = "0.5"


def multiscales_metadata(
    name: str,
    *,
    n_levels: int,
    voxel_size: VoxelSize,
    channel_axis: bool,
    factor: int = 2,
) -> dict[str, Any]:
    """The ``ome`` attribute of one multiscale image group (NGFF 0.5)."""
    axes: list[dict[str, str]] = []
    if channel_axis:
        axes.append({"name": "c", "type": "channel"})
    axes += [{"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")]
    datasets = []
    for level in range(n_levels):
        f = factor**level
        scale = [v * f for v in voxel_size.as_tuple()]
        translation = [v * (f - 1) / 2 for v in voxel_size.as_tuple()]
        if channel_axis:
            scale = [1.0, *scale]
            translation = [0.0, *translation]
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": axes, "datasets": datasets}],
    }


def create_multiscale_image(
    root: zarr.Group,
    name: str,
    *,
    level_shapes: Sequence[tuple[int, int, int]],
    dtype: str,
    chunks: tuple[int, int, int],
    shards: tuple[int, int, int],
    voxel_size: VoxelSize,
    channels: int | None = None,
    compression_level: int = 3,
    attributes: dict[str, Any] | None = None,
) -> list[zarr.Array[Any]]:
    """Create the arrays ``name/s0..sN`` (empty, fill 0) and the group's NGFF metadata.

    ``channels`` adds a leading channel axis (one chunk per channel) when given.
    Shards are clipped to each level's shape so small levels stay one shard.
    """
    group = root.create_group(name, overwrite=True)
    group.attrs.update(
        {
            "ome": multiscales_metadata(
                name, n_levels=len(level_shapes), voxel_size=voxel_size, channel_axis=bool(channels)
            ),
            **(attributes or {}),
        }
    )
    arrays = []
    for level, shape in enumerate(level_shapes):
        c = tuple(min(ch, s) for ch, s in zip(chunks, shape, strict=True))
        # a shard is a whole number of chunks and no larger than the level needs
        sh = tuple(
            max(ch, min(shd, -(-s // ch) * ch) // ch * ch)
            for shd, s, ch in zip(shards, shape, c, strict=True)
        )
        full_shape: tuple[int, ...] = shape
        dims = ["z", "y", "x"]
        if channels:
            full_shape = (channels, *shape)
            c = (1, *c)
            sh = (1, *sh)
            dims = ["c", *dims]
        arrays.append(
            group.create_array(
                name=f"s{level}",
                shape=full_shape,
                chunks=c,
                shards=sh,
                dtype=dtype,
                fill_value=0,
                compressors=[ZstdCodec(level=compression_level)],
                dimension_names=dims,
            )
        )
    return arrays


def downsample_mean(block: np.ndarray, factor: int = 2) -> np.ndarray:
    """Mean-downsample the last three axes (z, y, x) by ``factor``; edges use partial windows.

    Integer inputs are rounded half-to-even back to their dtype.
    """
    spatial = block.shape[-3:]
    pad = [(0, 0)] * (block.ndim - 3) + [(0, (-s) % factor) for s in spatial]
    data = block.astype(np.float64)
    weights = np.ones(spatial, dtype=np.float64)
    if any(p[1] for p in pad):
        data = np.pad(data, pad)
        weights = np.pad(weights, pad[-3:])
    out_shape = [s // factor for s in data.shape[-3:]]
    lead = data.shape[:-3]
    r = data.reshape(*lead, out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
    w = weights.reshape(out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
    sums = r.sum(axis=(-5, -3, -1))
    counts = w.sum(axis=(1, 3, 5))
    mean = sums / counts
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        out: np.ndarray = np.clip(np.rint(mean), info.min, info.max).astype(block.dtype)
        return out
    result: np.ndarray = mean.astype(block.dtype)
    return result


def open_multiscale(path: str | Path, name: str) -> tuple[dict[str, Any], list[zarr.Array[Any]]]:
    """Open image ``name`` of an OME-Zarr container (local path or ``s3://`` URL): its ``ome``
    metadata and levels s0..sN."""
    root = zarr.open_group(storage.zarr_store(path, read_only=True), mode="r")
    group = root[name]
    if not isinstance(group, zarr.Group):
        raise ValueError(f"{path}: {name!r} is not a multiscale image group")
    ome: dict[str, Any] = json.loads(json.dumps(group.attrs.asdict().get("ome", {})))
    if not ome.get("multiscales"):
        raise ValueError(f"{path}/{name}: no OME-NGFF 'multiscales' metadata")
    levels = []
    for ds in ome["multiscales"][0]["datasets"]:
        arr = group[ds["path"]]
        assert isinstance(arr, zarr.Array)
        levels.append(arr)
    return ome, levels


# --- the Zarr format variant: plan_write / write_volume / open_volume -----------------------

SUFFIX = ".ome.zarr"
FORMAT = "zarr"
DEFAULT_CHUNKS = (64, 64, 64)
SHARD_FACTOR = 4  # default shard edge = 4 chunks per axis (64 chunks per shard)
# blocks in flight: tensorstore encodes one shard per thread, so about one block per core is
# being encoded and committed while the next one is read from the source and the oldest one
# is fsynced, checked and marked done (fewer when the plan's memory budget says so)
PIPELINE_DEPTH = cores() + 1
#: resident blocks per block in flight (tensorstore's staged copy + its encoded shard) and
#: besides them (the block being read from the source and checksummed, and one more: the
#: measured peak exceeds the block count by allocator and tensorstore buffers)
IN_FLIGHT_BLOCKS, FIXED_BLOCKS = 1.5, 2.0
FSYNC_THREADS = 8
_NM_PER_UNIT = {"nanometer": 1.0, "micrometer": 1000.0, "angstrom": 0.1}
_NO_CHUNK = 2**64 - 1  # shard index entry of a chunk that is not stored


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _shard_shape(
    want: Sequence[int], shape: Sequence[int], chunks: Sequence[int]
) -> tuple[int, int, int]:
    """``want`` rounded up to whole chunks and clipped to the whole-chunk extent of ``shape``."""
    s = [min(_round_up(w, c), _round_up(n, c)) for w, n, c in zip(want, shape, chunks, strict=True)]
    return (s[0], s[1], s[2])


def level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, int, int]]:
    """Shapes (z, y, x) of pyramid levels s0..s{levels-1}; each is ceil(previous / 2)."""
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    out = [positive_triple("shape", shape)]
    while len(out) < levels:
        out.append((-(-out[-1][0] // 2), -(-out[-1][1] // 2), -(-out[-1][2] // 2)))
    return out


@dataclass(frozen=True)
class _Level:
    """One array of the variant: shapes in voxels (z, y, x) of that level."""

    path: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int]
    block_shape: tuple[int, int, int]

    @property
    def shard_grid(self) -> tuple[int, int, int]:
        g = [-(-n // s) for n, s in zip(self.shape, self.shards, strict=True)]
        return (g[0], g[1], g[2])


def _levels(plan: WritePlan) -> list[_Level]:
    shards = tuple(int(s) for s in plan.options["shards"])
    out = []
    for i, shape in enumerate(level_shapes(plan.source.shape, int(plan.options["levels"]))):
        if i == 0:
            sh = _shard_shape(shards, shape, plan.chunks)
            out.append(_Level("s0", shape, plan.chunks, sh, plan.block_shape))
            continue
        chunks = (
            min(plan.chunks[0], shape[0]),
            min(plan.chunks[1], shape[1]),
            min(plan.chunks[2], shape[2]),
        )
        sh = _shard_shape(shards, shape, chunks)
        out.append(_Level(f"s{i}", shape, chunks, sh, sh))  # one shard per block
    return out


def plan_write(
    path: str | Path,
    source: VolumeInfo,
    *,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    levels: int = 1,
    compression_level: int = 3,
    verify: Verify = "structure",
    memory_budget: int | None = None,
) -> WritePlan:
    """Describe an OME-Zarr variant of ``source`` at ``path`` (must end in ``.ome.zarr``).

    All sizes are voxels (z, y, x). ``chunks`` (default: the source's, else 64³) are the inner
    chunks (the read granularity), clipped to the shape. ``shards`` (default 4 chunks per axis)
    are rounded to whole chunks and clipped to the shape. ``block_shape`` (default: one shard)
    is the unit of work, memory and resumption; it must be a whole number of shards per axis
    so no shard is ever written twice — when only ``block_shape`` is given and the default
    shards do not tile it, the shards become the blocks. ``levels`` > 1 adds mean-downsampled
    (2x per axis) levels s1.. written from the level below.

    ``verify="structure"`` (default) marks a block done once its shards are fsynced and
    every shard's index passes its crc32c and lists every chunk inside the file (no decode:
    each chunk carries a zstd frame checksum that readers check); ``"data"`` also reads the
    block back and compares its block checksum. ``memory_budget`` (bytes) bounds the blocks in
    flight (see :func:`write_volume`). Pure: touches no file.
    """
    check_suffix(path, SUFFIX, "an OME-Zarr variant")
    shape = positive_triple("source shape", source.shape)
    want = positive_triple("chunks", chunks or source.chunks or DEFAULT_CHUNKS)
    c = clip_triple(want, shape)
    block = positive_triple("block_shape", block_shape) if block_shape is not None else None
    if shards is not None:
        given = positive_triple("shards", shards)
        if any(g % w for g, w in zip(given, want, strict=True)):
            raise ValueError(f"shards {list(given)} must be whole numbers of chunks {list(want)}")
        sh = _shard_shape(given, shape, c)
    else:
        sh = _shard_shape([SHARD_FACTOR * x for x in c], shape, c)
        if block is not None and not tiles(block, sh, shape):
            sh = _shard_shape(block, shape, c)
    if block is None:
        block = sh
    if not tiles(block, sh, shape):
        raise ValueError(
            f"block_shape {list(block)} must be a whole number of shards {list(sh)} per axis "
            f"(shards are whole numbers of chunks {list(c)}), so that no shard is written twice"
        )
    check_levels(levels)
    check_level("zstd", compression_level, -7, 22)
    check_verify(path, verify)
    if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget <= 0):
        raise ValueError(
            f"{path}: memory_budget must be a positive byte count, got {memory_budget!r}"
        )
    np.dtype(source.dtype)  # raises TypeError naming an unknown dtype
    return WritePlan(
        format=FORMAT,
        path=str(path),
        source=source,
        chunks=c,
        block_shape=block,
        options={
            "shards": list(sh),
            "levels": levels,
            "codec": "zstd",
            "compression_level": compression_level,
            "zstd_checksum": True,
            "engine": "tensorstore",
            "verify": verify,
            "memory_budget": memory_budget,
        },
    )


def _array_spec(path: str, level: _Level, dtype: str, compression_level: int) -> dict[str, Any]:
    """tensorstore zarr3 spec of one level: sharded, zstd with frame checksums (so a flipped
    byte inside a chunk is an error, not silently different voxels), crc32c shard index.

    tensorstore's own fsync per shard is off: the writer fsyncs each block's shard files in
    I/O threads while it verifies the block, before the block's done marker is written. On an
    object store (``path`` an ``s3://`` URL) a shard is durable once its PUT succeeded."""
    endian = {} if np.dtype(dtype).itemsize == 1 else {"configuration": {"endian": "little"}}
    return {
        "driver": "zarr3",
        "kvstore": storage.tensorstore_kvstore(path),
        "context": {"file_io_sync": False},
        "metadata": {
            "shape": list(level.shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(level.shards)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(level.chunks),
                        "codecs": [
                            {"name": "bytes", **endian},
                            {
                                "name": "zstd",
                                "configuration": {"level": compression_level, "checksum": True},
                            },
                        ],
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                        "index_location": "end",
                    },
                }
            ],
            "dimension_names": ["z", "y", "x"],
        },
        # every chunk is stored (all-zero ones too), so a missing chunk is always an error
        "store_data_equal_to_fill_value": True,
        "fill_missing_data_reads": False,
    }


def _group_json(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def _library_versions() -> dict[str, str]:
    return library_versions("tensorstore", "zarr", "numpy")


def downsample_roi(
    read_previous: Callable[[Roi], np.ndarray],
    previous_shape: Sequence[int],
    roi: Roi,
    *,
    slab: int,
    factor: int = 2,
) -> np.ndarray:
    """Voxels ``roi`` (z, y, x, in the coarser level's voxels) of the ``factor``x mean-
    downsampled level below, read from it in z-slabs of about ``slab`` planes (bounded memory).

    Slabs hold whole downsampling windows, so the result equals :func:`downsample_mean` of
    the whole level below (partial windows only at the volume's far edges).
    """
    slab = max(factor, slab - slab % factor)
    lo = [o * factor for o in roi.offset]
    hi = [min(e * factor, n) for e, n in zip(roi.end, previous_shape, strict=True)]
    out: np.ndarray | None = None
    for z0 in range(lo[0], hi[0], slab):
        z1 = min(z0 + slab, hi[0])
        src = read_previous(Roi((z0, lo[1], lo[2]), (z1 - z0, hi[1] - lo[1], hi[2] - lo[2])))
        part = downsample_mean(src, factor)
        if out is None:
            out = np.empty(roi.shape, dtype=part.dtype)
        start = (z0 - lo[0]) // factor
        out[start : start + part.shape[0]] = part
    if out is None:
        raise ValueError(f"ROI {roi.to_dict()} is outside the level below {list(previous_shape)}")
    return out


def _shard_file(array_dir: str, shard: Sequence[int]) -> str:
    """Location of shard ``shard`` (grid index z, y, x; default chunk keys ``c/<z>/<y>/<x>``)."""
    return storage.join(array_dir, "c", *(str(i) for i in shard))


def _read_tail(location: str, nbytes: int) -> tuple[int, bytes]:
    """(size, last ``nbytes`` bytes) of a file or object (range read on object stores)."""
    if not storage.is_remote(location):
        fd = os.open(location, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            return size, os.pread(fd, nbytes, max(0, size - nbytes))
        finally:
            os.close(fd)
    fs, path = storage.filesystem(location)
    size = int(fs.size(path))
    return size, bytes(fs.cat_file(path, start=max(0, size - nbytes), end=size))


def check_shard(location: str, shard: Sequence[int], level: _Level) -> None:
    """Structural check of one written shard, without decoding a chunk: its index (at the
    end, ``index_location: end``) passes its crc32c and lists every chunk of the shard that
    lies inside the array, each inside the file. :class:`CorruptChunkError` names the shard
    file and the (first) offending chunk."""
    per_shard = [s // c for s, c in zip(level.shards, level.chunks, strict=True)]
    first = tuple(i * n for i, n in zip(shard, per_shard, strict=True))
    index_bytes = 16 * math.prod(per_shard) + 4
    try:
        size, tail = _read_tail(location, index_bytes)
    except FileNotFoundError:
        raise CorruptChunkError(location, first, "shard file is missing after writing") from None
    if size < index_bytes:
        raise CorruptChunkError(location, first, f"shard of {size} bytes has no full index")
    index, crc = tail[:-4], int.from_bytes(tail[-4:], "little")
    if google_crc32c.value(index) != crc:
        raise CorruptChunkError(location, first, "shard index fails its crc32c checksum")
    entries = np.frombuffer(index, dtype="<u8").reshape(*per_shard, 2)
    offsets, lengths = entries[..., 0], entries[..., 1]
    # chunks whose origin lies inside the array (edge shards hold fewer)
    inside = np.ones(per_shard, dtype=bool)
    for axis, (s, n, c, extent) in enumerate(
        zip(shard, per_shard, level.chunks, level.shape, strict=True)
    ):
        origin = s * n * c + np.arange(n) * c
        shape = [1, 1, 1]
        shape[axis] = n
        inside &= (origin < extent).reshape(shape)
    stored = offsets != _NO_CHUNK
    bad = inside & ~stored
    data_end = size - index_bytes
    bad |= stored & ((lengths == 0) | (offsets + lengths > data_end))
    if bad.any():
        local = [int(i) for i in np.argwhere(bad)[0]]
        chunk = tuple(f + i for f, i in zip(first, local, strict=True))
        what = "missing" if not stored[tuple(local)] else "outside the shard's data"
        raise CorruptChunkError(location, chunk, f"chunk is {what} in the shard index")


def _shard_indices(roi: Roi, shards: Sequence[int]) -> list[tuple[int, int, int]]:
    return list(chunk_indices(roi, shards))


@dataclass(frozen=True)
class _InFlight:
    block: Block
    commit: Any  # tensorstore Future of the block's transaction commit
    checksum: str  # base.block_checksum of the block's source voxels


def _downsampling_reader(below: _Level, below_store: Any) -> Callable[[Roi], np.ndarray]:
    """Reads voxels of the next level (z, y, x) by mean-downsampling the verified ``below``."""

    def read_below(roi: Roi) -> np.ndarray:
        return np.asarray(below_store[roi.to_slices()].read().result())

    def read(roi: Roi) -> np.ndarray:
        return downsample_roi(read_below, below.shape, roi, slab=below.chunks[0])

    return read


def _write_blocks(
    store: Any,
    plan: BlockPlan,
    read: Callable[[Roi], np.ndarray],
    ledger: BlockLedger,
    *,
    level: _Level,
    dtype: str,
    array_dir: str,
    verify: str,
    depth: int,
    io_pool: Executor,
    progress: bool,
    desc: str,
) -> dict[str, dict[str, Any]]:
    """Write every block not yet done, each as its own tensorstore transaction (whole shards,
    so no shard is read back and rewritten), and mark it done only after its shard files are
    durable (fsynced locally; a finished PUT on S3) and checked (:func:`check_shard`; with
    ``verify="data"`` also read back and compared with its block checksum). Pipelined,
    ``depth`` blocks in flight; the source voxels are not kept once tensorstore has staged
    them. When a block or the source fails, the blocks already handed to tensorstore are still
    finished (checked and marked) before the error propagates, so a rerun redoes only what
    really is missing."""
    results: dict[str, dict[str, Any]] = {}
    in_flight: deque[_InFlight] = deque()
    remote = storage.is_remote(array_dir)

    def finish(item: _InFlight) -> None:
        item.commit.result()
        roi = item.block.write_roi
        shards = _shard_indices(roi, level.shards)
        files = [_shard_file(array_dir, s) for s in shards]
        synced = []
        if not remote:
            paths = [Path(f) for f in files]
            synced = [io_pool.submit(fsync_one, p) for p in [*paths, *{p.parent for p in paths}]]
        for shard, f in zip(shards, files, strict=True):
            check_shard(f, shard, level)
        digest = item.checksum
        if verify == "data":
            back = np.asarray(store[roi.to_slices()].read().result())
            if not checksum_matches(back, digest):
                first = tuple(o // c for o, c in zip(roi.offset, level.chunks, strict=True))
                raise CorruptChunkError(array_dir, first, "block read back after writing differs")
            del back
        for s in synced:
            s.result()
        info = {"checksum": digest}
        ledger.mark_done(item.block.block_id, info)
        results[item.block.block_id] = {"block_id": item.block.block_id, **info}

    try:
        for block in tqdm(list(plan.blocks()), desc=desc, disable=not progress, unit="block"):
            if ledger.is_done(block.block_id):
                results[block.block_id] = ledger.info(block.block_id)
                continue
            data = read_block(read, block, np.dtype(dtype), array_dir)
            digest = block_checksum(data)  # XXH3: ~0.03 CPU-s/GiB, inline
            txn = ts.Transaction()
            store.with_transaction(txn)[block.write_roi.to_slices()].write(data).result()
            del data  # staged by tensorstore
            in_flight.append(_InFlight(block, txn.commit_async(), digest))
            while len(in_flight) >= depth:
                finish(in_flight.popleft())
        while in_flight:
            finish(in_flight.popleft())
    except Exception:
        while in_flight:
            with suppress(Exception):
                finish(in_flight.popleft())
        raise
    return results


def peak_blocks(plan: WritePlan) -> float:
    """Resident blocks (of ``plan.block_shape``) a write of ``plan`` holds at its peak."""
    return FIXED_BLOCKS + IN_FLIGHT_BLOCKS * _depth(plan)


def _depth(plan: WritePlan) -> int:
    block_bytes = math.prod(plan.block_shape) * np.dtype(plan.source.dtype).itemsize
    budget = plan.options.get("memory_budget")
    if budget is not None:
        budget = int(budget) - int(FIXED_BLOCKS * block_bytes)
    return blocks_in_flight(block_bytes, budget, IN_FLIGHT_BLOCKS, PIPELINE_DEPTH)


def write_volume(plan: WritePlan, source: VolumeSource, *, progress: bool = False) -> WriteResult:
    """Write ``source`` (z, y, x) as planned, blockwise with tensorstore, and publish it.

    Peak memory is about :func:`peak_blocks` blocks: ``FIXED_BLOCKS`` (the block being read
    and checksummed, plus a margin) plus ``IN_FLIGHT_BLOCKS`` per block in flight (tensorstore's
    staged copy and encoded shard); ``PIPELINE_DEPTH`` blocks are in flight, fewer when the
    plan's ``memory_budget`` would be exceeded. Each block is one transaction over whole
    shards; its done marker (``ledger_dir(plan)``) is written only after its shard files were
    fsynced and checked (``verify``, see :func:`plan_write`), so a rerun of the same plan
    resumes in the same staging directory. Levels s1.. are computed from the level below. The
    container appears at ``plan.path`` only when complete; ``block_checksums`` are
    :func:`base.block_checksum` (``"xxh3_128:<hex>"``; ``"sha256:<hex>"`` for blocks resumed from
    older markers) of each s0 block's C-order bytes (keyed by block id; ``s<n>/<block id>``
    for further levels).
    """
    t0 = time.perf_counter()
    check_source(plan, source)
    bound_allocator_retention()
    final = storage.normalize(plan.path)
    remote = storage.is_remote(final)
    # S3 has no rename: the variant is built under its final key and published by its
    # completion marker (written last); locally it is built beside and renamed into place
    staging = final if remote else str(staging_path(plan))
    fp = plan_fingerprint(plan)
    levels = _levels(plan)
    blocks_dir = _ledger_location(plan)
    ledgers = [storage.block_ledger(blocks_dir, fp, prefix=f"{lv.path}-") for lv in levels]
    group_json = storage.join(staging, "zarr.json")
    storage.retract(final)  # a rewrite in place is never visible as complete
    if not storage.exists(group_json):
        # markers without their staging container (removed by hand) describe nothing stored
        storage.clear_ledger(ledgers[0])
        if not remote:
            Path(staging).mkdir(parents=True, exist_ok=True)
    dtype = plan.source.dtype
    name = storage.name(final).removesuffix(SUFFIX)
    ome = multiscales_metadata(
        name, n_levels=len(levels), voxel_size=plan.source.voxel_size, channel_axis=False
    )
    ours: dict[str, Any] = {"format_version": 1, "plan_fingerprint": fp, "complete": False}
    storage.write_json(group_json, _group_json({"ome": ome, "fib_assets": ours}))

    checksums: dict[str, str] = {}
    previous: tuple[_Level, Any] | None = None
    verify = str(plan.options.get("verify", "structure"))
    depth = _depth(plan)
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as io_pool:
        for level, ledger in zip(levels, ledgers, strict=True):
            array_dir = storage.join(staging, level.path)
            spec = _array_spec(array_dir, level, dtype, plan.options["compression_level"])
            store = ts.open(spec, create=True, open=True).result()
            read = source.read if previous is None else _downsampling_reader(*previous)
            done = _write_blocks(
                store,
                BlockPlan(level.shape, level.block_shape),
                read,
                ledger,
                level=level,
                dtype=dtype,
                array_dir=array_dir,
                verify=verify,
                depth=depth,
                io_pool=io_pool,
                progress=progress,
                desc=f"{name} {level.path}",
            )
            for block_id, info in done.items():
                key = block_id if level.path == "s0" else f"{level.path}/{block_id}"
                checksums[key] = marker_checksum(info)
            previous = (level, store)

    written = {}
    for level in levels:
        shard_dir = storage.join(staging, level.path, "c")
        n = len(storage.list_files(shard_dir)) if storage.exists(shard_dir) else 0
        expected = math.prod(level.shard_grid)
        if n != expected:
            raise FormatError(
                f"{storage.join(staging, level.path)}: {n} shard files, expected {expected}"
            )
        written[level.path] = n
    ours.update(
        complete=True,
        written_shards=written,
        levels=[
            {
                "path": lv.path,
                "shape": list(lv.shape),
                "chunks": list(lv.chunks),
                "shards": list(lv.shards),
                "shard_grid": list(lv.shard_grid),
            }
            for lv in levels
        ],
        block_shape=list(plan.block_shape),
    )
    storage.write_json(group_json, _group_json({"ome": ome, "fib_assets": ours}))
    if remote:
        storage.mark_complete(final, {"plan_fingerprint": fp, "written_shards": written})
    else:
        publish(Path(staging), Path(final))
    storage.clear_ledger(ledgers[0])
    if not remote:
        with suppress(OSError):
            Path(blocks_dir).rmdir()
    nbytes, nfiles = storage.tree_size(final)
    return WriteResult(
        path=final,
        plan=plan,
        bytes_on_disk=nbytes,
        file_count=nfiles,
        seconds=time.perf_counter() - t0,
        block_checksums=checksums,
        library_versions=_library_versions(),
    )


def _ledger_location(plan: WritePlan) -> str:
    """Where the block markers of a write live: ``base.ledger_dir`` beside the variant (a
    local directory, or a prefix of objects on S3)."""
    if not storage.is_remote(plan.path):
        return str(ledger_dir(plan))
    return storage.join(storage.parent(plan.path), f".{storage.name(plan.path)}.blocks")


def _grid_shape(value: Sequence[int | None] | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """A chunk-layout shape from tensorstore (None: unconstrained, i.e. the whole axis)."""
    v = [int(c) if c else s for c, s in zip(value or (None,) * 3, shape, strict=True)]
    return (v[0], v[1], v[2])


def _first_level(attrs: dict[str, Any]) -> tuple[str, tuple[float, float, float]]:
    """(path, voxel size (z, y, x) in nm) of level 0 of the group's single (z, y, x) image."""
    multiscales = attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError("no OME-NGFF 'multiscales' metadata")
    image = multiscales[0]
    axes = [a["name"] for a in image["axes"]]
    if axes != ["z", "y", "x"]:
        raise ValueError(f"expected axes (z, y, x), found {axes}")
    units = [a.get("unit", "nanometer") for a in image["axes"]]
    if any(u not in _NM_PER_UNIT for u in units):
        raise ValueError(f"unsupported axis units {units}")
    dataset = image["datasets"][0]
    scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale")
    nm = [float(v) * _NM_PER_UNIT[u] for v, u in zip(scale, units, strict=True)]
    return str(dataset["path"]), (nm[0], nm[1], nm[2])


class OmeZarrVolume(BaseReader):
    """Level s0 of a single-image OME-Zarr container, read with tensorstore.

    tensorstore rather than zarr-python: it is the engine the variant is written with and
    reads random patches about twice as fast here (DESIGN.md). For containers written by
    ``write_volume`` (root attribute ``fib_assets.written_shards``) a missing shard or chunk is
    an error instead of zeros (tensorstore ``fill_missing_data_reads: false``); any failing
    chunk is reported as :class:`CorruptChunkError` naming its shard file and chunk index.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = storage.normalize(path)
        if not storage.is_complete(self._path):
            why = " (no completion marker: absent or still being written)"
            raise FileNotFoundError(
                f"{self._path}: no such OME-Zarr container"
                + (why if storage.is_remote(self._path) else "")
            )
        try:
            group = json.loads(storage.read_bytes(storage.join(self._path, "zarr.json")))
        except (OSError, ValueError) as err:
            raise FormatError(f"{self._path}: no readable Zarr v3 group metadata: {err}") from err
        attrs = group.get("attributes", {}) if isinstance(group, dict) else {}
        try:
            dataset_path, nm = _first_level(attrs)
        except (KeyError, IndexError, TypeError, ValueError, StopIteration) as err:
            raise FormatError(f"{self._path}: bad OME-NGFF metadata: {err!r}") from err
        self._array_path = storage.join(self._path, dataset_path)
        written = attrs.get("fib_assets", {}).get("written_shards", {})
        strict = isinstance(written, dict) and dataset_path in written
        spec = {
            "driver": "zarr3",
            "kvstore": storage.tensorstore_kvstore(self._array_path),
            "fill_missing_data_reads": not strict,
        }
        try:
            self._store: Any = ts.open(spec, read=True).result()
            array_meta = json.loads(storage.read_bytes(storage.join(self._array_path, "zarr.json")))
        except (OSError, ValueError) as err:
            raise FormatError(f"{self._path}: cannot open array {dataset_path}: {err}") from err
        if self._store.rank != 3:
            raise FormatError(f"{self._path}: expected a 3-d array, found {self._store.shape}")
        layout = self._store.chunk_layout
        shape = tuple(int(s) for s in self._store.shape)
        self._chunks = _grid_shape(layout.read_chunk.shape, shape)
        self._shards = _grid_shape(layout.write_chunk.shape, shape)
        encoding = array_meta.get("chunk_key_encoding", {"name": "default"})
        self._key_prefix = "c/" if encoding.get("name", "default") == "default" else ""
        default_sep = "/" if encoding.get("name", "default") == "default" else "."
        self._key_sep = encoding.get("configuration", {}).get("separator", default_sep)
        self._info = VolumeInfo(
            (shape[0], shape[1], shape[2]),
            self._store.dtype.numpy_dtype.name,
            VoxelSize(nm[0], nm[1], nm[2]),
            (self._chunks[0], self._chunks[1], self._chunks[2]),
        )

    def _shard_file(self, chunk: Sequence[int]) -> str:
        shard = [i * c // s for i, c, s in zip(chunk, self._chunks, self._shards, strict=True)]
        key = self._key_prefix + self._key_sep.join(str(i) for i in shard)
        return storage.join(self._array_path, *key.split("/"))

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of ``roi`` (z, y, x); decodes only the chunks it touches."""
        self._check_open(roi)
        try:
            return np.asarray(self._store[roi.to_slices()].read().result())
        except ValueError as err:
            raise self._locate(roi, err) from err

    def _locate(self, roi: Roi, err: Exception) -> CorruptChunkError:
        """Find the first failing chunk of ``roi`` by reading chunk by chunk (error path only)."""
        for chunk in chunk_indices(roi, self._chunks):
            box = Roi(
                (
                    chunk[0] * self._chunks[0],
                    chunk[1] * self._chunks[1],
                    chunk[2] * self._chunks[2],
                ),
                self._chunks,
            ).intersect(roi)
            try:
                self._store[box.to_slices()].read().result()
            except ValueError as chunk_err:
                return CorruptChunkError(self._shard_file(chunk), chunk, str(chunk_err))
        first = next(chunk_indices(roi, self._chunks))
        return CorruptChunkError(self._array_path, first, str(err))


def open_volume(path: str | Path) -> OmeZarrVolume:
    """Open level s0 of a single-image OME-Zarr container (see :class:`OmeZarrVolume`)."""
    return OmeZarrVolume(path)
