"""Benchmark tables: which format serves large-volume deep learning best, measured fairly."""

import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fib_assets.audit import runtime_environment
from fib_assets.core import benchmark
from fib_assets.core.blockwise import atomic_write_bytes
from fib_assets.core.formats import format_module, open_volume
from fib_assets.core.preview import markdown_image
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.formats.assets import VARIANTS, variant_path
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
        default=True, description="Drop the OS page cache for the files before each repeat."
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
        if all(variant_path(instance, fmt, r) is not None for fmt in VARIANTS)
    ]
    if not ready:
        raise dg.Failure("no region has all format variants materialized yet")
    sample = benchmark.sample_regions(ready, config.n_regions, config.seed)
    context.log.info(f"sampled regions {sample} of {len(ready)} (seed {config.seed})")
    rows = []
    for region in sample:
        for fmt in VARIANTS:
            path = variant_path(instance, fmt, region)
            assert path is not None
            write_s, nbytes = _time_writes(fmt, path, config.repeats)
            size = sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())
            rows += benchmark.benchmark_variant(
                region, fmt, str(path), bytes_on_disk=size, write_seconds=write_s,
                write_nbytes=nbytes, seed=config.seed, repeats=config.repeats,
                patch=config.patch, n_patches=config.n_patches, cold=config.cold,
            )  # fmt: skip
    df = pd.DataFrame(rows, columns=benchmark.BENCHMARK_COLUMNS)
    out = Path(storage.root) / "format_benchmark"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    table = out / f"format_benchmark-{stamp}.parquet"
    tmp = table.with_name("." + table.name + ".tmp")
    df.to_parquet(tmp)
    tmp.replace(table)
    md = benchmark.summary_markdown(df)
    atomic_write_bytes(table.with_suffix(".md"), md.encode())
    png = benchmark.plot_png(df)
    expected = len(sample) * len(VARIANTS) * (len(benchmark.ACCESS_PATTERNS) + 1)
    gx = benchmark.validate_table(df, expected)
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": dg.MetadataValue.path(str(table)),
            "dagster/row_count": len(df),
            "regions_sampled": dg.MetadataValue.json(sample),
            "regions_available": len(ready),
            "seed": config.seed,
            "repeats": config.repeats,
            "cache": dg.MetadataValue.json(sorted(set(df["cache"]))),
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


def _time_writes(fmt: str, variant: Path, repeats: int) -> tuple[list[float], int]:
    """Re-write the variant from itself into a scratch folder ``repeats`` times (same data,
    same layout) and time each write."""
    module = format_module(fmt)
    src = open_volume(variant)
    try:
        info = src.info
        nbytes = int(info.shape[0] * info.shape[1] * info.shape[2]) * (
            1 if info.dtype == "uint8" else 2
        )
        seconds = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory(dir=variant.parent) as scratch:
                plan = module.plan_write(
                    Path(scratch) / f"w{i}{module.SUFFIX}", info, chunks=info.chunks
                )
                t0 = time.perf_counter()
                module.write_volume(plan, src)
                seconds.append(time.perf_counter() - t0)
    finally:
        src.close()
    return seconds, nbytes
