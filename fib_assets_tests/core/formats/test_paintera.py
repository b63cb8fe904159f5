"""Paintera containers: what an independent reader (tensorstore's n5 driver, zarr-python) sees
in our exports, label groups round-tripping through our reader, label multisets, and every
bad label group refused with the container and the problem named."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from fib_assets.core.formats import paintera
from fib_assets.core.formats.base import ArraySource, VolumeInfo
from fib_assets.core.formats.n5 import encode_chunk
from fib_assets.core.formats.paintera import (
    PainteraError,
    downsample_mode,
    export_paintera,
    open_label_group,
    write_paintera_labels,
)
from fib_assets.core.formats.zarr import create_multiscale_image, downsample_mean
from fib_assets.core.geometry import Roi, VoxelSize

VOX = VoxelSize(8.0, 8.0, 8.0)


def _labels(shape=(10, 13, 17), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.uint64)
    lab[:, : shape[1] // 2] = 35
    inner = tuple(slice(n // 4, 3 * n // 4 + 1) for n in shape)
    lab[inner] = rng.choice([3, 4, 5], size=lab[inner].shape)
    lab[..., -2:] = 0
    return lab


def _attrs(path: Path) -> dict:
    return json.loads((path / "attributes.json").read_text())


def _ts_n5(dataset: Path) -> np.ndarray:
    """A dataset read by tensorstore's n5 driver, transposed from (x, y, z) to (z, y, x)."""
    spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(dataset)}}
    return np.asarray(ts.open(spec).result().read().result()).transpose()


def raw_container(tmp_path: Path, shape=(20, 40, 36), vox=VOX) -> tuple[Path, np.ndarray]:
    """A tiny canonical-style OME-Zarr with a uint8 (z, y, x) image (s0, s1)."""
    path = tmp_path / "raw.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    levels = [shape, tuple(-(-s // 2) for s in shape)]
    arrays = create_multiscale_image(
        root,
        "uint8",
        level_shapes=levels,
        dtype="uint8",
        chunks=(8, 8, 8),
        shards=(16, 16, 16),
        voxel_size=vox,
    )
    data = (np.arange(np.prod(shape)) * 7 % 251).astype(np.uint8).reshape(shape)
    arrays[0][...] = data
    arrays[1][...] = downsample_mean(data)
    return path, data


# --- writing: what Paintera (and an independent reader) sees ----------------------------------


def test_label_group_attributes_and_voxels_n5(tmp_path):
    lab = _labels()
    out = write_paintera_labels(
        tmp_path / "gt.n5",
        lab,
        voxel_size=VoxelSize(8, 4, 4),
        offset_nm=(80, 40, 20),
        chunks=(4, 8, 8),
        levels=2,
    )
    group = out / "volumes" / "labels" / "ground_truth"
    assert _attrs(out) == {"n5": "2.0.0"}
    top = _attrs(group)
    assert top["painteraData"] == {"type": "label"}
    assert top["maxId"] == 35
    data = _attrs(group / "data")
    assert data["multiScale"] is True
    assert data["resolution"] == [4.0, 4.0, 8.0]  # x, y, z
    assert data["offset"] == [20.0, 40.0, 80.0]
    assert data["maxId"] == 35 and data["isLabelMultiset"] is False
    s0 = _attrs(group / "data" / "s0")
    assert s0["dimensions"] == [17, 13, 10] and s0["blockSize"] == [8, 8, 4]
    assert s0["dataType"] == "uint64" and s0["downsamplingFactors"] == [1, 1, 1]
    assert _attrs(group / "data" / "s1")["downsamplingFactors"] == [2, 2, 2]
    np.testing.assert_array_equal(_ts_n5(group / "data" / "s0"), lab)
    np.testing.assert_array_equal(_ts_n5(group / "data" / "s1"), downsample_mode(lab))


def test_label_group_attributes_and_voxels_zarr(tmp_path):
    lab = _labels()
    out = write_paintera_labels(tmp_path / "gt.zarr", lab, voxel_size=VOX, levels=2)
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == 2  # what Paintera's n5-zarr reads
    group = root["volumes/labels/ground_truth"]
    assert group.attrs["painteraData"] == {"type": "label"} and group.attrs["maxId"] == 35
    assert group["data"].attrs["resolution"] == [8.0, 8.0, 8.0]
    s0 = group["data/s0"]
    assert s0.dtype == np.uint64 and s0.attrs["downsamplingFactors"] == [1, 1, 1]
    np.testing.assert_array_equal(s0[...], lab)
    np.testing.assert_array_equal(group["data/s1"][...], downsample_mode(lab))


@pytest.mark.parametrize("suffix", [".n5", ".zarr"])
def test_label_group_round_trip(tmp_path, suffix):
    lab = _labels()
    out = write_paintera_labels(
        tmp_path / f"gt{suffix}", lab, voxel_size=VoxelSize(8, 4, 4), offset_nm=(8, 4, 4)
    )
    g = open_label_group(out)
    assert g.group == "volumes/labels/ground_truth"
    assert g.max_id == 35 and g.shape == lab.shape and g.dtype == "uint64"
    assert g.resolution == VoxelSize(8, 4, 4) and g.offset_nm == (8.0, 4.0, 4.0)
    np.testing.assert_array_equal(g.read(), lab)
    np.testing.assert_array_equal(g.read(Roi((1, 2, 3), (4, 5, 6))), lab[1:5, 2:7, 3:9])


@pytest.mark.parametrize("suffix", [".n5", ".zarr"])
def test_export_region_roi_with_labels(tmp_path, suffix):
    raw_path, raw = raw_container(tmp_path)
    labels = np.zeros(raw.shape, dtype=np.uint64)
    labels[4:12, 8:30, 5:20] = 4
    roi = Roi((2, 4, 3), (16, 32, 30))
    res = export_paintera(
        raw_path,
        tmp_path / f"export{suffix}",
        roi=roi,
        labels=ArraySource(labels, VOX),
        chunks=(8, 8, 8),
        levels=2,
    )
    out = Path(res.path)
    assert res.max_id == 4 and res.levels == 2
    offset_xyz = [3 * 8.0, 4 * 8.0, 2 * 8.0]
    if suffix == ".n5":
        raw_group = _attrs(out / "volumes" / "raw")
        lab_group = _attrs(out / "volumes" / "labels" / "ground_truth")
        lab_data = _attrs(out / "volumes" / "labels" / "ground_truth" / "data")
        raw_s0 = _ts_n5(out / "volumes" / "raw" / "s0")
        raw_s1 = _ts_n5(out / "volumes" / "raw" / "s1")
        lab_s0 = _ts_n5(out / "volumes" / "labels" / "ground_truth" / "data" / "s0")
    else:
        root = zarr.open_group(str(out), mode="r")
        raw_group = root["volumes/raw"].attrs.asdict()
        lab_group = root["volumes/labels/ground_truth"].attrs.asdict()
        lab_data = root["volumes/labels/ground_truth/data"].attrs.asdict()
        raw_s0 = root["volumes/raw/s0"][...]
        raw_s1 = root["volumes/raw/s1"][...]
        lab_s0 = root["volumes/labels/ground_truth/data/s0"][...]
    assert raw_group["multiScale"] is True
    assert raw_group["resolution"] == [8.0, 8.0, 8.0] and raw_group["offset"] == offset_xyz
    assert lab_group["painteraData"] == {"type": "label"} and lab_group["maxId"] == 4
    assert lab_data["offset"] == offset_xyz and lab_data["multiScale"] is True
    np.testing.assert_array_equal(raw_s0, raw[roi.to_slices()])
    np.testing.assert_array_equal(raw_s1, downsample_mean(raw[roi.to_slices()]))
    np.testing.assert_array_equal(lab_s0, labels[roi.to_slices()])
    assert not list(tmp_path.glob(".export*")), "no staging folder left behind"


def test_export_without_labels_and_replaces_atomically(tmp_path):
    raw_path, raw = raw_container(tmp_path)
    out = tmp_path / "view.n5"
    export_paintera(raw_path, out, chunks=(8, 8, 8))
    assert not (out / "volumes" / "labels").exists()
    roi_labels = np.full((4, 4, 4), 7, dtype=np.uint64)
    res = export_paintera(raw_path, out, roi=Roi((0, 0, 0), (4, 4, 4)), labels=roi_labels)
    assert open_label_group(out).max_id == 7 and res.label_group == "volumes/labels/ground_truth"
    np.testing.assert_array_equal(_ts_n5(out / "volumes" / "raw" / "s0"), raw[:4, :4, :4])


class _CountingSource:
    """A VolumeSource that records the largest ROI it was asked for."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.largest = 0
        self.info = VolumeInfo(data.shape, str(data.dtype), VOX)

    def read(self, roi: Roi) -> np.ndarray:
        self.largest = max(self.largest, roi.size)
        return self.data[roi.to_slices()]


def test_export_is_blockwise(tmp_path):
    raw = (np.arange(32 * 48 * 40) % 255).astype(np.uint8).reshape(32, 48, 40)
    src = _CountingSource(raw)
    labels = _CountingSource(np.ones(raw.shape, dtype=np.uint64))
    export_paintera(src, tmp_path / "x.n5", labels=labels, chunks=(8, 8, 8), levels=2)
    block = 16**3  # 2 chunks per axis
    assert src.largest <= block and labels.largest <= block


def test_export_refuses_bad_requests(tmp_path):
    raw_path, raw = raw_container(tmp_path)
    with pytest.raises(ValueError, match="outside the raw volume"):
        export_paintera(raw_path, tmp_path / "a.n5", roi=Roi((10, 0, 0), (20, 4, 4)))
    with pytest.raises(ValueError, match="match neither"):
        export_paintera(raw_path, tmp_path / "b.n5", labels=np.zeros((3, 3, 3), np.uint64))
    with pytest.raises(ValueError, match="unsigned"):
        export_paintera(raw_path, tmp_path / "c.n5", labels=np.zeros(raw.shape, np.float32))
    with pytest.raises(ValueError, match=r"\.n5 or \.zarr"):
        export_paintera(raw_path, tmp_path / "d.h5")


def test_downsample_mode():
    block = np.array([1, 1, 2, 3, 2, 2, 9, 9], dtype=np.uint64).reshape(2, 2, 2)
    assert downsample_mode(block).tolist() == [[[2]]]
    tie = np.array([5, 5, 6, 6, 7, 7, 8, 8], dtype=np.uint64).reshape(2, 2, 2)
    assert downsample_mode(tie).item() == 5  # first in window order
    odd = np.arange(27, dtype=np.uint64).reshape(3, 3, 3)
    assert downsample_mode(odd).shape == (2, 2, 2)
    per_axis = np.repeat(np.arange(4, dtype=np.uint64)[None, :, None], 2, axis=2)
    assert downsample_mode(per_axis, (1, 2, 2))[0, :, 0].tolist() == [0, 2]


# --- reading what other tools write --------------------------------------------------------


def _n5_group(root: Path, node: str, attrs: dict) -> Path:
    d = root / node
    d.mkdir(parents=True, exist_ok=True)
    (d / "attributes.json").write_text(json.dumps(attrs))
    return d


def _paintera_skeleton(tmp_path: Path, *, top=None, data=None, name="c.n5") -> Path:
    root = tmp_path / name
    _n5_group(root, "", {"n5": "2.0.0"})
    _n5_group(
        root, "labels", top if top is not None else {"painteraData": {"type": "label"}, "maxId": 9}
    )
    _n5_group(
        root,
        "labels/data",
        data
        if data is not None
        else {"multiScale": True, "resolution": [8, 8, 8], "offset": [0, 0, 0]},
    )
    return root


def _serialize_multisets(labels: np.ndarray, *, with_argmax: bool) -> bytes:
    """imglib2-label-multisets serialisation of single-label voxels (x fastest)."""
    flat = labels.ravel()
    uniques = sorted(set(flat.tolist()))
    lists = b""
    offsets = {}
    for u in uniques:
        offsets[u] = len(lists)
        lists += struct.pack("<i", 1) + struct.pack("<q", u) + struct.pack("<i", 1)
    head = struct.pack(">i", flat.size if with_argmax else 0)
    if with_argmax:
        head += np.asarray(flat, dtype=">i8").tobytes()
    head += np.asarray([offsets[v] for v in flat.tolist()], dtype=">i4").tobytes()
    return head + lists


@pytest.mark.parametrize("with_argmax", [True, False], ids=["argmax", "lists-only"])
def test_label_multiset_is_converted(tmp_path, with_argmax):
    lab = _labels((6, 5, 7)).astype(np.uint64)
    root = _paintera_skeleton(tmp_path)
    ds = _n5_group(
        root,
        "labels/data/s0",
        {
            "dimensions": [7, 5, 6],
            "blockSize": [4, 4, 4],
            "dataType": "uint8",
            "compression": {"type": "gzip", "level": 6},
            "isLabelMultiset": True,
        },
    )
    for cz in range(2):
        for cy in range(2):
            for cx in range(2):
                block = lab[cz * 4 : cz * 4 + 4, cy * 4 : cy * 4 + 4, cx * 4 : cx * 4 + 4]
                payload = _serialize_multisets(block, with_argmax=with_argmax)
                gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                body = gz.compress(payload) + gz.flush()
                z, y, x = block.shape
                header = struct.pack(">HHIIII", 1, 3, x, y, z, len(payload))
                f = ds / str(cx) / str(cy) / str(cz)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(header + body)
    (root / "labels" / "attributes.json").write_text(
        json.dumps({"painteraData": {"type": "label"}, "maxId": 35})
    )
    g = open_label_group(root)
    assert g.is_label_multiset and g.dtype == "uint64"
    np.testing.assert_array_equal(g.read(), lab)


def test_sparse_n5_chunks_read_as_background(tmp_path):
    root = _paintera_skeleton(tmp_path)
    attrs = {
        "dimensions": [8, 8, 8],
        "blockSize": [4, 4, 4],
        "dataType": "uint64",
        "compression": {"type": "gzip"},
    }
    ds = _n5_group(root, "labels/data/s0", attrs)
    block = np.full((4, 4, 4), 9, dtype=np.uint64)
    (ds / "1" / "0").mkdir(parents=True)
    (ds / "1" / "0" / "0").write_bytes(encode_chunk(block, {"type": "gzip", "level": 1}))
    got = open_label_group(root).read()
    expected = np.zeros((8, 8, 8), dtype=np.uint64)
    expected[:4, :4, 4:] = 9
    np.testing.assert_array_equal(got, expected)


def test_other_n5_codecs_read_through_tensorstore(tmp_path):
    root = _paintera_skeleton(tmp_path)
    lab = _labels((6, 7, 9))
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(root / "labels/data/s0")},
        "metadata": {
            "dimensions": [9, 7, 6],
            "blockSize": [4, 4, 4],
            "dataType": "uint64",
            "compression": {"type": "bzip2"},
        },
        "create": True,
    }
    store = ts.open(spec).result()
    store.write(lab.transpose()).result()
    (root / "labels" / "attributes.json").write_text(
        json.dumps({"painteraData": {"type": "label"}, "maxId": 35})
    )
    np.testing.assert_array_equal(open_label_group(root).read(), lab)


# --- bad label groups: each refused naming the container and the problem ----------------------


def _with_s0(root: Path, dtype="uint64", dims=(4, 4, 4)) -> Path:
    _n5_group(
        root,
        "labels/data/s0",
        {
            "dimensions": list(dims),
            "blockSize": [4] * len(dims),
            "dataType": dtype,
            "compression": {"type": "raw"},
        },
    )
    return root


@pytest.mark.parametrize(
    "make, problem",
    [
        (
            lambda p: _with_s0(_paintera_skeleton(p, top={"painteraData": {"type": "label"}})),
            "maxId",
        ),
        (lambda p: _paintera_skeleton(p), "no dataset 'data/s0'"),
        (
            lambda p: _with_s0(
                _paintera_skeleton(p, top={"painteraData": {"type": "raw"}, "maxId": 1})
            ),
            "no Paintera label group",
        ),
        (lambda p: _with_s0(_paintera_skeleton(p), dtype="float32"), "wrong dtype"),
        (lambda p: _with_s0(_paintera_skeleton(p), dims=(4, 4)), "wrong shape"),
        (lambda p: _with_s0(_paintera_skeleton(p, data={"multiScale": True})), "resolution"),
        (
            lambda p: _with_s0(
                _paintera_skeleton(p, top={"painteraData": {"type": "label"}, "maxId": -3})
            ),
            "maxId must be",
        ),
    ],
    ids=[
        "missing-maxId",
        "no-s0",
        "not-a-label-group",
        "float-dtype",
        "2-d",
        "no-resolution",
        "negative-maxId",
    ],
)
def test_bad_label_groups_are_named_errors(tmp_path, make, problem):
    root = make(tmp_path)
    with pytest.raises(PainteraError, match=problem) as err:
        open_label_group(root)
    assert str(root) in str(err.value)


def test_container_problems(tmp_path):
    with pytest.raises(PainteraError, match="no such container"):
        open_label_group(tmp_path / "missing.n5")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(PainteraError, match="not an N5 or Zarr"):
        open_label_group(tmp_path / "x.h5")
    (tmp_path / "empty.n5").mkdir()
    with pytest.raises(PainteraError, match="not an N5 container"):
        open_label_group(tmp_path / "empty.n5")
    a = write_paintera_labels(
        tmp_path / "two.n5", _labels(), voxel_size=VOX, group="volumes/labels/a"
    )
    other = paintera._open_backend(a)
    other.set_attrs("volumes/labels/b", {"painteraData": {"type": "label"}, "maxId": 1})
    with pytest.raises(PainteraError, match="2 Paintera label groups"):
        open_label_group(a)
    assert open_label_group(a, "volumes/labels/a").max_id == 35
