"""The provenance family on a real (temporary SQLite) Dagster instance: audit, fixity checks and
schedule, deposit package (bagit + rocrate), repository draft (local fake Figshare)."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
from pathlib import Path

import bagit
import dagster as dg
import pytest
from rocrate.rocrate import ROCrate

from fib_assets.audit import audit_command, deposit_command, run_audit
from fib_assets.core.acquisition.region import source_files
from fib_assets.core.provenance.audit import CHECK_NOT_RUN
from fib_assets.core.provenance.bag import read_external_manifest
from fib_assets.core.provenance.crate import PROCESS_RUN_CRATE
from fib_assets.core.provenance.fixity import sha256_file
from fib_assets.definitions import defs as base_defs
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.partitions import regions
from fib_assets.defs.provenance.resources import FigshareResource
from fib_assets.defs.provenance.schedules import fixity_schedules
from fib_assets.defs.resources import QCThresholdsResource, StorageResource
from fib_assets_tests.core.provenance.fake_figshare import FakeFigshare
from fib_assets_tests.dagster_helpers import failure_text, materialize

TOKEN = "figshare-test-token-7c1e0d5a"
DEFS = base_defs  # the code location, provenance family wired


def _resources(root: Path, landing: Path, api_url: str = "http://127.0.0.1:9/v2") -> dict:
    return {
        "storage": StorageResource(root=str(root / "storage"), landing_zone=str(landing)),
        "qc_thresholds": QCThresholdsResource(),
        "annotations": AnnotationsResource(inbox=str(root / "annotations")),
        "figshare": FigshareResource(
            token=TOKEN, api_url=api_url, max_attempts=2, backoff_seconds=0.0, timeout_seconds=10
        ),
    }


def _acquire(instance, region, resources, selection=None):
    instance.add_dynamic_partitions(regions.name, [region])
    return materialize(
        instance, resources, selection or dg.AssetSelection.groups("acquisitions"), region
    )


def _run(instance, resources, selection, config=None, partition=None):
    return materialize(instance, resources, selection, partition, dg.RunConfig(ops=config or {}))


@pytest.fixture()
def landing(tmp_path, tiny_sample) -> Path:
    dst = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing", dst)
    return dst


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


# --------------------------------------------------------------------------------------------
# a shared, read-mostly instance: r001 clean and r002 broken, materialized once


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_sample):
    root = tmp_path_factory.mktemp("prov")
    land = root / "landing"
    shutil.copytree(tiny_sample / "landing", land)
    res = _resources(root, land)
    with dg.instance_for_test() as inst:
        assert _acquire(inst, "r001", res).success
        assert not _acquire(inst, "r002", res).success  # blocking checks stop raw_volume
        yield inst, res, root


def test_clean_lineage_has_no_flags(shared, capsys):
    inst, _, root = shared
    rep = run_audit(DEFS, inst, "raw_volume", "r001")
    assert rep.ok and rep.exit_code == 0, rep.flags
    assert [link.id for link in rep.links] == ["raw_volume[r001]", "raw_acquisition[r001]"]
    vol, acq = rep.links
    assert vol.upstream[0].provenance_source == "fib_assets" and vol.upstream[0].matches_current()
    assert vol.code_version and vol.run_id and vol.timestamp and vol.data_version
    assert {c.name: c.status for c in vol.checks}["saturation"] == "SUCCEEDED"
    assert acq.fixity is not None and acq.fixity.ok and acq.fixity.n_files == 16
    # the scheduled fixity check has not run yet: informational, not a flag
    assert {c.name: c.status for c in acq.checks}["source_fixity"] == CHECK_NOT_RUN
    html = root / "audit.html"
    assert audit_command(DEFS, inst, "raw_volume", "r001", html=html) == 0
    assert "OK: no flags" in capsys.readouterr().out
    assert "<svg" in html.read_text() and "raw_acquisition[r001]" in html.read_text()
    assert audit_command(DEFS, inst, "raw_volume", "r001", as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_failed_checks_and_missing_links_are_flagged(shared, capsys):
    inst, _, _ = shared
    rep = run_audit(DEFS, inst, "raw_acquisition", "r002")
    failed = {f.message for f in rep.flags if f.kind == "check_failed"}
    assert any("slice_continuity" in m for m in failed)
    assert any("source_files_readable" in m and "truncated" in m for m in failed)
    vol = run_audit(DEFS, inst, "raw_volume", "r002")
    assert {f.kind for f in vol.flags} == {"missing_lineage", "check_failed"}
    assert audit_command(DEFS, inst, "raw_volume", "r002") == 1
    assert "[missing_lineage] raw_volume[r002] has no materialization" in capsys.readouterr().out
    # bad input is a clear error (exit 2), not a traceback
    assert audit_command(DEFS, inst, "raw_volume", None) == 2
    assert audit_command(DEFS, inst, "raw_volume", "r009") == 2
    assert audit_command(DEFS, inst, "no_such_asset", "r001") == 2
    assert "unknown asset" in capsys.readouterr().out


def test_provenance_audit_asset_writes_json_and_html(shared):
    inst, res, _ = shared
    result = _run(inst, res, ["provenance_audit"], partition="r001")
    assert result.success, failure_text(result)
    (mat,) = [m.materialization for m in result.get_asset_materialization_events()]
    assert mat.metadata["n_flags"].value == 0
    assert mat.metadata["targets"].value == ["raw_volume[r001]"]
    report = json.loads(Path(mat.metadata["report_json"].value).read_text())
    assert report["ok"] and len(report["links"]) == 2
    assert Path(mat.metadata["dagster/uri"].value).read_text().startswith("<!DOCTYPE html>")
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "audit_clean" and check.passed
    up = mat.metadata["upstream"].value
    assert up["raw_volume"][0]["partition"] == "r001" and up["raw_volume"][0]["data_version"]


def test_deposit_package_bag_crate_datacite(shared):
    inst, res, _ = shared
    cfg = {"regions": ["r001"], "max_payload_mib": 0.4, "creators": ["Doe, Jane"]}
    result = _run(inst, res, ["deposit_package"], {"deposit_package": {"config": cfg}})
    assert result.success, failure_text(result)
    (mat,) = [m.materialization for m in result.get_asset_materialization_events()]
    bag_dir = Path(mat.metadata["dagster/uri"].value)
    bag = bagit.Bag(str(bag_dir))
    bag.validate()  # bagit's full validation: every sha256 and sha512
    assert set(bag.algorithms) == {"sha256", "sha512"}
    assert bag.info["FIB-Assets-Audit"] == "clean"
    assert mat.tags["dagster/data_version"] == sha256_file(bag_dir / "tagmanifest-sha256.txt")
    data = bag_dir / "data"
    # 16 .dat slices fit the budget; the raw volume's chunks do not: subset + external list
    assert len(list((data / "sources/raw_acquisition/r001").glob("*.dat"))) == 16
    ext = read_external_manifest(data / "external-locations-sha256.tsv")
    assert ext and all(e.dest.startswith("assets/raw_volume/r001/") for e in ext)
    for e in ext[:5]:
        assert sha256_file(Path(e.location.removeprefix("file://"))) == e.sha256
    assert (data / "assets/raw_volume/r001").is_dir()  # its metadata files (zarr.json …)

    crate = ROCrate(str(data))
    assert crate.root_dataset["conformsTo"].id == PROCESS_RUN_CRATE
    actions = {a["name"]: a for a in crate.get_by_type("CreateAction")}
    assert set(actions) == {"Materialize raw_acquisition[r001]", "Materialize raw_volume[r001]"}
    rep = run_audit(DEFS, inst, "raw_volume", "r001")
    for link in rep.links:
        action = actions[f"Materialize {link.id}"]
        assert action["instrument"]["version"] == link.code_version
        assert action["identifier"] == link.run_id
    xml = (data / "metadata/datacite.xml").read_text()
    assert '<creatorName nameType="Personal">Doe, Jane</creatorName>' in xml
    assert mat.metadata["crate_actions"].value == 2

    # a rerun with the same selection reuses the validated package
    again = _run(inst, res, ["deposit_package"], {"deposit_package": {"config": cfg}})
    assert again.success
    (mat2,) = [m.materialization for m in again.get_asset_materialization_events()]
    assert mat2.metadata["dagster/uri"].value == str(bag_dir)


def test_flagged_selection_is_refused_unless_overridden(shared):
    inst, res, _ = shared
    cfg = {"assets": ["raw_acquisition"], "regions": ["r002"]}
    refused = _run(inst, res, ["deposit_package"], {"deposit_package": {"config": cfg}})
    assert not refused.success
    msg = failure_text(refused)
    assert "check_failed" in msg and "slice_continuity" in msg and "nothing was packaged" in msg
    no_reason = {**cfg, "allow_flagged": True}
    result = _run(inst, res, ["deposit_package"], {"deposit_package": {"config": no_reason}})
    assert not result.success and "override_reason" in failure_text(result)
    ok_cfg = {**no_reason, "override_reason": "deposited as an example of a broken acquisition"}
    result = _run(inst, res, ["deposit_package"], {"deposit_package": {"config": ok_cfg}})
    assert result.success, failure_text(result)
    (mat,) = [m.materialization for m in result.get_asset_materialization_events()]
    assert "broken acquisition" in mat.metadata["audit_override"].value["reason"]
    bag = bagit.Bag(str(mat.metadata["dagster/uri"].value))
    assert "broken acquisition" in bag.info["FIB-Assets-Audit-Override"]


def test_deposit_command_reports_what_it_did(shared):
    inst, res, _ = shared
    lines: list[str] = []
    code = deposit_command(
        DEFS, inst, assets=["raw_acquisition"], regions=["r001"], resources=res, echo=lines.append
    )
    assert code == 0 and lines[0].startswith("deposit_package: ") and "/bag" in lines[0]
    lines.clear()
    code = deposit_command(
        DEFS, inst, assets=["raw_acquisition"], regions=["r002"], resources=res, echo=lines.append
    )
    assert code == 1 and "error in deposit_package" in lines[-1] and "check_failed" in lines[-1]


# --------------------------------------------------------------------------------------------
# lineage changes: each test on its own instance


def test_tampered_source_is_a_fixity_mismatch(instance, tmp_path, landing):
    res = _resources(tmp_path, landing)
    assert _acquire(instance, "r001", res).success
    f = source_files(landing / "r001")[3]
    data = bytearray(f.read_bytes())
    data[2000] ^= 0xFF
    f.write_bytes(bytes(data))
    rep = run_audit(DEFS, instance, "raw_volume", "r001")
    (flag,) = rep.flags
    assert flag.kind == "fixity_mismatch" and str(f) in flag.message
    assert audit_command(DEFS, instance, "raw_volume", "r001", echo=lambda s: None) == 1

    # the fixity check reports the drift as a failing ERROR check; the schedule requests it
    when = datetime.datetime(2026, 3, 1, 3, 0, tzinfo=datetime.UTC)
    ctx = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=DEFS.get_repository_def()
    )
    sched = {s.name: s for s in fixity_schedules}["fixity_schedule"]
    (req,) = sched.evaluate_tick(ctx).run_requests
    assert req.tags["dagster/partition"] == "r001"
    job = DEFS.resolve_job_def("source_fixity_job")
    out = job.execute_in_process(
        instance=instance, tags=req.tags, resources=res, raise_on_error=False
    )
    (ev,) = out.get_asset_check_evaluations()
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    assert f.name in ev.description
    rep = run_audit(DEFS, instance, "raw_acquisition", "r001")
    assert {fl.kind for fl in rep.flags} == {"fixity_mismatch", "check_failed"}

    f.unlink()  # a missing source file is named too
    rep = run_audit(DEFS, instance, "raw_acquisition", "r001")
    assert any("is missing" in fl.message and str(f) in fl.message for fl in rep.flags)


def test_rematerialized_upstream_is_newer_and_changed_upstream_is_stale(
    instance, tmp_path, landing
):
    res = _resources(tmp_path, landing)
    assert _acquire(instance, "r001", res).success
    # same bytes again: upstream materialized after the volume used it, same data version
    assert _acquire(instance, "r001", res, selection=["raw_acquisition"]).success
    rep = run_audit(DEFS, instance, "raw_volume", "r001")
    assert {f.kind for f in rep.flags} == {"upstream_newer"}
    # new bytes: a new acquisition data version the volume was not built from
    f = source_files(landing / "r001")[0]
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")
    assert _acquire(instance, "r001", res, selection=["raw_acquisition"]).success
    rep = run_audit(DEFS, instance, "raw_volume", "r001")
    assert {f.kind for f in rep.flags} == {"upstream_newer", "stale"}
    (stale,) = [f for f in rep.flags if f.kind == "stale"]
    assert "raw_volume[r001] was built from older data" in stale.message
    # no fixity flag: the new manifest matches the new bytes
    assert rep.link("raw_acquisition[r001]").fixity.ok


# --------------------------------------------------------------------------------------------
# repository draft


@pytest.fixture()
def packaged(instance, tmp_path, landing):
    res = _resources(tmp_path, landing)
    assert _acquire(instance, "r001", res).success
    cfg = {"regions": ["r001"], "max_payload_mib": 0.4}
    assert _run(instance, res, ["deposit_package"], {"deposit_package": {"config": cfg}}).success
    return instance, tmp_path, landing


def _draft(instance, tmp_path, landing, server):
    res = _resources(tmp_path, landing, api_url=server.api_url)
    return _run(instance, res, ["repository_draft"])


def _everything_logged(instance, results) -> str:
    texts = []
    for r in results:
        for rec in instance.all_logs(r.run_id):
            texts.append(rec.user_message or "")
            texts.append(str(rec.dagster_event) if rec.dagster_event else "")
        run = instance.get_run_by_id(r.run_id)
        texts.append(json.dumps(run.run_config, default=str) + json.dumps(run.tags))
    return "\n".join(texts)


def test_repository_draft_resumes_after_5xx_and_never_duplicates(packaged, caplog, capfd):
    instance, tmp_path, landing = packaged
    server = FakeFigshare(token=TOKEN, part_size=256 * 1024, fail_parts={2: -1}).start()
    try:
        with caplog.at_level(logging.DEBUG):
            first = _draft(instance, tmp_path, landing, server)
            assert not first.success
            msg = failure_text(first)
            assert "not done" in msg and "part 2" in msg and ".bag.zip" in msg and "500" in msg
            assert not first.get_asset_materialization_events()  # nothing reported as done
            (zip_file,) = [f for f in server.files.values() if f["name"].endswith(".bag.zip")]
            assert zip_file["status"] == "created"

            server.fail_parts = {}
            second = _draft(instance, tmp_path, landing, server)
            assert second.success, failure_text(second)
            (mat,) = [m.materialization for m in second.get_asset_materialization_events()]
            assert mat.metadata["resumed"].value == [zip_file["name"]]
            part1 = f"^/upload/{zip_file['token']}/1$"
            assert len(server.calls("PUT", part1)) == 1  # finished parts are not re-sent

            third = _draft(instance, tmp_path, landing, server)
            assert third.success
            (mat3,) = [m.materialization for m in third.get_asset_materialization_events()]
            assert len(mat3.metadata["skipped"].value) == 4
        assert len(server.articles) == 1
        names = sorted(f["name"] for f in server.files.values())
        assert len(names) == len(set(names)) == 4
        assert all(f["status"] == "available" for f in server.files.values())
        assert "datacite.xml" in names and "ro-crate-metadata.json" in names
        assert not server.calls(pattern="publish")
        assert mat.metadata["status"].value.startswith("draft (not published)")
        # the token never lands in metadata, the event log, run config or logs
        leaked = _everything_logged(instance, [first, second, third])
        leaked += json.dumps({k: str(v.value) for k, v in mat.metadata.items()})
        out, err = capfd.readouterr()
        assert TOKEN not in leaked + caplog.text + out + err
    finally:
        server.stop()


def test_expired_token_and_tampered_package_are_clear_errors(packaged):
    instance, tmp_path, landing = packaged
    server = FakeFigshare(token=TOKEN, expired=True).start()
    try:
        result = _draft(instance, tmp_path, landing, server)
        assert not result.success
        msg = failure_text(result)
        assert "401" in msg and "FIGSHARE_TOKEN" in msg and TOKEN not in msg
        assert not server.articles

        server.expired = False
        recs = instance.fetch_materializations(dg.AssetKey("deposit_package"), limit=1).records
        bag_dir = Path(recs[0].event_log_entry.asset_materialization.metadata["dagster/uri"].value)
        victim = next((bag_dir / "data" / "sources").rglob("*.dat"))
        victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
        n = len(server.log)
        result = _draft(instance, tmp_path, landing, server)
        assert not result.success
        msg = failure_text(result)
        assert "nothing uploaded" in msg and victim.name in msg and str(bag_dir) in msg
        assert len(server.log) == n  # not a single request
    finally:
        server.stop()
