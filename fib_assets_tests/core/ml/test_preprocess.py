from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.exposure import equalize_adapthist

from fib_assets.core.formats.base import ArraySource
from fib_assets.core.geometry import BlockPlan, Roi, VoxelSize
from fib_assets.core.ml.preprocess import (
    Augmentation,
    Clahe,
    PercentileStretch,
    Pipeline,
    PreprocessedVolume,
    ZScore,
    mirror_indices,
)

VS = VoxelSize.isotropic(8.0)


@pytest.fixture(scope="module")
def smooth_volume() -> np.ndarray:
    """(40, 50, 60) float32 in [0, 1] with structure at several scales."""
    rng = np.random.default_rng(0)
    v = ndimage.gaussian_filter(rng.random((40, 50, 60)), 3) + 0.02 * rng.random((40, 50, 60))
    v = (v - v.min()) / (v.max() - v.min())
    return v.astype(np.float32)


def _blockwise(step: Clahe, volume: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    read = step.wrap(lambda roi: volume[roi.to_slices()], volume.shape)
    out = np.zeros_like(volume)
    for b in BlockPlan(volume.shape, block).blocks():
        out[b.write_roi.to_slices()] = read(b.write_roi)
    return out


@pytest.mark.parametrize("block", [(16, 16, 16), (7, 13, 29)], ids=["aligned", "unaligned"])
def test_clahe_blockwise_equals_whole_volume(smooth_volume: np.ndarray, block) -> None:
    step = Clahe(kernel_size=(8, 10, 12), clip_limit=0.02)
    whole = step.wrap(lambda roi: smooth_volume[roi.to_slices()], smooth_volume.shape)(
        Roi((0, 0, 0), smooth_volume.shape)
    )
    blocked = _blockwise(step, smooth_volume, block)
    np.testing.assert_array_equal(blocked, whole)
    assert whole.min() >= 0.0 and whole.max() <= 1.0


def test_clahe_has_no_seams_where_naive_blocks_do() -> None:
    """Jumps across block borders are like jumps inside blocks (every axis); CLAHE run on each
    block on its own (block-anchored tiles, no halo) shows the seams the tile halo prevents."""
    rng = np.random.default_rng(0)
    v = ndimage.gaussian_filter(rng.random((40, 50, 60)), 4)
    v = ((v - v.min()) / (v.max() - v.min())).astype(np.float32)
    step = Clahe(kernel_size=(8, 10, 12), clip_limit=0.02)
    block = (20, 25, 30)
    blocked = _blockwise(step, v, block)
    naive = np.zeros_like(v)
    for b in BlockPlan(v.shape, block).blocks():
        local = v[b.write_roi.to_slices()]
        naive[b.write_roi.to_slices()] = step.wrap(
            lambda r, a=local: a[r.to_slices()], local.shape
        )(Roi((0, 0, 0), local.shape))

    def seam(a: np.ndarray, axis: int) -> float:
        other = tuple(i for i in range(3) if i != axis)
        jumps = np.abs(np.diff(a, axis=axis)).mean(axis=other)  # between planes i and i + 1
        at_border = jumps[block[axis] - 1]
        return float(at_border / np.delete(jumps, block[axis] - 1).mean())

    for axis in range(3):
        assert seam(blocked, axis) < 1.5
        assert seam(naive, axis) > 2.0


def test_clahe_close_to_scikit_image(smooth_volume: np.ndarray) -> None:
    """An independent reference: scikit-image anchors its tiles half a tile earlier and
    redistributes clipped counts slightly differently, so the results are close, not equal."""
    ours = Clahe(kernel_size=(8, 10, 12), clip_limit=0.02).wrap(
        lambda roi: smooth_volume[roi.to_slices()], smooth_volume.shape
    )(Roi((0, 0, 0), smooth_volume.shape))
    ref = equalize_adapthist(smooth_volume, kernel_size=(8, 10, 12), clip_limit=0.02)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    assert np.abs(ours - ref).mean() < 0.03


def test_pipeline_fit_records_numbers_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(50, 200, (16, 16, 16)).astype(np.uint8)
    pipeline = Pipeline((PercentileStretch(1, 99), Clahe((8, 8, 8)), ZScore())).fit(
        ArraySource(data, VS)
    )
    record = pipeline.to_dict()
    assert [s["name"] for s in record] == ["percentile_stretch", "clahe", "zscore"]
    assert record[0]["low"] is not None and record[2]["std"] > 0
    assert Pipeline.from_dict(record) == pipeline
    out = PreprocessedVolume(ArraySource(data, VS), pipeline).read(Roi((0, 0, 0), data.shape))
    assert out.dtype == np.float32 and abs(float(out.mean())) < 1e-3
    with pytest.raises(ValueError, match="unknown pre-processing step 'equalize'"):
        Pipeline.from_dict([{"name": "equalize"}])
    with pytest.raises(ValueError, match="unknown parameters"):
        Pipeline.from_dict([{"name": "clahe", "clip": 0.1}])
    with pytest.raises(ValueError, match="not fitted"):
        ZScore().wrap(lambda roi: data, data.shape)


def test_mirror_padding_equals_padding_the_whole_volume() -> None:
    data = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    vol = PreprocessedVolume(ArraySource(data, VS))
    padded = np.pad(data, 5, mode="reflect")
    roi = Roi((-5, -2, 3), (9, 11, 10))
    sl = tuple(slice(o + 5, o + 5 + s) for o, s in zip(roi.offset, roi.shape, strict=True))
    np.testing.assert_array_equal(vol.read_padded(roi), padded[sl])
    assert mirror_indices(-3, 4, 1).tolist() == [0] * 7


def test_augmentation_keeps_raw_and_labels_aligned() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (12, 12, 12)).astype(np.int32)
    raw = np.pad(labels, 2, mode="edge").astype(np.float32)  # raw larger by 2 per side
    aug = Augmentation(intensity_scale=None, intensity_shift=None, gamma=None)
    for seed in range(6):
        r, lab = aug.apply(raw, labels, np.random.default_rng(seed))
        np.testing.assert_array_equal(r[2:-2, 2:-2, 2:-2], lab.astype(np.float32))
    a1 = Augmentation().apply(raw, labels, np.random.default_rng(9))
    a2 = Augmentation().apply(raw, labels, np.random.default_rng(9))
    np.testing.assert_array_equal(a1[0], a2[0])
    elastic = Augmentation(elastic_sigma_vox=1.5).apply(raw, labels, np.random.default_rng(0))
    assert elastic[0].shape == raw.shape and elastic[1].shape == labels.shape
    assert set(np.unique(elastic[1])) <= set(np.unique(labels))
    with pytest.raises(ValueError, match="even number"):
        aug.apply(raw[:-1], labels, rng)
    with pytest.raises(ValueError, match="gamma"):
        Augmentation(gamma=(1.2, 0.8))


def _only(**artefact) -> Augmentation:
    """No geometric or intensity augmentation, only the given acquisition artefact."""
    return Augmentation(False, False, None, None, None, **artefact)


def test_saturation_clips_the_brightest_fraction_and_keeps_the_rest() -> None:
    raw = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    labels = np.zeros((20, 20, 20), np.uint8)
    out, lab = _only(saturation=(0.3, 0.3)).apply(raw, labels, np.random.default_rng(1))
    cut = np.quantile(raw, 0.7)
    assert np.isclose(out.max(), cut)
    assert abs(np.mean(raw >= cut) - 0.3) < 0.01 and np.mean(out == out.max()) > 0.29
    keep = raw < cut
    np.testing.assert_array_equal(out[keep], raw[keep])
    np.testing.assert_array_equal(lab, labels)


def test_gain_ramp_is_linear_along_one_axis() -> None:
    raw = np.ones((9, 9, 9), np.float32)
    labels = np.zeros((9, 9, 9), np.uint8)
    for seed in range(4):
        out, _ = _only(gain_ramp=(0.8, 0.0)).apply(raw, labels, np.random.default_rng(seed))
        varying = [
            a
            for a in range(3)
            if np.ptp(out.mean(axis=tuple(b for b in range(3) if b != a))) > 1e-6
        ]
        assert len(varying) == 1  # one axis, constant across the other two
        profile = np.moveaxis(out, varying[0], 0)[:, 0, 0]
        np.testing.assert_allclose(np.diff(profile, 2), 0.0, atol=1e-6)  # linear
        assert np.ptp(profile) <= 0.8 + 1e-6 and np.isclose(profile.mean(), 1.0, atol=1e-6)


def test_streaks_are_constant_along_y() -> None:
    raw = np.random.default_rng(2).normal(size=(6, 10, 12)).astype(np.float32)
    labels = np.zeros((6, 10, 12), np.uint8)
    out, _ = _only(streaks=0.5).apply(raw, labels, np.random.default_rng(3))
    delta = out - raw
    assert np.abs(delta).max() > 0
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1, :], delta.shape), atol=1e-6)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"saturation": (0.5, 0.2)}, "saturation"),
        ({"saturation": (0.0, 1.0)}, "saturation"),
        ({"gain_ramp": (2.5, 0.0)}, "gain_ramp"),
        ({"streaks": -1.0}, "streaks"),
    ],
)
def test_artefact_augmentations_validate(change: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Augmentation(**change)
    assert Augmentation.from_dict(Augmentation(saturation=(0.0, 0.2)).to_dict()).saturation == (
        0.0,
        0.2,
    )
    none = Augmentation.none()
    assert none.gain_ramp is None and none.streaks is None and none.saturation is None
