from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from fib_assets.core.formats.base import ArraySource
from fib_assets.core.geometry import Roi
from fib_assets.core.ml.predict import (
    ArrayStore,
    connected_components_blockwise,
    default_ledger_dir,
    label_components,
    plan_prediction,
    predict_volume,
    predict_whole,
    read_array,
    read_prediction_attrs,
)
from fib_assets.core.ml.targets import tanh_to_uint8
from fib_assets.core.ml.train import Trainer, build_sampler

from .conftest import VS


@pytest.fixture()
def checkpoint(tmp_path: Path, tiny_config, tiny_region) -> Path:
    raw, labels = tiny_region
    trainer = Trainer(
        tiny_config, build_sampler(tiny_config, ArraySource(raw, VS), ArraySource(labels, VS))
    )
    trainer.fit(3)
    return trainer.save(tmp_path / "model.pt")


@pytest.fixture()
def volume(tiny_region) -> ArraySource:
    raw, _ = tiny_region
    return ArraySource(np.ascontiguousarray(raw[:, :40, :]), VS)  # (24, 40, 48)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images describe the same objects (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def test_blockwise_equals_one_unblocked_forward_pass(tmp_path: Path, checkpoint, volume) -> None:
    plan = plan_prediction(
        checkpoint,
        volume,
        tmp_path / "pred.zarr",
        block_shape=(8, 16, 16),
        instance_classes=["mito"],
    )
    assert plan.context == (8, 8, 8) and len(plan.block_plan) == 3 * 3 * 3
    result = predict_volume(plan, raw=volume)
    assert result.blocks_computed == result.blocks_total == 27
    whole = predict_whole(checkpoint, volume)
    assert whole.shape == (1, 24, 40, 48)
    blocked = read_array(tmp_path / "pred.zarr", "predictions/mito")
    expected = tanh_to_uint8(whole[0])
    assert blocked.dtype == np.uint8 and blocked.shape == (24, 40, 48)
    diff = np.abs(blocked.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 only
    # the float maps themselves, block by block, within float tolerance
    from fib_assets.core.ml.predict import BlockPredictor
    from fib_assets.core.ml.preprocess import Pipeline, PreprocessedVolume
    from fib_assets.core.ml.train import load_model

    model, _, _ = load_model(checkpoint)
    pre = PreprocessedVolume(volume, Pipeline.from_dict(plan.preprocessing))
    bp = BlockPredictor(model, pre, plan.context, plan.net_input, plan.output_kind)
    for block in plan.block_plan.blocks():
        np.testing.assert_allclose(
            bp.predict(block.write_roi)[0], whole[0][block.write_roi.to_slices()], atol=1e-5
        )
    attrs = read_prediction_attrs(tmp_path / "pred.zarr")
    assert attrs["complete"] and attrs["threshold_uint8"] == 127
    assert attrs["plan"]["checkpoint_sha256"] == plan.checkpoint_sha256
    instances = read_array(tmp_path / "pred.zarr", "instances/mito")
    reference = ndimage.label(blocked > 127)[0]
    assert _same_partition(instances, reference)
    assert attrs["max_id"]["mito"] == int(reference.max()) == int(instances.max())


def test_blockwise_equals_unblocked_with_batch_norm(tmp_path: Path, tiny_config, tiny_region):
    """Batch normalization applies running statistics at inference (a per-channel affine map),
    so blockwise prediction stays equal to one whole-volume pass."""
    raw, labels = tiny_region
    config = tiny_config.replace(
        unet=tiny_config.unet.__class__.from_dict({**tiny_config.unet.to_dict(), "norm": "batch"})
    )
    trainer = Trainer(config, build_sampler(config, ArraySource(raw, VS), ArraySource(labels, VS)))
    trainer.fit(3)
    checkpoint = trainer.save(tmp_path / "model.pt")
    volume = ArraySource(np.ascontiguousarray(raw[:, :40, :]), VS)
    plan = plan_prediction(checkpoint, volume, tmp_path / "pred.zarr", block_shape=(8, 16, 16))
    predict_volume(plan, raw=volume)
    blocked = read_array(tmp_path / "pred.zarr", "predictions/mito")
    expected = tanh_to_uint8(predict_whole(checkpoint, volume)[0])
    diff = np.abs(blocked.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_failing_block_leaves_no_marker_and_rerun_does_only_missing(
    tmp_path: Path, checkpoint, volume
) -> None:
    plan = plan_prediction(checkpoint, volume, tmp_path / "p.zarr", block_shape=(8, 16, 16))
    failing = (1, 1, 1)

    def hook(block) -> None:
        if block.index == failing:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        predict_volume(plan, raw=volume, block_hook=hook)
    markers = {p.name for p in default_ledger_dir(plan.out_path).rglob("predict-*.done.json")}
    assert "predict-1_1_1.done.json" not in markers
    assert len(markers) == 13  # blocks before the failing one in C order
    rerun = predict_volume(plan, raw=volume)
    assert rerun.blocks_computed == 27 - 13
    clean = plan_prediction(checkpoint, volume, tmp_path / "clean.zarr", block_shape=(8, 16, 16))
    predict_volume(clean, raw=volume)
    np.testing.assert_array_equal(
        read_array(plan.out_path, "predictions/mito"),
        read_array(clean.out_path, "predictions/mito"),
    )


def test_block_shape_must_align_with_pooling(tmp_path: Path, checkpoint, volume) -> None:
    with pytest.raises(
        ValueError, match=r"multiple of the network's total downsampling factor \[2, 2, 2\]"
    ):
        plan_prediction(checkpoint, volume, tmp_path / "x.zarr", block_shape=(8, 15, 16))


def _objects() -> np.ndarray:
    fg = np.zeros((20, 30, 40), dtype=bool)
    fg[5:8, 5:8, 2:38] = True  # a rod crossing three block borders along x
    fg[12:14, 2:28, 12:14] = True  # a U shape: two arms joined only in another block row
    fg[12:14, 2:28, 22:24] = True
    fg[12:14, 26:28, 12:24] = True
    fg[1:3, 1:3, 1:3] = True  # small objects inside one block
    fg[17:19, 20:22, 30:32] = True
    fg[9, 10:20, 9:11] = True  # touches a border face only, straddling y
    return fg


def test_object_crossing_block_borders_gets_one_id(tmp_path: Path) -> None:
    fg = _objects()
    store = ArrayStore(tmp_path / "cc.zarr", fg.shape, (10, 10, 10), (8.0, 8.0, 8.0))
    n = connected_components_blockwise(
        lambda roi: fg[roi.to_slices()], store, "obj", (10, 10, 10), tmp_path / "ledger", "fp"
    )
    labels = read_array(tmp_path / "cc.zarr", "instances/obj")
    reference = ndimage.label(fg)[0]
    assert n == int(reference.max()) == 5
    assert _same_partition(labels, reference)
    assert len(np.unique(labels[5:8, 5:8, 2:38])) == 1  # the rod: one id over 4 blocks
    assert len(np.unique(labels[12:14, 2:28, 12:14])) == 1
    assert labels[12, 2, 12] == labels[12, 2, 22]  # both arms of the U
    assert sorted(np.unique(labels))[1:] == list(range(1, n + 1))  # consecutive ids


def test_components_resume_after_a_failing_block(tmp_path: Path) -> None:
    fg = _objects()
    store = ArrayStore(tmp_path / "cc.zarr", fg.shape, (10, 10, 10), (8.0, 8.0, 8.0))
    calls: list[tuple[int, ...]] = []
    broken = [True]

    def flaky(roi: Roi) -> np.ndarray:
        calls.append(roi.offset)
        if roi.offset == (10, 10, 20) and broken[0]:
            raise OSError("read failed")
        return fg[roi.to_slices()]

    with pytest.raises(OSError, match="read failed"):
        connected_components_blockwise(flaky, store, "obj", (10, 10, 10), tmp_path / "l", "fp")
    first = len(calls)
    calls.clear()
    broken[0] = False
    n = connected_components_blockwise(flaky, store, "obj", (10, 10, 10), tmp_path / "l", "fp")
    assert len(calls) == 2 * 3 * 4 - (first - 1)  # only the failed and the unstarted blocks
    assert n == 5
    assert _same_partition(
        read_array(tmp_path / "cc.zarr", "instances/obj"),
        ndimage.label(fg)[0],
    )


def test_label_components_matches_scipy() -> None:
    fg = _objects()
    labels, n = label_components(fg)
    reference, n_ref = ndimage.label(fg)  # 6-connectivity: scipy's default structure in 3D
    assert n == n_ref == 5 and _same_partition(labels, reference)


def test_deleted_output_does_not_trust_old_markers(tmp_path: Path) -> None:
    fg = _objects()
    args = ("obj", (10, 10, 10), tmp_path / "ledger", "fp")
    store = ArrayStore(tmp_path / "cc.zarr", fg.shape, (10, 10, 10), (8.0, 8.0, 8.0))
    connected_components_blockwise(lambda roi: fg[roi.to_slices()], store, *args)
    import shutil

    shutil.rmtree(tmp_path / "cc.zarr")
    store = ArrayStore(tmp_path / "cc.zarr", fg.shape, (10, 10, 10), (8.0, 8.0, 8.0))
    n = connected_components_blockwise(lambda roi: fg[roi.to_slices()], store, *args)
    assert n == 5
    assert _same_partition(read_array(tmp_path / "cc.zarr", "instances/obj"), ndimage.label(fg)[0])
