"""Paintera containers: label groups (and raw context) in N5 or Zarr, in pure Python.

Paintera (saalfeldlab) opens a *label source* from one group of an N5, Zarr (v2) or HDF5
container ("open N5/Zarr" dialog). What it requires, and what this module writes::

    <name>.n5/  (or <name>.zarr/: the same tree as Zarr v2 groups and arrays)
      volumes/raw/                      raw context: {"multiScale": true, "resolution": [x, y, z],
                                        "offset": [x, y, z], "axes", "units"}
        s0/, s1/, ...                   uint8, 2x mean-downsampled; "downsamplingFactors"
      volumes/labels/<name>/            {"painteraData": {"type": "label"}, "maxId": N}
        data/                           {"multiScale": true, "resolution", "offset", "maxId",
                                        "isLabelMultiset": false}
          s0/, s1/, ...                 uint64 labels, 2x mode-downsampled (the most frequent
                                        label of each 2x2x2 window); "downsamplingFactors"

Conventions: ``resolution`` is nm per voxel and ``offset`` the world position (nm) of voxel 0's
*centre* (the same as an OME-NGFF translation), both in Paintera's x, y, z order; every numpy
array here is (z, y, x). N5 stores dimensions x, y, z, so the bytes need no transposition
(chunks are encoded by :func:`fib_assets.core.formats.n5.encode_chunk`).

Reading accepts what Paintera writes: plain unsigned-integer labels (chunks missing on disk are
background, as in Paintera), any N5 compression tensorstore's ``n5`` driver reads, and
label-multiset datasets (``isLabelMultiset: true``, imglib2-label-multisets serialisation), which
are converted to plain labels by their per-voxel arg-max (exact at s0, where every voxel holds a
single label). A label group without ``maxId``, without ``data/s0``, with a non-3-D or
non-integer ``s0`` is refused with :class:`PainteraError` naming the container, the group and
the problem.

Writers are blockwise (peak memory: a block of 2³ chunks at s0; at lower levels one chunk and
the 2x larger window below it, never the volume) and atomic: a container is built beside
``out`` and renamed into place when complete. Not written: the ``unique-labels`` and
``label-to-block-mapping`` lookups (Paintera then scans blocks itself when it builds meshes)
and ``fragment-segment-assignment`` (no agglomeration).
"""

from __future__ import annotations

import bz2
import itertools
import json
import lzma
import os
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fib_assets.core.blockwise import atomic_write_json
from fib_assets.core.formats.base import (
    ArraySource,
    FormatError,
    VolumeInfo,
    VolumeSource,
    publish,
)
from fib_assets.core.formats.n5 import N5_VERSION, N5Dataset, encode_chunk
from fib_assets.core.formats.zarr import downsample_roi
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize, pyramid_shapes

Array = npt.NDArray[Any]

RAW_GROUP = "volumes/raw"
LABELS_GROUP = "volumes/labels"
DEFAULT_CHUNKS = (64, 64, 64)
SUFFIXES = (".n5", ".zarr")
_N5_COMPRESSION = {"type": "gzip", "level": 1, "useZlib": False}
_HEADER = struct.Struct(">HH")  # mode, ndim (then ndim u32 sizes, x first)


class PainteraError(FormatError):
    """A container or label group Paintera (or we) cannot use; names both and the problem."""

    def __init__(self, container: str | Path, problem: str, group: str | None = None) -> None:
        self.container = str(container)
        self.group = group
        self.problem = problem
        where = f"{self.container}" + (f" (group {group!r})" if group else "")
        super().__init__(f"{where}: {problem}")


def _xyz(zyx: Sequence[Any]) -> list[Any]:
    return [zyx[2], zyx[1], zyx[0]]


def _triple3(values: Sequence[Any], kind: type) -> tuple[Any, Any, Any]:
    return (kind(values[0]), kind(values[1]), kind(values[2]))


# --- storage backends: the few operations Paintera's layout needs, for N5 and Zarr -------------


class LabelArray(Protocol):
    """One stored 3-D dataset, read by (z, y, x) ROI."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def read(self, roi: Roi) -> Array: ...


class _Writer(Protocol):
    def write(self, roi: Roi, data: Array) -> None: ...


def _chunk_grid(roi: Roi, chunks: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    ranges = [
        range(o // c, -(-e // c)) for o, e, c in zip(roi.offset, roi.end, chunks, strict=True)
    ]
    for idx in itertools.product(*ranges):
        yield (idx[0], idx[1], idx[2])


def _decompress(payload: bytes, compression: dict[str, Any], where: str) -> bytes:
    kind = compression.get("type", "raw")
    try:
        if kind == "raw":
            return payload
        if kind == "gzip":
            return zlib.decompress(payload, 32 + zlib.MAX_WBITS)  # gzip or zlib stream
        if kind == "bzip2":
            return bz2.decompress(payload)
        if kind == "xz":
            return lzma.decompress(payload)
        if kind in ("zstd", "blosc"):
            import numcodecs

            codec = numcodecs.Zstd() if kind == "zstd" else numcodecs.Blosc()
            return bytes(codec.decode(payload))
    except (OSError, ValueError, RuntimeError, zlib.error, lzma.LZMAError) as err:
        raise FormatError(f"{where}: cannot decompress {kind}: {err}") from err
    raise FormatError(f"{where}: unsupported N5 compression {compression!r}")


class _N5PlainArray:
    """A plain N5 dataset; gzip/raw chunks via our decoder, other codecs via tensorstore. A
    chunk file that does not exist is background (zeros), as Paintera writes sparse labels."""

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self._dataset = N5Dataset(path, attrs) if _ours(attrs) else None
        self._path = path
        self._ts: Any = None
        dims = [int(v) for v in attrs["dimensions"]]
        self._shape = (dims[2], dims[1], dims[0])
        self._dtype = np.dtype(str(attrs["dataType"]))
        if self._dataset is None:
            import tensorstore as ts

            spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}
            try:
                self._ts = ts.open(spec, read=True).result()
            except ValueError as err:
                raise FormatError(f"{path}: tensorstore cannot open the N5 dataset: {err}") from err

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    def read(self, roi: Roi) -> Array:
        if self._ts is not None:
            z, y, x = roi.to_slices()
            return np.asarray(self._ts[x, y, z].read().result()).transpose()
        ds = self._dataset
        assert ds is not None
        out = np.zeros(roi.shape, dtype=self._dtype)
        for chunk in _chunk_grid(roi, ds.chunks):
            if not ds.chunk_file(chunk).exists():
                continue
            _paste(out, roi, ds.chunk_roi(chunk), ds.read_chunk(chunk))
        return out


def _ours(attrs: dict[str, Any]) -> bool:
    return str(attrs.get("compression", {"type": "raw"}).get("type")) in ("gzip", "raw")


def _paste(out: Array, roi: Roi, box: Roi, data: Array) -> None:
    """Copy the part of ``data`` (covering ``box``) that lies inside ``roi`` into ``out``."""
    part = box.intersect(roi)
    if part.size == 0:
        return
    src = tuple(
        slice(p - b, p - b + s) for p, b, s in zip(part.offset, box.offset, part.shape, strict=True)
    )
    dst = tuple(
        slice(p - r, p - r + s) for p, r, s in zip(part.offset, roi.offset, part.shape, strict=True)
    )
    out[dst] = data[src]


class _N5MultisetArray:
    """A label-multiset N5 dataset (``isLabelMultiset: true``), read as uint64 arg-max labels.

    Chunk payload (imglib2-label-multisets ``LabelUtils``): int32 BE number of arg-max values,
    that many int64 BE arg-max labels, one int32 BE list offset per voxel, then the multiset
    lists (little-endian: int32 entry count, then per entry int64 label and int32 count).
    Voxels are in x-fastest order, i.e. (z, y, x) C order. When no arg-max is stored it is
    recomputed from the lists (the first label with the largest count, as imglib2 does)."""

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self._path = path
        dims = [int(v) for v in attrs["dimensions"]]
        block = [int(v) for v in attrs["blockSize"]]
        if len(dims) != 3 or len(block) != 3:
            raise FormatError(f"{path}: expected a 3-d label-multiset dataset, got {dims}")
        self._shape = (dims[2], dims[1], dims[0])
        self._chunks = (block[2], block[1], block[0])
        self._compression: dict[str, Any] = dict(attrs.get("compression", {"type": "raw"}))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.uint64)

    def _chunk_roi(self, chunk: Sequence[int]) -> Roi:
        off = [i * c for i, c in zip(chunk, self._chunks, strict=True)]
        size = [min(c, s - o) for c, s, o in zip(self._chunks, self._shape, off, strict=True)]
        return Roi(_triple3(off, int), _triple3(size, int))

    def _read_chunk(self, chunk: tuple[int, int, int]) -> Array | None:
        f = self._path / str(chunk[2]) / str(chunk[1]) / str(chunk[0])
        if not f.exists():
            return None
        where = f"{f} (label-multiset chunk {list(chunk)})"
        buf = f.read_bytes()
        if len(buf) < _HEADER.size:
            raise FormatError(f"{where}: truncated header")
        mode, ndim = _HEADER.unpack_from(buf)
        pos = _HEADER.size + 4 * ndim
        if ndim != 3 or len(buf) < pos:
            raise FormatError(f"{where}: header ndim {ndim} (want 3)")
        sx, sy, sz = struct.unpack_from(">III", buf, _HEADER.size)
        if mode == 1:  # varlength: number of bytes follows
            pos += 4
        elif mode != 0:
            raise FormatError(f"{where}: unknown N5 block mode {mode}")
        data = _decompress(buf[pos:], self._compression, where)
        return decode_label_multisets(data, (sz, sy, sx), where=where)

    def read(self, roi: Roi) -> Array:
        out = np.zeros(roi.shape, dtype=np.uint64)
        for chunk in _chunk_grid(roi, self._chunks):
            arr = self._read_chunk(chunk)
            if arr is not None:
                box = self._chunk_roi(chunk)
                _paste(out, roi, box, arr[: box.shape[0], : box.shape[1], : box.shape[2]])
        return out


def decode_label_multisets(
    payload: bytes, shape: tuple[int, int, int], *, where: str = "label-multiset block"
) -> npt.NDArray[np.uint64]:
    """Arg-max labels (z, y, x) of one serialised label-multiset block (see
    :class:`_N5MultisetArray` for the layout)."""
    n = int(np.prod(shape))
    try:
        (n_argmax,) = struct.unpack_from(">i", payload, 0)
        pos = 4
        if n_argmax not in (0, n):
            raise FormatError(f"{where}: {n_argmax} arg-max values for {n} voxels")
        if n_argmax:
            argmax = np.frombuffer(payload, dtype=">i8", count=n, offset=pos)
            return argmax.astype(np.uint64).reshape(shape)
        offsets = np.frombuffer(payload, dtype=">i4", count=n, offset=pos)
        lists = payload[pos + 4 * n :]
        labels = np.empty(n, dtype=np.uint64)
        cache: dict[int, int] = {}
        for i, off in enumerate(offsets.tolist()):
            if off not in cache:
                (count,) = struct.unpack_from("<i", lists, off)
                entries = np.frombuffer(
                    lists, dtype=[("id", "<i8"), ("n", "<i4")], count=count, offset=off + 4
                )
                if count < 1:
                    raise FormatError(f"{where}: empty label multiset at voxel {i}")
                cache[off] = int(np.uint64(entries["id"][int(np.argmax(entries["n"]))]))
            labels[i] = cache[off]
        return labels.reshape(shape)
    except (struct.error, ValueError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"{where}: malformed label-multiset data: {err}") from err


class _ZarrArray:
    def __init__(self, array: Any) -> None:
        self._array = array
        s = tuple(int(v) for v in array.shape)
        self._shape = (s[0], s[1], s[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self._array.dtype)
        return dtype

    def read(self, roi: Roi) -> Array:
        return np.asarray(self._array[roi.to_slices()])


class _Backend:
    """The operations on a container that Paintera's layout needs (nodes are '/'-paths)."""

    kind: str
    root: Path

    def attrs(self, node: str) -> dict[str, Any] | None:
        """Attributes of ``node``, or None when the node does not exist."""
        raise NotImplementedError

    def set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        raise NotImplementedError

    def children(self, node: str) -> list[str]:
        raise NotImplementedError

    def is_array(self, node: str) -> bool:
        raise NotImplementedError

    def ndim(self, node: str) -> int:
        raise NotImplementedError

    def open_array(self, node: str) -> LabelArray:
        raise NotImplementedError

    def create_array(
        self,
        node: str,
        shape: tuple[int, int, int],
        chunks: tuple[int, int, int],
        dtype: str,
        attrs: dict[str, Any],
    ) -> _Writer:
        raise NotImplementedError


class _N5Backend(_Backend):
    kind = "n5"

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        if create:
            atomic_write_json(root / "attributes.json", {"n5": N5_VERSION})
            return
        try:
            version = json.loads((root / "attributes.json").read_text()).get("n5")
        except (OSError, ValueError) as err:
            raise PainteraError(root, f"not an N5 container (root attributes.json: {err})") from err
        if not isinstance(version, str):
            raise PainteraError(root, "not an N5 container (no 'n5' version attribute)")

    def _dir(self, node: str) -> Path:
        return self.root / node if node else self.root

    def attrs(self, node: str) -> dict[str, Any] | None:
        d = self._dir(node)
        if not d.is_dir():
            return None
        f = d / "attributes.json"
        if not f.exists():
            return {}
        try:
            value = json.loads(f.read_text())
        except ValueError as err:
            raise PainteraError(self.root, f"{f.name} of {node!r} is not JSON: {err}") from err
        return value if isinstance(value, dict) else {}

    def set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        atomic_write_json(
            self._dir(node) / "attributes.json", {**(self.attrs(node) or {}), **attrs}
        )

    def children(self, node: str) -> list[str]:
        d = self._dir(node)
        if not d.is_dir() or self.is_array(node):
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    def is_array(self, node: str) -> bool:
        return "dimensions" in (self.attrs(node) or {})

    def ndim(self, node: str) -> int:
        return len((self.attrs(node) or {}).get("dimensions", []))

    def open_array(self, node: str) -> LabelArray:
        attrs = self.attrs(node) or {}
        try:
            if attrs.get("isLabelMultiset"):
                return _N5MultisetArray(self._dir(node), attrs)
            return _N5PlainArray(self._dir(node), attrs)
        except (KeyError, TypeError, ValueError) as err:
            raise PainteraError(self.root, f"dataset {node!r} is not readable: {err}") from err

    def create_array(
        self,
        node: str,
        shape: tuple[int, int, int],
        chunks: tuple[int, int, int],
        dtype: str,
        attrs: dict[str, Any],
    ) -> _Writer:
        meta = {
            "dimensions": _xyz(shape),
            "blockSize": _xyz(chunks),
            "dataType": np.dtype(dtype).name,
            "compression": _N5_COMPRESSION,
            **attrs,
        }
        atomic_write_json(self._dir(node) / "attributes.json", meta)
        return _N5Writer(N5Dataset(self._dir(node), meta))


class _N5Writer:
    def __init__(self, dataset: N5Dataset) -> None:
        self._dataset = dataset

    def write(self, roi: Roi, data: Array) -> None:
        """Write the whole chunks ``roi`` covers (``roi`` starts on a chunk boundary)."""
        ds = self._dataset
        for chunk in _chunk_grid(roi, ds.chunks):
            box = ds.chunk_roi(chunk)
            local = tuple(
                slice(b - r, b - r + s)
                for b, r, s in zip(box.offset, roi.offset, box.shape, strict=True)
            )
            f = ds.chunk_file(chunk)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(encode_chunk(np.ascontiguousarray(data[local]), ds.compression))


class _ZarrBackend(_Backend):
    kind = "zarr"

    def __init__(self, root: Path, *, create: bool = False) -> None:
        import zarr

        self.root = root
        try:
            if create:
                self._group: Any = zarr.open_group(str(root), mode="w", zarr_format=2)
            else:
                self._group = zarr.open_group(str(root), mode="r")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PainteraError(root, f"not a Zarr container: {err}") from err
        except Exception as err:  # zarr raises its own (e.g. GroupNotFoundError) here
            raise PainteraError(root, f"not a Zarr container: {err}") from err

    def _node(self, node: str) -> Any:
        if not node:
            return self._group
        try:
            return self._group[node]
        except KeyError:
            return None

    def attrs(self, node: str) -> dict[str, Any] | None:
        n = self._node(node)
        if n is None:
            return None
        return dict(json.loads(json.dumps(n.attrs.asdict())))

    def set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        self._node(node).attrs.update(attrs)

    def children(self, node: str) -> list[str]:
        import zarr

        n = self._node(node)
        if n is None or not isinstance(n, zarr.Group):
            return []
        with warnings.catch_warnings():
            # stray files (e.g. a curator's annotation.yaml sidecar) are not Zarr nodes
            warnings.filterwarnings("ignore", message="Object at .* is not recognized")
            return sorted(n.keys())

    def is_array(self, node: str) -> bool:
        import zarr

        return isinstance(self._node(node), zarr.Array)

    def ndim(self, node: str) -> int:
        return len(self._node(node).shape)

    def open_array(self, node: str) -> LabelArray:
        return _ZarrArray(self._node(node))

    def require_group(self, node: str) -> Any:
        g = self._group
        for part in [p for p in node.split("/") if p]:
            g = g.require_group(part)
        return g

    def create_array(
        self,
        node: str,
        shape: tuple[int, int, int],
        chunks: tuple[int, int, int],
        dtype: str,
        attrs: dict[str, Any],
    ) -> _Writer:
        import numcodecs

        parent, _, name = node.rpartition("/")
        arr = self.require_group(parent).create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=numcodecs.GZip(level=1),  # Paintera's n5-zarr reads gzip
            fill_value=0,
            overwrite=True,
        )
        arr.attrs.update(attrs)
        return _ZarrWriter(arr)


class _ZarrWriter:
    def __init__(self, array: Any) -> None:
        self._array = array

    def write(self, roi: Roi, data: Array) -> None:
        self._array[roi.to_slices()] = data


def _open_backend(container: str | Path, *, create: bool = False) -> _Backend:
    path = Path(container)
    name = str(container).rstrip("/")
    if not create and not path.exists():
        raise PainteraError(path, "no such container")
    if name.endswith(".n5"):
        return _N5Backend(path, create=create)
    if name.endswith(".zarr"):
        return _ZarrBackend(path, create=create)
    raise PainteraError(path, f"not an N5 or Zarr container (suffix not one of {SUFFIXES})")


# --- reading label groups ---------------------------------------------------------------------


def find_label_groups(container: str | Path, *, max_depth: int = 4) -> list[str]:
    """Paths of every group with ``painteraData: {"type": "label"}`` (breadth-first)."""
    backend = _open_backend(container)
    found: list[str] = []
    frontier = [""]
    for _ in range(max_depth + 1):
        nxt = []
        for node in frontier:
            attrs = backend.attrs(node) or {}
            if _paintera_type(attrs) == "label":
                found.append(node)
                continue  # a label group's children are its own datasets
            if backend.is_array(node):
                continue
            nxt += [f"{node}/{c}" if node else c for c in backend.children(node)]
        frontier = nxt
    return found


def _paintera_type(attrs: dict[str, Any]) -> str | None:
    data = attrs.get("painteraData")
    return str(data.get("type")) if isinstance(data, dict) else None


class PainteraLabelGroup:
    """A validated Paintera label group: its metadata and a reader of level s0 (uint64)."""

    def __init__(self, container: str | Path, group: str | None = None) -> None:
        self.container = str(container)
        backend = _open_backend(container)
        if group is None:
            groups = find_label_groups(container)
            if not groups:
                raise PainteraError(
                    container,
                    "no Paintera label group: no group has painteraData {'type': 'label'}",
                )
            if len(groups) > 1:
                raise PainteraError(
                    container,
                    f"{len(groups)} Paintera label groups {groups}: name one (label_group)",
                )
            group = groups[0]
        group = group.strip("/")
        self.group = group
        attrs = backend.attrs(group)
        if attrs is None:
            raise PainteraError(container, "no such group", group)
        kind = _paintera_type(attrs)
        if kind != "label":
            raise PainteraError(
                container, f"not a Paintera label group (painteraData type is {kind!r})", group
            )
        data_attrs = backend.attrs(f"{group}/data")
        if data_attrs is None or backend.is_array(f"{group}/data"):
            raise PainteraError(container, "label group has no multiscale 'data' group", group)
        max_id = attrs.get("maxId", data_attrs.get("maxId"))
        if max_id is None:
            raise PainteraError(
                container, "label group lacks the required attribute 'maxId'", group
            )
        if isinstance(max_id, bool) or not isinstance(max_id, int) or max_id < 0:
            raise PainteraError(
                container, f"maxId must be a non-negative integer: {max_id!r}", group
            )
        self.max_id = int(max_id)
        levels: list[str] = []
        while backend.is_array(f"{group}/data/s{len(levels)}"):
            levels.append(f"{group}/data/s{len(levels)}")
        if not levels:
            raise PainteraError(container, "label group has no dataset 'data/s0'", group)
        self.levels = tuple(levels)
        s0_attrs = backend.attrs(levels[0]) or {}
        self.is_label_multiset = bool(
            s0_attrs.get("isLabelMultiset", data_attrs.get("isLabelMultiset", False))
        )
        ndim = backend.ndim(levels[0])
        if ndim != 3:
            raise PainteraError(
                container, f"wrong shape: data/s0 must be 3-D (z, y, x), it has {ndim} axes", group
            )
        self._s0 = backend.open_array(levels[0])
        dtype = self._s0.dtype
        if not self.is_label_multiset and dtype.kind != "u":
            raise PainteraError(
                container,
                f"wrong dtype: data/s0 is {dtype.name}; Paintera labels are unsigned integers "
                "(uint64)",
                group,
            )
        self.shape = self._s0.shape
        self.dtype = "uint64" if self.is_label_multiset else dtype.name
        resolution = data_attrs.get("resolution", attrs.get("resolution"))
        if resolution is None:
            resolution = (s0_attrs.get("pixelResolution") or {}).get("dimensions")
        if not isinstance(resolution, list) or len(resolution) != 3:
            raise PainteraError(
                container, f"no valid 'resolution' [x, y, z] (nm): {resolution!r}", group
            )
        offset = data_attrs.get("offset", attrs.get("offset", [0.0, 0.0, 0.0]))
        if not isinstance(offset, list) or len(offset) != 3:
            raise PainteraError(container, f"'offset' must be [x, y, z] (nm): {offset!r}", group)
        try:
            self.resolution = VoxelSize(
                float(resolution[2]), float(resolution[1]), float(resolution[0])
            )
        except (TypeError, ValueError) as err:
            raise PainteraError(container, f"bad resolution {resolution!r}: {err}", group) from err
        self.offset_nm = (float(offset[2]), float(offset[1]), float(offset[0]))
        self.attributes = attrs

    def read(self, roi: Roi | None = None) -> npt.NDArray[Any]:
        """Labels of level s0 (z, y, x) in ``roi`` (default: all); multisets as arg-max."""
        return self._s0.read(roi or Roi((0, 0, 0), self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "group": self.group,
            "max_id": self.max_id,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "resolution_nm": self.resolution.to_dict(),
            "offset_nm": dict(zip("zyx", self.offset_nm, strict=True)),
            "levels": len(self.levels),
            "is_label_multiset": self.is_label_multiset,
        }


def open_label_group(container: str | Path, group: str | None = None) -> PainteraLabelGroup:
    """Open and validate a Paintera label group (the only one in the container, if not named)."""
    return PainteraLabelGroup(container, group)


# --- writing -----------------------------------------------------------------------------------


def downsample_mode(block: Array, factor: int | Sequence[int] = 2) -> Array:
    """Most frequent value of each window of ``factor`` voxels per axis (an int or one per
    axis, z, y, x) of a label block (ties: the first value in window order). Windows at the far
    edges are padded by repeating the edge."""
    f = (factor,) * 3 if isinstance(factor, int) else _triple3(factor, int)
    pad = [(0, (-s) % k) for s, k in zip(block.shape, f, strict=True)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    z, y, x = (s // k for s, k in zip(block.shape, f, strict=True))
    w = block.reshape(z, f[0], y, f[1], x, f[2]).transpose(0, 2, 4, 1, 3, 5)
    w = w.reshape(z, y, x, f[0] * f[1] * f[2])
    counts = (w[..., :, None] == w[..., None, :]).sum(axis=-1)
    pick = np.argmax(counts, axis=-1)[..., None]
    out: Array = np.take_along_axis(w, pick, axis=-1)[..., 0]
    return out


def _write_pyramid(
    backend: _Backend,
    node: str,
    read0: Callable[[Roi], Array],
    shape: tuple[int, int, int],
    *,
    dtype: str,
    chunks: tuple[int, int, int],
    levels: int,
    voxel_size: VoxelSize,
    labels: bool,
    block_factor: int = 2,
) -> int:
    """Write ``node/s0..`` (``node`` = the multiscale group) blockwise; returns the largest
    value of s0. Levels below s0 are 2x mean (raw) or mode (labels) downsampled."""
    largest = 0
    arrays: list[LabelArray] = []
    for level, lshape in enumerate(pyramid_shapes(shape, min_size=1, max_levels=levels)):
        f = 2**level
        c = _triple3([min(a, b) for a, b in zip(chunks, lshape, strict=True)], int)
        extra: dict[str, Any] = {
            "downsamplingFactors": [f, f, f],
            "pixelResolution": {
                "dimensions": _xyz(voxel_size.scaled((f, f, f)).as_tuple()),
                "unit": "nm",
            },
        }
        if labels:
            extra["isLabelMultiset"] = False
        writer = backend.create_array(f"{node}/s{level}", lshape, c, dtype, extra)
        # lower levels read a 2x larger window below each block: keep those blocks one chunk
        block = _triple3([x * (block_factor if level == 0 else 1) for x in c], int)
        for b in BlockPlan(lshape, block).blocks():
            roi = b.write_roi
            if level == 0:
                data = np.asarray(read0(roi))
                if data.shape != roi.shape:
                    raise ValueError(f"source returned {data.shape} for ROI {roi.to_dict()}")
                data = data.astype(dtype, copy=False)
                if labels and data.size:
                    largest = max(largest, int(data.max()))
            else:
                below = arrays[-1]
                if labels:
                    lo = _triple3([2 * o for o in roi.offset], int)
                    hi = [min(2 * e, s) for e, s in zip(roi.end, below.shape, strict=True)]
                    src = below.read(
                        Roi(lo, _triple3([h - a for h, a in zip(hi, lo, strict=True)], int))
                    )
                    data = downsample_mode(src)[: roi.shape[0], : roi.shape[1], : roi.shape[2]]
                else:
                    data = downsample_roi(below.read, below.shape, roi, slab=2 * c[0])
            writer.write(roi, np.ascontiguousarray(data, dtype=dtype))
        arrays.append(backend.open_array(f"{node}/s{level}"))
    return largest


def _multiscale_attrs(voxel_size: VoxelSize, offset_nm: Sequence[float]) -> dict[str, Any]:
    return {
        "multiScale": True,
        "resolution": _xyz(voxel_size.as_tuple()),
        "offset": _xyz([float(o) for o in offset_nm]),
        "axes": ["x", "y", "z"],
        "units": ["nm", "nm", "nm"],
    }


def _write_label_group(
    backend: _Backend,
    group: str,
    source: Callable[[Roi], Array],
    shape: tuple[int, int, int],
    *,
    voxel_size: VoxelSize,
    offset_nm: Sequence[float],
    chunks: tuple[int, int, int],
    levels: int,
    max_id: int | None,
) -> int:
    """A Paintera label group at ``group`` (uint64 labels); returns its ``maxId``."""
    if isinstance(backend, _ZarrBackend):
        backend.require_group(f"{group}/data")
    largest = _write_pyramid(
        backend,
        f"{group}/data",
        source,
        shape,
        dtype="uint64",
        chunks=chunks,
        levels=levels,
        voxel_size=voxel_size,
        labels=True,
    )
    if max_id is not None and max_id < largest:
        raise ValueError(f"max_id {max_id} is smaller than the largest label {largest}")
    mid = largest if max_id is None else max_id
    backend.set_attrs(
        f"{group}/data",
        {**_multiscale_attrs(voxel_size, offset_nm), "maxId": mid, "isLabelMultiset": False},
    )
    backend.set_attrs(
        group,
        {
            "painteraData": {"type": "label"},
            "maxId": mid,
            "resolution": _xyz(voxel_size.as_tuple()),
            "offset": _xyz([float(o) for o in offset_nm]),
        },
    )
    return mid


def _staging(out: Path) -> Path:
    """Beside ``out`` (same file system: the final rename is atomic), with the same suffix."""
    return out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix}")


def _check_out(out: Path) -> None:
    if not str(out).rstrip("/").endswith(SUFFIXES):
        raise ValueError(f"{out}: a Paintera container path must end in .n5 or .zarr")


def write_paintera_labels(
    out: str | Path,
    labels: Array,
    *,
    voxel_size: VoxelSize,
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    group: str = f"{LABELS_GROUP}/ground_truth",
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    levels: int = 1,
    max_id: int | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """A new container ``out`` (.n5 or .zarr) holding one Paintera label group of ``labels``
    (z, y, x, unsigned integers; stored as uint64) with voxel size (nm) and the position (nm,
    z, y, x) of voxel 0's centre. ``extra_files`` (name -> bytes) are written into the root
    before the container is renamed into place. Replaces an existing ``out`` atomically."""
    out = Path(out)
    _check_out(out)
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be a 3-D (z, y, x) array, got shape {arr.shape}")
    if arr.dtype.kind != "u":
        raise ValueError(f"labels must be unsigned integers, got {arr.dtype}")
    staging = _staging(out)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        backend = _open_backend(staging, create=True)
        shape = _triple3(arr.shape, int)
        _write_label_group(
            backend,
            group,
            lambda roi: arr[roi.to_slices()],
            shape,
            voxel_size=voxel_size,
            offset_nm=offset_nm,
            chunks=_triple3(chunks, int),
            levels=levels,
            max_id=max_id,
        )
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class PainteraExport:
    """What :func:`export_paintera` wrote: where, which ROI (raw voxels), groups and maxId."""

    path: str
    roi: Roi
    voxel_size: VoxelSize
    raw_group: str
    label_group: str | None
    max_id: int | None
    levels: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "roi": self.roi.to_dict(),
            "voxel_size_nm": self.voxel_size.to_dict(),
            "raw_group": self.raw_group,
            "label_group": self.label_group,
            "max_id": self.max_id,
            "levels": self.levels,
        }


class OmeZarrImage:
    """Level s0 of one (z, y, x) image of an OME-Zarr container (our canonical raw volume's
    ``uint8`` image), as a :class:`VolumeSource`; voxel size and offset from its NGFF scale and
    translation (nm)."""

    def __init__(self, container: str | Path, image: str = "uint8") -> None:
        from fib_assets.core.formats.zarr import open_multiscale

        try:
            ome, levels = open_multiscale(container, image)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise FormatError(f"{container}: no OME-Zarr image {image!r}: {err}") from err
        except Exception as err:  # zarr's own not-found errors
            raise FormatError(f"{container}: no OME-Zarr image {image!r}: {err}") from err
        image_meta = ome["multiscales"][0]
        axes = [a["name"] for a in image_meta["axes"]]
        if axes != ["z", "y", "x"]:
            raise FormatError(f"{container}/{image}: expected axes (z, y, x), found {axes}")
        transforms = image_meta["datasets"][0]["coordinateTransformations"]
        scale = next(t["scale"] for t in transforms if t["type"] == "scale")
        translation = next(
            (t["translation"] for t in transforms if t["type"] == "translation"), [0.0, 0.0, 0.0]
        )
        self._array = levels[0]
        shape = tuple(int(s) for s in self._array.shape)
        self.offset_nm = _triple3(translation, float)
        self._info = VolumeInfo(
            _triple3(shape, int),
            np.dtype(self._array.dtype).name,
            VoxelSize(float(scale[0]), float(scale[1]), float(scale[2])),
            _triple3(self._array.chunks, int),
        )
        self.path = str(container)

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> Array:
        return np.asarray(self._array[roi.to_slices()])


def export_paintera(
    raw_container: str | Path | VolumeSource,
    out_path: str | Path,
    *,
    roi: Roi | None = None,
    labels: VolumeSource | Array | None = None,
    label_name: str = "ground_truth",
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    levels: int | None = None,
    max_id: int | None = None,
) -> PainteraExport:
    """Write a Paintera-ready container for ``roi`` (raw voxels, z, y, x; default: all).

    ``raw_container`` is the canonical OME-Zarr raw volume (its ``uint8`` image is exported) or
    any uint8 :class:`VolumeSource`. ``labels`` (optional) is a source or array of unsigned
    integer labels on the raw grid, either of the whole raw volume (read at ``roi``) or of
    exactly ``roi``'s shape. Output (``.n5`` or ``.zarr`` by suffix): ``volumes/raw`` and, with
    labels, ``volumes/labels/<label_name>``, both multiscale with ``levels`` levels (default:
    down to ~32 voxels), offsets placing the ROI in the raw volume's world coordinates.
    Blockwise: memory is bounded by a block, never the ROI. Atomic: ``out_path`` appears only
    when complete (an existing one is replaced).
    """
    out = Path(out_path)
    _check_out(out)
    raw: VolumeSource = (
        OmeZarrImage(raw_container) if isinstance(raw_container, str | Path) else raw_container
    )
    info = raw.info
    if np.dtype(info.dtype) != np.uint8:
        raise ValueError(f"the raw context must be uint8 (contrast-adjusted), got {info.dtype}")
    full = Roi((0, 0, 0), info.shape)
    roi = roi or full
    if not full.contains(roi) or roi.size == 0:
        raise ValueError(
            f"ROI {roi.to_dict()} is empty or outside the raw volume {list(info.shape)}"
        )
    raw_offset = getattr(raw, "offset_nm", (0.0, 0.0, 0.0))
    vox = info.voxel_size
    offset_nm = [o + r * v for o, r, v in zip(raw_offset, roi.offset, vox.as_tuple(), strict=True)]
    n_levels = levels or len(pyramid_shapes(roi.shape, min_size=32))
    c = _triple3(chunks, int)

    label_read: Callable[[Roi], Array] | None = None
    if labels is not None:
        src: VolumeSource = ArraySource(labels, vox) if isinstance(labels, np.ndarray) else labels
        lshape = tuple(src.info.shape)
        if np.dtype(src.info.dtype).kind != "u":
            raise ValueError(f"labels must be unsigned integers, got {src.info.dtype}")
        if lshape == tuple(info.shape):
            label_read = lambda r: src.read(Roi(_shift(r.offset, roi.offset), r.shape))  # noqa: E731
        elif lshape == tuple(roi.shape):
            label_read = src.read
        else:
            raise ValueError(
                f"labels of shape {list(lshape)} match neither the raw volume "
                f"{list(info.shape)} nor the ROI {list(roi.shape)}"
            )

    staging = _staging(out)
    shutil.rmtree(staging, ignore_errors=True)
    label_group = None
    mid = None
    try:
        backend = _open_backend(staging, create=True)
        if isinstance(backend, _ZarrBackend):
            backend.require_group(RAW_GROUP)
        _write_pyramid(
            backend,
            RAW_GROUP,
            lambda r: raw.read(Roi(_shift(r.offset, roi.offset), r.shape)),
            roi.shape,
            dtype="uint8",
            chunks=c,
            levels=n_levels,
            voxel_size=vox,
            labels=False,
        )
        backend.set_attrs(RAW_GROUP, _multiscale_attrs(vox, offset_nm))
        if label_read is not None:
            label_group = f"{LABELS_GROUP}/{label_name}"
            mid = _write_label_group(
                backend,
                label_group,
                label_read,
                roi.shape,
                voxel_size=vox,
                offset_nm=offset_nm,
                chunks=c,
                levels=n_levels,
                max_id=max_id,
            )
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PainteraExport(str(out), roi, vox, RAW_GROUP, label_group, mid, n_levels)


def _shift(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int]:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])
