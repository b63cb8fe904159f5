"""Model cards: what was trained, on which data versions, how well, how fast and where
(JSON-able dict as the record, markdown for the UI and the checkpoint folder)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fib_assets.core.ml import train as train_module
from fib_assets.core.ml.experiments import Experiment
from fib_assets.core.ml.train import TrainConfig
from fib_assets.core.ml.unet import UNet, count_parameters

if TYPE_CHECKING:
    from fib_assets.core.ml.crops import TrainingData
    from fib_assets.core.ml.training_run import TrainingOutcome


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
