"""Proofreading tasks: the top-K uncertain blocks exported as Paintera containers with a task list
(Markdown + JSON) a curator can follow, and the way back: a corrected container becomes the next
ground-truth revision through the annotations inbox (``fib_assets.core.labels``).

Layout written by :func:`export_tasks`::

    <out_dir>/
      <task_id>.n5/        volumes/raw (uint8 context) + volumes/labels/ground_truth (class ids,
                           the current labels or the prediction), written by
                           ``fib_assets.core.formats.paintera.export_paintera``
      tasks.json           the task list (machine readable)
      tasks.md             the same as a checklist for the curator
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core import storage
from fib_assets.core.blockwise import atomic_write_bytes, atomic_write_json
from fib_assets.core.curation.uncertainty import THRESHOLD_UINT8, BlockScore, PredictionMaps
from fib_assets.core.formats.base import VolumeInfo, VolumeSource
from fib_assets.core.formats.paintera import LABELS_GROUP, export_paintera
from fib_assets.core.geometry import Roi, VoxelSize, validate_region_key
from fib_assets.core.labels import (
    AnnotationSidecar,
    ClassMap,
    ImportResult,
    RawGrid,
    RevisionStore,
    import_revision,
    scan_inbox,
    write_sidecar,
)

LABEL_NAME = "ground_truth"
LABEL_GROUP = f"{LABELS_GROUP}/{LABEL_NAME}"

INSTRUCTIONS = """\
1. Open Paintera, then *File > Open* (or Ctrl+O) and choose `{container}`: add
   `volumes/raw` as the raw source and `{label_group}` as the label source.
2. The task covers the whole container: {shape_vox} voxels (z, y, x), {shape_nm} nm, at raw
   voxel offset {offset_vox} (z, y, x). Why it was chosen: {why}.
3. Labels are COSEM class ids (e.g. 35 cytosol, 3 mito membrane, 4 mito lumen): pick an id,
   then correct the labels with Paintera's paint brush and flood fill until every voxel holds
   the right class (do not leave voxels at 0, the "not annotated" id).
4. Commit the canvas and save the project, so Paintera writes the painted labels back into
   `{label_group}` of this container.
5. Hand back: `fib-assets` / the lead imports it with `reimport_task` (task `{task_id}`),
   which creates the next ground-truth revision; note the minutes you spent."""


@dataclass(frozen=True)
class ProofreadingTask:
    """One block to proofread: ROI in raw voxels (z, y, x), score, reason and its container."""

    task_id: str
    region: str
    roi: Roi
    voxel_size: VoxelSize
    score: float
    why: str
    container: str
    label_source: str
    rank: int

    @property
    def roi_nm(self) -> dict[str, list[float]]:
        v = self.voxel_size.as_tuple()
        return {
            "offset": [o * s for o, s in zip(self.roi.offset, v, strict=True)],
            "shape": [n * s for n, s in zip(self.roi.shape, v, strict=True)],
        }

    @property
    def instructions(self) -> str:
        nm = self.roi_nm
        return INSTRUCTIONS.format(
            container=self.container,
            label_group=LABEL_GROUP,
            shape_vox=list(self.roi.shape),
            shape_nm=[round(x, 3) for x in nm["shape"]],
            offset_vox=list(self.roi.offset),
            why=self.why,
            task_id=self.task_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "region": self.region,
            "rank": self.rank,
            "roi_voxels": self.roi.to_dict(),
            "roi_nm": self.roi_nm,
            "voxel_size_nm": self.voxel_size.to_dict(),
            "score": self.score,
            "why": self.why,
            "container": self.container,
            "label_group": LABEL_GROUP,
            "label_source": self.label_source,
            "instructions": self.instructions,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProofreadingTask:
        return cls(
            task_id=str(d["task_id"]),
            region=str(d["region"]),
            roi=Roi.from_dict(d["roi_voxels"]),
            voxel_size=VoxelSize.from_dict(d["voxel_size_nm"]),
            score=float(d["score"]),
            why=str(d["why"]),
            container=str(d["container"]),
            label_source=str(d["label_source"]),
            rank=int(d["rank"]),
        )


class PredictionLabelSource:
    """A prediction container as class-id labels (uint64) for export: each voxel gets the id of
    the class with the highest map value above the threshold (127), else ``background_id``."""

    def __init__(
        self,
        maps: PredictionMaps,
        class_ids: Mapping[str, int],
        voxel_size: VoxelSize,
        background_id: int = 0,
    ) -> None:
        unknown = [c for c in class_ids if c not in maps.classes]
        if unknown:
            raise ValueError(f"{maps.path}: classes {unknown} not predicted ({maps.classes})")
        self.maps = maps
        self.class_ids = dict(class_ids)
        self.background_id = int(background_id)
        self._info = VolumeInfo(maps.shape, "uint64", voxel_size)

    @property
    def info(self) -> VolumeInfo:
        return self._info

    def read(self, roi: Roi) -> npt.NDArray[np.uint64]:
        names = list(self.class_ids)
        stack = np.stack([self.maps.read(c, roi) for c in names])
        best = np.argmax(stack, axis=0)
        ids = np.asarray([self.class_ids[c] for c in names], dtype=np.uint64)
        out = ids[best]
        out[stack.max(axis=0) <= THRESHOLD_UINT8] = np.uint64(self.background_id)
        return np.asarray(out, dtype=np.uint64)


@dataclass(frozen=True)
class TaskList:
    region: str
    directory: str
    tasks: tuple[ProofreadingTask, ...]

    @property
    def json_path(self) -> Path:
        """``tasks.json`` on a local folder (see :attr:`json_location` for any location)."""
        return Path(self.directory) / "tasks.json"

    @property
    def json_location(self) -> str:
        """``tasks.json`` of a local folder or an ``s3://`` prefix."""
        return storage.join(self.directory, "tasks.json")

    @property
    def markdown_path(self) -> Path:
        return Path(self.directory) / "tasks.md"

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def load(cls, directory: str | Path) -> TaskList:
        d = storage.read_json(storage.join(directory, "tasks.json"))
        tasks = tuple(ProofreadingTask.from_dict(t) for t in d["tasks"])
        return cls(str(d["region"]), storage.normalize(directory), tasks)

    def markdown(self) -> str:
        lines = [
            f"# Proofreading tasks for region `{self.region}`",
            "",
            "| # | task | score | ROI (voxels, z y x) | ROI (nm) | why | container |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in self.tasks:
            nm = t.roi_nm
            lines.append(
                f"| {t.rank} | `{t.task_id}` | {t.score:.3f} | offset {list(t.roi.offset)}, "
                f"shape {list(t.roi.shape)} | offset {nm['offset']}, shape {nm['shape']} | "
                f"{t.why} | `{t.container}` |"
            )
        for t in self.tasks:
            lines += ["", f"## {t.rank}. `{t.task_id}`", "", t.instructions]
        return "\n".join(lines) + "\n"


def export_tasks(
    region: str,
    raw: str | Path | VolumeSource,
    labels: VolumeSource,
    ranked: Sequence[BlockScore],
    out_dir: str | Path,
    *,
    k: int = 5,
    label_source: str = "labels",
    chunks: Sequence[int] = (64, 64, 64),
    published_as: str | None = None,
) -> TaskList:
    """Export the ``k`` best blocks of ``ranked`` as Paintera containers (raw + ``labels``, the
    current ground-truth revision or a :class:`PredictionLabelSource`, class ids on the raw grid)
    with ``tasks.json`` and ``tasks.md`` (written last, atomically). ``label_source`` names
    where the labels came from (shown to the curator). ``published_as``: the location
    (e.g. an ``s3://`` URL) ``out_dir`` will be published at; the task list names the
    containers there instead of in ``out_dir``."""
    region = validate_region_key(region)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    where = storage.normalize(published_as) if published_as else str(out)
    vox = labels.info.voxel_size
    tasks = []
    for rank, block in enumerate(sorted(ranked, key=lambda s: -s.score)[:k], start=1):
        task_id = f"{region}-b{block.index[0]}-{block.index[1]}-{block.index[2]}"
        container = out / f"{task_id}.n5"
        export_paintera(
            raw, container, roi=block.roi, labels=labels, label_name=LABEL_NAME, chunks=chunks
        )
        tasks.append(
            ProofreadingTask(
                task_id=task_id,
                region=region,
                roi=block.roi,
                voxel_size=vox,
                score=block.score,
                why=block.why,
                container=storage.join(where, container.name),
                label_source=label_source,
                rank=rank,
            )
        )
    result = TaskList(region, where, tuple(tasks))
    atomic_write_json(out / "tasks.json", result.to_dict())
    atomic_write_bytes(out / "tasks.md", result.markdown().encode())
    return result


def submit_correction(
    task: ProofreadingTask,
    corrected: str | Path,
    inbox: str | Path,
    *,
    annotator: str,
    minutes_spent: float | None = None,
    split: str = "train",
) -> Path:
    """Put a corrected container into ``<inbox>/<region>/<task_id>.n5`` (copied beside, renamed
    into place) and write its ``annotation.yaml`` last (crop = task id, ROI = the task's), as
    ``fib_assets.core.labels`` expects a curator's submission."""
    src = Path(corrected)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: corrected container not found")
    dest_dir = Path(inbox) / validate_region_key(task.region)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{task.task_id}{src.suffix or '.n5'}"
    staging = dest_dir / f".{dest.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns("annotation.yaml"))
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    write_sidecar(
        dest,
        AnnotationSidecar(
            crop=task.task_id,
            split=split,
            annotator=annotator,
            minutes_spent=minutes_spent,
            format="paintera",
            label_group=LABEL_GROUP,
            roi=task.roi,
            notes=f"proofreading task {task.task_id} (rank {task.rank}, score {task.score:.3f})",
        ),
    )
    return dest


def reimport_task(
    task: ProofreadingTask,
    corrected: str | Path,
    inbox: str | Path,
    store: RevisionStore,
    grid: RawGrid,
    class_map: ClassMap,
    *,
    annotator: str,
    minutes_spent: float | None = None,
    split: str = "train",
    min_annotated_fraction: float = 0.9,
) -> ImportResult:
    """Task -> corrected container -> next ground-truth revision: submit it to the inbox and run
    :func:`fib_assets.core.labels.import_revision` for the task's region (the revision becomes
    current only if every blocking label check passes)."""
    submit_correction(
        task, corrected, inbox, annotator=annotator, minutes_spent=minutes_spent, split=split
    )
    return import_revision(
        store,
        scan_inbox(inbox, task.region),
        grid,
        class_map,
        min_annotated_fraction=min_annotated_fraction,
    )
