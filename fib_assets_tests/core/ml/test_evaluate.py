"""Scoring on ground-truth crops, the class map shared with ground truth, the cosine learning
rate and the preview images (core/ml/evaluate.py, classes.py, train.py, previews.py)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score

from fib_assets.core.labels import COSEM_CLASS_MAP
from fib_assets.core.metrics.semantic import Confusion
from fib_assets.core.ml.classes import COMBINED_CLASSES, ClassSpec, resolve_class
from fib_assets.core.ml.evaluate import crop_overlaps, pool_overlaps
from fib_assets.core.ml.previews import preview_png


def test_dice_and_iou_match_scikit_learn_on_annotated_voxels() -> None:
    """Dice is F1 and IoU is the Jaccard index over annotated voxels only (label 0 is not
    scored), pooled over crops as counts, not averaged per crop."""
    rng = np.random.default_rng(3)
    mito = ClassSpec("mito", (3, 4, 5))
    totals: dict[str, Confusion] = {}
    all_pred, all_truth = [], []
    for _ in range(3):
        truth = rng.choice([0, 3, 4, 35], size=(6, 7, 8), p=[0.2, 0.2, 0.1, 0.5]).astype(np.uint8)
        pred = rng.random(truth.shape) < 0.35
        part = crop_overlaps(lambda c, p=pred: p, truth, [mito])
        pool_overlaps(totals, part)
        scored = truth != 0
        all_pred.append(pred[scored])
        all_truth.append(mito.mask(truth)[scored])
        want = f1_score(mito.mask(truth)[scored], pred[scored])
        assert part["mito"].dice == pytest.approx(want)
    p, t = np.concatenate(all_pred), np.concatenate(all_truth)
    assert totals["mito"].dice == pytest.approx(f1_score(t, p))
    assert totals["mito"].iou == pytest.approx(jaccard_score(t, p))
    assert Confusion(0, 0, 0).dice == 1.0  # nothing predicted, nothing there: perfect


def test_ml_classes_are_the_ground_truth_class_map() -> None:
    """One class map: every combined class resolves to the ids ground-truth import uses
    (nucleus once disagreed: 20-23, 28 here against 20-29, 37 in labels)."""
    for name, ids in COSEM_CLASS_MAP.combined.items():
        assert resolve_class(name).ids == tuple(sorted(ids)), name
        assert COMBINED_CLASSES[name] == tuple(sorted(ids))
    assert resolve_class("nucleus").ids == (*range(20, 30), 37)
    assert resolve_class("mito_lum").ids == (4,)
    with pytest.raises(ValueError, match="unknown class 'mitochondria'"):
        resolve_class("mitochondria")


def test_cosine_schedule_is_applied_by_the_trainer(tiny_region, tiny_config) -> None:
    from fib_assets.core.formats.base import ArraySource
    from fib_assets.core.ml.train import Trainer, build_sampler

    from .conftest import VS

    config = tiny_config.replace(lr_schedule="cosine", lr_min_factor=0.1, iterations=5)
    lrs = [config.lr_at(s) for s in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[2] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert tiny_config.lr_at(3) == tiny_config.lr  # constant by default
    raw, lab = tiny_region
    sampler = build_sampler(config, ArraySource(raw, VS), ArraySource(lab, VS))
    trainer = Trainer(config, sampler)
    seen = []
    for step in range(3):
        trainer.train_step(sampler.batch(step, config.batch_size))
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(lrs[:3])
    with pytest.raises(ValueError, match="lr_schedule"):
        config.replace(lr_schedule="step")


def test_preview_png_reads_back_with_pillow() -> None:
    raw = np.tile(np.arange(10, dtype=np.uint8)[None, :] * 20, (6, 1))
    overlay = np.zeros((6, 10, 3), dtype=np.uint8)
    overlay[..., 0] = 255
    img = Image.open(io.BytesIO(preview_png(raw, overlay, max_side=48)))
    assert img.format == "PNG" and img.mode == "RGB"
    up = 48 // 24  # side by side with a 4-pixel gap: 24 wide, upscaled to fit 48
    assert img.size == ((2 * 10 + 4) * up, 6 * up)
    px = np.asarray(img)
    assert tuple(px[0, 0]) == (0, 0, 0) and tuple(px[0, 2 * 9]) == (180, 180, 180)
    assert tuple(px[0, (10 + 4) * up]) == (255, 0, 0)
