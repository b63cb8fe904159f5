"""A simulated curator for benchmarks: "corrects" proofreading tasks from held-out truth and
charges the effort a person would have spent, so correction rounds run without a person.

Correcting a task replaces the labels inside the task's ROI with the truth there. Effort, in
minutes, per task (:class:`EffortModel`)::

    minutes = per_task + per_object x objects + per_slice x slices + per_kvoxel x voxels / 1000

where *voxels* is the number of voxels whose label changed, *slices* the number of z slices
with a change (Paintera painting is done slice by slice), and *objects* the number of edited
objects: 26-connected components of the changed voxels, counted per new label id (one brush
stroke region per object and class).

The default rates are assumptions, not measurements; calibrate them against the
``minutes_spent`` that curators record in ``annotation.yaml`` (``fib_assets.core.labels``).
They are documented in ``effort_model.yaml`` beside this module with their reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core.curation.tasks import LABEL_GROUP, ProofreadingTask
from fib_assets.core.formats.paintera import write_paintera_labels
from fib_assets.core.geometry import Roi
from fib_assets.core.metrics.instance import label_instances

DEFAULT_EFFORT_FILE = Path(__file__).with_name("effort_model.yaml")


@dataclass(frozen=True)
class EffortModel:
    """Minutes a curator spends per task, per edited object, per edited z slice and per 1000
    changed voxels (all >= 0)."""

    per_task: float = 2.0
    per_object: float = 1.5
    per_slice: float = 0.25
    per_kvoxel: float = 0.05
    assumptions: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("per_task", "per_object", "per_slice", "per_kvoxel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ValueError(f"effort model: {name} must be a non-negative number, got {v!r}")

    def minutes(self, objects: int, slices: int, voxels: int) -> float:
        if objects == slices == voxels == 0:
            return self.per_task  # looked at it, nothing to fix
        return (
            self.per_task
            + self.per_object * objects
            + self.per_slice * slices
            + self.per_kvoxel * voxels / 1000.0
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EffortModel:
        known = {"per_task", "per_object", "per_slice", "per_kvoxel", "assumptions", "sources"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"effort model: unknown fields {unknown}; known: {sorted(known)}")
        kw: dict[str, Any] = {k: d[k] for k in known if k in d}
        if "sources" in kw:
            kw["sources"] = tuple(str(s) for s in kw["sources"])
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | Path = DEFAULT_EFFORT_FILE) -> EffortModel:
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: unreadable effort model: {err}") from err
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: the effort model must be a YAML mapping")
        try:
            return cls.from_dict(doc)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


@dataclass(frozen=True)
class TaskCorrection:
    """What the simulated curator changed in one task's ROI."""

    task_id: str
    roi: Roi
    voxels_changed: int
    objects_changed: int
    slices_changed: int
    minutes: float
    corrected: npt.NDArray[Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "roi": self.roi.to_dict(),
            "voxels_changed": self.voxels_changed,
            "objects_changed": self.objects_changed,
            "slices_changed": self.slices_changed,
            "minutes": self.minutes,
        }


@dataclass(frozen=True)
class SimulatedRound:
    """One correction round: per-task corrections and their totals."""

    corrections: tuple[TaskCorrection, ...]
    effort: EffortModel

    @property
    def voxels_changed(self) -> int:
        return sum(c.voxels_changed for c in self.corrections)

    @property
    def objects_changed(self) -> int:
        return sum(c.objects_changed for c in self.corrections)

    @property
    def minutes(self) -> float:
        return sum(c.minutes for c in self.corrections)

    def apply(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A copy of whole-volume ``labels`` with every task's ROI corrected."""
        out = np.array(labels, copy=True)
        for c in self.corrections:
            out[c.roi.to_slices()] = c.corrected
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": [c.to_dict() for c in self.corrections],
            "voxels_changed": self.voxels_changed,
            "objects_changed": self.objects_changed,
            "minutes": self.minutes,
            "effort_model": self.effort.to_dict(),
        }


def count_edits(before: npt.NDArray[Any], after: npt.NDArray[Any]) -> tuple[int, int, int]:
    """(voxels, objects, z slices) changed from ``before`` to ``after`` (module doc)."""
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} vs {after.shape}")
    changed = np.asarray(before != after)
    voxels = int(changed.sum())
    if voxels == 0:
        return 0, 0, 0
    objects = 0
    for new_id in np.unique(after[changed]).tolist():
        _, n = label_instances(changed & (after == new_id), connectivity=26)
        objects += n
    slices = int(changed.any(axis=(1, 2)).sum())
    return voxels, objects, slices


def simulate_corrections(
    labels: Any,
    truth: Any,
    tasks: Sequence[ProofreadingTask],
    effort: EffortModel | None = None,
) -> SimulatedRound:
    """Correct each task's ROI of ``labels`` from ``truth`` (arrays or anything with
    ``read(roi)``, class ids on the raw grid, z, y, x) and charge the effort. Memory: one task
    ROI at a time (plus the corrected ROIs kept for :meth:`SimulatedRound.apply` and export)."""
    model = effort or EffortModel()
    out = []
    for task in tasks:
        before = _read(labels, task.roi)
        after = _read(truth, task.roi)
        if before.shape != after.shape or before.shape != task.roi.shape:
            raise ValueError(
                f"task {task.task_id}: labels {before.shape} / truth {after.shape} do not cover "
                f"ROI {task.roi.to_dict()}"
            )
        voxels, objects, slices = count_edits(before, after)
        out.append(
            TaskCorrection(
                task.task_id,
                task.roi,
                voxels,
                objects,
                slices,
                model.minutes(objects, slices, voxels),
                np.asarray(after),
            )
        )
    return SimulatedRound(tuple(out), model)


def _read(source: Any, roi: Roi) -> npt.NDArray[Any]:
    if hasattr(source, "read"):
        return np.asarray(source.read(roi))
    return np.asarray(np.asarray(source)[roi.to_slices()])


def write_corrected_container(
    task: ProofreadingTask, correction: TaskCorrection, out: str | Path
) -> Path:
    """The simulated curator's "saved" Paintera container for a task: the corrected class ids
    as the task's label group, placed at the task's ROI (world nm), ready for
    :func:`fib_assets.core.curation.tasks.reimport_task`."""
    if correction.task_id != task.task_id:
        raise ValueError(f"correction {correction.task_id} is not for task {task.task_id}")
    vox = task.voxel_size
    return write_paintera_labels(
        out,
        np.asarray(correction.corrected).astype(np.uint64),
        voxel_size=vox,
        offset_nm=[o * v for o, v in zip(task.roi.offset, vox.as_tuple(), strict=True)],
        group=LABEL_GROUP,
    )
