"""Scoring a segmentation container against a revision's crops, checked against scikit-learn on
the same voxels read independently (zarr) from the dense ground truth."""

from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from fib_assets.core import labels
from fib_assets.core.crop_evaluation import evaluate_crops
from fib_assets.core.formats import format_module
from fib_assets.core.formats.base import ArraySource
from fib_assets.core.geometry import VoxelSize
from fib_assets.core.labels import COSEM_CLASS_MAP, AnnotationSidecar, RevisionStore
from fib_assets.core.ml.classes import resolve_class

MITO = resolve_class("mito")


def _write_instances(container: Path, name: str, ids: np.ndarray) -> None:
    arr = zarr.create_array(
        store=str(container / "instances" / name / "s0"),
        shape=ids.shape,
        chunks=(8, 16, 16),
        dtype="uint64",
    )
    arr[...] = ids


@pytest.fixture()
def revision_and_truth(tmp_path: Path):
    raw = np.random.default_rng(0).integers(0, 255, (24, 48, 48), dtype=np.uint8)
    source = ArraySource(raw, VoxelSize(8.0, 8.0, 8.0))
    fmt = format_module("zarr")
    raw_path = tmp_path / "raw.ome.zarr"
    fmt.write_volume(fmt.plan_write(raw_path, source.info, chunks=(8, 16, 16)), source)
    gt = np.full(raw.shape, 35, dtype=np.uint8)  # cytosol
    gt[2:10, 4:14, 4:14] = 4  # mitochondrion 1 (lumen)
    gt[12:20, 28:40, 26:38] = 3  # mitochondrion 2 (membrane id)
    gt[:, 20:22] = 16  # er sheet
    gt_path = tmp_path / "gt.zarr"
    arr = zarr.create_array(store=str(gt_path), shape=gt.shape, chunks=(8, 16, 16), dtype="uint8")
    arr[...] = gt
    arr.attrs["voxel_size_nm"] = [8.0, 8.0, 8.0]
    paths = labels.deliver_synthetic_annotations(
        gt_path, tmp_path / "inbox", "r001", raw_voxel_size_nm=8.0, n_crops=2,
        crop_shape=(24, 48, 24), seed=0,
    )  # fmt: skip
    rois = [AnnotationSidecar.read(p / labels.SIDECAR, "x").roi for p in paths]
    store = RevisionStore(tmp_path / "store")
    grid = labels.RawGrid(raw.shape, VoxelSize(8.0, 8.0, 8.0))
    result = labels.import_revision(
        store, labels.scan_inbox(tmp_path / "inbox", "r001"), grid, COSEM_CLASS_MAP
    )
    return {"revision": result.revision, "raw": raw_path, "gt": gt, "rois": rois, "tmp": tmp_path}


def test_perfect_segmentation_scores_one(revision_and_truth) -> None:
    s = revision_and_truth
    truth = np.isin(s["gt"], MITO.ids)
    from scipy import ndimage

    inst, _ = ndimage.label(truth)
    container = s["tmp"] / "seg.zarr"
    _write_instances(container, "mito", inst.astype(np.uint64))
    (row,) = evaluate_crops(s["revision"], s["raw"], container, [MITO])
    assert row["dice"] == pytest.approx(1.0)
    assert row["hausdorff_nm"] == pytest.approx(0.0)
    assert row["instance_f1"] == pytest.approx(1.0)
    assert row["cellmap_score"] == pytest.approx(1.0)
    assert row["n_crops"] == 2


def test_shifted_segmentation_matches_sklearn_on_the_crop_voxels(revision_and_truth) -> None:
    s = revision_and_truth
    truth = np.isin(s["gt"], MITO.ids)
    pred = np.roll(truth, 3, axis=2)  # 24 nm off along x
    pred[0:4, 40:44, 40:44] = True  # a false positive object
    from scipy import ndimage

    inst, _ = ndimage.label(pred)
    container = s["tmp"] / "seg.zarr"
    _write_instances(container, "mito", inst.astype(np.uint64))
    (row,) = evaluate_crops(s["revision"], s["raw"], container, [MITO], tolerance_nm=40.0)
    # reference: pooled voxels of both crop ROIs, read from the dense truth, not our readers
    t = np.concatenate([truth[r.to_slices()].ravel() for r in s["rois"]])
    p = np.concatenate([pred[r.to_slices()].ravel() for r in s["rois"]])
    assert row["dice"] == pytest.approx(f1_score(t, p))
    assert row["iou"] == pytest.approx(jaccard_score(t, p))
    assert row["precision"] == pytest.approx(precision_score(t, p))
    assert row["recall"] == pytest.approx(recall_score(t, p))
    assert row["true_voxels"] == int(t.sum()) and row["predicted_voxels"] == int(p.sum())
    # a 24 nm shift is within the 40 nm COSEM tolerance: tolerance Dice is higher
    assert row["dice_tolerance"] > row["dice"]
    assert 0 < row["hausdorff95_nm"] <= row["hausdorff_nm"]
    assert 0 < row["instance_f1"] < 1
    assert 0 < row["cellmap_score"] < 1


def test_empty_prediction_gives_zero_dice_and_no_finite_hausdorff(revision_and_truth) -> None:
    s = revision_and_truth
    container = s["tmp"] / "seg.zarr"
    _write_instances(container, "mito", np.zeros(s["gt"].shape, np.uint64))
    (row,) = evaluate_crops(s["revision"], s["raw"], container, [MITO])
    assert row["dice"] == 0.0 and row["predicted_voxels"] == 0
    assert np.isnan(row["hausdorff_nm"])
    with pytest.raises(ValueError, match="no crops"):
        evaluate_crops(s["revision"], s["raw"], container, [MITO], crops=["nope"])
