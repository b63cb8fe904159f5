"""Janelia .dat reader/writer: the real v9 fixture, round trips, an independent decoder, errors."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fib_assets.core.acquisition.dat import (
    DAT_HEADER_BYTES,
    DAT_MAGIC,
    DAT_VERSIONS,
    DatBadMagicError,
    DatError,
    DatShortHeaderError,
    DatTruncatedError,
    DatUnknownVersionError,
    dat_header_dtype,
    open_dat_memmap,
    read_dat,
    read_dat_header,
    read_dat_roi,
    write_dat,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
V9_FIXTURE = SHARED / "fixtures" / "janelia_v9_header_truncated.dat"
LAYOUT_TABLES = SHARED / "formats" / "janelia_dat_layouts.txt"

# Size of the real acquisition the fixture header describes: 1024 + 8688 * 3500 * 2 ch * 2 B.
V9_FILE_LENGTH = 121_633_024
V9_MISSING = V9_FILE_LENGTH - 2048


def _random_pixels(
    rng: np.random.Generator, shape: tuple[int, int, int], dtype: type[np.integer[Any]]
) -> np.ndarray:
    info = np.iinfo(dtype)
    pixels = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    # Make sure the extremes (sign bit, byte order) are exercised, not just likely.
    pixels.flat[0] = info.min
    pixels.flat[-1] = info.max
    return pixels


def _read_all(path: Path) -> object:
    return read_dat(path)


def _memmap(path: Path) -> object:
    return open_dat_memmap(path)


def _roi(path: Path) -> object:
    return read_dat_roi(path, slice(0, 1), slice(0, 1))


PIXEL_READERS: list[Callable[[Path], object]] = [_read_all, _memmap, _roi]
PIXEL_READER_IDS = ["read_dat", "open_dat_memmap", "read_dat_roi"]


# --------------------------------------------------------------------------------------------
# The real FileVersion 9 header
# --------------------------------------------------------------------------------------------
def test_fixture_is_the_documented_file() -> None:
    assert V9_FIXTURE.stat().st_size == 2048


def test_fixture_header() -> None:
    header = read_dat_header(V9_FIXTURE)

    assert header.path == os.fspath(V9_FIXTURE)
    assert header.file_version == 9
    assert header.channels == 2
    assert header.eight_bit is False
    assert (header.x_resolution, header.y_resolution) == (8688, 3500)
    assert header.shape == (2, 3500, 8688)
    assert header.pixel_size_nm == pytest.approx(8.0, abs=1e-3)
    assert header.working_distance_mm == pytest.approx(3.0655, abs=1e-4)
    assert header.fib_slice_num == 6254
    assert header.file_length == V9_FILE_LENGTH
    assert header.expected_length == V9_FILE_LENGTH
    assert header.pixel_dtype == np.dtype(">i2")
    f = header.fields
    assert f["FileMagicNum"] == DAT_MAGIC
    assert "Merlin" in f["MachineID"]
    assert f["DetA"] == "InLens"
    assert f["DetB"] == "ESB @ 600 V"
    assert f["SampleID"] == "Z0720-07m_BR_Sec24"
    assert "20s/8nm" in f["Notes"]
    assert f["EHT"] == pytest.approx(1.2)
    assert f["SEMCurr"] == pytest.approx(3e-9)
    assert f["ScanRate"] == pytest.approx(3.125e6)
    assert f["MillingPIDOn"] == 1
    assert f["AI1"] == 1 and f["AI2"] == 1 and f["AI3"] == 0
    assert np.asarray(f["Scaling"]).shape == (2, 4)
    assert all("\0" not in v for v in f.values() if isinstance(v, str))


def test_fixture_json_dict_uses_janelia_names() -> None:
    as_json = read_dat_header(V9_FIXTURE).to_json_dict()

    decoded = json.loads(json.dumps(as_json, allow_nan=False))
    for name in ("FileMagicNum", "FileVersion", "ChanNum", "EightBit", "XResolution"):
        assert name in decoded
    assert decoded["YResolution"] == 3500
    assert decoded["PixelSize"] == pytest.approx(8.0, abs=1e-3)
    assert decoded["WD"] == pytest.approx(3.0655, abs=1e-4)
    assert decoded["FIBSliceNum"] == 6254
    assert decoded["FileLength"] == V9_FILE_LENGTH
    assert set(decoded) == set(dat_header_dtype(9, 2).names or ())


@pytest.mark.parametrize("reader", PIXEL_READERS, ids=PIXEL_READER_IDS)
def test_fixture_pixels_are_refused_not_zero_filled(reader: Callable[[Path], object]) -> None:
    with pytest.raises(DatTruncatedError) as excinfo:
        reader(V9_FIXTURE)

    message = str(excinfo.value)
    assert os.fspath(V9_FIXTURE) in message
    assert "truncated" in message
    assert str(V9_FILE_LENGTH) in message
    assert str(V9_MISSING) in message
    assert excinfo.value.missing_bytes == V9_MISSING
    assert excinfo.value.actual_bytes == 2048


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------
def _documented_layouts() -> dict[int, list[tuple[int, str, str]]]:
    """Parse janelia_dat_layouts.txt: {version: [(offset, name, dtype repr)]}."""
    layouts: dict[int, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] = []
    for line in LAYOUT_TABLES.read_text().splitlines():
        if match := re.match(r"== FileVersion (\d+)", line):
            current = layouts.setdefault(int(match.group(1)), [])
        elif match := re.match(r"\s*(\d+)\s+(\w+)\s+(.+?)\s*$", line):
            current.append((int(match.group(1)), match.group(2), match.group(3)))
    return layouts


@pytest.mark.parametrize("version", [3, 8, 9], ids=lambda v: f"v{v}")
def test_layout_matches_documented_table(version: int) -> None:
    documented = _documented_layouts()[version]
    dtype = dat_header_dtype(version, 2)  # the tables were dumped for ChanNum=2
    assert dtype.fields is not None
    ours = []
    for name in dtype.names or ():
        field_dtype, offset = dtype.fields[name][:2]
        fmt = repr(field_dtype.subdtype) if field_dtype.subdtype else field_dtype.str
        ours.append((offset, name, fmt))
    assert sorted(ours) == sorted(documented)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=lambda c: f"{c}ch")
@pytest.mark.parametrize("version", DAT_VERSIONS, ids=lambda v: f"v{v}")
def test_layout_fields_fit_without_overlap(version: int, channels: int) -> None:
    dtype = dat_header_dtype(version, channels)
    assert dtype.itemsize == DAT_HEADER_BYTES
    assert dtype.fields is not None
    spans = sorted(
        (offset, offset + field_dtype.itemsize, name)
        for name, (field_dtype, offset, *_) in dtype.fields.items()
    )
    for (_, end, name), (start, _, next_name) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{name} overlaps {next_name}"
    assert spans[-1][1] <= DAT_HEADER_BYTES


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        (1, ["AIDelay", "DetC"], ["Detmin", "SEMShiftX", "MillingXSize", "MachineID"]),
        (3, ["AIDelay", "SEMShiftX"], ["Detmin", "MillingXSize"]),
        (4, ["Detmin", "DecimatingFactor"], ["AIDelay", "MillingXSize", "MachineID"]),
        (5, ["MillingXSize", "MachineID", "SEMSpecimenI"], ["FIBSliceNum", "FocusIndex"]),
        (6, ["FIBSliceNum", "FocusIndex"], ["BeamDump2I", "SampleID"]),
        (8, ["BeamDump2I", "MillingI"], ["SampleID", "Restart", "FirstX"]),
        (9, ["SampleID", "Restart", "StageMove", "FirstX", "FirstY"], ["AIDelay"]),
    ],
    ids=["v1", "v3", "v4", "v5", "v6", "v8", "v9"],
)
def test_version_specific_fields(version: int, present: list[str], absent: list[str]) -> None:
    names = set(dat_header_dtype(version, 2).names or ())
    assert set(present) <= names
    assert not set(absent) & names


@pytest.mark.parametrize(
    ("version", "channels", "fmt", "shape"),
    [
        (1, 1, ">f8", (1, 4)),
        (1, 2, ">f8", (2, 4)),
        (1, 4, ">f8", (2, 4)),  # capped: only 64 bytes exist before XResolution
        (2, 4, ">f4", (4, 4)),
        (6, 3, ">f4", (3, 4)),
        (7, 1, ">f4", (2, 4)),
        (9, 4, ">f4", (2, 4)),
    ],
    ids=["v1_1ch", "v1_2ch", "v1_4ch_capped", "v2_4ch", "v6_3ch", "v7_1ch", "v9_4ch"],
)
def test_scaling_shape_per_version(
    version: int, channels: int, fmt: str, shape: tuple[int, int]
) -> None:
    dtype = dat_header_dtype(version, channels)
    assert dtype.fields is not None
    scaling = dtype.fields["Scaling"][0]
    assert scaling.subdtype is not None
    assert scaling.subdtype[0].str == fmt
    assert scaling.subdtype[1] == shape


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.uint8], ids=["int16", "eight_bit"])
@pytest.mark.parametrize("channels", [1, 2, 4], ids=lambda c: f"{c}ch")
@pytest.mark.parametrize("version", DAT_VERSIONS, ids=lambda v: f"v{v}")
def test_write_read_round_trip(
    tmp_path: Path, version: int, channels: int, dtype: type[np.integer[Any]]
) -> None:
    rng = np.random.default_rng(1000 * version + 10 * channels + np.dtype(dtype).itemsize)
    shape = (channels, 5 + version % 3, 7 + 2 * channels)  # odd, non-square, varies per case
    pixels = _random_pixels(rng, shape, dtype)
    path = tmp_path / "slice.dat"

    written = write_dat(path, pixels, fields={"PixelSize": 8.0, "WD": 5.5}, version=version)
    header, read_back = read_dat(path)

    assert header == written
    assert read_back.dtype == np.dtype(dtype)
    assert read_back.dtype.isnative
    assert read_back.flags.c_contiguous
    np.testing.assert_array_equal(read_back, pixels)
    assert header.file_version == version
    assert header.channels == channels
    assert header.eight_bit is (dtype is np.uint8)
    assert header.shape == shape
    assert header.pixel_size_nm == 8.0
    assert header.working_distance_mm == 5.5
    assert header.fib_slice_num == (0 if version >= 6 else None)
    assert header.file_length == header.expected_length == path.stat().st_size
    if dtype is np.int16:
        assert (read_back < 0).any()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    version=st.sampled_from(DAT_VERSIONS),
    dtype=st.sampled_from([np.dtype(np.int16), np.dtype(">i2"), np.dtype(np.uint8)]),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, version: int, dtype: np.dtype
) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6))
    shape = (min(shape[0], 4), *shape[1:])
    pixels = data.draw(hnp.arrays(dtype, shape))
    path = tmp_path_factory.mktemp("prop") / "slice.dat"

    write_dat(path, pixels, version=version)
    _, read_back = read_dat(path)

    np.testing.assert_array_equal(read_back, pixels)


def test_written_fields_read_back_exactly(tmp_path: Path) -> None:
    fields: dict[str, Any] = {
        "PixelSize": 4.0,
        "WD": 5.123,
        "FIBSliceNum": 4_000_000_000,
        "MachineID": "Yale/Merlin-0001",
        "Notes": "synthetic test slice, 8 nm milling",
        "SampleID": "region_a",
        "DetA": "InLens",
        "DetB": "ESB @ 600 V",
        "EHT": 1.2,
        "SEMCurr": 2.5e-9,
        "ScanRate": 3.125e6,
        "FirstX": -17000,
        "Scaling": [[2.0e6, -5724.5, 0.25, 0.1], [2.0e6, -6687.75, 0.5, 2.0]],
    }
    path = tmp_path / "slice.dat"
    write_dat(path, np.zeros((2, 3, 4), np.int16), fields=fields)

    header = read_dat_header(path)

    for name, value in fields.items():
        assert header.fields[name] == value, name
    assert header.fields["AI1"] == header.fields["AI2"] == 1  # defaults for present channels
    assert header.fields["AI3"] == 0


@pytest.mark.parametrize("version", [1, 3, 6, 8, 9], ids=lambda v: f"v{v}")
def test_fields_of_a_read_header_can_be_written_again(tmp_path: Path, version: int) -> None:
    pixels = np.arange(2 * 3 * 5, dtype=np.int16).reshape(2, 3, 5) - 10
    first = write_dat(tmp_path / "a.dat", pixels, fields={"PixelSize": 7.5}, version=version)

    second = write_dat(tmp_path / "b.dat", pixels, fields=first.fields, version=version)
    via_json = write_dat(tmp_path / "c.dat", pixels, fields=first.to_json_dict(), version=version)

    assert second.fields == first.fields
    assert via_json.fields == first.fields


# --------------------------------------------------------------------------------------------
# Independent reader: plain numpy/struct at the documented offsets
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eight_bit", [False, True], ids=["int16", "eight_bit"])
@pytest.mark.parametrize("version", DAT_VERSIONS, ids=lambda v: f"v{v}")
def test_independent_reader_decodes_our_files(
    tmp_path: Path, version: int, eight_bit: bool
) -> None:
    rng = np.random.default_rng(version)
    dtype = np.uint8 if eight_bit else np.int16
    c, y, x = 2, 7, 11
    pixels = _random_pixels(rng, (c, y, x), dtype)
    fields: dict[str, Any] = {"PixelSize": 7.75, "WD": 3.25}
    if version >= 6:
        fields["FIBSliceNum"] = 6254
    path = tmp_path / "slice.dat"
    write_dat(path, pixels, fields=fields, version=version)

    raw = path.read_bytes()
    assert struct.unpack_from(">I", raw, 0)[0] == DAT_MAGIC
    assert struct.unpack_from(">H", raw, 4)[0] == version
    assert struct.unpack_from(">B", raw, 32)[0] == c
    assert struct.unpack_from(">B", raw, 33)[0] == int(eight_bit)
    assert struct.unpack_from(">II", raw, 100) == (x, y)
    if version <= 2:  # v1-2 store Mag..FIBShiftY as f64 from byte 408
        assert struct.unpack_from(">dd", raw, 416) == (7.75, 3.25)
    else:
        assert struct.unpack_from(">ff", raw, 464) == (7.75, 3.25)
    if version >= 6:
        assert struct.unpack_from(">I", raw, 878)[0] == 6254
    assert struct.unpack_from(">q", raw, 1000)[0] == len(raw)
    assert len(raw) == 1024 + x * y * c * np.dtype(dtype).itemsize
    on_disk = np.fromfile(path, dtype=">u1" if eight_bit else ">i2", offset=1024)
    np.testing.assert_array_equal(on_disk.reshape(y, x, c), pixels.transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------
# Memmap and ROI
# --------------------------------------------------------------------------------------------
@pytest.fixture
def two_channel_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = _random_pixels(np.random.default_rng(7), (2, 13, 17), np.int16)
    path = tmp_path / "slice.dat"
    write_dat(path, pixels)
    return path, pixels


def test_memmap_is_on_disk_layout_and_read_only(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, pixels = two_channel_file

    header, mm = open_dat_memmap(path)

    assert mm.shape == (13, 17, 2)
    assert mm.dtype == np.dtype(">i2")
    np.testing.assert_array_equal(mm, pixels.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="read-only"):
        mm[0, 0, 0] = 1
    assert header.shape == pixels.shape


@pytest.mark.parametrize(
    ("y_slice", "x_slice"),
    [
        (slice(None), slice(None)),
        (slice(2, 9), slice(3, 4)),
        (slice(-3, None), slice(None, 5)),
        (slice(1, 12, 3), slice(None, None, -2)),
        (slice(5, 5), slice(0, 17)),
    ],
    ids=["all", "box", "negative", "strided", "empty"],
)
def test_read_dat_roi_matches_read_dat(
    two_channel_file: tuple[Path, np.ndarray], y_slice: slice, x_slice: slice
) -> None:
    path, _ = two_channel_file
    _, full = read_dat(path)

    roi = read_dat_roi(path, y_slice, x_slice)

    np.testing.assert_array_equal(roi, full[:, y_slice, x_slice])
    assert roi.dtype == np.int16 and roi.dtype.isnative


# --------------------------------------------------------------------------------------------
# Damaged files
# --------------------------------------------------------------------------------------------
def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_bad_magic(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, _ = two_channel_file
    _patch(path, 0, struct.pack("<I", DAT_MAGIC))  # little-endian: a byte-swapped writer

    with pytest.raises(DatBadMagicError, match="magic") as excinfo:
        read_dat_header(path)
    assert os.fspath(path) in str(excinfo.value)


def test_not_a_dat_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.dat"
    path.write_text("hello")

    with pytest.raises(DatBadMagicError, match=re.escape(os.fspath(path))):
        read_dat(path)


def test_unknown_version(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, _ = two_channel_file
    _patch(path, 4, struct.pack(">H", 42))

    with pytest.raises(DatUnknownVersionError, match="42") as excinfo:
        read_dat_header(path)
    assert os.fspath(path) in str(excinfo.value)


@pytest.mark.parametrize("n_bytes", [0, 2, 500, 1023], ids=lambda n: f"{n}B")
def test_short_header(two_channel_file: tuple[Path, np.ndarray], n_bytes: int) -> None:
    path, _ = two_channel_file
    path.write_bytes(path.read_bytes()[:n_bytes])

    with pytest.raises(DatShortHeaderError) as excinfo:
        read_dat(path)
    assert os.fspath(path) in str(excinfo.value)
    assert str(n_bytes) in str(excinfo.value)


def test_corrupt_channel_count(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, _ = two_channel_file
    _patch(path, 32, bytes([9]))

    with pytest.raises(DatError, match="ChanNum 9"):
        read_dat_header(path)


def test_strings_end_at_the_first_nul(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, _ = two_channel_file
    _patch(path, 380, b"InLens\0old")  # DetA slot (10 bytes) with leftovers after the NUL

    assert read_dat_header(path).fields["DetA"] == "InLens"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.dat"
    with pytest.raises(FileNotFoundError, match="absent.dat"):
        read_dat(path)


@pytest.mark.parametrize("reader", PIXEL_READERS, ids=PIXEL_READER_IDS)
@pytest.mark.parametrize("cut", [1, 2, 35, 2 * 13 * 17 * 2], ids=lambda n: f"cut{n}")
def test_truncated_pixels_raise_with_missing_count(
    two_channel_file: tuple[Path, np.ndarray], cut: int, reader: Callable[[Path], object]
) -> None:
    path, _ = two_channel_file
    full = path.read_bytes()
    path.write_bytes(full[:-cut])

    with pytest.raises(DatTruncatedError) as excinfo:
        reader(path)

    message = str(excinfo.value)
    assert os.fspath(path) in message
    assert "truncated" in message
    assert f"expected {len(full)} bytes" in message
    assert f"found {len(full) - cut};" in message
    assert f"{cut} bytes of pixel data missing" in message
    assert excinfo.value.missing_bytes == cut


def test_trailing_bytes_are_ignored(
    two_channel_file: tuple[Path, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    path, pixels = two_channel_file
    with path.open("ab") as fh:
        fh.write(b"\x7f" * 3)

    with caplog.at_level(logging.INFO):
        _, read_back = read_dat(path)

    np.testing.assert_array_equal(read_back, pixels)
    assert "3 trailing bytes" in caplog.text


def test_wrong_file_length_is_noted_not_fatal(
    two_channel_file: tuple[Path, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    path, pixels = two_channel_file
    _patch(path, 1000, struct.pack(">q", 123))

    with caplog.at_level(logging.WARNING):
        header, read_back = read_dat(path)

    np.testing.assert_array_equal(read_back, pixels)
    assert header.file_length == 123
    assert "FileLength 123" in caplog.text


def test_short_file_with_wrong_file_length_uses_computed_length(
    two_channel_file: tuple[Path, np.ndarray],
) -> None:
    path, _ = two_channel_file
    size = path.stat().st_size
    _patch(path, 1000, struct.pack(">q", size - 10))  # a FileLength that "agrees" with the cut
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(DatTruncatedError, match="10 bytes of pixel data missing") as excinfo:
        read_dat(path)
    assert f"header FileLength says {size - 10}" in str(excinfo.value)


# --------------------------------------------------------------------------------------------
# Writer validation and atomicity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "fields", "match"),
    [
        (5, {"FIBSliceNum": 1}, "FIBSliceNum"),
        (8, {"SampleID": "x"}, "SampleID"),
        (3, {"Detmin": -10.0}, "Detmin"),
        (2, {"SEMShiftX": 0.0}, "SEMShiftX"),
        (9, {"NoSuchField": 1}, "NoSuchField"),
        (9, {"DetA": "a detector name that is too long"}, "DetA"),
        (9, {"FIBSliceNum": -1}, "FIBSliceNum"),
        (9, {"FIBSliceNum": 1.5}, "FIBSliceNum"),
        (9, {"PixelSize": "eight"}, "PixelSize"),
        (9, {"PixelSize": 1e39}, "PixelSize"),
        (9, {"Scaling": [[1.0, 2.0, 3.0, 4.0]]}, "Scaling"),
        (9, {"ChanNum": 3}, "ChanNum"),
        (9, {"FileLength": 10}, "FileLength"),
        (9, {"FileVersion": 8}, "FileVersion"),
    ],
    ids=[
        "v5_no_slice_num",
        "v8_no_sample_id",
        "v3_no_detmin",
        "v2_no_sem_shift",
        "unknown_name",
        "string_too_long",
        "negative_unsigned",
        "float_for_int",
        "text_for_float",
        "float32_overflow",
        "scaling_shape",
        "derived_channels",
        "derived_length",
        "derived_version",
    ],
)
def test_write_rejects_bad_fields(
    tmp_path: Path, version: int, fields: dict[str, Any], match: str
) -> None:
    path = tmp_path / "slice.dat"
    with pytest.raises(ValueError, match=match):
        write_dat(path, np.zeros((2, 2, 2), np.int16), fields=fields, version=version)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (np.zeros((2, 2, 2), np.float32), "int16 or uint8"),
        (np.zeros((2, 2, 2), np.uint16), "int16 or uint8"),
        (np.zeros((2, 2), np.int16), "channel, y, x"),
        (np.zeros((5, 2, 2), np.int16), "1-4 channels"),
        (np.zeros((1, 0, 2), np.int16), "at least 1 x 1"),
    ],
    ids=["float", "uint16", "2d", "five_channels", "empty"],
)
def test_write_rejects_bad_pixels(tmp_path: Path, pixels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_dat(tmp_path / "slice.dat", pixels)


def test_write_rejects_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FileVersion 10"):
        write_dat(tmp_path / "slice.dat", np.zeros((1, 2, 2), np.int16), version=10)


def test_failed_write_keeps_the_old_file(two_channel_file: tuple[Path, np.ndarray]) -> None:
    path, _ = two_channel_file
    before = path.read_bytes()

    with pytest.raises(ValueError):
        write_dat(path, np.zeros((1, 2, 2), np.int16), fields={"Notes": 7})

    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_replaces_atomically_with_normal_permissions(tmp_path: Path) -> None:
    path = tmp_path / "slice.dat"
    write_dat(path, np.ones((1, 4, 4), np.int16))
    write_dat(path, np.full((1, 2, 3), -5, np.int16))
    reference = tmp_path / "plain"
    reference.write_bytes(b"")

    _, pixels = read_dat(path)

    np.testing.assert_array_equal(pixels, np.full((1, 2, 3), -5, np.int16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "slice.dat"]
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


def test_non_finite_values_become_json_null(tmp_path: Path) -> None:
    scaling = [[math.inf, 1.0, 0.0, 0.0], [0.0, math.nan, 0.0, 0.0]]
    header = write_dat(
        tmp_path / "slice.dat",
        np.zeros((2, 1, 1), np.int16),
        fields={"WD": math.nan, "Scaling": scaling},
    )

    as_json = header.to_json_dict()

    json.dumps(as_json, allow_nan=False)
    assert as_json["WD"] is None
    assert as_json["Scaling"] == [[None, 1.0, 0.0, 0.0], [0.0, None, 0.0, 0.0]]
    assert math.isnan(header.fields["WD"])
