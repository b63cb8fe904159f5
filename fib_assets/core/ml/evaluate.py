"""Scoring models and segmentations against ground-truth crops: Dice and IoU per class with
voxel counts pooled over crops (unannotated voxels, label 0, are not scored), and the
blockwise connected-components segmentation of a prediction container."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core import labels
from fib_assets.core.blockwise import fingerprint
from fib_assets.core.formats import open_volume
from fib_assets.core.geometry import Roi
from fib_assets.core.metrics.semantic import Confusion, confusion
from fib_assets.core.ml.classes import ClassSpec
from fib_assets.core.ml.crops import EvalCrop, crop_labels
from fib_assets.core.ml.predict import (
    ArrayStore,
    BlockPredictor,
    connected_components_blockwise,
    default_ledger_dir,
    network_geometry,
    read_container_roi,
    read_prediction_attrs,
)
from fib_assets.core.ml.preprocess import PreprocessedVolume
from fib_assets.core.ml.targets import UINT8_THRESHOLD
from fib_assets.core.ml.train import TrainConfig
from fib_assets.core.ml.unet import UNet

Array = npt.NDArray[Any]


def predict_roi(model: UNet, config: TrainConfig, volume: PreprocessedVolume, roi: Roi) -> Array:
    """uint8 class maps (C, z, y, x) of ``roi``, exactly as blockwise inference computes them
    (valid padding: the ROI is grown to a multiple of the network's total downsampling factor,
    then cropped back)."""
    f = config.unet.total_factor
    if config.unet.padding == "valid":
        block = tuple(math.ceil(s / ff) * ff for s, ff in zip(roi.shape, f, strict=True))
    else:
        block = roi.shape
    ctx, net_in, _ = network_geometry(config, block)
    kind = "tanh" if config.loss == "balanced_mse" else "softmax"
    predictor = BlockPredictor(model, volume, ctx, net_in, kind)
    maps = predictor.to_uint8(predictor.predict(Roi(roi.offset, block)))  # type: ignore[arg-type]
    return maps[:, : roi.shape[0], : roi.shape[1], : roi.shape[2]]


def crop_overlaps(
    predicted: Callable[[ClassSpec], npt.NDArray[np.bool_]],
    truth_labels: Array,
    classes: Sequence[ClassSpec],
) -> dict[str, Confusion]:
    """One crop's voxel confusion per class; voxels with label 0 (unannotated) are not scored.
    ``predicted(class)`` is the predicted mask of the crop's ROI."""
    annotated = truth_labels != labels.UNANNOTATED
    return {c.name: confusion(c.mask(truth_labels), predicted(c), annotated) for c in classes}


def pool_overlaps(into: dict[str, Confusion], part: Mapping[str, Confusion]) -> None:
    """Add a crop's counts to the totals (Dice over all crops pools voxels, not crop scores)."""
    for name, c in part.items():
        into[name] = into[name] + c if name in into else c


def evaluate_crops(model: UNet, config: TrainConfig, crops: Sequence[EvalCrop]) -> dict[str, float]:
    """Dice per class over all ``crops`` (voxel counts pooled), threshold 127 on uint8."""
    totals: dict[str, Confusion] = {}
    names = [c.name for c in config.classes]
    for crop in crops:
        maps = predict_roi(model, config, crop.volume, crop.roi)

        def predicted(c: ClassSpec, maps: Array = maps) -> npt.NDArray[np.bool_]:
            return np.asarray(maps[names.index(c.name)] > UINT8_THRESHOLD)

        pool_overlaps(totals, crop_overlaps(predicted, crop.labels, config.classes))
    return {name: totals[name].dice if name in totals else 1.0 for name in names}


@dataclass
class Segmentation:
    classes: list[ClassSpec]
    counts: dict[str, int]
    shape: tuple[int, int, int]


def segment_predictions(pred_path: Path, out: Path, version: str) -> Segmentation:
    """Connected components (6-connected, threshold 127) of every class map of a prediction
    container, blockwise with the prediction's blocks, into ``out`` (``instances/<class>``,
    uint64, ids 1..N); resumable through block markers keyed by ``version``."""
    attrs = read_prediction_attrs(pred_path)
    plan = attrs["plan"]
    classes = [ClassSpec.from_dict(c) for c in attrs["config"]["classes"]]
    s = [int(v) for v in plan["volume_shape"]]
    shape = (s[0], s[1], s[2])
    block = tuple(int(b) for b in plan["block_shape"])
    fp = fingerprint({"predictions": version, "threshold": UINT8_THRESHOLD})
    store = ArrayStore(out, shape, block, plan["voxel_size_nm"], {"predictions": str(pred_path)})
    counts: dict[str, int] = {}
    for c in classes:

        def foreground(roi: Roi, key: str = f"predictions/{c.name}") -> npt.NDArray[np.bool_]:
            return read_container_roi(pred_path, key, roi) > UINT8_THRESHOLD

        counts[c.name] = connected_components_blockwise(
            foreground, store, c.name, block, default_ledger_dir(out), fp
        )
    store.set_attributes(
        {
            "complete": True,
            "predictions": str(pred_path),
            "classes": [c.to_dict() for c in classes],
            "max_id": counts,
            "threshold_uint8": UINT8_THRESHOLD,
        }
    )
    shutil.rmtree(out / "fragments", ignore_errors=True)  # pass-1 ids; the markers know
    return Segmentation(classes, counts, shape)


def score_against_crops(
    revision: labels.Revision, raw_path: Path, container: Path, classes: Sequence[ClassSpec]
) -> tuple[dict[str, Confusion], str]:
    """Voxel confusion per class of a segmentation container with every crop of a ground-truth
    revision (pooled over crops; unannotated voxels not scored), and a markdown table per
    crop."""
    overlaps: dict[str, Confusion] = {}
    rows = ["| crop | annotation split | " + " | ".join(f"Dice {c.name}" for c in classes) + " |"]
    rows.append("|---|---|" + "---|" * len(classes))
    raw = open_volume(raw_path)
    try:
        for crop in revision.crops:
            truth = crop_labels(revision, crop, raw)

            def predicted(c: ClassSpec, roi: Roi = crop.roi) -> npt.NDArray[np.bool_]:
                return np.asarray(read_container_roi(container, f"instances/{c.name}", roi) > 0)

            per_crop = crop_overlaps(predicted, truth, classes)
            pool_overlaps(overlaps, per_crop)
            rows.append(
                f"| {crop.name} | {crop.split} | "
                + " | ".join(f"{per_crop[c.name].dice:.3f}" for c in classes)
                + " |"
            )
    finally:
        raw.close()
    return overlaps, "\n".join(rows)
