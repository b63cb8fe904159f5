"""One experiment's training run: train with periodic model selection on validation crops,
resume after a crash, publish the selected checkpoint content-addressed with its model card."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from fib_assets.core.blockwise import atomic_write_json, fingerprint
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
