"""Provenance family: audit a region's lineage, package a selection for deposit, send the
package to the institutional repository (Figshare) as a draft for curator review.

provenance_audit[region]  JSON + HTML audit of the region's most downstream materializations
deposit_package           BagIt bag (sha256+sha512) with RO-Crate, DataCite and the audit of a
                          selection chosen in the Launchpad; refused if the audit flags anything
                          unless a curator overrides it with a reason (recorded in the package)
repository_draft          the package uploaded to a Figshare draft item; never published

The storage root may be a local path or ``s3://bucket/prefix`` (fib_assets.core.storage, one code
path): audits are written as objects, the bag is built in bounded local scratch and published
object by object with read-back sha256 and its completion marker last, and a published bag is
re-validated where it lives (every object streamed through sha256 and sha512).
"""

import dataclasses
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

import fib_assets.audit as audit_module
from fib_assets.audit import (
    asset_graph_of,
    run_audits,
    runtime_environment,
    selected_upstream,
    upstream_provenance,
)
from fib_assets.core import storage as object_storage
from fib_assets.core.blockwise import fingerprint
from fib_assets.core.geometry import RegionKeyError, validate_region_key
from fib_assets.core.provenance import audit as core_audit
from fib_assets.core.provenance import bag, crate, datacite, package
from fib_assets.core.provenance import figshare as figshare_client
from fib_assets.core.provenance.audit import AuditReport
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.core.provenance.figshare import FigshareError, LocalFile, article_metadata
from fib_assets.core.provenance.package import PackageError, PackageRequest, build_package
from fib_assets.defs.acquisitions.assets import raw_acquisition, raw_volume
from fib_assets.defs.partitions import regions
from fib_assets.defs.provenance.resources import FigshareResource
from fib_assets.defs.resources import StorageResource

GROUP = "provenance"
OWNERS = ["team:curation"]
AUDIT_CLEAN = "audit_clean"

_THIS = sys.modules[__name__]
CODE_AUDIT = code_version_of(core_audit, audit_module, _THIS)
CODE_DEPOSIT = code_version_of(package, bag, crate, datacite, core_audit, audit_module, _THIS)
CODE_DRAFT = code_version_of(figshare_client, bag, _THIS)


def _region_leaves(context: dg.AssetExecutionContext, region: str) -> list[str]:
    """The region's most downstream materialized assets (outside this family)."""
    graph = asset_graph_of(context)
    instance = context.instance

    def in_scope(key: dg.AssetKey) -> bool:
        node = graph.get(key)
        return node.partitions_def == regions and node.group_name != GROUP

    def materialized(key: dg.AssetKey) -> bool:
        flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[region])
        return bool(instance.fetch_materializations(flt, limit=1).records)

    keys = [k for k in graph.materializable_asset_keys if in_scope(k) and materialized(k)]
    leaves = [
        k
        for k in keys
        if not any(c in keys for c in graph.get(k).child_keys if graph.has(c) and in_scope(c))
    ]
    return sorted(k.to_user_string() for k in leaves)


def _flags_markdown(report: AuditReport) -> str:
    if report.ok:
        return "No flags: every link is current, checked and traced to verified source files."
    rows = ["| kind | link | message |", "|---|---|---|"]
    rows += [f"| {f.kind} | {f.link} | {f.message.replace('|', '/')} |" for f in report.flags]
    return "\n".join(rows)


class AuditConfig(dg.Config):
    """What the audit of a region covers."""

    assets: list[str] = Field(
        default_factory=list,
        description="Assets to audit for this region; empty = the region's most downstream "
        "materialized assets. Each is walked upstream to the raw files.",
    )
    verify_fixity: bool = Field(
        default=True, description="Re-hash the raw source files against their sha256 manifest."
    )


@dg.asset(
    partitions_def=regions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"json", "html"},
    code_version=CODE_AUDIT,
    deps=[raw_acquisition, raw_volume],
    check_specs=[
        dg.AssetCheckSpec(
            AUDIT_CLEAN,
            asset="provenance_audit",
            partitions_def=regions,
            description="The audit raised no flag (stale, upstream_newer, check_failed, "
            "check_missing, fixity_mismatch, missing_lineage).",
        )
    ],
)
def provenance_audit(
    context: dg.AssetExecutionContext, storage: StorageResource, config: AuditConfig
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Provenance audit of one region: every materialization from its most downstream assets
    back to the raw .dat/TIFF files, with code and data versions, upstream versions used, run
    ids, times and check results; source files re-verified against their sha256 manifest.
    JSON + self-contained HTML (lineage drawn). The audit_clean check fails on any flag."""
    region = context.partition_key
    graph = asset_graph_of(context)
    targets = config.assets or _region_leaves(context, region)
    if not targets:
        raise dg.Failure(f"no asset of region {region} is materialized: nothing to audit")
    pairs = [
        (a, region if graph.get(dg.AssetKey.from_user_string(a)).partitions_def else None)
        for a in targets
    ]
    try:
        report = run_audits(graph, context.instance, pairs, verify_fixity=config.verify_fixity)
    except audit_module.AuditError as exc:
        raise dg.Failure(str(exc)) from exc
    # a local folder or an s3:// prefix; each file written atomically (rename, or one PUT)
    out = object_storage.join(
        storage.asset_url("provenance_audit", region), f"audit-{report.fingerprint()[:16]}"
    )
    object_storage.write_bytes(object_storage.join(out, "audit.json"), report.to_json().encode())
    object_storage.write_bytes(object_storage.join(out, "audit.html"), report.to_html().encode())
    context.log.info(f"{region}: {len(report.links)} links, {len(report.flags)} flags")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint()),
        metadata={
            "dagster/uri": dg.MetadataValue.path(object_storage.join(out, "audit.html")),
            "report_json": dg.MetadataValue.path(object_storage.join(out, "audit.json")),
            "targets": dg.MetadataValue.json(list(report.targets)),
            "n_links": len(report.links),
            "n_flags": len(report.flags),
            "flags_by_kind": dg.MetadataValue.json(report.flags_by_kind()),
            "flags": dg.MetadataValue.md(_flags_markdown(report)),
            "upstream": dg.MetadataValue.json(upstream_provenance(context)),
            "environment": dg.MetadataValue.json(runtime_environment()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=AUDIT_CLEAN,
                passed=report.ok,
                severity=dg.AssetCheckSeverity.ERROR,
                description="no flags"
                if report.ok
                else f"{len(report.flags)} flag(s): "
                + "; ".join(f.message for f in report.flags[:3]),
                metadata={"flags_by_kind": dg.MetadataValue.json(report.flags_by_kind())},
            )
        ],
    )


class DepositConfig(dg.Config):
    """The selection to deposit and its DataCite description (set in the Launchpad)."""

    assets: list[str] = Field(
        default_factory=lambda: ["raw_acquisition", "raw_volume"],
        description="Assets whose materializations are deposited.",
    )
    regions: list[str] = Field(
        default_factory=list,
        description="Region partitions to deposit; empty = every region where all selected "
        "assets are materialized.",
    )
    max_payload_mib: float = Field(
        default=2048.0,
        ge=0,
        description="Payload budget of the bag (MiB). An asset partition that does not fit is "
        "included as a documented subset (its metadata files) plus a manifest of the external "
        "locations of the rest, with sha256 and size.",
    )
    allow_flagged: bool = Field(
        default=False,
        description="Deposit even though the audit flags problems. Requires override_reason; "
        "the override, the flags and who launched it are recorded in the package.",
    )
    override_reason: str = Field(default="", description="Why the flags are acceptable.")
    verify_fixity: bool = Field(
        default=True, description="Re-hash raw source files during the audit."
    )
    title: str = Field(default="", description="DataCite title; empty = generated.")
    creators: list[str] = Field(
        default_factory=lambda: ["(:unav)"],
        description="DataCite creators as 'Family, Given'. (:unav) = not yet known (a "
        "DataCite standard value); curators complete it before publishing.",
    )
    publisher: str = Field(default="University Libraries, Virginia Tech")
    publication_year: int = Field(default=0, description="0 = the current year.")
    description: str = Field(default="", description="DataCite abstract; empty = generated.")
    keywords: list[str] = Field(
        default_factory=lambda: ["FIB-SEM", "volume electron microscopy", "connectomics"]
    )
    license: str = Field(default="CC-BY-4.0", description="SPDX id of the license.")
    license_url: str = Field(default="https://creativecommons.org/licenses/by/4.0/")


def _selection(
    context: dg.AssetExecutionContext, config: DepositConfig
) -> list[tuple[str, str | None]]:
    graph = asset_graph_of(context)
    instance = context.instance
    chosen = list(config.regions)
    for r in chosen:
        try:
            validate_region_key(r)
        except RegionKeyError as exc:
            raise dg.Failure(f"deposit config regions: {exc}") from exc
    keys = []
    for a in config.assets:
        key = dg.AssetKey.from_user_string(a)
        if not graph.has(key):
            raise dg.Failure(f"deposit config assets: unknown asset {a!r}")
        keys.append(key)
    if not chosen:
        for r in instance.get_dynamic_partitions(regions.name or "regions"):
            flts = [
                dg.AssetRecordsFilter(asset_key=k, asset_partitions=[r])
                for k in keys
                if graph.get(k).partitions_def is not None
            ]
            if all(instance.fetch_materializations(f, limit=1).records for f in flts):
                chosen.append(r)
    out: list[tuple[str, str | None]] = []
    for key in keys:
        if graph.get(key).partitions_def is None:
            out.append((key.to_user_string(), None))
        else:
            out += [(key.to_user_string(), r) for r in chosen]
    if not out:
        raise dg.Failure("the deposit selection is empty (no region has every selected asset)")
    return out


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"bagit", "json"},
    code_version=CODE_DEPOSIT,
    deps=[
        dg.AssetDep(raw_acquisition, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(raw_volume, partition_mapping=dg.AllPartitionMapping()),
    ],
)
def deposit_package(
    context: dg.AssetExecutionContext, storage: StorageResource, config: DepositConfig
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """A deposit package of the selected asset partitions: a BagIt bag (sha256 and sha512
    manifests) whose payload holds the data (or, for volumes over the budget, a documented
    subset plus external locations with checksums), an RO-Crate (Process Run Crate: one
    CreateAction per materialization), DataCite metadata and the provenance audit. Validated by
    bagit's full validation and by re-reading the crate. Fails if the audit flags anything,
    unless allow_flagged with an override_reason (recorded in the package)."""
    selection = _selection(context, config)
    graph = asset_graph_of(context)
    report = run_audits(graph, context.instance, selection, verify_fixity=config.verify_fixity)
    override = None
    if report.flags:
        listing = "\n".join(f"  [{f.kind}] {f.message}" for f in report.flags)
        if not config.allow_flagged:
            raise dg.Failure(
                f"the provenance audit flags {len(report.flags)} problem(s); nothing was "
                f"packaged. Fix them, or set allow_flagged with an override_reason:\n{listing}",
                metadata={"flags": dg.MetadataValue.json([f.message for f in report.flags])},
            )
        if not config.override_reason.strip():
            raise dg.Failure("allow_flagged needs an override_reason (recorded in the package)")
        override = {
            "reason": config.override_reason.strip(),
            "by": _who(context),
            "run_id": context.run.run_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "flags": [f"[{f.kind}] {f.message}" for f in report.flags],
        }
        context.log.warning(f"audit override ({len(report.flags)} flags): {override['reason']}")
    used = {lid: report.link(lid).data_version for lid in report.targets}
    pkg_id = (
        "pkg-"
        + fingerprint({"used": used, "config": config.model_dump(), "code": CODE_DEPOSIT})[:16]
    )
    dc = _datacite(config, report, selection, pkg_id)
    folder = object_storage.join(storage.root, "deposit_package", pkg_id)
    bag_url = object_storage.join(folder, "bag")
    summary_url = object_storage.join(folder, "summary.json")
    if object_storage.exists(summary_url) and object_storage.is_complete(bag_url):
        try:
            bag.validate_bag_at(bag_url)
        except bag.BagInvalid as exc:
            raise dg.Failure(f"{exc}. Delete {folder} to rebuild the package.") from exc
        context.log.info(f"reusing the valid package {bag_url}")
        result = package.PackageResult(**object_storage.read_json(summary_url))
        mode = "reused after full validation where it is stored"
    else:
        req = PackageRequest(
            package_id=pkg_id,
            report=report,
            selected=report.targets,
            datacite=dc,
            max_payload_bytes=int(config.max_payload_mib * 2**20),
            license_url=config.license_url,
            override=override,
        )
        result = _build_and_publish(req, bag_url, summary_url)
        mode = (
            "built in local scratch, uploaded, read back (sha256) and marked complete"
            if object_storage.is_remote(bag_url)
            else "built in a temporary folder and renamed into place"
        )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.digest),
        metadata={
            "dagster/uri": dg.MetadataValue.path(result.path),
            "package_id": pkg_id,
            "storage_mode": mode,
            "selection": dg.MetadataValue.json(list(report.targets)),
            "title": dc.title,
            "payload": dg.MetadataValue.json(result.plan),
            "payload_files": int(result.bag.get("payload_files", 0)),
            "payload_oxum": str(result.bag.get("payload_oxum", "")),
            "external_files": result.external_files,
            "crate_actions": len(result.crate.get("actions", [])),
            "audit_flags": len(report.flags),
            "audit_override": dg.MetadataValue.json(override or {}),
            "audit": dg.MetadataValue.md(_flags_markdown(report)),
            "datacite": dg.MetadataValue.json(dc.to_json()),
            "upstream": dg.MetadataValue.json(selected_upstream(context.instance, selection)),
            "environment": dg.MetadataValue.json(runtime_environment()),
        },
    )


def _build_and_publish(
    req: PackageRequest, bag_url: str, summary_url: str
) -> package.PackageResult:
    """Build the bag where it can be written as files — in place on local disk, in bounded
    scratch for an object store (sized from the payload plan, refused up front when it does
    not fit) — and publish it: on S3 every object uploaded and read back (sha256), the summary
    written, the completion marker LAST, so an interrupted publication leaves no package."""
    try:
        plan, _ = package.plan_package(req)
    except PackageError as exc:
        raise dg.Failure(f"package {req.package_id} not built: {exc}") from exc
    need = plan.included_bytes + plan.included_bytes // 4 + 16 * 2**20
    with object_storage.Staging(bag_url, need_bytes=need) as stage:
        try:
            built = build_package(req, Path(stage.path))
        except (PackageError, bag.BagInvalid, crate.CrateInvalid) as exc:
            raise dg.Failure(
                f"package {req.package_id} not built: {str(exc).replace(stage.path, bag_url)}"
            ) from exc
        result = dataclasses.replace(built, path=bag_url, bag={**built.bag, "path": bag_url})
        stage.publish(
            {"package_id": req.package_id, "bag_digest": result.digest},
            {summary_url: dataclasses.asdict(result)},
        )
    return result


def _who(context: dg.AssetExecutionContext) -> str:
    run = context.instance.get_run_by_id(context.run.run_id)
    user = (run.tags or {}).get("dagster/user") if run is not None else None
    if user:
        return str(user)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _datacite(
    config: DepositConfig,
    report: AuditReport,
    selection: list[tuple[str, str | None]],
    pkg_id: str,
) -> datacite.DataCiteRecord:
    regions_used = sorted({p for _, p in selection if p})
    assets_used = list(dict.fromkeys(a for a, _ in selection))
    title = config.title or (
        f"FIB-SEM data: {', '.join(assets_used)} of region(s) {', '.join(regions_used) or '-'}"
    )
    description = config.description or (
        f"FIB-SEM volumes curated with fib_assets: {', '.join(report.targets)}. Every "
        "materialization's code version, inputs and outputs are described in the RO-Crate; the "
        "provenance audit traces each back to its raw acquisition files."
    )
    try:
        return datacite.record_from(
            title=f"{title} [{pkg_id}]",
            creators=config.creators,
            publisher=config.publisher,
            publication_year=config.publication_year or None,
            description=description,
            subjects=tuple(config.keywords),
            rights=config.license,
            rights_uri=config.license_url,
            formats=("application/zip", "OME-Zarr", "Janelia FIB-SEM .dat"),
            dates=(("Created", time.strftime("%Y-%m-%d", time.gmtime())),),
        )
    except datacite.DataCiteError as exc:
        raise dg.Failure(f"deposit config: {exc}") from exc


class DraftConfig(dg.Config):
    """How the package goes to the repository."""

    include_separately: list[str] = Field(
        default_factory=lambda: [
            "data/metadata/datacite.xml",
            "data/ro-crate-metadata.json",
            "data/provenance/audit.html",
        ],
        description="Bag files also uploaded on their own (besides the zipped bag) so "
        "curators can read them in the repository without unzipping.",
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"figshare"},
    code_version=CODE_DRAFT,
    deps=[deposit_package],
)
def repository_draft(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    figshare: FigshareResource,
    config: DraftConfig,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The latest deposit package as a *draft* item on the institutional repository
    (data.lib.vt.edu, Figshare API v2), for curator review — never published. The bag is
    validated first; uploads are multipart with md5 per file, retried with backoff, resumable
    and idempotent (a rerun neither duplicates files nor re-sends finished parts)."""
    recs = context.instance.fetch_materializations(deposit_package.key, limit=1).records
    if not recs:
        raise dg.Failure("deposit_package is not materialized: nothing to upload")
    mat = recs[0].event_log_entry.asset_materialization
    assert mat is not None
    meta: dict[str, Any] = {k: v.value for k, v in mat.metadata.items()}
    bag_location = str(meta["dagster/uri"])
    pkg_id = str(meta["package_id"])
    out = storage.asset_url("repository_draft", pkg_id)
    state_url = object_storage.join(out, "figshare-state.json")
    remote = object_storage.is_remote(bag_location)
    size = object_storage.tree_size(bag_location)[0] if remote else 0
    # a bag on an object store is downloaded (checked against its completion marker) into
    # bounded scratch, with room for its zip; a local bag is read where it is
    with object_storage.Staging(bag_location, need_bytes=2 * size + 2**20) as stage:
        try:
            stage.fetch()
            bag.validate_bag(Path(stage.path))
        except (bag.BagInvalid, object_storage.StorageError, FileNotFoundError) as exc:
            raise dg.Failure(
                f"nothing uploaded: {str(exc).replace(stage.path, bag_location)}"
            ) from exc
        bag_dir = Path(stage.path)
        work = bag_dir.parent if stage.staged else Path(out)
        files = [LocalFile.of(bag.zip_bag(bag_dir, work / f"{pkg_id}.bag.zip"))]
        for rel in config.include_separately:
            p = bag_dir / rel
            if not p.is_file():
                raise dg.Failure(f"{object_storage.join(bag_location, rel)} is not in the package")
            files.append(LocalFile.of(p))
        dc = json.loads((bag_dir / "data" / package.DATACITE_JSON).read_text())
        body = article_metadata(
            dc["titles"][0]["title"],
            (dc.get("descriptions") or [{"description": ""}])[0]["description"]
            + f"\n\nfib_assets package {pkg_id}; BagIt bag with RO-Crate and provenance audit.",
            keywords=[s["subject"] for s in dc.get("subjects", [])],
            authors=[c["name"] for c in dc.get("creators", []) if not c["name"].startswith("(:")],
        )
        # the draft's id survives the pod: kept beside the other outputs, local or object
        state = work / "figshare-state.json"
        if remote and object_storage.exists(state_url):
            object_storage.copy_to_local(state_url, state)
        client = figshare.client(log=context.log.info)
        try:
            result = client.deposit_draft(files, body, state_path=state)
        except FigshareError as exc:
            raise dg.Failure(f"draft deposit of {pkg_id} not done: {exc}") from exc
        finally:
            if remote and state.is_file():
                object_storage.write_bytes(state_url, state.read_bytes())
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            fingerprint({"article": result.article_id, "files": [f.md5 for f in files]})
        ),
        metadata={
            "dagster/uri": dg.MetadataValue.url(
                f"{result.api_url}/account/articles/{result.article_id}"
            ),
            "article_id": result.article_id,
            "status": "draft (not published): awaiting curator review",
            "package_id": pkg_id,
            "files": dg.MetadataValue.json(
                [{"name": f.name, "size": f.size, "md5": f.md5} for f in files]
            ),
            "uploaded": dg.MetadataValue.json(list(result.uploaded)),
            "resumed": dg.MetadataValue.json(list(result.resumed)),
            "skipped": dg.MetadataValue.json(list(result.skipped)),
            "replaced": dg.MetadataValue.json(list(result.replaced)),
            "created_item": result.created,
            "upstream": dg.MetadataValue.json(
                {
                    "deposit_package": [
                        {
                            "partition": None,
                            "data_version": (mat.tags or {}).get("dagster/data_version"),
                            "storage_id": recs[0].storage_id,
                            "timestamp": recs[0].timestamp,
                        }
                    ]
                }
            ),
        },
    )
