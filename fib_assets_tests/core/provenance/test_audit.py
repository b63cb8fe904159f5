"""Audit rules and rendering on hand-built lineages (no Dagster)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest

from fib_assets.core.provenance.audit import (
    AuditReport,
    CheckResult,
    FixityProblem,
    FixityResult,
    Link,
    UpstreamUse,
    combined_partition_version,
)

T0 = 1_700_000_000.0


def _lineage(**changes) -> list[Link]:
    raw = Link(
        "raw_acquisition",
        "r001",
        True,
        data_version="dv-raw",
        code_version="c1",
        current_code_version="c1",
        run_id="run-a",
        timestamp=T0,
        storage_id=10,
        uri="/data/raw",
        checks=(CheckResult("slice_continuity", "SUCCEEDED"),),
        fixity=FixityResult("/landing/r001", "/data/raw/manifest-sha256.txt", 3, (), "m", "m"),
        is_root=True,
    )
    vol = Link(
        "raw_volume",
        "r001",
        True,
        data_version="dv-vol",
        code_version="c1",
        current_code_version="c1",
        run_id="run-a",
        timestamp=T0 + 5,
        storage_id=13,
        upstream=(
            UpstreamUse(
                "raw_acquisition",
                ("r001",),
                combined_partition_version({"r001": "dv-raw"}),
                None,
                "dagster",
                {"r001": "dv-raw"},
                {"r001": T0},
            ),
        ),
        checks=(
            CheckResult("saturation", "SUCCEEDED", severity="WARN"),
            CheckResult("fixity", "NOT_RUN", in_materialization=False),
        ),
    )
    links = {"raw": raw, "vol": vol}
    for name, kw in changes.items():
        links[name] = replace(links[name], **kw)
    return [links["vol"], links["raw"]]


def _kinds(report: AuditReport) -> set[str]:
    return {f.kind for f in report.flags}


def test_clean_lineage_has_no_flags_and_exit_0():
    rep = AuditReport.build(["raw_volume[r001]"], _lineage())
    assert rep.ok and rep.exit_code == 0 and rep.flags == ()
    assert rep.edges() == [("raw_acquisition[r001]", "raw_volume[r001]")]


def test_combined_version_mirrors_dagster():
    versions = {"r002": "b", "r001": "a"}
    assert combined_partition_version(versions) == hashlib.sha256(b"ab").hexdigest()


@pytest.mark.parametrize(
    "changes,kind,text",
    [
        ({"vol": {"current_code_version": "c2"}}, "stale", "code version 'c1'"),
        (
            {"vol": {"checks": (CheckResult("saturation", "FAILED", "WARN", "too bright"),)}},
            "check_failed",
            "too bright",
        ),
        (
            {"vol": {"checks": (CheckResult("saturation", "MISSING"),)}},
            "check_missing",
            "no result",
        ),
        (
            {"vol": {"checks": (CheckResult("saturation", "OUTDATED"),)}},
            "check_missing",
            "current materialization",
        ),
        ({"raw": {"fixity": None}}, "missing_lineage", "no source manifest"),
        ({"raw": {"materialized": False}}, "missing_lineage", "no materialization"),
    ],
    ids=["code", "check-failed", "check-missing", "check-outdated", "no-manifest", "unmat"],
)
def test_each_rule(changes, kind, text):
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(**changes))
    assert kind in _kinds(rep), rep.flags
    assert any(text in f.message for f in rep.flags if f.kind == kind)
    assert rep.exit_code == 1


def test_fixity_mismatch_names_the_file():
    fx = FixityResult(
        "/landing/r001",
        "/data/raw/manifest-sha256.txt",
        3,
        (
            FixityProblem("s01.dat", "/landing/r001/s01.dat", "aa", "bb"),
            FixityProblem("s02.dat", "/landing/r001/s02.dat", "cc", None),
        ),
        "m",
        "m2",
    )
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(raw={"fixity": fx}))
    msgs = [f.message for f in rep.flags if f.kind == "fixity_mismatch"]
    assert any("/landing/r001/s01.dat changed" in m for m in msgs)
    assert any("/landing/r001/s02.dat is missing" in m for m in msgs)
    assert any("manifest" in m and "changed since" in m for m in msgs)


def test_upstream_rematerialized_with_same_data_is_newer_not_stale():
    vol = _lineage()[0]
    up = replace(vol.upstream[0], current_timestamps={"r001": T0 + 60})
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(vol={"upstream": (up,)}))
    assert _kinds(rep) == {"upstream_newer"}


def test_upstream_with_new_data_is_stale_and_newer():
    vol = _lineage()[0]
    up = replace(
        vol.upstream[0], current_versions={"r001": "dv-raw-2"}, current_timestamps={"r001": T0 + 9}
    )
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(vol={"upstream": (up,)}))
    assert _kinds(rep) == {"stale", "upstream_newer"}


def test_fib_assets_upstream_metadata_compares_per_partition():
    up = UpstreamUse(
        "raw_volume",
        ("r001", "r002"),
        None,
        {"r001": "v1", "r002": "v2"},
        "fib_assets",
        {"r001": "v1", "r002": "v2-new"},
        {"r001": T0, "r002": T0},
    )
    bench = Link("format_benchmark", None, True, "dv", "c", "c", "run", T0 + 1, 20, upstream=(up,))
    assert up.matches_current() is False
    rep = AuditReport.build(["format_benchmark"], [bench])
    (stale,) = [f for f in rep.flags if f.kind == "stale"]
    assert "raw_volume[r002] used v2, now v2-new" in stale.message


def test_no_recorded_input_version_is_missing_lineage():
    vol = _lineage()[0]
    up = replace(vol.upstream[0], used_version=None, provenance_source="none")
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(vol={"upstream": (up,)}))
    assert _kinds(rep) == {"missing_lineage"}


def test_json_round_trip_and_merge():
    rep = AuditReport.build(["raw_volume[r001]"], _lineage(vol={"current_code_version": "c2"}))
    back = AuditReport.from_dict(json.loads(rep.to_json()))
    assert back == rep
    assert json.loads(rep.to_json())["flags_by_kind"]["stale"] == 1
    other = AuditReport.build(["raw_acquisition[r001]"], [_lineage()[1]])
    merged = rep.merged(other)
    assert merged.targets == ("raw_volume[r001]", "raw_acquisition[r001]")
    assert len(merged.links) == 2 and len(merged.flags) == 1
    assert rep.fingerprint() == replace(rep, generated_at=0.0).fingerprint()


def test_html_is_self_contained_and_escaped():
    links = _lineage(vol={"checks": (CheckResult("saturation", "FAILED", "WARN", "<b>bad</b>"),)})
    rep = AuditReport.build(["raw_volume[r001]"], links)
    page = rep.to_html()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "</svg>" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page and "<b>bad</b>" not in page
    # no network assets: no scripts, stylesheets, images or fonts fetched from anywhere
    assert not re.search(r"<script|<link|<img|@import|url\(http", page)
    assert all(u == "http://www.w3.org/2000/svg" or "schema.org" in u
               for u in re.findall(r"https?://[^\s\"'<)]+", page))  # fmt: skip
    # both links are drawn, the flagged one in red
    assert page.count("<rect") == 2 and "#c0392b" in page
