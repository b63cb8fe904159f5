"""Janelia enhanced FIB-SEM ``.dat`` files: one milled slice (one SEM frame) per file.

Layout (see ``../shared/formats/janelia_dat.md`` and the per-version tables beside it):

* bytes ``0..1023``: big-endian header whose field offsets depend on ``FileVersion`` (1-9);
* bytes ``1024..``: pixels, big-endian ``int16`` (``uint8`` when ``EightBit == 1``), channels
  interleaved per pixel, row-major, i.e. an on-disk array of shape ``(y, x, channel)``.

Readers here return pixels as ``(channel, y, x)`` in native byte order. Real acquisitions
produce truncated files; every reader refuses them with :class:`DatTruncatedError` instead of
padding with zeros (as fibsem-tools and the MATLAB reference do), because zero-filled rows
look like real, if dark, data to every downstream step.

Pure numpy: this module never imports dagster.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DAT_HEADER_BYTES",
    "DAT_MAGIC",
    "DAT_VERSIONS",
    "DatBadMagicError",
    "DatError",
    "DatHeader",
    "DatShortHeaderError",
    "DatTruncatedError",
    "DatUnknownVersionError",
    "dat_header_dtype",
    "open_dat_memmap",
    "read_dat",
    "read_dat_header",
    "read_dat_roi",
    "write_dat",
]

_log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: ``FileMagicNum`` (u32 at byte 0) of every Janelia .dat file (0xD3EDF5F2).
DAT_MAGIC = 3_555_587_570
#: Size of the header; pixel data start at this byte offset.
DAT_HEADER_BYTES = 1024
#: FileVersion values this module can read and write.
DAT_VERSIONS: tuple[int, ...] = tuple(range(1, 10))
#: Detector channels a header can describe (AI1..AI4).
_MAX_CHANNELS = 4

# Written by write_dat from the pixels and the requested version, never taken on trust
# from the caller: a FileLength or ChanNum that disagrees with the pixels makes a broken file.
_DERIVED_FIELDS = (
    "FileMagicNum",
    "FileVersion",
    "ChanNum",
    "EightBit",
    "XResolution",
    "YResolution",
    "FileLength",
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class DatError(ValueError):
    """A file is not a readable Janelia .dat file; the message names the file and the problem."""


class DatBadMagicError(DatError):
    """``FileMagicNum`` is not 3555587570: not a .dat file (or not big-endian)."""


class DatUnknownVersionError(DatError):
    """``FileVersion`` is outside 1-9, so the header layout is unknown."""


class DatShortHeaderError(DatError):
    """The file ends before the 1024-byte header does."""


class DatTruncatedError(DatError):
    """The pixel data stop before ``1024 + X*Y*C*bytes``; the missing pixels are never invented.

    Attributes give the sizes in bytes so QC code can report them without parsing the message.
    """

    def __init__(self, path: str, expected_bytes: int, actual_bytes: int, detail: str) -> None:
        self.path = path
        self.expected_bytes = expected_bytes
        self.actual_bytes = actual_bytes
        self.missing_bytes = expected_bytes - actual_bytes
        super().__init__(
            f"{path}: truncated: expected {expected_bytes} bytes ({detail}), found "
            f"{actual_bytes}; {self.missing_bytes} bytes of pixel data missing"
        )


# --------------------------------------------------------------------------------------------
# Header layouts
# --------------------------------------------------------------------------------------------
class _Field(NamedTuple):
    name: str
    fmt: str  # numpy scalar format, big-endian where multi-byte
    offset: int  # bytes from the start of the file
    shape: tuple[int, ...] = ()


def _fields(fmt: str, start: int, step: int, *names: str) -> list[_Field]:
    """Equally spaced fields of one format (the headers are full of such runs)."""
    return [_Field(name, fmt, start + i * step) for i, name in enumerate(names)]


def _layout(version: int, channels: int) -> list[_Field]:
    """Field list of one FileVersion, following fibsem-tools ``read_header`` and readfibsem.m.

    The tables in ``janelia_dat_layouts.txt`` (v3, v8, v9) are reproduced exactly; v1-2, v4-7
    follow the version switches of the reference readers (no table was dumped for them).
    """
    f: list[_Field] = [
        _Field("FileMagicNum", ">u4", 0),
        _Field("FileVersion", ">u2", 4),
        _Field("FileType", ">u2", 6),  # 1 = Zeiss Neon detectors
        _Field("SWdate", "S10", 8),
        _Field("TimeStep", ">f8", 24),  # AI sampling time incl. oversampling (s)
        _Field("ChanNum", "u1", 32),
        _Field("EightBit", "u1", 33),
    ]
    # Scaling[channel, (offset, gain, 2nd order, 3rd order)]. Only the 64 bytes 36..99 exist
    # before XResolution. The reference readers read f64[C, 4] for v1, which for C > 2 would
    # run into XResolution; we cap v1 at 2 rows (the most the space can hold) rather than
    # decode resolution bytes as scaling factors.
    if version == 1:
        f.append(_Field("Scaling", ">f8", 36, (min(channels, 2), 4)))
    elif version <= 6:
        f.append(_Field("Scaling", ">f4", 36, (channels, 4)))
    else:
        f.append(_Field("Scaling", ">f4", 36, (2, 4)))
    if version >= 9:
        f += [
            _Field("Restart", "u1", 68),
            _Field("StageMove", "u1", 69),
            _Field("FirstX", ">i4", 70),
            _Field("FirstY", ">i4", 74),
        ]
    f += [_Field("XResolution", ">u4", 100), _Field("YResolution", ">u4", 104)]
    if version <= 3:
        f += [_Field("Oversampling", "u1", 108), _Field("AIDelay", ">i2", 109)]
    else:
        f.append(_Field("Oversampling", ">u2", 108))
    f.append(_Field("ZeissScanSpeed", "u1", 111))
    if version <= 3:
        # Detmin/Detmax are absent before v4 (MATLAB assumes -10/+10 V); we do not invent them.
        f += _fields(">f8", 112, 8, "ScanRate", "FramelineRampdownRatio", "Xmin", "Xmax")
    else:
        f += _fields(
            ">f4", 112, 4, "ScanRate", "FramelineRampdownRatio", "Xmin", "Xmax", "Detmin", "Detmax"
        )
        f.append(_Field("DecimatingFactor", ">u2", 136))
    f += _fields("u1", 151, 1, "AI1", "AI2", "AI3", "AI4")
    if version >= 9:
        f.append(_Field("SampleID", "S25", 155))
    f.append(_Field("Notes", "S200", 180))
    f += [_Field("DetA", "S10", 380), _Field("DetB", "S18", 390)]
    if version <= 2:
        # v1-2 keep DetC/DetD after the FIB block and store the analog values as f64.
        f += [_Field("DetC", "S20", 700), _Field("DetD", "S20", 720)]
        f += _fields(">f8", 408, 8, "Mag", "PixelSize", "WD", "EHT")
        f += [_Field("SEMApr", "u1", 440), _Field("HighCurrent", "u1", 441)]
        f += _fields(
            ">f8",
            448,
            8,
            "SEMCurr",
            "SEMRot",
            "ChamVac",
            "GunVac",
            "SEMStiX",
            "SEMStiY",
            "SEMAlnX",
            "SEMAlnY",
            "StageX",
            "StageY",
            "StageZ",
            "StageT",
            "StageR",
            "StageM",
            "BrightnessA",
            "ContrastA",
            "BrightnessB",
            "ContrastB",
        )
        f += [
            _Field("Mode", "u1", 600),
            _Field("FIBFocus", ">f8", 608),
            _Field("FIBProb", "u1", 616),
        ]
        f += _fields(
            ">f8",
            624,
            8,
            "FIBCurr",
            "FIBRot",
            "FIBAlnX",
            "FIBAlnY",
            "FIBStiX",
            "FIBStiY",
            "FIBShiftX",
            "FIBShiftY",
        )
    else:
        f += [_Field("DetC", "S20", 410), _Field("DetD", "S20", 430)]
        f += _fields(">f4", 460, 4, "Mag", "PixelSize", "WD", "EHT")
        f += [_Field("SEMApr", "u1", 480), _Field("HighCurrent", "u1", 481)]
        f += _fields(">f4", 490, 4, "SEMCurr", "SEMRot", "ChamVac", "GunVac")
        f += _fields(
            ">f4",
            510,
            4,
            "SEMShiftX",
            "SEMShiftY",
            "SEMStiX",
            "SEMStiY",
            "SEMAlnX",
            "SEMAlnY",
            "StageX",
            "StageY",
            "StageZ",
            "StageT",
            "StageR",
            "StageM",
        )
        f += _fields(">f4", 560, 4, "BrightnessA", "ContrastA", "BrightnessB", "ContrastB")
        f += [
            _Field("Mode", "u1", 600),
            _Field("FIBFocus", ">f4", 604),
            _Field("FIBProb", "u1", 608),
        ]
        f += _fields(
            ">f4",
            620,
            4,
            "FIBCurr",
            "FIBRot",
            "FIBAlnX",
            "FIBAlnY",
            "FIBStiX",
            "FIBStiY",
            "FIBShiftX",
            "FIBShiftY",
        )
    if version >= 5:
        # readfibsem.m lists this block for {5,6,7,8} only because it predates v9;
        # fibsem-tools and the v9 table carry it on (the real v9 fixture has MachineID set).
        f += [_Field("MillingXResolution", ">u4", 652), _Field("MillingYResolution", ">u4", 656)]
        f += _fields(
            ">f4",
            660,
            4,
            "MillingXSize",
            "MillingYSize",
            "MillingULAng",
            "MillingURAng",
            "MillingLineTime",
            "FIBFOV",
        )
        f += [
            _Field("MillingLinesPerImage", ">u2", 684),
            _Field("MillingPIDOn", "u1", 686),
            _Field("MillingPIDMeasured", "u1", 689),
        ]
        f += _fields(
            ">f4",
            690,
            4,
            "MillingPIDTarget",
            "MillingPIDTargetSlope",
            "MillingPIDP",
            "MillingPIDI",
            "MillingPIDD",
        )
        f.append(_Field("MachineID", "S30", 800))
    if version >= 6:
        # readfibsem.m names byte 866 "SEMSpecimenI" too, silently overwriting the v>=5 field
        # at 980; we keep both under the names of the layout tables (fibsem-tools HEAD).
        # readfibsem.m also reads this block for {6,7} only; the v8 table includes it.
        f += _fields(
            ">f4",
            850,
            4,
            "Temperature",  # degrees F
            "FaradayCupI",  # nA
            "FIBSpecimenI",  # nA
            "BeamDump1I",  # nA
            "SEMSpecimenICurrent",  # nA
            "MillingYVoltage",  # V
            "FocusIndex",
        )
        f.append(_Field("FIBSliceNum", ">u4", 878))
    if version >= 8:
        f += _fields(">f4", 882, 4, "BeamDump2I", "MillingI")  # nA
    if version >= 5:
        f.append(_Field("SEMSpecimenI", ">f4", 980))  # nA
    f.append(_Field("FileLength", ">i8", 1000))
    return f


@functools.lru_cache(maxsize=64)
def dat_header_dtype(version: int, channels: int) -> np.dtype[np.void]:
    """Structured big-endian dtype (itemsize 1024, explicit offsets) of one header layout.

    ``channels`` matters because ``Scaling`` is ``[ChanNum, 4]`` in FileVersion 1-6.
    Raises ``ValueError`` for an unknown version or a channel count outside 1-4.
    """
    if version not in DAT_VERSIONS:
        raise ValueError(f"unknown FileVersion {version}; known versions are 1-9")
    if not 1 <= channels <= _MAX_CHANNELS:
        raise ValueError(f"ChanNum must be 1-{_MAX_CHANNELS}, got {channels}")
    fields = sorted(_layout(version, channels), key=lambda fld: fld.offset)
    return np.dtype(
        {
            "names": [fld.name for fld in fields],
            "formats": [(fld.fmt, fld.shape) if fld.shape else fld.fmt for fld in fields],
            "offsets": [fld.offset for fld in fields],
            "itemsize": DAT_HEADER_BYTES,
        }
    )


# --------------------------------------------------------------------------------------------
# Header value conversion
# --------------------------------------------------------------------------------------------
def _decode_text(raw: bytes) -> str:
    # Strings are NUL-terminated: bytes after the first NUL are leftovers of an older,
    # longer value, not part of this one. LabVIEW writes ASCII in practice; latin-1 keeps
    # any stray byte readable instead of failing.
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _to_python(value: Any) -> Any:
    """numpy header value -> python scalar / str / nested list."""
    if isinstance(value, bytes):
        return _decode_text(value)
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value]
    if isinstance(value, np.floating):
        # float32 fields become the shortest decimal that maps back to the same float32
        # (PixelSize 7.9998574, not 7.999857425689697); writing it back is bit-exact.
        return float(str(value))
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"unexpected header value {value!r}")  # pragma: no cover - layout bug


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# DatHeader
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatHeader:
    """A parsed 1024-byte header.

    ``fields`` maps the Janelia field names of this FileVersion (``FileVersion``, ``ChanNum``,
    ``PixelSize``, ...) to python values: ints, floats, NUL-stripped strings and ``Scaling`` as
    nested lists ``[channel][offset, gain, 2nd, 3rd order]``.
    """

    path: str
    fields: dict[str, Any] = field(hash=False)

    @property
    def file_version(self) -> int:
        return int(self.fields["FileVersion"])

    @property
    def channels(self) -> int:
        """Number of detector channels (``ChanNum``)."""
        return int(self.fields["ChanNum"])

    @property
    def eight_bit(self) -> bool:
        """True when pixels are stored as uint8 (``EightBit == 1``), else int16."""
        return int(self.fields["EightBit"]) == 1

    @property
    def x_resolution(self) -> int:
        """Pixels per line (x extent, pixels)."""
        return int(self.fields["XResolution"])

    @property
    def y_resolution(self) -> int:
        """Lines per frame (y extent, pixels)."""
        return int(self.fields["YResolution"])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Pixel array shape as returned by :func:`read_dat`: ``(channel, y, x)``."""
        return (self.channels, self.y_resolution, self.x_resolution)

    @property
    def pixel_size_nm(self) -> float:
        """Lateral pixel size in nm (``PixelSize``)."""
        return float(self.fields["PixelSize"])

    @property
    def working_distance_mm(self) -> float:
        """SEM working distance in mm (``WD``); its drift over z estimates the milling step."""
        return float(self.fields["WD"])

    @property
    def fib_slice_num(self) -> int | None:
        """FIB slice counter (``FIBSliceNum``, FileVersion >= 6), else None."""
        value = self.fields.get("FIBSliceNum")
        return None if value is None else int(value)

    @property
    def file_length(self) -> int:
        """Total file size in bytes as recorded in the header (``FileLength``)."""
        return int(self.fields["FileLength"])

    @property
    def pixel_dtype(self) -> np.dtype[Any]:
        """On-disk pixel dtype: ``>u1`` when EightBit, else ``>i2``."""
        return np.dtype(">u1") if self.eight_bit else np.dtype(">i2")

    @property
    def expected_length(self) -> int:
        """Bytes a complete file has: 1024 + X * Y * ChanNum * bytes per sample."""
        n_samples = self.x_resolution * self.y_resolution * self.channels
        return DAT_HEADER_BYTES + n_samples * self.pixel_dtype.itemsize

    def to_json_dict(self) -> dict[str, Any]:
        """All fields under their Janelia names, JSON-serialisable (NaN and inf become None)."""
        return {name: _json_safe(value) for name, value in self.fields.items()}


def _parse_header(path: str, buf: bytes) -> DatHeader:
    """Validate and decode a header held in memory (``buf`` may be shorter than 1024 bytes)."""
    if len(buf) >= 4:
        magic = int.from_bytes(buf[:4], "big")
        if magic != DAT_MAGIC:
            raise DatBadMagicError(
                f"{path}: bad magic number {magic} (0x{magic:08X}); a Janelia .dat file starts "
                f"with FileMagicNum {DAT_MAGIC} (0x{DAT_MAGIC:08X})"
            )
    if len(buf) < DAT_HEADER_BYTES:
        raise DatShortHeaderError(
            f"{path}: short header: file has {len(buf)} bytes, the header alone needs "
            f"{DAT_HEADER_BYTES}"
        )
    version = int.from_bytes(buf[4:6], "big")
    if version not in DAT_VERSIONS:
        raise DatUnknownVersionError(
            f"{path}: unknown FileVersion {version}; this reader knows versions "
            f"{DAT_VERSIONS[0]}-{DAT_VERSIONS[-1]}"
        )
    channels = buf[32]
    if not 1 <= channels <= _MAX_CHANNELS:
        raise DatError(f"{path}: corrupt header: ChanNum {channels} is outside 1-{_MAX_CHANNELS}")
    record = np.frombuffer(buf, dtype=dat_header_dtype(version, channels), count=1)[0]
    names = record.dtype.names or ()
    return DatHeader(path=path, fields={name: _to_python(record[name]) for name in names})


def read_dat_header(path: PathLike) -> DatHeader:
    """Parse the header of a .dat file, reading only its first 1024 bytes.

    Raises ``FileNotFoundError``, :class:`DatBadMagicError`, :class:`DatShortHeaderError`,
    :class:`DatUnknownVersionError` or :class:`DatError` (corrupt ChanNum).
    """
    spath = os.fspath(path)
    with open(spath, "rb") as fh:
        buf = fh.read(DAT_HEADER_BYTES)
    return _parse_header(spath, buf)


# --------------------------------------------------------------------------------------------
# Pixel readers
# --------------------------------------------------------------------------------------------
def _check_complete(header: DatHeader) -> None:
    """Raise DatTruncatedError unless the file holds every pixel the header promises."""
    if header.x_resolution == 0 or header.y_resolution == 0:
        raise DatError(
            f"{header.path}: corrupt header: image of {header.y_resolution} x "
            f"{header.x_resolution} pixels (y x x) has no pixels"
        )
    expected = header.expected_length
    actual = os.stat(header.path).st_size
    recorded = header.file_length
    if actual < expected:
        if recorded == expected:
            source = "header FileLength"
        else:
            source = f"computed; header FileLength says {recorded}"
        detail = (
            f"{source}: 1024-byte header + {header.y_resolution} x {header.x_resolution} px x "
            f"{header.channels} channels x {header.pixel_dtype.itemsize} bytes"
        )
        raise DatTruncatedError(header.path, expected, actual, detail)
    if recorded != expected:
        # The pixel count is what the reader relies on; a stale FileLength alone is harmless.
        _log.warning(
            "%s: header FileLength %d disagrees with 1024 + X*Y*C*bytes = %d; using %d",
            header.path,
            recorded,
            expected,
            expected,
        )
    if actual > expected:
        _log.info("%s: ignoring %d trailing bytes after the pixels", header.path, actual - expected)


def open_dat_memmap(path: PathLike) -> tuple[DatHeader, np.memmap[Any, np.dtype[Any]]]:
    """Header and a read-only memmap of the pixels in on-disk layout.

    The memmap has shape ``(y, x, channel)`` and big-endian dtype ``>i2`` (``>u1`` when
    EightBit), so a caller can read a sub-rectangle of a huge slice without loading all of
    it. Raises :class:`DatTruncatedError` first if the file is shorter than the header says.
    """
    header = read_dat_header(path)
    _check_complete(header)
    pixels: np.memmap[Any, np.dtype[Any]] = np.memmap(
        header.path,
        dtype=header.pixel_dtype,
        mode="r",
        offset=DAT_HEADER_BYTES,
        shape=(header.y_resolution, header.x_resolution, header.channels),
    )
    return header, pixels


def _to_native_cyx(yxc: npt.NDArray[Any], eight_bit: bool) -> npt.NDArray[Any]:
    """(y, x, c) big-endian -> C-contiguous (c, y, x) native int16 / uint8 (one copy)."""
    native = np.uint8 if eight_bit else np.int16
    return yxc.transpose(2, 0, 1).astype(native, order="C")


def read_dat(path: PathLike) -> tuple[DatHeader, npt.NDArray[Any]]:
    """Header and all pixels as ``(channel, y, x)`` native ``int16`` (``uint8`` if EightBit).

    Trailing bytes after the pixels are ignored. Raises :class:`DatTruncatedError` (never pads
    with zeros) when pixels are missing, plus the errors of :func:`read_dat_header`.
    """
    header, mm = open_dat_memmap(path)
    try:
        return header, _to_native_cyx(mm, header.eight_bit)
    finally:
        del mm  # release the mapping now rather than at garbage collection


def read_dat_roi(path: PathLike, y_slice: slice, x_slice: slice) -> npt.NDArray[Any]:
    """Pixels of one rectangle as ``(channel, y, x)`` native ``int16`` (``uint8`` if EightBit).

    ``y_slice``/``x_slice`` index pixels (lines / columns) exactly like numpy slices; only the
    touched rows are read from disk. Same errors as :func:`read_dat`.
    """
    header, mm = open_dat_memmap(path)
    try:
        return _to_native_cyx(mm[y_slice, x_slice, :], header.eight_bit)
    finally:
        del mm


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------
def _coerce(name: str, dtype: np.dtype[Any], value: Any) -> Any:
    """Check one caller value against its field dtype; ValueError names the field."""
    if dtype.subdtype is not None:  # Scaling
        base, shape = dtype.subdtype
        try:
            arr = np.asarray(value, dtype=np.float64)  # None -> NaN, like JSON round trips
        except (TypeError, ValueError) as exc:
            raise ValueError(f"field {name}: not numeric: {value!r}") from exc
        if arr.shape != shape:
            raise ValueError(f"field {name}: expected shape {shape}, got {arr.shape}")
        return arr.astype(base)
    if dtype.kind == "S":
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(raw, bytes):
            raise ValueError(f"field {name}: expected str, got {value!r}")
        if b"\0" in raw:
            raise ValueError(f"field {name}: NUL byte in {value!r} would end the string early")
        if len(raw) > dtype.itemsize:
            raise ValueError(
                f"field {name}: {len(raw)} bytes do not fit its {dtype.itemsize}-byte slot"
            )
        return raw
    if dtype.kind in "iu":
        try:
            number = operator.index(value)
        except TypeError as exc:
            raise ValueError(f"field {name}: expected an integer, got {value!r}") from exc
        info = np.iinfo(dtype)
        if not info.min <= number <= info.max:
            raise ValueError(
                f"field {name}: {number} outside the {dtype.name} range {info.min}..{info.max}"
            )
        return number
    # float field; None (how to_json_dict spells NaN) is written back as NaN
    if value is None:
        return math.nan
    try:
        number_f = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"field {name}: expected a number, got {value!r}") from exc
    if math.isfinite(number_f) and abs(number_f) > float(np.finfo(dtype).max):
        raise ValueError(f"field {name}: {number_f} overflows {dtype.name}")
    return number_f


def _build_header(
    pixels: npt.NDArray[Any], fields: Mapping[str, Any], version: int
) -> npt.NDArray[np.void]:
    if pixels.ndim != 3:
        raise ValueError(f"pixels must be (channel, y, x), got shape {pixels.shape}")
    channels, ny, nx = (int(n) for n in pixels.shape)
    if pixels.dtype.kind == "i" and pixels.dtype.itemsize == 2:
        eight_bit = 0
    elif pixels.dtype.kind == "u" and pixels.dtype.itemsize == 1:
        eight_bit = 1
    else:
        raise ValueError(f"pixels must be int16 or uint8 (EightBit), got {pixels.dtype}")
    if not 1 <= channels <= _MAX_CHANNELS:
        raise ValueError(f"pixels must have 1-{_MAX_CHANNELS} channels, got {channels}")
    if ny < 1 or nx < 1 or max(ny, nx) > np.iinfo(np.uint32).max:
        raise ValueError(f"pixels must be at least 1 x 1 and fit u32 sizes, got {ny} x {nx}")
    if version not in DAT_VERSIONS:
        raise ValueError(f"unknown FileVersion {version}; known versions are 1-9")

    dtype = dat_header_dtype(version, channels)
    field_types = dtype.fields
    assert field_types is not None  # a structured dtype always has fields
    derived: dict[str, int] = {
        "FileMagicNum": DAT_MAGIC,
        "FileVersion": version,
        "ChanNum": channels,
        "EightBit": eight_bit,
        "XResolution": nx,
        "YResolution": ny,
        "FileLength": DAT_HEADER_BYTES + ny * nx * channels * pixels.dtype.itemsize,
    }
    # Defaults that make files usable by the reference readers, which use AI1..AI4 to decide
    # which detector images exist; callers may override them.
    values: dict[str, Any] = {"FileType": 1}
    values.update({f"AI{i + 1}": 1 for i in range(channels)})

    for name, value in fields.items():
        if name not in field_types:
            raise ValueError(f"field {name!r} does not exist in FileVersion {version} headers")
        coerced = _coerce(name, field_types[name][0], value)
        if name in derived:
            if coerced != derived[name]:
                raise ValueError(
                    f"field {name}: {value!r} contradicts the pixels/version, which give "
                    f"{derived[name]}; it is derived, leave it out"
                )
            continue
        values[name] = coerced

    header = np.zeros(1, dtype=dtype)  # unlisted bytes stay zero, as in real files
    for name, value in {**values, **derived}.items():
        header[name] = value
    return header


def write_dat(
    path: PathLike,
    pixels: npt.NDArray[Any],
    *,
    fields: Mapping[str, Any] | None = None,
    version: int = 9,
) -> DatHeader:
    """Write one slice as a Janelia .dat file of FileVersion ``version``; return its header.

    ``pixels`` is ``(channel, y, x)`` with 1-4 channels, ``int16`` (any byte order) or
    ``uint8`` (written with EightBit = 1). The header gets the magic number, FileVersion,
    ChanNum, EightBit, X/YResolution and FileLength from the pixels, ``FileType = 1`` and
    ``AI1..AI<C> = 1`` by default, plus any ``fields`` (Janelia names and units, e.g.
    ``PixelSize`` in nm, ``WD`` in mm, ``FIBSliceNum``, ``Notes``, ``Scaling`` as
    ``[channel][4]``). A field that the version lacks, a value that does not fit, or a
    derived field that disagrees with the pixels raises ``ValueError`` naming the field.

    The file appears atomically: data go to a temporary file in the same directory, which is
    then renamed over ``path``, so readers never see a half-written slice.
    """
    header_arr = _build_header(pixels, fields or {}, version)
    header_bytes = header_arr.tobytes()
    target = Path(path)
    disk_dtype = np.dtype(">u1") if header_arr["EightBit"][0] == 1 else np.dtype(">i2")
    _, ny, nx = pixels.shape
    # Convert a band of lines at a time so memory stays bounded for large slices.
    row_bytes = nx * pixels.shape[0] * disk_dtype.itemsize
    rows_per_block = max(1, (16 << 20) // max(row_bytes, 1))

    # Not tempfile.mkstemp: its 0600 mode would survive the rename and hide the slice from
    # other users of a shared landing zone. "x" mode still refuses to reuse an existing name.
    tmp_name = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        with open(tmp_name, "xb") as fh:
            fh.write(header_bytes)
            for y0 in range(0, ny, rows_per_block):
                band = pixels[:, y0 : y0 + rows_per_block, :].transpose(1, 2, 0)
                fh.write(np.ascontiguousarray(band, dtype=disk_dtype).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    return _parse_header(os.fspath(path), header_bytes)
