"""One experiment's training run: train with periodic model selection on validation crops,
resume after a crash, publish the selected checkpoint content-addressed with its model card.

The experiment's folder is a local path or an ``s3://`` prefix (:mod:`fib_assets.core.storage`).
Training always runs in a local folder (torch writes files); on an object store that folder is
in pod-local scratch, mirrored to ``<exp>/.train-<key>`` after every selection point (marker
last) so a replaced pod resumes from the last mirrored point, and the model folder
``<exp>/<sha256[:16]>/`` (checkpoint + card) is uploaded, read back and published by its
completion marker, written last."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from fib_assets.core import storage
from fib_assets.core.blockwise import atomic_write_bytes, atomic_write_json, fingerprint
from fib_assets.core.ml.crops import CropSetSampler, EvalCrop, RegionData, assemble_training_data
from fib_assets.core.ml.evaluate import evaluate_crops
from fib_assets.core.ml.experiments import Experiment
from fib_assets.core.ml.modelcard import build_model_card, model_card_markdown
from fib_assets.core.ml.sampler import PatchSampler
from fib_assets.core.ml.train import TrainConfig, Trainer
from fib_assets.core.provenance.fixity import sha256_file


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
    on_saved: Callable[[], None] | None = None,
) -> TrainingOutcome:
    """Train ``config`` on ``sampler`` in ``staging``; at :func:`selection_points` save
    ``latest.pt`` (a killed run resumes from it) and, when there are validation crops, score
    the model on them and keep the best mean Dice as ``best-<step>.pt`` (model selection;
    ``selection.json`` names it and is written after it). Returns the selected checkpoint:
    the best one, or ``latest.pt`` without validation crops. ``on_saved`` is called after
    every selection point, once its files are written (e.g. to mirror them to an object
    store)."""
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
        if on_saved is not None:
            on_saved()
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


@dataclass
class TrainedModel:
    checkpoint: str  # a local path or an s3:// URL
    sha256: str
    card: dict[str, Any]
    markdown: str


def publish_checkpoint(
    selected: Path,
    staging: Path,
    exp_dir: str | Path,
    describe: Callable[[str, str], tuple[dict[str, Any], str]],
) -> tuple[str, str, dict[str, Any], str]:
    """Publish the selected checkpoint as ``<exp_dir>/<sha256[:16]>/model.pt`` (content-
    addressed, so predictions made with an older model keep pointing at its unchanged file)
    with the run's metrics, its selection record and the model card that ``describe``
    (checkpoint location, sha256) -> (card, markdown) returns. Local: written in place (the
    checkpoint renamed in last-step atomically). Object store: the folder is built in scratch,
    uploaded, read back and published by its completion marker (written last), so the model
    and its card appear together. Returns (checkpoint location, sha256, card, markdown)."""
    sha = sha256_file(selected)
    final = storage.join(exp_dir, sha[:16])
    checkpoint = storage.join(final, "model.pt")
    need = 2 * selected.stat().st_size + 2**20
    with storage.Staging(final, need_bytes=need) as stage:
        folder = Path(stage.path)
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / "model.pt"
        if not local.exists() or sha256_file(local) != sha:
            tmp = folder / ".model.pt.tmp"
            shutil.copyfile(selected, tmp)
            tmp.replace(local)
        for extra in ("metrics.jsonl", "selection.json"):
            if (staging / extra).exists():
                shutil.copyfile(staging / extra, folder / extra)
        card, md = describe(checkpoint, sha)
        atomic_write_json(folder / "model_card.json", card)
        atomic_write_bytes(folder / "model_card.md", (md + "\n").encode())
        stage.publish({"checkpoint_sha256": sha})
    return checkpoint, sha, card, md


def _training_folder(exp_dir: str, key: str) -> Path:
    """Where a run trains: beside the models locally, in pod-local scratch on an object store."""
    if not storage.is_remote(exp_dir):
        return Path(exp_dir) / f".train-{key}"
    home = hashlib.sha256(exp_dir.encode()).hexdigest()[:16]
    return storage.scratch_root() / "training" / home / f".train-{key}"


def train_experiment(
    exp: Experiment,
    config: TrainConfig,
    regions_data: Sequence[RegionData],
    exp_dir: str | Path,
    *,
    init: Mapping[str, Any] | None,
    split_info: Mapping[str, Any],
    n_points: int = 5,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    run_id: str | None = None,
) -> TrainedModel:
    """Train ``exp`` (as ``config``) on ``regions_data`` and publish the checkpoint and its
    model card under ``exp_dir`` (a local path or an ``s3://`` prefix). The staging folder is
    named by everything that determines the result, so a rerun after a crash resumes it (on an
    object store from its mirror), and it is removed once published."""
    exp_dir = storage.normalize(exp_dir)
    data = assemble_training_data(config, regions_data)
    try:
        provenance = {r: {k: v for k, v in u.items() if k != "role"} for r, u in data.used.items()}
        key = fingerprint(
            {"config": config.to_dict(), "data": provenance, "init": init, "points": n_points}
        )[:16]
        staging = _training_folder(exp_dir, key)
        mirror = storage.join(exp_dir, f".train-{key}") if storage.is_remote(exp_dir) else None
        if mirror and not (staging / "latest.pt").exists() and storage.is_complete(mirror):
            shutil.rmtree(staging, ignore_errors=True)
            storage.download_verified(mirror, staging)
            log(f"resuming from the mirrored training state {mirror}")

        def save_mirror() -> None:
            if mirror:
                storage.publish_staged(staging, mirror, info={"experiment": exp.name})

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
            on_saved=save_mirror,
        )
    finally:
        data.close()

    def describe(checkpoint: str, sha: str) -> tuple[dict[str, Any], str]:
        card = build_model_card(
            exp,
            config,
            outcome,
            data,
            init=init,
            split_info=split_info,
            checkpoint=Path(checkpoint),
            sha=sha,
            run_id=run_id,
        )
        card["checkpoint"] = checkpoint  # a URL stays a URL (Path() would fold its '//')
        return card, model_card_markdown(card)

    checkpoint, sha, card, md = publish_checkpoint(outcome.checkpoint, staging, exp_dir, describe)
    storage.write_json(
        storage.join(exp_dir, "current.json"), {"checkpoint": checkpoint, "sha256": sha}
    )
    shutil.rmtree(staging, ignore_errors=True)
    if mirror:
        storage.retract(mirror)
        storage.remove(mirror)
    return TrainedModel(checkpoint, sha, card, md)
