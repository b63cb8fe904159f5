from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fib_assets.core.ml.classes import ClassSpec, class_index_map, resolve_classes
from fib_assets.core.ml.losses import balance_weights, balanced_cross_entropy, balanced_mse
from fib_assets.core.ml.targets import (
    UINT8_THRESHOLD,
    border_reliable,
    distance_targets,
    signed_distance,
    tanh_distance,
    tanh_to_uint8,
)


def _blobs(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52


@pytest.mark.parametrize("voxel_size", [(8.0, 8.0, 8.0), (20.0, 4.0, 6.0)], ids=["iso", "aniso"])
def test_signed_distance_matches_scipy(voxel_size: tuple[float, float, float]) -> None:
    mask = _blobs((18, 22, 26))
    assert mask.any() and not mask.all()
    ours = signed_distance(mask, voxel_size)
    inside = ndimage.distance_transform_edt(mask, sampling=voxel_size)
    outside = ndimage.distance_transform_edt(~mask, sampling=voxel_size)
    np.testing.assert_allclose(ours, inside - outside, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        tanh_distance(mask, voxel_size), np.tanh((inside - outside) / 50.0), atol=1e-5
    )


def test_signed_distance_without_boundary() -> None:
    assert np.all(tanh_distance(np.ones((3, 3, 3), bool), (8, 8, 8)) == 1.0)
    assert np.all(tanh_distance(np.zeros((3, 3, 3), bool), (8, 8, 8)) == -1.0)


def test_distance_targets_per_class_and_mask() -> None:
    labels = np.full((10, 12, 12), 35, np.uint8)  # cytosol
    labels[2:8, 3:9, 3:9] = 4  # mito lumen
    labels[0, 0, 0] = 0  # unannotated
    classes = resolve_classes(["mito", "cyto"])
    targets, mask = distance_targets(labels, classes, (8.0, 8.0, 8.0))
    assert targets.shape == (2, 10, 12, 12) and targets.dtype == np.float32
    assert (targets[0] > 0).sum() == (labels == 4).sum()
    assert not mask[0, 0, 0] and mask.sum() == labels.size - 1


def test_uint8_threshold_is_zero_distance() -> None:
    values = np.array([-1.0, -0.01, 0.0, 0.01, 1.0], np.float32)
    u8 = tanh_to_uint8(values)
    assert list(u8) == [0, 126, 128, 129, 255]
    assert list(u8 > UINT8_THRESHOLD) == [False, False, True, True, True]


def test_border_reliable() -> None:
    sdf = np.full((5, 5, 5), 100.0, np.float32)
    ok = border_reliable(sdf, (8.0, 8.0, 8.0))
    assert not ok[0, 2, 2] and not ok[2, 2, 2]  # 100 nm > 24 nm to the border
    sdf[2, 2, 2] = 10.0
    assert border_reliable(sdf, (8.0, 8.0, 8.0))[2, 2, 2]


def test_balanced_mse_gives_both_sides_equal_weight() -> None:
    target = -torch.ones(1, 1, 10, 10, 10)
    target[..., :1, :, :] = 0.5  # 10 % foreground
    pred = torch.zeros_like(target)
    w = balance_weights(target > 0, torch.ones_like(target, dtype=torch.bool))
    assert torch.isclose(w[target > 0].sum(), w[target <= 0].sum())
    assert torch.isclose(w.sum(), torch.tensor(1000.0))
    # 0.5 * (mean error inside + mean error outside) = 0.5 * (0.25 + 1)
    assert torch.isclose(balanced_mse(pred, target), torch.tensor(0.625))
    # unbalanced MSE would be dominated by the background
    assert torch.isclose(((pred - target) ** 2).mean(), torch.tensor(0.925))


def test_balanced_mse_mask_and_classes() -> None:
    target = torch.tensor([[[[[0.5, -0.5, -0.5, -0.5]]], [[[0.5, 0.5, -0.5, 0.9]]]]])
    target = target.reshape(1, 2, 1, 1, 4)
    pred = torch.zeros_like(target)
    mask = torch.tensor([True, True, True, False]).reshape(1, 1, 1, 1, 4)
    loss = balanced_mse(pred, target, mask)
    # class 0: 1 fg of 3 -> 0.5*(0.25) + 0.5*(0.25); class 1: 2 fg, 1 bg -> same
    assert torch.isclose(loss, torch.tensor(0.25))
    pred_bad = pred.clone()
    pred_bad[..., 3] = 100.0  # unannotated voxel: no effect
    assert torch.isclose(balanced_mse(pred_bad, target, mask), loss)


def test_balanced_mse_clips_an_absent_side() -> None:
    target = -torch.ones(1, 1, 2, 2, 2)
    loss = balanced_mse(torch.zeros_like(target), target, clip=0.05)
    assert torch.isfinite(loss) and torch.isclose(loss, torch.tensor(0.5 / 0.95))


def test_balanced_cross_entropy_is_mean_of_class_means() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.zeros(2, 4, 5, 6, dtype=torch.long)
    target[:, 0, 0, :3] = 1
    target[:, 1:, 2, :] = 2
    target[0, 3, 4, 5] = -1
    ce = torch.nn.functional.cross_entropy(logits, target.clamp_min(0), reduction="none")
    ok = target >= 0
    expected = torch.stack([ce[(target == k) & ok].mean() for k in range(3)]).mean()
    assert torch.isclose(balanced_cross_entropy(logits, target), expected, atol=1e-6)


def test_balanced_cross_entropy_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="class indices must be in 0..2"):
        balanced_cross_entropy(torch.randn(1, 3, 2, 2, 2), torch.full((1, 2, 2, 2), 3))
    with pytest.raises(ValueError, match="do not match"):
        balanced_cross_entropy(torch.randn(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 3).long())


def test_classes_resolve_and_index_map() -> None:
    mito, er = resolve_classes(["mito", {"er": [16, 17]}])
    assert mito.ids == (3, 4, 5) and er == ClassSpec("er", (16, 17))
    labels = np.array([[[0, 3, 5, 16, 35]]], np.uint8)
    assert class_index_map(labels, [mito, er]).tolist() == [[[-1, 1, 1, 2, 0]]]
    with pytest.raises(ValueError, match="disjoint"):
        class_index_map(labels, resolve_classes(["mito", "mito_mem"]))
    with pytest.raises(ValueError, match="unknown class 'mitochondria'"):
        resolve_classes(["mitochondria"])
