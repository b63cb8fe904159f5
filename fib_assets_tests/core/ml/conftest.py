"""Tiny synthetic data and a tiny network shared by the ML tests (CPU, seconds each)."""

from __future__ import annotations

import numpy as np
import pytest

from fib_assets.core.geometry import VoxelSize

VS = VoxelSize.isotropic(8.0)


@pytest.fixture(scope="session")
def tiny_region() -> tuple[np.ndarray, np.ndarray]:
    """(raw uint8, labels uint8), both (24, 48, 48), of a synthetic cell at 8 nm."""
    from fib_assets.core.ml.domains import DOMAIN_A, render_domain

    vol = render_domain(DOMAIN_A, (24, 48, 48), seed=5)
    return vol.raw, vol.labels


@pytest.fixture()
def tiny_config():
    """A 2-level U-Net (base width 4, 8 voxels of context per side), mito, 8³ targets."""
    from fib_assets.core.ml.classes import resolve_classes
    from fib_assets.core.ml.preprocess import Augmentation
    from fib_assets.core.ml.train import TrainConfig
    from fib_assets.core.ml.unet import UNetConfig

    return TrainConfig(
        unet=UNetConfig(levels=2, base_width=4, width_factor=2, downsample=((2, 2, 2),)),
        classes=resolve_classes(["mito"]),
        output_shape=(8, 8, 8),
        batch_size=2,
        iterations=4,
        metrics_every=2,
        lr=1e-3,
        device="cpu",
        augmentation=Augmentation(),
        preprocessing=({"name": "percentile_stretch"}, {"name": "zscore"}),
    )
