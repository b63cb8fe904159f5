"""A deposit package: BagIt bag + RO-Crate + DataCite + the audit report, built atomically.

Describe, then do: :func:`plan_package` decides from an audit which files of the selected
materializations go into the payload (the rest are external locations with checksums);
:func:`build_package` writes, bags and validates it in a temporary folder and renames it into
place only when the bag validates fully, the crate reads back and the DataCite XML parses. The
selected materializations and their sources may be local files or ``s3://`` objects; the bag is
always a local folder (on an object-store root, bounded scratch that the caller publishes with
:class:`fib_assets.core.storage.Staging`).

Payload layout (the bag's ``data/``, which is also the RO-Crate root)::

    ro-crate-metadata.json        Process Run Crate: one CreateAction per materialization
    README.md                     what is here, what was left out and why, audit verdict
    assets/<asset>/<partition>/   the selected materializations' files (``dagster/uri``)
    sources/<asset>/<partition>/  the raw source files of selected root materializations
    provenance/audit.json|.html   the provenance audit of the selection
    metadata/datacite.json|.xml   DataCite 4.5 metadata
    external-locations-sha256.tsv files too large to bag: sha256, size, location
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fib_assets.core import storage
from fib_assets.core.blockwise import atomic_write_bytes, atomic_write_json
from fib_assets.core.provenance.audit import AuditReport, Link
from fib_assets.core.provenance.bag import (
    EXTERNAL_MANIFEST,
    PAYLOAD_README,
    PayloadGroup,
    PayloadPlan,
    bag_digest,
    collect_group,
    listed_group,
    make_package_bag,
    plan_payload,
    validate_bag,
    write_payload,
)
from fib_assets.core.provenance.crate import CrateInfo, OutputRef, build_crate, read_crate
from fib_assets.core.provenance.datacite import DataCiteRecord, parse_xml
from fib_assets.core.provenance.fixity import parse_manifest

AUDIT_JSON = "provenance/audit.json"
AUDIT_HTML = "provenance/audit.html"
DATACITE_JSON = "metadata/datacite.json"
DATACITE_XML = "metadata/datacite.xml"


class PackageError(ValueError):
    """The package cannot be built from this selection; names the link and the problem."""


@dataclass(frozen=True)
class PackageRequest:
    """Everything a package is built from (all of it recorded in the package)."""

    package_id: str
    report: AuditReport
    selected: tuple[str, ...]  # link ids whose data is deposited
    datacite: DataCiteRecord
    max_payload_bytes: int
    license_url: str
    override: Mapping[str, Any] | None = None  # audit flags accepted by a curator, with reason
    subset_file_max_bytes: int = 1 << 20
    extra_bag_info: Mapping[str, str] = field(default_factory=dict)


def _folder(link: Link) -> str:
    return f"{link.asset}/{link.partition if link.partition is not None else '_'}"


def _manifest_entries(link: Link) -> list[tuple[str, str]]:
    assert link.fixity is not None
    return parse_manifest(storage.read_text(link.fixity.manifest))


def _location_uri(location: str) -> str:
    """``s3://`` URLs as they are, local paths as ``file://`` URIs."""
    if storage.is_remote(location):
        return storage.normalize(location)
    return Path(location).resolve().as_uri()


def plan_package(req: PackageRequest) -> tuple[PayloadPlan, list[PayloadGroup]]:
    """Which files of the selection go into the payload (see bag.plan_payload); raises
    PackageError naming a selected link that is not materialized or has no files."""
    groups: list[PayloadGroup] = []
    for lid in req.selected:
        try:
            link = req.report.link(lid)
        except KeyError as exc:
            raise PackageError(f"{lid} is not part of the audit") from exc
        if not link.materialized:
            raise PackageError(f"{lid} is not materialized: nothing to deposit")
        if link.uri is None:
            raise PackageError(f"{lid} records no location (dagster/uri): nothing to deposit")
        try:
            groups.append(collect_group(lid, link.uri, f"assets/{_folder(link)}"))
            if link.fixity is not None:
                groups.append(
                    listed_group(
                        f"{lid} sources",
                        link.fixity.root,
                        f"sources/{_folder(link)}",
                        _manifest_entries(link),
                    )
                )
        except FileNotFoundError as exc:
            raise PackageError(f"{lid}: {exc}") from exc
    return (
        plan_payload(
            groups,
            max_bytes=req.max_payload_bytes,
            subset_file_max_bytes=req.subset_file_max_bytes,
        ),
        groups,
    )


@dataclass(frozen=True)
class PackageResult:
    path: str
    digest: str
    plan: dict[str, Any]
    external_files: int
    bag: dict[str, Any]
    crate: dict[str, Any]
    datacite: dict[str, Any]


def _readme(req: PackageRequest, plan: PayloadPlan) -> str:
    rep = req.report
    lines = [
        f"# {req.datacite.title}",
        "",
        f"Package `{req.package_id}` built by fib_assets on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        req.datacite.description or "",
        "",
        "## Contents",
        "",
        "- `assets/<asset>/<partition>/`: the deposited materializations, as written by the "
        "fib_assets asset of that name",
        "- `sources/<asset>/<partition>/`: raw source files (Janelia .dat / TIFF) of the "
        "acquisitions, verified against their sha256 manifest",
        "- `ro-crate-metadata.json`: RO-Crate (Process Run Crate) — one CreateAction per "
        "materialization, with the code version that ran, its inputs and its outputs",
        f"- `{AUDIT_JSON}`, `{AUDIT_HTML}`: provenance audit of the whole lineage",
        f"- `{DATACITE_JSON}`, `{DATACITE_XML}`: DataCite 4.5 metadata",
        "",
        "## What is in the payload",
        "",
        f"Payload budget {req.max_payload_bytes} bytes; {plan.included_bytes} bytes in "
        f"{len(plan.included)} files included, {plan.external_bytes} bytes in "
        f"{len(plan.external)} files left where they are.",
        "",
    ]
    lines += [f"- `{name}`: {how}" for name, how in plan.groups.items()]
    if plan.external:
        lines += [
            "",
            f"Files too large to bag are listed in `{EXTERNAL_MANIFEST}` (sha256, size in bytes, "
            "location, path they would have in this payload). A subset keeps a volume's "
            "metadata files (zarr.json, attributes.json, *.json, *.parquet …) so its layout "
            "can be read without the data.",
        ]
    lines += ["", "## Provenance audit", ""]
    if rep.ok:
        lines.append("The audit raised no flags.")
    else:
        lines.append(f"The audit raised {len(rep.flags)} flag(s):")
        lines += [f"- [{f.kind}] {f.message}" for f in rep.flags]
    if req.override:
        lines += [
            "",
            "**Audit override.** The flags above were accepted explicitly: "
            f"{req.override.get('reason', '')} (by {req.override.get('by', 'unknown')}, "
            f"{req.override.get('at', '')}).",
        ]
    return "\n".join(lines) + "\n"


def build_package(req: PackageRequest, out_dir: Path) -> PackageResult:
    """Build the package into ``out_dir`` atomically (temp folder + rename): payload, crate,
    DataCite, audit, bag (sha256 + sha512), then full bag validation, crate re-read and DataCite
    re-parse. Nothing is left at ``out_dir`` unless all of that passed."""
    if req.report.flags and not req.override:
        raise PackageError(
            f"the audit raised {len(req.report.flags)} flag(s) and no override was given: "
            + "; ".join(f.message for f in req.report.flags[:5])
        )
    plan, _ = plan_package(req)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        externals = write_payload(plan, tmp)
        atomic_write_bytes(tmp / AUDIT_JSON, req.report.to_json().encode())
        atomic_write_bytes(tmp / AUDIT_HTML, req.report.to_html().encode())
        atomic_write_json(tmp / DATACITE_JSON, req.datacite.to_json())
        atomic_write_bytes(tmp / DATACITE_XML, req.datacite.to_xml().encode())
        atomic_write_bytes(tmp / PAYLOAD_README, _readme(req, plan).encode())
        files = {
            PAYLOAD_README: "What this package holds and how it was made.",
            AUDIT_JSON: "Provenance audit of the deposited lineage (JSON).",
            AUDIT_HTML: "Provenance audit with the lineage drawn (HTML).",
            DATACITE_JSON: "DataCite 4.5 metadata (JSON, REST API attributes).",
            DATACITE_XML: "DataCite 4.5 metadata (XML, kernel-4).",
        }
        if externals:
            files[EXTERNAL_MANIFEST] = (
                "Files too large to bag: sha256, size (bytes), location, payload path."
            )
        outputs: dict[str, OutputRef] = {}
        sources: dict[str, OutputRef] = {}
        external_groups = {n for n, how in plan.groups.items() if not how.startswith("whole")}
        for lid in req.selected:
            link = req.report.link(lid)
            folder = f"assets/{_folder(link)}"
            subset = lid in external_groups
            outputs[lid] = OutputRef(
                payload_path=folder if (tmp / folder).is_dir() else None,
                location=_location_uri(link.uri) if link.uri else None,
                description=(
                    f"subset of {lid}; the other files are listed in {EXTERNAL_MANIFEST}"
                    if subset
                    else None
                ),
            )
            if link.fixity is not None:
                sfolder = f"sources/{_folder(link)}"
                ssubset = f"{lid} sources" in external_groups
                sources[lid] = OutputRef(
                    payload_path=sfolder if (tmp / sfolder).is_dir() else None,
                    location=_location_uri(link.fixity.root),
                    description=(
                        f"raw source files of {lid}"
                        + (f"; those left out are listed in {EXTERNAL_MANIFEST}" if ssubset else "")
                    ),
                )
        dc = req.datacite
        extra: dict[str, Any] = {"identifier": req.package_id}
        if req.override:
            extra["fib_assets:auditOverride"] = json.dumps(dict(req.override), sort_keys=True)
        build_crate(
            tmp,
            req.report,
            info=CrateInfo(
                name=dc.title,
                description=dc.description or dc.title,
                license=req.license_url,
                license_name=dc.rights or "",
                date_published=time.strftime("%Y-%m-%d", time.gmtime()),
                keywords=dc.subjects,
                creators=dc.creators,
                files=files,
                extra=extra,
            ),
            outputs=outputs,
            sources=sources,
        )
        bag_info: dict[str, str | Sequence[str]] = {
            "Source-Organization": dc.publisher,
            "External-Description": dc.title,
            "External-Identifier": req.package_id,
            "Bag-Group-Identifier": "fib_assets deposit",
            "FIB-Assets-Selection": list(req.selected),
            "FIB-Assets-Audit": "clean"
            if req.report.ok
            else f"{len(req.report.flags)} flag(s), overridden",
            "FIB-Assets-External-Files": str(len(externals)),
            **dict(req.extra_bag_info),
        }
        if req.override:
            bag_info["FIB-Assets-Audit-Override"] = json.dumps(dict(req.override), sort_keys=True)
        make_package_bag(tmp, bag_info)
        bag_summary = validate_bag(tmp)
        crate_summary = read_crate(tmp / "data")
        dc_back = parse_xml((tmp / "data" / DATACITE_XML).read_text())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bag_summary["path"] = str(out_dir)
    return PackageResult(
        path=str(out_dir),
        digest=bag_digest(out_dir),
        plan=plan.to_dict(),
        external_files=len(externals),
        bag=bag_summary,
        crate=crate_summary,
        datacite=dc_back,
    )
