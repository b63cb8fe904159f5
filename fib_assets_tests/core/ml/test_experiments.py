from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fib_assets.core.ml.experiments import (
    Experiment,
    ExperimentError,
    load_experiments,
    training_order,
)

COSEM = {
    "name": "mito-cosem",
    "classes": ["mito", {"er_all": [16, 17, 18, 19]}],
    "preprocessing": [
        {"name": "percentile_stretch"},
        {"name": "clahe", "clip_limit": 0.02, "kernel_size": [32, 32, 32]},
        {"name": "zscore"},
    ],
    "architecture": {
        "levels": 4,
        "base_width": 12,
        "width_factor": 6,
        "downsample": [[2, 2, 2], [3, 3, 3], [3, 3, 3]],
        "padding": "valid",
    },
    "budget": {"iterations": 20000, "patch_size": [54, 54, 54], "batch_size": 1},
    "seed": 3,
    "curator_intervention": "none",
    "compute": "gpu",
}
TINY_ARCH = {"levels": 3, "base_width": 8, "width_factor": 2, "downsample": [[2, 2, 2], [2, 2, 2]]}


def _write(tmp: Path, doc: dict, name: str | None = None) -> Path:
    path = tmp / f"{name or doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cosem_experiment_parses_and_builds_a_train_config(tmp_path: Path) -> None:
    exp = Experiment.from_yaml(_write(tmp_path, COSEM))
    assert [c.name for c in exp.classes] == ["mito", "er_all"]
    assert exp.classes[0].ids == (3, 4, 5)
    config = exp.train_config()
    assert config.unet.widths == (12, 72, 432, 2592) and config.unet.out_channels == 2
    assert config.lr == 5e-5 and config.betas == (0.95, 0.999)
    assert config.device == "cuda" and config.output_shape == (54, 54, 54)
    assert config.preprocessing[1]["clip_limit"] == 0.02
    assert Experiment.from_dict(exp.to_dict(), "again").to_dict() == exp.to_dict()


@pytest.mark.parametrize(
    ("change", "key", "needle"),
    [
        ({"name": "Mito Run"}, "name", "must match"),
        ({"classes": ["mitochondria"]}, "classes", "unknown class"),
        ({"loss": "dice"}, "loss", "balanced_mse or balanced_cross_entropy"),
        ({"preprocessing": [{"name": "clahe", "clip": 2}]}, "preprocessing", "unknown parameters"),
        ({"architecture": {**TINY_ARCH, "depth": 3}}, "architecture.depth", "unknown key"),
        ({"architecture": {**TINY_ARCH, "levels": 4}}, "architecture", "needs 3"),
        (
            {"budget": {"iterations": 10, "patch_size": [50, 48, 48]}},
            "budget.patch_size",
            "nearest larger",
        ),
        ({"budget": {"patch_size": [48, 48, 48]}}, "budget.iterations", "is required"),
        ({"budget": {"iterations": 0, "patch_size": 48}}, "budget.iterations", ">= 1"),
        ({"initialization": "imagenet"}, "initialization", "scratch"),
        ({"initialization": {"from": "mito-cosem"}}, "initialization.from", "from itself"),
        (
            {"curator_intervention": "correction_round_0"},
            "curator_intervention",
            "correction_round_N",
        ),
        ({"curator_intervention": "transfer_learning"}, "initialization", "needs {from"),
        ({"compute": "tpu"}, "compute", "cpu or gpu"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr", "positive"),
        ({"optimizer": {"lr": 1e-3, "schedule": "step"}}, "optimizer.schedule", "cosine"),
        ({"epochs": 3}, "epochs", "unknown key"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, change, key, needle) -> None:
    doc = {**COSEM, "architecture": TINY_ARCH, "budget": {"iterations": 10, "patch_size": 48}}
    doc.update(change)
    path = _write(tmp_path, doc, "bad")
    with pytest.raises(ExperimentError) as err:
        Experiment.from_yaml(path)
    assert err.value.key == key
    assert str(path) in str(err.value) and needle in str(err.value)


def test_missing_key_and_bad_yaml(tmp_path: Path) -> None:
    doc = {k: v for k, v in COSEM.items() if k != "budget"}
    with pytest.raises(ExperimentError, match="key 'budget': is required"):
        Experiment.from_yaml(_write(tmp_path, doc))
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        Experiment.from_yaml(bad)


def test_directory_references_and_order(tmp_path: Path) -> None:
    base = {**COSEM, "architecture": TINY_ARCH, "budget": {"iterations": 10, "patch_size": 48}}
    _write(tmp_path, {**base, "name": "source-a"})
    _write(
        tmp_path,
        {
            **base,
            "name": "finetune-b",
            "initialization": {"from": "source-a", "freeze_encoder": True},
            "curator_intervention": "transfer_learning",
        },
    )
    exps = load_experiments(tmp_path)
    assert training_order(exps) == ["source-a", "finetune-b"]
    config = exps["finetune-b"].train_config(init_checkpoint="/models/source-a.pt")
    assert config.freeze_encoder and config.init_from == "/models/source-a.pt"
    with pytest.raises(ValueError, match="does not fit"):
        exps["finetune-b"].train_config()

    _write(tmp_path, {**base, "name": "orphan", "initialization": {"from": "missing"}})
    with pytest.raises(ExperimentError, match="unknown experiment 'missing'"):
        load_experiments(tmp_path)
    (tmp_path / "orphan.yaml").unlink()
    _write(tmp_path, {**base, "name": "source-a", "initialization": {"from": "finetune-b"}}, "x")
    with pytest.raises(ExperimentError, match="also declared"):
        load_experiments(tmp_path)
