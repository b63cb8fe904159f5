"""Benchmark tables of the curator loop: price table, bootstrap CIs, gains, costs, GX suites."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fib_assets.core import tables
from fib_assets.core.tables import (
    ComputeRun,
    InterventionCost,
    PriceTableError,
    bootstrap_ci,
    infrastructure_of,
    load_price_table,
)


def test_packaged_price_table_loads_and_every_rate_names_its_source() -> None:
    prices = load_price_table(tables.DEFAULT_PRICES)
    assert prices.currency == "USD"
    assert prices.rates
    assert all(r.source for r in prices.rates)
    # a known rate resolves; an ambiguous question (cloud_gpu on demand, no instance) has none
    g5 = prices.rate("cloud_gpu", "on_demand", "g5.xlarge")
    assert g5 is not None and g5.usd_per_hour is not None and g5.gpus == 1
    assert prices.rate("cloud_gpu", "on_demand", None) is None
    assert prices.rate("local_cpu", "owned", None) is not None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"tier": "owned", "instance_type": "x", "source": "s", "usd_per_hour": 1}, "missing"),
        (
            {"infrastructure": "moon", "tier": "owned", "instance_type": "x", "source": "s",
             "usd_per_hour": 1},
            "not in",
        ),
        (
            {"infrastructure": "local_cpu", "tier": "cheap", "instance_type": "x", "source": "s",
             "usd_per_hour": 1},
            "not in",
        ),
        (
            {"infrastructure": "local_cpu", "tier": "owned", "instance_type": "x", "source": "s",
             "usd_per_hour": -1},
            ">= 0",
        ),
        (
            {"infrastructure": "local_cpu", "tier": "owned", "instance_type": "x", "source": " ",
             "usd_per_hour": 1},
            "source",
        ),
    ],
    ids=["missing-infrastructure", "bad-infrastructure", "bad-tier", "negative", "no-source"],
)  # fmt: skip
def test_bad_price_tables_name_the_file_and_entry(
    tmp_path: Path, entry: dict[str, object], problem: str
) -> None:
    import yaml

    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"currency": "USD", "date": "2026-01-01", "rates": [entry]}))
    with pytest.raises(PriceTableError, match=problem) as err:
        load_price_table(path)
    assert str(path) in str(err.value) and "rates[0]" in str(err.value)


def test_duplicate_rates_and_missing_file_are_errors(tmp_path: Path) -> None:
    import yaml

    rate = {"infrastructure": "local_cpu", "tier": "owned", "instance_type": "x", "source": "s",
            "usd_per_hour": 1}  # fmt: skip
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"currency": "USD", "date": "d", "rates": [rate, rate]}))
    with pytest.raises(PriceTableError, match="duplicate"):
        load_price_table(path)
    with pytest.raises(PriceTableError, match="not found"):
        load_price_table(tmp_path / "nope.yaml")


def test_infrastructure_comes_from_the_process_never_guessed() -> None:
    assert infrastructure_of("cpu", "local", {})["infrastructure"] == "local_cpu"
    assert infrastructure_of("cuda:0", "local", {})["infrastructure"] == "local_gpu"
    # a Kubernetes step whose operator did not declare the infrastructure stays unknown
    assert infrastructure_of("cuda:0", "k8s", {})["infrastructure"] == "unknown"
    declared = infrastructure_of(
        "cuda:0",
        "k8s",
        {
            "FIB_ASSETS_INFRASTRUCTURE": "cloud_gpu",
            "FIB_ASSETS_PRICE_TIER": "spot",
            "FIB_ASSETS_INSTANCE_TYPE": "g5.xlarge",
        },
    )
    assert declared == {
        "infrastructure": "cloud_gpu",
        "price_tier": "spot",
        "instance_type": "g5.xlarge",
    }
    with pytest.raises(ValueError, match="FIB_ASSETS_INFRASTRUCTURE"):
        infrastructure_of("cpu", "k8s", {"FIB_ASSETS_INFRASTRUCTURE": "mainframe"})


def _naive_bootstrap(values: np.ndarray, seed: int, n: int = 4000) -> tuple[float, float]:
    """Independent reference: resample with numpy, take percentiles of the means."""
    rng = np.random.default_rng(seed + 1000)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_ci_agrees_with_a_naive_resampler(seed: int) -> None:
    values = np.random.default_rng(seed).normal(0.7, 0.1, size=25)
    mean, lo, hi = bootstrap_ci(list(values), seed=seed, n_resamples=4000)
    ref_lo, ref_hi = _naive_bootstrap(values, seed)
    assert mean == pytest.approx(values.mean())
    assert lo <= mean <= hi
    # two independent Monte-Carlo estimates of the same percentiles
    assert lo == pytest.approx(ref_lo, abs=0.01)
    assert hi == pytest.approx(ref_hi, abs=0.01)
    # the interval is about 2 x 1.96 standard errors wide
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci([0.5], seed=0) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.5, 0.5, 0.5], seed=0) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.2, float("nan"), 0.4], seed=0)[0] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        bootstrap_ci([float("nan")], seed=0)


def _evaluation(regions: list[str], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for region in regions:
        for exp, intervention, shift in (("scratch", "none", 0.0), ("clahe", "preprocessing", 0.1)):
            for org in ("mito", "er"):
                d = float(np.clip(rng.normal(0.6 + shift, 0.05), 0, 1))
                rows.append(
                    {
                        "region": region,
                        "experiment": exp,
                        "organelle": org,
                        "curator_intervention": intervention,
                        "ground_truth_revision": 1,
                        "n_crops": 2,
                        "true_voxels": 100,
                        "predicted_voxels": 90,
                        "true_instances": 3,
                        "predicted_instances": 4,
                        "dice": d,
                        "iou": d / (2 - d),
                        "precision": d,
                        "recall": d,
                        "dice_tolerance": min(1.0, d + 0.1),
                        "dice_band": d,
                        "hausdorff_nm": 120.0,
                        "hausdorff95_nm": 80.0 + 10 * shift,
                        "instance_f1": d,
                        "cellmap_score": d,
                    }  # fmt: skip
                )
    return pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS)


def test_segmentation_table_means_match_pandas_and_gx_accepts_it() -> None:
    ev = _evaluation(["r1", "r2", "r3", "r4"], np.random.default_rng(0))
    seg = tables.segmentation_table(ev, ["r1", "r3", "r4"], seed=3)
    ref = ev[ev.region.isin(["r1", "r3", "r4"])].groupby(["experiment", "organelle"])["dice"].mean()
    dice = seg[seg.metric == "dice"].set_index(["experiment", "organelle"])["mean"]
    pd.testing.assert_series_equal(dice.sort_index(), ref.sort_index(), check_names=False)
    assert set(seg["n_regions"]) == {3}
    assert (seg["ci_low"] <= seg["mean"]).all() and (seg["mean"] <= seg["ci_high"]).all()
    assert tables.validate_segmentation(seg, 3)["success"]
    # a table covering fewer regions than the sample asked for fails the check
    assert not tables.validate_segmentation(seg, 4)["success"]
    # a broken CI fails it too
    bad = seg.copy()
    bad.loc[0, "ci_low"] = bad.loc[0, "mean"] + 0.1
    assert not tables.validate_segmentation(bad, 3)["success"]
    with pytest.raises(ValueError, match="r9"):
        tables.segmentation_table(ev, ["r1", "r9"], seed=0)


def test_evaluation_suite_requires_every_expected_region() -> None:
    ev = _evaluation(["r1", "r2"], np.random.default_rng(1))
    assert tables.validate_evaluation(ev, ["r1", "r2"])["success"]
    out = tables.validate_evaluation(ev, ["r1", "r2", "r3"])
    assert not out["success"]
    dup = pd.concat([ev, ev.iloc[:1]], ignore_index=True)
    assert (
        "expect_compound_columns_to_be_unique"
        in tables.validate_evaluation(dup, ["r1", "r2"])["failed"]
    )
    bad = ev.copy()
    bad.loc[0, "dice"] = 1.5
    assert not tables.validate_evaluation(bad, ["r1", "r2"])["success"]


def test_intervention_gain_per_hour() -> None:
    ev = _evaluation(["r1", "r2", "r3"], np.random.default_rng(2))
    seg = tables.segmentation_table(ev, ["r1", "r2", "r3"], seed=0)
    costs = [
        InterventionCost("scratch", "none", None, 0.0, 0.1, "cpu"),
        InterventionCost("clahe", "preprocessing", "scratch", 30.0, 0.2, "cpu"),
    ]
    out = tables.intervention_table(seg, costs)
    assert list(out["experiment"]) == ["clahe", "clahe"]
    mean = seg[seg.metric == "dice"].set_index(["experiment", "organelle"])["mean"]
    mito = out.set_index("organelle").loc["mito"]
    assert mito["gain"] == pytest.approx(mean[("clahe", "mito")] - mean[("scratch", "mito")])
    assert mito["gain_per_curator_hour"] == pytest.approx(mito["gain"] / 0.5)
    assert mito["gain_per_device_hour"] == pytest.approx(mito["gain"] / 0.2)
    assert tables.validate_intervention(out, 3)["success"]
    # lower-is-better metrics gain when they fall
    hd = tables.intervention_table(seg, costs, metric="hausdorff95_nm")
    assert (hd["gain"] < 0).all()  # clahe's synthetic Hausdorff is 1 nm worse
    free = tables.intervention_table(
        seg, [InterventionCost("clahe", "preprocessing", "scratch", 0.0, 0.0, "cpu")]
    )
    assert free["gain_per_curator_hour"].isna().all()


def test_infrastructure_costs_come_from_the_table_or_stay_unknown() -> None:
    prices = load_price_table()
    runs = [
        ComputeRun("a", "organelle_model", "exp", "training", "exp", "cpu", 1800.0,
                   "local_cpu", "owned", "workstation"),
        ComputeRun("b", "organelle_model", "exp", "training", "exp", "cuda", 3600.0,
                   "cloud_gpu", "spot", "g5.xlarge"),
        ComputeRun("c", "predictions", "r1", "inference", "exp", "cuda", 7200.0,
                   "cloud_gpu", "on_demand", "g5.xlarge"),
    ]  # fmt: skip
    df = tables.infrastructure_table(runs, prices).set_index("run_id")
    local = prices.rate("local_cpu", "owned", "workstation")
    g5 = prices.rate("cloud_gpu", "on_demand", "g5.xlarge")
    assert local is not None and g5 is not None and g5.usd_per_hour is not None
    assert df.loc["a", "cost_usd"] == pytest.approx(0.5 * (local.usd_per_hour or 0))
    assert math.isnan(df.loc["b", "cost_usd"]) and "no rate" in df.loc["b", "price_source"]
    assert df.loc["c", "cost_usd"] == pytest.approx(2 * g5.usd_per_hour)
    assert df.loc["c", "device_hours"] == pytest.approx(2.0)
    table = df.reset_index()[tables.INFRASTRUCTURE_COLUMNS]
    assert tables.validate_infrastructure(table, tables.INFRASTRUCTURES)["success"]
    assert not tables.validate_infrastructure(table, ["local_cpu"])["success"]


def test_markdown_and_plots() -> None:
    ev = _evaluation(["r1", "r2"], np.random.default_rng(3))
    seg = tables.segmentation_table(ev, ["r1", "r2"], seed=0)
    md = tables.markdown_table(seg, ["experiment", "organelle", "metric", "mean"])
    assert md.count("\n") == len(seg) + 1 and "| clahe | er | dice |" in md
    png = tables.plot_intervals(
        seg[seg.metric == "dice"], label=["experiment", "organelle"], value="mean",
        low="ci_low", high="ci_high", title="Dice",
    )  # fmt: skip
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
