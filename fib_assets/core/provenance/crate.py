"""RO-Crate (Process Run Crate profile) describing how a deposit's data came to be.

Each materialization in the audited lineage is a ``CreateAction``: ``instrument`` is the asset's
code at its code version (a ``SoftwareApplication``), ``object`` the outputs of the upstream
materializations it used (or, for the roots, the raw source files), ``result`` its own output.
Outputs in the bag's payload are data entities (``Dataset`` folders); outputs left out of it are
contextual ``Dataset`` entities with their data version and location. The crate root is the
bag's payload folder (``data/``), as the RO-Crate spec recommends for BagIt-wrapped crates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocrate.model.contextentity import ContextEntity
from rocrate.model.softwareapplication import SoftwareApplication
from rocrate.rocrate import ROCrate

from fib_assets.core.provenance.audit import AuditReport, Link

PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
METADATA_FILE = "ro-crate-metadata.json"


class CrateInvalid(ValueError):
    """The crate could not be read back or does not describe the lineage it should."""


@dataclass(frozen=True)
class OutputRef:
    """Where the output of one link is: a payload folder (relative, ``assets/x/r001``) and/or
    its original location (``file://`` or ``s3://`` URI)."""

    payload_path: str | None = None
    location: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class CrateInfo:
    name: str
    description: str
    license: str  # URL of the license
    date_published: str  # ISO 8601 date
    license_name: str = ""  # e.g. the SPDX id "CC-BY-4.0"
    keywords: tuple[str, ...] = ()
    creators: tuple[str, ...] = ()
    # files in the payload described as their own data entities: {relative path: description}
    files: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # more root dataset properties


def _output_id(link: Link) -> str:
    return f"#output/{link.id}@{(link.data_version or 'unknown')[:16]}"


def _code_id(link: Link) -> str:
    return f"#code/{link.asset}@{link.code_version or 'unversioned'}"


def build_crate(
    payload: Path,
    report: AuditReport,
    *,
    info: CrateInfo,
    outputs: Mapping[str, OutputRef],
    sources: Mapping[str, OutputRef],
) -> Path:
    """Write ``ro-crate-metadata.json`` into ``payload`` (which already holds the files) and
    return its path. ``outputs``/``sources`` are keyed by link id (``asset[partition]``)."""
    payload = Path(payload)
    crate = ROCrate()
    crate.name = info.name
    crate.description = info.description
    crate.datePublished = info.date_published
    crate.license = crate.add(
        ContextEntity(
            crate,
            info.license,
            properties={"@type": "CreativeWork", "name": info.license_name or info.license},
        )
    )
    if info.keywords:
        crate.keywords = list(info.keywords)
    profile = crate.add(
        ContextEntity(
            crate,
            PROCESS_RUN_CRATE,
            properties={"@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        )
    )
    crate.root_dataset["conformsTo"] = profile
    if info.creators:
        crate.creator = [
            crate.add(
                ContextEntity(crate, f"#creator/{i}", properties={"@type": "Person", "name": c})
            )
            for i, c in enumerate(info.creators)
        ]
    for k, v in info.extra.items():
        crate.root_dataset[k] = v
    for rel, desc in info.files.items():
        if not (payload / rel).is_file():
            raise CrateInvalid(f"crate file {payload / rel} does not exist")
        crate.add_file(str(payload / rel), dest_path=rel, properties={"description": desc})

    entities: dict[str, Any] = {}

    def entity_for(ref: OutputRef, ident: str, props: dict[str, Any]) -> Any:
        if ref.payload_path is not None:
            folder = payload / ref.payload_path
            if not folder.is_dir():
                raise CrateInvalid(f"payload folder {folder} does not exist")
            p = {**props}
            if ref.location:
                p["contentUrl"] = ref.location
            if ref.description:
                p["description"] = ref.description
            return crate.add_dataset(str(folder), dest_path=ref.payload_path, properties=p)
        p = {"@type": "Dataset", **props}
        if ref.location:
            p["contentUrl"] = ref.location
        if ref.description:
            p["description"] = ref.description
        return crate.add(ContextEntity(crate, ident, properties=p))

    by_id = {link.id: link for link in report.links}
    for link in report.links:
        if not link.materialized:
            continue
        ref = outputs.get(link.id, OutputRef(location=link.uri))
        entities[link.id] = entity_for(
            ref,
            _output_id(link),
            {
                "name": f"{link.id} (data version {(link.data_version or '?')[:12]})",
                "identifier": link.data_version or "",
                "dateModified": _iso(link.timestamp),
            },
        )
    instruments: dict[str, Any] = {}
    for link in report.links:
        if not link.materialized:
            continue
        cid = _code_id(link)
        if cid not in instruments:
            instruments[cid] = crate.add(
                SoftwareApplication(
                    crate,
                    cid,
                    properties={
                        "name": f"fib_assets asset {link.asset}",
                        "version": link.code_version or "unversioned",
                        "softwareVersion": link.code_version or "unversioned",
                        "description": "The code that materializes this asset; its version is "
                        "a hash of the source (fib_assets.core.provenance.code_version).",
                    },
                )
            )
        objects = [entities[u] for up in link.upstream for u in up.link_ids() if u in entities]
        if link.id in sources:
            objects.append(
                entity_for(
                    sources[link.id],
                    f"#sources/{link.id}",
                    {"name": f"raw source files of {link.id}"},
                )
            )
        props: dict[str, Any] = {
            "name": f"Materialize {link.id}",
            "endTime": _iso(link.timestamp),
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
        }
        if link.run_id:
            props["identifier"] = link.run_id
        if link.config:
            props["description"] = f"config: {link.config}"
        action = crate.add_action(
            instruments[cid],
            identifier=f"#run/{link.run_id or 'unknown'}/{link.id}",
            object=objects or None,
            result=[entities[link.id]],
            properties=props,
        )
        crate.root_dataset.append_to("mentions", action)
    missing = [lid for lid in report.targets if lid not in by_id]
    if missing:
        raise CrateInvalid(f"targets {missing} are not links of the audit")
    crate.write(payload)
    return payload / METADATA_FILE


def _iso(ts: float | None) -> str:
    import datetime as _dt

    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat()


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        out.append(v.id if hasattr(v, "id") else str(v.get("@id") if isinstance(v, dict) else v))
    return out


def read_crate(payload: Path) -> dict[str, Any]:
    """Re-read the crate with rocrate and check it is a Process Run Crate whose actions are
    complete: each has a versioned instrument and a result, every referenced entity exists,
    every payload data entity exists on disk. Returns a summary; raises CrateInvalid."""
    payload = Path(payload)
    try:
        crate = ROCrate(str(payload))
    except Exception as exc:  # rocrate raises ValueError/KeyError/JSON errors
        raise CrateInvalid(
            f"{payload / METADATA_FILE}: cannot be read as an RO-Crate: {exc}"
        ) from exc
    conforms = _ids(crate.root_dataset.get("conformsTo"))
    if PROCESS_RUN_CRATE not in conforms:
        raise CrateInvalid(f"{payload}: root dataset does not conform to {PROCESS_RUN_CRATE}")
    actions = []
    problems = []
    for action in crate.get_by_type("CreateAction"):
        inst = action.get("instrument")
        inst_ids = _ids(inst)
        if not inst_ids:
            problems.append(f"{action.id}: no instrument")
            continue
        instrument = crate.dereference(inst_ids[0])
        if instrument is None or not instrument.get("version"):
            problems.append(f"{action.id}: instrument {inst_ids[0]} missing or without version")
        results = _ids(action.get("result"))
        if not results:
            problems.append(f"{action.id}: no result")
        objects = _ids(action.get("object"))
        for ref in [*objects, *results]:
            if crate.dereference(ref) is None:
                problems.append(f"{action.id}: references unknown entity {ref}")
        actions.append(
            {
                "id": action.id,
                "name": action.get("name"),
                "instrument": inst_ids[0],
                "version": instrument.get("version") if instrument is not None else None,
                "object": objects,
                "result": results,
            }
        )
    for entity in crate.data_entities:
        if "://" in entity.id or entity.id.startswith("#"):
            continue
        if not (payload / entity.id).exists():
            problems.append(f"data entity {entity.id} is not in the payload")
    if problems:
        raise CrateInvalid(f"{payload / METADATA_FILE}: " + "; ".join(problems))
    return {
        "name": crate.name,
        "conformsTo": conforms,
        "actions": actions,
        "data_entities": len(list(crate.data_entities)),
    }
