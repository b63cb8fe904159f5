"""Format variants of each region's canonical volume: TIFF, HDF5, Zarr, Parquet, N5.

One factory builds all five assets, so every variant is planned, written, verified and
described the same way; only the format module differs.
"""

import dataclasses
import importlib.metadata
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

import fib_assets.core.formats.canonical as canonical_module
import fib_assets.core.formats.verify as verify_module
from fib_assets.audit import runtime_environment, upstream_provenance
from fib_assets.core import storage as object_storage
from fib_assets.core.blockwise import fingerprint
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
# writers that speak s3:// themselves (tensorstore's s3 driver); the others write local files,
# which an object-store root stages in pod-local scratch and uploads at publish time
WRITES_URLS = frozenset({"zarr"})


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
                description="Every block of this variant decodes to the same bytes (XXH3-128) "
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
        # a local path or an s3:// URL: one code path, object_storage hides the difference
        folder = storage.asset_url(name, region)
        out = object_storage.join(folder, f"v-{key}{module.SUFFIX}")
        sidecar = object_storage.join(folder, f"v-{key}{module.SUFFIX}.write.json")
        info = source.info
        nbytes = int(np.prod(info.shape)) * np.dtype(info.dtype).itemsize
        # scratch for a staged (or downloaded) copy: the raw size plus headroom for container
        # overhead on incompressible data; refused up front when the scratch cannot hold it
        need = nbytes + nbytes // 4 + 2**20
        with object_storage.Staging(out, need_bytes=need, direct=fmt in WRITES_URLS) as stage:
            plan = module.plan_write(stage.path, info, chunks=(c, c, c))
            # the plan as published (where curators and provenance find it)
            described = dataclasses.replace(plan, path=out)
            written = _reuse(context, stage, sidecar) if object_storage.is_complete(out) else None
            if written is None:
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
                # staged formats are uploaded and read back here, their marker written last
                stage.publish(
                    {"plan_fingerprint": fingerprint(described.to_dict())}, {sidecar: written}
                )
            reader = module.open_volume(stage.path)
            try:
                block = (c, max(c, 256), max(c, 256))
                verification = verify_same_voxels(source, reader, block_shape=block)
            finally:
                reader.close()
            # name the published variant, not the scratch copy that was decoded
            errors = [str(e).replace(stage.path, out) for e in verification.errors]
        plan = described
        check = dg.AssetCheckResult(
            check_name=DECODES_TO_CANONICAL,
            passed=verification.passed,
            description=(
                f"all {verification.n_blocks} blocks equal the canonical voxels"
                if verification.passed
                else f"{len(verification.mismatched)} mismatched and {len(errors)} "
                f"unreadable of {verification.n_blocks} blocks"
            ),
            metadata={
                "n_blocks": verification.n_blocks,
                "mismatched_blocks": dg.MetadataValue.json(verification.mismatched[:100]),
                "errors": dg.MetadataValue.json(errors[:20]),
            },
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                fingerprint({"format": fmt, **plan.to_dict(), "source": src_version})
            ),  # fmt: skip
            metadata={
                "dagster/uri": dg.MetadataValue.path(out),
                "storage_mode": (
                    "staged locally, uploaded, read back (sha256) and marked complete"
                    if stage.staged
                    else "written in place"
                ),
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


def _reuse(
    context: dg.AssetExecutionContext, stage: object_storage.Staging, sidecar: str
) -> dict[str, Any] | None:
    """The write record of a complete variant at ``stage.url``, made readable at
    ``stage.path`` (downloaded and checked against its marker when staged); None when it must
    be (re)written: no record, or a published object that no longer matches its marker."""
    if not object_storage.exists(sidecar):
        return None
    try:
        stage.fetch()
    except object_storage.StorageError as err:
        context.log.warning(f"{err}; retracting and rewriting the variant")
        object_storage.retract(stage.url)
        return None
    context.log.info(f"reusing {stage.url}")
    written: dict[str, Any] = object_storage.read_json(sidecar)
    return written


def variant_path(instance: dg.DagsterInstance, fmt: str, region: str) -> Path | None:
    """Local path of the latest variant (the format benchmark opens files). Raises
    StorageError for a variant on an object store: the benchmark reads local files only."""
    latest = latest_materialization(instance, dg.AssetKey(f"volume_{fmt}"), region)
    if not latest:
        return None
    uri = str(latest["metadata"]["dagster/uri"])
    if object_storage.is_remote(uri):
        raise object_storage.StorageError(
            f"{uri}: the format benchmark reads variants from local files; run it on a "
            "local storage root (an s3:// root is supported for raw_* and volume_* only)"
        )
    return Path(uri)
