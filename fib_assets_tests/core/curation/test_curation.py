"""The curator loop with real files: prediction containers written by the ML layer's own
ArrayStore, ranked blocks checked against direct numpy computation, Paintera task containers read
back with tensorstore, the simulated curator's counts checked by hand, and the round trip
task -> corrected container -> next ground-truth revision read back with zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import yaml
import zarr

from fib_assets.core.curation import (
    EffortModel,
    PredictionLabelSource,
    PredictionMaps,
    ProofreadingTask,
    TaskList,
    count_edits,
    export_tasks,
    rank_blocks,
    reimport_task,
    simulate_corrections,
    top_k,
    write_corrected_container,
)
from fib_assets.core.curation.simulate import DEFAULT_EFFORT_FILE
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize
from fib_assets.core.labels import COSEM_CLASS_MAP, RevisionStore, raw_grid
from fib_assets.core.metrics import confusion
from fib_assets_tests.core.formats.test_paintera import raw_container

SHAPE = (16, 32, 32)
BLOCK = (8, 16, 16)
VOX = VoxelSize(8.0, 8.0, 8.0)


def _truth() -> np.ndarray:
    t = np.full(SHAPE, 35, np.uint8)  # cytosol
    t[2:14, 4:20, 4:28] = 3  # mito membrane
    t[4:12, 6:18, 6:26] = 4  # mito lumen
    return t


def _write_prediction(path, maps: dict[str, np.ndarray]):
    """A prediction container exactly as fib_assets.core.ml.predict writes it."""
    from fib_assets.core.ml.predict import ArrayStore

    store = ArrayStore(
        path,
        SHAPE,
        BLOCK,
        VOX.as_tuple(),
        {"plan": {"classes": list(maps), "voxel_size_nm": [8] * 3}},
    )
    for name, data in maps.items():
        key = store.ensure("predictions", name, "uint8")
        store.write(key, Roi((0, 0, 0), SHAPE), data)
    store.set_attributes(
        {"plan": {"classes": list(maps), "voxel_size_nm": [8] * 3}, "complete": True}
    )
    return path


@pytest.fixture
def predictions(tmp_path):
    truth = _truth()
    mito = np.isin(truth, [3, 4])
    confident = np.where(mito, 240, 10).astype(np.uint8)
    a = confident.copy()
    a[0:8, 16:32, 16:32] = 120  # block (0, 1, 1): at the decision boundary
    b = confident.copy()
    b[8:16, 0:16, 0:16] = 255 - b[8:16, 0:16, 0:16]  # block (1, 0, 0): experiment b disagrees
    cyto_a = np.where(truth == 35, 230, 20).astype(np.uint8)
    pa = _write_prediction(tmp_path / "exp_a.zarr", {"mito": a, "cyto": cyto_a})
    pb = _write_prediction(tmp_path / "exp_b.zarr", {"mito": b, "cyto": cyto_a})
    return pa, pb, {"a": a, "b": b, "cyto": cyto_a}


def test_rank_blocks_matches_direct_computation(predictions):
    pa, pb, maps = predictions
    ranked = rank_blocks([pa, pb], BLOCK, margin=64)
    assert len(ranked) == len(BlockPlan(SHAPE, BLOCK))
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    by_index = {s.index: s for s in ranked}
    for block in BlockPlan(SHAPE, BLOCK).blocks():
        sl = block.write_roi.to_slices()
        near = [np.mean(np.abs(m[sl].astype(float) - 127.5) <= 64) for m in (maps["a"], maps["b"])]
        cyto_near = np.mean(np.abs(maps["cyto"][sl].astype(float) - 127.5) <= 64)
        want_b = (np.mean(near) + cyto_near) / 2
        differ = np.mean((maps["a"][sl] > 127) != (maps["b"][sl] > 127)) / 2  # cyto agrees
        s = by_index[block.index]
        assert s.boundary == pytest.approx(want_b)
        assert s.disagreement == pytest.approx(differ)
        assert s.score == pytest.approx(want_b + differ)
    top = top_k(ranked, 2)
    # disagreement on every mito voxel (0.5) beats half the classes near the boundary
    assert [t.index for t in top] == [(1, 0, 0), (0, 1, 1)]
    assert "experiments disagree" in top[0].why and "'mito'" in top[0].why
    single = rank_blocks([pa], BLOCK)
    assert all(s.disagreement == 0 for s in single) and single[0].index == (0, 1, 1)


def test_bad_prediction_containers_are_refused(tmp_path, predictions):
    with pytest.raises(FileNotFoundError, match="not a prediction container"):
        PredictionMaps(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="classes"):
        rank_blocks([predictions[0]], BLOCK, classes=["golgi"])


def test_export_tasks_writes_paintera_containers_and_a_task_list(tmp_path, predictions):
    raw_path, raw = raw_container(tmp_path, shape=SHAPE, vox=VOX)
    pa, pb, maps = predictions
    labels = PredictionLabelSource(PredictionMaps(pa), {"mito": 3, "cyto": 35}, VOX)
    ranked = rank_blocks([pa, pb], BLOCK)
    tl = export_tasks(
        "r001",
        raw_path,
        labels,
        ranked,
        tmp_path / "tasks",
        k=2,
        label_source="prediction exp_a",
        chunks=(8, 8, 8),
    )
    assert len(tl.tasks) == 2 and [t.rank for t in tl.tasks] == [1, 2]
    expected_labels = np.where(maps["a"] > 127, 3, np.where(maps["cyto"] > 127, 35, 0))
    for t in tl.tasks:
        sl = t.roi.to_slices()
        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": t.container}}
        raw_s0 = ts.open({**spec, "path": "volumes/raw/s0"}).result().read().result()
        lab_s0 = ts.open({**spec, "path": "volumes/labels/ground_truth/data/s0"}).result()
        # N5 stores x, y, z: tensorstore shows it transposed
        assert np.array_equal(np.asarray(raw_s0).transpose(2, 1, 0), raw[sl])
        got = np.asarray(lab_s0.read().result()).transpose(2, 1, 0)
        assert np.array_equal(got, expected_labels[sl])
        attrs = json.loads(
            (tmp_path / "tasks" / f"{t.task_id}.n5" / "volumes/raw/attributes.json").read_text()
        )
        assert attrs["offset"] == [o * 8.0 for o in reversed(t.roi.offset)]
    doc = json.loads(tl.json_path.read_text())
    first = doc["tasks"][0]
    assert first["task_id"] == "r001-b1-0-0" and first["roi_voxels"] == {
        "offset": [8, 0, 0],
        "shape": [8, 16, 16],
    }
    assert first["roi_nm"] == {"offset": [64.0, 0.0, 0.0], "shape": [64.0, 128.0, 128.0]}
    assert first["label_source"] == "prediction exp_a" and "Paintera" in first["instructions"]
    md = tl.markdown_path.read_text()
    assert "r001-b0-1-1" in md and "r001-b1-0-0" in md and "| # | task |" in md
    assert TaskList.load(tmp_path / "tasks").tasks == tl.tasks


def test_simulated_curator_counts_and_effort():
    truth = np.zeros((4, 8, 8), np.uint8)
    labels = truth.copy()
    labels[0, 0:2, 0:2] = 3  # a false object: 4 voxels, removed to 0
    labels[2:4, 5:7, 5:7] = 4  # another: 8 voxels on 2 slices
    truth[1, 4, 4] = 35  # a missed voxel
    v, o, s = count_edits(labels, truth)
    assert (v, o, s) == (4 + 8 + 1, 2 + 1, 4)  # two blobs -> id 0, one voxel -> id 35
    model = EffortModel(per_task=1.0, per_object=2.0, per_slice=0.5, per_kvoxel=1000.0)
    task = ProofreadingTask(
        "r-b0-0-0", "r", Roi((0, 0, 0), (4, 8, 8)), VOX, 1.0, "x", "c.n5", "l", 1
    )
    rnd = simulate_corrections(labels, truth, [task], model)
    c = rnd.corrections[0]
    assert (c.voxels_changed, c.objects_changed, c.slices_changed) == (13, 3, 4)
    assert c.minutes == pytest.approx(1.0 + 2.0 * 3 + 0.5 * 4 + 1000.0 * 13 / 1000)
    assert np.array_equal(rnd.apply(labels), truth)
    assert simulate_corrections(truth, truth, [task], model).minutes == 1.0  # nothing to fix


def test_effort_model_yaml_is_documented_and_validated(tmp_path):
    m = EffortModel.from_yaml(DEFAULT_EFFORT_FILE)
    doc = yaml.safe_load(DEFAULT_EFFORT_FILE.read_text())
    assert m.per_object == doc["per_object"] and m.assumptions and m.sources
    assert EffortModel.from_dict(m.to_dict()) == m
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_task: -1\n")
    with pytest.raises(ValueError, match="bad.yaml: effort model: per_task"):
        EffortModel.from_yaml(bad)
    bad.write_text("per_hour: 3\n")
    with pytest.raises(ValueError, match="unknown fields"):
        EffortModel.from_yaml(bad)


def test_round_trip_task_to_corrected_container_to_new_revision(tmp_path, predictions):
    raw_path, _ = raw_container(tmp_path, shape=SHAPE, vox=VOX)
    grid = raw_grid(raw_path)
    truth = _truth()
    pa, pb, _ = predictions
    labels = PredictionLabelSource(PredictionMaps(pa), {"mito": 3, "cyto": 35}, VOX)
    tl = export_tasks(
        "r001",
        raw_path,
        labels,
        rank_blocks([pa, pb], BLOCK),
        tmp_path / "tasks",
        k=2,
        chunks=(8, 8, 8),
    )
    rnd = simulate_corrections(labels, truth, tl.tasks, EffortModel())
    assert rnd.voxels_changed > 0 and rnd.minutes > 0
    store = RevisionStore(tmp_path / "gt" / "r001")
    inbox = tmp_path / "inbox"
    for n, (task, corr) in enumerate(zip(tl.tasks, rnd.corrections, strict=True), start=1):
        corrected = write_corrected_container(task, corr, tmp_path / "saved" / f"{task.task_id}.n5")
        result = reimport_task(
            task,
            corrected,
            inbox,
            store,
            grid,
            COSEM_CLASS_MAP,
            annotator="simulated-curator",
            minutes_spent=corr.minutes,
        )
        assert result.accepted and result.revision.number == n
        assert store.current().number == n
        record = result.revision.crop(task.task_id)
        assert record.roi == task.roi and record.minutes_spent == pytest.approx(corr.minutes)
        # read the published crop back with zarr-python, independent of our reader
        arr = zarr.open_array(str(result.revision.crops_path / task.task_id), mode="r")
        assert np.array_equal(np.asarray(arr[...]), truth[task.roi.to_slices()])
        before = labels.read(task.roi)
        want = truth[task.roi.to_slices()]
        assert corr.voxels_changed == int((before != want).sum()) > 0
        mito = lambda a: np.isin(a, [3, 4])  # noqa: E731
        assert confusion(mito(want), mito(np.asarray(arr[...]))).dice == 1.0
    assert {c.name for c in store.current().crops} == {t.task_id for t in tl.tasks}
    sidecar = yaml.safe_load(
        (inbox / "r001" / f"{tl.tasks[0].task_id}.n5" / "annotation.yaml").read_text()
    )
    assert sidecar["crop"] == tl.tasks[0].task_id and sidecar["annotator"] == "simulated-curator"
