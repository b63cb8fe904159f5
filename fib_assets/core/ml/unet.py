"""A configurable 3D U-Net (COSEM 2021 / ASEM 2022 style) and its shape arithmetic.

Tensors are (batch, channel, z, y, x). Every level applies ``convs_per_level`` 3x3x3
convolutions + ReLU; level ``l`` is max-pooled by ``downsample[l]`` (per axis) on the way down
and brought back with a transposed convolution (kernel = stride = the factor, so no
checkerboard overlap) whose output is concatenated with the (centre-cropped) skip connection.
Widths are ``base_width * width_factor**l`` (COSEM: 12 * 6**l with downsampling (2,2,2),
(3,3,3), (3,3,3)). ``norm="batch"`` puts a batch normalization between each convolution and its
ReLU (COSEM has none; small CPU budgets converge much faster with it). In eval mode it applies
the running statistics, a fixed per-channel affine map, so it keeps the exact blockwise
equivalence below.

With ``padding="valid"`` the network shrinks its input by a fixed context and is exactly
translation-equivariant for shifts that are multiples of the total downsampling factor: this is
what makes blockwise inference with a halo equal to one whole-volume pass. Valid input sizes on
an axis are ``minimum + k * multiple``; :meth:`UNet.check_input_shape` names both when a shape
is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Padding = Literal["valid", "same"]
Activation = Literal["tanh", "sigmoid", "none"]
Norm = Literal["none", "batch"]
_PADDINGS = ("valid", "same")
_ACTIVATIONS = ("tanh", "sigmoid", "none")
_NORMS = ("none", "batch")


class ShapeError(ValueError):
    """An input shape the U-Net cannot process (names the shape, axis, minimum and multiple)."""


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; validated on construction, round-trips via dicts.

    ``downsample`` has ``levels - 1`` factors (z, y, x). ``final_activation`` is ``tanh`` for
    squashed signed-distance targets (COSEM), ``none`` for logits (cross-entropy, ASEM).
    """

    in_channels: int = 1
    out_channels: int = 1
    levels: int = 4
    base_width: int = 12
    width_factor: int = 6
    downsample: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (3, 3, 3), (3, 3, 3))
    padding: Padding = "valid"
    convs_per_level: int = 2
    kernel_size: int = 3
    final_activation: Activation = "tanh"
    norm: Norm = "none"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "levels", "base_width", "width_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {v!r}")
        if self.convs_per_level < 1 or isinstance(self.convs_per_level, bool):
            raise ValueError(
                f"UNetConfig.convs_per_level must be a positive int, got {self.convs_per_level!r}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"UNetConfig.kernel_size must be odd, got {self.kernel_size!r}")
        if self.padding not in _PADDINGS:
            raise ValueError(f"UNetConfig.padding must be one of {_PADDINGS}, got {self.padding!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"UNetConfig.norm must be one of {_NORMS}, got {self.norm!r}")
        if self.final_activation not in _ACTIVATIONS:
            raise ValueError(
                f"UNetConfig.final_activation must be one of {_ACTIVATIONS}, "
                f"got {self.final_activation!r}"
            )
        try:
            factors = tuple(tuple(int(f) for f in level) for level in self.downsample)
        except TypeError as err:
            raise ValueError(
                "UNetConfig.downsample must be a list of (z, y, x) factors, "
                f"got {self.downsample!r}"
            ) from err
        if len(factors) != self.levels - 1:
            raise ValueError(
                f"UNetConfig.downsample has {len(factors)} factors but levels={self.levels} needs "
                f"{self.levels - 1}: {[list(f) for f in factors]}"
            )
        for f in factors:
            if len(f) != 3 or any(x < 1 for x in f):
                raise ValueError(
                    "UNetConfig.downsample factors must be 3 positive ints (z, y, x), "
                    f"got {list(f)}"
                )
        object.__setattr__(self, "downsample", tuple((f[0], f[1], f[2]) for f in factors))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * self.width_factor**level for level in range(self.levels))

    @property
    def total_factor(self) -> tuple[int, int, int]:
        """Product of the downsampling factors per axis (z, y, x)."""
        f = [math.prod(level[a] for level in self.downsample) for a in range(3)]
        return (f[0], f[1], f[2])

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "levels": self.levels,
            "base_width": self.base_width,
            "width_factor": self.width_factor,
            "downsample": [list(f) for f in self.downsample],
            "padding": self.padding,
            "convs_per_level": self.convs_per_level,
            "kernel_size": self.kernel_size,
            "final_activation": self.final_activation,
            "norm": self.norm,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; known: {sorted(known)}")
        kwargs = dict(d)
        if "downsample" in kwargs:
            kwargs["downsample"] = tuple(tuple(f) for f in kwargs["downsample"])
        return cls(**kwargs)

    # --- shape arithmetic (per axis, no torch needed) ----------------------------------------

    def _axis_problem(self, n: int, axis: int) -> str | None:
        """Why size ``n`` on ``axis`` is not processable, or None when it is."""
        s = self.convs_per_level * (self.kernel_size - 1) if self.padding == "valid" else 0
        size = n
        skips = []
        for level in range(self.levels):
            size -= s
            if size < 1:
                return f"shrinks to {size} voxels after the level-{level} convolutions"
            skips.append(size)
            if level < self.levels - 1:
                f = self.downsample[level][axis]
                if size % f:
                    return (
                        f"{size} voxels at level {level} are not a multiple of its downsampling "
                        f"factor {f}"
                    )
                size //= f
        for level in range(self.levels - 2, -1, -1):
            size *= self.downsample[level][axis]
            if size > skips[level]:
                return f"the upsampled level {level} ({size}) exceeds its skip ({skips[level]})"
            size -= s
            if size < 1:
                return f"shrinks to {size} voxels after the level-{level} up convolutions"
        return None

    def _axis_output(self, n: int, axis: int) -> int:
        s = self.convs_per_level * (self.kernel_size - 1) if self.padding == "valid" else 0
        size = n
        for level in range(self.levels - 1):
            size = (size - s) // self.downsample[level][axis]
        size -= s
        for level in range(self.levels - 2, -1, -1):
            size = size * self.downsample[level][axis] - s
        return size

    def axis_rule(self, axis: int) -> tuple[int, int]:
        """(minimum, multiple): valid input sizes on ``axis`` are ``minimum + k * multiple``."""
        multiple = self.total_factor[axis]
        for n in range(1, 100 * multiple + 1000):
            if self._axis_problem(n, axis) is None:
                return n, multiple
        raise ValueError(f"no valid input size found on axis {axis} for {self.to_dict()}")

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise :class:`ShapeError` naming the shape, the axis, the minimum and the multiple."""
        dims = tuple(int(s) for s in shape)
        if len(dims) != 3:
            raise ShapeError(f"expected a spatial shape (z, y, x), got {list(shape)}")
        for axis, n in enumerate(dims):
            problem = self._axis_problem(n, axis)
            if problem is not None:
                lo, mult = self.axis_rule(axis)
                name = "zyx"[axis]
                raise ShapeError(
                    f"input shape {list(dims)} does not fit this U-Net ({self.padding} padding, "
                    f"downsampling {[list(f) for f in self.downsample]}): axis {name} = {n}: "
                    f"{problem}; valid sizes on axis {name} are {lo} + k * {mult} "
                    f"(minimum {lo}, multiple of {mult} beyond it), e.g. "
                    f"{self.valid_input_shape_at_least(dims)}"
                )

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """Spatial output shape (z, y, x) for a valid ``input_shape``."""
        self.check_input_shape(input_shape)
        out = [self._axis_output(int(n), a) for a, n in enumerate(input_shape)]
        return (out[0], out[1], out[2])

    def valid_input_shape_at_least(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid input shape >= ``shape`` per axis."""
        out = []
        for axis, n in enumerate(shape):
            lo, mult = self.axis_rule(axis)
            out.append(lo if n <= lo else lo + math.ceil((n - lo) / mult) * mult)
        return (out[0], out[1], out[2])

    def input_shape_for_output(self, output_shape: Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid input shape whose output is at least ``output_shape``."""
        out = []
        for axis, m in enumerate(output_shape):
            lo, mult = self.axis_rule(axis)
            n = lo
            while self._axis_output(n, axis) < int(m):
                n += mult
            out.append(n)
        return (out[0], out[1], out[2])

    @property
    def context(self) -> tuple[int, int, int]:
        """Voxels lost per side (z, y, x) with valid padding (0 with same padding)."""
        if self.padding == "same":
            return (0, 0, 0)
        ctx = []
        for axis in range(3):
            lo, _ = self.axis_rule(axis)
            ctx.append((lo - self._axis_output(lo, axis)) // 2)
        return (ctx[0], ctx[1], ctx[2])


class ConvBlock(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, n: int, kernel: int, padding: Padding, norm: Norm = "none"
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(
                nn.Conv3d(
                    c_in if i == 0 else c_out,
                    c_out,
                    kernel,
                    padding=kernel // 2 if padding == "same" else 0,
                    bias=norm == "none",
                )
            )
            if norm == "batch":
                layers.append(nn.BatchNorm3d(c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    lo = [(s - t) // 2 for s, t in zip(x.shape[-3:], shape, strict=True)]
    return x[
        ...,
        lo[0] : lo[0] + shape[0],
        lo[1] : lo[1] + shape[1],
        lo[2] : lo[2] + shape[2],
    ]


class UNet(nn.Module):
    """3D U-Net of a :class:`UNetConfig`; ``forward`` checks the input shape first."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        k, n, pad = config.kernel_size, config.convs_per_level, config.padding
        self.encoder = nn.ModuleList(
            ConvBlock(config.in_channels if lv == 0 else w[lv - 1], w[lv], n, k, pad, config.norm)
            for lv in range(config.levels)
        )
        self.pools = nn.ModuleList(nn.MaxPool3d(f, stride=f) for f in config.downsample)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(w[lv + 1], w[lv], kernel_size=f, stride=f)
            for lv, f in enumerate(config.downsample)
        )
        self.decoder = nn.ModuleList(
            ConvBlock(2 * w[lv], w[lv], n, k, pad, config.norm) for lv in range(config.levels - 1)
        )
        self.head = nn.Conv3d(w[0], config.out_channels, 1)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the contracting path (all levels' down convolutions)."""
        return list(self.encoder.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ShapeError(
                f"expected input (batch, {self.config.in_channels}, z, y, x), got {list(x.shape)}"
            )
        self.config.check_input_shape(x.shape[-3:])
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.config.levels - 1:
                skips.append(x)
                x = self.pools[level](x)
        for level in range(self.config.levels - 2, -1, -1):
            x = self.upsamplers[level](x)
            x = torch.cat([_center_crop(skips[level], x.shape[-3:]), x], dim=1)
            x = self.decoder[level](x)
        x = self.head(x)
        if self.config.final_activation == "tanh":
            return torch.tanh(x)
        if self.config.final_activation == "sigmoid":
            return torch.sigmoid(x)
        return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
