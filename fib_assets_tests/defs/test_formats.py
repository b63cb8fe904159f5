"""Format variants and the format benchmark on a real (temporary SQLite) instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter for h5py)
import numpy as np
import pandas as pd
import pytest
import zarr

from fib_assets.defs.partitions import regions
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialize

FORMATS = ["tiff", "hdf5", "zarr", "parquet", "n5"]


@pytest.fixture()
def resources(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing", landing)
    return code_location_resources(tmp_path, landing)


SMALL = {"ops": {fmt: {"config": {"chunk_size": 16}} for fmt in [f"volume_{f}" for f in FORMATS]}}


def test_variants_decode_to_canonical_and_corruption_fails_the_blocking_check(resources):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        res = materialize(
            instance,
            resources,
            dg.AssetSelection.groups("acquisitions", "formats"),
            "r001",
            run_config=SMALL,
        )
        assert res.success
        checks = {e.asset_key.to_user_string(): e for e in res.get_asset_check_evaluations()}
        for fmt in FORMATS:
            assert checks[f"volume_{fmt}"].passed, fmt
        mats = {
            m.asset_key.to_user_string(): m.materialization
            for m in res.get_asset_materialization_events()
        }
        canonical = np.asarray(
            zarr.open_group(mats["raw_volume"].metadata["dagster/uri"].value)["uint8/s0"]
        )
        h5 = Path(mats["volume_hdf5"].metadata["dagster/uri"].value)
        with h5py.File(h5) as f:  # an independent reader sees the canonical voxels
            np.testing.assert_array_equal(f["volume"][...], canonical)
            info = f["volume"].id.get_chunk_info(1)
        assert mats["volume_hdf5"].metadata["bytes_on_disk"].value > 0

        # corrupt one stored chunk: the rerun (which reuses the file) must fail its check
        with open(h5, "r+b") as fh:
            fh.seek(info.byte_offset)
            fh.write(b"\xde\xad\xbe\xef" * 8)
        only = {"ops": {"volume_hdf5": SMALL["ops"]["volume_hdf5"]}}
        again = materialize(
            instance, resources, dg.AssetSelection.assets("volume_hdf5"), "r001", only
        )
        assert not again.success  # blocking check failed
        (ev,) = again.get_asset_check_evaluations()
        assert not ev.passed
        errors = ev.metadata["errors"].value
        assert errors and h5.name in errors[0] and "chunk" in errors[0]


def test_format_benchmark_table(resources, tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001"])
        assert materialize(
            instance, resources, dg.AssetSelection.groups("acquisitions", "formats"), "r001", SMALL
        ).success
        cfg = {"ops": {"format_benchmark": {"config": {"repeats": 2, "patch": 16, "n_patches": 3}}}}
        res = materialize(
            instance, resources, dg.AssetSelection.assets("format_benchmark"), None, cfg
        )
        assert res.success
        (mat,) = res.get_asset_materialization_events()
        md = mat.materialization.metadata
        table = pd.read_parquet(md["dagster/uri"].value)
        assert set(table["format"]) == set(FORMATS)
        assert len(table) == len(FORMATS) * 6  # 5 access patterns + write, one region
        assert (table["median_s"] > 0).all() and (table["repeats"] == 2).all()
        assert md["regions_sampled"].value == ["r001"]
        assert "data:image/png;base64" in md["plot"].value
        (check,) = res.get_asset_check_evaluations()
        assert check.passed and check.metadata["evaluated_expectations"].value >= 10
