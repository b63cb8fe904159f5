"""Scale of the region automation: the nightly backfill scan issues a fixed number of queries
whatever the number of regions (and requests exactly what the per-region scan did), and the
landing-zone sensor's cursor does not grow with the regions it has already added."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy import event
from sqlalchemy.engine import Engine

from benchmarks.partitions import per_region_scan
from fib_assets.definitions import defs
from fib_assets.defs import jobs
from fib_assets.defs.acquisitions.sensors import MAX_CURSOR_ADDED, landing_zone_sensor
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource

KEYS = [dg.AssetKey("raw_acquisition"), dg.AssetKey("raw_volume")]


@contextmanager
def counting_sql() -> Iterator[list[str]]:
    """Every SQL statement any SQLAlchemy engine (the instance's storages) executes."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # noqa: ANN001, ARG001
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _run(instance: dg.DagsterInstance, region: str, status: dg.DagsterRunStatus) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name="region_pipeline_job",
            run_id=str(uuid.uuid4()),
            tags={"dagster/partition": region},
            status=status,
        )
    )


def _populate(instance: dg.DagsterInstance, n: int) -> list[str]:
    """n regions in every state the scan distinguishes (by region index modulo 6)."""
    names = [f"r{i:04d}" for i in range(n)]
    instance.add_dynamic_partitions(regions.name, names)
    S = dg.DagsterRunStatus
    for i, r in enumerate(names):
        kind = i % 6
        if kind in (0, 1):  # complete (kind 1 also had a failed run long ago)
            if kind == 1:
                _run(instance, r, S.FAILURE)
            for k in KEYS:
                instance.report_runless_asset_event(dg.AssetMaterialization(k, partition=r))
        elif kind == 2:  # raw_volume missing, latest run failed -> left for a curator
            instance.report_runless_asset_event(dg.AssetMaterialization(KEYS[0], partition=r))
            _run(instance, r, S.FAILURE)
        elif kind == 3:  # never run -> todo
            pass
        elif kind == 4:  # a run in progress -> skipped
            _run(instance, r, S.FAILURE)
            _run(instance, r, S.STARTED)
        else:  # failed once, then succeeded without materializing everything -> todo
            _run(instance, r, S.FAILURE)
            _run(instance, r, S.SUCCESS)
    return names


@pytest.mark.parametrize("batch", [jobs.RUN_QUERY_BATCH, 7], ids=["default-batch", "batch-7"])
def test_nightly_scan_agrees_with_the_per_region_scan_with_a_fixed_number_of_queries(
    batch, monkeypatch
):
    monkeypatch.setattr(jobs, "RUN_QUERY_BATCH", batch)
    with dg.instance_for_test() as instance:
        names = _populate(instance, 60)
        with counting_sql() as reference_sql:
            expected = per_region_scan(instance, KEYS)
        with counting_sql() as batched_sql:
            got = jobs.regions_needing_work(instance, KEYS)
        assert got == expected
        todo, skipped = got
        assert todo == [r for i, r in enumerate(names) if i % 6 in (3, 5)]
        assert sorted(skipped) == [r for i, r in enumerate(names) if i % 6 in (2, 4)]
        assert all("in progress" in skipped[r] for i, r in enumerate(names) if i % 6 == 4)
        # 1 partition listing, 2 per asset (its wipe time, its materialized partitions) and
        # 1 per batch of candidate regions (40 of 60 here): independent of the region count
        batches = -(-40 // batch)
        queries = [q for q in batched_sql if not q.startswith("PRAGMA")]
        assert len(queries) == 1 + 2 * len(KEYS) + batches
        assert len(reference_sql) > 60 * len(KEYS)


def test_nightly_schedule_requests_the_same_runs_as_before(monkeypatch):
    repo = defs.get_repository_def()
    night = dt.datetime(2026, 12, 4, 2, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        _populate(instance, 24)
        ctx = dg.build_schedule_context(
            instance=instance, repository_def=repo, scheduled_execution_time=night
        )
        graph = repo.asset_graph
        keys = [
            k
            for k in graph.materializable_asset_keys
            if graph.get(k).partitions_def == regions
            and graph.get(k).group_name not in ("ground_truth", "provenance", "training")
        ]
        todo, _ = per_region_scan(instance, keys)
        requests = jobs.nightly_region_backfill(ctx)
        assert [(r.run_key, r.partition_key) for r in requests] == [
            (f"nightly-20261204-{r}", r) for r in todo
        ]
        # every region lacks the format variants: those whose latest run failed (kinds 1, 2)
        # or is in progress (kind 4) are left out
        assert len(todo) == 24 - 3 * 4


def _landing(root: Path, names: list[str]) -> None:
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "s_000000_0-0-0.dat").touch()
        meta = {"region": name, "sample_id": "s", "voxel_size_nm": {"z": 8, "y": 8, "x": 8}}
        (folder / "region.yaml").write_text(yaml.safe_dump({**meta, "n_files": 1}))


def test_sensor_cursor_keeps_only_pending_rejected_and_the_last_batch(tmp_path):
    landing = tmp_path / "landing"
    first = [f"r{i:04d}" for i in range(150)]
    _landing(landing, first)
    (landing / "Bad Name").mkdir()
    (landing / "r9999").mkdir()  # valid key, no region.yaml yet: pending
    storage = StorageResource(root=str(tmp_path / "storage"), landing_zone=str(landing))
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            ctx = dg.build_sensor_context(
                instance=instance, resources={"storage": storage}, cursor=cursor
            )
            result = landing_zone_sensor(ctx)
            assert isinstance(result, dg.SensorResult)
            for req in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(req.partitions_def_name, req.partition_keys)
            return result

        one = tick(None)
        assert len(one.run_requests) == 150
        cursor = json.loads(one.cursor)
        assert set(cursor) == {"last_added", "last_added_count", "rejected", "pending"}
        assert cursor["last_added"] == first[:MAX_CURSOR_ADDED]
        assert cursor["last_added_count"] == 150
        assert set(cursor["rejected"]) == {"Bad Name"} and set(cursor["pending"]) == {"r9999"}

        # nothing new: the cursor stays the same size however many regions are known
        two = tick(one.cursor)
        assert not two.run_requests and two.cursor == one.cursor

        more = [f"r{i:04d}" for i in range(150, 153)]
        _landing(landing, more)
        three = tick(two.cursor)
        assert [r.partition_key for r in three.run_requests] == more
        cursor = json.loads(three.cursor)
        assert cursor["last_added"] == more and cursor["last_added_count"] == 3
        assert len(three.cursor) < len(one.cursor) < 4096
        assert len(instance.get_dynamic_partitions(regions.name)) == 153
