"""Assemble a region's slices into the canonical OME-Zarr raw volume, blockwise.

Describe, then do: :func:`plan_raw_volume` is pure (inventory in, plan out; shown as asset
metadata and stored as provenance); :func:`execute_raw_volume` does the I/O.

Conventions (recorded in the container's attributes):
- ``raw`` (c, z, y, x) uint16 = detector int16 + 32768 (lossless, independent of other slices,
  so a growing acquisition never rescales earlier data);
- ``uint8`` (z, y, x) = percentile stretch of the contrast channel between the ``p_low`` and
  ``p_high`` percentiles of the whole volume, measured by a first histogram pass.

Peak memory is bounded by one block (a shard of s0, all channels), never the volume: every
block reads its (z, y, x) tile straight out of each slice file's memory map.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from tqdm import tqdm

import fib_assets.core.qc as qc
from fib_assets.core import storage
from fib_assets.core.acquisition.region import RegionError, RegionInventory
from fib_assets.core.blockwise import (
    atomic_write_json,
    fingerprint,
    run_blocks,
    run_plan,
)
from fib_assets.core.formats.zarr import create_multiscale_image, downsample_mean
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize, pyramid_shapes

ASSEMBLER_VERSION = "1"
INT16_TO_UINT16_OFFSET = 32768


@dataclass(frozen=True)
class RawVolumePlan:
    """Everything that determines the canonical raw volume of one region."""

    region: str
    source_dir: str
    source_digest: str
    files: tuple[str, ...]
    shape: tuple[int, int, int]
    channels: int
    channel_names: tuple[str, ...]
    source_dtype: str
    voxel_size: VoxelSize
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int]
    level_shapes: tuple[tuple[int, int, int], ...]
    contrast_channel: int = 0
    p_low: float = 0.5
    p_high: float = 99.5
    qc_crop: int = 256
    version: str = ASSEMBLER_VERSION

    def __post_init__(self) -> None:
        if any(s % c for s, c in zip(self.shards, self.chunks, strict=True)):
            raise ValueError(f"shards {self.shards} must be multiples of chunks {self.chunks}")
        if not 0 <= self.contrast_channel < self.channels:
            raise ValueError(
                f"contrast_channel {self.contrast_channel} outside 0..{self.channels - 1}"
            )
        if not 0 <= self.p_low < self.p_high <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= p_low < p_high <= 100: {self}")

    @property
    def block_plan(self) -> BlockPlan:
        # one block = one shard of s0, so every write replaces whole shards (no read-modify-write)
        return BlockPlan(self.shape, self.shards)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["voxel_size"] = self.voxel_size.to_dict()
        return d

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    @property
    def output_name(self) -> str:
        """Content-addressed name: the same sources and plan always give the same container."""
        return f"v-{self.fingerprint[:16]}.ome.zarr"


def plan_raw_volume(
    inventory: RegionInventory,
    *,
    chunks: Sequence[int] = (64, 64, 64),
    shards: Sequence[int] = (128, 128, 128),
    min_level_size: int = 16,
    contrast_channel: int = 0,
    p_low: float = 0.5,
    p_high: float = 99.5,
) -> RawVolumePlan:
    """Plan the raw volume of a region from its inventory. Raises RegionError (naming the file)
    for unreadable or truncated sources, inconsistent frame sizes or channel counts."""
    bad = [f for f in inventory.files if not f.readable]
    if bad:
        raise RegionError(
            f"{inventory.directory}: {len(bad)} unreadable source file(s): "
            + "; ".join(f.error or f.name for f in bad[:5])
        )
    if not inventory.files:
        raise RegionError(f"{inventory.directory}: no source files")
    dats = [f for f in inventory.files if f.name.lower().endswith(".dat")]
    if dats and len(dats) != len(inventory.files):
        raise RegionError(f"{inventory.directory}: mixes .dat and TIFF sources")
    # duplicated slices (same FIBSliceNum) keep their first file: the continuity check reports them
    files: list[str] = []
    seen: set[int] = set()
    dims: set[tuple[int, int, int, str]] = set()
    for f in inventory.files:
        h = f.header or {}
        if dats:
            num = h.get("FIBSliceNum")
            if num is not None and num in seen:
                continue
            if num is not None:
                seen.add(int(num))
            dtype = "uint8" if h.get("EightBit") else "int16"
            dims.add((int(h["YResolution"]), int(h["XResolution"]), int(h["ChanNum"]), dtype))
        else:
            dims.add((int(h["YResolution"]), int(h["XResolution"]), 1, str(h["dtype"])))
        files.append(f.name)
    if len(dims) != 1:
        raise RegionError(
            f"{inventory.directory}: source frames differ in size/channels/dtype: {sorted(dims)}"
        )
    (y, x, c, dtype) = dims.pop()
    if not dats:
        pages = [int((f.header or {}).get("pages", 1)) for f in inventory.files]
        if len(files) == 1 and pages[0] > 1:
            z = pages[0]
        elif all(p == 1 for p in pages):
            z = len(files)
        else:
            raise RegionError(
                f"{inventory.directory}: use one multi-page TIFF or one file per slice"
            )
    else:
        z = len(files)
    shape = (z, y, x)
    names = tuple(inventory.meta.get("channels") or [f"ch{i}" for i in range(c)])
    if len(names) != c:
        names = tuple(f"ch{i}" for i in range(c))
    return RawVolumePlan(
        region=inventory.region,
        source_dir=inventory.directory,
        source_digest=inventory.digest,
        files=tuple(files),
        shape=shape,
        channels=c,
        channel_names=names,
        source_dtype=dtype,
        voxel_size=inventory.voxel_size,
        chunks=tuple(int(v) for v in chunks),  # type: ignore[arg-type]
        shards=tuple(int(v) for v in shards),  # type: ignore[arg-type]
        level_shapes=tuple(pyramid_shapes(shape, min_size=min_level_size)),
        contrast_channel=contrast_channel,
        p_low=p_low,
        p_high=p_high,
    )


class SliceReader:
    """Reads (C, z, y, x) tiles of the planned slices, straight from memory maps."""

    def __init__(self, plan: RawVolumePlan) -> None:
        self.plan = plan
        self.paths = [Path(plan.source_dir) / n for n in plan.files]

    def read(self, roi: Roi) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = roi.offset, roi.end
        out = np.empty(
            (self.plan.channels, z1 - z0, y1 - y0, x1 - x0), dtype=self.plan.source_dtype
        )
        if self.paths[0].suffix.lower() == ".dat":
            from fib_assets.core.acquisition.dat import read_dat_roi

            for i, z in enumerate(range(z0, z1)):
                out[:, i] = read_dat_roi(self.paths[z], slice(y0, y1), slice(x0, x1))
        elif len(self.paths) == 1:
            from fib_assets.core.acquisition.tiff_stack import read_multipage_tiff

            out[0] = read_multipage_tiff(self.paths[0], slice(z0, z1))[:, y0:y1, x0:x1]
        else:
            from fib_assets.core.acquisition.tiff_stack import read_tiff_slice_stack

            out[0] = read_tiff_slice_stack(self.paths, slice(z0, z1))[:, y0:y1, x0:x1]
        return out


def _to_uint16(tile: np.ndarray) -> np.ndarray:
    if tile.dtype == np.int16:
        return (tile.astype(np.int32) + INT16_TO_UINT16_OFFSET).astype(np.uint16)
    return tile.astype(np.uint16)


def _dtype_extremes(dtype: str) -> tuple[float, float]:
    info = np.iinfo(np.dtype(dtype))
    return float(info.min), float(info.max)


@dataclass
class SurveyResult:
    """First pass over the sources: intensity histogram, per-slice QC statistics, drift."""

    histogram: np.ndarray  # (65536,) counts of the contrast channel, uint16 domain
    stats: pd.DataFrame
    shifts: pd.DataFrame
    low: int = 0
    high: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def survey(plan: RawVolumePlan, *, progress: bool = False) -> SurveyResult:
    """Read every block once (bounded memory): histogram, QC slab statistics, lateral drift."""
    reader = SliceReader(plan)
    hist = np.zeros(65536, dtype=np.int64)
    lo, hi = _dtype_extremes(plan.source_dtype)
    parts = []
    blocks = list(plan.block_plan.blocks())
    for block in tqdm(blocks, desc=f"{plan.region}: survey", disable=not progress, unit="block"):
        tile = reader.read(block.write_roi)
        ch = tile[plan.contrast_channel]
        hist += np.bincount(_to_uint16(ch).ravel(), minlength=65536)
        parts.append(qc.slab_statistics(ch, z0=block.write_roi.offset[0], low=lo, high=hi))
    stats = qc.combine_statistics(parts)
    # lateral drift between consecutive slices, on a central crop (phase correlation)
    z, y, x = plan.shape
    cy, cx = min(plan.qc_crop, y), min(plan.qc_crop, x)
    crop = Roi((0, (y - cy) // 2, (x - cx) // 2), (1, cy, cx))
    rows = []
    prev: np.ndarray | None = None
    step = plan.shards[0]
    for z0 in range(0, z, step):
        z1 = min(z, z0 + step)
        slab = reader.read(Roi((z0, crop.offset[1], crop.offset[2]), (z1 - z0, cy, cx)))
        slab_c = slab[plan.contrast_channel].astype(np.float32)
        for i in range(z1 - z0):
            if prev is not None:
                dy, dx = qc.lateral_shifts(prev, slab_c[i])
                rows.append({"z": z0 + i, "dy": dy, "dx": dx})
            prev = slab_c[i]
    shifts = pd.DataFrame(rows, columns=["z", "dy", "dx"])
    low, high = _percentile_range(hist, plan.p_low, plan.p_high)
    return SurveyResult(hist, stats, shifts, low, high)


def _percentile_range(hist: np.ndarray, p_low: float, p_high: float) -> tuple[int, int]:
    cdf = np.cumsum(hist)
    total = cdf[-1]
    low = int(np.searchsorted(cdf, total * p_low / 100.0, side="left"))
    high = int(np.searchsorted(cdf, total * p_high / 100.0, side="left"))
    return low, max(high, low + 1)


def stretch_to_uint8(tile_uint16: np.ndarray, low: int, high: int) -> np.ndarray:
    """Linear stretch of uint16 values: ``low`` → 0, ``high`` → 255, clipped."""
    scaled = (tile_uint16.astype(np.float32) - low) * (255.0 / (high - low))
    out: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@dataclass(frozen=True)
class RawVolumeResult:
    path: str
    plan: RawVolumePlan
    checksum: str
    block_checksums: dict[str, str]
    low: int
    high: int
    stats: pd.DataFrame
    shifts: pd.DataFrame
    bytes_on_disk: int
    reused: bool


def execute_raw_volume(
    plan: RawVolumePlan, out_dir: str | Path, *, progress: bool = False
) -> RawVolumeResult:
    """Write (or reuse) ``out_dir/<plan.output_name>``; resumable, atomic on completion.

    ``out_dir`` is a local directory or an ``s3://bucket/prefix`` URL (one code path through
    :mod:`fib_assets.core.storage`). Blocks leave done markers under ``out_dir/.blocks``
    (files locally, objects on S3, so a replaced pod resumes); the QC tables and the summary
    are kept there too. Publishing differs by backend only:

    - local disk: work happens in ``out_dir/.staging-<fingerprint>``; the finished container
      is renamed into place, so an earlier materialization is never touched and a half-written
      one is never visible;
    - S3 (no rename): the container is written under its final, content-addressed key and its
      completion marker ``<name>.complete.json`` is written last; a container without the
      marker counts as absent, is never reused, and is rebuilt (resuming its done blocks).
    """
    out = storage.normalize(out_dir)
    remote = storage.is_remote(out)
    final = storage.join(out, plan.output_name)
    blocks_dir = storage.join(out, ".blocks")
    book = storage.join(blocks_dir, plan.fingerprint[:16])
    summary_path = storage.join(book, "summary.json")
    stats_path = storage.join(book, "qc_stats.parquet")
    shifts_path = storage.join(book, "qc_shifts.parquet")
    if storage.is_complete(final) and storage.exists(summary_path):
        s = storage.read_json(summary_path)
        return RawVolumeResult(
            final, plan, s["checksum"], s["block_checksums"], s["low"], s["high"],
            _read_parquet(stats_path), _read_parquet(shifts_path),
            storage.tree_size(final)[0], True,
        )  # fmt: skip

    # S3 has no rename: the final key is the staging area, absent to readers until its marker
    staging = final if remote else storage.join(out, f".staging-{plan.fingerprint[:16]}.ome.zarr")
    ledger = storage.block_ledger(blocks_dir, plan.fingerprint)
    surveyed = survey(plan, progress=progress)
    created_marker = "created"
    if not ledger.is_done(created_marker) or not storage.exists(storage.join(staging, "zarr.json")):
        storage.retract(final)
        storage.remove(staging)
        # a new staging container invalidates every block marker of this plan
        storage.clear_ledger(ledger)
        root = zarr.open_group(storage.zarr_store(staging), mode="w", zarr_format=3)
        root.attrs.update(
            {
                "ome": {"version": "0.5"},
                "fib_assets": {
                    "region": plan.region,
                    "plan": plan.to_dict(),
                    "raw_encoding": f"uint16 = int16 + {INT16_TO_UINT16_OFFSET}",
                    "uint8_encoding": {
                        "channel": plan.channel_names[plan.contrast_channel],
                        "low_uint16": surveyed.low,
                        "high_uint16": surveyed.high,
                        "percentiles": [plan.p_low, plan.p_high],
                    },
                },
            }
        )
        create_multiscale_image(
            root, "raw", level_shapes=plan.level_shapes, dtype="uint16", chunks=plan.chunks,
            shards=plan.shards, voxel_size=plan.voxel_size, channels=plan.channels,
            attributes={"channel_names": list(plan.channel_names)},
        )  # fmt: skip
        create_multiscale_image(
            root, "uint8", level_shapes=plan.level_shapes, dtype="uint8", chunks=plan.chunks,
            shards=plan.shards, voxel_size=plan.voxel_size,
        )  # fmt: skip
        ledger.mark_done(created_marker, {})

    root = zarr.open_group(storage.zarr_store(staging), mode="r+")
    reader = SliceReader(plan)
    raw_levels = [_array(root, f"raw/s{i}") for i in range(len(plan.level_shapes))]
    u8_levels = [_array(root, f"uint8/s{i}") for i in range(len(plan.level_shapes))]

    def write_s0(block: Block) -> dict[str, Any]:
        sl = block.write_roi.to_slices()
        raw = _to_uint16(reader.read(block.write_roi))
        u8 = stretch_to_uint8(raw[plan.contrast_channel], surveyed.low, surveyed.high)
        raw_levels[0][(slice(None), *sl)] = raw
        u8_levels[0][sl] = u8
        # verify before the block may count as done
        back = np.asarray(raw_levels[0][(slice(None), *sl)])
        if not np.array_equal(back, raw) or not np.array_equal(np.asarray(u8_levels[0][sl]), u8):
            raise OSError(f"{staging}: block {block.block_id} did not read back as written")
        return {"sha256_raw": _sha(raw), "sha256_uint8": _sha(u8)}

    s0 = run_blocks(
        plan.block_plan.blocks(), write_s0, ledger, total=len(plan.block_plan),
        progress=progress, desc=f"{plan.region}: s0",
    )  # fmt: skip

    for level in range(1, len(plan.level_shapes)):
        level_plan = BlockPlan(plan.level_shapes[level], plan.shards)

        def write_level(block: Block, level: int = level) -> dict[str, Any]:
            src = Roi(
                tuple(2 * o for o in block.write_roi.offset),  # type: ignore[arg-type]
                tuple(2 * s for s in block.write_roi.shape),  # type: ignore[arg-type]
            ).intersect(Roi((0, 0, 0), plan.level_shapes[level - 1]))
            ssl = src.to_slices()
            raw = downsample_mean(np.asarray(raw_levels[level - 1][(slice(None), *ssl)]))
            u8 = downsample_mean(np.asarray(u8_levels[level - 1][ssl]))
            sl = block.write_roi.to_slices()
            raw_levels[level][(slice(None), *sl)] = raw
            u8_levels[level][sl] = u8
            if not np.array_equal(np.asarray(raw_levels[level][(slice(None), *sl)]), raw):
                raise OSError(f"{staging}: s{level} block {block.block_id} did not read back")
            return {"sha256_raw": _sha(raw)}

        run_plan(
            level_plan,
            write_level,
            storage.block_ledger(blocks_dir, plan.fingerprint, prefix=f"s{level}-"),
            progress=progress,
            desc=f"{plan.region}: s{level}",
        )

    block_checksums = {bid: info["sha256_raw"] for bid, info in sorted(s0.items())}
    checksum = fingerprint(block_checksums)
    summary = {
        "checksum": checksum,
        "block_checksums": block_checksums,
        "low": surveyed.low,
        "high": surveyed.high,
    }
    _write_parquet(stats_path, surveyed.stats)
    _write_parquet(shifts_path, surveyed.shifts)
    if remote:
        # every object is written and verified: the summary, then the marker LAST publishes it
        storage.write_json(summary_path, summary)
        storage.mark_complete(final, {"checksum": checksum, "plan_fingerprint": plan.fingerprint})
    else:
        os_replace_dir(Path(staging), Path(final))
        atomic_write_json(Path(summary_path), summary)
    return RawVolumeResult(
        final, plan, checksum, block_checksums, surveyed.low, surveyed.high,
        surveyed.stats, surveyed.shifts, storage.tree_size(final)[0], False,
    )  # fmt: skip


def _write_parquet(location: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf)
    storage.write_bytes(location, buf.getvalue())


def _read_parquet(location: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(location)))


def _array(root: zarr.Group, path: str) -> zarr.Array[Any]:
    arr = root[path]
    if not isinstance(arr, zarr.Array):
        raise ValueError(f"{root.store}: {path} is not an array")
    return arr


def os_replace_dir(src: Path, dst: Path) -> None:
    """Atomically move a finished directory into place (same filesystem)."""
    import os

    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
