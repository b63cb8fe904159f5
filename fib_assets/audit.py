"""Provenance audit over the Dagster instance: from an asset partition back to its raw files.

Read-only over the event log, like ``fib_assets.status``. The asset graph (what depends on
what, code versions now, partition mappings) comes from the definitions; the facts (which
materialization, data and code version, run id, time, inputs used, check results) come from the
event log, partition by partition; the raw source files are re-hashed against the sha256
manifest their root materialization recorded. The rules that turn facts into flags live in the
pure :mod:`fib_assets.core.provenance.audit`.

Which upstream versions a materialization used is read from, in order of preference,
  1. its ``upstream`` metadata written by :func:`upstream_provenance` (per partition: data
     version, storage id, time), and
  2. Dagster's ``dagster/input_data_version/<key>`` tag, which for a partitioned dependency is
     the sha256 of the mapped partitions' data versions (see the core module), compared with
     the same hash of the partitions' current versions.
``upstream_newer`` compares each upstream partition's latest materialization time with the
downstream's, so it works with either.

Also here: the bodies of the ``fib-assets audit`` and ``fib-assets deposit`` commands.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from fib_assets.core.provenance.audit import (
    CHECK_FAILED,
    CHECK_MISSING,
    CHECK_NOT_RUN,
    CHECK_OUTDATED,
    CHECK_SKIPPED,
    CHECK_SUCCEEDED,
    AuditReport,
    CheckResult,
    FixityResult,
    Link,
    UpstreamUse,
    link_id,
)
from fib_assets.core.provenance.fixity import verify_sources

UPSTREAM_METADATA_KEY = "upstream"
ENVIRONMENT_METADATA_KEY = "environment"
MAX_UPSTREAM_PARTITIONS = 100
# run config values under keys like these never reach a report
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|api_key", re.IGNORECASE)
# packages whose versions are recorded with every materialization that uses them
ENVIRONMENT_PACKAGES = (
    "dagster", "numpy", "zarr", "tensorstore", "tifffile", "h5py", "hdf5plugin", "pyarrow",
    "pandas", "scipy", "scikit-image", "torch", "bagit", "rocrate", "fib_assets",
)  # fmt: skip


class AuditError(ValueError):
    """The audit cannot start: unknown asset, missing or unknown partition key."""


def asset_graph_of(context: dg.AssetExecutionContext) -> AssetGraph:
    """The whole asset graph of the code location an executing asset belongs to.

    Runs launched from a code location carry their repository; in-process runs
    (``dg.materialize``, the CLI's ``deposit``) do not, and their job graph holds only the
    selected assets, so the code location's definitions are loaded instead."""
    try:
        return context.repository_def.asset_graph
    except Exception:  # dagster raises a CheckError when no repository is set
        from fib_assets.definitions import defs  # lazy: definitions imports this package

        graph = defs.resolve_asset_graph()
    if graph.has(context.asset_key):
        return graph
    # an asset not (yet) wired into the code location: add it to the location's graph
    own = context.assets_def
    others = [ad for ad in graph.assets_defs if not set(ad.keys) & set(own.keys)]
    return AssetGraph.from_assets([*others, own])


def _graph(defs: dg.Definitions | AssetGraph) -> AssetGraph:
    return defs.resolve_asset_graph() if isinstance(defs, dg.Definitions) else defs


def _latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> dg.EventLogRecord | None:
    flt = dg.AssetRecordsFilter(
        asset_key=key, asset_partitions=[partition] if partition is not None else None
    )
    recs = instance.fetch_materializations(flt, limit=1).records
    return recs[0] if recs else None


def _mat(rec: dg.EventLogRecord) -> dg.AssetMaterialization:
    mat = rec.event_log_entry.asset_materialization
    assert mat is not None
    return mat


def _meta(mat: dg.AssetMaterialization) -> dict[str, Any]:
    return {k: v.value for k, v in mat.metadata.items()}


def mapped_partitions(
    graph: AssetGraph,
    instance: dg.DagsterInstance,
    child: dg.AssetKey,
    partition: str | None,
    parent: dg.AssetKey,
) -> list[str | None]:
    """The parent partitions ``child[partition]`` depends on (``[None]`` when the parent is
    unpartitioned), through the definitions' partition mapping."""
    parent_def = graph.get(parent).partitions_def
    if parent_def is None:
        return [None]
    child_def = graph.get(child).partitions_def
    mapping = graph.get_partition_mapping(child, parent)
    subset = (
        child_def.empty_subset().with_partition_keys([partition])
        if child_def is not None and partition is not None
        else None
    )
    res = mapping.get_upstream_mapped_partitions_result_for_partitions(
        subset, child_def, parent_def, dynamic_partitions_store=instance
    )
    return [*sorted(res.partitions_subset.get_partition_keys())]


def _recorded_upstream(meta: dict[str, Any], parent: str) -> dict[str, str] | None:
    """``{partition or "": data_version}`` from fib_assets' own ``upstream`` metadata."""
    up = meta.get(UPSTREAM_METADATA_KEY)
    if not isinstance(up, dict) or parent not in up:
        return None
    entries = up[parent]
    if isinstance(entries, dict):
        entries = [entries]
    out: dict[str, str] = {}
    for e in entries or []:
        if isinstance(e, dict) and e.get("data_version"):
            out[str(e.get("partition") or "")] = str(e["data_version"])
    return out


def _check_results(
    instance: dg.DagsterInstance,
    graph: AssetGraph,
    key: dg.AssetKey,
    partition: str | None,
    rec: dg.EventLogRecord | None,
) -> tuple[CheckResult, ...]:
    node_def = graph.get(key).assets_def
    out = []
    for ck in sorted((c for c in graph.asset_check_keys if c.asset_key == key), key=str):
        try:
            in_op = graph.assets_def_for_key(ck) is node_def
        except KeyError:
            in_op = True
        flt = PartitionKeyFilter(key=partition)
        done = instance.event_log_storage.get_asset_check_execution_history(
            ck,
            limit=1,
            status={
                AssetCheckExecutionRecordStatus.SUCCEEDED,
                AssetCheckExecutionRecordStatus.FAILED,
            },
            partition_filter=flt,
        )
        if not done:
            planned = instance.event_log_storage.get_asset_check_execution_history(
                ck, limit=1, partition_filter=flt
            )
            if planned:
                status = CHECK_SKIPPED
                run = instance.get_run_by_id(planned[0].run_id)
                if run is not None and not run.is_finished:
                    status = "PLANNED"
                out.append(
                    CheckResult(ck.name, status, run_id=planned[0].run_id, in_materialization=in_op)
                )
            else:
                out.append(
                    CheckResult(
                        ck.name, CHECK_MISSING if in_op else CHECK_NOT_RUN, in_materialization=in_op
                    )
                )
            continue
        r = done[0]
        ev = r.evaluation
        status = CHECK_SUCCEEDED if r.status.value == "SUCCEEDED" else CHECK_FAILED
        target = ev.target_materialization_data if ev is not None else None
        if rec is not None and (target is None or target.storage_id < rec.storage_id):
            status = CHECK_OUTDATED
        severity = getattr(ev, "severity", None)
        out.append(
            CheckResult(
                ck.name,
                status,
                severity=severity.value if severity is not None else None,
                description=getattr(ev, "description", None),
                run_id=r.run_id,
                timestamp=r.event.timestamp if r.event is not None else None,
                in_materialization=in_op,
            )
        )
    return tuple(out)


def fixity_of_metadata(meta: dict[str, Any], verify: bool) -> FixityResult | None:
    """Re-verify the source files of a root materialization against its sha256 manifest
    (metadata ``manifest`` = location of the manifest, a path or an ``s3://`` object;
    ``source`` = folder of the files)."""
    manifest, source = meta.get("manifest"), meta.get("source")
    if not manifest or not source:
        return None
    expected = meta.get("manifest_sha256")
    return verify_sources(
        str(manifest),
        str(source),
        expected_manifest_sha256=str(expected) if expected else None,
        verify=verify,
    )


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if _SECRET_KEY.search(str(k)) else _redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def _run_config(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> dict[str, Any]:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return {}
    run_config: dict[str, Any] = dict(run.run_config or {})
    ops: dict[str, Any] = dict(run_config.get("ops") or {})
    for name in (key.to_python_identifier(), key.path[-1]):
        if name in ops:
            cfg = ops[name].get("config", ops[name]) if isinstance(ops[name], dict) else {}
            return dict(_redact(cfg))
    return {}


def audit_link(
    graph: AssetGraph,
    instance: dg.DagsterInstance,
    key: dg.AssetKey,
    partition: str | None,
    *,
    verify_fixity: bool = True,
    max_upstream_partitions: int = MAX_UPSTREAM_PARTITIONS,
) -> tuple[Link, list[tuple[dg.AssetKey, str | None]]]:
    """The facts of one asset partition, and the upstream partitions to walk next."""
    node = graph.get(key)
    parents = sorted(node.parent_keys, key=lambda k: k.to_user_string())
    parents = [p for p in parents if graph.has(p)]
    rec = _latest(instance, key, partition)
    asset = key.to_user_string()
    if rec is None:
        nxt = []
        for parent in parents:
            nxt += [
                (parent, p) for p in mapped_partitions(graph, instance, key, partition, parent)
            ][:max_upstream_partitions]
        return (
            Link(
                asset, partition, False, current_code_version=node.code_version, is_root=not parents
            ),
            nxt,
        )
    mat = _mat(rec)
    tags = dict(mat.tags or {})
    meta = _meta(mat)
    ups: list[UpstreamUse] = []
    walk: list[tuple[dg.AssetKey, str | None]] = []
    notes: list[str] = []
    for parent in parents:
        pname = parent.to_user_string()
        recorded = _recorded_upstream(meta, pname)
        if recorded:
            parts: list[str | None] = [p or None for p in sorted(recorded)]
        else:
            parts = mapped_partitions(graph, instance, key, partition, parent)
        truncated = len(parts) > max_upstream_partitions
        if truncated:
            notes.append(
                f"{link_id(asset, partition)} depends on {len(parts)} partitions of {pname}; "
                f"the audit walks the first {max_upstream_partitions}"
            )
            parts = parts[:max_upstream_partitions]
        current_v: dict[str, str | None] = {}
        current_t: dict[str, float | None] = {}
        for p in parts:
            urec = _latest(instance, parent, p)
            current_v[p or ""] = (
                (_mat(urec).tags or {}).get("dagster/data_version") if urec else None
            )
            current_t[p or ""] = urec.timestamp if urec else None
            walk.append((parent, p))
        used = tags.get(f"dagster/input_data_version/{pname}")
        source = "fib_assets" if recorded else ("dagster" if used else "none")
        ups.append(
            UpstreamUse(
                asset=pname,
                partitions=tuple(p for p in parts if p is not None),
                used_version=used,
                used_versions=recorded,
                provenance_source=source,
                current_versions=current_v,
                current_timestamps=current_t,
                truncated=truncated,
            )
        )
    libs: dict[str, Any] = {}
    if isinstance(meta.get("library_versions"), dict):
        libs.update(meta["library_versions"])
    env = meta.get(ENVIRONMENT_METADATA_KEY)
    if isinstance(env, dict) and isinstance(env.get("packages"), dict):
        libs.update(env["packages"])
    uri = meta.get("dagster/uri")
    fixity = fixity_of_metadata(meta, verify_fixity)
    if fixity is not None and not verify_fixity:
        notes.append(f"{link_id(asset, partition)}: source files not re-hashed (fixity off)")
    link = Link(
        asset=asset,
        partition=partition,
        materialized=True,
        data_version=tags.get("dagster/data_version"),
        code_version=tags.get("dagster/code_version"),
        current_code_version=node.code_version,
        run_id=rec.run_id,
        timestamp=rec.timestamp,
        storage_id=rec.storage_id,
        uri=str(uri) if uri is not None else None,
        config=_run_config(instance, rec.run_id, key),
        library_versions=libs,
        upstream=tuple(ups),
        checks=_check_results(instance, graph, key, partition, rec),
        fixity=fixity,
        is_root=not parents,
        notes=tuple(notes),
    )
    return link, walk


def _validate_target(
    graph: AssetGraph, instance: dg.DagsterInstance, asset: str, partition: str | None
) -> dg.AssetKey:
    key = dg.AssetKey.from_user_string(asset)
    if not graph.has(key):
        names = sorted(k.to_user_string() for k in graph.materializable_asset_keys)
        raise AuditError(f"unknown asset {asset!r}; assets: {', '.join(names)}")
    pdef = graph.get(key).partitions_def
    if pdef is None and partition is not None:
        raise AuditError(f"{asset} is not partitioned: drop --partition {partition!r}")
    if pdef is not None:
        if partition is None:
            raise AuditError(f"{asset} is partitioned: give a partition key (--partition)")
        with partition_loading_context(dynamic_partitions_store=instance):
            known = pdef.has_partition_key(partition)
        if not known:
            raise AuditError(f"{asset} has no partition {partition!r} on this instance")
    return key


def run_audit(
    defs: dg.Definitions | AssetGraph,
    instance: dg.DagsterInstance,
    asset: str,
    partition: str | None = None,
    *,
    verify_fixity: bool = True,
    max_upstream_partitions: int = MAX_UPSTREAM_PARTITIONS,
) -> AuditReport:
    """Walk the lineage of ``asset[partition]`` upstream to its roots and audit every link."""
    return run_audits(
        defs,
        instance,
        [(asset, partition)],
        verify_fixity=verify_fixity,
        max_upstream_partitions=max_upstream_partitions,
    )


def run_audits(
    defs: dg.Definitions | AssetGraph,
    instance: dg.DagsterInstance,
    targets: Sequence[tuple[str, str | None]],
    *,
    verify_fixity: bool = True,
    max_upstream_partitions: int = MAX_UPSTREAM_PARTITIONS,
) -> AuditReport:
    """One report over several targets; shared upstream links are walked once."""
    graph = _graph(defs)
    keys = [(_validate_target(graph, instance, a, p), p) for a, p in targets]
    queue = deque(keys)
    seen: set[tuple[dg.AssetKey, str | None]] = set()
    links: list[Link] = []
    notes: list[str] = []
    while queue:
        key, part = queue.popleft()
        if (key, part) in seen:
            continue
        seen.add((key, part))
        link, nxt = audit_link(
            graph,
            instance,
            key,
            part,
            verify_fixity=verify_fixity,
            max_upstream_partitions=max_upstream_partitions,
        )
        links.append(link)
        notes += link.notes
        queue.extend(n for n in nxt if n not in seen)
    return AuditReport.build(
        [link_id(k.to_user_string(), p) for k, p in keys], links, notes=list(dict.fromkeys(notes))
    )


# ---------------------------------------------------------------------------------------------
# provenance written by assets (proposed for every asset's metadata)


def upstream_provenance(
    context: dg.AssetExecutionContext, *, max_partitions: int = MAX_UPSTREAM_PARTITIONS
) -> dict[str, list[dict[str, Any]]]:
    """What this materialization is about to use, per upstream asset and partition: data
    version, storage id and time of the upstream's latest materialization. Put it in the
    asset's metadata under ``upstream`` (``dg.MetadataValue.json``) so audits can compare per
    partition, which Dagster's hashed ``input_data_version`` tag cannot."""
    graph = asset_graph_of(context)
    key = context.asset_key
    partition = context.partition_key if context.has_partition_key else None
    out: dict[str, list[dict[str, Any]]] = {}
    for parent in sorted(graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
        if not graph.has(parent):
            continue
        entries = []
        parts = mapped_partitions(graph, context.instance, key, partition, parent)
        for p in parts[:max_partitions]:
            rec = _latest(context.instance, parent, p)
            entries.append(
                {
                    "partition": p,
                    "data_version": (_mat(rec).tags or {}).get("dagster/data_version")
                    if rec
                    else None,
                    "storage_id": rec.storage_id if rec else None,
                    "timestamp": rec.timestamp if rec else None,
                }
            )
        out[parent.to_user_string()] = entries
    return out


def selected_upstream(
    instance: dg.DagsterInstance, used: Sequence[tuple[str, str | None]]
) -> dict[str, list[dict[str, Any]]]:
    """``upstream`` metadata for an asset that chooses its inputs by config (deposit): the
    latest materialization of each ``(asset, partition)`` it used."""
    out: dict[str, list[dict[str, Any]]] = {}
    for asset, partition in used:
        rec = _latest(instance, dg.AssetKey.from_user_string(asset), partition)
        out.setdefault(asset, []).append(
            {
                "partition": partition,
                "data_version": (_mat(rec).tags or {}).get("dagster/data_version") if rec else None,
                "storage_id": rec.storage_id if rec else None,
                "timestamp": rec.timestamp if rec else None,
            }
        )
    return out


def runtime_environment(packages: Sequence[str] = ENVIRONMENT_PACKAGES) -> dict[str, Any]:
    """Python, platform and library versions of this process, plus the git commit and container
    image when the deployment provides them (``FIB_ASSETS_GIT_SHA``, ``DAGSTER_CURRENT_IMAGE``).
    Put it in metadata under ``environment``."""
    versions = {}
    for p in packages:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }
    for var, name in (("FIB_ASSETS_GIT_SHA", "git_sha"), ("DAGSTER_CURRENT_IMAGE", "image")):
        if os.environ.get(var):
            env[name] = os.environ[var]
    return env


# ---------------------------------------------------------------------------------------------
# CLI bodies (fib_assets/cli.py calls these)


def audit_command(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    asset: str,
    partition: str | None,
    *,
    as_json: bool = False,
    html: Path | None = None,
    fixity: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """``fib-assets audit``: print the audit (text or JSON), write the HTML report if asked;
    return the exit code: 0 clean, 1 flagged, 2 the audit could not run."""
    try:
        report = run_audit(defs, instance, asset, partition, verify_fixity=fixity)
    except AuditError as exc:
        echo(f"error: {exc}")
        return 2
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(report.to_html())
    if as_json:
        echo(report.to_json())
    else:
        echo(format_report(report))
        if html is not None:
            echo(f"HTML report: {html}")
    return report.exit_code


def format_report(report: AuditReport) -> str:
    lines = [f"audit of {', '.join(report.targets)}: {len(report.links)} links"]
    for link in report.links:
        if link.materialized:
            lines.append(
                f"  {link.id:<28} code {link.code_version or '?':<14} data "
                f"{(link.data_version or '?')[:12]:<12} run {(link.run_id or '?')[:8]}"
            )
        else:
            lines.append(f"  {link.id:<28} not materialized")
    if report.ok:
        lines.append("OK: no flags")
    else:
        lines.append(f"FLAGGED: {len(report.flags)}")
        lines += [f"  [{f.kind}] {f.message}" for f in report.flags]
    return "\n".join(lines)


def deposit_command(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    assets: Sequence[str],
    regions: Sequence[str],
    allow_flagged: bool = False,
    override_reason: str = "",
    draft: bool = False,
    resources: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """``fib-assets deposit``: materialize ``deposit_package`` for the selection (and
    ``repository_draft`` with ``draft``) on the instance; 0 on success, 1 otherwise."""
    selection = ["deposit_package", *(["repository_draft"] if draft else [])]
    config: dict[str, Any] = {
        "assets": list(assets),
        "regions": list(regions),
        "allow_flagged": allow_flagged,
        "override_reason": override_reason,
    }
    result = dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)],
        selection=selection,
        instance=instance,
        resources=dict(resources if resources is not None else (defs.resources or {})),
        run_config=dg.RunConfig(ops={"deposit_package": {"config": config}}),
        raise_on_error=False,
    )
    for ev in result.get_asset_materialization_events():
        mat = ev.materialization
        uri = mat.metadata.get("dagster/uri")
        echo(f"{mat.asset_key.to_user_string()}: {uri.value if uri is not None else ''}")
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE" and ev.step_key:
            err = getattr(ev.event_specific_data, "error", None)
            echo(f"error in {ev.step_key}: {err.message.strip() if err else 'failed'}")
    return 0 if result.success else 1
