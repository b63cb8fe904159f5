"""Instance metrics against independent references: scikit-image's label/regionprops for the
components and the overlap table, an exhaustive matcher for the Hungarian matching, scipy's
directed_hausdorff for the per-instance distances, and the CellMap formulas written out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import directed_hausdorff
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from fib_assets.core.metrics.instance import (
    OverlapTable,
    WeightedScore,
    cellmap_instance_score,
    cellmap_max_distance,
    cellmap_overall_score,
    evaluate_instances,
    instance_scores,
    label_instances,
    match_instances,
    normalized_hausdorff,
    pair_hausdorff,
    relabel_instances,
)
from fib_assets_tests.core.metrics.references import brute_matching, coords_nm

SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labellings describe the same objects (a bijection between their ids)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[b > 0], strict=True)}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


@settings(max_examples=60, deadline=None)
@given(SHAPES.flatmap(lambda s: arrays(np.bool_, s)))
def test_connected_components_match_scikit_image(mask):
    for conn, sk_conn in ((6, 1), (18, 2), (26, 3)):
        ours, n = label_instances(mask, conn)
        ref, n_ref = sk_label(mask, connectivity=sk_conn, return_num=True)
        assert n == n_ref
        assert ours.dtype == np.uint64
        assert _same_partition(ours, ref), conn


@pytest.mark.parametrize("conn", [6, 18, 26])
def test_components_of_volumes_thinner_than_three_voxels(conn):
    # connected-components-3d 4.1.1 raises on these with 18/26-connectivity unless padded
    mask = np.array([[[True, False, True]]])
    labels, n = label_instances(mask, conn)
    assert n == 2 and labels.shape == mask.shape and labels.tolist() == [[[1, 0, 2]]]
    out, n = relabel_instances(np.array([[[1, 0, 1], [0, 2, 0]]], np.uint8), conn)
    assert n == 3 and out.shape == (1, 2, 3)  # id 1 in two pieces, id 2 kept apart


def test_relabel_splits_disconnected_pieces_and_keeps_touching_ids_apart():
    lab = np.zeros((1, 3, 7), np.uint32)
    lab[0, 1, 0:2] = 5
    lab[0, 1, 4:6] = 5  # the same id in two pieces
    lab[0, 1, 2] = 9  # touches the first piece of 5
    out, n = relabel_instances(lab)
    assert n == 3
    assert len({int(out[0, 1, 0]), int(out[0, 1, 4]), int(out[0, 1, 2])}) == 3


def _labels(shape, max_id):
    return arrays(np.uint8, shape, elements=st.integers(0, max_id))


@settings(max_examples=60, deadline=None)
@given(SHAPES.flatmap(lambda s: st.tuples(_labels(s, 4), _labels(s, 4))))
def test_overlap_table_matches_regionprops_and_brute_force(case):
    truth, pred = case
    table = OverlapTable.from_labels(truth, pred)
    sizes = {r.label: int(r.area) for r in regionprops(truth.astype(np.int64))}
    assert dict(zip(table.truth_ids.tolist(), table.truth_sizes.tolist(), strict=True)) == sizes
    psizes = {r.label: int(r.area) for r in regionprops(pred.astype(np.int64))}
    assert dict(zip(table.pred_ids.tolist(), table.pred_sizes.tolist(), strict=True)) == psizes
    brute = {}
    for t, p in zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if t and p:
            brute[t, p] = brute.get((t, p), 0) + 1
    pairs = zip(table.pair_truth.tolist(), table.pair_pred.tolist(), strict=True)
    assert dict(zip(pairs, table.pair_counts.tolist(), strict=True)) == brute
    for (t, p), iou in zip(
        zip(table.pair_truth.tolist(), table.pair_pred.tolist(), strict=True),
        table.pair_iou(),
        strict=True,
    ):
        a, b = truth == t, pred == p
        assert iou == pytest.approx((a & b).sum() / (a | b).sum())


@settings(max_examples=40, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(_labels(s, 4), _labels(s, 4))),
    st.lists(st.integers(0, 20), min_size=1, max_size=3),
)
def test_overlap_tables_add_up_over_any_split(case, cuts):
    """Blockwise accumulation: tables of z-slabs sum to the table of the whole volume."""
    truth, pred = case
    edges = sorted({0, truth.shape[0], *(c % (truth.shape[0] + 1) for c in cuts)})
    total = OverlapTable.empty()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        total = total + OverlapTable.from_labels(truth[lo:hi], pred[lo:hi])
    whole = OverlapTable.from_labels(truth, pred)
    for name in whole.__dataclass_fields__:
        assert np.array_equal(getattr(total, name), getattr(whole, name)), name


@settings(max_examples=60, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(_labels(s, 4), _labels(s, 4))),
    st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.75]),
)
def test_hungarian_matching_is_optimal_against_exhaustive_search(case, thr):
    truth, pred = case
    m = match_instances(OverlapTable.from_labels(truth, pred), thr)
    best_sum, best_n = brute_matching(truth, pred, thr)
    assert float(m.iou.sum()) == pytest.approx(best_sum)
    assert len(set(m.truth_ids.tolist())) == m.tp == len(set(m.pred_ids.tolist()))
    assert all(v >= thr and v > 0 for v in m.iou)
    if thr >= 0.5:  # above 0.5 a match is unique, so the count is determined
        assert m.tp == best_n


def test_instance_f1_at_thresholds_and_edge_cases():
    truth = np.zeros((1, 4, 12), np.uint16)
    pred = np.zeros_like(truth)
    truth[0, :, 0:4] = 1  # 16 voxels
    truth[0, :, 6:10] = 2
    pred[0, :, 0:4] = 7  # exact: IoU 1
    pred[0, :, 7:11] = 8  # IoU 12 / 20 = 0.6
    pred[0, 0, 11] = 0
    s = instance_scores(OverlapTable.from_labels(truth, pred), (0.5, 0.65, 0.9))
    assert s.by_threshold[0.5].tp == 2 and s.f1(0.5) == 1.0
    c = s.by_threshold[0.65]
    assert (c.tp, c.fp, c.fn) == (1, 1, 1) and s.f1(0.65) == 0.5
    rows = s.to_rows()
    assert [r["iou_threshold"] for r in rows] == [0.5, 0.65, 0.9]
    # empty truth, empty prediction, both empty, one voxel
    empty = np.zeros_like(truth)
    assert instance_scores(OverlapTable.from_labels(empty, pred)).f1(0.5) == 0.0
    assert instance_scores(OverlapTable.from_labels(truth, empty)).f1(0.5) == 0.0
    both = instance_scores(OverlapTable.from_labels(empty, empty))
    assert both.f1(0.5) == 1.0 and both.mean_matched_iou == 1.0
    one = np.zeros_like(truth)
    one[0, 0, 0] = 1
    assert instance_scores(OverlapTable.from_labels(one, one)).f1(0.9) == 1.0


def test_pair_hausdorff_matches_scipy():
    rng = np.random.default_rng(5)
    for vox in ((8.0, 4.0, 4.0), (5.0, 5.0, 5.0)):
        a = rng.random((5, 7, 6)) < 0.2
        b = rng.random((5, 7, 6)) < 0.2
        a[0, 0, 0] = b[4, 6, 5] = True
        ca, cb = coords_nm(a, vox), coords_nm(b, vox)
        want = max(directed_hausdorff(ca, cb)[0], directed_hausdorff(cb, ca)[0])
        assert pair_hausdorff(a, b, vox) == pytest.approx(want)
    z = np.zeros((2, 2, 2), bool)
    assert pair_hausdorff(z, z, 8.0) == 0.0
    assert math.isinf(pair_hausdorff(z, ~z, 8.0))


def test_cellmap_normalization_and_cap_follow_the_challenge_formulas():
    vox = (8.0, 4.0, 2.0)
    norm = math.sqrt(64 + 16 + 4)
    assert normalized_hausdorff(norm, vox) == pytest.approx(1 / 1.01)
    assert normalized_hausdorff(0.0, vox) == 1.0
    assert normalized_hausdorff(math.inf, vox) == 0.0
    assert cellmap_max_distance(vox, (10, 20, 30)) == min(80 / 2, 80 / 2, 60 / 2)


def test_cellmap_instance_score_by_hand():
    """Two true objects; one predicted shifted by one x voxel, one missed; one hallucinated."""
    vox = (8.0, 8.0, 4.0)
    truth = np.zeros((8, 8, 16), np.uint32)
    pred = np.zeros_like(truth)
    truth[1:4, 1:4, 1:4] = 1
    truth[5:7, 5:7, 10:13] = 2
    pred[1:4, 1:4, 2:5] = 1  # shifted by 4 nm along x
    pred[6:8, 0:2, 14:16] = 3  # a false positive (no overlap)
    s = cellmap_instance_score(truth, pred, vox)
    cap = cellmap_max_distance(vox, truth.shape)  # min(32, 32, 32) = 32 nm
    assert cap == 32.0
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    assert s.hausdorff_nm == (4.0, cap, cap)  # matched, missed truth, hallucination
    nhd = (1.01 ** (-4.0 / math.sqrt(64 + 64 + 16)) + 2 * 1.01 ** (-cap / math.sqrt(144))) / 3
    assert s.normalized_hausdorff == pytest.approx(nhd)
    assert s.f1 == pytest.approx(0.5)
    assert s.combined == pytest.approx(math.sqrt(0.5 * nhd))
    # a perfect prediction scores 1 everywhere; nothing on both sides scores 1 too
    perfect = cellmap_instance_score(truth, truth, vox)
    assert perfect.combined == 1.0 and perfect.hausdorff_nm == (0.0, 0.0)
    nothing = cellmap_instance_score(np.zeros_like(truth), np.zeros_like(truth), vox)
    assert nothing.combined == 1.0
    missed = cellmap_instance_score(truth, np.zeros_like(truth), vox)
    assert missed.f1 == 0.0 and missed.combined == 0.0


def test_cellmap_relabels_predictions_like_the_challenge():
    truth = np.zeros((1, 3, 9), np.uint32)
    truth[0, :, 0:3] = 1
    truth[0, :, 6:9] = 2
    pred = ((truth > 0) * 5).astype(np.uint32)  # both objects predicted with one id
    s = cellmap_instance_score(truth, pred, 4.0)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    raw = cellmap_instance_score(truth, pred, 4.0, relabel_prediction=False)
    assert (raw.tp, raw.fp, raw.fn) == (1, 0, 1)


def test_overall_score_is_the_geometric_mean_of_means():
    out = cellmap_overall_score([0.5, 1.0], [0.25, 0.75])
    assert out["overall_instance_score"] == 0.75
    assert out["overall_score"] == pytest.approx(math.sqrt(0.75 * 0.5))
    weighted = cellmap_overall_score([WeightedScore(1.0, 3), WeightedScore(0.0, 1)], [1.0])
    assert weighted["overall_instance_score"] == 0.75
    assert cellmap_overall_score([], [1.0])["overall_score"] == 0.0


def test_evaluate_instances_bundles_thresholds_and_cellmap():
    rng = np.random.default_rng(2)
    truth, _ = label_instances(rng.random((6, 10, 10)) < 0.3)
    pred, _ = label_instances(rng.random((6, 10, 10)) < 0.3)
    e = evaluate_instances(truth, pred, (8.0, 4.0, 4.0))
    d = e.to_dict()
    assert d["n_truth"] == int(truth.max())
    assert d["f1@0.5"] == e.scores.f1(0.5)
    assert d["cellmap_combined_score"] == e.cellmap.combined
