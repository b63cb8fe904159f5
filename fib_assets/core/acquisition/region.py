"""Landing-zone regions: one folder per sample region, ``region.yaml`` written last.

A region folder is *complete* when ``region.yaml`` exists, parses, names the folder's own
region key and lists as many source files (``n_files``) as the folder holds. The inventory
reads every source file's header (never its pixels) and hashes every byte for fixity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fib_assets.core.geometry import VoxelSize, validate_region_key
from fib_assets.core.provenance.fixity import manifest_digest, manifest_lines, sha256_file

REGION_META = "region.yaml"
REQUIRED_META_KEYS = ("region", "sample_id", "voxel_size_nm", "n_files")
SOURCE_SUFFIXES = (".dat", ".tif", ".tiff")


class RegionError(ValueError):
    """A landing-zone folder that cannot be used as a region (names the folder and the problem)."""


def source_files(region_dir: Path) -> list[Path]:
    """Source files of a region in acquisition order (instrument file names sort by time)."""
    paths = Path(region_dir).iterdir()
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES)


def read_region_meta(region_dir: Path) -> dict[str, Any]:
    """Parse and validate ``region.yaml``; raise RegionError naming the file and the problem."""
    path = Path(region_dir) / REGION_META
    if not path.exists():
        raise RegionError(f"{path}: missing (the region is not complete until it is written)")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RegionError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise RegionError(f"{path}: expected a mapping, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise RegionError(f"{path}: missing keys {missing}")
    try:
        validate_region_key(str(meta["region"]))
        VoxelSize.from_dict(meta["voxel_size_nm"])
    except (ValueError, TypeError) as exc:
        raise RegionError(f"{path}: {exc}") from exc
    if meta["region"] != Path(region_dir).name:
        raise RegionError(
            f"{path}: region {meta['region']!r} does not match its folder name "
            f"{Path(region_dir).name!r}"
        )
    return meta


def check_region_complete(region_dir: Path) -> str | None:
    """None when the folder is a complete, valid region; otherwise the reason it is not."""
    region_dir = Path(region_dir)
    try:
        validate_region_key(region_dir.name)
        meta = read_region_meta(region_dir)
    except ValueError as exc:
        return str(exc)
    found = len(source_files(region_dir))
    if found != int(meta["n_files"]):
        return f"{region_dir}: region.yaml lists {meta['n_files']} source files, found {found}"
    return None


@dataclass(frozen=True)
class SourceFile:
    """One source file (a ``.dat`` slice or TIFF) with its fixity and parsed header."""

    name: str
    size: int
    sha256: str
    header: dict[str, Any] | None
    error: str | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RegionInventory:
    region: str
    directory: str
    meta: dict[str, Any]
    files: tuple[SourceFile, ...] = field(default_factory=tuple)

    @property
    def manifest(self) -> str:
        return manifest_lines((f.name, f.sha256) for f in self.files)

    @property
    def digest(self) -> str:
        """Content identity of the acquisition: sha256 over the sorted sha256 manifest."""
        return manifest_digest((f.name, f.sha256) for f in self.files)

    @property
    def voxel_size(self) -> VoxelSize:
        return VoxelSize.from_dict(self.meta["voxel_size_nm"])

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def headers_frame(self) -> pd.DataFrame:
        """One row per source file: name, size, sha256, error, then the main header fields."""
        rows = []
        for f in self.files:
            row: dict[str, Any] = {"name": f.name, "size": f.size, "sha256": f.sha256}
            row["error"] = f.error or ""
            for k, v in (f.header or {}).items():
                if isinstance(v, str | int | float | bool) or v is None:
                    row[k] = v
            rows.append(row)
        return pd.DataFrame(rows)


def _dat_header(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    from fib_assets.core.acquisition.dat import DatError, read_dat_header

    try:
        header = read_dat_header(path)
    except (DatError, OSError) as exc:
        return None, str(exc)
    fields = header.to_json_dict()
    size = path.stat().st_size
    if size < header.expected_length:
        missing = header.expected_length - size
        return fields, (
            f"{path}: truncated: expected {header.expected_length} bytes, found {size}; "
            f"{missing} bytes of pixel data missing"
        )
    return fields, None


def _tiff_header(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            return {
                "pages": len(tf.pages),
                "YResolution": int(page.shape[0]),  # type: ignore[union-attr]
                "XResolution": int(page.shape[1]),  # type: ignore[union-attr]
                "dtype": str(page.dtype),  # type: ignore[union-attr]
            }, None
    except Exception as exc:  # tifffile raises many types for corrupt files
        return None, f"{path}: unreadable TIFF: {exc}"


def inventory_region(
    region_dir: Path, *, on_file: Callable[[str], None] | None = None
) -> RegionInventory:
    """Hash and parse every source file of a complete region (headers only, never pixels)."""
    region_dir = Path(region_dir)
    reason = check_region_complete(region_dir)
    if reason is not None:
        raise RegionError(reason)
    meta = read_region_meta(region_dir)
    files = []
    for path in source_files(region_dir):
        if path.suffix.lower() == ".dat":
            header, error = _dat_header(path)
        else:
            header, error = _tiff_header(path)
        files.append(SourceFile(path.name, path.stat().st_size, sha256_file(path), header, error))
        if on_file is not None:
            on_file(path.name)
    return RegionInventory(meta["region"], str(region_dir), meta, tuple(files))
