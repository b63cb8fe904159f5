"""Payload planning, bagging, validation and zipping (bagit does the validating)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import bagit
import pytest

from fib_assets.core.provenance.bag import (
    EXTERNAL_MANIFEST,
    BagInvalid,
    PayloadFile,
    collect_group,
    make_package_bag,
    plan_payload,
    read_external_manifest,
    validate_bag,
    write_payload,
    zip_bag,
)


@pytest.fixture()
def volume(tmp_path) -> Path:
    """A tiny Zarr-like folder: metadata files and chunk files."""
    root = tmp_path / "vol.zarr"
    (root / "s0" / "c").mkdir(parents=True)
    (root / "zarr.json").write_text('{"zarr_format": 3}')
    (root / "s0" / "zarr.json").write_text('{"shape": [4, 4]}')
    for i in range(3):
        (root / "s0" / "c" / str(i)).write_bytes(bytes([i]) * 1000)
    return root


def test_small_groups_are_included_whole_large_ones_as_subsets(tmp_path, volume):
    small = tmp_path / "inv"
    small.mkdir()
    (small / "region.json").write_text("{}")
    groups = [collect_group("inv", small, "assets/inv"), collect_group("vol", volume, "assets/vol")]
    plan = plan_payload(groups, max_bytes=500)
    assert plan.groups["inv"].startswith("whole")
    assert plan.groups["vol"].startswith("subset")
    included = {f.dest for f in plan.included}
    assert included == {"assets/inv/region.json", "assets/vol/zarr.json", "assets/vol/s0/zarr.json"}
    assert {Path(f.dest).name for f in plan.external} == {"0", "1", "2"}
    whole = plan_payload(groups, max_bytes=10_000)
    assert not whole.external and len(whole.included) == 6


def test_payload_paths_must_stay_inside():
    with pytest.raises(ValueError, match="inside the payload"):
        PayloadFile("/x", "../escape", 1)
    with pytest.raises(ValueError, match="inside the payload"):
        PayloadFile("/x", "/abs", 1)


def test_bag_validates_with_both_algorithms_and_detects_tampering(tmp_path, volume):
    plan = plan_payload([collect_group("vol", volume, "assets/vol")], max_bytes=100)
    stage = tmp_path / "bag"
    stage.mkdir()
    externals = write_payload(plan, stage)
    assert len(externals) == 3
    rows = read_external_manifest(stage / EXTERNAL_MANIFEST)
    for e in rows:
        src = Path(e.location.removeprefix("file://"))
        assert hashlib.sha256(src.read_bytes()).hexdigest() == e.sha256
        assert e.size == src.stat().st_size
    make_package_bag(stage, {"External-Identifier": "pkg-test", "FIB-Assets-Selection": ["a", "b"]})
    summary = validate_bag(stage)
    assert set(summary["algorithms"]) == {"sha256", "sha512"}
    bag = bagit.Bag(str(stage))
    assert bag.is_valid() and bag.info["FIB-Assets-Selection"] == ["a", "b"]
    assert (stage / "manifest-sha256.txt").exists() and (stage / "manifest-sha512.txt").exists()

    target = stage / "data" / "assets" / "vol" / "zarr.json"
    target.write_text('{"zarr_format": 2}')
    with pytest.raises(BagInvalid) as err:
        validate_bag(stage)
    assert "data/assets/vol/zarr.json" in str(err.value) and str(stage) in str(err.value)
    target.write_text("longer content: the Payload-Oxum check fails first")
    with pytest.raises(BagInvalid, match="data/assets/vol/zarr.json: sha256 is"):
        validate_bag(stage)
    target.unlink()
    with pytest.raises(BagInvalid, match="data/assets/vol/zarr.json: listed in the manifest but"):
        validate_bag(stage)


def test_zip_is_deterministic(tmp_path, volume):
    plan = plan_payload([collect_group("vol", volume, "assets/vol")], max_bytes=10_000)
    stage = tmp_path / "bag"
    stage.mkdir()
    write_payload(plan, stage)
    make_package_bag(stage, {})
    a = zip_bag(stage, tmp_path / "a.zip").read_bytes()
    b = zip_bag(stage, tmp_path / "b.zip").read_bytes()
    assert a == b and len(a) > 3000
