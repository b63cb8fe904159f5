from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fib_assets.core.formats import format_module
from fib_assets.core.formats.base import ArraySource
from fib_assets.core.ml.classes import resolve_classes
from fib_assets.core.ml.preprocess import Augmentation, PercentileStretch, Pipeline
from fib_assets.core.ml.sampler import PatchSampler, SamplingError, measure_throughput

from .conftest import VS

MITO = resolve_classes(["mito"])
SHAPES = {"input_shape": (24, 24, 24), "output_shape": (8, 8, 8)}


def _write(tmp: Path, fmt: str, name: str, data: np.ndarray) -> Path:
    module = format_module(fmt)
    source = ArraySource(data, VS)
    path = tmp / f"{name}{module.SUFFIX}"
    module.write_volume(module.plan_write(path, source.info, chunks=(16, 16, 16)), source)
    return path


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "n5"])
def test_patches_through_any_format_equal_in_memory(tmp_path: Path, tiny_region, fmt: str) -> None:
    raw, labels = tiny_region
    raw_path = _write(tmp_path, fmt, "raw", raw)
    lab_path = _write(tmp_path, fmt, "labels", labels)
    kw = {**SHAPES, "pipeline": Pipeline((PercentileStretch(),)), "seed": 4}
    kw["augmentation"] = Augmentation()
    from_files = PatchSampler(raw_path, lab_path, MITO, **kw)
    in_memory = PatchSampler(ArraySource(raw, VS), ArraySource(labels, VS), MITO, **kw)
    assert from_files.data_versions()["labels"] == in_memory.data_versions()["labels"]
    for i in range(3):
        for a, b in zip(from_files.sample(i), in_memory.sample(i), strict=True):
            np.testing.assert_array_equal(a, b)
    batch = from_files.batch(step=1, batch_size=2)
    assert batch.raw.shape == (2, 1, 24, 24, 24) and batch.raw.dtype == np.float32
    assert batch.target.shape == (2, 1, 8, 8, 8) and batch.mask.shape == (2, 1, 8, 8, 8)
    assert measure_throughput(from_files, 2)["patches_per_s"] > 0


def test_class_balance(tiny_region) -> None:
    raw, labels = tiny_region
    fractions = {}
    for balance in (True, False):
        s = PatchSampler(
            ArraySource(raw, VS), ArraySource(labels, VS), MITO, class_balance=balance, **SHAPES
        )
        fractions[balance] = np.mean([(s.sample(i)[1] > 0).mean() for i in range(24)])
    overall = np.isin(labels, MITO[0].ids).mean()
    assert fractions[True] > 2 * overall
    assert fractions[True] > fractions[False]


def test_rejects_patches_with_too_few_annotated_voxels(tiny_region) -> None:
    raw, labels = tiny_region
    partial = labels.copy()
    partial[:, :, 24:] = 0  # half of the crop is not annotated
    s = PatchSampler(
        ArraySource(raw, VS),
        ArraySource(partial, VS),
        MITO,
        class_balance=False,
        min_annotated=0.9,
        **SHAPES,
    )
    masks = [s.sample(i)[2] for i in range(12)]
    assert s.rejected > 0
    assert all(m.mean() >= 0.9 for m in masks)
    empty = PatchSampler(
        ArraySource(raw, VS), ArraySource(np.zeros_like(labels), VS), MITO, max_tries=5, **SHAPES
    )
    with pytest.raises(SamplingError, match="at least 50% annotated"):
        empty.sample(0)


def test_class_targets_and_label_offset(tiny_region) -> None:
    raw, labels = tiny_region
    crop = labels[4:20, 8:40, 8:40]
    s = PatchSampler(
        ArraySource(raw, VS),
        ArraySource(crop, VS),
        resolve_classes(["mito", "er"]),
        target="classes",
        label_offset=(4, 8, 8),
        min_annotated=0.0,
        **SHAPES,
    )
    _, target, mask = s.sample(0)
    assert target.dtype == np.int64 and set(np.unique(target)) <= {-1, 0, 1, 2}
    assert ((target == -1) == ~mask).all()
    with pytest.raises(ValueError, match="do not lie inside raw"):
        PatchSampler(
            ArraySource(raw, VS), ArraySource(crop, VS), MITO, label_offset=(10, 0, 0), **SHAPES
        )
    with pytest.raises(ValueError, match="even number"):
        PatchSampler(
            ArraySource(raw, VS),
            ArraySource(labels, VS),
            MITO,
            input_shape=(23, 24, 24),
            output_shape=(8, 8, 8),
        )
