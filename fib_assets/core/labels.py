"""Ground-truth labels: the class map, label import, crop revisions, checks and statistics.

Class ids follow COSEM / CellMap (:data:`COSEM_CLASS_MAP`): 0 means *not annotated*, every other
id is an atomic class; combined classes (``mito`` = {3, 4, 5}, ``er`` = {16..23}, ``nucleus`` =
{20..29, 37}, ...) are sets of atomic ids. Which classes a model trains on is experiment
configuration (:meth:`ClassMap.ids_of` resolves names to ids); the ground truth is always stored
with atomic ids.

Annotations inbox (one folder per region; a submission is complete once its ``annotation.yaml``
exists, so the sidecar is written **last**)::

    <inbox>/                       AnnotationsResource.inbox, default <data>/annotations
      <region>/                    a region key (validated before it touches a path)
        <name>.n5/ or <name>.zarr/ a Paintera container exported by a curator: one label group
                                   (painteraData {"type": "label"}, maxId, data/s0..), anywhere
                                   in the tree (name it with ``label_group`` if there are several)
          annotation.yaml          the sidecar (below)
        <name>.zarr/               or a CellMap-style container: labels/groundtruth/<crop>/
                                   {all | <class>}/s0 with OME-NGFF multiscales (format: cellmap)
        <name>/                    or a TIFF stack: one multi-page .tif/.tiff or one file per
                                   z slice (format: tiff; needs roi.offset)

``annotation.yaml``::

    crop: crop01           # crop name (default: the submission's name); a correction reuses it
    split: train           # train | test
    annotator: jdoe@vt.edu
    minutes_spent: 42      # optional: curator effort
    exported_at: 2025-05-01T12:00:00+00:00  # optional; default: the sidecar's mtime
    format: paintera       # optional: paintera | cellmap | tiff (default: by content)
    label_group: volumes/labels/ground_truth  # paintera: which label group
    cellmap_crop: crop12   # cellmap: which crop group
    voxel_size_nm: [8, 8, 8]                   # tiff: label voxel size, z, y, x (default: raw's)
    roi: {offset: [z, y, x], shape: [z, y, x]}  # raw voxels: the placement of a TIFF stack; for
                                               # other formats an assertion that must hold

Geometry: a label volume is placed in the raw volume's voxel grid from its voxel size and offset
(nm, the centre of voxel 0, as NGFF translations and Paintera offsets are; a corner-based offset
is accepted too). Label voxels must equal the raw voxel or an integer fraction of it (CellMap
crops are often 2x finer) and the crop must cover whole raw voxels: its ROI is integral in raw
voxels (z, y, x).

Revisions (``<root>/ground_truth_crops/<region>/``, a local folder or an ``s3://`` prefix
through :mod:`fib_assets.core.storage`)::

    rev-0001/                      immutable once renamed into place (object store: built in
                                   local scratch, uploaded, read back, and published by its
                                   completion marker ``rev-0001.complete.json``, written last)
      crops.zarr/                  Zarr v3 group; one uint8 array per crop (label resolution),
                                   attributes = the crop's record (roi in raw voxels, voxel size,
                                   class counts, split, annotator, source checksum, ...)
      label_stats.parquet          per crop and class: voxels, fraction, volume
      revision.json                the revision's record (written last in the staging folder)
      checks.json                  outcome of the checks (written after evaluation)
    current.json                   the accepted revision that consumers read; moved only after
                                   the checks were evaluated and every blocking one passed

The annotations inbox stays a filesystem path (on Kubernetes a shared ReadWriteMany volume):
curators' tools write containers there and submissions are scanned and hashed in place.

A new revision holds the current revision's crops, with every new or corrected submission of
the inbox imported (a correction replaces the crop of the same name; crops are never dropped
because a container left the inbox). Bad input raises :class:`LabelImportError` naming the
container and the problem before anything is published; the previous revision stays current.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml

from fib_assets.core import storage
from fib_assets.core.blockwise import atomic_write_bytes, atomic_write_json, fingerprint
from fib_assets.core.formats.base import FormatError, VolumeInfo
from fib_assets.core.formats.paintera import (
    PainteraError,
    downsample_mode,
    find_label_groups,
    open_label_group,
    write_paintera_labels,
)
from fib_assets.core.geometry import Roi, VoxelSize, validate_region_key

Array = npt.NDArray[Any]
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
SIDECAR = "annotation.yaml"
UNANNOTATED = 0
#: Crops are small (~1 µm³); anything larger is refused rather than read into memory.
MAX_CROP_VOXELS = 512**3
_CROP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_REV_DIR = re.compile(r"^rev-(\d{4,})$")
_TOL = 1e-3


class LabelImportError(ValueError):
    """Bad annotation input: names the container (or sidecar) and the problem."""

    def __init__(self, container: str | Path, problem: str) -> None:
        self.container = str(container)
        self.problem = problem
        super().__init__(f"{self.container}: {problem}")


# --- the class map -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMap:
    """Atomic class ids (1..255) with names, and combined classes as sets of atomic ids."""

    classes: Mapping[int, str]
    combined: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [i for i in self.classes if not isinstance(i, int) or not 0 < i < 256]
        if bad:
            raise ValueError(f"class ids must be integers 1..255 (0 = unannotated), got {bad}")
        names = list(self.classes.values())
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique, repeated: {dupes}")
        for name, ids in self.combined.items():
            if name in names:
                raise ValueError(f"combined class {name!r} has the name of an atomic class")
            unknown = sorted(set(ids) - set(self.classes))
            if unknown:
                raise ValueError(f"combined class {name!r} has unknown ids {unknown}")

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(self.classes)

    def name(self, class_id: int) -> str:
        if class_id == UNANNOTATED:
            return "unannotated"
        return self.classes.get(class_id, f"unknown-{class_id}")

    def ids_of(self, name: str) -> frozenset[int]:
        """The atomic ids of an atomic or combined class name (what a training config lists)."""
        if name in self.combined:
            return frozenset(self.combined[name])
        for i, n in self.classes.items():
            if n == name:
                return frozenset({i})
        raise KeyError(f"unknown class {name!r}; known: {sorted(self.names())}")

    def names(self) -> list[str]:
        return [*self.classes.values(), *self.combined]

    def unknown(self, ids: Iterable[int]) -> list[int]:
        """Ids that are neither 0 (unannotated) nor an atomic class, sorted."""
        return sorted({int(i) for i in ids} - set(self.classes) - {UNANNOTATED})

    def mask(self, labels: Array, name: str) -> npt.NDArray[np.bool_]:
        """Boolean mask of class ``name`` (atomic or combined) in a label array."""
        return np.isin(labels, sorted(self.ids_of(name)))

    def color(self, class_id: int) -> tuple[int, int, int]:
        """A fixed, well-spread RGB colour per id (golden-angle hues) for overlays."""
        h = (class_id * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
        return (round(r * 255), round(g * 255), round(b * 255))

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": {str(i): n for i, n in sorted(self.classes.items())},
            "combined": {n: sorted(ids) for n, ids in self.combined.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassMap:
        return cls(
            {int(i): str(n) for i, n in d["classes"].items()},
            {str(n): frozenset(int(i) for i in ids) for n, ids in d.get("combined", {}).items()},
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ClassMap:
        """A class map from YAML/JSON ``{classes: {id: name}, combined: {name: [ids]}}``."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


#: COSEM / CellMap atomic classes (Heinrich et al. 2021; CellMap challenge class list).
COSEM_CLASSES: dict[int, str] = {
    1: "ecs",
    2: "pm",
    3: "mito_mem",
    4: "mito_lum",
    5: "mito_ribo",
    6: "golgi_mem",
    7: "golgi_lum",
    8: "ves_mem",
    9: "ves_lum",
    10: "endo_mem",
    11: "endo_lum",
    12: "lyso_mem",
    13: "lyso_lum",
    14: "ld_mem",
    15: "ld_lum",
    16: "er_mem",
    17: "er_lum",
    18: "eres_mem",
    19: "eres_lum",
    20: "ne_mem",
    21: "ne_lum",
    22: "np_out",
    23: "np_in",
    24: "hchrom",
    25: "nhchrom",
    26: "echrom",
    27: "nechrom",
    28: "nucpl",
    29: "nucleo",
    30: "mt_out",
    31: "cent",
    32: "cent_dapp",
    33: "cent_sdapp",
    34: "ribo",
    35: "cyto",
    36: "mt_in",
    37: "nuc",
}

COSEM_COMBINED: dict[str, frozenset[int]] = {
    "mito": frozenset({3, 4, 5}),
    "golgi": frozenset({6, 7}),
    "ves": frozenset({8, 9}),
    "endo": frozenset({10, 11}),
    "lyso": frozenset({12, 13}),
    "ld": frozenset({14, 15}),
    "er": frozenset(range(16, 24)),  # incl. ER exit sites and the nuclear envelope
    "eres": frozenset({18, 19}),
    "ne": frozenset({20, 21, 22, 23}),
    "np": frozenset({22, 23}),
    "chrom": frozenset({24, 25, 26, 27}),
    "nucleus": frozenset({*range(20, 30), 37}),
    "mt": frozenset({30, 36}),
    "centrosome": frozenset({31, 32, 33}),
}

COSEM_CLASS_MAP = ClassMap(COSEM_CLASSES, COSEM_COMBINED)


# --- the raw grid and label volumes --------------------------------------------------------------


@dataclass(frozen=True)
class RawGrid:
    """The raw volume's voxel grid: shape (z, y, x), voxel size (nm) and the world position (nm,
    z, y, x) of voxel 0's centre."""

    shape: tuple[int, int, int]
    voxel_size: VoxelSize
    offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "voxel_size_nm": self.voxel_size.to_dict(),
            "offset_nm": list(self.offset_nm),
        }


def raw_grid(container: str | Path, image: str = "uint8") -> RawGrid:
    """The grid of image ``image`` of an OME-Zarr raw volume (from its NGFF scale/translation)."""
    from fib_assets.core.formats.paintera import OmeZarrImage

    img = OmeZarrImage(container, image)
    return RawGrid(img.info.shape, img.info.voxel_size, img.offset_nm)


@dataclass
class LabelVolume:
    """Labels read from a container (z, y, x) at their own voxel size (nm), placed either by the
    world position of voxel 0's centre (``offset_nm``) or directly in raw voxels
    (``raw_offset``)."""

    data: Array
    voxel_size: VoxelSize
    source: str
    format: str
    offset_nm: tuple[float, float, float] | None = None
    raw_offset: tuple[int, int, int] | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelCrop:
    """A placed crop: uint8 class ids at label resolution, its ROI in raw voxels (z, y, x), its
    voxel size (nm) and the integer factor raw voxel / label voxel per axis."""

    name: str
    data: npt.NDArray[np.uint8]
    roi: Roi
    voxel_size: VoxelSize
    factor: tuple[int, int, int]
    alignment: str
    source: str
    format: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        return crop_checksum(self.data, self.roi, self.voxel_size)

    def class_counts(self) -> dict[int, int]:
        return class_counts(self.data)


def crop_checksum(data: Array, roi: Roi, voxel_size: VoxelSize) -> str:
    """sha256 of a crop's geometry (ROI, voxel size) and its C-order uint8 voxels."""
    h = hashlib.sha256(json.dumps([roi.to_dict(), voxel_size.to_dict()]).encode())
    h.update(np.ascontiguousarray(data, dtype=np.uint8).data)
    return h.hexdigest()


def class_counts(data: Array) -> dict[int, int]:
    ids, counts = np.unique(data, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def _integral(value: float, what: str, container: str) -> int:
    r = round(value)
    if abs(value - r) > _TOL:
        raise LabelImportError(container, what)
    return int(r)


def place_crop(
    volume: LabelVolume,
    grid: RawGrid,
    class_map: ClassMap,
    *,
    name: str,
    expect_roi: Roi | None = None,
) -> LabelCrop:
    """Validate ``volume`` against the raw grid and the class map and place it as a crop.

    Raises :class:`LabelImportError` (naming the container) for a wrong dtype or shape, a voxel
    size that is not the raw one or an integer fraction of it, an offset off the raw grid, a crop
    outside the raw volume, ids outside the class map, or an ROI that differs from
    ``expect_roi``.
    """
    src = volume.source
    data = volume.data
    if data.dtype.kind != "u":
        raise LabelImportError(
            src, f"wrong dtype {data.dtype.name}: labels must be unsigned integers (class ids)"
        )
    if data.ndim != 3 or min(data.shape) < 1:
        raise LabelImportError(
            src, f"wrong shape {list(data.shape)}: expected a 3-D (z, y, x) crop"
        )
    if data.size > MAX_CROP_VOXELS:
        raise LabelImportError(
            src, f"wrong shape {list(data.shape)}: more than {MAX_CROP_VOXELS} voxels is not a crop"
        )
    raw_v = grid.voxel_size.as_tuple()
    lab_v = volume.voxel_size.as_tuple()
    if any(v > r * (1 + _TOL) for r, v in zip(raw_v, lab_v, strict=True)):
        raise LabelImportError(
            src,
            f"voxel size {volume.voxel_size.to_dict()} nm is coarser than the raw voxel size "
            f"{grid.voxel_size.to_dict()} nm",
        )
    factor = tuple(
        _integral(
            r / v,
            f"voxel size {volume.voxel_size.to_dict()} nm is neither the raw voxel size "
            f"{grid.voxel_size.to_dict()} nm nor an integer fraction of it",
            src,
        )
        for r, v in zip(raw_v, lab_v, strict=True)
    )
    shape_raw = tuple(
        _integral(
            n / k,
            f"wrong shape {list(data.shape)}: at {factor} label voxels per raw voxel the crop "
            "does not cover whole raw voxels",
            src,
        )
        for n, k in zip(data.shape, factor, strict=True)
    )
    alignment = "raw-voxels"
    offset: tuple[int, ...]
    if volume.raw_offset is not None:
        offset = volume.raw_offset
    elif volume.offset_nm is not None:
        offset_c, offset_k = [], []
        for o, v, r, ro in zip(volume.offset_nm, lab_v, raw_v, grid.offset_nm, strict=True):
            raw_corner = ro - r / 2
            offset_c.append((o - v / 2 - raw_corner) / r)  # offset = centre of voxel 0
            offset_k.append((o - ro) / r)  # offsets of labels and raw are both corners
        if all(abs(x - round(x)) <= _TOL for x in offset_c):
            offset, alignment = tuple(round(x) for x in offset_c), "centre"
        elif all(abs(x - round(x)) <= _TOL for x in offset_k):
            offset, alignment = tuple(round(x) for x in offset_k), "corner"
        else:
            raise LabelImportError(
                src,
                f"offset {dict(zip('zyx', volume.offset_nm, strict=True))} nm is not on the raw "
                f"voxel grid ({grid.voxel_size.to_dict()} nm, voxel 0 centred at "
                f"{list(grid.offset_nm)} nm)",
            )
    else:
        raise LabelImportError(src, "no offset: the crop cannot be placed in the raw volume")
    roi = Roi((int(offset[0]), int(offset[1]), int(offset[2])), shape_raw)  # type: ignore[arg-type]
    if expect_roi is not None and roi != expect_roi:
        raise LabelImportError(
            src,
            f"wrong shape/offset: the labels cover ROI {roi.to_dict()} (raw voxels) but the "
            f"sidecar declares {expect_roi.to_dict()}",
        )
    if not grid.roi.contains(roi):
        raise LabelImportError(
            src,
            f"crop outside the raw volume: ROI {roi.to_dict()} (raw voxels) is not inside the "
            f"raw volume of shape {list(grid.shape)}",
        )
    counts = class_counts(data)
    unknown = class_map.unknown(counts)
    if unknown:
        shown = ", ".join(f"{i} ({counts[i]} voxels)" for i in unknown[:10])
        raise LabelImportError(
            src,
            f"label ids outside the class map: {shown}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            + f"; allowed: 0 (unannotated) and {min(class_map.ids)}..{max(class_map.ids)}",
        )
    return LabelCrop(
        name=name,
        data=np.ascontiguousarray(data, dtype=np.uint8),
        roi=roi,
        voxel_size=volume.voxel_size,
        factor=(factor[0], factor[1], factor[2]),
        alignment=alignment,
        source=src,
        format=volume.format,
        details=volume.details,
    )


# --- readers: Paintera, CellMap crop groups, TIFF stacks -----------------------------------------


def read_paintera(container: str | Path, group: str | None = None) -> LabelVolume:
    """The s0 labels of a Paintera label group (N5 or Zarr); label multisets become their
    arg-max labels. Problems are :class:`LabelImportError` naming the container."""
    try:
        g = open_label_group(container, group)
        data = g.read()
    except PainteraError as err:
        raise LabelImportError(
            container, err.problem + (f" (group {err.group!r})" if err.group else "")
        ) from err
    except FormatError as err:
        raise LabelImportError(container, str(err)) from err
    largest = int(data.max()) if data.size else 0
    if largest > g.max_id:
        raise LabelImportError(
            container,
            f"maxId {g.max_id} of label group {g.group!r} is smaller than its largest label "
            f"{largest}",
        )
    return LabelVolume(
        data=data,
        voxel_size=g.resolution,
        source=str(container),
        format="paintera",
        offset_nm=g.offset_nm,
        details={"label_group": g.group, "max_id": g.max_id, "label_multiset": g.is_label_multiset},
    )


def find_cellmap_crops(container: str | Path) -> dict[str, str]:
    """CellMap crop groups of a Zarr container: crop name -> group path (``.../labels/
    groundtruth/<crop>``, searched up to three groups deep, e.g. under ``recon-1/``)."""
    import zarr

    try:
        root = zarr.open_group(str(container), mode="r")
    except Exception as err:  # zarr raises its own not-found error types
        raise LabelImportError(container, f"not a Zarr container: {err}") from err
    found: dict[str, str] = {}
    prefixes = [""]
    for _ in range(4):
        nxt = []
        for p in prefixes:
            node = root[p] if p else root
            if not isinstance(node, zarr.Group):
                continue
            gt = f"{p}/labels/groundtruth".lstrip("/")
            try:
                crops = root[gt]
            except KeyError:
                crops = None
            with warnings.catch_warnings():
                # the sidecar inside a submission is not a Zarr node; zarr warns when listing
                warnings.filterwarnings("ignore", message=f"Object at {SIDECAR}")
                if isinstance(crops, zarr.Group):
                    for name in crops.group_keys():
                        found.setdefault(name, f"{gt}/{name}")
                nxt += [f"{p}/{k}".lstrip("/") for k in node.group_keys()]
        prefixes = nxt
    return found


def _ngff_level0(
    attrs: Mapping[str, Any], where: str
) -> tuple[str, VoxelSize, tuple[float, float, float], list[str]]:
    """(path, voxel size (nm), translation (nm), axis names) of level 0 of an OME-NGFF
    0.4/0.5 image."""
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise LabelImportError(where, "no OME-NGFF 'multiscales' metadata")
    image = ms[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in image["axes"]]
    units = [
        a.get("unit", "nanometer") if isinstance(a, dict) else "nanometer" for a in image["axes"]
    ]
    if sorted(axes) != ["x", "y", "z"]:
        raise LabelImportError(where, f"expected spatial axes z, y, x, found {axes}")
    per_unit = {"nanometer": 1.0, "micrometer": 1000.0, "angstrom": 0.1, "nm": 1.0}
    ds = image["datasets"][0]
    transforms = ds.get("coordinateTransformations", [])
    scale = next((t["scale"] for t in transforms if t["type"] == "scale"), None)
    if scale is None:
        raise LabelImportError(where, "level 0 has no 'scale' transformation")
    trans = next((t["translation"] for t in transforms if t["type"] == "translation"), [0.0] * 3)
    nm = {a: float(s) * per_unit.get(u, 1.0) for a, s, u in zip(axes, scale, units, strict=True)}
    off = {a: float(s) * per_unit.get(u, 1.0) for a, s, u in zip(axes, trans, units, strict=True)}
    return (
        str(ds["path"]),
        VoxelSize(nm["z"], nm["y"], nm["x"]),
        (off["z"], off["y"], off["x"]),
        [str(a) for a in axes],
    )


def read_cellmap_crop(
    container: str | Path, crop: str, class_map: ClassMap, *, group: str | None = None
) -> LabelVolume:
    """A CellMap crop as dense class ids: its ``all`` group if present, otherwise the union of
    its per-class binary masks (each group named after an atomic class of ``class_map``).
    Axis order, voxel size and offset come from each group's OME-NGFF multiscales."""
    import zarr

    where = str(container)
    if group is None:
        crops = find_cellmap_crops(container)
        if crop not in crops:
            raise LabelImportError(
                where,
                f"no CellMap crop {crop!r} (labels/groundtruth/<crop>); found {sorted(crops)}",
            )
        group = crops[crop]
    root = zarr.open_group(str(container), mode="r")
    try:
        g = root[group]
    except KeyError:
        raise LabelImportError(where, f"no crop group {group!r}") from None
    assert isinstance(g, zarr.Group)
    names = sorted(g.group_keys())
    if not names:
        raise LabelImportError(where, f"crop group {group!r} has no class groups")

    def level0(name: str) -> tuple[Array, VoxelSize, tuple[float, float, float]]:
        cls = g[name]
        assert isinstance(cls, zarr.Group)
        attrs = json.loads(json.dumps(cls.attrs.asdict()))
        path, vox, off, axes = _ngff_level0(attrs, f"{where}/{group}/{name}")
        if path not in cls:
            raise LabelImportError(
                where, f"class group {group}/{name} has no dataset {path!r} (s0)"
            )
        arr = cls[path]
        assert isinstance(arr, zarr.Array)
        if arr.ndim != 3:
            raise LabelImportError(where, f"wrong shape {list(arr.shape)} of {group}/{name}/{path}")
        if arr.size > MAX_CROP_VOXELS:
            raise LabelImportError(
                where, f"wrong shape {list(arr.shape)}: more than {MAX_CROP_VOXELS} voxels"
            )
        data = np.asarray(arr[...])
        order = [axes.index(a) for a in ("z", "y", "x")]
        return np.transpose(data, order), vox, off

    if "all" in names:
        data, vox, off = level0("all")
        return LabelVolume(
            data,
            vox,
            where,
            "cellmap",
            offset_nm=off,
            details={"crop": crop, "group": group, "classes": ["all"]},
        )
    out: Array | None = None
    geometry: tuple[VoxelSize, tuple[float, float, float]] | None = None
    used: list[str] = []
    for name in names:
        if name in class_map.combined:
            continue  # combined masks repeat their atomic parts
        try:
            (class_id,) = class_map.ids_of(name)
        except KeyError:
            raise LabelImportError(
                where, f"class group {group}/{name} is not a class of the class map"
            ) from None
        mask, vox, off = level0(name)
        if geometry is None:
            geometry = (vox, off)
            out = np.zeros(mask.shape, dtype=np.uint8)
        elif (vox, off) != geometry or out is None or mask.shape != out.shape:
            raise LabelImportError(
                where,
                f"class group {group}/{name} has another shape/voxel size/offset than {used[0]}",
            )
        both = (mask > 0) & (out != 0)
        if both.any():
            raise LabelImportError(
                where,
                f"{int(both.sum())} voxels of {group}/{name} are also labelled as another class",
            )
        out[mask > 0] = class_id
        used.append(name)
    if out is None or geometry is None:
        raise LabelImportError(
            where, f"crop group {group!r} has no atomic class groups (only combined ones: {names})"
        )
    return LabelVolume(
        out,
        geometry[0],
        where,
        "cellmap",
        offset_nm=geometry[1],
        details={"crop": crop, "group": group, "classes": used},
    )


def read_tiff_labels(
    path: str | Path, *, voxel_size: VoxelSize, raw_offset: Sequence[int]
) -> LabelVolume:
    """A TIFF label stack (one multi-page file, or a folder of one file per z slice), placed at
    ``raw_offset`` (raw voxels, z, y, x) with label voxel size ``voxel_size`` (nm)."""
    import tifffile

    from fib_assets.core.acquisition.tiff_stack import list_tiff_slices, read_tiff_slice_stack

    p = Path(path)
    try:
        files = (
            sorted(f for f in p.iterdir() if f.suffix.lower() in (".tif", ".tiff"))
            if p.is_dir()
            else [p]
        )
        if len(files) == 1:  # one (multi-page or volumetric) file; crops are small
            data = np.asarray(tifffile.imread(files[0]))
        else:
            data = read_tiff_slice_stack(list_tiff_slices(p))
    except (OSError, ValueError) as err:
        raise LabelImportError(p, f"unreadable TIFF stack: {err}") from err
    if data.ndim == 2:
        data = data[None]
    off = tuple(int(v) for v in raw_offset)
    return LabelVolume(data, voxel_size, str(p), "tiff", raw_offset=(off[0], off[1], off[2]))


# --- the annotations inbox -------------------------------------------------------------------


_SIDECAR_FIELDS = (
    "crop split annotator minutes_spent exported_at format label_group cellmap_crop "
    "voxel_size_nm roi notes"
).split()


@dataclass(frozen=True)
class AnnotationSidecar:
    """The ``annotation.yaml`` of a submission (see the module docstring)."""

    crop: str
    split: str = "train"
    annotator: str | None = None
    minutes_spent: float | None = None
    exported_at: str | None = None
    format: str | None = None
    label_group: str | None = None
    cellmap_crop: str | None = None
    voxel_size_nm: tuple[float, float, float] | None = None
    roi: Roi | None = None
    notes: str | None = None

    @classmethod
    def read(cls, path: Path, default_crop: str) -> AnnotationSidecar:
        """Parse and validate a sidecar; every problem is a :class:`LabelImportError`."""
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise LabelImportError(path, f"unreadable sidecar: {err}") from err
        if not isinstance(doc, dict):
            raise LabelImportError(path, "the sidecar must be a YAML mapping")
        unknown = sorted(set(doc) - set(_SIDECAR_FIELDS))
        if unknown:
            raise LabelImportError(
                path, f"unknown sidecar fields {unknown}; known: {_SIDECAR_FIELDS}"
            )
        crop = str(doc.get("crop") or default_crop)
        if not _CROP_NAME.fullmatch(crop):
            raise LabelImportError(
                path, f"invalid crop name {crop!r}: must match {_CROP_NAME.pattern}"
            )
        split = str(doc.get("split", "train"))
        if split not in SPLITS:
            raise LabelImportError(path, f"split must be one of {list(SPLITS)}, got {split!r}")
        minutes = doc.get("minutes_spent")
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes < 0
        ):
            raise LabelImportError(
                path, f"minutes_spent must be a non-negative number: {minutes!r}"
            )
        fmt = doc.get("format")
        if fmt is not None and fmt not in ("paintera", "cellmap", "tiff"):
            raise LabelImportError(path, f"format must be paintera, cellmap or tiff: {fmt!r}")
        vox = doc.get("voxel_size_nm")
        roi = doc.get("roi")
        try:
            voxel = tuple(float(v) for v in vox) if vox is not None else None
            if voxel is not None:
                VoxelSize(*voxel)
            parsed_roi = None
            if roi is not None:
                parsed_roi = Roi(tuple(roi["offset"]), tuple(roi.get("shape", (0, 0, 0))))  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError) as err:
            raise LabelImportError(path, f"bad voxel_size_nm or roi: {err}") from err
        exported = doc.get("exported_at")
        return cls(
            crop=crop,
            split=split,
            annotator=None if doc.get("annotator") is None else str(doc["annotator"]),
            minutes_spent=None if minutes is None else float(minutes),
            exported_at=None if exported is None else str(exported),
            format=fmt,
            label_group=doc.get("label_group"),
            cellmap_crop=doc.get("cellmap_crop"),
            voxel_size_nm=voxel,  # type: ignore[arg-type]
            roi=parsed_roi,
            notes=doc.get("notes"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "crop": self.crop,
            "split": self.split,
            "annotator": self.annotator,
            "minutes_spent": self.minutes_spent,
            "exported_at": self.exported_at,
            "format": self.format,
            "label_group": self.label_group,
            "cellmap_crop": self.cellmap_crop,
            "voxel_size_nm": list(self.voxel_size_nm) if self.voxel_size_nm else None,
            "roi": self.roi.to_dict() if self.roi else None,
            "notes": self.notes,
        }
        return {k: v for k, v in out.items() if v is not None}


def write_sidecar(container: Path, sidecar: AnnotationSidecar) -> Path:
    """Write ``annotation.yaml`` into a submission (atomically; do this last)."""
    path = container / SIDECAR
    atomic_write_bytes(path, yaml.safe_dump(sidecar.to_dict(), sort_keys=False).encode())
    return path


def _files(container: Path) -> list[Path]:
    if container.is_file():
        return [container]
    return sorted(p for p in container.rglob("*") if p.is_file() and p.name != SIDECAR)


def stat_fingerprint(container: Path) -> str:
    """Cheap change detector (relative paths, sizes, mtimes of every file, sidecar included)."""
    items = [
        (str(p.relative_to(container)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in [*_files(container), container / SIDECAR]
        if p.exists()
    ]
    return fingerprint(items)


def container_checksum(container: Path) -> str:
    """sha256 over every file of a container (relative path and content), sidecar excluded."""
    h = hashlib.sha256()
    for p in _files(container):
        h.update(str(p.relative_to(container)).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Submission:
    """One complete submission in the inbox: a container and its parsed sidecar."""

    region: str
    path: Path
    sidecar: AnnotationSidecar
    fingerprint: str
    exported_at: str

    @property
    def name(self) -> str:
        return self.path.name

    def checksum(self) -> str:
        """sha256 of the container content and the sidecar bytes (a new sidecar = new input)."""
        sidecar = hashlib.sha256((self.path / SIDECAR).read_bytes()).hexdigest()
        return fingerprint([container_checksum(self.path), sidecar])


@dataclass
class InboxScan:
    """A region's inbox: complete submissions, pending ones (no sidecar yet) and rejected ones
    (unusable sidecar), each with the reason."""

    region: str
    folder: Path
    submissions: list[Submission] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(sorted((s.name, s.fingerprint) for s in self.submissions))


def scan_inbox(inbox: str | Path, region: str) -> InboxScan:
    """Scan ``<inbox>/<region>/`` (hidden entries, e.g. staging folders, are ignored)."""
    region = validate_region_key(region)
    folder = Path(inbox) / region
    scan = InboxScan(region, folder)
    if not folder.is_dir():
        return scan
    for entry in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        side = entry / SIDECAR
        if not side.exists():
            scan.pending[entry.name] = (
                f"no {SIDECAR} yet (written last when the export is complete)"
            )
            continue
        default = entry.name.split(".")[0]
        try:
            sidecar = AnnotationSidecar.read(side, default)
        except LabelImportError as err:
            scan.rejected[entry.name] = str(err)
            continue
        exported = (
            sidecar.exported_at or datetime.fromtimestamp(side.stat().st_mtime, UTC).isoformat()
        )
        scan.submissions.append(
            Submission(region, entry, sidecar, stat_fingerprint(entry), exported)
        )
    return scan


def detect_format(sub: Submission) -> str:
    """The submission's format: the sidecar's, else Paintera label group / CellMap crops / TIFF."""
    if sub.sidecar.format:
        return sub.sidecar.format
    name = sub.path.name
    if name.endswith(".n5"):
        return "paintera"
    if name.endswith(".zarr"):
        try:
            if find_label_groups(sub.path):
                return "paintera"
        except FormatError:
            pass
        return "cellmap"
    if any(p.suffix.lower() in (".tif", ".tiff") for p in sub.path.iterdir()):
        return "tiff"
    raise LabelImportError(sub.path, "unknown submission format: not .n5, .zarr or a TIFF folder")


def import_submission(sub: Submission, grid: RawGrid, class_map: ClassMap) -> LabelCrop:
    """Read, validate and place one submission (every problem a :class:`LabelImportError`)."""
    side = sub.sidecar
    fmt = detect_format(sub)
    if fmt == "paintera":
        volume = read_paintera(sub.path, side.label_group)
    elif fmt == "cellmap":
        volume = read_cellmap_crop(sub.path, side.cellmap_crop or side.crop, class_map)
    else:
        if side.roi is None:
            raise LabelImportError(
                sub.path / SIDECAR, "a TIFF submission needs roi.offset (raw voxels)"
            )
        vox = VoxelSize(*side.voxel_size_nm) if side.voxel_size_nm else grid.voxel_size
        volume = read_tiff_labels(sub.path, voxel_size=vox, raw_offset=side.roi.offset)
    expect = side.roi if side.roi is not None and side.roi.size > 0 else None
    return place_crop(volume, grid, class_map, name=side.crop, expect_roi=expect)


def validate_submission(
    container: str | Path, grid: RawGrid, class_map: ClassMap = COSEM_CLASS_MAP
) -> LabelCrop:
    """Dry run for curators: read and place one submission (with its ``annotation.yaml`` if
    present, else defaults) exactly as an import would, without writing anything."""
    path = Path(container)
    if not path.exists():
        raise LabelImportError(path, "no such container")
    side = path / SIDECAR
    default = path.name.split(".")[0]
    sidecar = AnnotationSidecar.read(side, default) if side.exists() else AnnotationSidecar(default)
    sub = Submission("dry-run", path, sidecar, stat_fingerprint(path), "")
    return import_submission(sub, grid, class_map)


# --- revisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropRecord:
    """Everything known about one crop of a revision (stored as its Zarr attributes)."""

    name: str
    split: str
    roi: Roi
    voxel_size: VoxelSize
    factor: tuple[int, int, int]
    shape: tuple[int, int, int]
    checksum: str
    class_counts: dict[int, int]
    source: dict[str, Any]
    annotator: str | None
    minutes_spent: float | None
    exported_at: str | None
    imported_in: int

    @property
    def annotated_fraction(self) -> float:
        total = sum(self.class_counts.values())
        return 1.0 - self.class_counts.get(UNANNOTATED, 0) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "roi_raw_voxels": self.roi.to_dict(),
            "voxel_size_nm": self.voxel_size.to_dict(),
            "factor": list(self.factor),
            "shape": list(self.shape),
            "checksum_sha256": self.checksum,
            "class_counts": {str(k): v for k, v in sorted(self.class_counts.items())},
            "annotated_fraction": self.annotated_fraction,
            "source": self.source,
            "annotator": self.annotator,
            "minutes_spent": self.minutes_spent,
            "exported_at": self.exported_at,
            "imported_in_revision": self.imported_in,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CropRecord:
        f = d["factor"]
        s = d["shape"]
        return cls(
            name=str(d["name"]),
            split=str(d["split"]),
            roi=Roi.from_dict(d["roi_raw_voxels"]),
            voxel_size=VoxelSize.from_dict(d["voxel_size_nm"]),
            factor=(int(f[0]), int(f[1]), int(f[2])),
            shape=(int(s[0]), int(s[1]), int(s[2])),
            checksum=str(d["checksum_sha256"]),
            class_counts={int(k): int(v) for k, v in d["class_counts"].items()},
            source=dict(d["source"]),
            annotator=d.get("annotator"),
            minutes_spent=d.get("minutes_spent"),
            exported_at=d.get("exported_at"),
            imported_in=int(d["imported_in_revision"]),
        )


@dataclass(frozen=True)
class Revision:
    """One published revision of a region's ground-truth crops."""

    number: int
    region: str
    location: str  # a local path or an s3:// URL (fib_assets.core.storage)
    created_at: str
    parent: int | None
    crops: tuple[CropRecord, ...]
    imported: tuple[str, ...]
    carried_over: tuple[str, ...]
    superseded: tuple[dict[str, str], ...]
    class_map: dict[str, Any]

    @property
    def data_version(self) -> str:
        """sha256 of (revision number, every crop's checksum): a new revision is a new version."""
        return revision_data_version(self.number, [c.checksum for c in self.crops])

    @property
    def path(self) -> Path:
        """The revision folder on a local storage root (use :attr:`location` for any root)."""
        if storage.is_remote(self.location):
            raise storage.StorageError(
                f"{self.location}: revision {self.number} is on an object store; use "
                "Revision.location with fib_assets.core.storage"
            )
        return Path(self.location)

    @property
    def crops_location(self) -> str:
        return storage.join(self.location, "crops.zarr")

    @property
    def crops_path(self) -> Path:
        """The crops' Zarr group on a local storage root (see :attr:`crops_location`)."""
        return self.path / "crops.zarr"

    def crop_array(self, name: str) -> Any:
        """Crop ``name``'s zarr array (read only), on a local or object-store root."""
        import zarr

        store = storage.zarr_store(storage.join(self.crops_location, name), read_only=True)
        return zarr.open_array(store, mode="r")

    def label_stats(self) -> pd.DataFrame:
        """The revision's ``label_stats.parquet`` (one row per crop and label id)."""
        return pd.read_parquet(
            io.BytesIO(storage.read_bytes(storage.join(self.location, "label_stats.parquet")))
        )

    def crop(self, name: str) -> CropRecord:
        for c in self.crops:
            if c.name == name:
                return c
        raise KeyError(f"revision {self.number} has no crop {name!r}")

    def read_crop(self, name: str) -> npt.NDArray[np.uint8]:
        """The uint8 class ids (z, y, x, label resolution) of crop ``name``."""
        return np.asarray(self.crop_array(name)[...], dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.number,
            "region": self.region,
            "created_at": self.created_at,
            "parent": self.parent,
            "data_version": self.data_version,
            "crops": [c.to_dict() for c in self.crops],
            "imported": list(self.imported),
            "carried_over": list(self.carried_over),
            "superseded": list(self.superseded),
            "class_map": self.class_map,
        }

    @classmethod
    def load(cls, location: str | Path) -> Revision:
        d = storage.read_json(storage.join(location, "revision.json"))
        return cls(
            number=int(d["revision"]),
            region=str(d["region"]),
            location=storage.normalize(location),
            created_at=str(d["created_at"]),
            parent=d.get("parent"),
            crops=tuple(CropRecord.from_dict(c) for c in d["crops"]),
            imported=tuple(d["imported"]),
            carried_over=tuple(d["carried_over"]),
            superseded=tuple(d["superseded"]),
            class_map=d["class_map"],
        )

    def sources(self) -> dict[str, str]:
        """crop name -> checksum of the submission it was imported from."""
        return {c.name: str(c.source.get("checksum")) for c in self.crops}


def revision_data_version(number: int, crop_checksums: Iterable[str]) -> str:
    return fingerprint({"revision": number, "crops": sorted(crop_checksums)})


class RevisionStore:
    """The revisions of one region under ``directory`` (``<root>/ground_truth_crops/<region>``),
    a local folder or an ``s3://`` prefix."""

    def __init__(self, directory: str | Path) -> None:
        self.location = storage.normalize(directory)

    @property
    def directory(self) -> Path:
        """The store's folder on a local storage root (see :attr:`location`)."""
        if storage.is_remote(self.location):
            raise storage.StorageError(f"{self.location}: an object-store revision store")
        return Path(self.location)

    def numbers(self) -> list[int]:
        """Published revisions: renamed into place locally, marked complete on S3."""
        out = []
        for name in storage.list_names(self.location):
            m = _REV_DIR.fullmatch(name)
            rev = storage.join(self.location, name)
            if (
                m
                and storage.is_complete(rev)
                and storage.exists(storage.join(rev, "revision.json"))
            ):
                out.append(int(m.group(1)))
        return sorted(out)

    def location_of(self, number: int) -> str:
        return storage.join(self.location, f"rev-{number:04d}")

    def path(self, number: int) -> Path:
        """A revision's folder on a local storage root (see :meth:`location_of`)."""
        return self.directory / f"rev-{number:04d}"

    def load(self, number: int) -> Revision:
        return Revision.load(self.location_of(number))

    def latest(self) -> Revision | None:
        nums = self.numbers()
        return self.load(nums[-1]) if nums else None

    def current(self) -> Revision | None:
        """The accepted revision consumers read, or None."""
        f = storage.join(self.location, "current.json")
        if not storage.exists(f):
            return None
        return self.load(int(storage.read_json(f)["revision"]))

    def set_current(self, revision: Revision) -> None:
        storage.write_json(
            storage.join(self.location, "current.json"),
            {
                "revision": revision.number,
                "path": storage.name(revision.location),
                "data_version": revision.data_version,
                "updated_at": datetime.now(UTC).isoformat(),
            },
        )

    def write_checks(self, revision: Revision, checks: Sequence[LabelCheck]) -> None:
        storage.write_json(
            storage.join(revision.location, "checks.json"), [c.to_dict() for c in checks]
        )


@dataclass(frozen=True)
class RevisionPlan:
    """Describe-then-do: what the next revision holds (see :func:`plan_revision`)."""

    region: str
    number: int
    base: Revision | None
    imports: tuple[tuple[Submission, str], ...]  # (submission, checksum)
    carried: tuple[CropRecord, ...]
    superseded: tuple[dict[str, str], ...]
    reuse: Revision | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "number": self.reuse.number if self.reuse else self.number,
            "base": self.base.number if self.base else None,
            "imports": [
                {"container": str(s.path), "crop": s.sidecar.crop, "checksum": c}
                for s, c in self.imports
            ],
            "carried_over": [c.name for c in self.carried],
            "superseded": list(self.superseded),
            "reuse": self.reuse.number if self.reuse else None,
        }


def plan_revision(store: RevisionStore, scan: InboxScan) -> RevisionPlan:
    """What the next revision of ``scan.region`` holds: the current revision's crops with every
    new or corrected submission imported (the newest submission per crop name wins; older ones
    are *superseded*). When that equals an existing revision (current or the latest) it is
    reused instead of writing a new one. Rejected sidecars are a :class:`LabelImportError`."""
    if scan.rejected:
        name, why = next(iter(scan.rejected.items()))
        raise LabelImportError(scan.folder / name, f"rejected submission ({why})")
    base = store.current()
    latest = store.latest()
    newest: dict[str, Submission] = {}
    superseded = []
    for sub in sorted(scan.submissions, key=lambda s: (s.exported_at, s.name)):
        old = newest.get(sub.sidecar.crop)
        if old is not None:
            superseded.append(
                {"container": str(old.path), "crop": old.sidecar.crop, "by": str(sub.path)}
            )
        newest[sub.sidecar.crop] = sub
    base_sources = base.sources() if base else {}
    imports = []
    for crop, sub in sorted(newest.items()):
        checksum = sub.checksum()
        if base_sources.get(crop) != checksum:
            imports.append((sub, checksum))
    imported = {s.sidecar.crop for s, _ in imports}
    carried = tuple(c for c in (base.crops if base else ()) if c.name not in imported)
    target = {c.name: str(c.source.get("checksum")) for c in carried}
    target.update({s.sidecar.crop: ck for s, ck in imports})
    reuse = None
    for candidate in (base, latest):
        if candidate is not None and candidate.sources() == target:
            reuse = candidate
            break
    number = (latest.number if latest else 0) + 1
    return RevisionPlan(
        scan.region, number, base, tuple(imports), carried, tuple(superseded), reuse
    )


def _write_crop_array(root: Any, record: CropRecord, data: Array) -> None:
    from zarr.codecs import ZstdCodec

    arr = root.create_array(
        name=record.name,
        shape=data.shape,
        chunks=tuple(min(64, s) for s in data.shape),
        dtype="uint8",
        fill_value=0,
        compressors=[ZstdCodec(level=3)],
        dimension_names=["z", "y", "x"],
    )
    arr[...] = data
    arr.attrs.update(record.to_dict())


def build_revision(
    plan: RevisionPlan,
    store: RevisionStore,
    grid: RawGrid,
    class_map: ClassMap,
    *,
    now: datetime | None = None,
) -> Revision:
    """Import the planned submissions, write the revision in a staging folder and rename it to
    ``rev-NNNN`` (never changes ``current.json``); on an object store the staging folder is in
    local scratch and is published by :class:`fib_assets.core.storage.Staging` (uploaded, read
    back, completion marker last). Bad input raises :class:`LabelImportError` before anything
    is published; the staging folder is removed."""
    if plan.reuse is not None:
        return plan.reuse
    # import and validate everything before writing anything
    crops: list[tuple[CropRecord, Array]] = []
    for sub, checksum in plan.imports:
        crop = import_submission(sub, grid, class_map)
        side = sub.sidecar
        record = CropRecord(
            name=crop.name,
            split=side.split,
            roi=crop.roi,
            voxel_size=crop.voxel_size,
            factor=crop.factor,
            shape=_shape3(crop.data.shape),
            checksum=crop.checksum,
            class_counts=crop.class_counts(),
            source={
                "container": str(sub.path),
                "format": crop.format,
                "checksum": checksum,
                "alignment": crop.alignment,
                **{k: v for k, v in crop.details.items() if isinstance(v, str | int | bool | list)},
            },
            annotator=side.annotator,
            minutes_spent=side.minutes_spent,
            exported_at=sub.exported_at,
            imported_in=plan.number,
        )
        crops.append((record, crop.data))
    base = plan.base
    for record in plan.carried:
        assert base is not None
        crops.append((record, base.read_crop(record.name)))
    crops.sort(key=lambda rc: rc[0].name)

    final = store.location_of(plan.number)
    # scratch for a staged revision: the crops uncompressed, twice (headroom for the stats)
    need = 2 * sum(int(np.asarray(d).nbytes) for _, d in crops) + 2**20
    with storage.Staging(final, need_bytes=need) as stage:
        if stage.staged:
            staging = Path(stage.path)
        else:
            store.directory.mkdir(parents=True, exist_ok=True)
            staging = store.directory / f".{storage.name(final)}.partial-{os.getpid()}"
        return _write_revision(plan, stage, staging, crops, class_map, base, now)


def _write_revision(
    plan: RevisionPlan,
    stage: storage.Staging,
    staging: Path,
    crops: Sequence[tuple[CropRecord, Array]],
    class_map: ClassMap,
    base: Revision | None,
    now: datetime | None,
) -> Revision:
    """Write the revision's files into local ``staging``, then publish it at ``stage.url``:
    a rename on local disk, upload + marker on an object store."""
    import zarr

    final = stage.url
    shutil.rmtree(staging, ignore_errors=True)
    try:
        revision = Revision(
            number=plan.number,
            region=plan.region,
            location=final,
            created_at=(now or datetime.now(UTC)).isoformat(),
            parent=base.number if base else None,
            crops=tuple(r for r, _ in crops),
            imported=tuple(s.sidecar.crop for s, _ in plan.imports),
            carried_over=tuple(r.name for r in plan.carried),
            superseded=plan.superseded,
            class_map=class_map.to_dict(),
        )
        root = zarr.open_group(str(staging / "crops.zarr"), mode="w")
        root.attrs.update({k: v for k, v in revision.to_dict().items() if k != "crops"})
        for record, data in crops:
            _write_crop_array(root, record, data)
        stats = label_statistics(revision, class_map)
        tmp = staging / ".label_stats.parquet.tmp"
        stats.to_parquet(tmp, index=False)
        os.replace(tmp, staging / "label_stats.parquet")
        atomic_write_json(staging / "revision.json", revision.to_dict())
        concurrent = FileExistsError(
            f"{final}: revision {plan.number} was published concurrently; retry the import"
        )
        if stage.staged:
            if storage.is_complete(final):
                raise concurrent
            stage.publish({"revision": plan.number, "data_version": revision.data_version})
        else:
            try:
                os.rename(staging, final)
            except OSError as err:
                raise concurrent from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return revision


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    return (int(shape[0]), int(shape[1]), int(shape[2]))


# --- checks --------------------------------------------------------------------------------------

IDS_IN_CLASS_MAP = "label_ids_in_class_map"
CROPS_INSIDE_RAW = "crops_inside_raw_volume"
VOXEL_SIZE_COMPATIBLE = "voxel_size_compatible"
CROPS_NOT_EMPTY = "crops_not_empty"
ANNOTATED_FRACTION = "annotated_fraction"
SPLIT_DISJOINT = "test_crops_disjoint_from_train"
#: Checks whose failure would poison training: they block downstream assets.
BLOCKING_CHECKS = (
    IDS_IN_CLASS_MAP,
    CROPS_INSIDE_RAW,
    VOXEL_SIZE_COMPATIBLE,
    CROPS_NOT_EMPTY,
    SPLIT_DISJOINT,
)


@dataclass(frozen=True)
class LabelCheck:
    """Outcome of one check of a revision."""

    name: str
    passed: bool
    blocking: bool
    description: str
    value: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "blocking": self.blocking,
            "description": self.description,
            "value": self.value,
            "details": self.details,
        }


def evaluate_revision(
    revision: Revision,
    grid: RawGrid,
    class_map: ClassMap,
    *,
    min_annotated_fraction: float = 0.9,
) -> list[LabelCheck]:
    """Every check of a revision, from its stored crops (re-read, so the checks see what was
    written) and the raw grid. Blocking: ids in the class map, crops inside the raw volume,
    voxel size = raw or an integer fraction, no empty crop, test crops disjoint from train
    crops. Warning only: the annotated fraction per crop."""
    counts = {c.name: class_counts(revision.read_crop(c.name)) for c in revision.crops}
    out = []

    unknown = {n: class_map.unknown(cc) for n, cc in counts.items()}
    unknown = {n: u for n, u in unknown.items() if u}
    out.append(
        LabelCheck(
            IDS_IN_CLASS_MAP,
            not unknown,
            True,
            "every label id is 0 (unannotated) or a class of the class map"
            if not unknown
            else "ids outside the class map: "
            + "; ".join(f"{n}: {u[:10]}" for n, u in unknown.items()),
            float(sum(len(u) for u in unknown.values())),
            {
                "unknown_ids": unknown,
                "ids_present": sorted({i for cc in counts.values() for i in cc}),
            },
        )
    )

    outside = {c.name: c.roi.to_dict() for c in revision.crops if not grid.roi.contains(c.roi)}
    out.append(
        LabelCheck(
            CROPS_INSIDE_RAW,
            not outside,
            True,
            f"all {len(revision.crops)} crops inside the raw volume {list(grid.shape)}"
            if not outside
            else f"{len(outside)} crops outside the raw volume {list(grid.shape)}: "
            f"{sorted(outside)}",
            float(len(outside)),
            {"outside": outside, "raw_shape": list(grid.shape)},
        )
    )

    bad_vox = {}
    for c in revision.crops:
        ratios = [
            r / v for r, v in zip(grid.voxel_size.as_tuple(), c.voxel_size.as_tuple(), strict=True)
        ]
        if any(abs(q - round(q)) > _TOL or round(q) < 1 for q in ratios):
            bad_vox[c.name] = {"voxel_size_nm": c.voxel_size.to_dict(), "ratio": ratios}
    out.append(
        LabelCheck(
            VOXEL_SIZE_COMPATIBLE,
            not bad_vox,
            True,
            f"crop voxel sizes equal the raw voxel size {grid.voxel_size.to_dict()} nm or an "
            "integer fraction of it"
            if not bad_vox
            else f"{len(bad_vox)} crops have a voxel size incompatible with the raw "
            f"{grid.voxel_size.to_dict()} nm: {sorted(bad_vox)}",
            float(len(bad_vox)),
            {"crops": bad_vox, "raw_voxel_size_nm": grid.voxel_size.to_dict()},
        )
    )

    empty = [n for n, cc in counts.items() if set(cc) <= {UNANNOTATED}]
    no_crops = not revision.crops
    out.append(
        LabelCheck(
            CROPS_NOT_EMPTY,
            not empty and not no_crops,
            True,
            "the revision has no crops"
            if no_crops
            else f"every crop has annotated voxels ({len(counts)} crops)"
            if not empty
            else f"{len(empty)} crops have no annotated voxel: {empty}",
            float(len(empty)),
            {"empty_crops": empty},
        )
    )

    fractions = {
        n: 1.0 - cc.get(UNANNOTATED, 0) / max(1, sum(cc.values())) for n, cc in counts.items()
    }
    low = {n: round(f, 4) for n, f in fractions.items() if f < min_annotated_fraction}
    out.append(
        LabelCheck(
            ANNOTATED_FRACTION,
            not low,
            False,
            f"every crop is at least {min_annotated_fraction:.0%} annotated (lowest "
            f"{min(fractions.values(), default=1.0):.1%})"
            if not low
            else f"{len(low)} crops are less than {min_annotated_fraction:.0%} annotated: {low}",
            float(min(fractions.values(), default=0.0)),
            {
                "fractions": {n: round(f, 4) for n, f in fractions.items()},
                "threshold": min_annotated_fraction,
            },
        )
    )

    overlaps = []
    train = [c for c in revision.crops if c.split == "train"]
    for t in (c for c in revision.crops if c.split == "test"):
        for tr in train:
            n = t.roi.intersect(tr.roi).size
            if n:
                overlaps.append({"test": t.name, "train": tr.name, "overlap_raw_voxels": n})
    out.append(
        LabelCheck(
            SPLIT_DISJOINT,
            not overlaps,
            True,
            f"no test crop overlaps a training crop ({len(revision.crops) - len(train)} "
            f"test, {len(train)} train)"
            if not overlaps
            else "test crops overlap training crops: "
            + "; ".join(
                f"{o['test']} ∩ {o['train']} = {o['overlap_raw_voxels']} raw voxels"
                for o in overlaps[:5]
            ),
            float(len(overlaps)),
            {"overlaps": overlaps},
        )
    )
    return out


def accepted(checks: Sequence[LabelCheck]) -> bool:
    """Whether a revision may become current: every blocking check passed."""
    return all(c.passed for c in checks if c.blocking)


@dataclass(frozen=True)
class ImportResult:
    """Outcome of :func:`import_revision`."""

    plan: RevisionPlan
    revision: Revision
    checks: tuple[LabelCheck, ...]
    accepted: bool
    current: Revision | None

    @property
    def reused(self) -> bool:
        return self.plan.reuse is not None


def import_revision(
    store: RevisionStore,
    scan: InboxScan,
    grid: RawGrid,
    class_map: ClassMap,
    *,
    min_annotated_fraction: float = 0.9,
) -> ImportResult:
    """Plan, build (or reuse) and check the next revision; make it current only when every
    blocking check passed (the pointer moves after the checks' inputs were computed from the
    published crops). Bad input or an inbox without any submission raises
    :class:`LabelImportError` and leaves the current revision as it was."""
    plan = plan_revision(store, scan)
    if plan.reuse is None and not plan.imports and not plan.carried:
        raise LabelImportError(
            scan.folder,
            f"no annotations for region {scan.region}: no complete submission (a Paintera "
            f".n5/.zarr container, CellMap .zarr or TIFF folder with {SIDECAR})",
        )
    revision = build_revision(plan, store, grid, class_map)
    checks = evaluate_revision(
        revision, grid, class_map, min_annotated_fraction=min_annotated_fraction
    )
    store.write_checks(revision, checks)
    ok = accepted(checks)
    if ok:
        store.set_current(revision)
    return ImportResult(plan, revision, tuple(checks), ok, store.current())


# --- statistics and previews ---------------------------------------------------------------


def label_statistics(revision: Revision, class_map: ClassMap) -> pd.DataFrame:
    """One row per crop and label id present (0 = unannotated): voxels, fraction of the crop,
    volume (µm³), with the crop's split and the revision number."""
    rows = []
    for c in revision.crops:
        total = sum(c.class_counts.values())
        vox_um3 = math.prod(c.voxel_size.as_tuple()) / 1e9
        for cid, n in sorted(c.class_counts.items()):
            rows.append(
                {
                    "revision": revision.number,
                    "crop": c.name,
                    "split": c.split,
                    "class_id": cid,
                    "class_name": class_map.name(cid),
                    "voxels": n,
                    "fraction": n / total if total else 0.0,
                    "volume_um3": n * vox_um3,
                }
            )
    columns = [
        "revision",
        "crop",
        "split",
        "class_id",
        "class_name",
        "voxels",
        "fraction",
        "volume_um3",
    ]
    return pd.DataFrame(rows, columns=columns)


def class_summary(stats: pd.DataFrame, class_map: ClassMap) -> pd.DataFrame:
    """Totals per atomic and combined class over all crops of a revision (annotated voxels)."""
    annotated = stats[stats["class_id"] != UNANNOTATED]
    total = max(1, int(annotated["voxels"].sum()))
    rows = []
    for cid, name in sorted(class_map.classes.items()):
        part = annotated[annotated["class_id"] == cid]
        if len(part):
            rows.append(
                {
                    "class": name,
                    "ids": str(cid),
                    "voxels": int(part["voxels"].sum()),
                    "fraction": int(part["voxels"].sum()) / total,
                    "crops": int(part["crop"].nunique()),
                }
            )
    for name, ids in class_map.combined.items():
        part = annotated[annotated["class_id"].isin(sorted(ids))]
        if len(part):
            rows.append(
                {
                    "class": name,
                    "ids": _id_ranges(ids),
                    "voxels": int(part["voxels"].sum()),
                    "fraction": int(part["voxels"].sum()) / total,
                    "crops": int(part["crop"].nunique()),
                }
            )
    return pd.DataFrame(rows, columns=["class", "ids", "voxels", "fraction", "crops"])


def _id_ranges(ids: Iterable[int]) -> str:
    """Compact id list, e.g. ``20-29,37``."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def overlay_rgb(
    raw: Array, labels: Array, class_map: ClassMap, *, alpha: float = 0.45
) -> npt.NDArray[np.uint8]:
    """A (rows, cols, 3) uint8 image: the uint8 raw plane with class colours blended in
    (unannotated voxels show the raw only)."""
    gray = np.repeat(raw.astype(np.float32)[..., None], 3, axis=-1)
    palette = np.zeros((256, 3), dtype=np.float32)
    for cid in range(1, 256):
        palette[cid] = class_map.color(cid)
    lab = labels.astype(np.intp)
    mask = (lab != UNANNOTATED)[..., None]
    blended = np.where(mask, (1 - alpha) * gray + alpha * palette[lab], gray)
    return np.clip(blended, 0, 255).astype(np.uint8)


def revision_overlay_png(
    revision: Revision,
    read_raw: Callable[[Roi], Array],
    class_map: ClassMap,
    *,
    max_crops: int = 4,
    max_side: int = 512,
) -> bytes:
    """PNG of the middle z plane of up to ``max_crops`` crops: uint8 raw (read with
    ``read_raw`` on the raw grid) with class-coloured labels, side by side (labels finer than
    the raw are subsampled to the raw grid)."""
    from PIL import Image

    tiles = []
    for c in revision.crops[:max_crops]:
        z = c.roi.offset[0] + c.roi.shape[0] // 2
        plane_roi = Roi((z, c.roi.offset[1], c.roi.offset[2]), (1, c.roi.shape[1], c.roi.shape[2]))
        raw = np.asarray(read_raw(plane_roi))[0]
        data = revision.read_crop(c.name)
        kz, ky, kx = c.factor
        lab = data[(z - c.roi.offset[0]) * kz + kz // 2, ky // 2 :: ky, kx // 2 :: kx]
        tiles.append(overlay_rgb(raw, lab[: raw.shape[0], : raw.shape[1]], class_map))
    if not tiles:
        tiles = [np.full((8, 8, 3), 255, dtype=np.uint8)]
    gap = 4
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for t in tiles:
        canvas[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    img = Image.fromarray(canvas, mode="RGB")
    scale = max(img.size) / max_side
    if scale < 0.5:  # small crops: enlarge by an integer factor so voxels stay crisp
        up = int(1 / scale)
        img = img.resize((img.size[0] * up, img.size[1] * up), Image.Resampling.NEAREST)
    elif scale > 1:
        img = img.resize(
            (max(1, round(img.size[0] / scale)), max(1, round(img.size[1] / scale))),
            Image.Resampling.NEAREST,
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class RevisionLabelSource:
    """A revision's crops as one uint64 label volume on the raw grid (0 outside every crop), a
    :class:`VolumeSource` for :func:`fib_assets.core.formats.paintera.export_paintera`. Crops
    finer than the raw are mode-downsampled to it; where crops overlap the later name wins."""

    def __init__(self, revision: Revision, grid: RawGrid) -> None:
        self.revision = revision
        self._info = VolumeInfo(grid.shape, "uint64", grid.voxel_size)

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> Array:
        out = np.zeros(roi.shape, dtype=np.uint64)
        for c in self.revision.crops:
            part = c.roi.intersect(roi)
            if part.size == 0:
                continue
            arr = self.revision.crop_array(c.name)
            k = c.factor
            lo = [(p - o) * f for p, o, f in zip(part.offset, c.roi.offset, k, strict=True)]
            hi = [lo_ + s * f for lo_, s, f in zip(lo, part.shape, k, strict=True)]
            data = np.asarray(arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
            if k != (1, 1, 1):
                data = downsample_mode(data, k)
            dst = tuple(
                slice(p - r, p - r + s)
                for p, r, s in zip(part.offset, roi.offset, part.shape, strict=True)
            )
            out[dst] = data
        return out


# --- synthetic ground truth delivered as a curator would ---------------------------------------


def _choose_crops(
    shape: tuple[int, int, int], want: tuple[int, int, int], n: int, rng: np.random.Generator
) -> list[Roi]:
    """``n`` disjoint ROIs of (at most) ``want`` voxels inside ``shape``: the volume is tiled in
    slots of the crop shape (halved along its longest axis until ``n`` slots fit), ``n`` slots
    are drawn and each crop is jittered inside its slot."""
    crop = [min(w, s) for w, s in zip(want, shape, strict=True)]
    while math.prod(s // c for s, c in zip(shape, crop, strict=True)) < n:
        axis = int(np.argmax(crop))
        if crop[axis] <= 1:
            raise ValueError(f"cannot place {n} disjoint crops in a volume of shape {list(shape)}")
        crop[axis] = max(1, crop[axis] // 2)
    grid = [s // c for s, c in zip(shape, crop, strict=True)]
    slot_size = [s // g for s, g in zip(shape, grid, strict=True)]
    slots = rng.choice(math.prod(grid), size=n, replace=False)
    rois = []
    for slot in sorted(int(s) for s in slots):
        idx = np.unravel_index(slot, grid)
        off = [
            int(i) * ss + int(rng.integers(0, ss - c + 1))
            for i, ss, c in zip(idx, slot_size, crop, strict=True)
        ]
        rois.append(Roi((off[0], off[1], off[2]), (crop[0], crop[1], crop[2])))
    return rois


def deliver_synthetic_annotations(
    groundtruth_zarr: str | Path,
    inbox: str | Path,
    region: str,
    *,
    raw_voxel_size_nm: float | Sequence[float],
    n_crops: int = 3,
    crop_shape: Sequence[int] = (48, 48, 48),
    seed: int = 0,
    test_fraction: float = 0.34,
    annotator: str = "synthetic-oracle",
    container_format: str = ".n5",
) -> list[Path]:
    """Cut ``n_crops`` disjoint crops (``crop_shape`` clipped to the volume; z, y, x voxels)
    from the synthetic dense ground truth (the Zarr v3 array of
    :func:`fib_assets.core.acquisition.synthetic.write_ground_truth`) and deliver each to
    ``<inbox>/<region>/synthetic-<crop>.n5`` exactly as a curator's Paintera export: a label
    group ``volumes/labels/ground_truth`` (uint64, maxId, resolution/offset in x, y, z nm) and an
    ``annotation.yaml`` written last. About ``test_fraction`` of the crops (at least one when
    there are two or more) are the test split. Idempotent: an identical delivery is kept."""
    import zarr

    region = validate_region_key(region)
    if n_crops < 1:
        raise ValueError(f"n_crops must be >= 1, got {n_crops}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    v = raw_voxel_size_nm
    voxel = (
        VoxelSize.isotropic(float(v))
        if isinstance(v, int | float)
        else VoxelSize(*(float(x) for x in v))
    )
    arr = zarr.open_array(str(groundtruth_zarr), mode="r")
    shape = _shape3(arr.shape)
    stored: Any = arr.attrs.get("voxel_size_nm")
    if stored is not None and [float(x) for x in stored] != list(voxel.as_tuple()):
        raise ValueError(
            f"{groundtruth_zarr}: voxel size {stored} nm != raw_voxel_size_nm {voxel.as_tuple()}"
        )
    rng = np.random.default_rng(seed)
    rois = _choose_crops(shape, _shape3(crop_shape), n_crops, rng)
    n_test = 0 if n_crops < 2 or test_fraction == 0 else max(1, round(n_crops * test_fraction))
    test = set(int(i) for i in rng.choice(n_crops, size=n_test, replace=False)) if n_test else set()
    out_dir = Path(inbox) / region
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, roi in enumerate(rois):
        name = f"crop{i + 1:02d}"
        path = out_dir / f"synthetic-{name}{container_format}"
        sidecar = AnnotationSidecar(
            crop=name,
            split="test" if i in test else "train",
            annotator=annotator,
            format="paintera",
            label_group="volumes/labels/ground_truth",
            roi=roi,
            notes=f"synthetic ground truth {Path(groundtruth_zarr).name}, seed {seed}",
        )
        side = path / SIDECAR
        if side.exists() and yaml.safe_load(side.read_text()) == sidecar.to_dict():
            paths.append(path)
            continue
        side.unlink(missing_ok=True)  # incomplete until the new sidecar is written
        data = np.asarray(arr[roi.to_slices()]).astype(np.uint64)
        write_paintera_labels(
            path,
            data,
            voxel_size=voxel,
            offset_nm=[o * s for o, s in zip(roi.offset, voxel.as_tuple(), strict=True)],
            group="volumes/labels/ground_truth",
            chunks=(32, 32, 32),
        )
        write_sidecar(path, sidecar)
        paths.append(path)
    return paths
