"""Metadata a curator reads in the UI, and event-log look-ups shared by asset families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import zarr

from fib_assets.core import storage
from fib_assets.core.acquisition.assemble import RawVolumeResult
from fib_assets.core.acquisition.region import RegionInventory
from fib_assets.core.preview import markdown_image, png_bytes, side_by_side


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dict[str, Any] | None:
    """Data version, run id, timestamp and metadata of the newest materialization of one
    partition (``context.get_asset_provenance`` is not partition-aware)."""
    res = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    if not res.records:
        return None
    rec = res.records[0]
    mat = rec.event_log_entry.asset_materialization
    assert mat is not None
    return {
        "data_version": mat.tags.get("dagster/data_version") if mat.tags else None,
        "code_version": mat.tags.get("dagster/code_version") if mat.tags else None,
        "run_id": rec.run_id,
        "timestamp": rec.timestamp,
        "storage_id": rec.storage_id,
        "metadata": {k: v.value for k, v in mat.metadata.items()},
    }


def record_metadata(rec: Any) -> dict[str, Any]:
    """The metadata values of one materialization record (empty for a non-materialization)."""
    mat = rec.event_log_entry.asset_materialization
    return {k: v.value for k, v in mat.metadata.items()} if mat is not None else {}


def all_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> list[Any]:
    """Every materialization record of ``key`` (of one partition), newest first (paged)."""
    out: list[Any] = []
    cursor = None
    while True:
        res = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key, asset_partitions=[partition] if partition else None
            ),
            limit=500,
            cursor=cursor,
        )
        out += res.records
        if not res.has_more:
            return out
        cursor = res.cursor


def _table(df: pd.DataFrame, max_rows: int = 12) -> str:
    head = df.head(max_rows)
    cols = list(head.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in head.iterrows():
        lines.append("| " + " | ".join(str(row[c])[:40] for c in cols) + " |")
    if len(df) > max_rows:
        lines.append(f"\n… {len(df) - max_rows} more rows in the Parquet file")
    return "\n".join(lines)


def acquisition_metadata(
    inv: RegionInventory, out: str | Path, headers: pd.DataFrame
) -> dict[str, Any]:
    meta = inv.meta
    cols = [
        c
        for c in ("name", "FIBSliceNum", "XResolution", "YResolution", "ChanNum", "PixelSize", "WD")
        if c in headers.columns
    ]
    return {
        "dagster/uri": dg.MetadataValue.path(str(out)),
        "source": dg.MetadataValue.path(inv.directory),
        "n_files": len(inv.files),
        "total_bytes": inv.total_bytes,
        "manifest_sha256": inv.digest,
        "manifest": dg.MetadataValue.path(storage.join(out, "manifest-sha256.txt")),
        "headers_table": dg.MetadataValue.path(storage.join(out, "headers.parquet")),
        "headers_preview": dg.MetadataValue.md(_table(headers[cols])),
        "sample_id": str(meta.get("sample_id")),
        "voxel_size_nm": dg.MetadataValue.json(inv.voxel_size.to_dict()),
        "acquisition": dg.MetadataValue.json(
            {k: meta[k] for k in ("instrument", "acquisition", "channels") if k in meta}
        ),
        "unreadable_files": dg.MetadataValue.json([f.name for f in inv.files if not f.readable]),
    }


def volume_preview(container: str) -> str:
    """Markdown with an XY (middle z) and an XZ (middle y) slice of the uint8 channel, read
    from the coarsest level that is still at least 128 px wide (one plane, never the volume)."""
    root = zarr.open_group(storage.zarr_store(container, read_only=True), mode="r")
    group = root["uint8"]
    assert isinstance(group, zarr.Group)
    levels = [group[f"s{i}"] for i in range(len(list(group.array_keys())))]
    arr = levels[0]
    for a in levels:
        assert isinstance(a, zarr.Array)
        if max(a.shape[1:]) >= 128:
            arr = a
    assert isinstance(arr, zarr.Array)
    z, y, _ = arr.shape
    xy = np.asarray(arr[z // 2])
    xz = np.asarray(arr[:, y // 2, :])
    return markdown_image(png_bytes(side_by_side([xy, xz]), max_side=512), "XY and XZ slices")


def raw_volume_metadata(result: RawVolumeResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "dagster/uri": dg.MetadataValue.path(result.path),
        "shape_czyx": dg.MetadataValue.json([plan.channels, *plan.shape]),
        "dtype": "uint16 (raw channels), uint8 (contrast channel)",
        "voxel_size_nm": dg.MetadataValue.json(plan.voxel_size.to_dict()),
        "chunks": dg.MetadataValue.json(list(plan.chunks)),
        "shards": dg.MetadataValue.json(list(plan.shards)),
        "levels": dg.MetadataValue.json([list(s) for s in plan.level_shapes]),
        "channels": dg.MetadataValue.json(list(plan.channel_names)),
        "bytes_on_disk": result.bytes_on_disk,
        "checksum_sha256": result.checksum,
        "block_checksums": dg.MetadataValue.json(result.block_checksums),
        "contrast_range_uint16": dg.MetadataValue.json([result.low, result.high]),
        "plan": dg.MetadataValue.json(plan.to_dict()),
        "reused_existing": result.reused,
        "preview": dg.MetadataValue.md(volume_preview(result.path)),
    }
