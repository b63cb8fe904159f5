from __future__ import annotations

import pytest
import torch

from fib_assets.core.ml.unet import ShapeError, UNet, UNetConfig

TINY = {"levels": 3, "base_width": 2, "width_factor": 2, "downsample": [[2, 2, 2], [1, 2, 2]]}


@pytest.mark.parametrize(
    ("padding", "shape", "expected"),
    [
        ("valid", (36, 44, 44), (4, 4, 4)),
        ("valid", (40, 52, 52), (8, 12, 12)),
        ("same", (8, 16, 16), (8, 16, 16)),
        ("same", (10, 20, 12), (10, 20, 12)),
    ],
    ids=["valid-min", "valid-larger", "same-min", "same-anisotropic"],
)
def test_output_shape(padding: str, shape: tuple[int, int, int], expected: tuple[int, ...]) -> None:
    config = UNetConfig.from_dict({**TINY, "padding": padding, "out_channels": 3})
    model = UNet(config)
    assert config.output_shape(shape) == expected
    y = model(torch.randn(2, 1, *shape))
    assert tuple(y.shape) == (2, 3, *expected)
    assert float(y.detach().abs().max()) <= 1.0  # tanh head


def test_valid_shape_rule_and_context() -> None:
    config = UNetConfig.from_dict(TINY)
    assert config.axis_rule(0) == (34, 2)
    assert config.axis_rule(1) == (44, 4)
    assert config.context == (16, 20, 20)
    assert config.input_shape_for_output((6, 8, 8)) == (38, 48, 48)
    assert config.output_shape((38, 48, 48)) == (6, 8, 8)


def test_cosem_defaults() -> None:
    config = UNetConfig()
    assert config.widths == (12, 72, 432, 2592)
    assert config.downsample == ((2, 2, 2), (3, 3, 3), (3, 3, 3))
    assert config.total_factor == (18, 18, 18)
    assert config.axis_rule(0) == (162, 18)  # output 18 + k * 18


def test_backward_reaches_every_parameter() -> None:
    model = UNet(UNetConfig.from_dict({**TINY, "padding": "same"}))
    y = model(torch.randn(1, 1, 8, 16, 16))
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("padding", "shape", "needle"),
    [
        ("valid", (37, 44, 44), "axis z = 37"),
        ("valid", (36, 46, 44), "valid sizes on axis y are 44 + k * 4"),
        ("valid", (20, 44, 44), "minimum 34"),
        ("same", (8, 15, 16), "multiple of 4"),
    ],
    ids=["valid-odd", "valid-not-multiple", "valid-too-small", "same-not-multiple"],
)
def test_bad_shapes_raise_naming_the_rule(
    padding: str, shape: tuple[int, ...], needle: str
) -> None:
    model = UNet(UNetConfig.from_dict({**TINY, "padding": padding}))
    with pytest.raises(ShapeError) as err:
        model(torch.randn(1, 1, *shape))
    assert needle in str(err.value)
    assert str(list(shape)) in str(err.value)


def test_wrong_channels_raise() -> None:
    model = UNet(UNetConfig.from_dict({**TINY, "padding": "same"}))
    with pytest.raises(ShapeError, match=r"\(batch, 1, z, y, x\)"):
        model(torch.randn(1, 2, 8, 16, 16))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"levels": 4}, "needs 3"),
        ({"padding": "reflect"}, "padding"),
        ({"kernel_size": 4}, "odd"),
        ({"base_width": 0}, "base_width"),
        ({"downsample": [[2, 2], [2, 2, 2]]}, "3 positive ints"),
        ({"bogus": 1}, "unknown UNetConfig keys"),
        ({"norm": "group"}, "norm must be one of"),
    ],
)
def test_config_validation_names_bad_value(change: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        UNetConfig.from_dict({**TINY, **change})


def test_config_round_trip() -> None:
    config = UNetConfig.from_dict({**TINY, "final_activation": "none"})
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_batch_norm_layers_and_round_trip() -> None:
    config = UNetConfig.from_dict({**TINY, "padding": "same", "norm": "batch"})
    assert UNetConfig.from_dict(config.to_dict()) == config
    model = UNet(config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    # one per convolution: 2 per encoder level (3) and per decoder level (2)
    assert len(norms) == 2 * (3 + 2)
    plain = UNet(UNetConfig.from_dict({**TINY, "padding": "same"}))
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in plain.modules())
    # checkpoints written before the option existed have no "norm": they load as plain nets
    legacy = {k: v for k, v in plain.config.to_dict().items() if k != "norm"}
    assert UNetConfig.from_dict(legacy).norm == "none"
    # training mode updates the running statistics, eval mode applies them unchanged
    model.train()
    model(torch.randn(2, 1, 8, 16, 16) * 3 + 5)
    assert float(norms[0].running_mean.abs().max()) > 0
    model.eval()
    x = torch.randn(1, 1, 8, 16, 16)
    before = [n.running_mean.clone() for n in norms]
    assert torch.equal(model(x), model(x))
    assert all(torch.equal(b, n.running_mean) for b, n in zip(before, norms, strict=True))
