"""TIFF z-stacks: per-slice directories and multipage BigTIFF, written with tifffile."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fib_assets.core.acquisition.tiff_stack import (
    TiffStackError,
    list_tiff_slices,
    read_multipage_tiff,
    read_tiff_slice_stack,
    tiff_stack_info,
)

Z, Y, X = 12, 5, 7


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 2**16, size=(Z, Y, X), dtype=np.uint16)


@pytest.fixture
def slice_dir(tmp_path: Path, volume: np.ndarray) -> Path:
    """slice_1.tif .. slice_12.tif: natural order differs from lexicographic order."""
    root = tmp_path / "slices"
    root.mkdir()
    for z, plane in enumerate(volume, start=1):
        tifffile.imwrite(root / f"slice_{z}.tif", plane, photometric="minisblack")
    return root


@pytest.fixture
def multipage(tmp_path: Path, volume: np.ndarray) -> Path:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, bigtiff=True, photometric="minisblack", compression="zlib")
    return path


Z_SLICES = [
    slice(None),
    slice(2, 5),
    slice(None, None, 3),
    slice(-2, None),
    slice(10, 2, -4),
    slice(5, 5),
]
Z_SLICE_IDS = ["all", "range", "strided", "tail", "reversed", "empty"]


# --------------------------------------------------------------------------------------------
# Per-slice directories
# --------------------------------------------------------------------------------------------
def test_list_tiff_slices_natural_order_and_filters(slice_dir: Path) -> None:
    (slice_dir / "slice_13.TIFF").write_bytes((slice_dir / "slice_1.tif").read_bytes())
    (slice_dir / "._slice_1.tif").write_bytes(b"AppleDouble junk")
    (slice_dir / "notes.txt").write_text("not a slice")
    (slice_dir / "sub.tif").mkdir()

    names = [p.name for p in list_tiff_slices(slice_dir)]

    assert names == [f"slice_{z}.tif" for z in range(1, Z + 1)] + ["slice_13.TIFF"]


def test_list_tiff_slices_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no slices here")

    with pytest.raises(TiffStackError, match="empty stack") as excinfo:
        list_tiff_slices(tmp_path)
    assert os.fspath(tmp_path) in str(excinfo.value)


def test_list_tiff_slices_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_tiff_slices(tmp_path / "nowhere")


@pytest.mark.parametrize("z_slice", Z_SLICES, ids=Z_SLICE_IDS)
def test_read_tiff_slice_stack(slice_dir: Path, volume: np.ndarray, z_slice: slice) -> None:
    stack = read_tiff_slice_stack(list_tiff_slices(slice_dir), z_slice)

    np.testing.assert_array_equal(stack, volume[z_slice])
    assert stack.dtype == np.uint16
    assert stack.shape[1:] == (Y, X)


def test_read_tiff_slice_stack_opens_only_selected_files(
    slice_dir: Path, volume: np.ndarray
) -> None:
    paths = list_tiff_slices(slice_dir)
    paths[0].write_bytes(b"corrupt")  # outside the selection: must not be touched

    stack = read_tiff_slice_stack(paths, slice(3, 6))

    np.testing.assert_array_equal(stack, volume[3:6])


@pytest.mark.parametrize(
    ("bad_plane", "detail"),
    [
        (np.zeros((Y + 1, X), np.uint16), f"({Y + 1}, {X}) uint16"),
        (np.zeros((Y, X), np.uint8), f"({Y}, {X}) uint8"),
    ],
    ids=["shape", "dtype"],
)
def test_mismatched_slice_is_named(slice_dir: Path, bad_plane: np.ndarray, detail: str) -> None:
    paths = list_tiff_slices(slice_dir)
    tifffile.imwrite(paths[4], bad_plane, photometric="minisblack")

    for call in (lambda: read_tiff_slice_stack(paths), lambda: tiff_stack_info(slice_dir)):
        with pytest.raises(TiffStackError) as excinfo:
            call()
        message = str(excinfo.value)
        assert os.fspath(paths[4]) in message
        assert detail in message
        assert f"({Y}, {X}) uint16" in message  # the reference shape too


def _truncated_tiff() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ones((64, 64), np.uint16), photometric="minisblack")
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "content",
    [b"", b"definitely not a tiff", b"II*\x00\xff\xff\xff\x7f", _truncated_tiff()],
    ids=["empty_file", "not_tiff", "bad_ifd_offset", "truncated"],
)
def test_unreadable_slice_is_named(slice_dir: Path, content: bytes) -> None:
    paths = list_tiff_slices(slice_dir)
    paths[2].write_bytes(content)

    with pytest.raises(TiffStackError) as excinfo:
        read_tiff_slice_stack(paths)
    assert os.fspath(paths[2]) in str(excinfo.value)


def test_multipage_file_in_slice_list_is_refused(tmp_path: Path, multipage: Path) -> None:
    with pytest.raises(TiffStackError, match=f"has {Z} pages"):
        read_tiff_slice_stack([multipage])


def test_rgb_slice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((Y, X, 3), np.uint8), photometric="rgb")

    with pytest.raises(TiffStackError, match="grayscale"):
        read_tiff_slice_stack([path])


def test_empty_path_list() -> None:
    with pytest.raises(TiffStackError, match="empty stack"):
        read_tiff_slice_stack([])


# --------------------------------------------------------------------------------------------
# Multipage BigTIFF
# --------------------------------------------------------------------------------------------
def test_fixture_is_bigtiff_with_one_page_per_slice(multipage: Path) -> None:
    with tifffile.TiffFile(multipage) as tif:
        assert tif.is_bigtiff
        assert len(tif.pages) == Z


@pytest.mark.parametrize("z_slice", Z_SLICES, ids=Z_SLICE_IDS)
def test_read_multipage_tiff(multipage: Path, volume: np.ndarray, z_slice: slice) -> None:
    stack = read_multipage_tiff(multipage, z_slice)

    np.testing.assert_array_equal(stack, volume[z_slice])
    assert stack.dtype == np.uint16


def test_read_multipage_tiff_decodes_only_selected_pages(
    multipage: Path, volume: np.ndarray
) -> None:
    with tifffile.TiffFile(multipage) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(multipage.read_bytes())
    raw[offset : offset + count] = b"\xff" * count  # page 0's zlib stream is now garbage
    multipage.write_bytes(bytes(raw))

    np.testing.assert_array_equal(read_multipage_tiff(multipage, slice(1, 4)), volume[1:4])
    with pytest.raises(TiffStackError, match="page 0 is corrupt") as excinfo:
        read_multipage_tiff(multipage, slice(0, 2))
    assert os.fspath(multipage) in str(excinfo.value)


def test_multipage_mismatched_pages(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(np.zeros((Y, X), np.uint16), photometric="minisblack")
        writer.write(np.zeros((Y, X + 2), np.uint16), photometric="minisblack")

    with pytest.raises(TiffStackError, match=rf"page 1 is \({Y}, {X + 2}\)") as excinfo:
        read_multipage_tiff(path)
    assert os.fspath(path) in str(excinfo.value)
    with pytest.raises(TiffStackError, match="page 1"):
        tiff_stack_info(path)


def test_multipage_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "fake.tif"
    path.write_bytes(b"II*\x00garbage")

    with pytest.raises(TiffStackError, match="fake.tif"):
        read_multipage_tiff(path)


# --------------------------------------------------------------------------------------------
# Header-only info
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["directory", "path_list", "multipage"])
def test_tiff_stack_info(source: str, slice_dir: Path, multipage: Path) -> None:
    targets: dict[str, Path | list[Path]] = {
        "directory": slice_dir,
        "path_list": list_tiff_slices(slice_dir),
        "multipage": multipage,
    }
    target = targets[source]

    shape, dtype = tiff_stack_info(target)

    assert shape == (Z, Y, X)
    assert dtype == np.dtype(np.uint16)


def test_tiff_stack_info_reads_no_pixels(multipage: Path) -> None:
    with tifffile.TiffFile(multipage) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(multipage.read_bytes())
    raw[offset : offset + count] = b"\xff" * count
    multipage.write_bytes(bytes(raw))

    assert tiff_stack_info(multipage) == ((Z, Y, X), np.dtype(np.uint16))
