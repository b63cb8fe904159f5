"""Ground-truth crops as training and evaluation data.

A region contributes its accepted ground-truth revision (:mod:`fib_assets.core.labels`) and its
raw voxels (any format variant). :func:`assemble_training_data` turns the ``train`` crops of
training regions into one :class:`CropSetSampler` and every other crop of training and
validation regions into :class:`EvalCrop` s for model selection; test regions never enter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core import labels
from fib_assets.core.formats import open_volume
from fib_assets.core.formats.base import ArraySource, VolumeSource
from fib_assets.core.geometry import Roi
from fib_assets.core.ml.preprocess import Pipeline, PreprocessedVolume
from fib_assets.core.ml.sampler import Batch, PatchSampler
from fib_assets.core.ml.train import TrainConfig, build_sampler

Array = npt.NDArray[Any]


def crop_labels(revision: labels.Revision, crop: labels.CropRecord, source: VolumeSource) -> Array:
    """A crop's class ids on the raw grid (z, y, x), uint8; crops finer than the raw are
    mode-downsampled (:class:`~fib_assets.core.labels.RevisionLabelSource`)."""
    grid = labels.RawGrid(source.info.shape, source.info.voxel_size)
    if not grid.roi.contains(crop.roi):
        raise ValueError(
            f"crop {crop.name} of revision {revision.number} ({revision.region}) has ROI "
            f"{crop.roi.to_dict()} outside the volume {list(source.info.shape)}"
        )
    return labels.RevisionLabelSource(revision, grid).read(crop.roi).astype(np.uint8)


class CropSetSampler:
    """Training patches from many ground-truth crops (of one or more regions) for
    :class:`~fib_assets.core.ml.train.Trainer`: patch ``i`` comes from a crop drawn with
    probability proportional to its voxels (seeded by ``(seed, i)``), then from that crop's
    class-balanced :class:`~fib_assets.core.ml.sampler.PatchSampler`. Deterministic, so a
    resumed training draws the same batches."""

    def __init__(self, crops: Sequence[tuple[str, PatchSampler]], seed: int = 0) -> None:
        if not crops:
            raise ValueError("no training crops: the training regions have no 'train' crops")
        self.names = [n for n, _ in crops]
        self.samplers = [s for _, s in crops]
        first = self.samplers[0]
        for name, s in crops:
            same = (s.input_shape, s.output_shape, s.target, s.classes) == (
                first.input_shape,
                first.output_shape,
                first.target,
                first.classes,
            )
            if not same:
                raise ValueError(f"crop {name}: sampler shapes/classes differ from {crops[0][0]}")
        self.input_shape = first.input_shape
        self.output_shape = first.output_shape
        self.target = first.target
        self.classes = first.classes
        self.seed = int(seed)
        sizes = np.array([math.prod(s.labels.info.shape) for s in self.samplers], dtype=float)
        self.weights = sizes / sizes.sum()

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.samplers)

    def sample(self, index: int) -> tuple[Array, Array, Array]:
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.choice(len(self.samplers), p=self.weights))
        return self.samplers[k].sample(index)

    def batch(self, step: int, batch_size: int) -> Batch:
        items = [self.sample(step * batch_size + j) for j in range(batch_size)]
        return Batch(
            np.stack([r[None] for r, _, _ in items]),
            np.stack([t for _, t, _ in items]),
            np.stack([m[None] for _, _, m in items]),
        )

    def data_versions(self) -> dict[str, str]:
        out = {}
        for name, s in zip(self.names, self.samplers, strict=True):
            for key, value in s.data_versions().items():
                out[f"{name}:{key}"] = value
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "crop_set",
            "seed": self.seed,
            "crops": [
                {"name": n, "weight": float(w), **s.describe()}
                for n, s, w in zip(self.names, self.samplers, self.weights, strict=True)
            ],
        }


@dataclass
class EvalCrop:
    """A ground-truth crop to score a model on: the pre-processed region, the crop's ROI (raw
    voxels) and its class ids (0 = unannotated, not scored)."""

    name: str
    volume: PreprocessedVolume
    roi: Roi
    labels: Array


@dataclass
class RegionData:
    """One region's inputs to training or evaluation: the accepted ground-truth revision and
    the raw voxels (a format variant, a local path or an ``s3://`` URL) with their data
    versions."""

    region: str
    role: str
    revision: labels.Revision
    raw_path: str
    raw_data_version: str | None
    variant: str

    def provenance(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ground_truth_revision": self.revision.number,
            "ground_truth_data_version": self.revision.data_version,
            "ground_truth_path": self.revision.location,
            "variant": f"volume_{self.variant}",
            "variant_path": str(self.raw_path),
            "variant_data_version": self.raw_data_version,
        }


@dataclass
class TrainingData:
    """Everything a training run reads: the crop sampler, the validation crops, which crops of
    which region were used (with the regions' data versions) and the open volumes."""

    sampler: CropSetSampler
    validation: list[EvalCrop]
    used: dict[str, dict[str, Any]]
    readers: list[Any]

    def close(self) -> None:
        for r in self.readers:
            r.close()


def assemble_training_data(config: TrainConfig, data: Sequence[RegionData]) -> TrainingData:
    """Training crops: the ``train`` crops of training regions. Validation crops: every crop of
    validation regions and the curators' held-out crops of training regions. Test regions are
    never passed in. Pre-processing is fitted once per region (as prediction refits it)."""
    crops: list[tuple[str, PatchSampler]] = []
    validation: list[EvalCrop] = []
    used: dict[str, dict[str, Any]] = {}
    readers: list[Any] = []
    try:
        for d in data:
            if d.role not in ("train", "validation"):
                raise ValueError(f"{d.region} has role {d.role!r}: only train/validation regions")
            raw = open_volume(d.raw_path)
            readers.append(raw)
            pipeline = Pipeline.from_dict(config.preprocessing).fit(raw, seed=config.seed)
            used[d.region] = {**d.provenance(), "train_crops": [], "validation_crops": []}
            for crop in d.revision.crops:
                lab = crop_labels(d.revision, crop, raw)
                name = f"{d.region}/{crop.name}"
                if d.role == "train" and crop.split == "train":
                    labels_source = ArraySource(lab, raw.info.voxel_size)
                    sampler = build_sampler(
                        config, raw, labels_source, label_offset=crop.roi.offset, pipeline=pipeline
                    )
                    crops.append((name, sampler))
                    used[d.region]["train_crops"].append(crop.name)
                else:
                    volume = PreprocessedVolume(raw, pipeline)
                    validation.append(EvalCrop(name, volume, crop.roi, lab))
                    used[d.region]["validation_crops"].append(crop.name)
        return TrainingData(CropSetSampler(crops, seed=config.seed), validation, used, readers)
    except BaseException:
        for r in readers:
            r.close()
        raise
