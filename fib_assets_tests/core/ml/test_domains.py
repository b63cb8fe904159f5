from __future__ import annotations

import numpy as np
import pytest

from fib_assets.core.ml.domains import DOMAIN_A, DOMAIN_B, Domain, render_domain


def test_second_sample_type_differs_in_contrast_noise_and_geometry() -> None:
    a = render_domain(DOMAIN_A, (12, 40, 40), seed=1)
    b = render_domain(DOMAIN_B, (12, 40, 40), seed=1)
    for vol in (a, b):
        assert vol.raw.shape == vol.labels.shape == (12, 40, 40)
        assert vol.raw.dtype == np.uint8
    assert (a.voxel_size.z, b.voxel_size.z) == (8.0, 10.0)
    assert not np.array_equal(a.labels, b.labels)  # another cell, resampled from 6 nm

    def mito_minus_cyto(v):  # contrast of mitochondria against the cytosol
        return v.raw[np.isin(v.labels, (3, 4, 5))].mean() - v.raw[v.labels == 35].mean()

    # inverted contrast: dark mitochondria on light cytosol in A, the other way round in B, so
    # no per-volume stretch or z-score maps one onto the other
    assert mito_minus_cyto(a) < -20 and mito_minus_cyto(b) > 20
    again = render_domain(DOMAIN_B, (12, 40, 40), seed=1)
    np.testing.assert_array_equal(again.raw, b.raw)  # deterministic


def test_domain_validation() -> None:
    with pytest.raises(ValueError, match="gamma"):
        Domain("x", gamma=0)
    with pytest.raises(ValueError, match="channel"):
        Domain("x", channel=2)
