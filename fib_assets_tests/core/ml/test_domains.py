from __future__ import annotations

import numpy as np
import pytest

from fib_assets.core.ml.domains import DOMAIN_A, DOMAIN_B, Domain, render_domain


def test_second_sample_type_differs_in_contrast_noise_and_geometry() -> None:
    a = render_domain(DOMAIN_A, (12, 40, 40), seed=1)
    b = render_domain(DOMAIN_B, (12, 40, 40), seed=1)
    for vol in (a, b):
        assert vol.raw.shape == vol.labels.shape == (12, 40, 40)
        assert vol.raw.dtype == np.uint8 and vol.voxel_size.z == 8.0
    assert not np.array_equal(a.labels, b.labels)  # another cell, resampled from 6 nm
    cyto_a = a.raw[a.labels == 35].astype(float)
    cyto_b = b.raw[b.labels == 35].astype(float)
    assert abs(cyto_a.mean() - cyto_b.mean()) > 10 or abs(cyto_a.std() - cyto_b.std()) > 5
    again = render_domain(DOMAIN_B, (12, 40, 40), seed=1)
    np.testing.assert_array_equal(again.raw, b.raw)  # deterministic


def test_domain_validation() -> None:
    with pytest.raises(ValueError, match="gamma"):
        Domain("x", gamma=0)
    with pytest.raises(ValueError, match="channel"):
        Domain("x", channel=2)
