"""A whole deposit package from a hand-built audit: bag, crate, DataCite (no Dagster)."""

from __future__ import annotations

import json
from pathlib import Path

import bagit
import pytest
from rocrate.rocrate import ROCrate

from fib_assets.core.provenance.audit import (
    AuditReport,
    CheckResult,
    FixityResult,
    Link,
    UpstreamUse,
    combined_partition_version,
)
from fib_assets.core.provenance.bag import EXTERNAL_MANIFEST, read_external_manifest
from fib_assets.core.provenance.crate import PROCESS_RUN_CRATE, CrateInvalid, read_crate
from fib_assets.core.provenance.datacite import record_from
from fib_assets.core.provenance.fixity import manifest_lines, sha256_file
from fib_assets.core.provenance.package import PackageError, PackageRequest, build_package


@pytest.fixture()
def lineage(tmp_path) -> AuditReport:
    landing = tmp_path / "landing" / "r001"
    landing.mkdir(parents=True)
    for i in range(3):
        (landing / f"slice{i}.dat").write_bytes(bytes([i]) * 200)
    inv = tmp_path / "storage" / "raw_acquisition" / "r001"
    inv.mkdir(parents=True)
    text = manifest_lines((p.name, sha256_file(p)) for p in sorted(landing.glob("*.dat")))
    (inv / "manifest-sha256.txt").write_text(text)
    vol = tmp_path / "storage" / "raw_volume" / "r001" / "v.zarr"
    (vol / "s0").mkdir(parents=True)
    (vol / "zarr.json").write_text("{}")
    for i in range(4):
        (vol / "s0" / f"chunk{i}").write_bytes(bytes([i]) * 5000)
    m = sha256_file(inv / "manifest-sha256.txt")
    raw = Link(
        "raw_acquisition", "r001", True, "dv-raw", "c1", "c1", "run-1", 1.7e9, 10, str(inv),
        checks=(CheckResult("slice_continuity", "SUCCEEDED"),),
        fixity=FixityResult(str(landing), str(inv / "manifest-sha256.txt"), 3, (), m, m),
        is_root=True,
    )  # fmt: skip
    volume = Link(
        "raw_volume", "r001", True, "dv-vol", "c2", "c2", "run-2", 1.7e9 + 9, 13, str(vol),
        upstream=(UpstreamUse("raw_acquisition", ("r001",),
                              combined_partition_version({"r001": "dv-raw"}), None, "dagster",
                              {"r001": "dv-raw"}, {"r001": 1.7e9}),),
    )  # fmt: skip
    return AuditReport.build(["raw_acquisition[r001]", "raw_volume[r001]"], [volume, raw])


def _request(report, **kw):
    base = dict(
        package_id="pkg-test",
        report=report,
        selected=report.targets,
        datacite=record_from(title="Test deposit", creators=["Doe, Jane"],
                             publisher="VT Libraries", publication_year=2026),
        max_payload_bytes=5000,
        license_url="https://creativecommons.org/licenses/by/4.0/",
    )  # fmt: skip
    return PackageRequest(**{**base, **kw})


def test_package_bag_crate_and_datacite(tmp_path, lineage):
    res = build_package(_request(lineage), tmp_path / "pkg")
    bag = bagit.Bag(res.path)
    bag.validate()  # bagit's own full validation
    assert set(bag.algorithms) == {"sha256", "sha512"}
    data = Path(res.path) / "data"
    # the raw .dat files fit the budget and are bagged; the volume's chunks do not
    assert sorted(p.name for p in (data / "sources/raw_acquisition/r001").iterdir()) == [
        "slice0.dat", "slice1.dat", "slice2.dat"
    ]  # fmt: skip
    assert (data / "assets/raw_volume/r001/zarr.json").exists()
    assert not (data / "assets/raw_volume/r001/s0").exists()
    ext = read_external_manifest(data / EXTERNAL_MANIFEST)
    assert sorted(Path(e.dest).name for e in ext) == [f"chunk{i}" for i in range(4)]
    assert all(sha256_file(Path(e.location.removeprefix("file://"))) == e.sha256 for e in ext)
    assert "subset" in (data / "README.md").read_text()

    # re-read the crate with rocrate itself
    crate = ROCrate(str(data))
    assert crate.root_dataset["conformsTo"].id == PROCESS_RUN_CRATE
    actions = {a["name"]: a for a in crate.get_by_type("CreateAction")}
    assert set(actions) == {"Materialize raw_acquisition[r001]", "Materialize raw_volume[r001]"}
    vol_action = actions["Materialize raw_volume[r001]"]
    assert vol_action["instrument"]["version"] == "c2"
    assert vol_action["identifier"] == "run-2"
    (obj,) = (
        vol_action["object"] if isinstance(vol_action["object"], list) else [vol_action["object"]]
    )
    acq_result = actions["Materialize raw_acquisition[r001]"]["result"]
    acq_result = acq_result[0] if isinstance(acq_result, list) else acq_result
    assert obj.id == acq_result.id  # the volume was made from the acquisition's output
    acq_objects = actions["Materialize raw_acquisition[r001]"]["object"]
    acq_objects = acq_objects if isinstance(acq_objects, list) else [acq_objects]
    assert [o.id for o in acq_objects] == ["sources/raw_acquisition/r001/"]
    summary = read_crate(data)
    assert len(summary["actions"]) == 2 and res.crate == summary
    assert res.datacite["titles"] == ["Test deposit"] and res.datacite["identifier"] == "(:tba)"
    audit = json.loads((data / "provenance/audit.json").read_text())
    assert audit["ok"] is True


def test_flagged_audit_needs_an_override_which_is_recorded(tmp_path, lineage):
    flagged = AuditReport.build(
        lineage.targets,
        [lineage.links[0].__class__(**{**lineage.links[0].__dict__, "current_code_version": "c3"}),
         lineage.links[1]],
    )  # fmt: skip
    assert not flagged.ok
    with pytest.raises(PackageError, match="no override"):
        build_package(_request(flagged), tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()
    override = {"reason": "code change is cosmetic", "by": "curator", "at": "2026-01-01"}
    res = build_package(_request(flagged, override=override), tmp_path / "pkg")
    bag = bagit.Bag(res.path)
    assert "cosmetic" in bag.info["FIB-Assets-Audit-Override"]
    readme = (Path(res.path) / "data/README.md").read_text()
    assert "Audit override" in readme and "cosmetic" in readme
    crate = ROCrate(str(Path(res.path) / "data"))
    assert "cosmetic" in crate.root_dataset["fib_assets:auditOverride"]


def test_missing_source_file_is_named_and_nothing_is_left(tmp_path, lineage):
    src = Path(lineage.link("raw_acquisition[r001]").fixity.root) / "slice1.dat"
    src.unlink()
    with pytest.raises(PackageError, match="slice1.dat"):
        build_package(_request(lineage), tmp_path / "pkg")
    assert not list(tmp_path.glob("*pkg*"))


def test_crate_reader_rejects_a_broken_crate(tmp_path, lineage):
    res = build_package(_request(lineage, max_payload_bytes=10**6), tmp_path / "pkg")
    data = Path(res.path) / "data"
    meta = json.loads((data / "ro-crate-metadata.json").read_text())
    for e in meta["@graph"]:
        if e.get("@type") == "CreateAction":
            e.pop("instrument")
    (data / "ro-crate-metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CrateInvalid, match="no instrument"):
        read_crate(data)
