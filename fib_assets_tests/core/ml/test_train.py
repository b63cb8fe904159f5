from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fib_assets.core.formats.base import ArraySource
from fib_assets.core.ml.classes import resolve_classes
from fib_assets.core.ml.train import TrainConfig, Trainer, build_sampler, read_checkpoint

from .conftest import VS


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture()
def sampler_for(tiny_region):
    raw, labels = tiny_region

    def make(config: TrainConfig):
        return build_sampler(config, ArraySource(raw, VS), ArraySource(labels, VS))

    return make


def test_fit_save_resume_reproduces_an_uninterrupted_run(
    tmp_path: Path, tiny_config, sampler_for
) -> None:
    sampler = sampler_for(tiny_config)
    first = Trainer(tiny_config, sampler, tmp_path / "run")
    records = first.fit(2)
    assert records[-1]["step"] == 2 and records[-1]["loss"] > 0
    first.save(tmp_path / "two.pt")

    resumed = Trainer.resume(tmp_path / "two.pt", sampler_for(tiny_config))
    assert resumed.step == 2
    resumed.fit(4)
    assert resumed.step == 4

    torch.manual_seed(1234)  # global state must not matter
    straight = Trainer(tiny_config, sampler_for(tiny_config))
    straight.fit(4)
    a, b = _weights(resumed), _weights(straight)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.history] == [2, 4]


def test_checkpoint_carries_config_and_data_versions(
    tmp_path: Path, tiny_config, sampler_for
) -> None:
    trainer = Trainer(tiny_config, sampler_for(tiny_config), data_versions={"raw": "dv-123"})
    trainer.fit(1)
    ckpt = read_checkpoint(trainer.save(tmp_path / "c.pt"))
    assert TrainConfig.from_dict(ckpt["config"]) == tiny_config
    assert ckpt["data_versions"]["raw"] == "dv-123"
    assert ckpt["data_versions"]["labels"].startswith("sha256:")
    assert ckpt["sampler"]["preprocessing"][0]["low"] is not None
    assert ckpt["step"] == 1 and "torch" in ckpt["library_versions"]
    with pytest.raises(ValueError, match="different config changes"):
        Trainer.resume(
            tmp_path / "c.pt", sampler_for(tiny_config), config=tiny_config.replace(lr=0.1)
        )


def test_transfer_init_loads_weights_and_freezes_encoder(
    tmp_path: Path, tiny_config, sampler_for
) -> None:
    source = Trainer(tiny_config, sampler_for(tiny_config))
    source.fit(2)
    source.save(tmp_path / "source.pt")
    src = _weights(source)

    config = tiny_config.replace(
        init_from=str(tmp_path / "source.pt"), freeze_encoder=True, seed=7, iterations=3
    )
    tuned = Trainer(config, sampler_for(config))
    assert all(torch.equal(v, src[k]) for k, v in _weights(tuned).items())
    assert tuned.init_report["skipped"] == [] and tuned.init_report["source_step"] == 2
    tuned.fit(3)
    after = _weights(tuned)
    enc = [k for k in after if k.startswith("encoder.")]
    rest = [k for k in after if not k.startswith("encoder.")]
    assert enc and all(torch.equal(after[k], src[k]) for k in enc)
    assert any(not torch.equal(after[k], src[k]) for k in rest)

    # a head for other classes starts fresh; the encoder still transfers
    two = config.replace(
        classes=resolve_classes(["mito", "er"]),
        unet={**config.unet.to_dict(), "out_channels": 2},
        freeze_encoder=False,
    )
    other = Trainer(two, sampler_for(two))
    assert sorted(other.init_report["skipped"]) == ["head.bias", "head.weight"]

    # resuming a frozen fine-tuning keeps the encoder frozen
    tuned.save(tmp_path / "tuned.pt")
    again = Trainer.resume(
        tmp_path / "tuned.pt", sampler_for(config), config=config.replace(iterations=4)
    )
    again.fit(4)
    assert all(torch.equal(_weights(again)[k], src[k]) for k in enc)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"lr": -1.0}, "lr must be a positive number, got -1.0"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"output_shape": [9, 8, 8]}, r"output_shape \[9, 8, 8\] is not an output size"),
        ({"loss": "dice"}, "loss must be one of"),
        ({"betas": [0.95, 1.5]}, "betas must be two numbers"),
        ({"freeze_encoder": True}, "freeze_encoder needs init_from"),
        ({"loss": "balanced_cross_entropy"}, "out_channels is 1 but loss"),
        ({"device": "tpu"}, "device must be one of"),
        ({"learning_rate": 1.0}, "unknown TrainConfig keys"),
    ],
)
def test_config_validation_names_the_bad_value(tiny_config, change, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        TrainConfig.from_dict({**tiny_config.to_dict(), **change})


def test_config_round_trip_and_cosem_defaults(tiny_config) -> None:
    assert TrainConfig.from_dict(tiny_config.to_dict()) == tiny_config
    defaults = TrainConfig(
        unet=tiny_config.unet, classes=tiny_config.classes, output_shape=(8, 8, 8)
    )
    assert defaults.lr == 5e-5 and defaults.betas == (0.95, 0.999)
    assert tiny_config.input_shape == (24, 24, 24)


def test_cross_entropy_training_runs(tmp_path: Path, tiny_config, sampler_for) -> None:
    config = tiny_config.replace(
        classes=resolve_classes(["mito", "er"]),
        loss="balanced_cross_entropy",
        unet={**tiny_config.unet.to_dict(), "out_channels": 3, "final_activation": "none"},
    )
    trainer = Trainer(config, sampler_for(config), tmp_path)
    records = trainer.fit(2)
    assert records[-1]["loss"] > 0 and (tmp_path / "metrics.jsonl").exists()


def test_sampler_must_match_config(tiny_config, sampler_for) -> None:
    other = tiny_config.replace(output_shape=[12, 12, 12])
    with pytest.raises(ValueError, match="sampler does not match"):
        Trainer(tiny_config, sampler_for(other))
