import numpy as np
import pandas as pd
import pytest

from fib_assets.core import benchmark
from fib_assets.core.geometry import Roi


def test_region_sample_is_seeded_random_and_order_independent():
    regions = [f"r{i:03d}" for i in range(50)]
    a = benchmark.sample_regions(regions, 5, seed=1)
    assert a == benchmark.sample_regions(list(reversed(regions)), 5, seed=1)
    assert a != benchmark.sample_regions(regions, 5, seed=2)
    assert a != regions[:5]  # not the first, hand-pickable ones
    assert benchmark.sample_regions(regions[:3], 5, seed=1) == regions[:3]


def test_patch_and_slice_rois_stay_inside_and_have_the_requested_size():
    shape = (40, 100, 120)
    vol = Roi((0, 0, 0), shape)
    patches = benchmark.random_patch_rois(shape, patch=32, n=20, seed=0)
    assert all(vol.contains(p) and p.shape == (32, 32, 32) for p in patches)
    small = benchmark.random_patch_rois((10, 10, 10), patch=96, n=2)
    assert all(p.shape == (10, 10, 10) for p in small)
    for axis in range(3):
        planes = benchmark.slice_rois(shape, axis, n=3)
        assert all(vol.contains(p) and p.shape[axis] == 1 for p in planes)
    scan = benchmark.scan_rois(shape, (16, 16, 16))
    assert sum(r.size for r in scan) == np.prod(shape)


def _table(n_regions=2):
    rows = []
    for r in range(n_regions):
        for f in ("zarr", "hdf5"):
            for p in (*benchmark.ACCESS_PATTERNS, "write"):
                m = benchmark.Measurement([0.1, 0.2, 0.15], 2**20, 4, "cold")
                rows.append(benchmark._row(f"r{r}", f, p, m, 1000, 0))
    return pd.DataFrame(rows, columns=benchmark.BENCHMARK_COLUMNS)


def test_great_expectations_suite_accepts_a_good_table_and_names_what_breaks():
    df = _table()
    ok = benchmark.validate_table(df, len(df))
    assert ok["success"] and ok["evaluated"] >= 10
    bad = df.copy()
    bad.loc[3, "mib_per_s"] = -1.0
    res = benchmark.validate_table(bad, len(df))
    assert not res["success"] and "expect_column_values_to_be_between" in res["failed"]
    dup = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    res = benchmark.validate_table(dup, len(df))
    assert "expect_compound_columns_to_be_unique" in res["failed"]
    assert "expect_table_row_count_to_equal" in res["failed"]


def test_summary_and_plot():
    df = _table()
    md = benchmark.summary_markdown(df)
    assert "| zarr |" in md and "random_patches" in md
    png = benchmark.plot_png(df)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_measurement_median_and_iqr():
    m = benchmark.Measurement([1.0, 2.0, 3.0, 4.0], 10, 1, "warm")
    assert m.median == pytest.approx(2.5)
    assert m.iqr == pytest.approx(np.percentile([1, 2, 3, 4], 75) - np.percentile([1, 2, 3, 4], 25))
