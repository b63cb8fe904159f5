"""Format benchmark: the access patterns of deep learning and viewing, measured fairly.

Fairness rules: regions are a seeded random sample (never hand-picked); every format reads
the same ROIs in the same order; each measurement is repeated and reported as median and
IQR; reads are *cold* when the OS lets us drop the page cache for the files (posix_fadvise
DONTNEED, no root needed), otherwise they are labelled *warm*.

Variants on an ``s3://`` root are measured where they live (column ``storage`` = ``s3``): a
format whose reader speaks URLs (OME-Zarr over tensorstore's s3 driver) is read in place; a
format published as staged local files (TIFF, HDF5, Parquet, N5: their readers need local
files) is read the way the project reads it from S3 — downloaded into scratch and verified
against its completion marker, then read — and each repeat pays that download again (column
``io_path`` says which). There is no page cache to drop on S3: such rows say
``cache`` = ``n/a (s3)``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fib_assets.core import storage
from fib_assets.core.formats import open_volume
from fib_assets.core.formats.base import VolumeInfo
from fib_assets.core.geometry import BlockPlan, Roi

ACCESS_PATTERNS = ("sequential_scan", "random_patches", "slice_xy", "slice_xz", "slice_yz")
BENCHMARK_COLUMNS = [
    "region",
    "format",
    "access_pattern",
    "cache",
    "repeats",
    "median_s",
    "iqr_s",
    "mib_per_s",
    "items",
    "items_per_s",
    "bytes_on_disk",
    "seed",
    "storage",
    "io_path",
]
STORAGE_KINDS = ("local", "s3")
CACHE_S3 = "n/a (s3)"  # no page cache to drop for objects read over the network
# how a variant's bytes were reached
IO_LOCAL = "local file"
IO_S3_IN_PLACE = "s3 in place"  # the reader/writer speaks s3:// itself (tensorstore)
IO_S3_DOWNLOAD = "s3 download + local read"  # staged container: downloaded, verified, read
IO_S3_STAGED_UPLOAD = "s3 staged write + upload"  # written locally, uploaded, read back, marked
IO_PATHS = (IO_LOCAL, IO_S3_IN_PLACE, IO_S3_DOWNLOAD, IO_S3_STAGED_UPLOAD)


def sample_regions(regions: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded random sample of ``n`` regions (all when fewer), independent of input order."""
    pool = sorted(set(regions))
    rng = random.Random(seed)
    return sorted(rng.sample(pool, min(n, len(pool))))


def random_patch_rois(
    shape: Sequence[int], *, patch: int = 96, n: int = 16, seed: int = 0
) -> list[Roi]:
    """``n`` random cubic patches of ``patch`` voxels per side (clipped to small volumes) —
    the U-Net training read pattern."""
    rng = np.random.default_rng(seed)
    size = tuple(min(patch, s) for s in shape)
    rois = []
    for _ in range(n):
        off = tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size, strict=True))
        rois.append(Roi(off, size))  # type: ignore[arg-type]
    return rois


def slice_rois(shape: Sequence[int], axis: int, *, n: int = 4, seed: int = 0) -> list[Roi]:
    """``n`` random full planes orthogonal to ``axis`` (0: XY, 1: XZ, 2: YZ) — the viewer."""
    rng = np.random.default_rng(seed + 1000 * (axis + 1))
    rois = []
    for _ in range(n):
        off = [0, 0, 0]
        size = list(shape)
        off[axis] = int(rng.integers(0, shape[axis]))
        size[axis] = 1
        rois.append(Roi(tuple(off), tuple(size)))  # type: ignore[arg-type]
    return rois


def scan_rois(shape: Sequence[int], chunks: Sequence[int] | None) -> list[Roi]:
    """A full sequential scan in slabs of the format's chunk depth (bounded memory)."""
    depth = int(chunks[0]) if chunks else 64
    plan = BlockPlan(tuple(shape), (depth, int(shape[1]), int(shape[2])))  # type: ignore[arg-type]
    return [b.write_roi for b in plan.blocks()]


def drop_file_cache(path: Path) -> bool:
    """Ask the kernel to drop cached pages of every file under ``path``; False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    try:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Measurement:
    seconds: list[float]
    nbytes: int
    items: int
    cache: str
    io_path: str = IO_LOCAL

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def iqr(self) -> float:
        q75, q25 = np.percentile(self.seconds, [75, 25])
        return float(q75 - q25)


def storage_kind(location: str | os.PathLike[str]) -> str:
    """``"s3"`` for an object-store location, ``"local"`` for a path."""
    return "s3" if storage.is_remote(location) else "local"


def is_staged(location: str) -> bool:
    """Whether a published object-store variant was staged as local files and uploaded (its
    completion marker lists the objects): its reader needs a local copy. False for containers
    written in place (their marker carries no file list) and for local paths."""
    if not storage.is_remote(location):
        return False
    marker = storage.read_json(storage.marker_url(location))
    return bool(marker.get("files"))


def io_path_of(location: str) -> str:
    """How reads of ``location`` reach the bytes (one of :data:`IO_PATHS`)."""
    if not storage.is_remote(location):
        return IO_LOCAL
    return IO_S3_DOWNLOAD if is_staged(location) else IO_S3_IN_PLACE


def _read_rois(path: str, rois: Sequence[Roi]) -> int:
    vol = open_volume(path)
    try:
        return sum(int(vol.read(roi).nbytes) for roi in rois)
    finally:
        vol.close()


def measure_reads(
    path: str, rois: Sequence[Roi], *, repeats: int = 3, cold: bool = True
) -> Measurement:
    """Time reading every ROI (fresh reader each repeat, cache dropped first when ``cold``).

    On an object store the variant is read where it lives (see the module docstring): in
    place, or downloaded (verified against its marker) and read, the download inside the
    timed interval of every repeat; the cache is ``n/a (s3)`` whatever ``cold`` says."""
    if storage.is_remote(path):
        return _measure_remote_reads(path, rois, repeats=repeats)
    seconds = []
    nbytes = 0
    cache = "cold" if cold else "warm"
    for _ in range(repeats):
        if cold and not drop_file_cache(Path(path)):
            cache = "warm"
        t0 = time.perf_counter()
        nbytes = _read_rois(path, rois)
        seconds.append(time.perf_counter() - t0)
    return Measurement(seconds, nbytes, len(rois), cache)


def _measure_remote_reads(url: str, rois: Sequence[Roi], *, repeats: int) -> Measurement:
    io_path = io_path_of(url)
    seconds = []
    nbytes = 0
    need = storage.tree_size(url)[0] + 2**20 if io_path == IO_S3_DOWNLOAD else 0
    for _ in range(repeats):
        with storage.Staging(url, need_bytes=need, direct=io_path == IO_S3_IN_PLACE) as stage:
            t0 = time.perf_counter()
            stage.fetch()  # staged: download + sha256 against the marker (the real read path)
            nbytes = _read_rois(stage.path, rois)
            seconds.append(time.perf_counter() - t0)
    return Measurement(seconds, nbytes, len(rois), CACHE_S3, io_path)


def benchmark_variant(
    region: str,
    fmt: str,
    path: str,
    *,
    bytes_on_disk: int,
    write_seconds: Sequence[float],
    write_nbytes: int,
    seed: int,
    repeats: int = 3,
    patch: int = 96,
    n_patches: int = 16,
    cold: bool = True,
    info: VolumeInfo | None = None,
    write_io_path: str | None = None,
) -> list[dict[str, Any]]:
    """One row per access pattern (+ one for the write) for one format of one region.

    ``path`` is a local path or an ``s3://`` URL; ``info`` (shape, chunks) saves opening the
    variant when the caller already knows it (e.g. from a downloaded copy)."""
    if info is None:
        vol = open_volume(path)
        info = vol.info
        vol.close()
    shape, chunks = info.shape, info.chunks
    patterns: dict[str, list[Roi]] = {
        "sequential_scan": scan_rois(shape, chunks),
        "random_patches": random_patch_rois(shape, patch=patch, n=n_patches, seed=seed),
        "slice_xy": slice_rois(shape, 0, seed=seed),
        "slice_xz": slice_rois(shape, 1, seed=seed),
        "slice_yz": slice_rois(shape, 2, seed=seed),
    }
    rows = []
    kind = storage_kind(path)
    for name, rois in patterns.items():
        m = measure_reads(path, rois, repeats=repeats, cold=cold)
        rows.append(_row(region, fmt, name, m, bytes_on_disk, seed, kind))
    w = Measurement(list(write_seconds), write_nbytes, 1, "n/a", write_io_path or IO_LOCAL)
    rows.append(_row(region, fmt, "write", w, bytes_on_disk, seed, kind))
    return rows


def _row(
    region: str,
    fmt: str,
    pattern: str,
    m: Measurement,
    bytes_on_disk: int,
    seed: int,
    kind: str = "local",
) -> dict[str, Any]:
    med = max(m.median, 1e-9)
    return {
        "region": region,
        "format": fmt,
        "access_pattern": pattern,
        "cache": m.cache,
        "repeats": len(m.seconds),
        "median_s": m.median,
        "iqr_s": m.iqr,
        "mib_per_s": m.nbytes / 2**20 / med,
        "items": m.items,
        "items_per_s": m.items / med,
        "bytes_on_disk": int(bytes_on_disk),
        "seed": seed,
        "storage": kind,
        "io_path": m.io_path,
    }


def summary_markdown(df: pd.DataFrame) -> str:
    """Median throughput (MiB/s) per format × access pattern, over the sampled regions."""
    pivot = df.pivot_table(
        index="format", columns="access_pattern", values="mib_per_s", aggfunc="median"
    )
    cols = list(pivot.columns)
    lines = ["| format | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for fmt, row in pivot.iterrows():
        lines.append(f"| {fmt} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def plot_png(df: pd.DataFrame) -> bytes:
    """Grouped bar chart: median MiB/s per format and access pattern, IQR as error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = [p for p in (*ACCESS_PATTERNS, "write") if p in set(df["access_pattern"])]
    formats = sorted(set(df["format"]))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=80)
    width = 0.8 / max(len(formats), 1)
    for i, fmt in enumerate(formats):
        sub = df[df["format"] == fmt].groupby("access_pattern")["mib_per_s"]
        med = [float(sub.median().get(p, np.nan)) for p in patterns]
        q = sub.quantile(0.75) - sub.quantile(0.25)
        err = [float(q.get(p, 0.0)) for p in patterns]
        ax.bar(np.arange(len(patterns)) + i * width, med, width, yerr=err, label=fmt)
    ax.set_xticks(np.arange(len(patterns)) + 0.4 - width / 2, patterns, fontsize=8)
    ax.set_ylabel("MiB/s (median)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=len(formats))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def validate_table(df: pd.DataFrame, expected_rows: int) -> dict[str, Any]:
    """great-expectations 1.x suite over the benchmark table (ephemeral context, in code).

    Returns ``{"success", "evaluated", "failed": [expectation types]}``.
    """
    from fib_assets.core.tables import gx_expectations, run_suite

    e = gx_expectations()
    return run_suite(
        df,
        "format_benchmark",
        [
            e.ExpectTableColumnsToMatchSet(column_set=BENCHMARK_COLUMNS, exact_match=True),
            e.ExpectTableRowCountToEqual(value=expected_rows),
            e.ExpectCompoundColumnsToBeUnique(column_list=["region", "format", "access_pattern"]),
            e.ExpectColumnValuesToBeBetween(column="median_s", min_value=0, strict_min=True),
            e.ExpectColumnValuesToBeBetween(column="iqr_s", min_value=0),
            e.ExpectColumnValuesToBeBetween(column="mib_per_s", min_value=0, strict_min=True),
            e.ExpectColumnValuesToBeBetween(column="bytes_on_disk", min_value=1),
            e.ExpectColumnValuesToBeInSet(
                column="access_pattern", value_set=[*ACCESS_PATTERNS, "write"]
            ),
            e.ExpectColumnValuesToBeInSet(
                column="cache", value_set=["cold", "warm", "n/a", CACHE_S3]
            ),
            e.ExpectColumnValuesToBeInSet(column="storage", value_set=list(STORAGE_KINDS)),
            e.ExpectColumnValuesToBeInSet(column="io_path", value_set=list(IO_PATHS)),
            e.ExpectColumnValuesToNotBeNull(column="region"),
        ],
    )
