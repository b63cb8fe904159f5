"""HDF5 format: the shared conformance suite plus HDF5-specific layout checks.

The independent reader is h5py (+ hdf5plugin for zstd), never our reader.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  registers the zstd filter for the independent reader
import numpy as np
import pytest
import xxhash

from fib_assets.core.formats import format_of
from fib_assets.core.formats import hdf5 as h5fmt
from fib_assets.core.formats import open_volume as open_any
from fib_assets.core.formats.base import (
    ArraySource,
    CorruptChunkError,
    ledger_dir,
    staging_path,
)
from fib_assets.core.geometry import Roi
from fib_assets_tests.core.formats.conformance import VOXEL, FormatConformance, em_like


def _damage(path: Path, chunk: int = 0) -> None:
    """Overwrite the stored bytes of one chunk with garbage (offset from HDF5's chunk index)."""
    with h5py.File(path, "r") as f:
        info = f["volume"].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        # not all 0xff: fletcher32 cannot tell all-0xff data + checksum from valid ones
        fh.write((b"\xde\xad\xbe\xef" * info.size)[: info.size])


class TestHdf5(FormatConformance):
    module = h5fmt

    def independent_read(self, path: Path) -> np.ndarray:
        with h5py.File(path, "r") as f:
            return np.asarray(f["volume"][...])

    def damage_chunk(self, path: Path) -> None:
        _damage(path, chunk=3)


def _write(tmp_path: Path, data: np.ndarray, name: str = "vol", **kw):
    src = ArraySource(data, VOXEL)
    plan = h5fmt.plan_write(tmp_path / f"{name}.h5", src.info, **kw)
    return h5fmt.write_volume(plan, src)


def test_attributes_are_readable_by_h5py(tmp_path):
    data = em_like((6, 10, 12), "uint16")
    res = _write(tmp_path, data, chunks=(4, 8, 8))
    with h5py.File(res.path, "r") as f:
        dset = f["volume"]
        np.testing.assert_array_equal(dset.attrs["voxel_size_nm"], [8.0, 4.0, 4.0])
        assert dset.attrs["axes"] == "zyx"
        np.testing.assert_allclose(dset.attrs["element_size_um"], [0.008, 0.004, 0.004])
        meta = json.loads(dset.attrs["fib_assets"])
        assert meta["voxel_size_nm"] == {"z": 8.0, "y": 4.0, "x": 4.0}
        assert meta["shape"] == [6, 10, 12] and meta["dtype"] == "uint16"
        assert meta["plan"] == res.plan.to_dict()


def _filter_ids(dset: h5py.Dataset) -> list[int]:
    plist = dset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


@pytest.mark.parametrize(
    ("compression", "filter_id", "level"),
    [("zstd", 32015, 3), ("gzip", h5py.h5z.FILTER_DEFLATE, 1), (None, None, None)],
    ids=["zstd", "gzip", "none"],
)
def test_compressions_round_trip(tmp_path, compression, filter_id, level):
    data = em_like((16, 64, 64), "uint8", seed=5)
    res = _write(tmp_path, data, chunks=(8, 32, 32), compression=compression)
    assert res.plan.options["compression_level"] == level
    with h5py.File(res.path, "r") as f:
        dset = f["volume"]
        np.testing.assert_array_equal(dset[...], data)
        filters = _filter_ids(dset)
        assert filters[-1] == h5py.h5z.FILTER_FLETCHER32
        assert filters[:-1] == ([] if filter_id is None else [filter_id])


def test_compression_makes_the_file_smaller(tmp_path):
    data = em_like((16, 64, 64), "uint8", seed=5)
    sizes = {
        c: _write(tmp_path, data, name=str(c), chunks=(8, 32, 32), compression=c).bytes_on_disk
        for c in ("zstd", "gzip", None)
    }
    assert sizes["zstd"] < sizes[None] and sizes["gzip"] < sizes[None]


def test_dataset_chunking_equals_the_plan(tmp_path):
    data = em_like((13, 29, 35), "uint8")
    res = _write(tmp_path, data, chunks=(4, 16, 8), block_shape=(8, 29, 35))
    with h5py.File(res.path, "r") as f:
        assert f["volume"].chunks == res.plan.chunks == (4, 16, 8)
    # chunks larger than the volume are clipped (h5py refuses them)
    thin_info = ArraySource(data[:1], VOXEL).info
    thin = h5fmt.plan_write(tmp_path / "t.h5", thin_info, chunks=(8, 64, 64))
    assert thin.chunks == (1, 29, 35)


def test_block_checksums_are_xxh3_128_of_c_order_blocks(tmp_path):
    data = em_like((16, 16, 16), "uint8", seed=7)
    res = _write(tmp_path, data, chunks=(8, 8, 8), block_shape=(8, 16, 8))
    assert len(res.block_checksums) == 4
    want = "xxh3_128:" + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data[8:16, :, 0:8]))
    assert res.block_checksums["1_0_0"] == want
    assert set(res.library_versions) >= {"h5py", "hdf5plugin", "numpy"}


def test_default_blocks_are_chunk_aligned_slabs_within_budget():
    assert h5fmt.default_block_shape((100, 64, 64), (8, 32, 32), 1, budget=8 * 64 * 64 * 3) == (
        24,
        64,
        64,
    )
    # one chunk row of full (y, x) exceeds the budget -> rows of chunks
    assert h5fmt.default_block_shape((100, 256, 256), (8, 32, 32), 2, budget=8 * 64 * 256 * 2) == (
        8,
        64,
        256,
    )
    # even one chunk is over budget -> one chunk
    assert h5fmt.default_block_shape((100, 256, 256), (64, 64, 64), 2, budget=1000) == (64, 64, 64)


def test_blocks_not_aligned_to_chunks_still_round_trip(tmp_path):
    data = em_like((13, 29, 35), "uint16", seed=8)
    res = _write(tmp_path, data, chunks=(4, 8, 8), block_shape=(5, 7, 9), verify="data")
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], data)


def test_missing_chunk_is_reported_not_filled(tmp_path):
    data = em_like((8, 16, 16), "uint8")
    path = tmp_path / "holes.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("volume", shape=data.shape, dtype="uint8", chunks=(8, 8, 8))
        dset[:, :8, :] = data[:, :8, :]  # the y >= 8 chunks are never written
        dset.attrs["voxel_size_nm"] = [8.0, 4.0, 4.0]
    with h5fmt.open_volume(path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (8, 8, 16))), data[:, :8])
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((0, 4, 4), (2, 8, 8)))
    assert err.value.chunk_index == (0, 1, 0)


def test_corrupt_chunk_index_comes_from_the_roi(tmp_path):
    data = em_like((16, 16, 16), "uint8", seed=2)
    res = _write(tmp_path, data, chunks=(8, 8, 8), compression="gzip")
    _damage(Path(res.path), chunk=5)  # C order over the (2, 2, 2) chunk grid -> (1, 0, 1)
    with h5fmt.open_volume(res.path) as vol:
        np.testing.assert_array_equal(vol.read(Roi((0, 0, 0), (8, 16, 16))), data[:8])
        with pytest.raises(CorruptChunkError) as err:
            vol.read(Roi((9, 0, 0), (7, 16, 16)))
    assert err.value.chunk_index == (1, 0, 1)
    assert err.value.path == res.path


def test_uncompressed_corruption_is_caught_by_the_checksum(tmp_path):
    data = em_like((8, 8, 8), "uint8")
    res = _write(tmp_path, data, chunks=(8, 8, 8), compression=None)
    _damage(Path(res.path))
    with h5fmt.open_volume(res.path) as vol, pytest.raises(CorruptChunkError):
        vol.read(Roi((0, 0, 0), (1, 1, 1)))


def test_resume_starts_over_when_a_done_block_changed(tmp_path):
    data = em_like((16, 16, 16), "uint8", seed=9)

    class FailOnThird(ArraySource):
        calls = 0

        def read(self, roi):
            FailOnThird.calls += 1
            if FailOnThird.calls == 3:
                raise OSError("source went away")
            return super().read(roi)

    src = FailOnThird(data, VOXEL)
    plan = h5fmt.plan_write(tmp_path / "r.h5", src.info, chunks=(8, 8, 8), block_shape=(8, 8, 8))
    with pytest.raises(OSError, match="went away"):
        h5fmt.write_volume(plan, src)
    staging = staging_path(plan)
    assert staging.exists() and not Path(plan.path).exists()
    # scribble over block 0_0_1 in the staging file behind the ledger's back
    with h5py.File(staging, "r+") as f:
        f["volume"][0:8, 0:8, 8:16] = 0

    class Counting(ArraySource):
        rois: list = []

        def read(self, roi):
            Counting.rois.append(roi)
            return super().read(roi)

    res = h5fmt.write_volume(plan, Counting(data, VOXEL))
    assert len(Counting.rois) == 8  # the staging file is not trusted: every block again
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], data)
    assert not staging.exists()
    assert not ledger_dir(plan).exists()


def test_unreadable_staging_file_restarts_the_write(tmp_path):
    data = em_like((8, 8, 16), "uint8")

    class FailOnSecond(ArraySource):
        def read(self, roi):
            if roi.offset[2] == 8:
                raise OSError("source went away")
            return super().read(roi)

    src = FailOnSecond(data, VOXEL)
    plan = h5fmt.plan_write(tmp_path / "s.h5", src.info, chunks=(8, 8, 8), block_shape=(8, 8, 8))
    with pytest.raises(OSError):
        h5fmt.write_volume(plan, src)
    staging_path(plan).write_bytes(b"not an hdf5 file")  # e.g. a writer killed mid-flush
    res = h5fmt.write_volume(plan, ArraySource(data, VOXEL))
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], data)


def test_fsync_and_data_verification_options(tmp_path):
    data = em_like((8, 16, 16), "uint16")
    res = _write(tmp_path, data, chunks=(8, 8, 8), block_shape=(8, 8, 8), fsync=True, verify="data")
    assert res.plan.options["fsync"] and res.plan.options["verify"] == "data"
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], data)


def test_rewriting_the_same_plan_writes_new_data(tmp_path):
    first = em_like((8, 8, 8), "uint8", seed=1)
    second = em_like((8, 8, 8), "uint8", seed=2)
    _write(tmp_path, first, chunks=(8, 8, 8))
    res = _write(tmp_path, second, chunks=(8, 8, 8))
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], second)


def test_dispatch_by_suffix_opens_hdf5(tmp_path):
    res = _write(tmp_path, em_like((4, 8, 8), "uint8"), chunks=(4, 8, 8))
    assert format_of(res.path) == "hdf5"
    vol = open_any(res.path)
    try:
        assert vol.info.voxel_size == VOXEL and vol.path == res.path
    finally:
        vol.close()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"compression": "lz4"}, "compression"),
        ({"compression": "gzip", "compression_level": 12}, "gzip level"),
        ({"chunks": (0, 8, 8)}, "chunks"),
        ({"block_shape": (8, 8)}, "block_shape"),
        ({"verify": "maybe"}, "verify"),
    ],
    ids=["codec", "level", "chunks", "block", "verify"],
)
def test_bad_plans_name_the_bad_value(tmp_path, kw, match):
    info = ArraySource(em_like((4, 8, 8), "uint8"), VOXEL).info
    with pytest.raises(ValueError, match=match):
        h5fmt.plan_write(tmp_path / "bad.h5", info, **kw)
    with pytest.raises(ValueError, match=r"\.h5"):
        h5fmt.plan_write(tmp_path / "bad.hdf", info)


def test_source_that_does_not_match_the_plan_is_refused(tmp_path):
    info = ArraySource(em_like((4, 8, 8), "uint8"), VOXEL).info
    plan = h5fmt.plan_write(tmp_path / "m.h5", info)
    with pytest.raises(ValueError, match="plan was made for"):
        h5fmt.write_volume(plan, ArraySource(em_like((4, 8, 9), "uint8"), VOXEL))


KILLED_WRITER = """
import os, signal, sys
from fib_assets.core.formats import hdf5
from fib_assets.core.formats.base import ArraySource
from fib_assets_tests.core.formats.conformance import VOXEL, em_like

class KilledOnFourthRead(ArraySource):
    calls = 0

    def read(self, roi):
        KilledOnFourthRead.calls += 1
        if KilledOnFourthRead.calls == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no HDF5 close
        return super().read(roi)

src = KilledOnFourthRead(em_like((16, 32, 32), "uint16", seed=1), VOXEL)
plan = hdf5.plan_write(sys.argv[1], src.info, chunks=(4, 16, 16), block_shape=(4, 32, 32))
hdf5.write_volume(plan, src)
"""


def test_resume_after_the_writer_process_was_killed(tmp_path):
    path = tmp_path / "killed.h5"
    cwd = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=cwd, timeout=120)
    assert proc.returncode == -signal.SIGKILL

    data = em_like((16, 32, 32), "uint16", seed=1)

    class Counting(ArraySource):
        calls = 0

        def read(self, roi):
            Counting.calls += 1
            return super().read(roi)

    src = Counting(data, VOXEL)
    plan = h5fmt.plan_write(path, src.info, chunks=(4, 16, 16), block_shape=(4, 32, 32))
    assert staging_path(plan).exists() and not path.exists()
    res = h5fmt.write_volume(plan, src)
    assert Counting.calls == 1  # three of four slabs were done (and re-verified) before the kill
    with h5py.File(res.path, "r") as f:
        np.testing.assert_array_equal(f["volume"][...], data)
