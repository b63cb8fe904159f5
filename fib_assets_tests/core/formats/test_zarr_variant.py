"""The OME-Zarr format variant: conformance (read back with zarr-python AND tensorstore) plus
the metadata and integrity guarantees specific to sharded Zarr v3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import xxhash
import zarr
from zarr.codecs import ShardingCodec, ZstdCodec

from fib_assets.core.formats import FORMAT_MODULES
from fib_assets.core.formats import zarr as zarr_format
from fib_assets.core.formats.base import ArraySource, CorruptChunkError, ledger_dir
from fib_assets.core.geometry import BlockPlan, Roi
from fib_assets_tests.core.formats.conformance import VOXEL, FormatConformance, em_like


def _shard_index(shard: Path, n_chunks: int) -> np.ndarray:
    """(offset, nbytes) per inner chunk from the index at the end of a shard (crc32c after)."""
    raw = shard.read_bytes()
    return np.frombuffer(raw[-(16 * n_chunks + 4) : -4], "<u8").reshape(n_chunks, 2)


class TestZarrVariant(FormatConformance):
    module = zarr_format

    def independent_read(self, path: Path) -> np.ndarray:
        by_zarr = zarr.open_group(str(path), mode="r")["s0"][...]
        store = ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "s0")}}
        )
        by_ts = store.result().read().result()
        np.testing.assert_array_equal(by_zarr, by_ts)
        return np.asarray(by_zarr)

    def damage_chunk(self, path: Path) -> None:
        """Flip 4 bytes in the middle of the first inner chunk of shard (0, 0, 0)."""
        shard = path / "s0" / "c" / "0" / "0" / "0"
        arr = zarr.open_array(str(path / "s0"), mode="r")
        n = int(np.prod([s // c for s, c in zip(arr.shards, arr.chunks, strict=True)]))
        offset, nbytes = (int(v) for v in _shard_index(shard, n)[0])
        raw = bytearray(shard.read_bytes())
        mid = offset + nbytes // 2
        raw[mid : mid + 4] = bytes(b ^ 0xFF for b in raw[mid : mid + 4])
        shard.write_bytes(bytes(raw))


def _write(tmp_path: Path, data: np.ndarray, name: str = "vol", **kw):
    src = ArraySource(data, VOXEL)
    kw.setdefault("chunks", (8, 8, 8))
    plan = zarr_format.plan_write(tmp_path / f"{name}.ome.zarr", src.info, **kw)
    return zarr_format.write_volume(plan, src)


def test_plan_format_is_the_dispatch_name():
    assert FORMAT_MODULES[zarr_format.FORMAT] == zarr_format.__name__


def test_metadata_is_ome_ngff_05_with_voxel_size_as_scale_and_sharding(tmp_path):
    data = em_like((13, 29, 35), "uint16")
    res = _write(tmp_path, data)
    group = zarr.open_group(res.path, mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (image,) = ome["multiscales"]
    assert [(a["name"], a["type"], a["unit"]) for a in image["axes"]] == [
        ("z", "space", "nanometer"),
        ("y", "space", "nanometer"),
        ("x", "space", "nanometer"),
    ]
    (s0,) = image["datasets"]
    assert s0["path"] == "s0"
    assert s0["coordinateTransformations"][0] == {"type": "scale", "scale": [8.0, 4.0, 4.0]}
    arr = group["s0"]
    assert isinstance(arr, zarr.Array)
    assert arr.metadata.zarr_format == 3
    assert arr.chunks == (8, 8, 8)
    # default shards: 4 chunks per axis, clipped to whole chunks of the shape
    assert arr.shards == (16, 32, 32)
    (sharding,) = arr.metadata.codecs
    assert isinstance(sharding, ShardingCodec)
    zstd = [c for c in sharding.codecs if isinstance(c, ZstdCodec)]
    assert len(zstd) == 1 and zstd[0].level == 3
    assert arr.metadata.dimension_names == ("z", "y", "x")
    assert group.attrs["fib_assets"]["written_shards"] == {"s0": 2}
    # tensorstore agrees on the layout it was asked to write
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": res.path + "/s0"}})
    layout = store.result().chunk_layout
    assert tuple(layout.read_chunk.shape) == (8, 8, 8)
    assert tuple(layout.write_chunk.shape) == (16, 32, 32)


def test_block_checksums_are_xxh3_128_of_c_order_blocks(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=5)
    res = _write(tmp_path, data)
    plan = BlockPlan(data.shape, res.plan.block_shape)
    expected = {
        b.block_id: "xxh3_128:"
        + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data[b.write_roi.to_slices()]))
        for b in plan.blocks()
    }
    assert res.block_checksums == expected
    assert res.library_versions["tensorstore"] and res.library_versions["zarr"]
    # the ledger is cleaned up once the variant is published; nothing partial is left beside it
    assert not ledger_dir(res.plan).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.ome.zarr"]


def test_each_block_is_whole_shards_so_no_shard_is_written_twice(tmp_path):
    src = ArraySource(em_like((16, 16, 16), "uint8"), VOXEL)
    target = tmp_path / "v.ome.zarr"
    # block_shape alone: the default shards (16) do not tile 8-voxel blocks, so shards = blocks
    plan = zarr_format.plan_write(target, src.info, chunks=(8, 8, 8), block_shape=(8, 8, 8))
    assert plan.options["shards"] == [8, 8, 8]
    plan = zarr_format.plan_write(target, src.info, chunks=(4, 4, 4), block_shape=(16, 8, 8))
    assert plan.options["shards"] == [16, 8, 8]
    plan = zarr_format.plan_write(
        target, src.info, chunks=(4, 4, 4), shards=(8, 8, 8), block_shape=(16, 8, 8)
    )
    assert plan.block_shape == (16, 8, 8) and plan.options["shards"] == [8, 8, 8]
    with pytest.raises(ValueError, match="whole number of shards"):
        zarr_format.plan_write(target, src.info, chunks=(4, 4, 4), shards=(8, 8, 8),
                               block_shape=(12, 8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="whole numbers of chunks"):
        zarr_format.plan_write(target, src.info, chunks=(4, 4, 4), shards=(6, 8, 8))
    with pytest.raises(ValueError, match=".ome.zarr"):
        zarr_format.plan_write(tmp_path / "v.zarr", src.info)


def test_missing_shard_is_an_error_where_zarr_would_return_zeros(tmp_path):
    data = em_like((16, 16, 40), "uint8", seed=6)
    res = _write(tmp_path, data)
    shard = Path(res.path) / "s0" / "c" / "0" / "0" / "1"
    shard.unlink()
    # the reason for written_shards: plain Zarr semantics silently fill a missing shard
    assert not zarr.open_group(res.path, mode="r")["s0"][:, :, 32:].any()
    vol = zarr_format.open_volume(res.path)
    try:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (16, 16, 32))), data[:, :, :32])
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((3, 0, 30), (2, 16, 4)))
    finally:
        vol.close()
    assert err.value.path == str(shard)
    assert err.value.chunk_index == (0, 0, 4)


def test_missing_chunk_inside_a_shard_is_an_error(tmp_path):
    import struct

    import google_crc32c  # zarr-python's own dependency for the crc32c codec

    data = em_like((16, 16, 16), "uint8", seed=7)
    res = _write(tmp_path, data)
    shard = Path(res.path) / "s0" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    index = _shard_index(shard, 8).copy()
    index[5] = 2**64 - 1  # the spec's "chunk absent" marker, with a valid index checksum
    body = index.tobytes()
    raw[-(len(body) + 4) :] = body + struct.pack("<I", google_crc32c.value(body))
    shard.write_bytes(bytes(raw))
    vol = zarr_format.open_volume(res.path)
    try:
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((0, 0, 0), (16, 16, 16)))
    finally:
        vol.close()
    assert err.value.chunk_index == (1, 0, 1)  # entry 5 of a 2x2x2 shard, C order


def test_all_zero_blocks_are_stored_and_read_strictly(tmp_path):
    data = np.zeros((16, 16, 16), np.uint16)
    data[8:, 8:, 8:] = 7
    res = _write(tmp_path, data, block_shape=(8, 8, 8))
    assert sum(p.is_file() for p in (Path(res.path) / "s0" / "c").rglob("*")) == 8
    vol = zarr_format.open_volume(res.path)
    try:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (16, 16, 16))), data)
    finally:
        vol.close()


def test_levels_are_mean_downsampled_and_described(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=8)
    res = _write(tmp_path, data, levels=3, shards=(8, 16, 16))
    group = zarr.open_group(res.path, mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["s0", "s1", "s2"]
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [32.0, 16.0, 16.0]
    s1 = zarr_format.downsample_mean(data)
    s2 = zarr_format.downsample_mean(s1)
    for path, expected in (("s1", s1), ("s2", s2)):
        np.testing.assert_array_equal(group[path][...], expected, err_msg=path)
        store = ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{res.path}/{path}"}}
        )
        np.testing.assert_array_equal(store.result().read().result(), expected)
    assert group.attrs["fib_assets"]["written_shards"] == {"s0": 12, "s1": 2, "s2": 1}
    assert {k.split("/")[0] for k in res.block_checksums if "/" in k} == {"s1", "s2"}


def test_open_reports_layout_and_voxel_size(tmp_path):
    res = _write(tmp_path, em_like((9, 20, 30), "uint16"), chunks=(4, 8, 8))
    vol = zarr_format.open_volume(res.path)
    try:
        assert vol.info.chunks == (4, 8, 8)
        assert vol.info.voxel_size == VOXEL
        assert vol.path == res.path
    finally:
        vol.close()
    (Path(res.path) / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(ValueError, match="multiscales"):
        zarr_format.open_volume(res.path)


# --- structural verification of written shards (verify="structure", the default) ----------


def _level_s0(res) -> object:
    return zarr_format._levels(res.plan)[0]


def test_written_shards_pass_the_structural_check_edge_shards_included(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=8)
    res = _write(tmp_path, data, shards=(8, 16, 16))
    level = _level_s0(res)
    assert res.plan.options["verify"] == "structure"
    for shard in ((0, 0, 0), (1, 1, 2)):  # an inner and the far-corner (partial) shard
        f = Path(res.path) / "s0" / "c" / "/".join(map(str, shard))
        zarr_format.check_shard(str(f), shard, level)


@pytest.mark.parametrize(
    ("damage", "problem", "chunk"),
    [
        ("unlink", "missing", (0, 0, 0)),
        ("flip_index", "crc32c", (0, 0, 0)),
        ("drop_entry", "missing in the shard index", (1, 0, 1)),
        ("past_end", "outside the shard's data", (0, 1, 0)),
    ],
)
def test_structural_check_names_shard_and_chunk(tmp_path, damage, problem, chunk):
    import struct

    import google_crc32c

    res = _write(tmp_path, em_like((16, 16, 16), "uint8", seed=9))
    shard = Path(res.path) / "s0" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    index = _shard_index(shard, 8).copy()
    if damage == "unlink":
        shard.unlink()
    elif damage == "flip_index":
        raw[-10] ^= 0xFF
        shard.write_bytes(bytes(raw))
    else:
        if damage == "drop_entry":
            index[5] = 2**64 - 1
        else:
            index[2, 0] = len(raw)  # entry 2 = chunk (0, 1, 0) starts at the end of the file
        body = index.tobytes()
        raw[-(len(body) + 4) :] = body + struct.pack("<I", google_crc32c.value(body))
        shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match=problem) as err:
        zarr_format.check_shard(str(shard), (0, 0, 0), _level_s0(res))
    assert err.value.path == str(shard)
    assert err.value.chunk_index == chunk


def test_block_is_marked_done_only_after_its_shards_passed_the_check(tmp_path, monkeypatch):
    data = em_like((16, 16, 16), "uint8", seed=10)
    src = ArraySource(data, VOXEL)
    plan = zarr_format.plan_write(
        tmp_path / "vol.ome.zarr", src.info, chunks=(8, 8, 8), block_shape=(8, 8, 8)
    )
    real = zarr_format.check_shard

    def failing(location, shard, level):
        if tuple(shard) == (0, 1, 0):
            raise CorruptChunkError(location, (0, 1, 0), "damaged on purpose")
        real(location, shard, level)

    monkeypatch.setattr(zarr_format, "check_shard", failing)
    with pytest.raises(CorruptChunkError, match="damaged on purpose"):
        zarr_format.write_volume(plan, src)
    done = {p.name for p in ledger_dir(plan).rglob("*.done.json")}
    assert "s0-0_1_0.done.json" not in done
    assert "s0-0_0_0.done.json" in done  # blocks before it were finished and kept
    monkeypatch.setattr(zarr_format, "check_shard", real)
    res = zarr_format.write_volume(plan, src)
    np.testing.assert_array_equal(zarr.open_group(res.path, mode="r")["s0"][...], data)


def test_verify_data_reads_every_block_back(tmp_path, monkeypatch):
    data = em_like((16, 16, 16), "uint8", seed=11)
    reads = []
    real = zarr_format.checksum_matches

    def counting(arr, recorded):
        reads.append(arr.shape)
        return real(arr, recorded)

    monkeypatch.setattr(zarr_format, "checksum_matches", counting)
    res = _write(tmp_path, data, block_shape=(8, 16, 16), verify="data")
    assert res.plan.options["verify"] == "data"
    assert reads == [(8, 16, 16)] * 2  # each block read back and compared with its checksum
    with pytest.raises(ValueError, match="verify"):
        _write(tmp_path, data, name="bad", verify="decode")


def test_memory_budget_bounds_the_blocks_in_flight(tmp_path):
    info = ArraySource(em_like((64, 64, 64), "uint8"), VOXEL).info
    block = 16 * 64 * 64
    kw = {"chunks": (16, 64, 64), "block_shape": (16, 64, 64)}
    tight = zarr_format.plan_write(tmp_path / "a.ome.zarr", info, memory_budget=4 * block, **kw)
    loose = zarr_format.plan_write(tmp_path / "b.ome.zarr", info, **kw)
    assert tight.block_shape == (16, 64, 64)
    assert zarr_format._depth(tight) == 1  # (4 - 2 fixed) // 1.5 blocks per flight
    assert zarr_format._depth(loose) == zarr_format.PIPELINE_DEPTH
    assert zarr_format.peak_blocks(tight) * block <= 4 * block
    with pytest.raises(ValueError, match="memory_budget"):
        zarr_format.plan_write(tmp_path / "c.ome.zarr", info, memory_budget=0)
