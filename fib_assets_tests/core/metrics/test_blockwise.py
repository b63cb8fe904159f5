"""Blockwise evaluation equals the in-memory metrics on small volumes (random volumes, instances
crossing block borders, anisotropic voxels), reads through the format layer and Paintera label
groups, bounds Hausdorff distances it cannot see, and resumes from its block markers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fib_assets.core.formats import hdf5, n5, open_volume
from fib_assets.core.formats.base import ArraySource
from fib_assets.core.formats.paintera import open_label_group, write_paintera_labels
from fib_assets.core.geometry import Roi, VoxelSize
from fib_assets.core.metrics.blockwise import (
    ArrayReader,
    DistanceHistogram,
    above,
    evaluate_instances_blockwise,
    evaluate_semantic,
    foreground,
    halo_voxels,
)
from fib_assets.core.metrics.instance import evaluate_instances, label_instances
from fib_assets.core.metrics.semantic import hausdorff, semantic_scores

VOXELS = st.sampled_from([(8.0, 8.0, 8.0), (8.0, 4.0, 4.0), (10.0, 6.0, 4.0)])
SHAPES = st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(1, 9))
BLOCKS = st.tuples(st.integers(1, 4), st.integers(2, 5), st.integers(2, 5))


def _assert_semantic_equal(blockwise, memory):
    assert blockwise.confusion == memory.confusion
    assert blockwise.tolerance == memory.tolerance
    assert blockwise.band == memory.band
    hb, hm = blockwise.hausdorff, memory.hausdorff
    assert hb.exact
    for name in ("max_nm", "percentile_nm", "truth_to_pred_nm", "pred_to_truth_nm"):
        a, b = getattr(hb, name), getattr(hm, name)
        assert (math.isinf(a) and math.isinf(b)) or a == pytest.approx(b, rel=1e-12), name


@settings(max_examples=40, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s))),
    VOXELS,
    BLOCKS,
    st.sampled_from([0.0, 8.0, 40.0]),
    st.sampled_from([None, 4.0, 10.0]),
)
def test_semantic_blockwise_equals_in_memory(masks, vox, block, tol, band):
    truth, pred = masks
    diag = math.dist((0, 0, 0), [s * v for s, v in zip(truth.shape, vox, strict=True)])
    ev = evaluate_semantic(
        truth,
        pred,
        voxel_size=vox,
        block_shape=block,
        tolerance_nm=tol,
        band_nm=band,
        hausdorff_halo_nm=diag,  # every distance visible: everything exact
    )
    mem = semantic_scores(truth, pred, vox, tolerance_nm=tol, band_nm=band)
    _assert_semantic_equal(ev.scores, mem)


@settings(max_examples=30, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s))),
    VOXELS,
    BLOCKS,
)
def test_blockwise_hausdorff_is_exact_or_a_lower_bound(masks, vox, block):
    truth, pred = masks
    ev = evaluate_semantic(truth, pred, voxel_size=vox, block_shape=block, tolerance_nm=10.0)
    mem = hausdorff(truth, pred, vox)
    h = ev.scores.hausdorff
    if h.exact:
        assert h.max_nm == pytest.approx(mem.max_nm) or math.isinf(mem.max_nm)
        assert h.percentile_nm == pytest.approx(mem.percentile_nm) or math.isinf(h.percentile_nm)
    else:
        assert h.max_nm == ev.halo_nm < mem.max_nm
        assert h.percentile_nm <= mem.percentile_nm + 1e-9
    # counts never depend on the halo
    assert ev.scores.confusion == semantic_scores(truth, pred, vox).confusion


def test_hausdorff_beyond_the_halo_is_reported_as_a_lower_bound():
    vox = VoxelSize(8.0, 8.0, 8.0)
    truth = np.zeros((4, 4, 40), bool)
    pred = np.zeros_like(truth)
    truth[:, :, :4] = True
    pred[:, :, :4] = True
    pred[1, 1, 36] = True  # a speck 33 voxels (264 nm) away from the truth
    ev = evaluate_semantic(truth, pred, voxel_size=vox, block_shape=(4, 4, 8), tolerance_nm=40.0)
    h = ev.scores.hausdorff
    assert ev.halo_nm == 40.0
    assert not h.exact and h.max_nm == 40.0 < hausdorff(truth, pred, vox).max_nm == 264.0
    assert h.percentile_nm == 0.0  # p95 is exact: the speck is 1 of 65 predicted voxels
    wide = evaluate_semantic(
        truth, pred, voxel_size=vox, block_shape=(4, 4, 8), hausdorff_halo_nm=264.0
    )
    assert wide.scores.hausdorff.exact and wide.scores.hausdorff.max_nm == 264.0


def test_distance_histogram_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    values = np.sqrt(rng.integers(0, 60, 500)).astype(np.float64) * 4.0
    h = DistanceHistogram.of(values, 1e9)
    for q in (0, 5, 37.5, 50, 95, 99, 100):
        got, exact = h.percentile(q)
        assert exact and got == pytest.approx(np.percentile(values, q), rel=1e-12)
    censored = DistanceHistogram.of(values, 10.0)
    assert censored.percentile(100) == (10.0, False)
    for q in (50, 90, 99):  # bounds from below whenever inexact
        got, exact = censored.percentile(q)
        assert got <= np.percentile(values, q) + 1e-12
        assert exact == (got == pytest.approx(np.percentile(values, q), rel=1e-12))
    assert halo_voxels((8.0, 4.0, 3.0), 40.0) == (5, 10, 14)


@settings(max_examples=30, deadline=None)
@given(
    SHAPES.flatmap(lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s))),
    VOXELS,
    BLOCKS,
)
def test_instance_blockwise_equals_in_memory(masks, vox, block):
    truth, _ = label_instances(masks[0])
    pred, _ = label_instances(masks[1])
    ev = evaluate_instances_blockwise(truth, pred, voxel_size=vox, block_shape=block)
    mem = evaluate_instances(truth, pred, vox, relabel_prediction=False)
    assert ev.scores == mem.scores
    assert ev.cellmap.exact
    assert ev.cellmap == mem.cellmap


def test_instances_crossing_block_borders():
    """One long object through every block, a ring, and objects straddling corners."""
    vox = VoxelSize(8.0, 4.0, 4.0)
    truth = np.zeros((6, 12, 12), np.uint32)
    pred = np.zeros_like(truth)
    truth[1:5, 5:7, :] = 1  # spans all blocks along x
    pred[1:5, 5:7, 1:] = 4
    truth[2:4, 1:4, 2:5] = 2  # straddles a block corner
    pred[2:4, 1:4, 3:6] = 9
    truth[0, 9:12, 9:12] = 3
    truth[0, 10, 10] = 0  # a ring: hole in the middle
    pred[0, 9:12, 9:12] = 5
    ev = evaluate_instances_blockwise(truth, pred, voxel_size=vox, block_shape=(2, 4, 4))
    mem = evaluate_instances(truth, pred, vox, relabel_prediction=False)
    assert ev.scores == mem.scores and ev.cellmap == mem.cellmap
    assert (ev.cellmap.tp, ev.cellmap.fp, ev.cellmap.fn) == (3, 0, 0)
    assert ev.cellmap.hausdorff_nm == (4.0, 4.0, 4.0)


def test_instance_hausdorff_with_a_narrow_halo_is_bounded():
    vox = VoxelSize(4.0, 4.0, 4.0)
    truth = np.zeros((2, 4, 64), np.uint32)
    pred = np.zeros_like(truth)
    truth[:, :, 0:60] = 1
    pred[:, :, 0:40] = 1  # 20 voxels (80 nm) short
    pred[:, :, 62:64] = 2
    mem = evaluate_instances(truth, pred, vox, relabel_prediction=False, max_distance_nm=200.0)
    narrow = evaluate_instances_blockwise(
        truth,
        pred,
        voxel_size=vox,
        block_shape=(2, 4, 8),
        max_distance_nm=200.0,
        hausdorff_halo_nm=16.0,
    )
    assert mem.cellmap.hausdorff_nm[0] == 80.0
    assert not narrow.cellmap.exact and narrow.cellmap.inexact_instances == 1
    assert narrow.cellmap.hausdorff_nm[0] == 16.0  # the lower bound
    assert narrow.cellmap.normalized_hausdorff >= mem.cellmap.normalized_hausdorff
    assert narrow.scores == mem.scores  # counts and matching stay exact


def test_blockwise_reads_through_the_format_layer_and_paintera(tmp_path):
    """Class-id truth in HDF5 and a uint8 probability map in N5 (both written by our writers and
    opened with open_volume), instances from a Paintera label group (shape + read)."""
    vox = VoxelSize(8.0, 4.0, 4.0)
    rng = np.random.default_rng(3)
    classes = np.full((12, 16, 16), 35, np.uint8)  # cytosol
    classes[2:9, 3:11, 4:12] = 3  # mito membrane
    classes[4:7, 5:9, 6:10] = 4  # mito lumen
    prob = np.clip(
        (classes == 3) * 200 + (classes == 4) * 180 + rng.integers(0, 90, classes.shape), 0, 255
    ).astype(np.uint8)
    gt_path = tmp_path / "gt.h5"
    hdf5.write_volume(
        hdf5.plan_write(gt_path, ArraySource(classes, vox).info, chunks=(4, 8, 8)),
        ArraySource(classes, vox),
    )
    pr_path = tmp_path / "pred.n5"
    n5.write_volume(
        n5.plan_write(pr_path, ArraySource(prob, vox).info, chunks=(4, 8, 8)),
        ArraySource(prob, vox),
    )
    truth_src, pred_src = open_volume(gt_path), open_volume(pr_path)
    mito = foreground({3, 4, 5})
    ev = evaluate_semantic(
        truth_src,
        pred_src,
        voxel_size=vox,
        block_shape=(4, 8, 8),
        truth_mask=mito,
        pred_mask=above(127),
        band_nm=8.0,
        hausdorff_halo_nm=200.0,
    )
    mem = semantic_scores(np.isin(classes, [3, 4, 5]), prob > 127, vox, band_nm=8.0)
    _assert_semantic_equal(ev.scores, mem)
    assert ev.scores.confusion.tp == int((np.isin(classes, [3, 4, 5]) & (prob > 127)).sum())

    inst, _ = label_instances(np.isin(classes, [3, 4, 5]))
    pred_inst, _ = label_instances(prob > 127)
    lab_path = write_paintera_labels(tmp_path / "inst.n5", inst, voxel_size=vox, chunks=(4, 8, 8))
    group = open_label_group(lab_path)
    ev_i = evaluate_instances_blockwise(
        group, ArrayReader(pred_inst), voxel_size=vox, block_shape=(4, 8, 8)
    )
    mem_i = evaluate_instances(inst, pred_inst, vox, relabel_prediction=False)
    assert ev_i.cellmap == mem_i.cellmap


class _Flaky:
    """Reads an array; raises on the ``fail_at``-th read (a killed pod)."""

    def __init__(self, data, fail_at=None):
        self.data, self.shape, self.fail_at, self.reads = data, data.shape, fail_at, 0

    def read(self, roi: Roi):
        self.reads += 1
        if self.fail_at is not None and self.reads == self.fail_at:
            raise OSError("simulated failure")
        return self.data[roi.to_slices()]


def test_blockwise_evaluation_resumes_from_block_markers(tmp_path):
    rng = np.random.default_rng(4)
    truth = rng.random((6, 8, 8)) < 0.4
    pred = rng.random((6, 8, 8)) < 0.4
    kw = dict(voxel_size=(8.0, 4.0, 4.0), block_shape=(3, 4, 4), ledger_dir=tmp_path, run_id="a")
    with pytest.raises(OSError, match="simulated"):
        evaluate_semantic(truth, _Flaky(pred, fail_at=5), **kw)
    markers = list(tmp_path.rglob("semantic-*.done.json"))
    assert len(markers) == 4  # blocks 0..3 finished; the failing one left no marker
    again = _Flaky(pred)
    ev = evaluate_semantic(truth, again, **kw)
    assert again.reads == 8 - 4  # only the missing blocks were read
    mem = semantic_scores(truth, pred, (8.0, 4.0, 4.0))
    assert ev.scores.confusion == mem.confusion and ev.scores.tolerance == mem.tolerance
    other = _Flaky(pred)
    evaluate_semantic(truth, other, **{**kw, "run_id": "b"})  # new inputs: no marker reused
    assert other.reads == 8


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        evaluate_semantic(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), voxel_size=8.0)

    class NoShape:
        def read(self, roi):
            return np.zeros(roi.shape)

    with pytest.raises(ValueError, match="NoShape: no 3-D shape"):
        evaluate_semantic(NoShape(), np.zeros((2, 2, 2)), voxel_size=8.0)


def test_valid_mask_restricts_counts_like_the_in_memory_mask():
    """Ground truth with unannotated voxels (id 0): counts only where annotated."""
    rng = np.random.default_rng(7)
    labels = rng.choice(np.array([0, 3, 35], np.uint8), size=(6, 10, 10), p=[0.3, 0.3, 0.4])
    prob = rng.integers(0, 256, labels.shape).astype(np.uint8)
    vox = (8.0, 4.0, 4.0)
    ev = evaluate_semantic(
        labels,
        prob,
        voxel_size=vox,
        block_shape=(3, 4, 4),
        truth_mask=foreground({3}),
        pred_mask=above(127),
        valid=foreground(),
        band_nm=4.0,
        hausdorff_halo_nm=200.0,
    )
    mem = semantic_scores(labels == 3, prob > 127, vox, band_nm=4.0, mask=labels > 0)
    _assert_semantic_equal(ev.scores, mem)
    total = ev.scores.confusion
    assert total.tp + total.fp + total.fn + total.tn == int((labels > 0).sum())
