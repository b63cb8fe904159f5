"""Benchmark tables: which format serves large-volume deep learning best, measured fairly.

The variants are measured where they live — local files, or objects under an ``s3://``
storage root (see fib_assets.core.benchmark: in place or downloaded, ``storage``/``io_path``
columns, no cold cache on S3) — and the table is written beside them through core.tables.
"""

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fib_assets.audit import runtime_environment
from fib_assets.core import benchmark, tables
from fib_assets.core import storage as object_storage
from fib_assets.core.formats import format_module, open_volume
from fib_assets.core.formats.base import VolumeInfo
from fib_assets.core.preview import markdown_image
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.formats.assets import VARIANTS, WRITES_URLS
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource

GROUP = "benchmarks"
OWNERS = ["team:research-computing"]
TABLE_VALID = "table_valid"


class FormatBenchmarkConfig(dg.Config):
    """How the format benchmark samples and repeats (all recorded with the table)."""

    n_regions: int = Field(default=3, ge=1, description="Regions in the seeded random sample.")
    seed: int = Field(default=0, description="Seed of the region sample and of the patch ROIs.")
    repeats: int = Field(default=3, ge=1, le=20, description="Repeats per measurement.")
    patch: int = Field(default=96, ge=8, description="Edge of random 3D patches (voxels).")
    n_patches: int = Field(default=16, ge=1, description="Random patches per repeat.")
    cold: bool = Field(
        default=True,
        description="Drop the OS page cache for the files before each repeat (local files "
        "only: on an s3:// root there is no page cache to drop and rows say 'n/a (s3)').",
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "pandas"},
    code_version=code_version_of(benchmark),
    deps=[
        dg.AssetDep(f"volume_{fmt}", partition_mapping=dg.AllPartitionMapping()) for fmt in VARIANTS
    ],
    check_specs=[
        dg.AssetCheckSpec(
            TABLE_VALID,
            asset="format_benchmark",
            description="great-expectations suite: columns, value ranges, one row per region "
            "× format × access pattern.",
        )
    ],
)
def format_benchmark(
    context: dg.AssetExecutionContext, storage: StorageResource, config: FormatBenchmarkConfig
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Read throughput of every format variant for the access patterns of training (random
    96³ patches), viewing (XY/XZ/YZ planes) and bulk processing (sequential scan), plus write
    time and size, over a seeded random sample of regions; median and IQR of repeated runs,
    cold cache where the OS allows. Parquet table + Markdown + plot."""
    instance = context.instance
    ready = [
        r
        for r in instance.get_dynamic_partitions(regions.name or "regions")
        if all(_variant_location(instance, fmt, r) is not None for fmt in VARIANTS)
    ]
    if not ready:
        raise dg.Failure("no region has all format variants materialized yet")
    sample = benchmark.sample_regions(ready, config.n_regions, config.seed)
    context.log.info(f"sampled regions {sample} of {len(ready)} (seed {config.seed})")
    rows = []
    scratch_url = object_storage.join(
        storage.root, "format_benchmark", ".write-scratch", uuid.uuid4().hex[:12]
    )
    for region in sample:
        for fmt in VARIANTS:
            location = _variant_location(instance, fmt, region)
            assert location is not None
            nbytes_stored = object_storage.tree_size(location)[0]
            # the bytes the reader opens locally: the variant itself, or a verified download
            with _readable_copy(location, nbytes_stored) as local:
                info = _info(local)
                write_s, nbytes, write_io = _time_writes(
                    fmt, local, location, scratch_url, config.repeats
                )
            rows += benchmark.benchmark_variant(
                region, fmt, location, bytes_on_disk=nbytes_stored, write_seconds=write_s,
                write_nbytes=nbytes, seed=config.seed, repeats=config.repeats,
                patch=config.patch, n_patches=config.n_patches, cold=config.cold, info=info,
                write_io_path=write_io,
            )  # fmt: skip
    df = pd.DataFrame(rows, columns=benchmark.BENCHMARK_COLUMNS)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    md = benchmark.summary_markdown(df)
    png = benchmark.plot_png(df)
    written = tables.write_table(
        object_storage.join(storage.root, "format_benchmark", f"format_benchmark-{stamp}.parquet"),
        df,
        markdown=md,
        png=png,
    )
    table = written.parquet
    expected = len(sample) * len(VARIANTS) * (len(benchmark.ACCESS_PATTERNS) + 1)
    gx = benchmark.validate_table(df, expected)
    kinds = sorted(set(df["storage"]))
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": dg.MetadataValue.path(table),
            "dagster/row_count": len(df),
            "storage": kinds[0] if len(kinds) == 1 else dg.MetadataValue.json(kinds),
            "io_paths": dg.MetadataValue.json(sorted(set(df["io_path"]))),
            "regions_sampled": dg.MetadataValue.json(sample),
            "regions_available": len(ready),
            "seed": config.seed,
            "repeats": config.repeats,
            "cache": dg.MetadataValue.json(sorted(set(df["cache"]))),
            "cold_cache": "applied where the OS allows (local files)"
            if "local" in kinds
            else "not applicable: variants are read from S3 (no page cache to drop); each "
            "repeat opens a fresh reader and downloads staged formats again",
            "summary_mib_per_s": dg.MetadataValue.md(md),
            "plot": dg.MetadataValue.md(markdown_image(png, "throughput per format")),
            "environment": dg.MetadataValue.json(runtime_environment()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=TABLE_VALID,
                passed=gx["success"],
                metadata={
                    "evaluated_expectations": gx["evaluated"],
                    "failed_expectations": dg.MetadataValue.json(gx["failed"]),
                },
            )
        ],
    )


def _variant_location(instance: dg.DagsterInstance, fmt: str, region: str) -> str | None:
    """Where the latest ``volume_<fmt>`` of ``region`` was published (a local path or an
    ``s3://`` URL, from its materialization's ``dagster/uri``); None when not materialized."""
    latest = latest_materialization(instance, dg.AssetKey(f"volume_{fmt}"), region)
    return str(latest["metadata"]["dagster/uri"]) if latest else None


@contextlib.contextmanager
def _readable_copy(location: str, nbytes: int) -> Iterator[str]:
    """A location the format's reader can open: the variant itself (local, or read in place
    on S3), else a copy downloaded into bounded scratch, verified against its marker."""
    staged = benchmark.is_staged(location)
    with object_storage.Staging(location, need_bytes=nbytes + 2**20, direct=not staged) as st:
        st.fetch()
        yield st.path


def _info(location: str) -> VolumeInfo:
    vol = open_volume(location)
    try:
        return vol.info
    finally:
        vol.close()


def _time_writes(
    fmt: str, source: str, variant: str, scratch_url: str, repeats: int
) -> tuple[list[float], int, str]:
    """Re-write the variant from itself ``repeats`` times (same data, same layout) where
    variants are written and time each write: locally into a temporary folder beside it; on
    S3 through the assets' own path (in place for URL-speaking writers, else staged locally,
    uploaded and read back, marker last) under a scratch prefix that is removed afterwards.
    Returns (seconds, bytes of voxels, io path)."""
    module = format_module(fmt)
    src = open_volume(source)
    remote = object_storage.is_remote(variant)
    io_path = (
        benchmark.IO_LOCAL
        if not remote
        else benchmark.IO_S3_IN_PLACE
        if fmt in WRITES_URLS
        else benchmark.IO_S3_STAGED_UPLOAD
    )
    try:
        info = src.info
        nbytes = int(info.shape[0] * info.shape[1] * info.shape[2]) * (
            1 if info.dtype == "uint8" else 2
        )
        seconds = []
        for i in range(repeats):
            if not remote:
                with tempfile.TemporaryDirectory(dir=Path(variant).parent) as scratch:
                    plan = module.plan_write(
                        Path(scratch) / f"w{i}{module.SUFFIX}", info, chunks=info.chunks
                    )
                    t0 = time.perf_counter()
                    module.write_volume(plan, src)
                    seconds.append(time.perf_counter() - t0)
                continue
            target = object_storage.join(scratch_url, f"{fmt}-w{i}{module.SUFFIX}")
            try:
                need = 2 * nbytes + 2**20
                t0 = time.perf_counter()
                with object_storage.Staging(
                    target, need_bytes=need, direct=fmt in WRITES_URLS
                ) as stage:
                    plan = module.plan_write(stage.path, info, chunks=info.chunks)
                    module.write_volume(plan, src)
                    stage.publish({"benchmark": True})
                seconds.append(time.perf_counter() - t0)
            finally:
                object_storage.remove(scratch_url)
    finally:
        src.close()
    return seconds, nbytes, io_path
