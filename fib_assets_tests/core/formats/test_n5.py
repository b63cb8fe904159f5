"""The N5 variant: conformance (read back with tensorstore's n5 driver), the attributes
Paintera expects, the chunk-file layout, and damaged chunk files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import xxhash

from fib_assets.core.formats import FORMAT_MODULES
from fib_assets.core.formats import n5 as n5_format
from fib_assets.core.formats.base import ArraySource, CorruptChunkError, ledger_dir
from fib_assets.core.formats.zarr import downsample_mean
from fib_assets.core.geometry import BlockPlan, Roi
from fib_assets_tests.core.formats.conformance import VOXEL, FormatConformance, em_like


def _ts_read(dataset: Path) -> np.ndarray:
    """A dataset through tensorstore's n5 driver, transposed from (x, y, z) to (z, y, x)."""
    spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(dataset)}}
    return np.asarray(ts.open(spec).result().read().result()).transpose()


class TestN5(FormatConformance):
    module = n5_format

    def independent_read(self, path: Path) -> np.ndarray:
        return _ts_read(path / "volumes" / "raw" / "s0")

    def damage_chunk(self, path: Path) -> None:
        """Flip 4 bytes in the middle of chunk (0, 0, 0)'s gzip stream."""
        f = path / "volumes" / "raw" / "s0" / "0" / "0" / "0"
        raw = bytearray(f.read_bytes())
        mid = 16 + (len(raw) - 16) // 2
        raw[mid : mid + 4] = bytes(b ^ 0xFF for b in raw[mid : mid + 4])
        f.write_bytes(bytes(raw))


def _write(tmp_path: Path, data: np.ndarray, name: str = "vol", **kw):
    src = ArraySource(data, VOXEL)
    kw.setdefault("chunks", (8, 8, 8))
    plan = n5_format.plan_write(tmp_path / f"{name}.n5", src.info, **kw)
    return n5_format.write_volume(plan, src)


def _attrs(path: Path) -> dict:
    return json.loads((path / "attributes.json").read_text())


def test_plan_format_is_the_dispatch_name():
    assert FORMAT_MODULES[n5_format.FORMAT] == n5_format.__name__


def test_attributes_are_what_paintera_expects(tmp_path):
    data = em_like((13, 29, 35), "uint16")
    res = _write(tmp_path, data, levels=3)
    root = Path(res.path)
    assert _attrs(root) == {"n5": "2.0.0"}
    assert _attrs(root / "volumes" / "raw") == {
        "multiScale": True,
        "resolution": [4.0, 4.0, 8.0],  # x, y, z nm
        "offset": [0.0, 0.0, 0.0],
        "axes": ["x", "y", "z"],
        "units": ["nm", "nm", "nm"],
    }
    expected_dims = {"s0": [35, 29, 13], "s1": [18, 15, 7], "s2": [9, 8, 4]}
    block_sizes = {"s0": [8, 8, 8], "s1": [8, 8, 7], "s2": [8, 8, 4]}
    for level, factor in (("s0", 1), ("s1", 2), ("s2", 4)):
        attrs = _attrs(root / "volumes" / "raw" / level)
        assert attrs == {
            "dimensions": expected_dims[level],
            "blockSize": block_sizes[level],  # x, y, z: chunks clipped to small levels
            "dataType": "uint16",
            "compression": {"type": "gzip", "level": 1, "useZlib": False},
            "downsamplingFactors": [factor, factor, factor],
            "pixelResolution": {
                "dimensions": [4.0 * factor, 4.0 * factor, 8.0 * factor],
                "unit": "nm",
            },  # fmt: skip
        }, level
    assert not (root / "volumes" / "raw" / "s3").exists()


def test_tensorstore_reads_s0_and_s1(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=1)
    res = _write(tmp_path, data, levels=2, block_shape=(8, 16, 16))
    raw = Path(res.path) / "volumes" / "raw"
    np.testing.assert_array_equal(_ts_read(raw / "s0"), data)
    np.testing.assert_array_equal(_ts_read(raw / "s1"), downsample_mean(data))
    assert {k.split("/")[0] for k in res.block_checksums if "/" in k} == {"s1"}


def test_chunk_files_have_the_n5_header_and_truncated_edges(tmp_path):
    data = em_like((13, 29, 35), "uint16", seed=2)
    res = _write(tmp_path, data, compression="raw")
    s0 = Path(res.path) / "volumes" / "raw" / "s0"
    edge = (s0 / "4" / "3" / "1").read_bytes()  # x 32..35, y 24..29, z 8..13
    assert struct.unpack(">HHIII", edge[:16]) == (0, 3, 3, 5, 5)
    voxels = np.frombuffer(edge[16:], ">u2").reshape(5, 5, 3)
    np.testing.assert_array_equal(voxels, data[8:13, 24:29, 32:35])
    np.testing.assert_array_equal(_ts_read(s0), data)


def test_our_reader_reads_what_tensorstore_writes(tmp_path):
    """Chunks written by tensorstore (edge chunks padded to the full block) decode here."""
    data = em_like((13, 29, 35), "uint16", seed=3)
    root = tmp_path / "ts.n5"
    res = _write(tmp_path, data, name="ours")
    attrs = _attrs(Path(res.path) / "volumes" / "raw" / "s0")
    group = _attrs(Path(res.path) / "volumes" / "raw")
    for rel, content in (
        ("attributes.json", {"n5": "2.0.0"}),
        ("volumes/raw/attributes.json", group),
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(root / "volumes" / "raw" / "s0")},
        "metadata": {k: attrs[k] for k in ("dimensions", "blockSize", "dataType", "compression")},
        "create": True,
    }
    ts.open(spec).result().write(data.transpose()).result()
    vol = n5_format.open_volume(root)
    try:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), data.shape)), data)
        np.testing.assert_array_equal(vol.read(Roi((9, 20, 30), (4, 9, 5))), data[9:, 20:, 30:])
    finally:
        vol.close()


@pytest.mark.parametrize("damage", ["missing", "header_dims", "truncated"])
def test_damaged_chunk_files_are_corrupt_chunks(tmp_path, damage):
    data = em_like((16, 16, 16), "uint8", seed=4)
    res = _write(tmp_path, data)
    f = Path(res.path) / "volumes" / "raw" / "s0" / "1" / "0" / "1"  # x 1, y 0, z 1
    raw = f.read_bytes()
    if damage == "missing":
        f.unlink()
    elif damage == "header_dims":
        f.write_bytes(struct.pack(">HHIII", 0, 3, 8, 8, 4) + raw[16:])
    else:
        f.write_bytes(raw[: len(raw) // 2])
    vol = n5_format.open_volume(res.path)
    try:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (8, 16, 8))), data[:8, :, :8])
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((0, 0, 0), (16, 16, 16)))
    finally:
        vol.close()
    assert err.value.path == str(f)
    assert err.value.chunk_index == (1, 0, 1)  # (z, y, x)


def test_block_checksums_and_clean_publish(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=5)
    res = _write(tmp_path, data, block_shape=(8, 16, 16))
    expected = {
        b.block_id: "xxh3_128:"
        + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data[b.write_roi.to_slices()]))
        for b in BlockPlan(data.shape, (8, 16, 16)).blocks()
    }
    assert res.block_checksums == expected
    assert "zlib" in res.library_versions
    assert not ledger_dir(res.plan).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.n5"]
    chunk_files = [p for p in (Path(res.path) / "volumes/raw/s0").rglob("*") if p.is_file()]
    assert len(chunk_files) == 1 + 2 * 4 * 5  # attributes.json + every chunk


def test_plan_validation(tmp_path):
    info = ArraySource(np.zeros((16, 16, 16), np.uint8), VOXEL).info
    target = tmp_path / "v.n5"
    with pytest.raises(ValueError, match="whole number of chunks"):
        n5_format.plan_write(target, info, chunks=(8, 8, 8), block_shape=(12, 8, 8))
    with pytest.raises(ValueError, match="compression"):
        n5_format.plan_write(target, info, compression="zstd")
    with pytest.raises(ValueError, match=".n5"):
        n5_format.plan_write(tmp_path / "v.zarr", info)


@pytest.mark.parametrize("compression", ["gzip", "raw"])
@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncate", "payload holds|bytes on disk"),
        ("header", "header size"),
        ("missing", "missing"),
    ],
)
def test_structural_chunk_check_without_decoding(tmp_path, compression, damage, problem):
    data = em_like((13, 29, 35), "uint16", seed=12)
    res = _write(tmp_path, data, compression=compression)
    assert res.plan.options["verify"] == "structure"
    s0 = Path(res.path) / "volumes" / "raw" / "s0"
    ds = n5_format.N5Dataset(s0, _attrs(s0))
    for chunk in [(0, 0, 0), (1, 3, 4)]:  # an inner and the (truncated) far-corner chunk
        ds.check_chunk_file(chunk)
    f = ds.chunk_file((1, 0, 2))
    raw = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) - 7])
    elif damage == "header":
        f.write_bytes(raw[:4] + struct.pack(">I", 3) + raw[8:])  # size x 3 instead of 8
    else:
        f.unlink()
    with pytest.raises(CorruptChunkError, match=problem) as err:
        ds.check_chunk_file((1, 0, 2))
    assert err.value.path == str(f) and err.value.chunk_index == (1, 0, 2)
    if damage != "header":  # the size the writer wrote is checked first
        with pytest.raises(CorruptChunkError, match="bytes on disk|missing"):
            ds.check_chunk_file((1, 0, 2), size=len(raw))


def test_verify_data_decodes_every_chunk_and_write_keeps_only_chunks_in_flight(
    tmp_path, monkeypatch
):
    data = em_like((16, 16, 16), "uint8", seed=13)
    decoded = []
    real = n5_format.N5Dataset.read_chunk

    def counting(self, chunk):
        decoded.append(chunk)
        return real(self, chunk)

    monkeypatch.setattr(n5_format.N5Dataset, "read_chunk", counting)
    _write(tmp_path, data, name="structure")
    assert decoded == []  # the default check decodes nothing
    res = _write(tmp_path, data, name="data", verify="data")
    assert sorted(decoded) == sorted(np.ndindex(2, 2, 2))
    np.testing.assert_array_equal(_ts_read(Path(res.path) / "volumes" / "raw" / "s0"), data)
    with pytest.raises(ValueError, match="verify"):
        _write(tmp_path, data, name="bad", verify="yes")
