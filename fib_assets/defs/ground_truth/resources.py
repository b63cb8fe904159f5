"""Where curators deliver annotations, and the thresholds of the ground-truth checks."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from fib_assets.core import storage as object_storage
from fib_assets.core.geometry import validate_region_key
from fib_assets.core.labels import COSEM_CLASS_MAP, ClassMap
from fib_assets.defs.resources import default_data_dir


class AnnotationsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The annotations inbox (layout in :mod:`fib_assets.core.labels`): one folder per region,
    one Paintera (N5/Zarr), CellMap or TIFF submission per crop, each complete once its
    ``annotation.yaml`` is written."""

    inbox: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "annotations"),
        description="Annotations inbox (a filesystem path, on Kubernetes a shared "
        "ReadWriteMany volume): <inbox>/<region>/<container>.n5|.zarr with an "
        "annotation.yaml (annotator, minutes spent, crop, split) written last.",
    )
    min_annotated_fraction: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Smallest fraction of annotated (non-zero) voxels per crop before the "
        "annotated_fraction check warns (dense COSEM crops are fully annotated).",
    )
    class_map_file: str = Field(
        default="",
        description="YAML/JSON class map {classes: {id: name}, combined: {name: [ids]}}; "
        "empty = the COSEM/CellMap classes.",
    )

    def class_map(self) -> ClassMap:
        return ClassMap.from_file(self.class_map_file) if self.class_map_file else COSEM_CLASS_MAP

    def inbox_path(self) -> Path:
        """The inbox as a local directory. It must be a filesystem (on Kubernetes a shared
        ReadWriteMany volume, like the landing zone): curators' tools write containers there
        and submissions are scanned and hashed in place, so an ``s3://`` inbox is refused;
        the storage root (where revisions are published) may be ``s3://``."""
        if object_storage.is_remote(self.inbox):
            raise object_storage.StorageError(
                f"{self.inbox}: the annotations inbox must be a filesystem path (on Kubernetes "
                "a shared ReadWriteMany volume, see k8s/README.md), not an object store: "
                "submissions are scanned and hashed in place. Only the storage root may be s3://"
            )
        return Path(self.inbox)

    def region_inbox(self, region: str) -> Path:
        """``<inbox>/<region>``; the region key is validated before it touches a path."""
        return self.inbox_path() / validate_region_key(region)
