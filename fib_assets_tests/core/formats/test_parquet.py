"""The Parquet chunk dataset: conformance (decoded independently from pyarrow's table with
numcodecs), schema metadata, page checksums and row-group-granular random reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numcodecs
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import xxhash

from fib_assets.core.formats import FORMAT_MODULES
from fib_assets.core.formats import parquet as parquet_format
from fib_assets.core.formats.base import ArraySource, CorruptChunkError, ledger_dir
from fib_assets.core.geometry import BlockPlan, Roi
from fib_assets_tests.core.formats.conformance import VOXEL, FormatConformance, em_like


def _decode_dataset(path: Path) -> np.ndarray:
    """The volume from pyarrow's view of the dataset, decoding every row with numcodecs."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"fib_assets"])
    shape, chunks = meta["shape"], meta["chunks"]
    dtype = np.dtype(meta["dtype"]).newbyteorder("<" if meta["byte_order"] == "little" else ">")
    out = np.zeros(shape, dtype=dtype)
    covered = np.zeros(shape, dtype=np.int32)
    zstd = numcodecs.Zstd()
    for row in table.to_pylist():
        assert row["codec"].startswith("zstd-")
        raw = zstd.decode(row["data"])
        assert hashlib.sha256(raw).hexdigest() == row["sha256"]
        chunk = np.frombuffer(raw, dtype=dtype).reshape(row["shape"])
        sl = tuple(
            slice(i * c, i * c + s)
            for i, c, s in zip((row["cz"], row["cy"], row["cx"]), chunks, row["shape"], strict=True)
        )
        out[sl] = chunk
        covered[sl] += 1
    assert (covered == 1).all(), "every voxel is in exactly one row"
    return out.astype(meta["dtype"])


class TestParquet(FormatConformance):
    module = parquet_format

    def independent_read(self, path: Path) -> np.ndarray:
        return _decode_dataset(path)

    def damage_chunk(self, path: Path) -> None:
        """Flip 4 bytes in the middle of the first chunk's stored (compressed) bytes."""
        part = path / "part-0_0_0.parquet"
        column = pq.ParquetFile(part).metadata.row_group(0).column(4)
        assert column.path_in_schema == "data"
        raw = bytearray(part.read_bytes())
        mid = column.data_page_offset + column.total_compressed_size // 2
        raw[mid : mid + 4] = bytes(b ^ 0xFF for b in raw[mid : mid + 4])
        part.write_bytes(bytes(raw))


def _write(tmp_path: Path, data: np.ndarray, name: str = "vol", **kw):
    src = ArraySource(data, VOXEL)
    kw.setdefault("chunks", (8, 8, 8))
    plan = parquet_format.plan_write(tmp_path / f"{name}.parquet", src.info, **kw)
    return parquet_format.write_volume(plan, src)


def test_plan_format_is_the_dispatch_name():
    assert FORMAT_MODULES[parquet_format.FORMAT] == parquet_format.__name__


def test_schema_columns_metadata_and_small_row_groups(tmp_path):
    data = em_like((13, 29, 35), "uint16")
    res = _write(tmp_path, data, block_shape=(8, 16, 16))
    parts = sorted(p.name for p in Path(res.path).iterdir())
    assert parts[0] == "_common_metadata"
    assert len(parts) - 1 == len(BlockPlan(data.shape, (8, 16, 16))) == 2 * 2 * 3
    pf = pq.ParquetFile(Path(res.path) / "part-1_1_2.parquet")
    schema = pf.schema_arrow
    assert [(f.name, str(f.type)) for f in schema] == [
        ("cz", "int32"),
        ("cy", "int32"),
        ("cx", "int32"),
        ("codec", "string"),
        ("data", "binary"),
        ("sha256", "string"),
        ("shape", "fixed_size_list<element: int32>[3]"),
    ]
    meta = json.loads(schema.metadata[b"fib_assets"])
    assert meta["shape"] == [13, 29, 35] and meta["dtype"] == "uint16"
    assert meta["voxel_size_nm"] == {"z": 8.0, "y": 4.0, "x": 4.0}
    assert meta["chunks"] == [8, 8, 8] and meta["codec"] == "zstd-3"
    assert meta["block_shape"] == [8, 16, 16] and meta["axes"] == ["z", "y", "x"]
    # the edge part holds the clipped chunks of block (1, 1, 2): z 8..13, y 16..29, x 32..35
    rows = pf.read().to_pylist()
    assert [(r["cz"], r["cy"], r["cx"]) for r in rows] == [(1, 2, 4), (1, 3, 4)]
    assert [r["shape"] for r in rows] == [[5, 8, 3], [5, 5, 3]]
    part_meta = json.loads(schema.metadata[b"fib_assets_part"])
    assert part_meta["row_groups"] == [[[1, 2, 4]], [[1, 3, 4]]]
    md = pf.metadata
    assert md.num_row_groups == 2 and md.row_group(0).num_rows == 1
    compression = {
        md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i).compression
        for i in range(md.num_columns)
    }
    assert compression["data"] == "UNCOMPRESSED"  # chunk bytes are zstd already
    assert compression["cz"] == "ZSTD"
    # the directory is one dataset for pyarrow (the "_" metadata file is not a fragment)
    dataset = ds.dataset(res.path, format="parquet")
    assert dataset.count_rows() == 2 * 4 * 5
    assert pq.read_schema(Path(res.path) / "_common_metadata").metadata[b"fib_assets"]


def test_pages_carry_checksums_that_pyarrow_verifies(tmp_path):
    res = _write(tmp_path, em_like((16, 16, 16), "uint8", seed=3))
    TestParquet().damage_chunk(Path(res.path))
    part = Path(res.path) / "part-0_0_0.parquet"
    with pytest.raises(OSError, match="(?i)checksum|crc"):
        pq.ParquetFile(part, page_checksum_verification=True).read_row_group(0)
    # without page CRCs the damage would only be caught by the per-chunk sha256 / zstd
    row = pq.ParquetFile(part).read_row_group(0).to_pylist()[0]
    try:
        intact = hashlib.sha256(numcodecs.Zstd().decode(row["data"])).hexdigest() == row["sha256"]
    except RuntimeError:  # numcodecs' error for a bad zstd frame
        intact = False
    assert not intact


def test_random_roi_reads_touch_only_the_needed_row_groups(tmp_path, monkeypatch):
    data = em_like((32, 32, 32), "uint8", seed=4)
    calls: list[int] = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *args, **kwargs):
        calls.append(i)
        return original(self, i, *args, **kwargs)

    # 2x2x2 chunks around voxel (8, 8, 8) are C-order rows 0, 1, 4, 5, 16, 17, 20, 21
    for k, expected in ((1, [0, 1, 4, 5, 16, 17, 20, 21]), (4, [0, 1, 4, 5])):
        res = _write(tmp_path, data, name=f"k{k}", chunks_per_row_group=k)
        assert pq.ParquetFile(Path(res.path) / "part-0_0_0.parquet").num_row_groups == 64 // k
        vol = parquet_format.open_volume(res.path)
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
        try:
            calls.clear()
            np.testing.assert_array_equal(
                vol.read(Roi((9, 9, 9), (4, 4, 4))), data[9:13, 9:13, 9:13]
            )
            assert calls == [(1 * 16 + 1 * 4 + 1) // k]  # one chunk, one row group
            calls.clear()
            np.testing.assert_array_equal(
                vol.read(Roi((6, 6, 6), (4, 4, 4))), data[6:10, 6:10, 6:10]
            )
            assert sorted(calls) == expected
        finally:
            monkeypatch.undo()
            vol.close()


def test_a_roi_opens_only_its_part_files(tmp_path, monkeypatch):
    data = em_like((32, 32, 32), "uint8", seed=5)
    res = _write(tmp_path, data, block_shape=(16, 16, 16))
    opened: list[str] = []
    original = pq.ParquetFile.__init__

    def recording(self, source, *args, **kwargs):
        if isinstance(source, str | Path):  # pyarrow's own metadata reads pass open files
            opened.append(Path(source).name)
        original(self, source, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", recording)
    with parquet_format.open_volume(res.path) as vol:
        np.testing.assert_array_equal(
            vol.read(Roi((17, 2, 20), (10, 10, 10))), data[17:27, 2:12, 20:30]
        )
        vol.read(Roi((20, 0, 16), (1, 1, 1)))  # same part again: already open
    assert opened == ["part-1_0_1.parquet"]


def test_missing_part_and_bad_sha256_are_corrupt_chunks(tmp_path):
    data = em_like((16, 16, 32), "uint8", seed=6)
    res = _write(tmp_path, data, block_shape=(16, 16, 16))
    root = Path(res.path)
    (root / "part-0_0_1.parquet").unlink()
    # rewrite part 0 with one wrong checksum (valid Parquet, valid zstd: only sha256 says no)
    part = root / "part-0_0_0.parquet"
    table = pq.read_table(part)
    sha = table.column("sha256").to_pylist()
    sha[3] = "0" * 64
    table = table.set_column(5, "sha256", pa.array(sha, pa.string()))
    pq.write_table(table, part, row_group_size=1)
    vol = parquet_format.open_volume(res.path)
    try:
        with pytest.raises(CorruptChunkError, match="missing") as err:
            vol.read(Roi((0, 0, 20), (4, 4, 4)))
        assert err.value.path == str(root / "part-0_0_1.parquet")
        assert err.value.chunk_index == (0, 0, 2)
        with pytest.raises(CorruptChunkError, match="sha256") as err:
            vol.read(Roi((0, 0, 0), (16, 16, 16)))
        assert err.value.chunk_index == (0, 1, 1)  # row 3 in C order of a 2x2x2 part
        np.testing.assert_array_equal(vol.read(Roi((9, 0, 0), (7, 8, 8))), data[9:, :8, :8])
    finally:
        vol.close()


def test_block_checksums_and_clean_publish(tmp_path):
    data = em_like((13, 29, 35), "uint8", seed=7)
    res = _write(tmp_path, data, block_shape=(8, 16, 16))
    expected = {
        b.block_id: "xxh3_128:"
        + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data[b.write_roi.to_slices()]))
        for b in BlockPlan(data.shape, (8, 16, 16)).blocks()
    }
    assert res.block_checksums == expected
    assert set(res.library_versions) >= {"pyarrow", "numcodecs"}
    assert not ledger_dir(res.plan).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.parquet"]


def test_plan_validation(tmp_path):
    info = ArraySource(np.zeros((16, 16, 16), np.uint8), VOXEL).info
    with pytest.raises(ValueError, match="whole number of chunks"):
        parquet_format.plan_write(
            tmp_path / "v.parquet", info, chunks=(8, 8, 8), block_shape=(12, 8, 8)
        )
    with pytest.raises(ValueError, match="chunks_per_row_group"):
        parquet_format.plan_write(tmp_path / "v.parquet", info, chunks_per_row_group=0)
    with pytest.raises(ValueError, match=".parquet"):
        parquet_format.plan_write(tmp_path / "v.pq", info)


def _rewrite_part(part: Path, table: pa.Table, row_group_size: int) -> None:
    pq.write_table(table, part, row_group_size=row_group_size, write_statistics=True)


@pytest.mark.parametrize("damage", ["drop_row", "wrong_index", "truncate"])
def test_structural_part_check_without_decoding(tmp_path, damage):
    data = em_like((16, 16, 16), "uint8", seed=14)
    res = _write(tmp_path, data, block_shape=(16, 16, 16), chunks_per_row_group=2)
    assert res.plan.options["verify"] == "structure"
    part = Path(res.path) / "part-0_0_0.parquet"
    indices = list(np.ndindex(2, 2, 2))
    parquet_format.check_part(part, indices, 2)  # as written: passes
    table = pq.read_table(part)
    if damage == "drop_row":  # one chunk fewer than the index promises
        _rewrite_part(part, table.slice(0, 7), 2)
        problem = "row groups|rows"
    elif damage == "wrong_index":  # rows in another order than the part's index says
        order = [2, 1, 0, 3, 4, 5, 6, 7]  # chunk (0, 1, 0) moved into row group 0
        _rewrite_part(part, table.take(order), 2)
        problem = "statistics"
    else:
        part.write_bytes(part.read_bytes()[:-100])
        problem = "unreadable part file"
    with pytest.raises(CorruptChunkError, match=problem) as err:
        parquet_format.check_part(part, indices, 2)
    assert err.value.path == str(part)


def test_verify_data_decodes_each_chunk_against_the_source(tmp_path, monkeypatch):
    data = em_like((16, 16, 16), "uint16", seed=15)
    decoded = []
    real = parquet_format._Part._decode

    def counting(self, chunk, *args):
        decoded.append(chunk)
        return real(self, chunk, *args)

    monkeypatch.setattr(parquet_format._Part, "_decode", counting)
    _write(tmp_path, data, name="structure")
    assert decoded == []  # the default check decodes nothing
    res = _write(tmp_path, data, name="data", verify="data")
    assert sorted(decoded) == sorted(np.ndindex(2, 2, 2))
    np.testing.assert_array_equal(_decode_dataset(Path(res.path)), data)
    with pytest.raises(ValueError, match="verify"):
        _write(tmp_path, data, name="bad", verify="all")


def test_writes_use_the_system_memory_pool(tmp_path):
    _write(tmp_path, em_like((8, 8, 8), "uint8"))
    assert pa.default_memory_pool().backend_name == "system"
