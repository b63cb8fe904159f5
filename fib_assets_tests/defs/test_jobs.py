"""Jobs per family and the nightly backfill schedule over dynamic region partitions."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg

from fib_assets.definitions import defs
from fib_assets.defs.jobs import nightly_region_backfill
from fib_assets.defs.partitions import regions
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialize


def test_each_family_has_a_job():
    names = {j.name for j in defs.jobs}
    assert {"acquisitions_job", "formats_job", "benchmarks_job", "region_pipeline_job"} <= names
    repo = defs.get_repository_def()
    sel = repo.get_job("acquisitions_job").asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in sel} == {"raw_acquisition", "raw_volume"}


def test_nightly_schedule_requests_new_regions_and_leaves_failed_ones(tmp_path, tiny_sample):
    assert nightly_region_backfill.default_status == dg.DefaultScheduleStatus.RUNNING
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing", landing)
    resources = code_location_resources(tmp_path, landing)
    repo = defs.get_repository_def()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, ["r001", "r002"])
        night = dt.datetime(2026, 11, 24, 2, tzinfo=dt.UTC)
        ctx = dg.build_schedule_context(
            instance=instance, repository_def=repo, scheduled_execution_time=night
        )
        reqs = nightly_region_backfill(ctx)
        assert sorted(r.partition_key for r in reqs) == ["r001", "r002"]
        assert reqs[0].run_key == "nightly-20261124-r001"

        # r002's blocking checks fail: the next night leaves it for a curator
        materialize(instance, resources, dg.AssetSelection.groups("acquisitions"), "r002")
        ctx = dg.build_schedule_context(
            instance=instance, repository_def=repo, scheduled_execution_time=night
        )
        reqs = nightly_region_backfill(ctx)
        assert [r.partition_key for r in reqs] == ["r001"]
