"""The Kubernetes instance's storage (``k8s/dagster.yaml``) on a real PostgreSQL server: a region
is materialized end to end, and its run, events and asset checks are read back with SQL and
with the instance API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from fib_assets.defs.deployment import K8S_INSTANCE_YAML
from fib_assets.defs.partitions import regions
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialize

pytestmark = pytest.mark.postgres


@pytest.fixture()
def pg_instance(postgres_server, monkeypatch):
    """A Dagster instance whose storage is the `storage` section of k8s/dagster.yaml, with the
    DAGSTER_PG_* variables pointing at the test server (as the chart's env would in-cluster)."""
    for key, value in postgres_server.env.items():
        monkeypatch.setenv(key, value)
    storage = yaml.safe_load(K8S_INSTANCE_YAML.read_text())["storage"]
    assert set(storage) == {"postgres"}
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        yield instance


def _materialize(instance, region: str, resources):
    instance.add_dynamic_partitions(regions.name, [region])
    return materialize(instance, resources, dg.AssetSelection.groups("acquisitions"), region)


def _rows(server, sql: str, *args):
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_region_materialized_on_postgres_is_recorded_in_postgres(
    pg_instance, postgres_server, tiny_sample, tmp_path
):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    landing = tmp_path / "landing"
    shutil.copytree(Path(tiny_sample) / "landing", landing)
    resources = code_location_resources(tmp_path, landing)

    clean = _materialize(pg_instance, "r001", resources)
    assert clean.success
    broken = _materialize(pg_instance, "r002", resources)  # dropped slices, truncated file
    assert not broken.success

    # --- straight from the database ------------------------------------------------------------
    runs = dict(_rows(postgres_server, "SELECT run_id, status FROM runs"))
    assert runs == {clean.run_id: "SUCCESS", broken.run_id: "FAILURE"}
    partitions = _rows(
        postgres_server,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
        regions.name,
    )
    assert sorted(p for (p,) in partitions) == ["r001", "r002"]
    materialized = _rows(
        postgres_server,
        "SELECT asset_key, partition, run_id FROM event_logs "
        "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id",
    )
    assert {(json.loads(k)[0], p, r) for k, p, r in materialized} == {
        ("raw_acquisition", "r001", clean.run_id),
        ("raw_volume", "r001", clean.run_id),
        ("raw_acquisition", "r002", broken.run_id),
    }
    step_events = _rows(
        postgres_server,
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_SUCCESS'",
        clean.run_id,
    )
    assert step_events[0][0] >= 2
    checks = _rows(
        postgres_server,
        "SELECT asset_key, check_name, partition, execution_status FROM asset_check_executions",
    )
    outcomes = {(json.loads(k)[0], c, p): s for k, c, p, s in checks}
    assert outcomes[("raw_acquisition", "slice_continuity", "r001")] == "SUCCEEDED"
    assert outcomes[("raw_volume", "lateral_drift", "r001")] == "SUCCEEDED"
    assert outcomes[("raw_acquisition", "slice_continuity", "r002")] == "FAILED"
    assert outcomes[("raw_acquisition", "source_files_readable", "r002")] == "FAILED"
    assert sum(s == "SUCCEEDED" for (_, _, p), s in outcomes.items() if p == "r001") == 6

    # --- the same facts through the instance API (what the UI shows) ---------------------------
    run = pg_instance.get_run_by_id(clean.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == "r001"
    records = pg_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_volume"), asset_partitions=["r001"]),
        limit=1,
    ).records
    mat = records[0].event_log_entry.asset_materialization
    assert mat.tags["dagster/data_version"] == mat.metadata["checksum_sha256"].value
    assert Path(mat.metadata["dagster/uri"].value).is_dir()
    history = pg_instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("raw_acquisition"), "source_files_readable"), limit=10
    )
    assert {h.run_id: h.status.value for h in history} == {
        clean.run_id: "SUCCEEDED",
        broken.run_id: "FAILED",
    }
