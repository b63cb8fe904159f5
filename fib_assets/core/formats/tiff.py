"""TIFF volumes, in two layouts: a directory of per-slice files, or one tiled BigTIFF.

``layout="slices"`` (the acquisition layout)::

    <name>.tiff/               directory
      volume.json              {"fib_assets": {shape, dtype, axes "zyx", voxel_size_nm, ...}}
      z000000.tif ...          one single-page grayscale TIFF per z slice

``layout="bigtiff"``::

    <name>.tiff                one little-endian BigTIFF, one page per z slice (page i = z i)

Pages of both layouts are tiled (tile = the chunks' (y, x) rounded up to multiples of 16, as
TIFF requires), compressed (zlib by default) and carry XResolution/YResolution in pixels per
centimetre (1e7 / voxel nm). Page 0 of a BigTIFF also holds OME-XML (one image, ZYX,
PhysicalSize X/Y/Z in nm; Fiji/Bio-Formats, napari and QuPath read it) in ImageDescription, and
our JSON description (the same as ``volume.json``) in private tag 65000, from which
:func:`open_volume` recovers shape, dtype and the exact voxel size.

Writing goes in z-slabs (blocks of ``(bz, Y, X)`` voxels; memory bound: one slab) into a staging
file or directory, with a done marker per slab after its pages were written, flushed to the OS
and verified; BigTIFF pages are appended sequentially through one ``tifffile.TiffWriter``. A
rerun re-reads the done slabs and checks them against their markers' block checksums (any mismatch
starts over), then continues: a staging BigTIFF is cut back to the size recorded with the last
done slab and appended to. Finished variants are published atomically.

Reading decodes only the tiles a ROI touches. A missing, truncated or undecodable tile is
:class:`CorruptChunkError` with chunk index (z, tile row, tile column); a missing page or slice
file has index (z,). Uncompressed tiles carry no checksum: their corruption is undetectable.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from fib_assets.core.blockwise import BlockLedger, atomic_write_json, run_blocks
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
    clear_ledger,
    cores,
    fsync_path,
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
from fib_assets.core.formats.base import (
    library_versions as _versions,
)
from fib_assets.core.geometry import Block, BlockPlan, Roi, VoxelSize

__all__ = ["SUFFIX", "TiffVolumeReader", "open_volume", "plan_write", "write_volume"]

SUFFIX = ".tiff"
FORMAT = "tiff"
AXES = "zyx"

Layout = Literal["slices", "bigtiff"]
Compression = Literal["zlib", "lzma", "zstd"]
Verify = Literal["structure", "data"]

#: name of slice z in a "slices" directory
SLICE_NAME = "z{:06d}.tif"
#: our JSON description of a "slices" directory
METADATA_NAME = "volume.json"
#: private TIFF tag (ASCII) holding our JSON description on page 0 of a BigTIFF
JSON_TAG = 65000
#: compression -> level used when none is given. zlib 1, not tifffile's 6: on EM data it
#: compresses ~5x faster per thread for ~8 % more bytes (2.00x vs 2.18x on the benchmark
#: volume, 256² tiles; see benchmarks/RESULTS.md); lzma and zstd keep the codecs' defaults
DEFAULT_LEVELS: dict[str, int] = {"zlib": 1, "lzma": 6, "zstd": 3}
#: chunks (z, y, x) voxels when neither the caller nor the source gives any. 128² tiles:
#: random 96³ patches read 1.7x faster than from 256² tiles (a patch decodes only the tiles
#: it touches) for the same size and ~7 % more write CPU; 64² tiles gain little more on reads
#: and cost 50 % more write CPU (benchmarks/formats.py, TIFF tile size trade-off)
DEFAULT_CHUNKS = (64, 128, 128)
#: a default slab holds chunks[0] slices, fewer when that would exceed this many bytes
BLOCK_BUDGET_BYTES = 64 * 2**20
#: TIFF tiles are multiples of this many pixels along y and x
TILE_MULTIPLE = 16
#: 1 cm in nm: resolution tags are pixels per centimetre
NM_PER_CM = 1e7

_TAG_TILE_OFFSETS, _TAG_TILE_BYTECOUNTS = 324, 325
_TIFF_INTS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)


# --- describe ------------------------------------------------------------------------------


def plan_write(
    path: str | Path,
    source: VolumeInfo,
    *,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    layout: Layout = "bigtiff",
    compression: Compression | None = "zlib",
    compression_level: int | None = None,
    verify: Verify = "structure",
    fsync: bool = False,
) -> WritePlan:
    """Describe writing ``source`` as a TIFF volume at ``path`` (pure: touches no file).

    ``chunks`` (z, y, x voxels; default the source's chunks, else (64, 256, 256)): (y, x) give
    the tile, rounded up to a multiple of 16 and clipped to the (rounded) image; z gives the
    default slab depth. The plan's ``chunks`` are what is stored: ``(1, tile_y, tile_x)``.
    Blocks are z-slabs ``(bz, Y, X)``: TIFF pages are written whole, so only the z of a given
    ``block_shape`` is used; by default ``bz = chunks[0]``, reduced so a slab stays within
    64 MiB. ``compression`` is "zlib" (default), "lzma", "zstd" (needs imagecodecs or Python
    3.14) or None. ``verify="structure"`` checks each slab's pages (IFDs linked, tiles present
    within the file); ``"data"`` also decodes them back and compares the block checksum. ``fsync``
    makes each slab durable before its marker, and the variant before it is published.
    """
    shape = source.shape
    dtype = storage_dtype(source.dtype, path)
    if not Path(path).name.endswith(SUFFIX):
        raise ValueError(f"{path}: a TIFF volume path must end with {SUFFIX!r}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"{path}: volume shape must be positive, got {list(shape)}")
    if layout not in ("slices", "bigtiff"):
        raise ValueError(f"{path}: layout must be 'slices' or 'bigtiff', got {layout!r}")
    level = _compression_level(path, compression, compression_level)
    check_verify(path, verify)
    requested = chunks if chunks is not None else (source.chunks or DEFAULT_CHUNKS)
    cz, cy, cx = positive_triple("chunks", requested, path)
    tile = (_tile_size(cy, shape[1]), _tile_size(cx, shape[2]))
    slice_bytes = shape[1] * shape[2] * dtype.itemsize
    if block_shape is None:
        bz = min(cz, max(1, BLOCK_BUDGET_BYTES // slice_bytes))
    else:
        bz = positive_triple("block_shape", block_shape, path)[0]
    return WritePlan(
        format=FORMAT,
        path=str(path),
        source=source,
        chunks=(1, tile[0], tile[1]),
        block_shape=(min(bz, shape[0]), shape[1], shape[2]),
        options={
            "layout": layout,
            "compression": compression,
            "compression_level": level,
            "tile": list(tile),
            "verify": verify,
            "fsync": bool(fsync),
        },
    )


def _compression_level(path: str | Path, compression: str | None, level: int | None) -> int | None:
    if compression is None:
        return None
    if compression not in DEFAULT_LEVELS:
        raise ValueError(
            f"{path}: compression must be 'zlib', 'lzma', 'zstd' or None, got {compression!r}"
        )
    if compression == "zstd" and not _zstd_available():
        raise ValueError(
            f"{path}: TIFF zstd compression needs the imagecodecs package (or Python 3.14)"
        )
    level = DEFAULT_LEVELS[compression] if level is None else int(level)
    if compression in ("zlib", "lzma") and not 0 <= level <= 9:
        raise ValueError(f"{path}: {compression} level must be 0..9, got {level}")
    return level


def _zstd_available() -> bool:
    for module in ("imagecodecs", "compression.zstd"):
        with contextlib.suppress(ImportError):
            __import__(module)
            return True
    return False


def _tile_size(chunk: int, extent: int) -> int:
    """``chunk`` rounded up to a multiple of 16, no larger than ``extent`` rounded up."""

    def up(n: int) -> int:
        return -(-n // TILE_MULTIPLE) * TILE_MULTIPLE

    return min(up(chunk), up(extent))


# --- do ------------------------------------------------------------------------------------


def write_volume(plan: WritePlan, source: VolumeSource, *, progress: bool = False) -> WriteResult:
    """Write ``source`` as ``plan`` describes, slab by slab; resume a failed earlier run.

    Each slab is read once from ``source`` and recorded with the :func:`base.block_checksum`
    of its C-order bytes (``WriteResult.block_checksums``; ``"sha256:<hex>"`` for slabs
    resumed from older markers). The variant is built at :func:`base.staging_path` and
    published atomically, so an older variant at ``plan.path`` stays readable until then.
    """
    started = time.perf_counter()
    if plan.format != FORMAT:
        raise ValueError(f"{plan.path}: not a TIFF plan (format {plan.format!r})")
    check_source(plan, source)
    final = Path(plan.path)
    staging = staging_path(plan)
    fingerprint = plan_fingerprint(plan)
    ledger = BlockLedger(ledger_dir(plan), fingerprint)
    blocks = list(BlockPlan(plan.source.shape, plan.block_shape).blocks())
    final.parent.mkdir(parents=True, exist_ok=True)
    description = _description(plan, fingerprint)

    if plan.options["layout"] == "bigtiff":
        results = _write_bigtiff(plan, source, staging, ledger, blocks, description, progress)
    else:
        results = _write_slices(plan, source, staging, ledger, blocks, description, progress)
    if plan.options["fsync"]:
        fsync_path(staging)
    _publish(staging, final)
    if plan.options["fsync"]:
        fsync_path(final.parent)
    clear_ledger(plan, ledger.directory)  # (its directory only when no other plan's are left)
    checksums = {bid: marker_checksum(info) for bid, info in results.items()}
    return write_result(plan, final, started, checksums, library_versions())


def library_versions() -> dict[str, str]:
    return _versions("tifffile", "numpy")


def _description(plan: WritePlan, fingerprint: str) -> dict[str, Any]:
    """Our JSON description (``volume.json`` / BigTIFF tag 65000)."""
    info = plan.source
    return {
        "fib_assets": {
            "format": FORMAT,
            "layout": plan.options["layout"],
            "shape": list(info.shape),
            "dtype": storage_dtype(info.dtype, plan.path).name,
            "axes": AXES,
            "voxel_size_nm": info.voxel_size.to_dict(),
            "tile": list(plan.options["tile"]),
            "compression": plan.options["compression"],
            "compression_level": plan.options["compression_level"],
            "slice_name": SLICE_NAME if plan.options["layout"] == "slices" else None,
            "plan": plan.to_dict(),
            "plan_fingerprint": fingerprint,
        }
    }


def _page_kwargs(plan: WritePlan) -> dict[str, Any]:
    """tifffile ``write`` arguments shared by every page of a plan."""
    vs = plan.source.voxel_size
    compression = plan.options["compression"]
    return {
        "photometric": "minisblack",
        "tile": tuple(plan.options["tile"]),
        "compression": compression,
        "compressionargs": (
            None if compression is None else {"level": plan.options["compression_level"]}
        ),
        "resolution": (NM_PER_CM / vs.x, NM_PER_CM / vs.y),
        "resolutionunit": "CENTIMETER",
        "metadata": None,  # no tifffile "shaped" JSON: we write our own description
        "software": "fib_assets",
        "maxworkers": cores(),  # tiles of a page are compressed in parallel threads
    }


def _ome_xml(plan: WritePlan, fingerprint: str) -> str:
    """OME-XML for page 0 of a BigTIFF: one (z, y, x) image with physical sizes in nm."""
    z, y, x = plan.source.shape
    vs = plan.source.voxel_size
    ome = tifffile.OmeXml(
        UUID=str(uuid.UUID(fingerprint[:32])),  # deterministic: same plan, same bytes
        Creator=f"fib_assets (tifffile {tifffile.__version__})",
    )
    ome.addimage(
        storage_dtype(plan.source.dtype, plan.path),
        (z, y, x),
        (z, 1, 1, y, x, 1),
        axes="ZYX",
        PhysicalSizeX=vs.x,
        PhysicalSizeXUnit="nm",
        PhysicalSizeY=vs.y,
        PhysicalSizeYUnit="nm",
        PhysicalSizeZ=vs.z,
        PhysicalSizeZUnit="nm",
    )
    return ome.tostring(declaration=True)


def _write_bigtiff(
    plan: WritePlan,
    source: VolumeSource,
    staging: Path,
    ledger: BlockLedger,
    blocks: list[Block],
    description: dict[str, Any],
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Append the slabs' pages to one staging BigTIFF through one TiffWriter."""
    dtype = storage_dtype(plan.source.dtype, plan.path)
    last_ifd = _resume_bigtiff(plan, staging, ledger, blocks)
    if last_ifd is None:  # nothing to resume: start the file over
        shutil.rmtree(ledger.directory, ignore_errors=True)
        staging.unlink(missing_ok=True)
    page_kwargs = _page_kwargs(plan)
    first_page_kwargs: dict[str, Any] = {
        "description": _ome_xml(plan, description["fib_assets"]["plan_fingerprint"]),
        "extratags": [(JSON_TAG, "s", 0, json.dumps(description, sort_keys=True), True)],
    }
    tiles_per_page = _tiles_per_page(plan)
    with tifffile.TiffWriter(
        staging,
        bigtiff=True,
        byteorder="<",
        append="force" if last_ifd is not None else False,  # our OME-XML already counts all
        ome=False,
        imagej=False,
    ) as writer:
        probe = os.open(staging, os.O_RDONLY)  # unbuffered reads of what the writer flushed
        try:

            def write_block(block: Block) -> dict[str, Any]:
                nonlocal last_ifd
                data = read_block(source, block, dtype, plan.path)
                digest = block_checksum(data)  # XXH3: ~0.03 CPU-s/GiB
                z0, z1 = block.write_roi.offset[0], block.write_roi.end[0]
                extra = first_page_kwargs if z0 == 0 else {}
                writer.write(data, **page_kwargs, **extra)
                writer.filehandle.flush()
                if plan.options["fsync"]:
                    os.fsync(writer.filehandle.fileno())
                size = os.fstat(probe).st_size
                ifds = _append_pages_check(probe, staging, last_ifd, z1 - z0, tiles_per_page, size)
                if plan.options["verify"] == "data":
                    _check_bigtiff_pages(staging, ifds, z0, plan, digest)
                last_ifd = ifds[-1]
                return {
                    "checksum": digest,
                    "n_pages": z1,
                    "file_size": size,
                    "last_ifd": ifds[-1],
                }

            return run_blocks(
                blocks, write_block, ledger, total=len(blocks), progress=progress, desc=staging.name
            )
        finally:
            os.close(probe)


def _resume_bigtiff(
    plan: WritePlan, staging: Path, ledger: BlockLedger, blocks: list[Block]
) -> int | None:
    """Prepare a staging BigTIFF left by an earlier run for appending; return its last IFD.

    The done slabs must be the first k slabs; the file is cut back to the size recorded with
    the last of them (dropping pages of a slab that failed half-way), its last IFD's next
    pointer is cleared, the page count must match, and every done slab must decode to its
    marker's block checksum. None when there is nothing (trustworthy) to resume.
    """
    done = ledger.done_ids()
    if not done or not staging.is_file():
        return None
    ids = [b.block_id for b in blocks]
    if set(ids[: len(done)]) != done:
        return None
    try:
        last = ledger.info(ids[len(done) - 1])
        size, last_ifd, n_pages = (
            int(last["file_size"]),
            int(last["last_ifd"]),
            int(last["n_pages"]),
        )
        if staging.stat().st_size < size:
            return None
        with open(staging, "r+b") as f:
            f.truncate(size)
            (count,) = struct.unpack("<Q", os.pread(f.fileno(), 8, last_ifd))
            f.seek(last_ifd + 8 + 20 * count)
            f.write(b"\0" * 8)  # the failed slab's first IFD was linked here
        fd = os.open(staging, os.O_RDONLY)
        try:
            ifds = _ifd_chain(fd, size)
        finally:
            os.close(fd)
        if len(ifds) != n_pages or ifds[-1] != last_ifd:
            return None
        with TiffVolumeReader(staging) as reader:
            for block in blocks[: len(done)]:
                recorded = marker_checksum(ledger.info(block.block_id))
                if not checksum_matches(reader.read(block.write_roi), recorded):
                    return None
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return last_ifd


def _write_slices(
    plan: WritePlan,
    source: VolumeSource,
    staging: Path,
    ledger: BlockLedger,
    blocks: list[Block],
    description: dict[str, Any],
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Write one TIFF file per slice of each slab into a staging directory."""
    dtype = storage_dtype(plan.source.dtype, plan.path)
    if not _resume_slices(staging, ledger, blocks, description):
        shutil.rmtree(ledger.directory, ignore_errors=True)
        if staging.is_dir():
            shutil.rmtree(staging)
        staging.unlink(missing_ok=True)
        staging.mkdir(parents=True)
        atomic_write_json(staging / METADATA_NAME, description)
    page_kwargs = _page_kwargs(plan)
    tiles_per_page = _tiles_per_page(plan)
    y, x = plan.source.shape[1:]

    def write_block(block: Block) -> dict[str, Any]:
        data = read_block(source, block, dtype, plan.path)
        digest = block_checksum(data)
        z0 = block.write_roi.offset[0]
        for i in range(data.shape[0]):
            file = staging / SLICE_NAME.format(z0 + i)
            tifffile.imwrite(file, data[i], **page_kwargs)
            if plan.options["fsync"]:
                fsync_path(file)
            with tifffile.TiffFile(file) as tif:
                problem = _page_problem(tif.pages.first, (y, x), dtype, tiles_per_page, file)
            if problem:
                raise CorruptChunkError(str(file), (z0 + i,), f"written page {problem}")
        if plan.options["verify"] == "data":
            with TiffVolumeReader(staging) as reader:
                if not checksum_matches(reader.read(block.write_roi), digest):
                    raise FormatError(f"{staging}: slab {block.block_id} reads back differently")
        return {"checksum": digest}

    return run_blocks(
        blocks, write_block, ledger, total=len(blocks), progress=progress, desc=staging.name
    )


def _resume_slices(
    staging: Path, ledger: BlockLedger, blocks: list[Block], description: dict[str, Any]
) -> bool:
    """Whether a staging directory of an earlier run of this plan can be continued: its
    ``volume.json`` matches and every done slab decodes to its marker's block checksum."""
    done = ledger.done_ids()
    if not done or not staging.is_dir():
        return False
    try:
        stored = json.loads((staging / METADATA_NAME).read_text())
        if stored != json.loads(json.dumps(description)):
            return False
        with TiffVolumeReader(staging) as reader:
            for block in blocks:
                if block.block_id not in done:
                    continue
                recorded = marker_checksum(ledger.info(block.block_id))
                if not checksum_matches(reader.read(block.write_roi), recorded):
                    return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def _publish(staging: Path, final: Path) -> None:
    """:func:`base.publish`, also when a BigTIFF file replaces a slices directory."""
    if final.is_dir() and not staging.is_dir():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        publish(staging, final)


# --- structural checks of written pages ----------------------------------------------------


def _tiles_per_page(plan: WritePlan) -> int:
    ty, tx = (int(t) for t in plan.options["tile"])
    return math.ceil(plan.source.shape[1] / ty) * math.ceil(plan.source.shape[2] / tx)


def _read_u64(fd: int, offset: int) -> int:
    raw = os.pread(fd, 8, offset)
    if len(raw) != 8:
        raise ValueError(f"offset {offset} is beyond the end of the file")
    value: int = struct.unpack("<Q", raw)[0]
    return value


def _ifd_entries(fd: int, ifd: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
    """Entries ``{tag: (type, count, 8 value bytes)}`` of the little-endian BigTIFF IFD at
    ``ifd``, and the file offset of its next-IFD pointer."""
    count = _read_u64(fd, ifd)
    raw = os.pread(fd, 20 * count, ifd + 8)
    if len(raw) != 20 * count:
        raise ValueError(f"IFD at {ifd} is truncated")
    entries = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack_from("<HHQ8s", raw, 20 * i)
        entries[tag] = (kind, n, value)
    return entries, ifd + 8 + 20 * count


def _int_array(fd: int, entry: tuple[int, int, bytes]) -> np.ndarray:
    kind, n, value = entry
    if kind not in _TIFF_INTS:
        raise ValueError(f"unexpected TIFF field type {kind} for tile offsets")
    dtype = np.dtype("<" + _TIFF_INTS[kind])
    nbytes = n * dtype.itemsize
    raw = value[:nbytes] if nbytes <= 8 else os.pread(fd, nbytes, struct.unpack("<Q", value)[0])
    if len(raw) != nbytes:
        raise ValueError("tile offsets are truncated")
    return np.frombuffer(raw, dtype=dtype).astype(np.uint64)


def _append_pages_check(
    fd: int, path: Path, last_ifd: int | None, n_pages: int, tiles: int, size: int
) -> list[int]:
    """Walk the ``n_pages`` IFDs linked after ``last_ifd`` (None: from the header) and check
    each has ``tiles`` tiles stored inside the file's ``size`` bytes, and that the chain ends
    there. Returns the new IFDs' offsets. O(n_pages), independent of the file's page count."""
    pointer = 8 if last_ifd is None else _ifd_entries(fd, last_ifd)[1]
    ifds: list[int] = []
    for _ in range(n_pages):
        ifd = _read_u64(fd, pointer)
        if not 16 <= ifd < size:
            raise FormatError(f"{path}: written page {len(ifds)} of the slab is not linked")
        entries, pointer = _ifd_entries(fd, ifd)
        offsets = _int_array(fd, entries[_TAG_TILE_OFFSETS])
        counts = _int_array(fd, entries[_TAG_TILE_BYTECOUNTS])
        if (
            len(offsets) != tiles
            or len(counts) != tiles
            or not np.all(offsets > 0)
            or not np.all(counts > 0)
            or np.any(offsets + counts > size)
        ):
            raise FormatError(f"{path}: written page at {ifd} lacks tiles or points past EOF")
        ifds.append(ifd)
    if _read_u64(fd, pointer) != 0:
        raise FormatError(f"{path}: more pages than written after the last slab")
    return ifds


def _ifd_chain(fd: int, size: int) -> list[int]:
    """Offsets of all IFDs of a little-endian BigTIFF, from the header (resume only)."""
    header = os.pread(fd, 16, 0)
    if header[:4] != b"II\x2b\x00":
        raise ValueError("not a little-endian BigTIFF")
    ifds: list[int] = []
    pointer = 8
    while (ifd := _read_u64(fd, pointer)) != 0:
        if not 16 <= ifd < size or len(ifds) > size // 28:
            raise ValueError(f"broken IFD chain at page {len(ifds)}")
        ifds.append(ifd)
        pointer = _ifd_entries(fd, ifd)[1]
    return ifds


def _check_bigtiff_pages(
    staging: Path, ifds: list[int], z0: int, plan: WritePlan, digest: str
) -> None:
    """``verify="data"``: the slab's pages (found by their IFD offsets) decode to ``digest``."""
    shape = plan.source.shape
    dtype = storage_dtype(plan.source.dtype, plan.path)
    out = np.empty((len(ifds), shape[1], shape[2]), dtype=dtype)
    with tifffile.TiffFile(staging) as tif:
        for i, ifd in enumerate(ifds):
            tif.filehandle.seek(ifd)
            page = tifffile.TiffPage(tif, index=z0 + i)
            _read_page(
                page, tif.filehandle, str(staging), z0 + i, (0, shape[1]), (0, shape[2]), out[i]
            )
    if not checksum_matches(out, digest):
        raise FormatError(f"{staging}: slab at z {z0} reads back different voxels")


# --- read ----------------------------------------------------------------------------------


class TiffVolumeReader(BaseReader):
    """An opened TIFF volume (either layout); ``read(roi)`` decodes only the tiles it needs.

    Arrays are (z, y, x) voxels in the stored dtype; the voxel size is nm.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        self._path = str(p)
        self._tif: tifffile.TiffFile | None = None
        if p.is_dir():
            meta_path = p / METADATA_NAME
            try:
                meta = json.loads(meta_path.read_text())
            except FileNotFoundError as err:
                raise FormatError(f"{p}: a slices TIFF volume needs {METADATA_NAME}") from err
            except ValueError as err:
                raise FormatError(f"{meta_path}: not valid JSON: {err}") from err
        elif p.is_file():
            try:
                self._tif = tifffile.TiffFile(p)
            except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error
                raise FormatError(f"{p}: not a readable TIFF: {err}") from err
            tag = self._tif.pages.first.tags.get(JSON_TAG)
            if tag is None:
                self._tif.close()
                raise FormatError(f"{p}: no fib_assets description (TIFF tag {JSON_TAG})")
            meta = json.loads(str(tag.value))
        else:
            raise FileNotFoundError(f"{p}: no such TIFF volume")
        try:
            d = meta["fib_assets"]
            z, y, x = (int(v) for v in d["shape"])
            self._slice_name = str(d.get("slice_name") or SLICE_NAME)
            self._info = VolumeInfo(
                (z, y, x),
                np.dtype(d["dtype"]).name,
                VoxelSize.from_dict(d["voxel_size_nm"]),
                (1, int(d["tile"][0]), int(d["tile"][1])),
            )
        except (KeyError, TypeError, ValueError) as err:
            self.close()
            raise FormatError(f"{p}: invalid fib_assets description: {err}") from err

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of ``roi`` (z, y, x); CorruptChunkError names the file and the tile."""
        self._check_open(roi)
        out = np.empty(roi.shape, dtype=self._info.dtype)
        if roi.size == 0:
            return out
        (z0, y0, x0), (z1, y1, x1) = roi.offset, roi.end
        for z in range(z0, z1):
            if self._tif is not None:
                page = self._page(self._tif, self._path, z)
                _read_page(
                    page, self._tif.filehandle, self._path, z, (y0, y1), (x0, x1), out[z - z0]
                )
                continue
            file = Path(self._path) / self._slice_name.format(z)
            try:
                tif = tifffile.TiffFile(file)
            except FileNotFoundError as err:
                raise CorruptChunkError(str(file), (z,), "slice file is missing") from err
            except Exception as err:  # corrupt header
                raise CorruptChunkError(str(file), (z,), f"unreadable TIFF: {err}") from err
            with tif:
                page = self._page(tif, str(file), 0, z)
                _read_page(page, tif.filehandle, str(file), z, (y0, y1), (x0, x1), out[z - z0])
        return out

    def _page(
        self, tif: tifffile.TiffFile, where: str, index: int, z: int | None = None
    ) -> tifffile.TiffPage:
        z = index if z is None else z
        try:
            page = tif.pages[index]
        except IndexError as err:
            raise CorruptChunkError(where, (z,), "page is missing") from err
        except Exception as err:  # corrupt IFD
            raise CorruptChunkError(where, (z,), f"unreadable page: {err}") from err
        if not isinstance(page, tifffile.TiffPage):
            raise CorruptChunkError(where, (z,), "unexpected page type")
        y, x = self._info.shape[1:]
        problem = _page_problem(page, (y, x), np.dtype(self._info.dtype), None, None)
        if problem:
            raise CorruptChunkError(where, (z,), f"page {problem}")
        return page

    def _close(self) -> None:
        if self._tif is not None:
            self._tif.close()


def open_volume(path: str | Path) -> TiffVolumeReader:
    """Open a TIFF volume of either layout lazily (FileNotFoundError naming a missing path)."""
    return TiffVolumeReader(path)


def _page_problem(
    page: tifffile.TiffPage | tifffile.TiffFrame,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    tiles: int | None,
    file: Path | None,
) -> str | None:
    """What is wrong with a page expected to be a grayscale (y, x) image of ``dtype``
    (and, when given, to have ``tiles`` tiles inside ``file``), or None."""
    if not isinstance(page, tifffile.TiffPage):
        return "is not a full TIFF page"
    if tuple(page.shape) != shape or page.samplesperpixel != 1:
        return f"has shape {tuple(page.shape)}, expected {shape} with one sample"
    if page.dtype is None or np.dtype(page.dtype) != dtype:
        return f"has dtype {page.dtype}, expected {dtype}"
    if tiles is not None and file is not None:
        size = file.stat().st_size
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) != tiles or any(
            o <= 0 or c <= 0 or o + c > size for o, c in zip(offsets, counts, strict=True)
        ):
            return "lacks tiles or points past the end of the file"
    return None


def _read_page(
    page: tifffile.TiffPage,
    fh: tifffile.FileHandle,
    where: str,
    z: int,
    ys: tuple[int, int],
    xs: tuple[int, int],
    out: np.ndarray,
) -> None:
    """Decode the tiles (or strips) of ``page`` that rows ``ys`` x columns ``xs`` touch into
    ``out`` (shape (ys[1]-ys[0], xs[1]-xs[0]))."""
    height, width = page.imagelength, page.imagewidth
    if page.is_tiled:
        th, tw = page.tilelength, page.tilewidth
    else:
        th, tw = min(page.rowsperstrip or height, height), width
    across = math.ceil(width / tw)
    offsets, counts = page.dataoffsets, page.databytecounts
    decode: Callable[..., Any] = page.decode
    for ty in range(ys[0] // th, (ys[1] - 1) // th + 1):
        for tx in range(xs[0] // tw, (xs[1] - 1) // tw + 1):
            index, chunk = ty * across + tx, (z, ty, tx)
            if index >= len(offsets) or not offsets[index] or not counts[index]:
                raise CorruptChunkError(where, chunk, "tile is missing (no offset/byte count)")
            fh.seek(offsets[index])
            data = fh.read(counts[index])
            if len(data) != counts[index]:
                raise CorruptChunkError(
                    where, chunk, f"truncated: {len(data)} of {counts[index]} bytes"
                )
            try:
                segment = decode(data, index)[0]
            except Exception as err:  # zlib.error, LZMAError, TiffFileError, ValueError ...
                raise CorruptChunkError(where, chunk, f"tile fails to decode: {err}") from err
            # clip the tile to the ROI; the decoded tile must cover it
            r0, r1 = max(ys[0], ty * th), min(ys[1], (ty + 1) * th)
            c0, c1 = max(xs[0], tx * tw), min(xs[1], (tx + 1) * tw)
            tile = None if segment is None else np.asarray(segment)
            if (
                tile is None
                or tile.ndim != 4
                or tile.shape[1] < r1 - ty * th
                or tile.shape[2] < c1 - tx * tw
            ):
                raise CorruptChunkError(where, chunk, "tile decodes to too few pixels")
            out[r0 - ys[0] : r1 - ys[0], c0 - xs[0] : c1 - xs[0]] = tile[
                0, r0 - ty * th : r1 - ty * th, c0 - tx * tw : c1 - tx * tw, 0
            ]


# --- helpers -------------------------------------------------------------------------------
