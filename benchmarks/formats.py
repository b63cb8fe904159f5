"""Format benchmark: our writers and readers against their reference libraries, as ratios
measured in the same run on the same synthetic EM-like volume.

    .venv/bin/python benchmarks/formats.py --quick                 # ~64 MiB smoke run, < 2 min
    .venv/bin/python benchmarks/formats.py --results benchmarks/RESULTS.md   # full run

Every ratio is printed with its goal and PASS/MISS (never asserted); see benchmarks/README.md
for what each one means. Volumes are (z, y, x) uint8 voxels; sizes are MiB = 2**20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # helper modules beside this script

from em_volume import SyntheticEM  # noqa: E402
from pagecache import resident_fraction  # noqa: E402

from fib_assets.core.benchmark import drop_file_cache, random_patch_rois  # noqa: E402
from fib_assets.core.formats import format_module, open_volume  # noqa: E402
from fib_assets.core.formats.base import VolumeInfo, VolumeSource, WritePlan  # noqa: E402
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize  # noqa: E402

MIB = 2**20
GIB = 2**30
FORMATS = ("tiff", "hdf5", "zarr", "parquet", "n5")
SUFFIXES = {"tiff": ".tiff", "hdf5": ".h5", "zarr": ".ome.zarr", "parquet": ".parquet", "n5": ".n5"}
CHUNKS = (64, 64, 64)  # DESIGN.md's chunking; TIFF keeps its own default tiles (128 x 128)
PATCH = 96  # U-Net training patch edge (voxels)
TIFF_TILES = (256, 128, 64)
ZSTD_LEVEL = 3
VOXEL = VoxelSize.isotropic(8.0)

# Goals: (comparison, bound). ">=": higher is better; "<=": lower is better.
GOAL_WRITE_TS = (">=", 1.0)
GOAL_WRITE_CODEC = (">=", 0.9)
GOAL_WRITE_LIB = (">=", 0.9)
GOAL_READ_TS = (">=", 1.0)
GOAL_MEMORY = ("<=", 1.25)
GOAL_SCALING_TIME = ("<=", 1.10)
GOAL_SCALING_RSS = ("<=", 1.25)


# --- small helpers -------------------------------------------------------------------------


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def volume_shape(size_bytes: int) -> tuple[int, int, int]:
    """(z, y, x) of a uint8 volume of about ``size_bytes``: square slices whose edge is the
    largest power of two (<= 2048) leaving at least 256 slices; z a multiple of 64."""
    edge = 2048
    while edge > 64 and size_bytes // (edge * edge) < 256:
        edge //= 2
    z = max(64, size_bytes // (edge * edge) // 64 * 64)
    return (z, edge, edge)


def nbytes(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def remove(path: Path) -> None:
    """Remove a variant and whatever staging / marker directories a writer left beside it."""
    for p in [path, *path.parent.glob(f".{path.name}.*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def settle() -> None:
    """Start a timed step from a quiet machine: earlier dirty pages written, garbage freed."""
    gc.collect()
    os.sync()


def proc_status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def loadavg() -> float:
    """1-minute load average: how busy the machine was (others' processes included)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, KeyError, ValueError):
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split(":")[1] for line in f}
        ram = f"{int(info['MemTotal'].split()[0]) / 2**20:.1f} GiB"
    return {
        "nproc": str(cores()),
        "RAM": ram,
        "CPU": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "numpy",
        "zarr",
        "tensorstore",
        "h5py",
        "hdf5plugin",
        "tifffile",
        "pyarrow",
        "numcodecs",
        "xxhash",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    import h5py

    out["libhdf5"] = h5py.version.hdf5_version
    return out


# --- results -------------------------------------------------------------------------------


@dataclass
class Ratio:
    """One line of the summary table: a ratio, its goal (None: informative) and its basis."""

    name: str
    value: float
    goal: tuple[str, float] | None
    basis: str
    #: the same comparison by CPU time (user + system of all threads), when it has one: it
    #: does not change when other processes compete for the cores
    cpu: float | None = None

    def _status(self, value: float | None) -> str:
        if self.goal is None or value is None or not math.isfinite(value):
            return "info" if value is not None else "-"
        op, bound = self.goal
        ok = value >= bound if op == ">=" else value <= bound
        return "PASS" if ok else "MISS"

    @property
    def status(self) -> str:
        return self._status(self.value)

    @property
    def cpu_status(self) -> str:
        return self._status(self.cpu)

    @property
    def value_text(self) -> str:
        return _num(self.value)

    @property
    def cpu_text(self) -> str:
        return "-" if self.cpu is None else _num(self.cpu)

    @property
    def goal_text(self) -> str:
        return "-" if self.goal is None else f"{self.goal[0]} {self.goal[1]:.2f}"


def _num(value: float) -> str:
    """Three decimals, so a value just below its goal never prints as the goal itself."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


class Steps:
    """Wall time of each step and the machine's load average before and after it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        load, t0 = loadavg(), time.perf_counter()
        out = fn()
        self.rows.append((name, (time.perf_counter() - t0) / 60, load, loadavg()))
        return out


@dataclass
class Report:
    args: dict[str, Any]
    steps: Steps = field(default_factory=Steps)
    shape: tuple[int, int, int] = (0, 0, 0)
    ratios: list[Ratio] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)  # title -> markdown lines
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float,
        goal: tuple[str, float] | None,
        basis: str,
        cpu: float | None = None,
    ) -> None:
        self.ratios.append(Ratio(name, value, goal, basis, cpu))

    def table(
        self,
        title: str,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        echo: bool = True,
    ) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        self.sections[title] = lines
        if echo:
            tqdm.write(f"\n{title}\n" + "\n".join(lines))

    def ratio_lines(self) -> list[str]:
        lines = [
            "| ratio | value (wall time) | goal | status | same by CPU time | status by CPU "
            "| measured as |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.ratios:
            lines.append(
                f"| {r.name} | {r.value_text} | {r.goal_text} | {r.status} | {r.cpu_text} "
                f"| {r.cpu_status} | {r.basis} |"
            )
        return lines


def print_summary(report: Report) -> None:
    width = max(len(r.name) for r in report.ratios)
    print("\n" + "=" * (width + 50))
    print(f"{'ratio'.ljust(width)}  {'wall':>7}  {'goal':>8}  status  {'CPU':>7}  status")
    print("-" * (width + 50))
    for r in report.ratios:
        print(
            f"{r.name.ljust(width)}  {r.value_text:>7}  {r.goal_text:>8}  {r.status:<6}  "
            f"{r.cpu_text:>7}  {r.cpu_status}"
        )
    print("=" * (width + 50))
    missed = [r.name for r in report.ratios if r.status == "MISS"]
    print(f"{len(missed)} goal(s) missed" + (": " + "; ".join(missed) if missed else ""))


NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
SECTION_START, SECTION_END = "<!-- formats:start -->", "<!-- formats:end -->"


def write_results(path: Path, report: Report, elapsed: float) -> None:
    """Rewrite the formats section of ``path`` (between the formats markers; a file written
    before the markers existed: everything up to the notes' end) and keep the rest of the
    file (other benchmarks' sections) and the hand-written block between the notes markers."""
    kept = before = after = ""
    if path.is_file():
        old = path.read_text()
        if SECTION_START in old and SECTION_END in old:
            before = old[: old.index(SECTION_START)]
            after = old[old.index(SECTION_END) + len(SECTION_END) :]
            old = old[old.index(SECTION_START) : old.index(SECTION_END)]
        elif old.startswith("# Format benchmark results") and NOTES_END in old:
            after = old[old.index(NOTES_END) + len(NOTES_END) :]
        else:
            before, old = old.rstrip("\n") + "\n\n", ""
        if NOTES_START in old and NOTES_END in old:
            kept = old[old.index(NOTES_START) : old.index(NOTES_END) + len(NOTES_END)]
    a = report.args
    cmd = "`.venv/bin/python benchmarks/formats.py " + " ".join(a["argv"]) + "`"
    out = [
        "# Format benchmark results",
        "",
        f"Written by {cmd} on {datetime.date.today().isoformat()} in {elapsed / 60:.1f} min. "
        "All ratios were measured in this one run on one seeded synthetic EM-like volume "
        f"(uint8, (z, y, x) = {list(report.shape)}, {nbytes(report.shape) / MIB:.0f} MiB, "
        f"seed {a['seed']}); see `benchmarks/README.md` for what each ratio means.",
        "",
        "## Summary",
        "",
        *report.ratio_lines(),
        "",
    ]
    for title, lines in report.sections.items():
        out += [f"## {title}", "", *lines, ""]
    if report.notes:
        out += ["## Measurement notes", "", *[f"- {n}" for n in report.notes], ""]
    m, v = machine(), library_versions()
    out += ["## Machine", "", "| | |", "|---|---|", *[f"| {k} | {x} |" for k, x in m.items()], ""]
    out += ["## Library versions", "", "| package | version |", "|---|---|"]
    out += [f"| {k} | {x} |" for k, x in v.items()]
    out += [""]
    if kept:
        out += ["## Diagnosis", "", kept, ""]
    section = SECTION_START + "\n" + "\n".join(out).rstrip("\n") + "\n" + SECTION_END
    path.write_text(before + section + (after if after.strip() else "\n"))


# --- the volume ----------------------------------------------------------------------------


class MemmapSource:
    """The cached uncompressed volume (``.npy``) as a VolumeSource.

    Each read maps the file, copies the ROI and unmaps it again: a mapping kept open would pin
    the file's pages in the page cache, and the cold reference reads could not drop them.
    """

    def __init__(self, path: Path) -> None:
        self.file = path
        mm = np.load(path, mmap_mode="r")
        z, y, x = (int(s) for s in mm.shape)
        self._info = VolumeInfo((z, y, x), str(mm.dtype), VOXEL)
        del mm

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> np.ndarray:
        mm = np.load(self.file, mmap_mode="r")
        try:
            return np.array(mm[roi.to_slices()])
        finally:
            del mm


def cache_volume(source: SyntheticEM, path: Path) -> MemmapSource:
    """Write ``source`` to an uncompressed ``.npy`` in z-slabs of <= 64 MiB (bounded memory)."""
    shape = source.info.shape
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    depth = max(1, 64 * MIB // (shape[1] * shape[2]))
    for z0 in tqdm(range(0, shape[0], depth), desc="synthesize + cache volume", leave=False):
        z1 = min(z0 + depth, shape[0])
        mm[z0:z1] = source.read(Roi((z0, 0, 0), (z1 - z0, shape[1], shape[2])))
    mm.flush()
    del mm
    return MemmapSource(path)


def chunk_sample(source: MemmapSource, n: int, seed: int) -> list[np.ndarray]:
    """``n`` seeded random whole 64³ chunks (contiguous copies) of the volume."""
    shape = source.info.shape
    grid = [s // c for s, c in zip(shape, CHUNKS, strict=True)]
    rng = np.random.default_rng(seed)
    picks = rng.choice(math.prod(grid), size=min(n, math.prod(grid)), replace=False)
    out = []
    for flat in picks:
        idx = np.unravel_index(int(flat), grid)
        off = tuple(int(i) * c for i, c in zip(idx, CHUNKS, strict=True))
        out.append(np.ascontiguousarray(source.read(Roi(off, CHUNKS))))  # type: ignore[arg-type]
    return out


def measure_codec(chunks: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Single-thread zstd-3 (frame checksum on, as our Zarr codec) encode / decode MiB/s, by
    wall time and (encode) by the thread's CPU time."""
    import numcodecs

    codec = numcodecs.Zstd(level=ZSTD_LEVEL, checksum=True)
    total = sum(c.nbytes for c in chunks)
    enc_s, enc_cpu, dec_s = [], [], []
    encoded: list[bytes] = []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        encoded = [bytes(codec.encode(c)) for c in chunks]
        enc_s.append(time.perf_counter() - t0)
        enc_cpu.append(time.thread_time() - c0)
        t0 = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        dec_s.append(time.perf_counter() - t0)
    return {
        "encode_mib_s": total / MIB / median(enc_s),
        "encode_mib_s_cpu": total / MIB / median(enc_cpu),
        "decode_mib_s": total / MIB / median(dec_s),
        "ratio": total / sum(len(e) for e in encoded),
        "sample_mib": total / MIB,
    }


# --- writers: ours and the references ------------------------------------------------------


def ts_zarr_spec(path: Path, plan: WritePlan) -> dict[str, Any]:
    """tensorstore spec of the same array our Zarr writer makes (chunks, shards, zstd level,
    frame checksum, crc32c shard index), with tensorstore's default durability (fsync)."""
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(plan.source.shape),
            "data_type": "uint8",
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": list(plan.options["shards"])},
            },
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(plan.chunks),
                        "codecs": [
                            {"name": "bytes"},
                            {
                                "name": "zstd",
                                "configuration": {
                                    "level": plan.options["compression_level"],
                                    "checksum": True,
                                },
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
        },
        "store_data_equal_to_fill_value": True,
        "create": True,
        "delete_existing": True,
    }


def blocks(plan: WritePlan) -> Iterator[Roi]:
    for block in BlockPlan(plan.source.shape, plan.block_shape).blocks():
        yield block.write_roi


def reference_zarr(plan: WritePlan, source: VolumeSource, path: Path) -> None:
    """tensorstore directly: the same blocks, ``cores + 1`` block writes in flight."""
    import tensorstore as ts

    store = ts.open(ts_zarr_spec(path, plan)).result()
    pending: deque[Any] = deque()
    for roi in blocks(plan):
        pending.append(store[roi.to_slices()].write(np.ascontiguousarray(source.read(roi))))
        while len(pending) > cores():
            pending.popleft().result()
    while pending:
        pending.popleft().result()


def reference_hdf5(plan: WritePlan, source: VolumeSource, path: Path) -> None:
    """h5py directly: same chunks, zstd level (hdf5plugin), fletcher32 and blocks."""
    import h5py
    import hdf5plugin

    o = plan.options
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "volume",
            shape=plan.source.shape,
            dtype=np.uint8,
            chunks=plan.chunks,
            fletcher32=bool(o["checksum"]),
            **hdf5plugin.Zstd(clevel=int(o["compression_level"])),
        )
        for roi in blocks(plan):
            dset[roi.to_slices()] = source.read(roi)


def reference_tiff(plan: WritePlan, source: VolumeSource, path: Path) -> None:
    """tifffile directly: one little-endian BigTIFF, same tiles, codec, level and slabs."""
    import tifffile

    o = plan.options
    with tifffile.TiffWriter(path, bigtiff=True, byteorder="<") as writer:
        for roi in blocks(plan):
            writer.write(
                np.ascontiguousarray(source.read(roi)),
                photometric="minisblack",
                tile=tuple(o["tile"]),
                compression=o["compression"],
                compressionargs={"level": o["compression_level"]},
                metadata=None,
                maxworkers=cores(),  # as ours: tiles compressed in parallel
            )


REFERENCES: dict[str, tuple[str, Callable[[WritePlan, VolumeSource, Path], None]]] = {
    "zarr": ("tensorstore", reference_zarr),
    "hdf5": ("h5py", reference_hdf5),
    "tiff": ("tifffile", reference_tiff),
}


def plan_for(fmt: str, path: Path, source: Any, **options: Any) -> WritePlan:
    chunks = None if fmt == "tiff" else CHUNKS
    plan: WritePlan = format_module(fmt).plan_write(path, source.info, chunks=chunks, **options)
    return plan


def warm_up(work: Path, tables: Path) -> None:
    """One tiny untimed write and read per writer and reader, so that library start-up
    (thread pools, codec registration, first imports) is not charged to the first timed run."""
    tiny = SyntheticEM.from_tables(tables, (64, 128, 128))
    roi = Roi((0, 0, 0), (32, 32, 32))
    for fmt in FORMATS:
        path = work / f"warm-up{SUFFIXES[fmt]}"
        plan = plan_for(fmt, path, tiny)
        format_module(fmt).write_volume(plan, tiny)
        with contextlib.closing(open_volume(path)) as vol:
            vol.read(roi)
        if fmt in REFERENCES:
            ref_path = work / f"warm-up-reference{SUFFIXES[fmt]}"
            REFERENCES[fmt][1](plan, tiny, ref_path)
            remove(ref_path)
        if fmt == "zarr":
            TensorstoreReader(path).read(roi)
        remove(path)


@dataclass
class Run:
    """One timed step: wall seconds and CPU seconds (user + system, all threads of this
    process). CPU seconds do not grow when other processes compete for the cores."""

    wall: float
    cpu: float


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], Any], path: Path | None = None) -> Run:
    if path is not None:
        remove(path)
    settle()
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return Run(time.perf_counter() - t0, cpu_seconds() - c0)


def pair_ratios(ours: Sequence[Run], ref: Sequence[Run], attr: str = "wall") -> list[float]:
    """ref / ours of each repeat (the two ran back to back)."""
    return [getattr(r, attr) / getattr(o, attr) for o, r in zip(ours, ref, strict=True)]


def paired(ours: Sequence[Run], ref: Sequence[Run], attr: str = "wall") -> float:
    """Median over repeats of ref / ours (the two ran back to back, so slow drifts of the
    machine cancel); > 1 means ours is faster (or, for CPU, cheaper)."""
    return median(pair_ratios(ours, ref, attr))


def spread(ours: Sequence[Run], ref: Sequence[Run]) -> str:
    """The per-repeat wall-time ratios, so the reader sees the noise behind the median."""
    return "pairs " + " ".join(f"{v:.2f}" for v in pair_ratios(ours, ref))


def read_source_blocks(plan: WritePlan, source: VolumeSource) -> None:
    """What every writer does before encoding: read each block of ``plan`` from the source."""
    for roi in blocks(plan):
        np.ascontiguousarray(source.read(roi))


def run_writes(
    report: Report, source: MemmapSource, work: Path, repeats: int, codec: dict[str, float]
) -> dict[str, Path]:
    """Our writer vs its reference (alternating order per repeat), then Parquet and N5."""
    size = nbytes(source.info.shape)
    gib = size / GIB
    rows = []
    written: dict[str, Path] = {}
    source_runs: list[Run] = []
    for fmt in FORMATS:
        ours_path = work / f"volume{SUFFIXES[fmt]}"
        plan = plan_for(fmt, ours_path, source)
        ref = REFERENCES.get(fmt)
        ours_runs: list[Run] = []
        ref_runs: list[Run] = []
        ref_path = work / f"reference-{fmt}{SUFFIXES[fmt]}"

        def ours(plan: WritePlan = plan, fmt: str = fmt) -> None:
            format_module(fmt).write_volume(plan, source, progress=True)

        runs = repeats if ref is not None else 1  # Parquet and N5 are written for the reads
        for rep in tqdm(range(runs), desc=f"write {fmt}", leave=False):
            order = ["ours", "ref"] if rep % 2 == 0 else ["ref", "ours"]
            for who in order:
                if who == "ours":
                    ours_runs.append(timed(ours, ours_path))
                elif ref is not None:
                    ref_runs.append(
                        timed(lambda fn=ref[1], p=plan, out=ref_path: fn(p, source, out), ref_path)
                    )
            if fmt == "zarr":  # the source reads inside every write, timed between them
                source_runs.append(timed(lambda p=plan: read_source_blocks(p, source)))
        written[fmt] = ours_path
        on_disk = tree_bytes(ours_path)
        ours_mib = size / MIB / median([r.wall for r in ours_runs])
        ours_cpu = median([r.cpu for r in ours_runs]) / gib
        rows.append(
            [
                fmt,
                "ours",
                f"{ours_mib:.1f}",
                f"{ours_cpu:.1f}",
                f"{size / on_disk:.2f}",
                describe_plan(plan),
                fmt_runs(ours_runs),
            ]
        )
        if ref is not None:
            ref_mib = size / MIB / median([r.wall for r in ref_runs])
            ref_cpu = median([r.cpu for r in ref_runs]) / gib
            rows.append(
                [
                    fmt,
                    ref[0],
                    f"{ref_mib:.1f}",
                    f"{ref_cpu:.1f}",
                    f"{size / tree_bytes(ref_path):.2f}",
                    "same",
                    fmt_runs(ref_runs),
                ]
            )
            remove(ref_path)
            goal = GOAL_WRITE_TS if fmt == "zarr" else GOAL_WRITE_LIB
            report.add(
                f"{fmt} write: ours / {ref[0]}",
                paired(ours_runs, ref_runs),
                goal,
                f"paired ratios (median of {len(ours_runs)}, {spread(ours_runs, ref_runs)}); "
                f"MiB/s {ours_mib:.1f} / {ref_mib:.1f}; CPU-s per GiB {ours_cpu:.1f} / "
                f"{ref_cpu:.1f}",
                cpu=paired(ours_runs, ref_runs, "cpu"),
            )
        if fmt == "zarr":
            add_codec_limit(report, codec, size, ours_runs, ref_runs, source_runs)
    report.table(
        "Writes",
        [
            "format",
            "writer",
            "MiB/s (median)",
            "CPU-s per GiB",
            "compression",
            "layout",
            "runs: wall s (CPU s)",
        ],
        rows,
    )
    return written


def add_codec_limit(
    report: Report,
    codec: dict[str, float],
    size: int,
    ours: Sequence[Run],
    ref: Sequence[Run],
    source: Sequence[Run],
) -> None:
    """Zarr writes against the codec limit (``cores`` x single-thread zstd-3 encode MiB/s; by
    CPU: zstd-3's CPU-s per GiB): as measured, and with the source reads (every writer's
    first step, timed alone in the same run between the writes) taken out, because the limit
    is measured on chunks already in memory. tensorstore's own ratio is beside ours."""
    gib = size / GIB
    limit = cores() * codec["encode_mib_s"]
    codec_cpu = 1024 / codec["encode_mib_s_cpu"]
    src_wall = median([r.wall for r in source])
    src_cpu = median([r.cpu for r in source])
    for who, runs, goal in (("ours", ours, GOAL_WRITE_CODEC), ("tensorstore", ref, None)):
        wall, cpu = median([r.wall for r in runs]), median([r.cpu for r in runs])
        report.add(
            f"zarr write: {who} / codec limit",
            size / MIB / wall / limit,
            goal,
            f"{size / MIB / wall:.1f} / ({cores()} x {codec['encode_mib_s']:.1f}) MiB/s; "
            f"CPU-s per GiB {codec_cpu:.1f} (zstd-3 alone) / {cpu / gib:.1f}",
            cpu=codec_cpu / (cpu / gib),
        )
        report.add(
            f"zarr write without source reads: {who} / codec limit",
            size / MIB / (wall - src_wall) / limit,
            goal,
            f"source reads {src_wall / gib:.2f} s/GiB ({src_cpu / gib:.2f} CPU-s/GiB, median "
            f"of {len(source)}) subtracted from {wall / gib:.2f} s/GiB ({cpu / gib:.2f} CPU-s)",
            cpu=codec_cpu / ((cpu - src_cpu) / gib),
        )


def describe_plan(plan: WritePlan) -> str:
    o = plan.options
    bits = [
        f"chunks {'x'.join(map(str, plan.chunks))}",
        f"block {'x'.join(map(str, plan.block_shape))}",
    ]
    if "shards" in o:
        bits.append(f"shards {'x'.join(map(str, o['shards']))}")
    if o.get("codec") or o.get("compression"):
        level = o.get("compression_level")
        bits.append(f"{o.get('compression') or o.get('codec')}" + (f"-{level}" if level else ""))
    if o.get("checksum"):
        bits.append("fletcher32")
    return ", ".join(bits)


def fmt_runs(runs: Sequence[Run]) -> str:
    return " ".join(f"{r.wall:.2f} ({r.cpu:.2f})" for r in runs)


# --- reads ---------------------------------------------------------------------------------


class MemmapReader:
    def __init__(self, path: Path) -> None:
        self._mm = np.load(path, mmap_mode="r")

    def read(self, roi: Roi) -> np.ndarray:
        return np.array(self._mm[roi.to_slices()])

    def close(self) -> None:
        del self._mm


class TensorstoreReader:
    """Level s0 of a Zarr variant opened with tensorstore directly (default context)."""

    def __init__(self, path: Path) -> None:
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "s0")}}
        self._store = ts.open(spec, read=True).result()

    def read(self, roi: Roi) -> np.ndarray:
        return np.asarray(self._store[roi.to_slices()].read().result())

    def close(self) -> None:
        pass


@dataclass
class ReadTarget:
    name: str
    path: Path
    open: Callable[[], Any]
    runs: list[Run] = field(default_factory=list)
    open_runs: list[Run] = field(default_factory=list)
    resident: list[float] = field(default_factory=list)
    cold: bool = True


def read_all(reader: Any, rois: Sequence[Roi]) -> None:
    try:
        for roi in rois:
            reader.read(roi)
    finally:
        reader.close()


def time_reads(targets: Sequence[ReadTarget], rois: Sequence[Roi], repeats: int, desc: str) -> None:
    """Each repeat reads every ROI with a fresh reader per target, page cache dropped first;
    the order of targets rotates per repeat so no target always runs first. Opening the
    reader is timed apart (``open_runs``): it happens once per reader, not per patch."""
    for rep in tqdm(range(repeats), desc=desc, leave=False):
        k = rep % len(targets)
        for t in [*targets[k:], *targets[:k]]:
            time_read(t, rois)


def time_read(t: ReadTarget, rois: Sequence[Roi]) -> None:
    t.cold = drop_file_cache(t.path) and t.cold
    frac = resident_fraction(t.path)
    if frac is not None:
        t.resident.append(frac)
    opened: list[Any] = []
    t.open_runs.append(timed(lambda: opened.append(t.open())))
    t.runs.append(timed(lambda: read_all(opened[0], rois)))


def time_pair(a: ReadTarget, b: ReadTarget, rois: Sequence[Roi], repeats: int) -> None:
    """``a`` and ``b`` back to back, alternating which goes first, ``repeats`` times (their
    runs from :func:`time_reads` are replaced: only adjacent runs are paired)."""
    for t in (a, b):
        t.runs, t.open_runs = [], []
    for rep in tqdm(range(repeats), desc=f"{a.name} vs {b.name}", leave=False):
        for t in (a, b) if rep % 2 == 0 else (b, a):
            time_read(t, rois)


def cache_label(t: ReadTarget) -> str:
    if not t.cold:
        return "warm (page cache could not be dropped)"
    if t.resident:
        return f"cold ({100 * max(t.resident):.0f} % resident at start)"
    return "cold (not verified)"


def check_reads(
    targets: Sequence[ReadTarget], reference: MemmapSource, rois: Sequence[Roi]
) -> list[str]:
    """Names of targets whose voxels differ from the cached volume on the first ROIs."""
    bad = []
    for t in targets:
        reader = t.open()
        try:
            for roi in rois[:4]:
                if not np.array_equal(reader.read(roi), reference.read(roi)):
                    bad.append(t.name)
                    break
        finally:
            reader.close()
    return bad


def run_reads(
    report: Report,
    source: MemmapSource,
    written: dict[str, Path],
    rois: Sequence[Roi],
    repeats: int,
) -> None:
    targets = [ReadTarget("memmap (uncompressed)", source.file, lambda: MemmapReader(source.file))]
    for fmt in FORMATS:
        targets.append(ReadTarget(fmt, written[fmt], lambda p=written[fmt]: open_volume(p)))
    targets.append(
        ReadTarget(
            "zarr via tensorstore", written["zarr"], lambda: TensorstoreReader(written["zarr"])
        )
    )
    time_reads(targets, rois, repeats, f"random {PATCH}³ patch reads")
    by_name = {t.name: t for t in targets}
    ours, ts_target = by_name["zarr"], by_name["zarr via tensorstore"]
    time_pair(ours, ts_target, rois, max(5, 2 * repeats))  # the goal's pair: more, adjacent
    bad = check_reads(targets[1:], source, rois)
    per_s = {t.name: len(rois) / median([r.wall for r in t.runs]) for t in targets}
    patch_mib = PATCH**3 / MIB
    rows = []
    for t in targets:
        rows.append(
            [
                t.name,
                f"{per_s[t.name]:.1f}",
                f"{per_s[t.name] * patch_mib:.1f}",
                cache_label(t),
                "MISMATCH" if t.name in bad else "ok",
                f"{1e3 * median([r.wall for r in t.open_runs]):.1f}",
                fmt_runs(t.runs),
            ]
        )
    report.table(
        f"Random {PATCH}³ patch reads ({len(rois)} patches per run, fresh reader per run)",
        [
            "reader",
            "patches/s",
            "MiB/s",
            "cache",
            "voxels",
            "open ms (not in patches/s)",
            "runs: wall s (CPU s)",
        ],
        rows,
    )
    mm = per_s["memmap (uncompressed)"]
    for fmt in FORMATS:
        report.add(
            f"{fmt} patch reads / memmap",
            per_s[fmt] / mm,
            None,
            f"{per_s[fmt]:.1f} / {mm:.1f} patches/s",
        )
    ts_rate = per_s["zarr via tensorstore"]
    report.add(
        "zarr patch reads: ours / tensorstore",
        paired(ours.runs, ts_target.runs),
        GOAL_READ_TS,
        f"paired ratios (median of {len(ours.runs)} adjacent runs, "
        f"{spread(ours.runs, ts_target.runs)}); patches/s {per_s['zarr']:.1f} / {ts_rate:.1f}",
        cpu=paired(ours.runs, ts_target.runs, "cpu"),
    )
    for name in bad:
        report.notes.append(f"{name}: patch voxels differ from the source volume")


def amplification(rois: Sequence[Roi], chunk: int | Sequence[int], shape: Sequence[int]) -> float:
    """Bytes decoded / bytes requested: whole chunks (clipped to the volume) per ROI."""
    edges = (chunk,) * 3 if isinstance(chunk, int) else tuple(chunk)
    decoded = requested = 0
    for roi in rois:
        n = 1
        for o, e, s, chunk in zip(roi.offset, roi.end, shape, edges, strict=True):
            lo, hi = o // chunk * chunk, min(-(-e // chunk) * chunk, s)
            n *= hi - lo
        decoded += n
        requested += roi.size
    return decoded / requested


def run_chunk_tradeoff(
    report: Report, source: MemmapSource, work: Path, rois: Sequence[Roi], repeats: int
) -> None:
    """Zarr with 32³, 64³ and 128³ chunks (shards 256³ throughout): write vs read cost."""
    zarr_mod = format_module("zarr")
    size = nbytes(source.info.shape)
    shards = tuple(min(256, s) for s in source.info.shape)
    rows = []
    targets = []
    writes = {}
    for edge in (32, 64, 128):
        path = work / f"chunks{edge}.ome.zarr"
        plan = zarr_mod.plan_write(path, source.info, chunks=(edge,) * 3, shards=shards)
        run = timed(lambda p=plan: zarr_mod.write_volume(p, source, progress=True), path)
        writes[edge] = (size / MIB / run.wall, run.cpu / (size / GIB), size / tree_bytes(path))
        targets.append(ReadTarget(f"{edge}³", path, lambda p=path: open_volume(p)))
    time_reads(targets, rois, repeats, "chunk trade-off reads")
    for edge, t in zip((32, 64, 128), targets, strict=True):
        amp = amplification(rois, edge, source.info.shape)
        rate = len(rois) / median([r.wall for r in t.runs])
        rows.append(
            [
                f"{edge}³",
                f"{writes[edge][0]:.1f}",
                f"{writes[edge][1]:.1f}",
                f"{writes[edge][2]:.2f}",
                f"{amp:.2f}",
                f"{rate:.1f}",
                cache_label(t),
            ]
        )
        report.add(f"zarr {edge}³ chunks: write MiB/s", writes[edge][0], None, "ours")
        report.add(
            f"zarr {edge}³ chunks: read amplification",
            amp,
            None,
            f"decoded / requested bytes, {PATCH}³ patches",
        )
        remove(t.path)
    report.table(
        f"Zarr chunk size trade-off (shards {'x'.join(map(str, shards))}, zstd-3)",
        [
            "chunks",
            "write MiB/s",
            "write CPU-s per GiB",
            "compression",
            f"read amplification ({PATCH}³)",
            "patches/s",
            "cache",
        ],
        rows,
    )


def run_tiff_tiles(
    report: Report, source: MemmapSource, work: Path, rois: Sequence[Roi], repeats: int
) -> None:
    """BigTIFF pages in 256², 128² and 64² tiles (zlib-1): a patch decodes only the tiles it
    touches, so smaller tiles read less, at some cost in write speed and size."""
    tiff_mod = format_module("tiff")
    size = nbytes(source.info.shape)
    rows = []
    targets = []
    writes = {}
    for edge in TIFF_TILES:
        path = work / f"tiles{edge}.tiff"
        plan = tiff_mod.plan_write(path, source.info, chunks=(64, edge, edge))
        run = timed(lambda p=plan: tiff_mod.write_volume(p, source, progress=True), path)
        writes[edge] = (size / MIB / run.wall, run.cpu / (size / GIB), size / tree_bytes(path))
        targets.append(ReadTarget(f"{edge}²", path, lambda p=path: open_volume(p)))
    time_reads(targets, rois, repeats, "tiff tile trade-off reads")
    default = format_module("tiff").DEFAULT_CHUNKS[1]
    for edge, t in zip(TIFF_TILES, targets, strict=True):
        amp = amplification(rois, (1, edge, edge), source.info.shape)
        rate = len(rois) / median([r.wall for r in t.runs])
        cpu = median([r.cpu for r in t.runs])
        rows.append(
            [
                f"{edge}²" + (" (default)" if edge == default else ""),
                f"{writes[edge][0]:.1f}",
                f"{writes[edge][1]:.1f}",
                f"{writes[edge][2]:.2f}",
                f"{amp:.2f}",
                f"{rate:.1f}",
                f"{1e3 * cpu / len(rois):.1f}",
                cache_label(t),
            ]
        )
        report.add(f"tiff {edge}² tiles: patches/s", rate, None, f"read amplification {amp:.2f}")
        remove(t.path)
    report.table(
        f"TIFF tile size trade-off (BigTIFF, zlib-1, random {PATCH}³ patches)",
        [
            "tiles",
            "write MiB/s",
            "write CPU-s per GiB",
            "compression",
            f"read amplification ({PATCH}³)",
            "patches/s",
            "CPU ms per patch",
            "cache",
        ],
        rows,
    )


def run_tiff_codec(report: Report, source: MemmapSource) -> None:
    """TIFF page compression on a slab of the volume, one thread: zlib levels 1 and 6 (our
    default and tifffile's), in the TIFF writer's default tiles."""
    import io

    import tifffile

    shape = source.info.shape
    depth = max(1, min(shape[0], 32 * MIB // (shape[1] * shape[2])))
    slab = source.read(Roi((0, 0, 0), (depth, shape[1], shape[2])))
    tile = format_module("tiff").DEFAULT_CHUNKS[1:]
    rows = []
    for name, compression, level in (("zlib-1", "zlib", 1), ("zlib-6", "zlib", 6)):
        buf = io.BytesIO()
        t0, c0 = time.perf_counter(), time.thread_time()
        with tifffile.TiffWriter(buf, bigtiff=True) as writer:
            for page in slab:
                writer.write(
                    page,
                    photometric="minisblack",
                    tile=tile,
                    compression=compression,
                    compressionargs={"level": level},
                    maxworkers=1,
                    metadata=None,
                )
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        rows.append(
            [
                name,
                f"{slab.nbytes / MIB / wall:.1f}",
                f"{slab.nbytes / MIB / cpu:.1f}",
                f"{slab.nbytes / len(buf.getvalue()):.3f}",
            ]
        )
        report.add(
            f"tiff {name}: compression ratio",
            slab.nbytes / len(buf.getvalue()),
            None,
            f"{slab.nbytes / MIB / cpu:.1f} MiB/s per thread (CPU time)",
        )
    report.table(
        f"TIFF compression trade-off ({depth} slices, {tile[0]}x{tile[1]} tiles, one thread)",
        ["codec", "MiB/s (wall)", "MiB/s (CPU time)", "compression"],
        rows,
    )


# --- conversions in a child process: memory and scaling ------------------------------------


def child_main(spec: dict[str, Any]) -> None:
    """Convert a lazily synthesized volume; print one JSON line with time and memory."""
    source = SyntheticEM.from_tables(Path(spec["tables"]), spec["shape"])
    fmt = spec["format"]
    module = format_module(fmt)
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec["plan"].items()}
    plan = module.plan_write(spec["path"], source.info, **options)
    source.read(Roi((0, 0, 0), (1, 1, 1)))
    if spec.get("unbounded_malloc"):
        # diagnostic: glibc's default (dynamic mmap threshold), as before the writers fixed it
        import fib_assets.core.formats.base as base

        base._allocator_bounded = False
    gc.collect()
    rss0 = proc_status_kib("VmRSS")
    reset = reset_peak_rss()
    hwm0 = proc_status_kib("VmHWM")
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = module.write_volume(plan, source, progress=spec["progress"])
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - c0,
        "rss_before_kib": rss0,
        "hwm_at_start_kib": hwm0,
        "hwm_kib": proc_status_kib("VmHWM"),
        "peak_reset": reset,
        "bytes_on_disk": result.bytes_on_disk,
        "block_shape": list(plan.block_shape),
        "plan": describe_plan(plan),
    }
    print(json.dumps(out), flush=True)


def run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    settle()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child conversion {spec['format']} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def blocks_in_memory() -> dict[str, float]:
    """Each writer's documented peak memory, in blocks (see its ``write_volume`` docstring):
    Zarr holds FIXED_BLOCKS plus IN_FLIGHT_BLOCKS per block in flight; Parquet and N5 one
    block plus a few chunks per core (counted as a quarter block)."""
    zarr_mod = format_module("zarr")
    return {
        "zarr": zarr_mod.FIXED_BLOCKS + zarr_mod.IN_FLIGHT_BLOCKS * zarr_mod.PIPELINE_DEPTH,
        "hdf5": 1,
        "tiff": 1,
        "parquet": 1.25,
        "n5": 1.25,
    }


def block_for_budget(fmt: str, shape: Sequence[int], budget: int) -> tuple[int, int, int]:
    """The largest block whose documented peak (blocks in memory x block bytes) fits ``budget``:
    z-slabs for TIFF and HDF5 (their natural unit), else chunk multiples grown x, y, z."""
    per_block = int(budget // blocks_in_memory()[fmt])
    z, y, x = (int(s) for s in shape)
    if fmt == "tiff":
        return (max(1, min(z, per_block // (y * x))), y, x)
    if fmt == "hdf5":
        from fib_assets.core.formats.hdf5 import default_block_shape

        return default_block_shape(shape, CHUNKS, 1, budget=per_block)
    block = list(CHUNKS)
    for axis in itertools.cycle((2, 1, 0)):
        grown = list(block)
        grown[axis] *= 2
        if grown[axis] > shape[axis] or math.prod(grown) > per_block:
            break
        block = grown
    return (block[0], block[1], block[2])


def run_memory(
    report: Report, tables: Path, work: Path, budget_mib: int, diagnose: bool = True
) -> None:
    """Convert a volume 4x the budget per format in a child process; ``diagnose`` reruns each
    with glibc's default dynamic mmap threshold (what :func:`base.bound_allocator_retention`
    saves, and what it costs in CPU)."""
    budget = budget_mib * MIB
    shape = volume_shape(4 * budget)
    rows = []
    for fmt in tqdm(FORMATS, desc=f"memory: convert {4 * budget_mib} MiB in child", leave=False):
        path = work / f"memory{SUFFIXES[fmt]}"
        block = block_for_budget(fmt, shape, budget)
        plan: dict[str, Any] = {"block_shape": list(block)}
        if fmt != "tiff":
            plan["chunks"] = list(CHUNKS)
        if fmt == "zarr":
            plan["memory_budget"] = budget  # bounds the blocks in flight
        spec = {
            "tables": str(tables),
            "shape": list(shape),
            "format": fmt,
            "path": str(path),
            "plan": plan,
            "progress": False,
        }
        r = run_child(spec)
        remove(path)
        peak = (r["hwm_kib"] - r["rss_before_kib"]) * 1024
        gib = nbytes(shape) / GIB
        unbounded_text = "-"
        if diagnose:
            # glibc's defaults: dynamic threshold (see child_main) and 8 x cores arenas
            u = run_child(
                {**spec, "unbounded_malloc": True}, {"MALLOC_ARENA_MAX": str(8 * cores())}
            )
            remove(path)
            unbounded_text = (
                f"{(u['hwm_kib'] - u['rss_before_kib']) / 1024:.1f} "
                f"({u['cpu_seconds'] / gib:.1f} CPU-s/GiB)"
            )
        block_mib = nbytes(r["block_shape"]) / MIB
        rows.append(
            [
                fmt,
                r["plan"],
                f"{blocks_in_memory()[fmt]:g} x {block_mib:.1f}",
                f"{peak / MIB:.1f}",
                f"{peak / budget:.2f}",
                f"{r['cpu_seconds'] / gib:.1f}",
                unbounded_text,
                f"{r['rss_before_kib'] / 1024:.0f}",
                "yes" if r["peak_reset"] else "no (peak may include start-up)",
            ]
        )
        report.add(
            f"{fmt} peak RSS / budget ({budget_mib} MiB)",
            peak / budget,
            GOAL_MEMORY,
            f"{peak / MIB:.1f} MiB above the pre-conversion RSS",
        )
    report.table(
        f"Peak memory converting {nbytes(shape) / MIB:.0f} MiB ({list(shape)}) with a "
        f"{budget_mib} MiB budget (child process, lazily synthesized source)",
        [
            "format",
            "plan",
            "documented peak (blocks x MiB)",
            "peak RSS - RSS before (MiB)",
            "/ budget",
            "CPU-s/GiB",
            "same with glibc's dynamic mmap threshold: MiB (CPU-s/GiB)",
            "RSS before (MiB)",
            "VmHWM reset",
        ],
        rows,
    )


def scaling_shapes(sizes_gib: Sequence[float]) -> list[tuple[int, int, int]]:
    """Same (y, x) for every size, z grows: blocks look alike, only their number changes."""
    edge = volume_shape(int(min(sizes_gib) * GIB))[1]
    return [(max(64, int(g * GIB) // (edge * edge) // 64 * 64), edge, edge) for g in sizes_gib]


def run_scaling(report: Report, tables: Path, work: Path, sizes_gib: Sequence[float]) -> None:
    rows = []
    per_gib: list[float] = []
    cpu_per_gib: list[float] = []
    peaks: list[float] = []
    for shape in scaling_shapes(sizes_gib):
        gib = nbytes(shape) / GIB
        path = work / "scaling.ome.zarr"
        tqdm.write(f"scaling: converting {gib:g} GiB {list(shape)} to Zarr in a child process")
        r = run_child(
            {
                "tables": str(tables),
                "shape": list(shape),
                "format": "zarr",
                "path": str(path),
                "plan": {"chunks": list(CHUNKS)},
                "progress": True,
            }
        )
        remove(path)
        peak = (r["hwm_kib"] - r["rss_before_kib"]) / 1024
        per_gib.append(r["seconds"] / gib)
        cpu_per_gib.append(r["cpu_seconds"] / gib)
        peaks.append(peak)
        rows.append(
            [
                f"{gib:g}",
                "x".join(map(str, shape)),
                f"{r['seconds']:.1f}",
                f"{r['seconds'] / gib:.1f}",
                f"{r['cpu_seconds'] / gib:.1f}",
                f"{nbytes(shape) / MIB / r['seconds']:.1f}",
                f"{peak:.1f}",
                f"{nbytes(shape) / r['bytes_on_disk']:.2f}",
                f"{loadavg():.1f}",
            ]
        )
    report.table(
        "Scaling: Zarr conversion of lazily synthesized volumes (child process each)",
        [
            "GiB",
            "shape (z, y, x)",
            "seconds",
            "s/GiB",
            "CPU-s/GiB",
            "MiB/s",
            "peak RSS (MiB)",
            "compression",
            "load avg (1 min) after",
        ],
        rows,
    )
    report.add(
        "scaling: s/GiB max / min",
        max(per_gib) / min(per_gib),
        GOAL_SCALING_TIME,
        " / ".join(f"{v:.1f}" for v in per_gib) + " s/GiB",
    )
    report.add(
        "scaling: CPU-s/GiB max / min",
        max(cpu_per_gib) / min(cpu_per_gib),
        None,
        " / ".join(f"{v:.1f}" for v in cpu_per_gib) + " CPU-s/GiB (load-independent)",
    )
    report.add(
        "scaling: peak RSS max / min",
        max(peaks) / min(peaks),
        GOAL_SCALING_RSS,
        " / ".join(f"{v:.0f}" for v in peaks) + " MiB",
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--size-mib", type=int, default=None, help="volume size (default 512; 64 quick)")
    p.add_argument("--quick", action="store_true", help="~64 MiB smoke run (< 2 min)")
    p.add_argument(
        "--scaling",
        default=None,
        help="comma-separated GiB sizes for the scaling run (default 1,4,16; quick 1/32,1/16,1/8;"
        " 'none' skips it)",
    )
    p.add_argument(
        "--budget-mib",
        type=int,
        default=None,
        help="memory budget; the memory test converts 4x this (default 64; quick 16)",
    )
    p.add_argument("--repeats", type=int, default=None, help="runs per measurement (5; quick 1)")
    p.add_argument("--patches", type=int, default=None, help="patches per read run (32; quick 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the run's temp directory is made (default /tmp); removed at the end",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--results", type=Path, default=None, help="rewrite this results file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    if args.size_mib is None:
        args.size_mib = 64 if q else 512
    if args.budget_mib is None:
        args.budget_mib = 16 if q else 64
    if args.repeats is None:
        args.repeats = 1 if q else 5
    if args.patches is None:
        args.patches = 8 if q else 32
    if args.scaling is None:
        args.scaling = "0.03125,0.0625,0.125" if q else "1,4,16"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0
    started = time.perf_counter()
    report = Report(args={"argv": argv, "seed": args.seed})
    sizes = [] if args.scaling == "none" else [float(s) for s in args.scaling.split(",") if s]

    parent = Path(args.workdir) if args.workdir is not None else Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fib-formats-bench-", dir=parent))
    try:
        shape = volume_shape(args.size_mib * MIB)
        report.shape = shape
        print(f"work directory {work}; volume {list(shape)} uint8 ({nbytes(shape) / MIB:.0f} MiB)")
        synth = SyntheticEM(shape, seed=args.seed, voxel_size=VOXEL)
        tables = work / "tables.npz"
        synth.save_tables(tables)
        load = loadavg()
        if load > cores() / 2:
            print(
                f"warning: load average {load:.1f} on {cores()} cores: other processes compete "
                "for the CPU; wall-time ratios will be noisy (CPU-time ratios are not affected)"
            )
        source = cache_volume(synth, work / "volume.npy")
        n_chunks = max(16, min(256, nbytes(shape) // nbytes(CHUNKS) // 2))
        codec = measure_codec(chunk_sample(source, n_chunks, args.seed), max(args.repeats, 2))
        report.table(
            "Codec limit (single thread, numcodecs Zstd level 3 with frame checksum)",
            [
                "sample",
                "encode MiB/s",
                "encode MiB/s by CPU time",
                "decode MiB/s",
                "compression",
                "cores",
                "limit MiB/s",
            ],
            [
                [
                    f"{codec['sample_mib']:.0f} MiB of random 64³ chunks",
                    f"{codec['encode_mib_s']:.1f}",
                    f"{codec['encode_mib_s_cpu']:.1f}",
                    f"{codec['decode_mib_s']:.1f}",
                    f"{codec['ratio']:.2f}",
                    str(cores()),
                    f"{cores() * codec['encode_mib_s']:.1f}",
                ]
            ],
        )
        steps = report.steps
        steps.step("warm-up", lambda: warm_up(work, tables))
        written = steps.step(
            "writes", lambda: run_writes(report, source, work, args.repeats, codec)
        )
        rois = random_patch_rois(shape, patch=PATCH, n=args.patches, seed=args.seed)
        steps.step("reads", lambda: run_reads(report, source, written, rois, args.repeats))
        for path in written.values():
            remove(path)
        steps.step("tiff codec", lambda: run_tiff_codec(report, source))
        steps.step("tiff tiles", lambda: run_tiff_tiles(report, source, work, rois, args.repeats))
        steps.step(
            "chunk trade-off",
            lambda: run_chunk_tradeoff(report, source, work, rois, args.repeats),
        )
        steps.step(
            "memory",
            lambda: run_memory(report, tables, work, args.budget_mib, diagnose=not args.quick),
        )
        if sizes:
            steps.step("scaling", lambda: run_scaling(report, tables, work, sizes))
        report.table(
            "Run log",
            ["step", "minutes", "load avg (1 min) at start", "at end"],
            [[n, f"{m:.1f}", f"{a:.1f}", f"{e:.1f}"] for n, m, a, e in steps.rows],
            echo=False,
        )
        report.notes += [
            "Writes read the same memory-mapped uncompressed volume (in the page cache) and "
            "start after `sync`; each pair alternates which writer runs first.",
            "Reads drop the files' page cache first (posix_fadvise DONTNEED, checked with "
            "mincore); on a virtual machine the host may still cache the disk.",
            f"{cores()} cores; ratios are medians of {args.repeats} run(s).",
        ]
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report)
    elapsed = time.perf_counter() - started
    print(f"finished in {elapsed / 60:.1f} min")
    if args.results is not None:
        write_results(args.results, report, elapsed)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
