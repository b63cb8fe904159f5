"""OME-Zarr v0.5 (Zarr v3, sharded) multiscale images: the canonical volume format.

Layout of a container written here::

    <name>.ome.zarr/            zarr group; attributes "ome" {"version": "0.5"}, "fib_assets"
      raw/                      multiscale image, axes (c, z, y, x), uint16 detector channels
        s0, s1, ...             arrays, each level downsampled 2x per spatial axis (mean)
      uint8/                    multiscale image, axes (z, y, x), contrast-adjusted uint8

Spatial units are nanometres; ``scale``/``translation`` follow the NGFF 0.5 spec (pixel
centres move by (f-1)/2 of a voxel at each mean-downsampling level).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from fib_assets.core.geometry import VoxelSize

NGFF_VERSION = "0.5"


def multiscales_metadata(
    name: str,
    *,
    n_levels: int,
    voxel_size: VoxelSize,
    channel_axis: bool,
    factor: int = 2,
) -> dict[str, Any]:
    """The ``ome`` attribute of one multiscale image group (NGFF 0.5)."""
    axes: list[dict[str, str]] = []
    if channel_axis:
        axes.append({"name": "c", "type": "channel"})
    axes += [{"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")]
    datasets = []
    for level in range(n_levels):
        f = factor**level
        scale = [v * f for v in voxel_size.as_tuple()]
        translation = [v * (f - 1) / 2 for v in voxel_size.as_tuple()]
        if channel_axis:
            scale = [1.0, *scale]
            translation = [0.0, *translation]
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": axes, "datasets": datasets}],
    }


def create_multiscale_image(
    root: zarr.Group,
    name: str,
    *,
    level_shapes: Sequence[tuple[int, int, int]],
    dtype: str,
    chunks: tuple[int, int, int],
    shards: tuple[int, int, int],
    voxel_size: VoxelSize,
    channels: int | None = None,
    compression_level: int = 3,
    attributes: dict[str, Any] | None = None,
) -> list[zarr.Array[Any]]:
    """Create the arrays ``name/s0..sN`` (empty, fill 0) and the group's NGFF metadata.

    ``channels`` adds a leading channel axis (one chunk per channel) when given.
    Shards are clipped to each level's shape so small levels stay one shard.
    """
    group = root.create_group(name, overwrite=True)
    group.attrs.update(
        {
            "ome": multiscales_metadata(
                name, n_levels=len(level_shapes), voxel_size=voxel_size, channel_axis=bool(channels)
            ),
            **(attributes or {}),
        }
    )
    arrays = []
    for level, shape in enumerate(level_shapes):
        c = tuple(min(ch, s) for ch, s in zip(chunks, shape, strict=True))
        # a shard is a whole number of chunks and no larger than the level needs
        sh = tuple(
            max(ch, min(shd, -(-s // ch) * ch) // ch * ch)
            for shd, s, ch in zip(shards, shape, c, strict=True)
        )
        full_shape: tuple[int, ...] = shape
        dims = ["z", "y", "x"]
        if channels:
            full_shape = (channels, *shape)
            c = (1, *c)
            sh = (1, *sh)
            dims = ["c", *dims]
        arrays.append(
            group.create_array(
                name=f"s{level}",
                shape=full_shape,
                chunks=c,
                shards=sh,
                dtype=dtype,
                fill_value=0,
                compressors=[ZstdCodec(level=compression_level)],
                dimension_names=dims,
            )
        )
    return arrays


def downsample_mean(block: np.ndarray, factor: int = 2) -> np.ndarray:
    """Mean-downsample the last three axes (z, y, x) by ``factor``; edges use partial windows.

    Integer inputs are rounded half-to-even back to their dtype.
    """
    spatial = block.shape[-3:]
    pad = [(0, 0)] * (block.ndim - 3) + [(0, (-s) % factor) for s in spatial]
    data = block.astype(np.float64)
    weights = np.ones(spatial, dtype=np.float64)
    if any(p[1] for p in pad):
        data = np.pad(data, pad)
        weights = np.pad(weights, pad[-3:])
    out_shape = [s // factor for s in data.shape[-3:]]
    lead = data.shape[:-3]
    r = data.reshape(*lead, out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
    w = weights.reshape(out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
    sums = r.sum(axis=(-5, -3, -1))
    counts = w.sum(axis=(1, 3, 5))
    mean = sums / counts
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        out: np.ndarray = np.clip(np.rint(mean), info.min, info.max).astype(block.dtype)
        return out
    result: np.ndarray = mean.astype(block.dtype)
    return result


def open_multiscale(path: str | Path, name: str) -> tuple[dict[str, Any], list[zarr.Array[Any]]]:
    """Open image ``name`` of an OME-Zarr container: its ``ome`` metadata and levels s0..sN."""
    root = zarr.open_group(str(path), mode="r")
    group = root[name]
    if not isinstance(group, zarr.Group):
        raise ValueError(f"{path}: {name!r} is not a multiscale image group")
    ome: dict[str, Any] = json.loads(json.dumps(group.attrs.asdict().get("ome", {})))
    if not ome.get("multiscales"):
        raise ValueError(f"{path}/{name}: no OME-NGFF 'multiscales' metadata")
    levels = []
    for ds in ome["multiscales"][0]["datasets"]:
        arr = group[ds["path"]]
        assert isinstance(arr, zarr.Array)
        levels.append(arr)
    return ome, levels
