"""Volume formats: one module per format with the same verbs (see ``base``); dispatch by
suffix happens here and only here."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from fib_assets.core.formats.base import VolumeReader

# format name -> module (imported lazily: h5py/pyarrow/tensorstore load only when used)
FORMAT_MODULES = {
    "tiff": "fib_assets.core.formats.tiff",
    "hdf5": "fib_assets.core.formats.hdf5",
    "zarr": "fib_assets.core.formats.zarr",
    "parquet": "fib_assets.core.formats.parquet",
    "n5": "fib_assets.core.formats.n5",
}


def format_module(name: str) -> ModuleType:
    if name not in FORMAT_MODULES:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMAT_MODULES)}")
    return importlib.import_module(FORMAT_MODULES[name])


def format_of(path: str | Path) -> str:
    """The format name of a path, by its suffix (e.g. ``.ome.zarr``, ``.h5``, ``.n5``)."""
    name = str(path).rstrip("/")
    for fmt in FORMAT_MODULES:
        if name.endswith(format_module(fmt).SUFFIX):
            return fmt
    raise ValueError(f"{path}: unknown volume format (suffix not one of the supported formats)")


def open_volume(path: str | Path) -> VolumeReader:
    reader: VolumeReader = format_module(format_of(path)).open_volume(path)
    return reader
