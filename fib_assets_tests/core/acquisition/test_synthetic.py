"""Synthetic FIB-SEM sample generator: determinism, slab independence, contrast, writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from fib_assets.core.acquisition.dat import DatTruncatedError, read_dat, read_dat_header
from fib_assets.core.acquisition.synthetic import (
    ARTEFACTS,
    CHANNELS,
    CLASS_IDS,
    RegionInfo,
    SyntheticSample,
    write_ground_truth,
    write_region,
    write_sample,
)

MEMBRANES = [CLASS_IDS[n] for n in ("pm", "mito_mem", "golgi_mem", "ves_mem", "er_mem", "ne_mem")]


def test_same_seed_gives_identical_bytes() -> None:
    a = SyntheticSample((8, 48, 40), seed=3, artefacts=["curtaining"])
    b = SyntheticSample((8, 48, 40), seed=3, artefacts=["curtaining"])
    la, ra = a.render(0, 8)
    lb, rb = b.render(0, 8)
    assert la.tobytes() == lb.tobytes()
    assert ra is not None and rb is not None
    assert ra.tobytes() == rb.tobytes()


def test_different_seed_differs() -> None:
    a = SyntheticSample((8, 48, 48), seed=1)
    b = SyntheticSample((8, 48, 48), seed=2)
    assert not np.array_equal(a.labels(0, 8), b.labels(0, 8))
    assert not np.array_equal(a.raw(0, 8), b.raw(0, 8))


@pytest.mark.parametrize("artefacts", [(), ARTEFACTS], ids=["clean", "all-artefacts"])
def test_slabs_concatenate_to_the_whole_volume(artefacts: tuple[str, ...]) -> None:
    s = SyntheticSample((20, 48, 40), seed=7, artefacts=artefacts)
    labels, raw = s.render(0, 20)
    assert raw is not None
    assert labels.shape == (20, 48, 40) and labels.dtype == np.uint8
    assert raw.shape == (2, 20, 48, 40) and raw.dtype == np.int16
    for k in (1, 7, 19):
        assert np.array_equal(labels, np.concatenate([s.labels(0, k), s.labels(k, 20)]))
        assert np.array_equal(raw, np.concatenate([s.raw(0, k), s.raw(k, 20)], axis=1))
    for z in (0, 9, 19):  # any single slice on its own
        assert np.array_equal(s.raw(z, z + 1)[:, 0], raw[:, z])


def test_slab_range_is_validated() -> None:
    s = SyntheticSample((4, 16, 16))
    for z0, z1 in [(-1, 2), (2, 2), (3, 5)]:
        with pytest.raises(ValueError, match="slab"):
            s.labels(z0, z1)


def test_tiny_volume_holds_several_cosem_classes() -> None:
    labels = SyntheticSample((24, 64, 64), seed=0).labels(0, 24)
    present = set(np.unique(labels).tolist())
    assert present <= set(CLASS_IDS.values())
    expected = {"ecs", "pm", "cyto", "nucpl", "ne_mem", "mito_mem", "mito_lum", "er_mem", "er_lum"}
    expected |= {"golgi_mem", "golgi_lum", "ves_mem", "ves_lum"}
    assert {CLASS_IDS[n] for n in expected} <= present


def test_membranes_are_darker_than_cytosol() -> None:
    s = SyntheticSample((16, 64, 64), seed=0)
    labels, raw = s.render(0, 16)
    assert raw is not None
    membrane = np.isin(labels, MEMBRANES)
    cyto = labels == CLASS_IDS["cyto"]
    for c in range(2):
        img = raw[c].astype(np.float64)
        assert img[membrane].mean() < img[cyto].mean() - 0.1 * img[cyto].std()
        assert img[labels == CLASS_IDS["nucpl"]].mean() < img[cyto].mean()
        assert img[labels == CLASS_IDS["mito_lum"]].mean() < img[cyto].mean()


def test_clean_sample_stays_inside_the_int16_range() -> None:
    raw = SyntheticSample((16, 64, 64), seed=0).raw(0, 16)
    assert raw.min() > np.iinfo(np.int16).min // 2
    assert raw.max() < np.iinfo(np.int16).max * 3 // 4
    assert raw[0].std() > 500  # real contrast and noise, not a flat image


@pytest.mark.parametrize("name", ARTEFACTS)
def test_every_artefact_name_is_accepted(name: str) -> None:
    s = SyntheticSample((8, 32, 32), seed=0, artefacts=[name])
    assert s.artefacts == (name,)
    assert s.raw(0, 8).shape == (2, 8, 32, 32)


def test_unknown_artefact_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="curtaining") as info:
        SyntheticSample((8, 32, 32), artefacts=["curtains"])
    assert "curtains" in str(info.value)
    with pytest.raises(ValueError):
        SyntheticSample((8, 32, 32), artefacts="curtaining")  # a string is not a list of names


def test_saturation_clips_at_least_two_percent() -> None:
    raw = SyntheticSample((8, 64, 64), seed=0, artefacts=["saturation"]).raw(0, 8)[0]
    info = np.iinfo(np.int16)
    assert np.mean((raw == info.max) | (raw == info.min)) >= 0.02


def test_brightness_drift_is_monotonic_and_large() -> None:
    z = 16
    clean = SyntheticSample((z, 48, 48), seed=0).raw(0, z)[0].mean(axis=(1, 2))
    drift = SyntheticSample((z, 48, 48), seed=0, artefacts=["brightness_drift"]).raw(0, z)[0]
    ratio = drift.mean(axis=(1, 2)) / clean
    assert abs(ratio[-1] - ratio[0]) >= 0.15
    steps = np.diff(ratio)
    assert np.all(steps > 0) or np.all(steps < 0)


def test_lateral_drift_is_a_random_walk_of_several_px() -> None:
    s = SyntheticSample((24, 48, 48), seed=0, artefacts=["lateral_drift"])
    drift = s.lateral_drift_px
    assert drift.shape == (24, 2) and np.all(drift[0] == 0)
    assert np.abs(drift).max() >= 3.0
    assert np.hypot(*np.diff(drift, axis=0).T).max() >= 4.0  # at least one stage jump
    assert np.all(SyntheticSample((24, 48, 48), seed=0).lateral_drift_px == 0)


def _read_slice_nums(files: list[Path]) -> list[int | None]:
    return [read_dat_header(f).fib_slice_num for f in files]


def test_write_region_round_trips_through_read_dat(tmp_path: Path) -> None:
    s = SyntheticSample((6, 40, 48), seed=2, voxel_size_nm=6.0)
    info = write_region(tmp_path / "r001", s, region="r001", sample_id="cellA")
    files = sorted((tmp_path / "r001").glob("*.dat"))
    assert list(info.files) == files and info.n_files == 6
    assert files[0].name == "cellA_000000_0-0-0.dat"
    raw = s.raw(0, 6)
    wd = []
    for z, f in enumerate(files):
        header, pixels = read_dat(f)
        assert pixels.shape == (2, 40, 48)
        assert np.array_equal(pixels, raw[:, z])
        assert header.file_version == 9
        assert header.pixel_size_nm == pytest.approx(6.0)
        assert header.fib_slice_num == s.first_fib_slice + z
        assert header.fields["DetA"] == "InLens" and header.fields["DetB"] == "ESB"
        assert header.fields["SampleID"] == "cellA"
        assert header.fields["MachineID"].startswith("Merlin")
        wd.append(header.working_distance_mm)
    # WD drops by the milling step (6 nm = 6e-6 mm) per slice
    assert np.allclose(np.diff(wd), -6e-6, atol=2e-7)

    meta = yaml.safe_load((tmp_path / "r001" / "region.yaml").read_text())
    assert meta["region"] == "r001" and meta["sample_id"] == "cellA"
    assert meta["voxel_size_nm"] == {"z": 6.0, "y": 6.0, "x": 6.0}
    assert meta["shape_zyx"] == [6, 40, 48] and meta["n_files"] == 6
    assert meta["channels"] == list(CHANNELS)
    assert meta["acquisition"]["milling_step_nm"] == 6.0
    assert "started" in meta["acquisition"] and "operator" in meta["acquisition"]
    assert meta["synthetic"] == {
        "generator": "fib_assets.core.acquisition.synthetic",
        "seed": 2,
        "artefacts": [],
        "dropped_slices": [],
        "duplicated_slices": [],
        "truncated_files": [],
    }
    assert meta["instrument"]["machine_id"].startswith("Merlin")
    assert RegionInfo.from_region_dir(tmp_path / "r001") == info


def test_write_region_rejects_bad_region_keys(tmp_path: Path) -> None:
    s = SyntheticSample((2, 16, 16))
    with pytest.raises(ValueError, match="region"):
        write_region(tmp_path / "x", s, region="../evil", sample_id="s")
    with pytest.raises(ValueError, match="sample_id"):
        write_region(tmp_path / "x", s, region="r001", sample_id="a b")


def test_file_level_artefacts_show_in_the_files(tmp_path: Path) -> None:
    arts = ["dropped_slices", "duplicated_slices", "truncated_file"]
    s = SyntheticSample((20, 32, 32), seed=4, artefacts=arts)
    info = write_region(tmp_path / "r002", s, region="r002", sample_id="synthcell")
    files = sorted((tmp_path / "r002").glob("*.dat"))
    assert info.n_files == len(files) == 20 - len(s.dropped_slices) + len(s.duplicated_slices)
    nums = _read_slice_nums(files)
    steps = np.diff(np.asarray(nums, dtype=np.int64))
    # dropped: FIBSliceNum jumps over the missing slice
    for z in s.dropped_slices:
        assert s.first_fib_slice + z not in nums
    assert (steps == 2).sum() == len(s.dropped_slices)
    # duplicated: an extra file sorted right after the original, same FIBSliceNum
    for z in s.duplicated_slices:
        i = [f.name for f in files].index(f"synthcell_{z:06d}_0-0-0.dat")
        assert files[i + 1].name == f"synthcell_{z:06d}_0-0-0_dup.dat"
        assert nums[i] == nums[i + 1] == s.first_fib_slice + z
    assert (steps == 0).sum() == len(s.duplicated_slices)
    # truncated: exactly one file whose header reads but whose pixels are refused
    refused = []
    for f in files:
        try:
            read_dat(f)
        except DatTruncatedError:
            refused.append(f.name)
    assert refused == [f"synthcell_{s.truncated_slice:06d}_0-0-0.dat"]
    assert list(info.truncated_files) == refused
    meta = yaml.safe_load((tmp_path / "r002" / "region.yaml").read_text())
    assert meta["n_files"] == len(files)
    assert meta["synthetic"]["artefacts"] == arts
    assert meta["synthetic"]["dropped_slices"] == list(s.dropped_slices)


def test_write_ground_truth_matches_labels(tmp_path: Path) -> None:
    s = SyntheticSample((10, 40, 36), seed=5)
    write_ground_truth(tmp_path / "gt.zarr", s)
    arr = zarr.open_array(str(tmp_path / "gt.zarr"), mode="r")
    assert arr.shape == (10, 40, 36) and arr.dtype == np.uint8
    assert tuple(arr.metadata.dimension_names) == ("z", "y", "x")
    labels = s.labels(0, 10)
    assert np.array_equal(arr[:], labels)
    attrs = dict(arr.attrs)
    assert attrs["voxel_size_nm"] == [8.0, 8.0, 8.0] and attrs["seed"] == 5
    assert sorted(attrs["class_ids"].values()) == sorted(np.unique(labels).tolist())


def test_write_sample_is_idempotent_and_writes_ground_truth(tmp_path: Path) -> None:
    kwargs = dict(
        n_regions=2,
        shape_zyx=(8, 40, 40),
        seed=11,
        artefacts=["dropped_slices"],
        artefact_regions=["r002"],
    )
    infos = write_sample(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert [i.region for i in infos] == ["r001", "r002"]
    assert [i.seed for i in infos] == [11, 12]
    assert infos[0].artefacts == () and infos[1].artefacts == ("dropped_slices",)
    assert infos[0].n_files == 8 and infos[1].n_files == 8 - len(infos[1].dropped_slices)
    for info in infos:
        gt = zarr.open_array(str(tmp_path / "groundtruth" / f"{info.region}.zarr"), mode="r")
        sample = SyntheticSample((8, 40, 40), seed=info.seed, artefacts=info.artefacts)
        assert np.array_equal(gt[:], sample.labels(0, 8))
        assert (tmp_path / "landing" / info.region / "region.yaml").exists()

    marker = tmp_path / "landing" / "r001" / "region.yaml"
    before = marker.stat().st_mtime_ns
    again = write_sample(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert again == infos
    assert marker.stat().st_mtime_ns == before  # skipped, not rewritten

    with pytest.raises(ValueError, match="r001"):
        write_sample(tmp_path, n_regions=1, shape_zyx=(8, 40, 40), seed=99)
    with pytest.raises(ValueError, match="r009"):
        write_sample(
            tmp_path, n_regions=1, shape_zyx=(8, 40, 40), seed=11, artefact_regions=["r009"]
        )
