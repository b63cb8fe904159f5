"""Shared helpers of the format modules (fib_assets.core.formats.base)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import xxhash

from fib_assets.core.formats import base
from fib_assets.core.formats.verify import verify_same_voxels
from fib_assets.core.geometry import Roi, VoxelSize

_PROBE = (
    "from fib_assets.core.formats import base\n"
    "print(base.bound_allocator_retention(), base.bound_allocator_retention())\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_bound_is_set_once_and_yields_to_the_environment():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["True", "True"], run.stderr
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["False", "False"], run.stderr


_ARENA_PROBE = """
import ctypes, ctypes.util, sys, tempfile, threading
if sys.argv[1] == "imported":
    from fib_assets.core.formats import base  # limits the arenas on import
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(8)
def work():  # chunk-sized buffers (below the mmap threshold) from 8 threads at once
    barrier.wait()
    for _ in range(200):
        p = libc.malloc(200_000)
        ctypes.memset(p, 1, 200_000)
        libc.free(p)
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(f.name).read().count("<heap nr="))  # one <heap> per arena
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_importing_the_formats_keeps_threads_in_one_arena_unless_the_environment_says():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode, **extra):
        run = subprocess.run(
            [sys.executable, "-c", _ARENA_PROBE, mode],
            env={**env, **extra},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert arenas("not imported") > 1  # glibc's default: threads spread over several arenas
    assert arenas("imported") == base.ARENA_MAX == 1
    assert arenas("imported", MALLOC_ARENA_MAX="3") == 3


def test_blocks_in_flight_follow_the_budget():
    mib = 2**20
    assert base.blocks_in_flight(8 * mib, None, 1.5, 3) == 3
    assert base.blocks_in_flight(8 * mib, 64 * mib, 1.5, 3) == 3
    assert base.blocks_in_flight(8 * mib, 24 * mib, 1.5, 3) == 2
    assert base.blocks_in_flight(8 * mib, 1 * mib, 1.5, 3) == 1  # never below one


def test_chunk_grid_helpers_agree_with_numpy_slicing():
    shape = (13, 29, 35)
    chunks = (4, 8, 16)
    vol = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    roi = Roi((3, 5, 7), (6, 11, 20))
    out = np.full(roi.shape, -1, dtype=np.int32)
    touched = list(base.chunk_indices(roi, chunks))
    assert touched == sorted(touched) and len(touched) == 3 * 2 * 2
    for chunk in touched:
        box = base.chunk_roi(chunk, chunks, shape)
        base.paste(out, roi, vol[box.to_slices()], box)
    np.testing.assert_array_equal(out, vol[roi.to_slices()])
    assert base.chunk_roi((3, 3, 2), chunks, shape).shape == (1, 5, 3)  # clipped at the edge


def test_plan_checks_name_the_problem():
    assert base.positive_triple("chunks", [1, 2, 3]) == (1, 2, 3)
    with pytest.raises(ValueError, match=r"vol\.h5: chunks must be 3 positive"):
        base.positive_triple("chunks", (1, 0, 2), "vol.h5")
    with pytest.raises(ValueError, match="must be 3 positive"):
        base.positive_triple("block_shape", (1, 2))
    assert base.tiles((64, 128, 100), (64, 64, 64), (200, 200, 100))
    assert not base.tiles((64, 96, 64), (64, 64, 64), (200, 200, 200))
    with pytest.raises(ValueError, match="zstd compression_level must be in -7..22"):
        base.check_level("zstd", 23, -7, 22)
    with pytest.raises(ValueError, match="levels must be an integer"):
        base.check_levels(True)
    with pytest.raises(ValueError, match="x.n5: verify must be"):
        base.check_verify("x.n5", "full")
    with pytest.raises(ValueError, match="must end in '.n5'"):
        base.check_suffix("x.zarr", ".n5", "an N5 variant")
    with pytest.raises(ValueError, match="integer or float"):
        base.storage_dtype("complex64", "v.h5")


def test_readers_share_close_and_context_manager(tmp_path):
    from fib_assets.core.formats import open_volume
    from fib_assets.core.formats import parquet as parquet_format
    from fib_assets_tests.core.formats.conformance import VOXEL, em_like

    src = base.ArraySource(em_like((8, 8, 8), "uint8"), VOXEL)
    plan = parquet_format.plan_write(tmp_path / "v.parquet", src.info, chunks=(4, 4, 4))
    parquet_format.write_volume(plan, src)
    with open_volume(plan.path) as vol:
        assert isinstance(vol, base.BaseReader)
        assert vol.read(Roi((0, 0, 0), (2, 2, 2))).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="closed"):
        vol.read(Roi((0, 0, 0), (2, 2, 2)))
    vol.close()  # idempotent


def test_block_checksum_is_xxh3_128_of_c_order_bytes_and_names_its_algorithm():
    data = np.arange(6 * 7 * 8, dtype=np.uint16).reshape(6, 7, 8)
    view = np.asfortranarray(data)  # same voxels, other memory order: same checksum
    want = "xxh3_128:" + xxhash.xxh3_128_hexdigest(data.tobytes())
    assert base.block_checksum(data) == base.block_checksum(view) == want
    assert base.split_checksum(want) == ("xxh3_128", want.split(":")[1])


@pytest.mark.parametrize("algorithm", ["xxh3_128", "sha256"])
def test_a_corrupted_block_no_longer_matches_its_checksum(algorithm):
    data = np.random.default_rng(1).integers(0, 256, (16, 16, 16), dtype=np.uint8)
    if algorithm == "sha256":  # a marker of the previous version: a bare sha256 hex digest
        recorded = hashlib.sha256(data.tobytes()).hexdigest()
    else:
        recorded = base.block_checksum(data)
    assert base.checksum_matches(data, recorded)
    for z, y, x in [(0, 0, 0), (15, 15, 15), (7, 3, 11)]:
        bad = data.copy()
        bad[z, y, x] ^= 1  # one flipped bit
        assert not base.checksum_matches(bad, recorded)
    swapped = data.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same bytes, other order
    assert not base.checksum_matches(swapped, recorded)


def test_recorded_checksums_name_a_known_algorithm():
    digest = hashlib.sha256(b"x").hexdigest()
    assert base.split_checksum(digest) == ("sha256", digest)
    assert base.split_checksum("sha256:" + digest) == ("sha256", digest)
    assert base.marker_checksum({"sha256": digest}) == "sha256:" + digest
    assert base.marker_checksum({"checksum": "xxh3_128:" + "0" * 32}) == "xxh3_128:" + "0" * 32
    for bad in ["md5:" + "0" * 32, "xxh3_128:" + "0" * 31, "sha256:" + "Z" * 64, "", "abc"]:
        with pytest.raises(ValueError, match="block checksum"):
            base.checksum_matches(np.zeros(3, np.uint8), bad)


def test_verify_same_voxels_names_the_corrupted_block():
    data = np.random.default_rng(2).integers(0, 256, (16, 16, 32), dtype=np.uint8)
    bad = data.copy()
    bad[9, 2, 20] ^= 0x80
    voxel = VoxelSize(8.0, 4.0, 4.0)
    ok = verify_same_voxels(
        base.ArraySource(data, voxel), base.ArraySource(data.copy(), voxel), block_shape=(8, 16, 16)
    )
    assert ok.passed and ok.n_blocks == 4
    assert ok.checksums["1_0_1"] == base.block_checksum(data[8:16, :, 16:32])
    got = verify_same_voxels(
        base.ArraySource(data, voxel), base.ArraySource(bad, voxel), block_shape=(8, 16, 16)
    )
    assert not got.passed and got.mismatched == ["1_0_1"]
