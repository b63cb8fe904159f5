"""Project-wide resources: where data lives. Nothing here holds secrets: S3 endpoint, region
and credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``, the pod's
service account), see :mod:`fib_assets.core.storage`."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from fib_assets.core import storage as object_storage
from fib_assets.core.geometry import validate_region_key

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> str:
    """``$FIB_ASSETS_DATA`` or ``<repo>/data``: the embedded default keeps data in the repo."""
    return os.environ.get("FIB_ASSETS_DATA", str(REPO_ROOT / "data"))


class StorageResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where volumes are written and where new acquisitions land.

    Assets write their arrays here themselves (never through a pickling IO manager) and record
    the path in their metadata; one folder per asset and region. ``root`` is a local path (the
    embedded default) or ``s3://bucket/prefix`` (Kubernetes): :meth:`asset_url` works for both.
    """

    root: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "storage"),
        description="Storage root for asset data: a local path on a laptop, or "
        "s3://bucket/prefix in the cloud (endpoint/region/credentials from the environment).",
    )
    landing_zone: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "landing"),
        description="Folder the microscope writes to: one sub-folder per sample region, "
        "complete once its region.yaml exists.",
    )

    @property
    def is_remote(self) -> bool:
        """Whether the root is an object store (no rename: see fib_assets.core.storage)."""
        return object_storage.is_remote(self.root)

    def asset_url(self, asset: str, region: str) -> str:
        """``<root>/<asset>/<region>`` as a location string for local and ``s3://`` roots alike
        (created locally); the region key is validated before it touches a path or a key."""
        location = object_storage.join(self.root, asset, validate_region_key(region))
        if not object_storage.is_remote(location):
            Path(location).mkdir(parents=True, exist_ok=True)
        return location

    def asset_dir(self, asset: str, region: str) -> Path:
        """``<root>/<asset>/<region>`` as a local directory (created); the region key is
        validated before it touches a path. Local roots only: use :meth:`asset_url` for code
        that must also run against an ``s3://`` root."""
        if self.is_remote:
            raise object_storage.StorageError(
                f"{self.root}: asset_dir() is for local roots; use asset_url() with "
                "fib_assets.core.storage for an object-store root"
            )
        return Path(self.asset_url(asset, region))

    def landing_path(self) -> Path:
        """The landing zone as a local directory. It must be a filesystem (on Kubernetes a
        shared ReadWriteMany volume): .dat slices are memory-mapped and region folders are
        scanned and hashed in place, so an ``s3://`` landing zone is refused, clearly."""
        if object_storage.is_remote(self.landing_zone):
            raise object_storage.StorageError(
                f"{self.landing_zone}: the landing zone must be a filesystem path (on "
                "Kubernetes a shared ReadWriteMany volume, see k8s/README.md), not an object "
                "store: source slices are memory-mapped and scanned in place. Only the storage "
                "root may be s3://"
            )
        return Path(self.landing_zone)

    def region_source(self, region: str) -> Path:
        return self.landing_path() / validate_region_key(region)


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
