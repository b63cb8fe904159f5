"""Grayscale TIFF z-stacks: a directory of one file per slice, or one multipage (Big)TIFF.

Readers return arrays of shape ``(z, y, x)`` in pixels, in the file's own dtype, and read
only the requested z slices (pages), so a caller can walk a stack larger than memory in
bands of z. Shapes and dtypes are checked from TIFF headers before any pixel is decoded.

Pure python + tifffile: this module never imports dagster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

__all__ = [
    "TIFF_SUFFIXES",
    "TiffStackError",
    "list_tiff_slices",
    "read_multipage_tiff",
    "read_tiff_slice_stack",
    "tiff_stack_info",
]

PathLike = str | os.PathLike[str]

#: File name suffixes (case-insensitive) recognised as TIFF slices.
TIFF_SUFFIXES = (".tif", ".tiff")


class TiffStackError(ValueError):
    """A TIFF stack cannot be read as one (z, y, x) volume; the message names the file."""


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    # Digit runs compare as numbers so slice_2 sorts before slice_10; (kind, value) pairs
    # keep int and str from ever being compared with each other.
    parts = re.split(r"(\d+)", name)
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in parts)


def list_tiff_slices(directory: PathLike) -> list[Path]:
    """The ``.tif``/``.tiff`` files of a directory in natural name order, one per z slice.

    Hidden files are skipped: macOS leaves ``._name.tif`` AppleDouble files next to copied
    slices, and they are not TIFFs. Raises ``FileNotFoundError``/``NotADirectoryError`` for a
    bad directory and :class:`TiffStackError` when it holds no TIFF file.
    """
    root = Path(directory)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    slices = [
        p
        for p in root.iterdir()
        if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not slices:
        raise TiffStackError(f"{root}: empty stack: no {'/'.join(TIFF_SUFFIXES)} files")
    return sorted(slices, key=lambda p: (_natural_key(p.name), p.name))


@contextmanager
def _open_tiff(path: Path) -> Iterator[tifffile.TiffFile]:
    """Open a TIFF, turning tifffile's many corrupt-file exceptions into TiffStackError."""
    try:
        tif = tifffile.TiffFile(path)
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise TiffStackError(f"{path}: unreadable TIFF: {exc}") from exc
    with tif:
        # A valid signature with a broken first-IFD offset opens "successfully" with no pages.
        if len(tif.pages) == 0:
            raise TiffStackError(f"{path}: unreadable TIFF: no image pages (corrupt IFD)")
        yield tif


def _page_info(path: Path, page: Any, index: int) -> tuple[tuple[int, int], np.dtype[Any]]:
    """(y, x) shape and dtype of one page, from its IFD only."""
    shape = tuple(int(n) for n in page.shape)
    if len(shape) != 2:
        raise TiffStackError(
            f"{path}: page {index} has shape {shape}; expected a single-sample grayscale "
            "(y, x) page (RGB or volumetric pages are not slices; write with "
            "photometric='minisblack')"
        )
    dtype = page.dtype
    if dtype is None:
        raise TiffStackError(f"{path}: page {index} has an unsupported sample format")
    return (shape[0], shape[1]), np.dtype(dtype)


def _decode(path: Path, page: Any, index: int) -> npt.NDArray[Any]:
    try:
        return np.asarray(page.asarray())
    except MemoryError:
        raise
    except Exception as exc:  # codecs raise zlib.error, RuntimeError, ValueError, ...
        raise TiffStackError(f"{path}: page {index} is corrupt or truncated: {exc}") from exc


def _check_same(
    path: Path,
    what: str,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    ref_name: str,
    ref_shape: tuple[int, int],
    ref_dtype: np.dtype[Any],
) -> None:
    if shape != ref_shape or dtype != ref_dtype:
        raise TiffStackError(
            f"{path}: {what} is {shape} {dtype}, but {ref_name} is {ref_shape} {ref_dtype}; "
            "all slices of a stack must share (y, x) shape and dtype"
        )


def _slice_page(path: Path, tif: tifffile.TiffFile) -> tuple[Any, tuple[int, int], np.dtype[Any]]:
    """The single page of a per-slice file, with its (y, x) shape and dtype."""
    pages = tif.pages
    if len(pages) > 1:
        # A multipage file in a per-slice directory would otherwise lose all but one page.
        raise TiffStackError(
            f"{path}: has {len(pages)} pages; a per-slice stack needs one page per file "
            "(use read_multipage_tiff for multipage files)"
        )
    page = pages[0]
    shape, dtype = _page_info(path, page, 0)
    return page, shape, dtype


def _slice_file_info(path: Path) -> tuple[tuple[int, int], np.dtype[Any]]:
    with _open_tiff(path) as tif:
        _, shape, dtype = _slice_page(path, tif)
    return shape, dtype


def read_tiff_slice_stack(
    paths: Sequence[PathLike], z_slice: slice = slice(None)
) -> npt.NDArray[Any]:
    """Read ``paths[z_slice]`` (one single-page TIFF per z slice) as a ``(z, y, x)`` array.

    Only the selected files are opened. Every file must hold one grayscale page of the same
    shape and dtype as the first selected file; otherwise :class:`TiffStackError` names the
    offending file and both shapes. An empty selection gives a ``(0, y, x)`` array.
    """
    all_paths = [Path(p) for p in paths]
    if not all_paths:
        raise TiffStackError("empty stack: no slice files given")
    selected = all_paths[z_slice]
    if not selected:
        shape, dtype = _slice_file_info(all_paths[0])
        return np.empty((0, *shape), dtype=dtype)

    out: npt.NDArray[Any] | None = None
    ref_shape: tuple[int, int] = (0, 0)
    ref_dtype: np.dtype[Any] = np.dtype(np.uint8)
    for z, path in enumerate(selected):
        with _open_tiff(path) as tif:
            page, shape, dtype = _slice_page(path, tif)
            if out is None:
                ref_shape, ref_dtype = shape, dtype
                out = np.empty((len(selected), *shape), dtype=dtype)
            else:
                _check_same(path, "slice", shape, dtype, str(selected[0]), ref_shape, ref_dtype)
            out[z] = _decode(path, page, 0)
    assert out is not None
    return out


def _page_count(path: Path, tif: tifffile.TiffFile) -> int:
    count = len(tif.pages)
    meta = tif.imagej_metadata if tif.is_imagej else None
    images = int(meta.get("images", count)) if meta else count
    if images > count:
        # ImageJ writes >4 GiB stacks as raw data behind a single IFD; those are not pages.
        raise TiffStackError(
            f"{path}: ImageJ stack of {images} images stored behind {count} IFD(s); "
            "re-save it as a BigTIFF with one page per slice"
        )
    return count


def read_multipage_tiff(path: PathLike, z_slice: slice = slice(None)) -> npt.NDArray[Any]:
    """Read pages ``z_slice`` of a multipage (Big)TIFF as a ``(z, y, x)`` array.

    Each page is one z slice. Only the selected pages are decoded (page IFDs are parsed to
    find them). Pages must be grayscale and share shape and dtype with the first selected
    page, otherwise :class:`TiffStackError` names the file, the page and both shapes.
    """
    tiff_path = Path(path)
    with _open_tiff(tiff_path) as tif:
        n_pages = _page_count(tiff_path, tif)
        indices = range(n_pages)[z_slice]
        pages = tif.pages
        first = indices[0] if indices else 0
        ref_shape, ref_dtype = _page_info(tiff_path, pages[first], first)
        out = np.empty((len(indices), *ref_shape), dtype=ref_dtype)
        for z, index in enumerate(indices):
            page = pages[index]
            shape, dtype = _page_info(tiff_path, page, index)
            _check_same(
                tiff_path, f"page {index}", shape, dtype, f"page {first}", ref_shape, ref_dtype
            )
            out[z] = _decode(tiff_path, page, index)
    return out


def tiff_stack_info(
    paths_or_file: PathLike | Sequence[PathLike],
) -> tuple[tuple[int, int, int], np.dtype[Any]]:
    """``((z, y, x), dtype)`` of a stack from TIFF headers only, without decoding pixels.

    Accepts a multipage TIFF file, a directory of per-slice files (see
    :func:`list_tiff_slices`), or a sequence of per-slice files. Every slice/page is checked,
    so a stack that passes here will not fail on shape or dtype when read.
    """
    if isinstance(paths_or_file, str | os.PathLike):
        target = Path(paths_or_file)
        if target.is_dir():
            return tiff_stack_info(list_tiff_slices(target))
        with _open_tiff(target) as tif:
            n_pages = _page_count(target, tif)
            ref_shape, ref_dtype = _page_info(target, tif.pages[0], 0)
            for index in range(1, n_pages):
                shape, dtype = _page_info(target, tif.pages[index], index)
                _check_same(target, f"page {index}", shape, dtype, "page 0", ref_shape, ref_dtype)
        return (n_pages, *ref_shape), ref_dtype

    files = [Path(p) for p in paths_or_file]
    if not files:
        raise TiffStackError("empty stack: no slice files given")
    ref_shape, ref_dtype = _slice_file_info(files[0])
    for path in files[1:]:
        shape, dtype = _slice_file_info(path)
        _check_same(path, "slice", shape, dtype, str(files[0]), ref_shape, ref_dtype)
    return (len(files), *ref_shape), ref_dtype
