"""Training family: which regions train, validate and test; one model per declared experiment;
blockwise predictions and segmentations of regions with a chosen model.

Lineage::

    ground_truth_crops[all regions] ──────────────────> training_split
    training_split, ground_truth_crops + volume_zarr[all regions] ─> organelle_model[experiment]
    organelle_model[all experiments], volume_zarr[region] ──> predictions[region]
    predictions[region], ground_truth_crops[region], training_split ─> segmentation[region]

``organelle_model`` is partitioned by experiment (static partitions from ``experiments/``) and
reads every region it trains on, so its dependencies on region-partitioned assets use
``AllPartitionMapping``. ``predictions``/``segmentation`` are per region and use the model of
the experiment named in their config (default :data:`DEFAULT_EXPERIMENT`): they depend on all
``organelle_model`` partitions for the same reason, and read the chosen one's checkpoint from
its latest materialization.

**GPU placement.** ``op_tags`` and pools belong to an asset definition, not to a partition, so
``organelle_model`` as a whole carries the GPU tags (``nvidia.com/gpu`` limit, GPU node
selector and toleration, see :mod:`fib_assets.defs.deployment`) and ``pool="gpu"``. Every
experiment trains in that step: a ``compute: cpu`` experiment on Kubernetes also lands on a
GPU node (the tiny demo models do not mind), and locally the ``gpu`` pool lets one training
run at a time once its limit is set (``dagster instance concurrency set gpu 1``, or
``concurrency.pools`` in dagster.yaml). Two assets (a CPU and a GPU model asset) would put
each experiment on the right hardware but split one kind of data across two keys and make
every consumer look in both; one asset keeps one lineage per model, which is what curators
audit. A ``compute: gpu`` experiment on a machine without CUDA fails at once with a clear
error.

The pure helpers of this module (crop sampling, evaluation on crops, the training loop with
model selection, model cards, segmentation and scoring, previews) never touch Dagster and are
candidates for ``fib_assets/core/ml``; the asset bodies look up inputs in the event log, call
them and describe the result.
"""

import io
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import dagster as dg
import numpy as np
import numpy.typing as npt
import torch
import zarr
from pydantic import Field

import fib_assets.core.ml.predict as predict_module
import fib_assets.core.ml.sampler as sampler_module
import fib_assets.core.ml.train as train_module
from fib_assets.core import labels
from fib_assets.core.blockwise import atomic_write_json, fingerprint
from fib_assets.core.formats import open_volume
from fib_assets.core.formats.base import ArraySource, VolumeSource
from fib_assets.core.geometry import Roi, validate_region_key
from fib_assets.core.ml.classes import ClassSpec
from fib_assets.core.ml.experiments import Experiment
from fib_assets.core.ml.predict import (
    ArrayStore,
    BlockPredictor,
    connected_components_blockwise,
    default_ledger_dir,
    network_geometry,
    plan_prediction,
    predict_volume,
    read_prediction_attrs,
)
from fib_assets.core.ml.preprocess import Pipeline, PreprocessedVolume
from fib_assets.core.ml.sampler import Batch, PatchSampler
from fib_assets.core.ml.targets import UINT8_THRESHOLD
from fib_assets.core.ml.train import TrainConfig, Trainer, build_sampler, read_checkpoint
from fib_assets.core.ml.unet import UNet, count_parameters
from fib_assets.core.preview import markdown_image
from fib_assets.core.provenance.code_version import code_version_of
from fib_assets.defs.deployment import GPU_OP_TAGS, GPU_POOL
from fib_assets.defs.metadata import latest_materialization
from fib_assets.defs.partitions import regions
from fib_assets.defs.resources import StorageResource
from fib_assets.defs.training.partitions import ROLES, plan_split, regions_with_role

GROUP = "training"
OWNERS = ["team:ml"]
DEFAULT_EXPERIMENT = "demo_mito_scratch"
GROUND_TRUTH = dg.AssetKey("ground_truth_crops")
VOLUME_ZARR = dg.AssetKey("volume_zarr")
TRAINING_SPLIT = dg.AssetKey("training_split")
ORGANELLE_MODEL = dg.AssetKey("organelle_model")
PREDICTIONS = dg.AssetKey("predictions")
SEGMENTATION = dg.AssetKey("segmentation")
PREDICTION_COMPLETE = "prediction_complete"

Variant = Literal["zarr", "hdf5", "n5", "tiff", "parquet"]
Array = npt.NDArray[Any]


# =============================================================================================
# Pure helpers (no Dagster): crop data, sampling, evaluation, training with model selection
# =============================================================================================


def crop_labels(revision: labels.Revision, crop: labels.CropRecord, source: VolumeSource) -> Array:
    """A crop's class ids on the raw grid (z, y, x), uint8; crops finer than the raw are
    mode-downsampled (:class:`~fib_assets.core.labels.RevisionLabelSource`)."""
    grid = labels.RawGrid(source.info.shape, source.info.voxel_size)
    if not grid.roi.contains(crop.roi):
        raise ValueError(
            f"crop {crop.name} of revision {revision.number} ({revision.region}) has ROI "
            f"{crop.roi.to_dict()} outside the volume {list(source.info.shape)}"
        )
    return labels.RevisionLabelSource(revision, grid).read(crop.roi).astype(np.uint8)


class CropSetSampler:
    """Training patches from many ground-truth crops (of one or more regions) for
    :class:`~fib_assets.core.ml.train.Trainer`: patch ``i`` comes from a crop drawn with
    probability proportional to its voxels (seeded by ``(seed, i)``), then from that crop's
    class-balanced :class:`~fib_assets.core.ml.sampler.PatchSampler`. Deterministic, so a
    resumed training draws the same batches."""

    def __init__(self, crops: Sequence[tuple[str, PatchSampler]], seed: int = 0) -> None:
        if not crops:
            raise ValueError("no training crops: the training regions have no 'train' crops")
        self.names = [n for n, _ in crops]
        self.samplers = [s for _, s in crops]
        first = self.samplers[0]
        for name, s in crops:
            same = (s.input_shape, s.output_shape, s.target, s.classes) == (
                first.input_shape,
                first.output_shape,
                first.target,
                first.classes,
            )
            if not same:
                raise ValueError(f"crop {name}: sampler shapes/classes differ from {crops[0][0]}")
        self.input_shape = first.input_shape
        self.output_shape = first.output_shape
        self.target = first.target
        self.classes = first.classes
        self.seed = int(seed)
        sizes = np.array([math.prod(s.labels.info.shape) for s in self.samplers], dtype=float)
        self.weights = sizes / sizes.sum()

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.samplers)

    def sample(self, index: int) -> tuple[Array, Array, Array]:
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.choice(len(self.samplers), p=self.weights))
        return self.samplers[k].sample(index)

    def batch(self, step: int, batch_size: int) -> Batch:
        items = [self.sample(step * batch_size + j) for j in range(batch_size)]
        return Batch(
            np.stack([r[None] for r, _, _ in items]),
            np.stack([t for _, t, _ in items]),
            np.stack([m[None] for _, _, m in items]),
        )

    def data_versions(self) -> dict[str, str]:
        out = {}
        for name, s in zip(self.names, self.samplers, strict=True):
            for key, value in s.data_versions().items():
                out[f"{name}:{key}"] = value
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "crop_set",
            "seed": self.seed,
            "crops": [
                {"name": n, "weight": float(w), **s.describe()}
                for n, s, w in zip(self.names, self.samplers, self.weights, strict=True)
            ],
        }


@dataclass
class EvalCrop:
    """A ground-truth crop to score a model on: the pre-processed region, the crop's ROI (raw
    voxels) and its class ids (0 = unannotated, not scored)."""

    name: str
    volume: PreprocessedVolume
    roi: Roi
    labels: Array


def predict_roi(model: UNet, config: TrainConfig, volume: PreprocessedVolume, roi: Roi) -> Array:
    """uint8 class maps (C, z, y, x) of ``roi``, exactly as blockwise inference computes them
    (valid padding: the ROI is grown to a multiple of the network's total downsampling factor,
    then cropped back)."""
    f = config.unet.total_factor
    if config.unet.padding == "valid":
        block = tuple(math.ceil(s / ff) * ff for s, ff in zip(roi.shape, f, strict=True))
    else:
        block = roi.shape
    ctx, net_in, _ = network_geometry(config, block)
    kind = "tanh" if config.loss == "balanced_mse" else "softmax"
    predictor = BlockPredictor(model, volume, ctx, net_in, kind)
    maps = predictor.to_uint8(predictor.predict(Roi(roi.offset, block)))  # type: ignore[arg-type]
    return maps[:, : roi.shape[0], : roi.shape[1], : roi.shape[2]]


@dataclass
class Overlap:
    """Voxel counts for Dice/IoU of one class: |pred ∩ truth|, |pred|, |truth| (annotated
    voxels only)."""

    intersection: int = 0
    predicted: int = 0
    truth: int = 0

    def add(self, pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> None:
        self.intersection += int(np.count_nonzero(pred & truth))
        self.predicted += int(np.count_nonzero(pred))
        self.truth += int(np.count_nonzero(truth))

    @property
    def dice(self) -> float:
        total = self.predicted + self.truth
        return 2.0 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        union = self.predicted + self.truth - self.intersection
        return self.intersection / union if union else 1.0


def crop_overlaps(
    predicted: Callable[[ClassSpec], npt.NDArray[np.bool_]],
    truth_labels: Array,
    classes: Sequence[ClassSpec],
) -> dict[str, Overlap]:
    """One crop's overlaps per class; voxels with label 0 (unannotated) are not scored.
    ``predicted(class)`` is the predicted mask of the crop's ROI."""
    annotated = truth_labels != labels.UNANNOTATED
    out = {}
    for c in classes:
        o = Overlap()
        o.add(predicted(c) & annotated, c.mask(truth_labels))
        out[c.name] = o
    return out


def pool_overlaps(into: dict[str, Overlap], part: Mapping[str, Overlap]) -> None:
    """Add a crop's counts to the totals (Dice over all crops pools voxels, not crop scores)."""
    for name, o in part.items():
        t = into.setdefault(name, Overlap())
        t.intersection += o.intersection
        t.predicted += o.predicted
        t.truth += o.truth


def evaluate_crops(model: UNet, config: TrainConfig, crops: Sequence[EvalCrop]) -> dict[str, float]:
    """Dice per class over all ``crops`` (voxel counts pooled), threshold 127 on uint8."""
    totals: dict[str, Overlap] = {}
    names = [c.name for c in config.classes]
    for crop in crops:
        maps = predict_roi(model, config, crop.volume, crop.roi)

        def predicted(c: ClassSpec, maps: Array = maps) -> npt.NDArray[np.bool_]:
            return np.asarray(maps[names.index(c.name)] > UINT8_THRESHOLD)

        pool_overlaps(totals, crop_overlaps(predicted, crop.labels, config.classes))
    return {name: totals[name].dice for name in names}


@dataclass
class TrainingOutcome:
    checkpoint: Path  # the selected checkpoint (in the staging folder)
    iterations: int
    selected_step: int
    train_seconds: float
    wall_seconds: float
    steps_this_run: int
    selection: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    resumed_from_step: int = 0


def selection_points(iterations: int, n: int) -> list[int]:
    """Steps at which the model is scored on the validation crops (the last is the budget)."""
    n = max(1, min(int(n), iterations))
    return sorted({max(1, round(iterations * (i + 1) / n)) for i in range(n)})


def train_with_selection(
    config: TrainConfig,
    sampler: CropSetSampler,
    validation: Sequence[EvalCrop],
    staging: Path,
    *,
    n_points: int = 5,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainingOutcome:
    """Train ``config`` on ``sampler`` in ``staging``; at :func:`selection_points` save
    ``latest.pt`` (a killed run resumes from it) and, when there are validation crops, score
    the model on them and keep the best mean Dice as ``best-<step>.pt`` (model selection;
    ``selection.json`` names it and is written after it). Returns the selected checkpoint:
    the best one, or ``latest.pt`` without validation crops."""
    staging.mkdir(parents=True, exist_ok=True)
    latest = staging / "latest.pt"
    state_file = staging / "selection.json"
    t_wall = time.perf_counter()
    # the trainer uses only the sampler's protocol (shapes, classes, target, batch, describe,
    # data_versions, rejected), which CropSetSampler provides for many crops
    patches = cast(PatchSampler, sampler)
    if latest.exists():
        trainer = Trainer.resume(latest, patches, staging, config=config, threads=threads)
        log(f"resuming from step {trainer.step} ({latest})")
    else:
        trainer = Trainer(config, patches, staging, threads=threads)
    resumed = trainer.step
    state: dict[str, Any] = {"best_step": None, "best_score": None, "best_file": None, "points": []}
    if resumed and state_file.exists():
        state = json.loads(state_file.read_text())
        if state["best_file"] and not (staging / state["best_file"]).exists():
            log(f"{state['best_file']} is missing: model selection restarts")
            state.update(best_step=None, best_score=None, best_file=None)
    train_s = 0.0

    def show(rec: dict[str, Any]) -> None:
        log(
            f"step {rec['step']}/{config.iterations}  loss {rec['loss']:.4f}  "
            f"{rec['steps'] / max(rec['seconds'], 1e-9):.2f} it/s"
        )

    def select() -> None:
        scores = evaluate_crops(trainer.model, config, validation)
        score = float(np.mean(list(scores.values())))
        state["points"].append({"step": trainer.step, "dice": scores, "mean_dice": score})
        if state["best_score"] is None or score > state["best_score"]:
            name = f"best-{trainer.step:07d}.pt"
            tmp = staging / f".{name}.tmp"
            shutil.copyfile(latest, tmp)
            tmp.replace(staging / name)
            old = state["best_file"]
            state.update(best_step=trainer.step, best_score=score, best_file=name)
            atomic_write_json(state_file, state)
            if old and old != name:
                (staging / old).unlink(missing_ok=True)
        atomic_write_json(state_file, state)
        log(f"validation at step {trainer.step}: Dice {scores} (best {state['best_score']:.3f})")

    done = {p["step"] for p in state["points"]}
    if validation and resumed and resumed not in done:
        select()  # killed between saving latest.pt and scoring it
    for until in selection_points(config.iterations, n_points):
        if until <= trainer.step:
            continue
        t0 = time.perf_counter()
        trainer.fit(until, callback=show)
        train_s += time.perf_counter() - t0
        trainer.save(latest)
        if validation:
            select()
    best = staging / state["best_file"] if state["best_file"] else None
    chosen = best if validation and best is not None else latest
    return TrainingOutcome(
        checkpoint=chosen,
        iterations=trainer.step,
        selected_step=int(state["best_step"]) if chosen != latest else trainer.step,
        train_seconds=train_s,
        wall_seconds=time.perf_counter() - t_wall,
        steps_this_run=trainer.step - resumed,
        selection=list(state["points"]),
        history=list(trainer.history),
        device=str(trainer.device),
        threads=torch.get_num_threads(),
        resumed_from_step=resumed,
    )


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- one experiment's training, end to end (no Dagster) ----------------------------------------


@dataclass
class RegionData:
    """One region's inputs to training or evaluation: the accepted ground-truth revision and
    the raw voxels (a format variant) with their data versions."""

    region: str
    role: str
    revision: labels.Revision
    raw_path: Path
    raw_data_version: str | None
    variant: str

    def provenance(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ground_truth_revision": self.revision.number,
            "ground_truth_data_version": self.revision.data_version,
            "ground_truth_path": str(self.revision.path),
            "variant": f"volume_{self.variant}",
            "variant_path": str(self.raw_path),
            "variant_data_version": self.raw_data_version,
        }


@dataclass
class TrainingData:
    """Everything a training run reads: the crop sampler, the validation crops, which crops of
    which region were used (with the regions' data versions) and the open volumes."""

    sampler: CropSetSampler
    validation: list[EvalCrop]
    used: dict[str, dict[str, Any]]
    readers: list[Any]

    def close(self) -> None:
        for r in self.readers:
            r.close()


def assemble_training_data(config: TrainConfig, data: Sequence[RegionData]) -> TrainingData:
    """Training crops: the ``train`` crops of training regions. Validation crops: every crop of
    validation regions and the curators' held-out crops of training regions. Test regions are
    never passed in. Pre-processing is fitted once per region (as prediction refits it)."""
    crops: list[tuple[str, PatchSampler]] = []
    validation: list[EvalCrop] = []
    used: dict[str, dict[str, Any]] = {}
    readers: list[Any] = []
    try:
        for d in data:
            if d.role not in ("train", "validation"):
                raise ValueError(f"{d.region} has role {d.role!r}: only train/validation regions")
            raw = open_volume(d.raw_path)
            readers.append(raw)
            pipeline = Pipeline.from_dict(config.preprocessing).fit(raw, seed=config.seed)
            used[d.region] = {**d.provenance(), "train_crops": [], "validation_crops": []}
            for crop in d.revision.crops:
                lab = crop_labels(d.revision, crop, raw)
                name = f"{d.region}/{crop.name}"
                if d.role == "train" and crop.split == "train":
                    labels_source = ArraySource(lab, raw.info.voxel_size)
                    sampler = build_sampler(
                        config, raw, labels_source, label_offset=crop.roi.offset, pipeline=pipeline
                    )
                    crops.append((name, sampler))
                    used[d.region]["train_crops"].append(crop.name)
                else:
                    volume = PreprocessedVolume(raw, pipeline)
                    validation.append(EvalCrop(name, volume, crop.roi, lab))
                    used[d.region]["validation_crops"].append(crop.name)
        return TrainingData(CropSetSampler(crops, seed=config.seed), validation, used, readers)
    except BaseException:
        for r in readers:
            r.close()
        raise


@dataclass
class TrainedModel:
    checkpoint: Path
    sha256: str
    card: dict[str, Any]
    markdown: str


def publish_checkpoint(selected: Path, staging: Path, exp_dir: Path) -> tuple[Path, str]:
    """Copy the selected checkpoint to ``<exp_dir>/<sha256[:16]>/model.pt`` (content-addressed,
    so predictions made with an older model keep pointing at its unchanged file)."""
    sha = sha256_file(selected)
    final_dir = exp_dir / sha[:16]
    final_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = final_dir / "model.pt"
    if not checkpoint.exists() or sha256_file(checkpoint) != sha:
        tmp = final_dir / ".model.pt.tmp"
        shutil.copyfile(selected, tmp)
        tmp.replace(checkpoint)
    for extra in ("metrics.jsonl", "selection.json"):
        if (staging / extra).exists():
            shutil.copyfile(staging / extra, final_dir / extra)
    return checkpoint, sha


def build_model_card(
    exp: Experiment,
    config: TrainConfig,
    outcome: TrainingOutcome,
    data: TrainingData,
    *,
    init: Mapping[str, Any] | None,
    split_info: Mapping[str, Any],
    checkpoint: Path,
    sha: str,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The model card (JSON-able): what was trained, on which data versions, how well, how
    fast and where."""
    final_loss = outcome.history[-1]["loss"] if outcome.history else float("nan")
    selected = next((p for p in outcome.selection if p["step"] == outcome.selected_step), None)
    metrics: dict[str, Any] = {
        "final_loss": float(final_loss),
        "selected_step": outcome.selected_step,
        "validation_dice": selected["dice"] if selected else None,
        "selection": outcome.selection,
        "history": outcome.history,
    }
    if selected:
        metrics["validation_dice_text"] = ", ".join(
            f"{k} {v:.3f}" for k, v in selected["dice"].items()
        )
    u = config.unet
    return {
        "experiment": exp.name,
        "description": exp.description,
        "experiment_file": exp.source,
        "experiment_spec": exp.to_dict(),
        "classes": [c.to_dict() for c in config.classes],
        "loss": config.loss,
        "architecture": u.to_dict(),
        "architecture_summary": f"{u.levels}-level U-Net, widths {list(u.widths)}, "
        f"downsampling {[list(f) for f in u.downsample]}, {u.padding} padding",
        "parameters": count_parameters(UNet(u)),
        "input_shape": list(config.input_shape),
        "output_shape": list(config.output_shape),
        "preprocessing": [dict(s) for s in config.preprocessing],
        "optimizer": {"lr": config.lr, "betas": list(config.betas)},
        "batch_size": config.batch_size,
        "iterations": outcome.iterations,
        "iterations_declared": exp.budget.iterations,
        "selected_step": outcome.selected_step,
        "initialization": {
            **(init or {}),
            "freeze_encoder": exp.initialization.freeze_encoder,
            "summary": (
                f"from {init['experiment']} (sha256 {str(init['checkpoint_sha256'])[:12]}…)"
                if init
                else "scratch"
            ),
        },
        "curator_intervention": exp.curator_intervention,
        "compute": exp.compute,
        "device": outcome.device,
        "threads": outcome.threads,
        "wall_time_s": outcome.wall_seconds,
        "train_time_s": outcome.train_seconds,
        "iterations_per_s": outcome.steps_this_run / max(outcome.train_seconds, 1e-9),
        "resumed_from_step": outcome.resumed_from_step,
        "regions_by_role": dict(split_info["regions_by_role"]),
        "training_data": {
            "split_data_version": split_info["data_version"],
            "split_storage_id": split_info["storage_id"],
            "regions": data.used,
            "sampler_data_versions": data.sampler.data_versions(),
        },
        "metrics": metrics,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha,
        "library_versions": train_module.library_versions(),
        "created_at": datetime.now(UTC).isoformat(),
        "dagster_run_id": run_id,
    }


def train_experiment(
    exp: Experiment,
    config: TrainConfig,
    regions_data: Sequence[RegionData],
    exp_dir: Path,
    *,
    init: Mapping[str, Any] | None,
    split_info: Mapping[str, Any],
    n_points: int = 5,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    run_id: str | None = None,
) -> TrainedModel:
    """Train ``exp`` (as ``config``) on ``regions_data`` and publish the checkpoint and its
    model card under ``exp_dir``. The staging folder is named by everything that determines
    the result, so a rerun after a crash resumes it, and it is removed once published."""
    data = assemble_training_data(config, regions_data)
    try:
        provenance = {r: {k: v for k, v in u.items() if k != "role"} for r, u in data.used.items()}
        key = fingerprint(
            {"config": config.to_dict(), "data": provenance, "init": init, "points": n_points}
        )[:16]
        staging = exp_dir / f".train-{key}"
        log(
            f"{exp.name}: {len(data.sampler.names)} training crops, {len(data.validation)} "
            f"validation crops, input patch {list(config.input_shape)}"
        )
        outcome = train_with_selection(
            config,
            data.sampler,
            data.validation,
            staging,
            n_points=n_points,
            threads=threads,
            log=log,
        )
    finally:
        data.close()
    checkpoint, sha = publish_checkpoint(outcome.checkpoint, staging, exp_dir)
    card = build_model_card(
        exp,
        config,
        outcome,
        data,
        init=init,
        split_info=split_info,
        checkpoint=checkpoint,
        sha=sha,
        run_id=run_id,
    )
    md = model_card_markdown(card)
    atomic_write_json(checkpoint.parent / "model_card.json", card)
    (checkpoint.parent / "model_card.md").write_text(md + "\n")
    atomic_write_json(exp_dir / "current.json", {"checkpoint": str(checkpoint), "sha256": sha})
    shutil.rmtree(staging, ignore_errors=True)
    return TrainedModel(checkpoint, sha, card, md)


def model_card_markdown(card: Mapping[str, Any]) -> str:
    """The model card as markdown for the UI and the folder (the JSON is the record)."""
    m = card["metrics"]
    lines = [
        f"### {card['experiment']} — {card['description'] or 'organelle model'}",
        "",
        "| | |",
        "|---|---|",
        f"| classes | {', '.join(c['name'] for c in card['classes'])} |",
        f"| architecture | {card['architecture_summary']} |",
        f"| parameters | {card['parameters']:,} |",
        f"| patch (target / input, voxels) | {card['output_shape']} / {card['input_shape']} |",
        f"| pre-processing | {', '.join(s['name'] for s in card['preprocessing']) or 'none'} |",
        f"| initialization | {card['initialization']['summary']} |",
        f"| curator intervention | {card['curator_intervention']} |",
        f"| iterations (selected step) | {card['iterations']} ({card['selected_step']}) |",
        f"| validation Dice (selected) | {m.get('validation_dice_text', 'no validation crops')} |",
        f"| final training loss | {m['final_loss']:.4f} |",
        f"| wall time / training time | {card['wall_time_s']:.0f} s / "
        f"{card['train_time_s']:.0f} s |",
        f"| iterations/s | {card['iterations_per_s']:.2f} on {card['device']} "
        f"({card['threads']} threads) |",
        f"| trained on | {', '.join(card['regions_by_role']['train'])} |",
        f"| validated on | {', '.join(card['regions_by_role']['validation']) or '-'} "
        f"(+ held-out crops of training regions) |",
        f"| never seen (test) | {', '.join(card['regions_by_role']['test']) or '-'} |",
        f"| checkpoint sha256 | `{card['checkpoint_sha256'][:16]}…` |",
    ]
    rows = ["", "| region | role | ground truth rev | crops used | variant data version |"]
    rows.append("|---|---|---|---|---|")
    for region, d in card["training_data"]["regions"].items():
        rows.append(
            f"| {region} | {d['role']} | {d['ground_truth_revision']} | "
            f"{', '.join(d['train_crops'] + d['validation_crops'])} | "
            f"{str(d['variant_data_version'])[:16]} |"
        )
    return "\n".join(lines + rows)


def _rgb_overlay(
    raw: Array, masks: Sequence[tuple[npt.NDArray[np.bool_], tuple[int, int, int]]]
) -> Array:
    gray = np.repeat(raw.astype(np.float32)[..., None], 3, axis=-1)
    out = gray.copy()
    for mask, color in masks:
        out[mask] = 0.5 * gray[mask] + 0.5 * np.asarray(color, dtype=np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def preview_png(raw: Array, overlay: Array, max_side: int = 512) -> bytes:
    """PNG of a uint8 raw plane beside its RGB overlay (voxels kept crisp)."""
    from PIL import Image

    gap = 4
    h, w = raw.shape
    canvas = np.full((h, 2 * w + gap, 3), 255, dtype=np.uint8)
    canvas[:, :w] = np.repeat(raw[..., None], 3, axis=-1)
    canvas[:, w + gap :] = overlay
    img = Image.fromarray(canvas, mode="RGB")
    up = max(1, int(max_side // max(img.size)))
    if up > 1:
        img = img.resize((img.size[0] * up, img.size[1] * up), Image.Resampling.NEAREST)
    elif max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def preview_roi(shape: Sequence[int], side: int = 256) -> Roi:
    """The middle z plane, centre crop of at most ``side`` x ``side`` voxels."""
    z, y, x = (int(s) for s in shape)
    h, w = min(y, side), min(x, side)
    return Roi((z // 2, (y - h) // 2, (x - w) // 2), (1, h, w))


def class_color(c: ClassSpec) -> tuple[int, int, int]:
    """The ground-truth overlay colour of the class's first label id (same palette)."""
    return labels.COSEM_CLASS_MAP.color(c.ids[0])


def instance_colors(ids: Array) -> Array:
    """(..., 3) uint8 colours per instance id (golden-angle hues), black for 0."""
    uniq, inv = np.unique(ids, return_inverse=True)
    palette = np.array(
        [(0, 0, 0) if u == 0 else labels.COSEM_CLASS_MAP.color(int(u)) for u in uniq],
        dtype=np.uint8,
    )
    return palette[inv.reshape(ids.shape)]


def read_container_roi(container: Path, key: str, roi: Roi) -> Array:
    """Voxels of ``roi`` of image ``key`` (``predictions/mito``, ``instances/mito``) of a
    prediction/segmentation container."""
    arr = zarr.open_array(str(container / key / "s0"), mode="r")
    data: Array = np.asarray(arr[roi.to_slices()])
    return data


# --- inference outputs (no Dagster) -------------------------------------------------------------


def read_plane(path: Path, roi: Roi) -> Array:
    """One (1, y, x) ROI of a format variant as a uint8 (y, x) plane."""
    src = open_volume(path)
    try:
        plane: Array = np.asarray(src.read(roi))[0].astype(np.uint8)
        return plane
    finally:
        src.close()


def prediction_classes_present(container: Path, classes: Sequence[str]) -> list[str]:
    return [c for c in classes if (container / "predictions" / c / "s0" / "zarr.json").exists()]


def prediction_preview(raw_path: Path, container: Path) -> str:
    """Markdown: the middle slice (centre crop) of the raw beside it with every class's
    predicted foreground coloured as in the ground-truth overlays."""
    attrs = read_prediction_attrs(container)
    classes = [ClassSpec.from_dict(c) for c in attrs["config"]["classes"]]
    roi = preview_roi(attrs["plan"]["volume_shape"])
    plane = read_plane(raw_path, roi)
    masks = [
        (
            read_container_roi(container, f"predictions/{c.name}", roi)[0] > UINT8_THRESHOLD,
            class_color(c),
        )
        for c in classes
    ]
    legend = ", ".join(f"{c.name} rgb{class_color(c)}" for c in classes)
    png = preview_png(plane, _rgb_overlay(plane, masks))
    return (
        markdown_image(png, f"raw and predictions ({legend})")
        + f"\n\nmiddle slice z={roi.offset[0]}; {legend}"
    )


def instance_preview(raw_path: Path, container: Path, class_name: str) -> str:
    """Markdown: the middle slice of the raw beside it with one class's instances coloured."""
    shape = json.loads((container / "instances" / class_name / "s0" / "zarr.json").read_text())[
        "shape"
    ]
    roi = preview_roi(shape)
    plane = read_plane(raw_path, roi)
    inst = read_container_roi(container, f"instances/{class_name}", roi)[0]
    overlay = _rgb_overlay(plane, [])
    fg = inst > 0
    overlay[fg] = (0.5 * overlay[fg] + 0.5 * instance_colors(inst)[fg]).astype(np.uint8)
    png = preview_png(plane, overlay)
    return (
        markdown_image(png, f"{class_name} instances")
        + f"\n\n{class_name} instances, middle slice z={roi.offset[0]}"
    )


@dataclass
class Segmentation:
    classes: list[ClassSpec]
    counts: dict[str, int]
    shape: tuple[int, int, int]


def segment_predictions(pred_path: Path, out: Path, version: str) -> Segmentation:
    """Connected components (6-connected, threshold 127) of every class map of a prediction
    container, blockwise with the prediction's blocks, into ``out`` (``instances/<class>``,
    uint64, ids 1..N); resumable through block markers keyed by ``version``."""
    attrs = read_prediction_attrs(pred_path)
    plan = attrs["plan"]
    classes = [ClassSpec.from_dict(c) for c in attrs["config"]["classes"]]
    s = [int(v) for v in plan["volume_shape"]]
    shape = (s[0], s[1], s[2])
    block = tuple(int(b) for b in plan["block_shape"])
    fp = fingerprint({"predictions": version, "threshold": UINT8_THRESHOLD})
    store = ArrayStore(out, shape, block, plan["voxel_size_nm"], {"predictions": str(pred_path)})
    counts: dict[str, int] = {}
    for c in classes:

        def foreground(roi: Roi, key: str = f"predictions/{c.name}") -> npt.NDArray[np.bool_]:
            return read_container_roi(pred_path, key, roi) > UINT8_THRESHOLD

        counts[c.name] = connected_components_blockwise(
            foreground, store, c.name, block, default_ledger_dir(out), fp
        )
    store.set_attributes(
        {
            "complete": True,
            "predictions": str(pred_path),
            "classes": [c.to_dict() for c in classes],
            "max_id": counts,
            "threshold_uint8": UINT8_THRESHOLD,
        }
    )
    shutil.rmtree(out / "fragments", ignore_errors=True)  # pass-1 ids; the markers know
    return Segmentation(classes, counts, shape)


def score_against_crops(
    revision: labels.Revision, raw_path: Path, container: Path, classes: Sequence[ClassSpec]
) -> tuple[dict[str, Overlap], str]:
    """Overlaps per class of a segmentation container with every crop of a ground-truth
    revision (pooled over crops; unannotated voxels not scored), and a markdown table per
    crop."""
    overlaps: dict[str, Overlap] = {}
    rows = ["| crop | annotation split | " + " | ".join(f"Dice {c.name}" for c in classes) + " |"]
    rows.append("|---|---|" + "---|" * len(classes))
    raw = open_volume(raw_path)
    try:
        for crop in revision.crops:
            truth = crop_labels(revision, crop, raw)

            def predicted(c: ClassSpec, roi: Roi = crop.roi) -> npt.NDArray[np.bool_]:
                return np.asarray(read_container_roi(container, f"instances/{c.name}", roi) > 0)

            per_crop = crop_overlaps(predicted, truth, classes)
            pool_overlaps(overlaps, per_crop)
            rows.append(
                f"| {crop.name} | {crop.split} | "
                + " | ".join(f"{per_crop[c.name].dice:.3f}" for c in classes)
                + " |"
            )
    finally:
        raw.close()
    return overlaps, "\n".join(rows)


# =============================================================================================
# Dagster layer
# =============================================================================================


class SplitConfig(dg.Config):
    """How regions with accepted ground truth are split (recorded in the materialization)."""

    seed: int = Field(default=0, ge=0, description="Seed of the random assignment of regions.")
    test_fraction: float = Field(
        default=0.3,
        ge=0.0,
        lt=1.0,
        description="Share of regions held out as test regions (at least one once there are "
        "two regions). Test regions are never used for training or model selection.",
    )
    validation_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of regions used only to select the best checkpoint (model "
        "selection). The curators' held-out crops of training regions are used too.",
    )
    reshuffle: bool = Field(
        default=False,
        description="Draw every region's role anew. Off: regions keep the role they had in "
        "the previous split (a test region never becomes a training region), new ones are "
        "assigned at random.",
    )


class TrainingConfig(dg.Config):
    """Run settings of a training step (the experiment file holds the science)."""

    variant: Variant = Field(
        default="zarr",
        description="Which format variant the raw voxels are read from (volume_<variant>; "
        "the crops' ROIs are in raw voxels, the same grid in every variant).",
    )
    threads: int = Field(
        default=0, ge=0, description="CPU threads for torch (0: torch's default, all cores)."
    )
    iterations: int = Field(
        default=0,
        ge=0,
        description="Override the experiment's budget (0: use the experiment file). For smoke "
        "runs; the model card records it.",
    )
    selection_points: int = Field(
        default=5,
        ge=1,
        description="How many times during training the model is scored on the validation "
        "crops; the best-scoring checkpoint is kept.",
    )


class InferenceConfig(dg.Config):
    """Which model predicts (one experiment's latest organelle_model)."""

    experiment: str = Field(
        default=DEFAULT_EXPERIMENT,
        description="Experiment whose organelle_model predicts (a file name under experiments/).",
    )
    variant: Variant = Field(
        default="zarr", description="Format variant the raw voxels are read from."
    )
    block_edge: int = Field(
        default=0,
        ge=0,
        description="Cubic block edge in voxels (a multiple of the network's downsampling "
        "factor); 0: the model's default (about 64).",
    )


def _latest_unpartitioned(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any] | None:
    res = instance.fetch_materializations(key, limit=1)
    if not res.records:
        return None
    rec = res.records[0]
    mat = rec.event_log_entry.asset_materialization
    assert mat is not None
    return {
        "data_version": (mat.tags or {}).get("dagster/data_version"),
        "storage_id": rec.storage_id,
        "run_id": rec.run_id,
        "metadata": {k: v.value for k, v in mat.metadata.items()},
    }


def current_split(instance: dg.DagsterInstance) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(region -> role, the split's materialization record) or None."""
    rec = _latest_unpartitioned(instance, TRAINING_SPLIT)
    if rec is None:
        return None
    return {str(k): str(v) for k, v in dict(rec["metadata"]["assignment"]).items()}, rec


def _revision_store(storage: StorageResource, region: str) -> labels.RevisionStore:
    """The region's ground-truth revisions (read only: no folder is created)."""
    if storage.is_remote:
        raise dg.Failure(
            f"{storage.root}: the training family reads ground truth and writes checkpoints on "
            "a local (or mounted) storage root"
        )
    return labels.RevisionStore(
        Path(storage.root) / "ground_truth_crops" / validate_region_key(region)
    )


def region_data(
    instance: dg.DagsterInstance, storage: StorageResource, region: str, role: str, variant: str
) -> RegionData:
    revision = _revision_store(storage, region).current()
    if revision is None:
        raise dg.Failure(f"{region}: no accepted ground_truth_crops revision")
    rec = latest_materialization(instance, dg.AssetKey(f"volume_{variant}"), region)
    if rec is None:
        raise dg.Failure(
            f"volume_{variant}[{region}] is not materialized: training reads the raw voxels "
            "through it (materialize it, or choose another variant)"
        )
    path = Path(str(rec["metadata"]["dagster/uri"]))
    return RegionData(region, role, revision, path, rec["data_version"], variant)


def model_record(instance: dg.DagsterInstance, experiment: str) -> dict[str, Any]:
    """The latest organelle_model[experiment] materialization (fails naming what to do)."""
    rec = latest_materialization(instance, ORGANELLE_MODEL, experiment)
    if rec is None:
        raise dg.Failure(
            f"organelle_model[{experiment}] is not materialized: train it first "
            f"(materialize organelle_model, partition {experiment})"
        )
    ckpt = Path(str(rec["metadata"]["checkpoint"]))
    if not ckpt.is_file():
        raise dg.Failure(f"organelle_model[{experiment}]: checkpoint {ckpt} is missing")
    return {**rec, "checkpoint": ckpt}


def _split_table(assignment: Mapping[str, str], details: Mapping[str, dict[str, Any]]) -> str:
    rows = [
        "| region | role | ground truth rev | train crops | held-out crops |",
        "|---|---|---|---|---|",
    ]
    for region, role in assignment.items():
        d = details.get(region, {})
        rows.append(
            f"| {region} | **{role}** | {d.get('revision', '')} | "
            f"{', '.join(d.get('train', []))} | {', '.join(d.get('test', []))} |"
        )
    return "\n".join(rows)


def model_metadata(card: Mapping[str, Any], markdown: str, variant: str) -> dict[str, Any]:
    """organelle_model's metadata: the card's headline numbers, and every data version used."""
    used: Mapping[str, Mapping[str, Any]] = card["training_data"]["regions"]
    init = card["initialization"]
    by_role = card["regions_by_role"]
    versions = {
        "training_split": card["training_data"]["split_data_version"],
        **{f"{r}:ground_truth_crops": v["ground_truth_data_version"] for r, v in used.items()},
        **{f"{r}:volume_{variant}": v["variant_data_version"] for r, v in used.items()},
    }
    if init.get("experiment"):
        versions[f"init:organelle_model[{init['experiment']}]"] = init["data_version"]
    checkpoint = Path(card["checkpoint"])
    meta: dict[str, Any] = {
        "dagster/uri": dg.MetadataValue.path(str(checkpoint.parent)),
        "checkpoint": dg.MetadataValue.path(str(checkpoint)),
        "checkpoint_sha256": card["checkpoint_sha256"],
        "model_card": dg.MetadataValue.md(markdown),
        "model_card_file": dg.MetadataValue.path(str(checkpoint.parent / "model_card.json")),
        "experiment": dg.MetadataValue.json(card["experiment_spec"]),
        "architecture": dg.MetadataValue.json(card["architecture"]),
        "parameters": int(card["parameters"]),
        "iterations": int(card["iterations"]),
        "selected_step": int(card["selected_step"]),
        "final_loss": float(card["metrics"]["final_loss"]),
        "wall_time_s": float(card["wall_time_s"]),
        "iterations_per_s": float(card["iterations_per_s"]),
        "device": str(card["device"]),
        "train_regions": dg.MetadataValue.json(by_role["train"]),
        "validation_regions": dg.MetadataValue.json(by_role["validation"]),
        "test_regions": dg.MetadataValue.json(by_role["test"]),
        "data_versions": dg.MetadataValue.json(versions),
    }
    for cls, value in (card["metrics"]["validation_dice"] or {}).items():
        meta[f"validation_dice_{cls}"] = float(value)
    return meta


def build_training_assets(
    declared: Mapping[str, Experiment], experiments: dg.StaticPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The family's four assets for the ``declared`` experiments (partitions ``experiments``)."""
    for name in experiments.get_partition_keys():
        if name not in declared:
            raise ValueError(f"partition {name!r} has no declared experiment")

    @dg.asset(
        name="training_split",
        group_name=GROUP,
        owners=OWNERS,
        kinds={"json"},
        code_version=code_version_of(plan_split),
        deps=[dg.AssetDep(GROUND_TRUTH, partition_mapping=dg.AllPartitionMapping())],
    )
    def training_split(
        context: dg.AssetExecutionContext, storage: StorageResource, config: SplitConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Which regions train models, which select among checkpoints (validation) and which
        are held out to measure them (test). Only regions with an accepted ground-truth
        revision take part. The assignment is seeded and sticky: a region keeps its role when
        new regions arrive, so a test region is never trained on later. The table in the
        metadata is the record curators and auditors read."""
        candidates = sorted(context.instance.get_dynamic_partitions(regions.name or "regions"))
        details: dict[str, dict[str, Any]] = {}
        for region in candidates:
            rev = _revision_store(storage, region).current()
            if rev is not None:
                details[region] = {
                    "revision": rev.number,
                    "data_version": rev.data_version,
                    "train": [c.name for c in rev.crops if c.split == "train"],
                    "test": [c.name for c in rev.crops if c.split != "train"],
                }
        if not details:
            raise dg.Failure("no region has an accepted ground_truth_crops revision yet")
        previous = None
        prev = current_split(context.instance)
        # a different seed is a new split; otherwise regions keep their roles
        if (
            prev is not None
            and not config.reshuffle
            and prev[1]["metadata"].get("seed") == config.seed
        ):
            previous = prev[0]
        assignment = plan_split(
            list(details),
            seed=config.seed,
            test_fraction=config.test_fraction,
            validation_fraction=config.validation_fraction,
            previous=previous,
        )
        by_role = {role: regions_with_role(assignment, role) for role in ROLES}
        context.log.info(f"training split: {by_role}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(fingerprint({"assignment": assignment})),
            metadata={
                "assignment": dg.MetadataValue.json(assignment),
                "split": dg.MetadataValue.md(_split_table(assignment, details)),
                "train_regions": dg.MetadataValue.json(by_role["train"]),
                "validation_regions": dg.MetadataValue.json(by_role["validation"]),
                "test_regions": dg.MetadataValue.json(by_role["test"]),
                "n_train": len(by_role["train"]),
                "n_validation": len(by_role["validation"]),
                "n_test": len(by_role["test"]),
                "seed": config.seed,
                "test_fraction": config.test_fraction,
                "validation_fraction": config.validation_fraction,
                "kept_from_previous": dg.MetadataValue.json(sorted(previous or {})),
                "ground_truth": dg.MetadataValue.json(details),
            },
        )

    @dg.asset(
        name="organelle_model",
        partitions_def=experiments,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"pytorch"},
        code_version=code_version_of(
            train_module,
            sampler_module,
            CropSetSampler,
            assemble_training_data,
            train_with_selection,
            evaluate_crops,
        ),
        deps=[
            dg.AssetDep(TRAINING_SPLIT),
            dg.AssetDep(GROUND_TRUTH, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(VOLUME_ZARR, partition_mapping=dg.AllPartitionMapping()),
        ],
        op_tags=GPU_OP_TAGS,
        pool=GPU_POOL,
    )
    def organelle_model(
        context: dg.AssetExecutionContext, storage: StorageResource, config: TrainingConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """A 3D U-Net segmentation model for one declared experiment (files under
        experiments/: classes, pre-processing, architecture, initialization, budget, seed,
        curator intervention, compute). Trained on the training regions' accepted ground-truth
        crops; the best checkpoint on the validation crops is kept. Writes the checkpoint and a
        model card (architecture, the ground-truth revisions and volume versions used, metrics,
        wall time, device, iterations/s) under <storage>/organelle_model/<experiment>/. The
        data version is the checkpoint's sha256, so a retrained model makes its predictions
        stale. Runs in the GPU pool (GPU node on Kubernetes) whatever the experiment's
        compute."""
        name = context.partition_key
        exp = declared[name]
        split = current_split(context.instance)
        if split is None:
            raise dg.Failure("training_split is not materialized: materialize it first")
        assignment, split_rec = split
        by_role = {role: regions_with_role(assignment, role) for role in ROLES}
        if not by_role["train"]:
            raise dg.Failure("training_split has no training region")
        data = [
            region_data(context.instance, storage, r, assignment[r], config.variant)
            for r in by_role["train"] + by_role["validation"]
        ]
        init = None
        if exp.initialization.source is not None:
            src = model_record(context.instance, exp.initialization.source)
            init = {
                "experiment": exp.initialization.source,
                "checkpoint": str(src["checkpoint"]),
                "checkpoint_sha256": src["metadata"].get("checkpoint_sha256"),
                "data_version": src["data_version"],
            }
        train_config = exp.train_config(init["checkpoint"] if init else None)
        iterations = config.iterations or train_config.iterations
        train_config = train_config.replace(
            iterations=iterations, metrics_every=max(1, iterations // 10)
        )
        context.log.info(
            f"{name}: training regions {by_role['train']}, validation regions "
            f"{by_role['validation']}, {iterations} iterations"
        )
        if train_config.device == "cuda" and not torch.cuda.is_available():
            raise dg.Failure(
                f"experiment {name} declares compute: gpu but this step has no CUDA device; it "
                "runs on the Kubernetes GPU node pool (k8s_job_executor), not on this machine"
            )

        trained = train_experiment(
            exp,
            train_config,
            data,
            storage.asset_dir("organelle_model", name),
            init=init,
            split_info={
                "data_version": split_rec["data_version"],
                "storage_id": split_rec["storage_id"],
                "regions_by_role": by_role,
            },
            n_points=config.selection_points,
            threads=config.threads or None,
            log=context.log.info,
            run_id=context.run_id,
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(trained.sha256),
            metadata=model_metadata(trained.card, trained.markdown, config.variant),
        )

    @dg.asset(
        name="predictions",
        partitions_def=regions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"zarr"},
        code_version=code_version_of(predict_module),
        deps=[
            dg.AssetDep(ORGANELLE_MODEL, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(VOLUME_ZARR),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                PREDICTION_COMPLETE,
                asset="predictions",
                partitions_def=regions,
                blocking=True,
                description="Every block of the region was predicted, stored and read back, and "
                "the container is marked complete with one map per class of the model.",
            )
        ],
    )
    def predictions(
        context: dg.AssetExecutionContext, storage: StorageResource, config: InferenceConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Per-class prediction maps of the whole region (OME-Zarr, uint8, > 127 means the
        organelle) from the chosen experiment's organelle_model, computed block by block with a
        halo. Resumable: a killed run recomputes only the missing blocks. The preview shows the
        middle slice with each class coloured as in the ground-truth overlays."""
        region = context.partition_key
        if config.experiment not in declared:
            raise dg.Failure(
                f"unknown experiment {config.experiment!r}; declared: {sorted(declared)}"
            )
        model = model_record(context.instance, config.experiment)
        raw = latest_materialization(
            context.instance, dg.AssetKey(f"volume_{config.variant}"), region
        )
        if raw is None:
            raise dg.Failure(f"volume_{config.variant}[{region}] is not materialized")
        raw_path = Path(str(raw["metadata"]["dagster/uri"]))
        sha = str(model["metadata"]["checkpoint_sha256"])
        out = storage.asset_dir("predictions", region) / f"{config.experiment}-{sha[:12]}.zarr"
        block = (config.block_edge,) * 3 if config.block_edge else None
        try:
            plan = plan_prediction(model["checkpoint"], raw_path, out, block_shape=block)
        except ValueError as err:
            raise dg.Failure(f"cannot plan the prediction: {err}") from err
        result = predict_volume(plan)
        context.log.info(
            f"{region}: {result.blocks_computed}/{result.blocks_total} blocks computed in "
            f"{result.seconds:.1f} s ({result.voxels_per_s / 1e6:.2f} Mvox/s)"
        )
        present = prediction_classes_present(out, plan.classes)
        complete = bool(read_prediction_attrs(out).get("complete")) and present == list(
            plan.classes
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(plan.fingerprint),
            metadata={
                "dagster/uri": dg.MetadataValue.path(str(out)),
                "experiment": config.experiment,
                "checkpoint": dg.MetadataValue.path(str(model["checkpoint"])),
                "checkpoint_sha256": sha,
                "model_data_version": str(model["data_version"]),
                "raw": dg.MetadataValue.path(str(raw_path)),
                "raw_data_version": str(raw["data_version"]),
                "classes": dg.MetadataValue.json(list(plan.classes)),
                "arrays": dg.MetadataValue.json([f"predictions/{c}/s0" for c in plan.classes]),
                "shape_zyx": dg.MetadataValue.json(list(plan.volume_shape)),
                "voxel_size_nm": dg.MetadataValue.json(list(plan.voxel_size_nm)),
                "block_shape": dg.MetadataValue.json(list(plan.block_shape)),
                "blocks_total": result.blocks_total,
                "blocks_computed": result.blocks_computed,
                "seconds": float(result.seconds),
                "voxels_per_s": float(result.voxels_per_s),
                "plan": dg.MetadataValue.json(plan.to_dict()),
                "preview": dg.MetadataValue.md(prediction_preview(raw_path, out)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=PREDICTION_COMPLETE,
                    passed=complete,
                    description=(
                        f"{result.blocks_total} blocks, {len(present)} class maps"
                        if complete
                        else f"incomplete container: class maps present {present} of "
                        f"{list(plan.classes)}"
                    ),
                    metadata={"blocks_total": result.blocks_total},
                )
            ],
        )

    @dg.asset(
        name="segmentation",
        partitions_def=regions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"zarr"},
        code_version=code_version_of(
            connected_components_blockwise, segment_predictions, score_against_crops, crop_overlaps
        ),
        deps=[
            dg.AssetDep(PREDICTIONS),
            dg.AssetDep(GROUND_TRUTH),
            dg.AssetDep(TRAINING_SPLIT),
        ],
    )
    def segmentation(
        context: dg.AssetExecutionContext, storage: StorageResource, config: InferenceConfig
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        """Organelle instances of the region (OME-Zarr, uint64, one id per connected object
        per class) from the predictions of the chosen experiment, labelled blockwise and merged
        across block faces (resumable). Scored against the region's ground-truth crops:
        dice_<class> / iou_<class> in the metadata. Only regions whose role is 'test' in the
        training split give an unbiased score (region_role says which)."""
        region = context.partition_key
        pred = _predictions_record(context.instance, region, config.experiment)
        pred_path = Path(str(pred["metadata"]["dagster/uri"]))
        if not read_prediction_attrs(pred_path).get("complete"):
            raise dg.Failure(f"{pred_path}: predictions are incomplete; rematerialize them")
        out = (
            storage.asset_dir("segmentation", region)
            / f"{config.experiment}-{str(pred['data_version'])[:12]}.zarr"
        )
        seg = segment_predictions(pred_path, out, str(pred["data_version"]))
        classes = seg.classes
        split = current_split(context.instance)
        role = split[0].get(region, "not in split") if split else "no split"
        revision = _revision_store(storage, region).current()
        raw_path = Path(str(pred["metadata"]["raw"]))
        overlaps, table = (
            score_against_crops(revision, raw_path, out, classes) if revision else ({}, "")
        )
        meta: dict[str, Any] = {
            "dagster/uri": dg.MetadataValue.path(str(out)),
            "experiment": config.experiment,
            "predictions": dg.MetadataValue.path(str(pred_path)),
            "predictions_data_version": str(pred["data_version"]),
            "checkpoint_sha256": str(pred["metadata"].get("checkpoint_sha256")),
            "region_role": role,
            "test_region": role == "test",
            "arrays": dg.MetadataValue.json([f"instances/{c.name}/s0" for c in classes]),
            "shape_zyx": dg.MetadataValue.json(list(seg.shape)),
            "ground_truth_revision": revision.number if revision else -1,
            "ground_truth_data_version": revision.data_version if revision else "",
            "preview": dg.MetadataValue.md(instance_preview(raw_path, out, classes[0].name)),
        }
        for c in classes:
            meta[f"instances_{c.name}"] = seg.counts[c.name]
        if revision is not None:
            for c in classes:
                meta[f"dice_{c.name}"] = float(overlaps[c.name].dice)
                meta[f"iou_{c.name}"] = float(overlaps[c.name].iou)
            meta["dice_by_crop"] = dg.MetadataValue.md(
                f"Region role: **{role}** (only test regions give an unbiased score)\n\n" + table
            )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                fingerprint(
                    {
                        "predictions": pred["data_version"],
                        "ground_truth": revision.data_version if revision else None,
                    }
                )
            ),
            metadata=meta,
        )

    return [training_split, organelle_model, predictions, segmentation]


def _predictions_record(
    instance: dg.DagsterInstance, region: str, experiment: str, search: int = 50
) -> dict[str, Any]:
    """The newest predictions[region] materialization made with ``experiment``'s model."""
    res = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[region]), limit=search
    )
    for rec in res.records:
        mat = rec.event_log_entry.asset_materialization
        assert mat is not None
        meta = {k: v.value for k, v in mat.metadata.items()}
        if meta.get("experiment") == experiment:
            return {
                "data_version": (mat.tags or {}).get("dagster/data_version"),
                "storage_id": rec.storage_id,
                "metadata": meta,
            }
    raise dg.Failure(
        f"predictions[{region}] has no materialization with experiment {experiment!r}: "
        "materialize predictions with the same experiment first"
    )


def checkpoint_smoke_test(path: Path) -> dict[str, Any]:
    """Load a checkpoint and run one forward pass on the smallest valid input (seeded noise):
    the output must have the declared shape and be finite."""
    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    model = UNet(config.unet)
    model.load_state_dict(ckpt["model"])
    model.eval()
    shape = config.input_shape
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((1, 1, *shape)).astype(np.float32)
    )
    with torch.no_grad():
        y = model(x)
    want = [1, config.unet.out_channels, *config.output_shape]
    return {
        "input_shape": list(shape),
        "output_shape": list(y.shape),
        "expected_shape": want,
        "finite": bool(torch.isfinite(y).all()),
        "ok": list(y.shape) == want and bool(torch.isfinite(y).all()),
    }
