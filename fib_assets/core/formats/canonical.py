"""The canonical raw volume (OME-Zarr from the assembler) as a VolumeSource for variants.

The container may be a local path or an ``s3://`` URL: it is opened through
:mod:`fib_assets.core.storage` (zarr-python's store for either), and a container that is not
complete (on S3: no completion marker) is refused as absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fib_assets.core import storage
from fib_assets.core.formats.base import VolumeInfo, check_roi
from fib_assets.core.geometry import Roi, VoxelSize


class CanonicalSource:
    """Level s0 of one image of a canonical container: ``uint8`` (z, y, x) by default, or one
    detector channel of ``raw`` (uint16) with ``image="raw", channel=c``."""

    def __init__(self, path: str | Path, *, image: str = "uint8", channel: int = 0) -> None:
        self.path = storage.normalize(path)
        if not storage.is_complete(self.path):
            raise FileNotFoundError(
                f"{self.path}: canonical raw volume not found (or, on an object store, not "
                "complete: no completion marker)"
            )
        root = zarr.open_group(storage.zarr_store(self.path, read_only=True), mode="r")
        arr = root[f"{image}/s0"]
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{self.path}: {image}/s0 is not an array")
        self._arr = arr
        self._channel = channel if image == "raw" else None
        group = root[image]
        ome: dict[str, Any] = json.loads(json.dumps(group.attrs.asdict().get("ome", {})))
        scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        shape = arr.shape[1:] if self._channel is not None else arr.shape
        self._info = VolumeInfo(
            (int(shape[0]), int(shape[1]), int(shape[2])),
            str(arr.dtype),
            VoxelSize(*(float(v) for v in scale[-3:])),
            tuple(int(c) for c in arr.chunks[-3:]),  # type: ignore[arg-type]
        )

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> np.ndarray:
        check_roi(self.path, self._info.shape, roi)
        sl = roi.to_slices()
        if self._channel is not None:
            return np.asarray(self._arr[(self._channel, *sl)])
        return np.asarray(self._arr[sl])
