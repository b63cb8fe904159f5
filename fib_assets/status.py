"""What the Dagster instance knows: per asset and region, materialization and check outcomes.

Read-only over the instance's event log; new asset families show up automatically because
assets and checks are taken from the definitions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter

from fib_assets.defs.partitions import regions


@dataclass
class CheckStatus:
    name: str
    status: str  # SUCCEEDED / FAILED / PLANNED / SKIPPED / "not run"
    severity: str | None = None
    description: str | None = None


@dataclass
class AssetStatus:
    asset: str
    partition: str | None
    materialized: bool
    data_version: str | None = None
    code_version: str | None = None
    uri: str | None = None
    run_id: str | None = None
    checks: list[CheckStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_status(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, partition: str | None
) -> CheckStatus:
    history = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    if not history:
        return CheckStatus(key.name, "not run")
    rec = history[0]
    ev = rec.evaluation
    status = rec.status.value
    severity = getattr(ev, "severity", None)
    description = getattr(ev, "description", None)
    if status == "PLANNED":
        # a planned check whose run finished without evaluating it was skipped (blocked upstream)
        run = instance.get_run_by_id(rec.run_id)
        if run is not None and run.is_finished:
            status = "SKIPPED"
    return CheckStatus(
        key.name,
        status,
        severity.value if severity is not None else None,
        description,
    )


def collect_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[AssetStatus]:
    graph = defs.resolve_asset_graph()
    partitions = instance.get_dynamic_partitions(regions.name or "regions")
    out: list[AssetStatus] = []
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        keys: list[str | None] = list(partitions) if node.partitions_def is not None else [None]
        check_keys = sorted(
            (ck for ck in graph.asset_check_keys if ck.asset_key == key), key=lambda c: c.name
        )
        for part in keys:
            flt = dg.AssetRecordsFilter(
                asset_key=key, asset_partitions=[part] if part is not None else None
            )
            recs = instance.fetch_materializations(flt, limit=1).records
            st = AssetStatus(key.to_user_string(), part, bool(recs))
            if recs:
                mat = recs[0].event_log_entry.asset_materialization
                assert mat is not None
                tags = mat.tags or {}
                st.data_version = tags.get("dagster/data_version")
                st.code_version = tags.get("dagster/code_version")
                uri = mat.metadata.get("dagster/uri")
                st.uri = str(uri.value) if uri is not None else None
                st.run_id = recs[0].run_id
            st.checks = [_check_status(instance, ck, part) for ck in check_keys]
            out.append(st)
    return out


def format_status(rows: list[AssetStatus]) -> str:
    lines = []
    for r in rows:
        mark = "materialized" if r.materialized else "missing"
        dv = (r.data_version or "")[:12]
        lines.append(f"{r.asset:<24} {r.partition or '-':<10} {mark:<13} {dv:<12} {r.uri or ''}")
        for c in r.checks:
            sev = f" [{c.severity}]" if c.severity else ""
            desc = f" — {c.description}" if c.description and c.status == "FAILED" else ""
            lines.append(f"    check {c.name:<22} {c.status}{sev}{desc}")
    return "\n".join(lines)
