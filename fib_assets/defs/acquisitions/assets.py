"""Raw acquisitions: the source files of a sample region and its canonical raw volume."""

import io

import dagster as dg
import pandas as pd

import fib_assets.core.acquisition.dat as dat_module
import fib_assets.core.acquisition.region as region_module
import fib_assets.core.acquisition.tiff_stack as tiff_stack_module
import fib_assets.core.formats.zarr as zarr_module
import fib_assets.core.provenance.fixity as fixity_module
from fib_assets.audit import runtime_environment, upstream_provenance
from fib_assets.core import qc
from fib_assets.core import storage as object_storage
from fib_assets.core.acquisition import assemble as assemble_module
from fib_assets.core.acquisition.assemble import execute_raw_volume, plan_raw_volume
from fib_assets.core.acquisition.region import inventory_region
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.acquisitions import checks
from fib_assets.defs.metadata import (
    acquisition_metadata,
    latest_materialization,
    raw_volume_metadata,
)
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import QCThresholdsResource, StorageResource

OWNERS = ["team:curation"]
GROUP = "acquisitions"


@dg.asset(
    partitions_def=regions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "python"},
    # changes whenever the code that reads and hashes the sources changes
    code_version=code_version_of(region_module, dat_module, tiff_stack_module, fixity_module),
    check_specs=checks.RAW_ACQUISITION_CHECKS,
)
def raw_acquisition(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Inventory of one sample region as it came off the microscope: every source file (.dat
    slices or TIFF) with its sha256 fixity, the parsed Janelia headers as a Parquet table, and
    the acquisition metadata from region.yaml. Its data version is the sha256 of the manifest,
    so new or changed bytes make every downstream asset stale."""
    region = context.partition_key
    source = storage.region_source(region)
    inv = inventory_region(source)
    # local path or s3:// URL alike; each file is written atomically (temp + rename, or one PUT)
    out = object_storage.join(storage.asset_url("raw_acquisition", region), inv.digest[:16])
    object_storage.write_bytes(
        object_storage.join(out, "manifest-sha256.txt"), inv.manifest.encode()
    )
    headers = inv.headers_frame()
    buf = io.BytesIO()
    headers.to_parquet(buf)
    object_storage.write_bytes(object_storage.join(out, "headers.parquet"), buf.getvalue())
    object_storage.write_json(object_storage.join(out, "region.json"), inv.meta)
    context.log.info(f"{region}: {len(inv.files)} source files, {inv.total_bytes} bytes")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(inv.digest),
        metadata={
            **acquisition_metadata(inv, out, headers),
            "environment": dg.MetadataValue.json(runtime_environment()),
        },
        check_results=checks.raw_acquisition_results(inv),
    )


@dg.asset(
    partitions_def=regions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"zarr", "python"},
    code_version=code_version_of(assemble_module, zarr_module, qc, dat_module, tiff_stack_module),
    deps=[raw_acquisition],
    check_specs=checks.RAW_VOLUME_CHECKS,
)
def raw_volume(
    context: dg.AssetExecutionContext, storage: StorageResource, qc_thresholds: QCThresholdsResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The canonical raw volume of a region: OME-Zarr v0.5 (Zarr v3, sharded, zstd) with a
    multiscale pyramid s0..sN, the uint16 detector channels (c, z, y, x) and a contrast-adjusted
    uint8 channel (z, y, x); voxel size in nm. Written blockwise (peak memory = one shard) into
    a content-addressed folder, so earlier versions stay readable."""
    region = context.partition_key
    inv = inventory_region(storage.region_source(region))
    upstream = latest_materialization(context.instance, raw_acquisition.key, region)
    if upstream is not None and upstream.get("data_version") not in (None, inv.digest):
        raise dg.Failure(
            f"{storage.region_source(region)}: source files changed since raw_acquisition was "
            f"materialized (manifest {inv.digest[:12]} != {upstream['data_version'][:12]}); "
            "re-materialize raw_acquisition first"
        )
    plan = plan_raw_volume(inv)
    context.log.info(f"{region}: plan {plan.shape} in {len(plan.block_plan)} blocks")
    result = execute_raw_volume(plan, storage.asset_url("raw_volume", region))
    t = qc_thresholds
    thresholds = qc.QCThresholds(
        max_saturation_fraction=t.max_saturation_fraction,
        max_brightness_drift=t.max_brightness_drift,
        max_lateral_drift_px=t.max_lateral_drift_px,
        **(
            {"max_curtaining_score": t.max_curtaining_score}
            if t.max_curtaining_score is not None
            else {}
        ),
    )
    stats: pd.DataFrame = result.stats
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.checksum),
        metadata={
            **raw_volume_metadata(result),
            "upstream": dg.MetadataValue.json(upstream_provenance(context)),
            "environment": dg.MetadataValue.json(runtime_environment()),
        },
        check_results=checks.raw_volume_results(stats, result.shifts, thresholds),
    )
