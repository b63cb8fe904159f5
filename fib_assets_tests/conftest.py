"""Shared fixtures: the real instrument fixtures and tiny synthetic landing zones."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"

TINY_SHAPE = (16, 64, 64)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"{FIXTURES} is missing: the repo must be cloned with shared/ beside it")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    """A landing zone with a clean region r001 and a region r002 with acquisition faults
    (dropped slices and a truncated file); written once per session, never modified."""
    from fib_assets.core.acquisition.synthetic import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(out, n_regions=1, shape_zyx=TINY_SHAPE, seed=3)
    write_sample(
        out,
        n_regions=2,
        shape_zyx=TINY_SHAPE,
        seed=3,
        artefacts=["dropped_slices", "truncated_file"],
        artefact_regions=["r002"],
    )
    return out


def code_location_resources(tmp_path: Path, landing: Path) -> dict:
    """Every resource the code location needs, pointed at temporary folders (no real token)."""
    from fib_assets.defs.ground_truth.resources import AnnotationsResource
    from fib_assets.defs.provenance.resources import FigshareResource
    from fib_assets.defs.resources import QCThresholdsResource, StorageResource

    return {
        "storage": StorageResource(root=str(tmp_path / "storage"), landing_zone=str(landing)),
        "qc_thresholds": QCThresholdsResource(),
        "annotations": AnnotationsResource(inbox=str(tmp_path / "annotations")),
        # loopback port 9 (discard): nothing in these tests uploads
        "figshare": FigshareResource(token="test-token-unused", api_url="http://127.0.0.1:9/v2"),
    }
