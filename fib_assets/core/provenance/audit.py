"""Provenance audit: the lineage of an asset partition back to its raw files, and what is wrong
with it.

Pure data model and rules (no Dagster): ``fib_assets.audit`` reads the facts from the Dagster
event log into ``Link`` objects; :func:`evaluate` turns them into ``Flag`` s; :class:`AuditReport`
renders JSON and a self-contained HTML page (inline SVG lineage, no network assets).

Flag kinds
    ``stale``            the materialization was built from upstream data versions that are no
                         longer current, or by code whose version changed since
    ``upstream_newer``   an upstream partition was materialized after the downstream used it
    ``check_failed``     a check of the current materialization failed (any severity)
    ``check_missing``    a check the materialization step defines has no result for it
    ``fixity_mismatch``  a source file no longer matches its sha256 manifest, is missing, or the
                         manifest itself changed
    ``missing_lineage``  a link of the chain has no materialization, records no input versions,
                         or a root of the chain records no source manifest
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

FlagKind = Literal[
    "stale", "check_failed", "check_missing", "upstream_newer", "fixity_mismatch", "missing_lineage"
]
FLAG_KINDS: tuple[FlagKind, ...] = (
    "stale",
    "check_failed",
    "check_missing",
    "upstream_newer",
    "fixity_mismatch",
    "missing_lineage",
)

# Dagster stops hashing per-partition data versions of a dependency at this many partitions
# (dagster._core.definitions.data_version.SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD) and
# records the upstream's latest version instead, which cannot be checked per partition.
DAGSTER_PARTITION_HASH_LIMIT = 100

# check statuses as the audit reports them
CHECK_SUCCEEDED = "SUCCEEDED"
CHECK_FAILED = "FAILED"
CHECK_SKIPPED = "SKIPPED"  # planned in the materialization's run, never evaluated
CHECK_MISSING = "MISSING"  # no result at all
CHECK_OUTDATED = "OUTDATED"  # the latest result is for an older materialization
CHECK_NOT_RUN = "NOT_RUN"  # a scheduled (standalone) check that has not run yet: informational


def link_id(asset: str, partition: str | None) -> str:
    """``asset[partition]`` (or ``asset`` when unpartitioned): how a link is named everywhere."""
    return f"{asset}[{partition}]" if partition is not None else asset


def combined_partition_version(versions: Mapping[str, str]) -> str:
    """The input data version Dagster records for a partitioned dependency: sha256 of the mapped
    partitions' data versions concatenated in partition-key order (mirrors
    ``dagster._core.execution.context.data_version_cache._get_partitions_data_version_from_keys``)."""
    return hashlib.sha256("".join(versions[k] for k in sorted(versions)).encode()).hexdigest()


@dataclass(frozen=True)
class CheckResult:
    """The latest result of one check for the partition of a link."""

    name: str
    status: str
    severity: str | None = None
    description: str | None = None
    run_id: str | None = None
    timestamp: float | None = None
    # True when the check runs in the asset's own step (a result is expected with every
    # materialization); False for standalone checks run on a schedule (e.g. fixity)
    in_materialization: bool = True


@dataclass(frozen=True)
class UpstreamUse:
    """One dependency of a link: what the link recorded when it was built and what is current.

    ``partitions`` is empty for an unpartitioned upstream; ``current_*`` maps are then keyed by
    ``""``. ``used_versions`` (per partition) comes from fib_assets' own ``upstream`` metadata;
    ``used_version`` is Dagster's ``dagster/input_data_version/<key>`` tag.
    """

    asset: str
    partitions: tuple[str, ...]
    used_version: str | None
    used_versions: dict[str, str] | None
    provenance_source: str  # "fib_assets" | "dagster" | "none"
    current_versions: dict[str, str | None]
    current_timestamps: dict[str, float | None]
    truncated: bool = False  # more mapped partitions than the audit walks

    def partition_keys(self) -> tuple[str, ...]:
        return self.partitions if self.partitions else ("",)

    def link_ids(self) -> list[str]:
        return [link_id(self.asset, p) for p in self.partitions] or [self.asset]

    def matches_current(self) -> bool | None:
        """Whether the versions the downstream used are the upstream's current ones; None when
        that cannot be decided (upstream missing, or too many partitions for Dagster's hash)."""
        if any(self.current_versions.get(k) is None for k in self.partition_keys()):
            return None
        current = {k: cast(str, self.current_versions[k]) for k in self.partition_keys()}
        if self.used_versions is not None:
            return all(self.used_versions.get(k) == v for k, v in current.items())
        if self.used_version is None:
            return None
        if not self.partitions:
            return self.used_version == current[""]
        if len(self.partitions) >= DAGSTER_PARTITION_HASH_LIMIT:
            return None
        candidates = {combined_partition_version(current)}
        if len(current) == 1:
            candidates.add(next(iter(current.values())))
        return self.used_version in candidates


@dataclass(frozen=True)
class FixityProblem:
    name: str
    path: str
    expected: str
    actual: str | None  # None: the file is missing


@dataclass(frozen=True)
class FixityResult:
    """Re-verification of a link's source files against its sha256 manifest."""

    root: str
    manifest: str
    n_files: int
    problems: tuple[FixityProblem, ...] = ()
    manifest_expected_sha256: str | None = None
    manifest_actual_sha256: str | None = None
    error: str | None = None  # the manifest itself could not be read

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.problems
            and (
                self.manifest_expected_sha256 is None
                or self.manifest_expected_sha256 == self.manifest_actual_sha256
            )
        )


@dataclass(frozen=True)
class Link:
    """One asset partition in the lineage, as its latest materialization recorded it."""

    asset: str
    partition: str | None
    materialized: bool
    data_version: str | None = None
    code_version: str | None = None
    current_code_version: str | None = None  # of the definition loaded now
    run_id: str | None = None
    timestamp: float | None = None
    storage_id: int | None = None
    uri: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[UpstreamUse, ...] = ()
    checks: tuple[CheckResult, ...] = ()
    fixity: FixityResult | None = None
    is_root: bool = False  # no upstream asset in the graph: must trace to source files
    notes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return link_id(self.asset, self.partition)


@dataclass(frozen=True)
class Flag:
    kind: FlagKind
    link: str
    message: str


def _short(v: str | None) -> str:
    return (v or "?")[:12]


def _iso(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _link_flags(link: Link) -> list[Flag]:
    lid = link.id
    if not link.materialized:
        return [Flag("missing_lineage", lid, f"{lid} has no materialization")]
    flags: list[Flag] = []
    if (
        link.code_version is not None
        and link.current_code_version is not None
        and link.code_version != link.current_code_version
    ):
        flags.append(
            Flag(
                "stale",
                lid,
                f"{lid} was built by code version {link.code_version!r}; the definition is now "
                f"{link.current_code_version!r}",
            )
        )
    for up in link.upstream:
        missing = [k for k in up.partition_keys() if up.current_versions.get(k) is None]
        for k in missing:
            flags.append(
                Flag(
                    "missing_lineage",
                    lid,
                    f"{lid} depends on {link_id(up.asset, k or None)}, which has no "
                    "materialization",
                )
            )
        if up.provenance_source == "none":
            flags.append(
                Flag(
                    "missing_lineage",
                    lid,
                    f"{lid} records no data version of its input {up.asset} "
                    "(no 'upstream' metadata, no dagster/input_data_version tag)",
                )
            )
        elif not missing and up.matches_current() is False:
            if up.used_versions is not None:
                changed = [
                    f"{link_id(up.asset, k or None)} used {_short(up.used_versions.get(k))}, "
                    f"now {_short(up.current_versions[k])}"
                    for k in up.partition_keys()
                    if up.used_versions.get(k) != up.current_versions[k]
                ]
                detail = "; ".join(changed)
            else:
                now = ", ".join(
                    f"{link_id(up.asset, k or None)}={_short(up.current_versions[k])}"
                    for k in up.partition_keys()
                )
                detail = (
                    f"the input version it recorded ({_short(up.used_version)}) is not that of "
                    f"the current {now}"
                )
            flags.append(Flag("stale", lid, f"{lid} was built from older data: {detail}"))
        if link.timestamp is not None:
            for k in up.partition_keys():
                ts = up.current_timestamps.get(k)
                if ts is not None and ts > link.timestamp:
                    flags.append(
                        Flag(
                            "upstream_newer",
                            lid,
                            f"{link_id(up.asset, k or None)} was materialized at {_iso(ts)}, "
                            f"after {lid} used it ({_iso(link.timestamp)})",
                        )
                    )
    for c in link.checks:
        if c.status == CHECK_FAILED:
            sev = f" [{c.severity}]" if c.severity else ""
            desc = f": {c.description}" if c.description else ""
            flags.append(Flag("check_failed", lid, f"check {c.name}{sev} failed on {lid}{desc}"))
        elif c.in_materialization and c.status in (CHECK_MISSING, CHECK_SKIPPED, CHECK_OUTDATED):
            why = {
                CHECK_MISSING: "has no result",
                CHECK_SKIPPED: "was planned but never evaluated",
                CHECK_OUTDATED: "has no result for the current materialization",
            }[c.status]
            flags.append(Flag("check_missing", lid, f"check {c.name} of {lid} {why}"))
    fx = link.fixity
    if fx is not None:
        if fx.error is not None:
            flags.append(Flag("fixity_mismatch", lid, f"{lid}: {fx.error}"))
        if (
            fx.manifest_expected_sha256 is not None
            and fx.manifest_actual_sha256 is not None
            and fx.manifest_expected_sha256 != fx.manifest_actual_sha256
        ):
            flags.append(
                Flag(
                    "fixity_mismatch",
                    lid,
                    f"{lid}: manifest {fx.manifest} changed since materialization (sha256 "
                    f"{_short(fx.manifest_actual_sha256)}, recorded "
                    f"{_short(fx.manifest_expected_sha256)})",
                )
            )
        for p in fx.problems:
            if p.actual is None:
                msg = f"{lid}: source file {p.path} is missing (manifest {fx.manifest})"
            else:
                msg = (
                    f"{lid}: source file {p.path} changed: sha256 {p.actual}, manifest "
                    f"{fx.manifest} records {p.expected}"
                )
            flags.append(Flag("fixity_mismatch", lid, msg))
    elif link.is_root:
        flags.append(
            Flag(
                "missing_lineage",
                lid,
                f"{lid} is a root of the lineage but records no source manifest "
                "('source' and 'manifest' metadata): its raw files cannot be verified",
            )
        )
    return flags


def evaluate(links: Iterable[Link]) -> tuple[Flag, ...]:
    """Every flag the audit raises for ``links`` (deduplicated, in link order)."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Flag] = []
    for link in links:
        for f in _link_flags(link):
            key = (f.kind, f.link, f.message)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the report


def _from_dict_link(d: Mapping[str, Any]) -> Link:
    fx = d.get("fixity")
    fixity = None
    if fx is not None:
        fixity = FixityResult(
            **{
                **fx,
                "problems": tuple(FixityProblem(**p) for p in fx.get("problems", ())),
            }
        )
    return Link(
        **{
            **d,
            "upstream": tuple(
                UpstreamUse(**{**u, "partitions": tuple(u["partitions"])})
                for u in d.get("upstream", ())
            ),
            "checks": tuple(CheckResult(**c) for c in d.get("checks", ())),
            "fixity": fixity,
            "notes": tuple(d.get("notes", ())),
        }
    )


@dataclass(frozen=True)
class AuditReport:
    """The audit of one or more target links: every link walked, every flag raised."""

    targets: tuple[str, ...]
    links: tuple[Link, ...]
    flags: tuple[Flag, ...]
    generated_at: float
    notes: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        targets: Sequence[str],
        links: Sequence[Link],
        *,
        generated_at: float | None = None,
        notes: Sequence[str] = (),
    ) -> AuditReport:
        return cls(
            tuple(targets),
            tuple(links),
            evaluate(links),
            time.time() if generated_at is None else generated_at,
            tuple(notes),
        )

    @property
    def ok(self) -> bool:
        return not self.flags

    @property
    def exit_code(self) -> int:
        """0 when nothing is flagged, 1 otherwise (the CLI's exit code)."""
        return 0 if self.ok else 1

    def flags_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {k: 0 for k in FLAG_KINDS}
        for f in self.flags:
            counts[f.kind] += 1
        return counts

    def link(self, lid: str) -> Link:
        for link in self.links:
            if link.id == lid:
                return link
        raise KeyError(f"no link {lid!r} in the audit (links: {[x.id for x in self.links]})")

    def edges(self) -> list[tuple[str, str]]:
        """(upstream link id, downstream link id) for every dependency between walked links."""
        ids = {link.id for link in self.links}
        out = []
        for link in self.links:
            for up in link.upstream:
                for uid in up.link_ids():
                    if uid in ids:
                        out.append((uid, link.id))
        return out

    def merged(self, other: AuditReport) -> AuditReport:
        """One report over the targets of both (links deduplicated by id, flags re-evaluated)."""
        links = {link.id: link for link in self.links}
        for link in other.links:
            links.setdefault(link.id, link)
        targets = list(dict.fromkeys([*self.targets, *other.targets]))
        return AuditReport.build(
            targets,
            list(links.values()),
            generated_at=max(self.generated_at, other.generated_at),
            notes=list(dict.fromkeys([*self.notes, *other.notes])),
        )

    def with_notes(self, *notes: str) -> AuditReport:
        return replace(self, notes=(*self.notes, *notes))

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["exit_code"] = self.exit_code
        d["flags_by_kind"] = self.flags_by_kind()
        d["edges"] = [list(e) for e in self.edges()]
        d["generated_at_iso"] = _iso(self.generated_at)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditReport:
        return cls(
            targets=tuple(d["targets"]),
            links=tuple(_from_dict_link(x) for x in d["links"]),
            flags=tuple(Flag(**f) for f in d["flags"]),
            generated_at=float(d["generated_at"]),
            notes=tuple(d.get("notes", ())),
        )

    def fingerprint(self) -> str:
        """sha256 of the report's content without its generation time: identical lineage and
        flags give the same value (used as the audit asset's data version)."""
        d = asdict(self)
        d.pop("generated_at")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()

    def to_html(self, title: str | None = None) -> str:
        return render_html(self, title=title)


# ---------------------------------------------------------------------------------------------
# HTML


_NODE_W, _NODE_H, _COL_GAP, _ROW_GAP, _PAD = 250, 54, 90, 22, 20


def _layers(report: AuditReport) -> dict[str, int]:
    """Depth of each link: targets 0, an upstream one more than its deepest downstream."""
    ups: dict[str, list[str]] = {}
    for up_id, down_id in report.edges():
        ups.setdefault(down_id, []).append(up_id)
    depth: dict[str, int] = {}
    frontier: list[tuple[str, int]] = [(t, 0) for t in report.targets]
    # longest-path layering; the lineage is a DAG and small, so relaxation terminates quickly
    while frontier:
        nxt: list[tuple[str, int]] = []
        for lid, level in frontier:
            if depth.get(lid, -1) >= level:
                continue
            depth[lid] = level
            nxt.extend((u, level + 1) for u in ups.get(lid, []))
        frontier = nxt
    for link in report.links:  # links not reachable from a target (merged reports)
        depth.setdefault(link.id, 0)
    return depth


def _svg(report: AuditReport) -> str:
    depth = _layers(report)
    if not depth:
        return "<p>No links.</p>"
    max_d = max(depth.values())
    columns: dict[int, list[str]] = {}
    for lid, level in sorted(depth.items()):
        columns.setdefault(max_d - level, []).append(lid)
    flagged: dict[str, list[Flag]] = {}
    for f in report.flags:
        flagged.setdefault(f.link, []).append(f)
    by_id = {link.id: link for link in report.links}
    pos: dict[str, tuple[int, int]] = {}
    for col, ids in columns.items():
        for row, lid in enumerate(ids):
            pos[lid] = (_PAD + col * (_NODE_W + _COL_GAP), _PAD + row * (_NODE_H + _ROW_GAP))
    width = _PAD * 2 + (max_d + 1) * _NODE_W + max_d * _COL_GAP
    height = _PAD * 2 + max(len(v) for v in columns.values()) * (_NODE_H + _ROW_GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#555"/></marker></defs>',
    ]
    for up_id, down_id in report.edges():
        if up_id not in pos or down_id not in pos:
            continue
        x1, y1 = pos[up_id][0] + _NODE_W, pos[up_id][1] + _NODE_H // 2
        x2, y2 = pos[down_id][0], pos[down_id][1] + _NODE_H // 2
        parts.append(
            f'<path d="M {x1} {y1} C {x1 + _COL_GAP // 2} {y1}, {x2 - _COL_GAP // 2} {y2}, '
            f'{x2} {y2}" stroke="#555" fill="none" marker-end="url(#arrow)"/>'
        )
    for lid, (x, y) in pos.items():
        link = by_id.get(lid)
        fl = flagged.get(lid, [])
        if link is None or not link.materialized:
            fill, stroke = "#eeeeee", "#999999"
        elif fl:
            fill, stroke = "#fde2e1", "#c0392b"
        else:
            fill, stroke = "#e3f6e5", "#2e7d32"
        sub = (
            f"dv {_short(link.data_version)} · code {link.code_version or '?'}"
            if link is not None and link.materialized
            else "not materialized"
        )
        tip = "\n".join([lid, *(f"{f.kind}: {f.message}" for f in fl)]) or lid
        parts.append(
            f'<g><title>{html.escape(tip)}</title><rect x="{x}" y="{y}" width="{_NODE_W}" '
            f'height="{_NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
            f'<text x="{x + 10}" y="{y + 21}" font-size="13" font-weight="bold">'
            f"{html.escape(lid[:34])}</text>"
            f'<text x="{x + 10}" y="{y + 40}" font-size="11" fill="#333">'
            f"{html.escape(sub)}{' · ' + str(len(fl)) + ' flag(s)' if fl else ''}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top;
max-width:420px;overflow-wrap:anywhere}
th{background:#f3f3f3}.ok{color:#2e7d32}.bad{color:#c0392b}
.lineage{overflow-x:auto;border:1px solid #ddd;padding:8px}
code{font-size:12px}
"""


def render_html(report: AuditReport, *, title: str | None = None) -> str:
    """A self-contained HTML page: verdict, lineage drawn as inline SVG, flags, links, fixity."""
    title = title or f"Provenance audit: {', '.join(report.targets)}"
    verdict = (
        '<p class="ok"><b>No flags.</b> Every link is current, checked and traced to verified '
        "source files.</p>"
        if report.ok
        else f'<p class="bad"><b>{len(report.flags)} flag(s)</b>: '
        + ", ".join(f"{k} {n}" for k, n in report.flags_by_kind().items() if n)
        + "</p>"
    )
    flags = _table(["kind", "link", "message"], ((f.kind, f.link, f.message) for f in report.flags))
    link_rows = []
    for link in report.links:
        ups = "; ".join(
            f"{', '.join(u.link_ids())} ← "
            + (
                ", ".join(f"{k or '-'}={_short(v)}" for k, v in u.used_versions.items())
                if u.used_versions
                else _short(u.used_version)
            )
            + f" ({u.provenance_source})"
            for u in link.upstream
        )
        checks = "; ".join(f"{c.name}={c.status}" for c in link.checks)
        link_rows.append(
            (
                link.id,
                "yes" if link.materialized else "no",
                link.code_version or "",
                link.current_code_version or "",
                link.data_version or "",
                link.run_id or "",
                _iso(link.timestamp) if link.timestamp else "",
                ups,
                checks,
                link.uri or "",
            )
        )
    links = _table(
        [
            "link",
            "materialized",
            "code version",
            "code version now",
            "data version",
            "run id",
            "materialized at (UTC)",
            "upstream used",
            "checks",
            "uri",
        ],
        link_rows,
    )
    fixity_rows = [
        (
            link.id,
            link.fixity.root,
            link.fixity.manifest,
            link.fixity.n_files,
            "ok" if link.fixity.ok else "MISMATCH",
            "; ".join(p.path for p in link.fixity.problems) or (link.fixity.error or ""),
        )
        for link in report.links
        if link.fixity is not None
    ]
    fixity = _table(["link", "source root", "manifest", "files", "status", "problems"], fixity_rows)
    config_rows = [
        (link.id, json.dumps(link.config, sort_keys=True), json.dumps(link.library_versions))
        for link in report.links
        if link.config or link.library_versions
    ]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Generated {_iso(report.generated_at)} · targets "
        f"<code>{html.escape(', '.join(report.targets))}</code></p>{verdict}"
        f"<h2>Lineage</h2><div class='lineage'>{_svg(report)}</div>"
        "<p>Green: current and checked · red: flagged · grey: not materialized. Arrows point "
        "downstream.</p>"
        f"<h2>Flags</h2>{flags if report.flags else '<p>None.</p>'}"
        f"<h2>Links</h2>{links}"
        f"<h2>Fixity of source files</h2>{fixity if fixity_rows else '<p>No manifests.</p>'}"
        + (
            "<h2>Config and library versions</h2>"
            + _table(["link", "config", "library versions"], config_rows)
            if config_rows
            else ""
        )
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>\n"
    )
