"""Semantic metrics against independent references: scikit-learn for the confusion ratios,
scipy.spatial (directed_hausdorff, cdist) brute force for every distance-based metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import directed_hausdorff
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from fib_assets.core.metrics.semantic import (
    Confusion,
    boundary_band_mask,
    confusion,
    hausdorff,
    semantic_scores,
    tolerance_confusion,
)
from fib_assets_tests.core.metrics.references import (
    brute_band_mask,
    brute_tolerance_counts,
    coords_nm,
    min_distances,
)

VOXELS = st.sampled_from([(8.0, 8.0, 8.0), (8.0, 4.0, 4.0), (10.0, 6.0, 4.0), (3.0, 5.0, 7.0)])
SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7))


def mask_pairs():
    return SHAPES.flatmap(lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s), VOXELS))


def _sk(truth, pred):
    y, p = truth.ravel(), pred.ravel()
    kw = {"zero_division": 1.0}
    return {
        "dice": f1_score(y, p, **kw),
        "iou": jaccard_score(y, p, **kw),
        "precision": precision_score(y, p, **kw),
        "recall": recall_score(y, p, **kw),
    }


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_confusion_ratios_match_scikit_learn(case):
    truth, pred, _ = case
    c = confusion(truth, pred)
    assert c.tp + c.fp + c.fn + c.tn == truth.size
    for name, want in _sk(truth, pred).items():
        assert getattr(c, name) == pytest.approx(want), name


@pytest.mark.parametrize(
    "truth_on, pred_on",
    [(False, False), (True, False), (False, True)],
    ids=["both-empty", "empty-prediction", "empty-truth"],
)
def test_empty_masks_follow_scikit_learn_zero_division_1(truth_on, pred_on):
    truth = np.zeros((3, 4, 5), bool)
    pred = np.zeros((3, 4, 5), bool)
    truth[1, 2, 3] = truth_on
    pred[0, 0, 0] = pred_on
    c = confusion(truth, pred)
    for name, want in _sk(truth, pred).items():
        assert getattr(c, name) == pytest.approx(want), name
    if truth_on or pred_on:
        assert c.dice == 0.0 and c.iou == 0.0
    else:
        assert c.dice == c.iou == 1.0


def test_confusion_with_mask_counts_only_masked_voxels():
    truth = np.zeros((2, 3, 3), bool)
    pred = np.zeros((2, 3, 3), bool)
    truth[0] = True
    pred[:, 0] = True
    mask = np.zeros_like(truth)
    mask[0, :2] = True
    c = confusion(truth, pred, mask)
    y, p = truth[mask], pred[mask]
    assert (c.tp, c.fp, c.fn, c.tn) == (
        int((y & p).sum()),
        int((~y & p).sum()),
        int((y & ~p).sum()),
        int((~y & ~p).sum()),
    )
    assert Confusion(1, 2, 3, 4) + Confusion(1, 1, 1, 1) == Confusion(2, 3, 4, 5)


@settings(max_examples=50, deadline=None)
@given(mask_pairs(), st.sampled_from([0.0, 5.0, 8.0, 12.0, 40.0]))
def test_tolerance_counts_match_brute_force(case, tol):
    truth, pred, vox = case
    c = tolerance_confusion(truth, pred, vox, tol)
    assert (c.tp, c.fp, c.fn, c.tn) == brute_tolerance_counts(truth, pred, vox, tol)


@settings(max_examples=30, deadline=None)
@given(mask_pairs())
def test_zero_tolerance_is_the_plain_confusion(case):
    truth, pred, vox = case
    assert tolerance_confusion(truth, pred, vox, 0.0) == confusion(truth, pred)


def test_tolerance_is_anisotropic_and_inclusive():
    # truth one voxel, prediction two voxels away along z (2 x 20 nm) or along x (2 x 4 nm)
    vox = (20.0, 4.0, 4.0)
    truth = np.zeros((5, 5, 5), bool)
    truth[2, 2, 2] = True
    along_z = np.zeros_like(truth)
    along_z[4, 2, 2] = True
    along_x = np.zeros_like(truth)
    along_x[2, 2, 4] = True
    assert tolerance_confusion(truth, along_z, vox, 40.0).fp == 0  # 40 nm: inclusive
    assert tolerance_confusion(truth, along_z, vox, 39.9).fp == 1
    c = tolerance_confusion(truth, along_x, vox, 7.9)
    assert (c.tp, c.fp, c.fn) == (0, 1, 1)
    assert tolerance_confusion(truth, along_x, vox, 8.0).dice == 1.0
    # empty prediction: every true voxel is a false negative whatever the tolerance
    c = tolerance_confusion(truth, np.zeros_like(truth), vox, 1e6)
    assert (c.tp, c.fp, c.fn) == (0, 0, 1)


@settings(max_examples=40, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(arrays(np.bool_, s), VOXELS)),
    st.sampled_from([0.0, 4.0, 8.0, 11.0, 20.0]),
)
def test_boundary_band_mask_matches_brute_force(case, band):
    truth, vox = case
    assert np.array_equal(boundary_band_mask(truth, vox, band), brute_band_mask(truth, vox, band))


def test_boundary_band_of_one_voxel_layer():
    truth = np.zeros((1, 1, 9), bool)
    truth[..., 3:6] = True  # x = 3, 4, 5
    scored = boundary_band_mask(truth, (8.0, 8.0, 8.0), 8.0)
    # x = 2 and 6 (background next to the object) and 3 and 5 (object next to background)
    assert scored[0, 0].tolist() == [True, True, False, False, True, False, False, True, True]
    assert boundary_band_mask(truth, 8.0, 0.0).all()
    assert boundary_band_mask(np.ones((2, 2, 2), bool), 8.0, 100.0).all()
    with pytest.raises(ValueError, match="band_nm"):
        boundary_band_mask(truth, 8.0, -1.0)


@settings(max_examples=60, deadline=None)
@given(mask_pairs(), st.sampled_from([50.0, 95.0, 100.0]))
def test_hausdorff_matches_scipy_directed_hausdorff(case, q):
    truth, pred, vox = case
    h = hausdorff(truth, pred, vox, percentile=q)
    if not truth.any() and not pred.any():
        assert (h.max_nm, h.percentile_nm) == (0.0, 0.0)
        return
    if not truth.any() or not pred.any():
        assert math.isinf(h.max_nm) and math.isinf(h.percentile_nm)
        return
    a, b = coords_nm(truth, vox), coords_nm(pred, vox)
    want = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert h.max_nm == pytest.approx(want)
    assert h.truth_to_pred_nm == pytest.approx(directed_hausdorff(a, b)[0])
    p = max(
        np.percentile(min_distances(truth, pred, vox), q),
        np.percentile(min_distances(pred, truth, vox), q),
    )
    assert h.percentile_nm == pytest.approx(p)
    if q == 100.0:
        assert h.percentile_nm == pytest.approx(h.max_nm)


def test_hausdorff_one_voxel_each_anisotropic():
    truth = np.zeros((4, 4, 4), bool)
    pred = np.zeros_like(truth)
    truth[0, 0, 0] = True
    pred[2, 1, 0] = True
    h = hausdorff(truth, pred, (8.0, 4.0, 4.0))
    assert h.max_nm == pytest.approx(math.hypot(16.0, 4.0))
    assert h.percentile_nm == pytest.approx(h.max_nm)
    assert hausdorff(truth, truth, (8.0, 4.0, 4.0)).max_nm == 0.0


def test_semantic_scores_bundle_and_dict():
    rng = np.random.default_rng(1)
    truth = rng.random((6, 8, 8)) < 0.4
    pred = rng.random((6, 8, 8)) < 0.4
    s = semantic_scores(truth, pred, (8.0, 4.0, 4.0), tolerance_nm=4.0, band_nm=4.0)
    assert s.confusion == confusion(truth, pred)
    assert s.tolerance == tolerance_confusion(truth, pred, (8.0, 4.0, 4.0), 4.0)
    assert s.band == confusion(truth, pred, boundary_band_mask(truth, (8.0, 4.0, 4.0), 4.0))
    d = s.to_dict()
    assert d["dice"] == s.confusion.dice and d["band_iou"] == s.band.iou
    assert d["hausdorff_p95_nm"] == s.hausdorff.percentile_nm
    with pytest.raises(ValueError, match="shapes differ"):
        confusion(truth, pred[:-1])
