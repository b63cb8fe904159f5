"""The acquisitions family on a real (temporary SQLite) Dagster instance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import zarr

from fib_assets.core.acquisition.dat import read_dat
from fib_assets.core.acquisition.region import source_files
from fib_assets.definitions import defs
from fib_assets.defs.acquisitions.sensors import landing_zone_sensor
from fib_assets.defs.partitions import regions
from fib_assets.status import collect_status
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialize


@pytest.fixture()
def landing(tmp_path, tiny_sample) -> Path:
    """A private copy of the tiny landing zone (tests may add folders to it)."""
    dst = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing", dst)
    return dst


@pytest.fixture()
def resources(tmp_path, landing):
    return code_location_resources(tmp_path, landing)


def test_sensor_adds_complete_valid_regions_and_reports_the_rest(landing, resources):
    (landing / "Bad Name").mkdir()
    (landing / "r009").mkdir()  # valid key, but no region.yaml yet: still arriving
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources, cursor=None)
        res = landing_zone_sensor(ctx)
        assert isinstance(res, dg.SensorResult)
        assert sorted(r.partition_key for r in res.run_requests) == ["r001", "r002"]
        (add,) = res.dynamic_partitions_requests
        assert sorted(add.partition_keys) == ["r001", "r002"]
        cursor = json.loads(res.cursor)
        assert (
            "Bad Name" in cursor["rejected"]
            and "invalid region key" in cursor["rejected"]["Bad Name"]
        )
        assert "r009" in cursor["pending"] and "region.yaml" in cursor["pending"]["r009"]

        # once registered, the same regions are not requested again
        instance.add_dynamic_partitions("regions", ["r001", "r002"])
        res2 = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert not res2.run_requests


def _materialize(instance, region, resources):
    instance.add_dynamic_partitions(regions.name, [region])
    return materialize(instance, resources, dg.AssetSelection.groups("acquisitions"), region)


def test_clean_region_end_to_end(landing, resources, tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "r001", resources)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {
            "slice_continuity": True,
            "source_files_readable": True,
            "saturation": True,
            "brightness_drift": True,
            "curtaining": True,
            "lateral_drift": True,
        }
        mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
        vol = mats["raw_volume"].materialization
        path = vol.metadata["dagster/uri"].value
        # the canonical volume equals the .dat pixels (+32768), read back by zarr independently
        files = source_files(landing / "r001")
        raw = zarr.open_group(path, mode="r")["raw/s0"]
        z = len(files) // 2
        _, pixels = read_dat(files[z])
        np.testing.assert_array_equal(np.asarray(raw[:, z]), pixels.astype(np.int32) + 32768)
        assert vol.tags["dagster/data_version"] == vol.metadata["checksum_sha256"].value

        # status reads the same facts back from the instance
        rows = {(r.asset, r.partition): r for r in collect_status(defs, instance)}
        assert rows[("raw_volume", "r001")].materialized
        assert rows[("raw_volume", "r001")].uri == path
        acq = {c.name: c.status for c in rows[("raw_acquisition", "r001")].checks}
        assert acq["slice_continuity"] == acq["source_files_readable"] == "SUCCEEDED"
        assert acq["source_fixity"] == "not run"  # scheduled weekly, not part of this run

        # rematerializing reuses the content-addressed container and keeps the data version
        again = _materialize(instance, "r001", resources)
        vol2 = {m.asset_key.to_user_string(): m for m in again.get_asset_materialization_events()}[
            "raw_volume"
        ].materialization
        assert vol2.metadata["reused_existing"].value is True
        assert vol2.tags["dagster/data_version"] == vol.tags["dagster/data_version"]


def test_blocking_check_stops_downstream_of_a_broken_region(resources):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "r002", resources)
        assert not result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not checks["slice_continuity"].passed
        assert not checks["source_files_readable"].passed
        assert "truncated" in checks["source_files_readable"].description
        materialized = {
            m.asset_key.to_user_string() for m in result.get_asset_materialization_events()
        }
        assert materialized == {"raw_acquisition"}
        instance.add_dynamic_partitions(regions.name, ["r001"])
        rows = {(r.asset, r.partition): r for r in collect_status(defs, instance)}
        assert not rows[("raw_volume", "r002")].materialized
        acq = {c.name: c.status for c in rows[("raw_acquisition", "r002")].checks}
        assert acq["slice_continuity"] == acq["source_files_readable"] == "FAILED"
        assert {c.status for c in rows[("raw_volume", "r002")].checks} <= {"SKIPPED", "not run"}
        # the clean region's checks are not mixed into the broken one's (per-partition checks)
        assert rows[("raw_acquisition", "r001")].checks[0].status == "not run"


def test_changed_sources_are_refused_until_reinventoried(landing, resources):
    with dg.instance_for_test() as instance:
        assert _materialize(instance, "r001", resources).success
        f = source_files(landing / "r001")[0]
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
        only_volume = materialize(instance, resources, ["raw_volume"], "r001")
        assert not only_volume.success
        failure = [e for e in only_volume.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "source files changed" in str(failure[0].event_specific_data.error.message)
