"""Raw-data QC metrics, run the way the raw-volume assembler runs them (tiles of slabs)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fib_assets.core import qc
from fib_assets.core.acquisition.dat import DatTruncatedError, read_dat, read_dat_header
from fib_assets.core.acquisition.synthetic import SyntheticSample, write_region

SHAPE = (32, 64, 64)  # z, y, x
SEED = 0
INT16 = np.iinfo(np.int16)


@functools.cache
def _channel0(artefacts: tuple[str, ...]) -> np.ndarray:
    """InLens channel (z, y, x) int16 of the test sample (the assembler's contrast channel)."""
    return SyntheticSample(SHAPE, seed=SEED, artefacts=artefacts).raw(0, SHAPE[0])[0]


def _tiles(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(edges[:-1], edges[1:], strict=True))


def _assembler_stats(vol: np.ndarray, *, slab: int = 8, tiles: int = 2) -> pd.DataFrame:
    """z-slabs x (tiles x tiles) XY tiles through slab_statistics, then combine."""
    parts = []
    for z0 in range(0, vol.shape[0], slab):
        for y0, y1 in _tiles(vol.shape[1], tiles):
            for x0, x1 in _tiles(vol.shape[2], tiles):
                tile = vol[z0 : z0 + slab, y0:y1, x0:x1]
                parts.append(qc.slab_statistics(tile, z0=z0, low=INT16.min, high=INT16.max))
    return qc.combine_statistics(parts)


def _assembler_shifts(vol: np.ndarray, crop: int = 48) -> pd.DataFrame:
    _, ny, nx = vol.shape
    y0, x0 = (ny - crop) // 2, (nx - crop) // 2
    c = vol[:, y0 : y0 + crop, x0 : x0 + crop].astype(np.float32)
    rows = []
    for z in range(1, vol.shape[0]):
        dy, dx = qc.lateral_shifts(c[z - 1], c[z])
        rows.append({"z": z, "dy": dy, "dx": dx})
    return pd.DataFrame(rows, columns=list(qc.SHIFT_COLUMNS))


def _outcomes(artefacts: tuple[str, ...]) -> dict[str, qc.QCOutcome]:
    vol = _channel0(artefacts)
    stats = _assembler_stats(vol)
    shifts = _assembler_shifts(vol)
    t = qc.QCThresholds()
    return {
        "saturation": qc.check_saturation(stats, t),
        "brightness_drift": qc.check_brightness_drift(stats, t),
        "curtaining": qc.check_curtaining(stats, t),
        "lateral_drift": qc.check_lateral_drift(shifts, t),
    }


def test_clean_sample_passes_every_check() -> None:
    for name, outcome in _outcomes(()).items():
        assert outcome.passed, (name, outcome.description)
        assert outcome.offending_slices == []
        assert outcome.value <= outcome.threshold


# charging has no check of its own: its patches clip, so the saturation check catches it
@pytest.mark.parametrize(
    ("artefact", "check"),
    [
        ("saturation", "saturation"),
        ("charging", "saturation"),
        ("brightness_drift", "brightness_drift"),
        ("curtaining", "curtaining"),
        ("lateral_drift", "lateral_drift"),
    ],
    ids=["saturation", "charging", "brightness_drift", "curtaining", "lateral_drift"],
)
def test_artefact_fails_its_check(artefact: str, check: str) -> None:
    outcome = _outcomes((artefact,))[check]
    assert not outcome.passed, outcome.description
    assert outcome.value > outcome.threshold
    assert outcome.offending_slices
    assert all(0 <= z < SHAPE[0] for z in outcome.offending_slices)
    assert outcome.description.endswith(".")
    assert _outcomes(())[check].passed  # the same cell without the artefact passes


def test_offending_slices_point_at_the_artefact() -> None:
    sample = SyntheticSample(SHAPE, seed=SEED, artefacts=["lateral_drift"])
    # pixel (y, x) of slice z shows world point (y, x) + drift[z]: content moves by -step
    moved = -np.diff(sample.lateral_drift_px, axis=0)
    jumps = [z for z in range(1, SHAPE[0]) if np.hypot(*moved[z - 1]) > 3.5]
    assert jumps
    outcome = _outcomes(("lateral_drift",))["lateral_drift"]
    assert set(jumps) <= set(outcome.offending_slices)
    shifts = _assembler_shifts(_channel0(("lateral_drift",))).set_index("z")
    for z in jumps:
        measured = shifts.loc[z, ["dy", "dx"]].to_numpy(dtype=np.float64)
        assert np.hypot(*(measured - moved[z - 1])) < 1.0

    charged = SyntheticSample(SHAPE, seed=SEED, artefacts=["charging"]).charged_slices
    assert _outcomes(("charging",))["saturation"].offending_slices == list(charged)


def _landing_outcome(tmp_path: Path, artefacts: tuple[str, ...]) -> qc.QCOutcome:
    """Write the region, read headers as the assembler does (unreadable files are skipped)."""
    sample = SyntheticSample((16, 32, 32), seed=SEED, artefacts=artefacts)
    info = write_region(tmp_path / "r001", sample, region="r001", sample_id="synthcell")
    nums, names = [], []
    for f in info.files:
        try:
            read_dat(f)
        except DatTruncatedError:
            continue
        num = read_dat_header(f).fib_slice_num
        assert num is not None
        nums.append(num)
        names.append(f.name)
    return qc.check_slice_continuity(nums, names)


@pytest.mark.parametrize("artefact", ["dropped_slices", "duplicated_slices", "truncated_file"])
def test_file_artefacts_break_slice_continuity(tmp_path: Path, artefact: str) -> None:
    outcome = _landing_outcome(tmp_path / "bad", (artefact,))
    assert not outcome.passed and outcome.value >= 1 and outcome.offending_slices
    assert "synthcell_" in outcome.description
    assert _landing_outcome(tmp_path / "clean", ()).passed


def test_check_slice_continuity_names_gap_and_duplicate() -> None:
    names = [f"s_{i}.dat" for i in range(6)]
    outcome = qc.check_slice_continuity([10, 11, 13, 13, 14, 15], names)
    assert not outcome.passed
    assert outcome.value == 2  # one missing number, one extra copy
    assert outcome.threshold == 0
    assert outcome.offending_slices == [2, 3]
    assert "12 missing between s_1.dat and s_2.dat" in outcome.description
    assert "13 appears 2 times (s_2.dat, s_3.dat)" in outcome.description
    assert outcome.details["missing_slice_nums"] == [12]
    assert outcome.details["duplicates"] == {"13": ["s_2.dat", "s_3.dat"]}

    backwards = qc.check_slice_continuity([5, 7, 6], ["a", "b", "c"])
    assert not backwards.passed and 2 in backwards.offending_slices

    ok = qc.check_slice_continuity([3, 4, 5], ["a", "b", "c"])
    assert ok.passed and ok.value == 0 and ok.offending_slices == []
    with pytest.raises(ValueError):
        qc.check_slice_continuity([1, 2], ["a"])


def test_combined_tiles_equal_whole_slices() -> None:
    vol = _channel0(("saturation",))  # non-zero saturation, so the fraction is tested too
    whole = qc.combine_statistics([qc.slab_statistics(vol, z0=0, low=INT16.min, high=INT16.max)])
    # uneven tiles and slabs, handed over in a scrambled order
    parts = []
    for z0, z1 in [(0, 5), (5, 19), (19, 32)]:
        for y0, y1 in [(0, 17), (17, 64)]:
            for x0, x1 in [(0, 30), (30, 41), (41, 64)]:
                tile = vol[z0:z1, y0:y1, x0:x1]
                parts.append(qc.slab_statistics(tile, z0=z0, low=INT16.min, high=INT16.max))
    tiled = qc.combine_statistics(parts[::-1])
    assert list(tiled.columns) == list(qc.COMBINED_COLUMNS)
    assert tiled["z"].tolist() == list(range(SHAPE[0]))
    assert (whole["saturation_fraction"] > 0).all()
    for col in ("n", "mean", "std", "saturation_fraction"):
        np.testing.assert_allclose(tiled[col], whole[col], rtol=1e-9, err_msg=col)
    ref = vol.reshape(SHAPE[0], -1).astype(np.float64)
    np.testing.assert_allclose(whole["mean"], ref.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(whole["std"], ref.std(axis=1), rtol=1e-9)


def test_slab_statistics_columns_and_unsigned_extremes() -> None:
    slab = np.array([[[0, 5], [255, 255]], [[1, 2], [3, 4]]], dtype=np.uint8)
    df = qc.slab_statistics(slab, z0=7, low=0, high=255)
    assert list(df.columns) == list(qc.SLAB_COLUMNS)
    assert df["z"].tolist() == [7, 8]
    assert df["n_low"].tolist() == [1, 0] and df["n_high"].tolist() == [2, 0]
    assert df["sum"].tolist() == [515.0, 10.0]
    assert qc.combine_statistics([]).empty


def test_lateral_shifts_sign_and_precision() -> None:
    vol = _channel0(())
    base = vol[16].astype(np.float64)
    moved = np.roll(base, (3, -2), axis=(0, 1))
    dy, dx = qc.lateral_shifts(base[8:56, 8:56], moved[8:56, 8:56])
    assert dy == pytest.approx(3, abs=0.3) and dx == pytest.approx(-2, abs=0.3)
    assert qc.lateral_shifts(np.zeros((8, 8)), base[:8, :8]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        qc.lateral_shifts(base, base[:10])


def test_brightness_drift_on_known_means() -> None:
    t = qc.QCThresholds()
    z = np.arange(50)
    flat = pd.DataFrame({"z": z, "mean": 1000.0 + 5 * np.sin(z)})
    assert qc.check_brightness_drift(flat, t).passed
    ramp = pd.DataFrame({"z": z, "mean": 1000.0 * (1 - 0.3 * z / 49)})
    ramp.loc[10, "mean"] = 5000.0  # one outlier (e.g. a charging slice) does not fool the fit
    out = qc.check_brightness_drift(ramp, t)
    assert not out.passed
    assert out.value == pytest.approx(0.3 / 0.85, rel=0.02)
    assert out.details["relative_drift"] < 0 and "darker" in out.description
    # offending: where the fitted mean is more than 10 % below the fitted start
    assert out.offending_slices == [int(v) for v in z if 0.3 * v / 49 / 0.85 > 0.10]
    assert qc.check_brightness_drift(ramp.iloc[:1], t).passed


def test_lateral_drift_check_on_known_shifts() -> None:
    t = qc.QCThresholds(max_lateral_drift_px=2.0)
    df = pd.DataFrame({"z": [1, 2, 3], "dy": [0.5, 3.0, 0.0], "dx": [0.0, 4.0, -1.0]})
    out = qc.check_lateral_drift(df, t)
    assert not out.passed and out.offending_slices == [2] and out.value == pytest.approx(5.0)
    assert qc.check_lateral_drift(df.iloc[:0], t).passed


def test_thresholds_round_trip_and_validate() -> None:
    t = qc.QCThresholds()
    assert t.max_saturation_fraction == 0.005 and t.max_brightness_drift == 0.10
    assert t.max_lateral_drift_px == 2.0 and t.max_curtaining_score > 0
    assert qc.QCThresholds.from_dict(t.to_dict()) == t
    custom = qc.QCThresholds.from_dict({"max_lateral_drift_px": 3})
    assert custom.max_lateral_drift_px == 3.0 and custom.max_brightness_drift == 0.10
    with pytest.raises(ValueError, match="max_drift"):
        qc.QCThresholds.from_dict({"max_drift": 0.1})
    for bad in (0, -1.0, math.nan, math.inf, "0.1", True, None):
        with pytest.raises(ValueError, match="max_saturation_fraction"):
            qc.QCThresholds.from_dict({"max_saturation_fraction": bad})


def test_outcome_is_plain_data() -> None:
    out = _outcomes(())["saturation"]
    d = out.to_dict()
    assert set(d) == {
        "name",
        "passed",
        "value",
        "threshold",
        "offending_slices",
        "description",
        "details",
    }
    assert isinstance(d["value"], float) and isinstance(d["passed"], bool)
