"""Project-wide resources: where data lives. Nothing here holds secrets."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from fib_assets.core.geometry import validate_region_key

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> str:
    """``$FIB_ASSETS_DATA`` or ``<repo>/data``: the embedded default keeps data in the repo."""
    return os.environ.get("FIB_ASSETS_DATA", str(REPO_ROOT / "data"))


class StorageResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where volumes are written and where new acquisitions land.

    Assets write their arrays here themselves (never through a pickling IO manager) and record
    the path in their metadata; one folder per asset and region.
    """

    root: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "storage"),
        description="Storage root for asset data (a local path on a laptop).",
    )
    landing_zone: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "landing"),
        description="Folder the microscope writes to: one sub-folder per sample region, "
        "complete once its region.yaml exists.",
    )

    def asset_dir(self, asset: str, region: str) -> Path:
        """``<root>/<asset>/<region>``; the region key is validated before it touches a path."""
        path = Path(self.root) / asset / validate_region_key(region)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def region_source(self, region: str) -> Path:
        return Path(self.landing_zone) / validate_region_key(region)


class QCThresholdsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Thresholds of the raw-data quality checks (change them in the Launchpad per run)."""

    max_saturation_fraction: float = Field(
        default=0.005,
        gt=0,
        description="Largest tolerated fraction of voxels at the detector's "
        "extreme values (clipped signal).",
    )
    max_brightness_drift: float = Field(
        default=0.10,
        gt=0,
        description="Largest tolerated relative change of mean slice "
        "brightness from the first to the last slice (0.10 = 10 %).",
    )
    max_curtaining_score: float | None = Field(
        default=None,
        description="Largest tolerated curtaining (vertical streak) score; empty "
        "uses the calibrated default of fib_assets.core.qc.QCThresholds.",
    )
    max_lateral_drift_px: float = Field(
        default=2.0,
        gt=0,
        description="Largest tolerated shift between consecutive slices, in "
        "pixels (phase correlation on a central crop).",
    )
