"""Partition scale on the local instance: the landing-zone sensor adding N region keys.

Measures, on a fresh instance in a temporary DAGSTER_HOME and a synthetic landing zone of N
complete region folders (a region.yaml and one empty .dat each; nothing is read but the
folder listing and the YAML, exactly as the real sensor does):

1. the first sensor tick (N new regions): wall time, Python peak memory, cursor size;
2. the daemon applying the tick's dynamic-partitions request, through the daemon's own code
   (one existence query per key, then one insert of the new keys);
3. a second tick with nothing new (the steady state every 30 s);
4. listing the partition keys (what the UI and every partition-aware call does);
5. creating run records for the tick's run requests (a sample of R, extrapolated to N): the
   storage side of what the daemon does per RunRequest;
6. the nightly backfill schedule's scan of every region (`regions_needing_work`, batched: one
   query per asset plus one per few hundred regions) against the per-region scan it replaced
   (:func:`per_region_scan`, run on a sample and extrapolated), with the SQL statements of each;
and the process's peak RSS, and the cursor size after a tick with nothing new. Results print
as a table (and JSON with --json).

    .venv/bin/python benchmarks/partitions.py                 # 10,000 regions, 200 runs
    .venv/bin/python benchmarks/partitions.py --regions 2000 --runs 100 --json out.json
    .venv/bin/python benchmarks/partitions.py --postgres-url postgresql://postgres@127.0.0.1:5432/bench

Numbers are for this machine's SQLite instance; k8s/README.md extrapolates them to Postgres
and to a 100 TB sample.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def make_landing_zone(root: Path, n: int) -> list[str]:
    keys = [f"r{i:06d}" for i in range(n)]
    for key in keys:
        folder = root / key
        folder.mkdir(parents=True)
        (folder / "s_000000_0-0-0.dat").touch()
        meta = {
            "region": key,
            "sample_id": "bench",
            "voxel_size_nm": {"z": 8, "y": 8, "x": 8},
            "n_files": 1,
        }
        (folder / "region.yaml").write_text(yaml.safe_dump(meta))
    return keys


def timed(fn: Callable[[], T], *, trace: bool = False) -> tuple[T, float, int]:
    """(result, seconds, Python peak bytes during fn when ``trace``)."""
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return out, seconds, peak


class _DaemonContextStub:
    """The two members of the daemon's SensorLaunchContext that applying requests uses."""

    def __init__(self) -> None:
        import logging

        self.logger = logging.getLogger("benchmark.sensor")
        self.results: list[Any] = []

    def add_dynamic_partitions_request_result(self, result: Any) -> None:
        self.results.append(result)


def apply_partition_requests(instance: Any, requests: list[Any]) -> None:
    """What the sensor daemon does with a tick's dynamic_partitions_requests."""
    try:
        from dagster._daemon.sensor import _handle_dynamic_partitions_requests
    except ImportError:  # internal API moved: the same logic, inline
        for req in requests:
            new = [
                k
                for k in req.partition_keys
                if not instance.has_dynamic_partition(req.partitions_def_name, k)
            ]
            instance.add_dynamic_partitions(req.partitions_def_name, new)
        return
    _handle_dynamic_partitions_requests(requests, instance, _DaemonContextStub())  # type: ignore[arg-type]


def per_region_scan(instance: Any, keys: list[Any]) -> tuple[list[str], dict[str, str]]:
    """The nightly scan before it was batched (one query per region per asset, one per region
    for its latest run): the reference the batched scan is measured and tested against."""
    import dagster as dg

    from fib_assets.defs.partitions import regions

    todo: list[str] = []
    skipped: dict[str, str] = {}
    for region in instance.get_dynamic_partitions(regions.name):
        missing = [
            k
            for k in keys
            if not instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=k, asset_partitions=[region]), limit=1
            ).records
        ]
        if not missing:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": region}), limit=1)
        if runs and runs[0].status == dg.DagsterRunStatus.FAILURE:
            skipped[region] = f"latest run {runs[0].run_id[:8]} failed; fix and rerun by hand"
        elif runs and not runs[0].is_finished:
            skipped[region] = f"run {runs[0].run_id[:8]} still in progress"
        else:
            todo.append(region)
    return todo, skipped


class SqlCounter:
    """Counts the SQL statements every SQLAlchemy engine executes (PRAGMAs excluded)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("PRAGMA"):
            self.statements.append(statement)

    def __enter__(self) -> SqlCounter:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._record)


def _instance(tmp_path: Path, postgres_url: str | None) -> Any:
    """The local embedded instance (SQLite in a fresh DAGSTER_HOME), or with --postgres-url
    the same with Postgres run/event/schedule storage (the k8s deployment's storage)."""
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if postgres_url:
        config += (
            "storage:\n  postgres:\n    postgres_url: "
            + json.dumps(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
            + "\n"
        )
    (home / "dagster.yaml").write_text(config)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


class _SampleInstance:
    """The instance, with only the first ``n`` region keys visible (to time a sample)."""

    def __init__(self, instance: Any, n: int) -> None:
        self._instance = instance
        self._n = n

    def get_dynamic_partitions(self, name: str) -> list[str]:
        return list(self._instance.get_dynamic_partitions(name))[: self._n]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._instance, attr)


def run(
    n_regions: int,
    n_runs: int,
    postgres_url: str | None = None,
    reference_sample: int = 1000,
) -> dict[str, Any]:
    import dagster as dg

    from fib_assets.defs import acquisitions
    from fib_assets.defs.acquisitions.sensors import landing_zone_sensor
    from fib_assets.defs.jobs import acquisitions_job, regions_needing_work
    from fib_assets.defs.partitions import regions
    from fib_assets.defs.resources import QCThresholdsResource, StorageResource

    results: dict[str, Any] = {"regions": n_regions, "runs_sampled": n_runs}
    with tempfile.TemporaryDirectory(prefix="fib-partitions-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        make_landing_zone(tmp_path / "landing", n_regions)
        results["setup_landing_zone_s"] = time.perf_counter() - t0
        storage = StorageResource(
            root=str(tmp_path / "storage"), landing_zone=str(tmp_path / "landing")
        )
        with _instance(tmp_path, postgres_url) as instance:
            results["run_storage"] = type(instance.run_storage).__name__

            def tick() -> Any:
                ctx = dg.build_sensor_context(instance=instance, resources={"storage": storage})
                return landing_zone_sensor(ctx)

            first, s, peak = timed(tick, trace=True)
            assert isinstance(first, dg.SensorResult)
            results["tick1_new_regions_s"] = s
            results["tick1_python_peak_mib"] = peak / 2**20
            results["tick1_run_requests"] = len(first.run_requests or [])
            results["tick1_cursor_kib"] = len((first.cursor or "").encode()) / 1024

            _, s, _ = timed(
                lambda: apply_partition_requests(
                    instance, list(first.dynamic_partitions_requests or [])
                )
            )
            results["daemon_add_partitions_s"] = s
            results["daemon_add_partitions_ms_per_key"] = 1000 * s / max(n_regions, 1)

            def tick_after_first() -> Any:
                ctx = dg.build_sensor_context(
                    instance=instance, resources={"storage": storage}, cursor=first.cursor
                )
                return landing_zone_sensor(ctx)

            second, s, _ = timed(tick_after_first)
            results["tick2_nothing_new_s"] = s
            results["tick2_cursor_kib"] = len((second.cursor or "").encode()) / 1024
            assert not getattr(second, "run_requests", None)

            keys, s, _ = timed(lambda: instance.get_dynamic_partitions(regions.name))
            assert len(keys) == n_regions
            results["list_partition_keys_s"] = s
            _, s, _ = timed(lambda: regions.get_partition_keys(dynamic_partitions_store=instance))
            results["partitions_def_keys_s"] = s

            # run records for a sample of the run requests (job + plan snapshots are shared)
            defs = dg.Definitions(
                assets=[
                    a for a in acquisitions.defs.assets or [] if isinstance(a, dg.AssetsDefinition)
                ],
                jobs=[acquisitions_job],
                resources={"storage": storage, "qc_thresholds": QCThresholdsResource()},
            )
            job = defs.get_job_def("acquisitions_job")
            sample = keys[:n_runs]

            def create_runs() -> None:
                for key in sample:
                    instance.create_run_for_job(
                        job_def=job,
                        tags={"dagster/partition": key, "dagster/sensor_name": "landing"},
                    )

            _, s, _ = timed(create_runs)
            results["create_run_ms_each"] = 1000 * s / max(len(sample), 1)
            results["create_runs_extrapolated_s"] = s / max(len(sample), 1) * n_regions

            asset_keys = [dg.AssetKey("raw_acquisition"), dg.AssetKey("raw_volume")]
            with SqlCounter() as sql:
                (todo, skipped), s, _ = timed(lambda: regions_needing_work(instance, asset_keys))
            results["nightly_scan_s"] = s
            results["nightly_scan_sql_statements"] = len(sql.statements)
            results["nightly_scan_todo"] = len(todo)
            results["nightly_scan_skipped_in_progress"] = len(skipped)
            # the per-region scan it replaced, on a sample of regions, extrapolated to N
            sample_n = min(n_regions, reference_sample)
            with SqlCounter() as sql:
                (ref_todo, ref_skipped), s, _ = timed(
                    lambda: per_region_scan(_SampleInstance(instance, sample_n), asset_keys)
                )
            assert ref_todo == todo[: len(ref_todo)]
            results["per_region_scan_sample"] = sample_n
            results["per_region_scan_extrapolated_s"] = s / max(sample_n, 1) * n_regions
            results["per_region_scan_sql_statements_extrapolated"] = round(
                len(sql.statements) / max(sample_n, 1) * n_regions
            )
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")  # preview/deprecation notices of the definitions
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regions", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=200, help="run records to create (a sample)")
    p.add_argument(
        "--reference-sample",
        type=int,
        default=1000,
        help="regions the old per-region nightly scan is timed on (extrapolated to N)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--postgres-url",
        help="postgresql://user@host:port/db of an empty database to use instead of SQLite",
    )
    args = p.parse_args(argv)
    results = run(args.regions, args.runs, args.postgres_url, args.reference_sample)
    width = max(len(k) for k in results)
    for key, value in results.items():
        if isinstance(value, float):
            shown = f"{value:,.3f}"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
