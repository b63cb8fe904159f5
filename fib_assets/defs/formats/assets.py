"""Format variants of each region's canonical volume: TIFF, HDF5, Zarr, Parquet, N5.

One factory builds all five assets, so every variant is planned, written, verified and
described the same way; only the format module differs.
"""

import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

import fib_assets.core.formats.canonical as canonical_module
import fib_assets.core.formats.verify as verify_module
from fib_assets.audit import runtime_environment, upstream_provenance
from fib_assets.core.blockwise import atomic_write_json, fingerprint
from fib_assets.core.formats import format_module
from fib_assets.core.formats.canonical import CanonicalSource
from fib_assets.core.formats.verify import verify_same_voxels
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.acquisitions.assets import raw_volume
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource

GROUP = "formats"
OWNERS = ["team:curation", "team:research-computing"]
DECODES_TO_CANONICAL = "decodes_to_canonical"

# format -> (dagster kind, what a curator should know about it)
VARIANTS: dict[str, tuple[str, str]] = {
    "tiff": ("tiff", "BigTIFF multi-page stack (tiled, zlib) readable by Fiji and tifffile."),
    "hdf5": ("hdf5", "HDF5 file, dataset /volume, chunked, zstd (hdf5plugin); h5py/ilastik."),
    "zarr": ("zarr", "OME-Zarr v0.5 (Zarr v3, sharded, zstd-3); zarr-python/tensorstore."),
    "parquet": ("parquet", "Parquet dataset, one row per compressed 3D chunk with checksum."),
    "n5": ("n5", "N5 container with a Paintera-openable multiscale raw group."),
}


class VariantConfig(dg.Config):
    """Layout of a format variant (the defaults are the benchmark's reference layout)."""

    chunk_size: int = Field(
        default=64, ge=8, le=512, description="Cubic chunk edge in voxels (z = y = x)."
    )
    image: str = Field(
        default="uint8",
        description="Which canonical image to convert: 'uint8' (contrast-adjusted, what "
        "training reads) or 'raw' (uint16 detector channel 0).",
    )


def canonical_path(context: dg.AssetExecutionContext, region: str) -> tuple[str, str]:
    """(path, data version) of the latest raw_volume of ``region``; fails clearly if absent."""
    latest = latest_materialization(context.instance, raw_volume.key, region)
    if latest is None:
        raise dg.Failure(f"raw_volume[{region}] is not materialized: materialize it first")
    return str(latest["metadata"]["dagster/uri"]), str(latest["data_version"])


def _versions(*packages: str) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def module_of(fmt: str) -> object:
    return format_module(fmt)


def build_variant(fmt: str) -> dg.AssetsDefinition:
    kind, blurb = VARIANTS[fmt]
    name = f"volume_{fmt}"

    @dg.asset(
        name=name,
        partitions_def=regions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={kind},
        code_version=code_version_of(
            module_of(fmt), verify_module, canonical_module, build_variant
        ),
        deps=[raw_volume],
        description=f"The region's canonical volume (z, y, x), voxel size in nm, as {blurb} "
        "Written blockwise from raw_volume into a folder named by the source's data version; "
        "the blocking check proves it decodes to exactly the canonical voxels.",
        check_specs=[
            dg.AssetCheckSpec(
                DECODES_TO_CANONICAL,
                asset=name,
                partitions_def=regions,
                blocking=True,
                description="Every block of this variant decodes to the same bytes (sha256) "
                "as the canonical raw volume; corrupt chunks are named.",
            )
        ],
    )
    def _variant(
        context: dg.AssetExecutionContext, storage: StorageResource, config: VariantConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        region = context.partition_key
        src_path, src_version = canonical_path(context, region)
        source = CanonicalSource(src_path, image=config.image)
        module = format_module(fmt)
        c = config.chunk_size
        key = fingerprint({"source": src_version, "chunks": c, "image": config.image})[:16]
        out = storage.asset_dir(name, region) / f"v-{key}{module.SUFFIX}"
        sidecar = out.with_name(out.name + ".write.json")
        plan = module.plan_write(out, source.info, chunks=(c, c, c))
        if out.exists() and sidecar.exists():
            written: dict[str, Any] = json.loads(sidecar.read_text())
            context.log.info(f"{name}[{region}]: reusing {out}")
        else:
            t0 = time.perf_counter()
            result = module.write_volume(plan, source)
            written = {
                "seconds": time.perf_counter() - t0,
                "bytes_on_disk": result.bytes_on_disk,
                "file_count": result.file_count,
                "throughput_mib_s": result.throughput_mib_s,
                "compression_ratio": result.compression_ratio,
                "library_versions": result.library_versions,
            }
            atomic_write_json(sidecar, written)
        reader = module.open_volume(out)
        try:
            block = (c, max(c, 256), max(c, 256))
            verification = verify_same_voxels(source, reader, block_shape=block)
        finally:
            reader.close()
        check = dg.AssetCheckResult(
            check_name=DECODES_TO_CANONICAL,
            passed=verification.passed,
            description=(
                f"all {verification.n_blocks} blocks equal the canonical voxels"
                if verification.passed
                else f"{len(verification.mismatched)} mismatched and {len(verification.errors)} "
                f"unreadable of {verification.n_blocks} blocks"
            ),
            metadata={
                "n_blocks": verification.n_blocks,
                "mismatched_blocks": dg.MetadataValue.json(verification.mismatched[:100]),
                "errors": dg.MetadataValue.json(verification.errors[:20]),
            },
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                fingerprint({"format": fmt, **plan.to_dict(), "source": src_version})
            ),  # fmt: skip
            metadata={
                "dagster/uri": dg.MetadataValue.path(str(out)),
                "canonical_source": dg.MetadataValue.path(src_path),
                "shape_zyx": dg.MetadataValue.json(list(source.info.shape)),
                "dtype": source.info.dtype,
                "voxel_size_nm": dg.MetadataValue.json(source.info.voxel_size.to_dict()),
                "chunks": dg.MetadataValue.json(list(plan.chunks)),
                "bytes_on_disk": int(written["bytes_on_disk"]),
                "file_count": int(written["file_count"]),
                "compression_ratio": float(written["compression_ratio"]),
                "write_seconds": float(written["seconds"]),
                "write_throughput_mib_s": float(written["throughput_mib_s"]),
                "library_versions": dg.MetadataValue.json(
                    {**written["library_versions"], **_versions("numpy", "fib_assets")}
                ),
                "plan": dg.MetadataValue.json(plan.to_dict()),
                "upstream": dg.MetadataValue.json(upstream_provenance(context)),
                "environment": dg.MetadataValue.json(runtime_environment()),
            },
            check_results=[check],
        )

    return _variant


variant_assets = [build_variant(fmt) for fmt in VARIANTS]


def variant_path(instance: dg.DagsterInstance, fmt: str, region: str) -> Path | None:
    latest = latest_materialization(instance, dg.AssetKey(f"volume_{fmt}"), region)
    return Path(str(latest["metadata"]["dagster/uri"])) if latest else None
