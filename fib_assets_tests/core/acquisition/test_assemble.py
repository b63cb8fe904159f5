"""Region inventory and blockwise assembly into OME-Zarr, checked with independent readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import yaml
import zarr

from fib_assets.core.acquisition.assemble import (
    execute_raw_volume,
    plan_raw_volume,
    stretch_to_uint8,
)
from fib_assets.core.acquisition.dat import write_dat
from fib_assets.core.acquisition.region import (
    RegionError,
    check_region_complete,
    inventory_region,
)
from fib_assets.core.formats.zarr import downsample_mean, open_multiscale


def _write_region(d: Path, vol: np.ndarray, *, first_slice: int = 100, meta: dict | None = None):
    """vol (C, Z, Y, X) int16 → one .dat per slice + region.yaml written last."""
    d.mkdir(parents=True)
    for z in range(vol.shape[1]):
        write_dat(
            d / f"s_{z:06d}_0-0-0.dat",
            vol[:, z],
            fields={"PixelSize": 8.0, "FIBSliceNum": first_slice + z},
        )
    m = {"region": d.name, "sample_id": "t", "voxel_size_nm": {"z": 8, "y": 8, "x": 8},
         "n_files": vol.shape[1], "channels": ["InLens", "ESB"]}  # fmt: skip
    m.update(meta or {})
    (d / "region.yaml").write_text(yaml.safe_dump(m))


@pytest.fixture()
def volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.normal(8000, 1500, size=(2, 21, 37, 45))
    return np.clip(base, -32768, 32767).astype(np.int16)


def test_completeness_rules(tmp_path, volume):
    d = tmp_path / "r1"
    _write_region(d, volume)
    assert check_region_complete(d) is None
    (d / "region.yaml").write_text(yaml.safe_dump({"region": "r1", "sample_id": "t",
        "voxel_size_nm": {"z": 8, "y": 8, "x": 8}, "n_files": 99}))  # fmt: skip
    assert "lists 99 source files, found 21" in check_region_complete(d)
    (d / "region.yaml").unlink()
    assert "region.yaml" in check_region_complete(d)
    with pytest.raises(RegionError, match="region.yaml"):
        inventory_region(d)


def test_assembly_equals_sources_blockwise_and_resumes(tmp_path, volume):
    d = tmp_path / "landing" / "r1"
    _write_region(d, volume)
    inv = inventory_region(d)
    assert len(inv.files) == 21 and inv.files[0].header["FIBSliceNum"] == 100
    # small shards force many blocks, edge blocks, and several pyramid levels
    plan = plan_raw_volume(inv, chunks=(8, 8, 8), shards=(16, 16, 16), min_level_size=4)
    assert plan.shape == (21, 37, 45) and len(plan.level_shapes) >= 3
    out = tmp_path / "out"
    res = execute_raw_volume(plan, out)
    expected_u16 = (volume.astype(np.int32) + 32768).astype(np.uint16)

    # zarr-python and tensorstore (independent implementations) both read what we wrote
    root = zarr.open_group(res.path, mode="r")
    np.testing.assert_array_equal(np.asarray(root["raw/s0"]), expected_u16)
    store = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": res.path + "/raw/s0"}}
    ).result()
    np.testing.assert_array_equal(store.read().result(), expected_u16)
    u8 = np.asarray(root["uint8/s0"])
    np.testing.assert_array_equal(u8, stretch_to_uint8(expected_u16[0], res.low, res.high))
    # the histogram pass gives exactly numpy's inverted-CDF percentiles of the whole volume
    lo, hi = np.percentile(expected_u16[0], [0.5, 99.5], method="inverted_cdf")
    assert (res.low, res.high) == (lo, hi)
    # the pyramid is the 2x mean of the level below
    np.testing.assert_array_equal(np.asarray(root["raw/s1"]), downsample_mean(expected_u16))

    # OME-NGFF 0.5 metadata: axes, scales in nm
    ome, levels = open_multiscale(res.path, "raw")
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 16.0, 16.0, 16.0]
    assert levels[0].shards == (1, 16, 16, 16)

    # QC statistics cover every slice; shifts every consecutive pair
    assert list(res.stats["z"]) == list(range(21))
    assert len(res.shifts) == 20

    # a rerun reuses the finished container (same name, same checksum)
    again = execute_raw_volume(plan, out)
    assert again.reused and again.path == res.path and again.checksum == res.checksum
    assert not any(p.name.startswith(".staging") for p in out.iterdir())


def test_interrupted_assembly_keeps_done_blocks_and_never_publishes_half(
    tmp_path, volume, monkeypatch
):
    d = tmp_path / "landing" / "r1"
    _write_region(d, volume)
    plan = plan_raw_volume(
        inventory_region(d), chunks=(8, 8, 8), shards=(16, 16, 16), min_level_size=4
    )
    out = tmp_path / "out"
    import fib_assets.core.acquisition.assemble as asm

    real = asm.stretch_to_uint8
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MemoryError("pod killed")
        return real(*a, **k)

    monkeypatch.setattr(asm, "stretch_to_uint8", dying)
    with pytest.raises(MemoryError):
        execute_raw_volume(plan, out)
    assert not (out / plan.output_name).exists()
    markers = sorted((out / ".blocks").rglob("*.done.json"))
    assert len([m for m in markers if not m.name.startswith("s")]) - 1 == 4  # 4 blocks + "created"

    monkeypatch.setattr(asm, "stretch_to_uint8", real)
    done_calls = {"n": 0}

    def counting(*a, **k):
        done_calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(asm, "stretch_to_uint8", counting)
    res = execute_raw_volume(plan, out)
    assert done_calls["n"] == len(plan.block_plan) - 4  # only the missing blocks ran
    np.testing.assert_array_equal(
        np.asarray(zarr.open_group(res.path, mode="r")["raw/s0"]),
        (volume.astype(np.int32) + 32768).astype(np.uint16),
    )
    summary = json.loads(next((out / ".blocks").rglob("summary.json")).read_text())
    assert summary["checksum"] == res.checksum


def test_truncated_source_is_refused_by_the_plan(tmp_path, volume):
    d = tmp_path / "r1"
    _write_region(d, volume)
    f = sorted(d.glob("*.dat"))[3]
    f.write_bytes(f.read_bytes()[:-100])
    inv = inventory_region(d)
    bad = [x for x in inv.files if not x.readable]
    assert [x.name for x in bad] == [f.name] and "100 bytes" in bad[0].error
    with pytest.raises(RegionError, match=f.name):
        plan_raw_volume(inv)


def test_tiff_stack_region(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 60000, size=(9, 20, 24), dtype=np.uint16)
    d = tmp_path / "t1"
    d.mkdir()
    for z in range(vol.shape[0]):
        tifffile.imwrite(d / f"slice_{z:04d}.tif", vol[z])
    (d / "region.yaml").write_text(yaml.safe_dump({"region": "t1", "sample_id": "t",
        "voxel_size_nm": {"z": 10, "y": 4, "x": 4}, "n_files": 9}))  # fmt: skip
    plan = plan_raw_volume(
        inventory_region(d), chunks=(8, 8, 8), shards=(8, 8, 8), min_level_size=4
    )
    res = execute_raw_volume(plan, tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(zarr.open_group(res.path)["raw/s0"])[0], vol)
    ome, _ = open_multiscale(res.path, "raw")
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [
        1.0,
        10.0,
        4.0,
        4.0,
    ]
