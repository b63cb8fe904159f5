"""The ground-truth family on a real (temporary SQLite) Dagster instance: synthetic annotations
delivered to the inbox as Paintera containers, picked up by the sensor, imported as revisions;
corrections, bad containers and a train/test leak."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # internal; see notes

from fib_assets.core import labels
from fib_assets.core.formats.paintera import open_label_group, write_paintera_labels
from fib_assets.definitions import defs as project_defs
from fib_assets.defs import ground_truth
from fib_assets.defs.ground_truth.assets import ground_truth_crops
from fib_assets.defs.ground_truth.sensors import annotations_inbox_sensor
from fib_assets.defs.partitions import regions
from fib_assets_tests.conftest import code_location_resources
from fib_assets_tests.dagster_helpers import materialization, materialize

REGION = "r001"
ALL_CHECKS = {
    labels.IDS_IN_CLASS_MAP,
    labels.CROPS_INSIDE_RAW,
    labels.VOXEL_SIZE_COMPATIBLE,
    labels.CROPS_NOT_EMPTY,
    labels.ANNOTATED_FRACTION,
    labels.SPLIT_DISJOINT,
}


@pytest.fixture()
def env(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample / "landing" / REGION, landing / REGION)
    inbox = tmp_path / "annotations"
    resources = code_location_resources(tmp_path, landing)
    return {
        "resources": resources,
        "inbox": inbox,
        "gt": tiny_sample / "groundtruth" / f"{REGION}.zarr",
        "store": labels.RevisionStore(tmp_path / "storage" / "ground_truth_crops" / REGION),
    }


@dg.asset(partitions_def=regions, deps=[ground_truth_crops])
def toy_model() -> dg.MaterializeResult:
    """Stands in for a model trained on the crops (to see staleness after a correction)."""
    return dg.MaterializeResult()


def _defs() -> dg.Definitions:
    """The project's definitions with the ground-truth family (merged here until
    ``fib_assets/definitions.py`` wires it)."""
    keys = project_defs.resolve_asset_graph().get_all_asset_keys()
    if ground_truth_crops.key in keys:
        return project_defs
    return dg.Definitions.merge(project_defs, ground_truth.defs)


def _assets():
    return [*(a for a in _defs().assets if isinstance(a, dg.AssetsDefinition)), toy_model]


def _materialize(instance, resources, selection):
    return materialize(instance, resources, selection, REGION, assets=_assets())


def _staleness(instance) -> StaleStatus:
    return get_stale_status_resolver(instance, _assets()).get_status(toy_model.key, REGION)


def _failure(result) -> str:
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(failure.event_specific_data.error.message)


def _sensor(instance, resources, cursor=None):
    ctx = dg.build_sensor_context(
        instance=instance, resources={"annotations": resources["annotations"]}, cursor=cursor
    )
    return annotations_inbox_sensor(ctx)


def _rewrite(path: Path, change) -> None:
    """Save an edited copy of a Paintera container, as Paintera does after a correction."""
    g = open_label_group(path)
    data = g.read()
    change(data)
    side = (path / labels.SIDECAR).read_bytes()
    write_paintera_labels(
        path,
        data,
        voxel_size=g.resolution,
        offset_nm=g.offset_nm,
        group=g.group,
        extra_files={labels.SIDECAR: side},
    )


def test_definitions_wire_the_family():
    # a fresh instance: loading consults the current instance, and a test elsewhere
    # in the suite can leave a stale one behind
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(_defs())
    spec = next(s for s in ground_truth_crops.specs if s.key == ground_truth_crops.key)
    assert spec.group_name == "ground_truth" and spec.owners == ["team:curation"]
    assert {"zarr", "n5"} <= set(spec.kinds)
    assert [d.asset_key for d in spec.deps] == [dg.AssetKey("raw_volume")]
    blocking = {c.name: c.blocking for c in ground_truth_crops.check_specs}
    assert set(blocking) == ALL_CHECKS
    assert not blocking[labels.ANNOTATED_FRACTION] and blocking[labels.SPLIT_DISJOINT]


def test_inbox_to_revisions_corrections_bad_input_and_leak(env):
    resources, inbox, store = env["resources"], env["inbox"], env["store"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(regions.name, [REGION])
        paths = labels.deliver_synthetic_annotations(
            env["gt"], inbox, REGION, raw_voxel_size_nm=8.0, n_crops=3, seed=0
        )
        # the sensor waits until the raw volume exists
        pending = _sensor(instance, resources)
        assert not pending.run_requests
        assert "raw_volume" in json.loads(pending.cursor)["pending"][REGION]

        acq = _materialize(instance, resources, dg.AssetSelection.groups("acquisitions"))
        assert acq.success
        res = _sensor(instance, resources, pending.cursor)
        (req,) = res.run_requests
        assert req.partition_key == REGION and req.run_key.startswith(f"annotations-{REGION}-")
        assert not _sensor(instance, resources, res.cursor).run_requests  # nothing new

        # revision 1: every check passes and it becomes current
        first = _materialize(instance, resources, [ground_truth_crops.key])
        assert first.success
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(ALL_CHECKS, True)
        mat1 = materialization(first, "ground_truth_crops")
        assert mat1.metadata["revision"].value == 1 and mat1.metadata["accepted"].value is True
        assert mat1.metadata["n_crops"].value == 3 and mat1.metadata["n_test"].value == 1
        assert "data:image/png;base64" in mat1.metadata["overlay"].value
        dv1 = mat1.tags["dagster/data_version"]
        assert dv1 == store.current().data_version
        rev_dir = Path(mat1.metadata["dagster/uri"].value)
        assert rev_dir.name == "rev-0001" and (rev_dir / "label_stats.parquet").exists()
        assert _materialize(instance, resources, [toy_model.key]).success
        assert _staleness(instance) == StaleStatus.FRESH

        # a curator corrects one crop: the sensor sees it, revision 2 has a new data version
        _rewrite(paths[0], lambda d: d.__setitem__((0, 0, 0), 4))
        res2 = _sensor(instance, resources, res.cursor)
        assert [r.partition_key for r in res2.run_requests] == [REGION]
        assert res2.run_requests[0].run_key != req.run_key
        second = _materialize(instance, resources, [ground_truth_crops.key])
        assert second.success
        mat2 = materialization(second, "ground_truth_crops")
        assert mat2.metadata["revision"].value == 2
        assert mat2.metadata["imported"].value == ["crop01"]
        assert mat2.tags["dagster/data_version"] != dv1
        assert _staleness(instance) == StaleStatus.STALE  # the model must be retrained

        # a bad container (ids outside the class map): the run fails naming it; rev 2 stays
        bad = inbox / REGION / "bad-ids.n5"
        ids = np.full((4, 4, 4), 35, dtype=np.uint64)
        ids[0, 0, 0] = 200
        write_paintera_labels(bad, ids, voxel_size=store.current().crops[0].voxel_size)
        labels.write_sidecar(bad, labels.AnnotationSidecar(crop="extra", annotator="x"))
        failed = _materialize(instance, resources, [ground_truth_crops.key])
        assert not failed.success
        message = _failure(failed)
        assert "bad-ids.n5" in message and "label ids outside the class map: 200" in message
        assert "revision 2 stays current" in message
        assert store.current().number == 2 and store.numbers() == [1, 2]
        latest = instance.fetch_materializations(ground_truth_crops.key, limit=1).records[0]
        assert latest.event_log_entry.asset_materialization.metadata["revision"].value == 2
        shutil.rmtree(bad)

        # a test crop overlapping a training crop fails the blocking split check
        train = next(p for p in paths if "train" in (p / labels.SIDECAR).read_text())
        roi = labels.AnnotationSidecar.read(train / labels.SIDECAR, "x").roi
        leak = inbox / REGION / "leak.n5"
        g = open_label_group(train)
        write_paintera_labels(leak, g.read(), voxel_size=g.resolution, offset_nm=g.offset_nm)
        labels.write_sidecar(leak, labels.AnnotationSidecar(crop="leak", split="test"))
        leaked = _materialize(instance, resources, [ground_truth_crops.key])
        assert not leaked.success
        evals = {e.check_name: e for e in leaked.get_asset_check_evaluations()}
        assert not evals[labels.SPLIT_DISJOINT].passed
        assert evals[labels.SPLIT_DISJOINT].severity == dg.AssetCheckSeverity.ERROR
        assert "leak" in evals[labels.SPLIT_DISJOINT].description
        mat3 = materialization(leaked, "ground_truth_crops")
        assert mat3.metadata["revision"].value == 3 and mat3.metadata["accepted"].value is False
        assert store.current().number == 2 and roi is not None


def test_sensor_reports_unusable_inbox_entries(env):
    resources, inbox = env["resources"], env["inbox"]
    (inbox / "Bad Region").mkdir(parents=True)
    (inbox / "r009" / "half.n5").mkdir(parents=True)  # unknown region, sidecar not written yet
    with warnings.catch_warnings(), dg.instance_for_test() as instance:
        res = _sensor(instance, resources)
        cursor = json.loads(res.cursor)
        assert not res.run_requests
        assert "invalid region key" in cursor["rejected"]["Bad Region"]
        assert "annotation.yaml" in cursor["pending"]["r009/half.n5"]
