"""Class-balanced losses.

- :func:`balanced_mse` (COSEM): per class, foreground and background voxels (by the sign of the
  squashed distance target) contribute equally: with ``f`` the foreground fraction among the
  annotated voxels of the batch (clipped to ``[clip, 1 - clip]`` so an absent side does not
  explode), foreground voxels weigh ``0.5 / f`` and background ``0.5 / (1 - f)``. Without
  clipping the weights of a class sum to its number of annotated voxels, so the loss is
  ``0.5 * (mean error inside + mean error outside)``, averaged over classes.
- :func:`balanced_cross_entropy` (ASEM): every class index present among the annotated voxels
  (background included) contributes equally: the loss is the mean over present classes of
  their mean cross-entropy.

Tensors are (batch, channel, z, y, x); masks are (batch, 1 or channel, z, y, x), true where a
voxel is annotated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)

IGNORE_INDEX = -1


def balance_weights(
    foreground: torch.Tensor, mask: torch.Tensor, clip: float = 0.05
) -> torch.Tensor:
    """Per-voxel weights (B, C, ...) balancing foreground and background per class (channel)."""
    if not 0.0 <= clip < 0.5:
        raise ValueError(f"clip must be in [0, 0.5), got {clip!r}")
    m = mask.expand_as(foreground).to(torch.float32)
    fg = foreground.to(torch.float32) * m
    dims = [0, *range(2, foreground.ndim)]
    n = m.sum(dim=dims, keepdim=True).clamp_min(1.0)
    frac = (fg.sum(dim=dims, keepdim=True) / n).clamp(clip, 1.0 - clip)
    return (fg * (0.5 / frac) + (m - fg) * (0.5 / (1.0 - frac))).detach()


def balanced_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip: float = 0.05,
) -> torch.Tensor:
    """Class-balanced mean squared error of ``pred`` vs ``target`` (both (B, C, z, y, x))."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ")
    if mask is None:
        mask = torch.ones_like(target[:, :1], dtype=torch.bool)
    w = balance_weights(target > 0, mask, clip)
    dims = [0, *range(2, pred.ndim)]
    n = mask.expand_as(target).to(torch.float32).sum(dim=dims).clamp_min(1.0)
    per_class = (w * (pred.float() - target.float()) ** 2).sum(dim=dims) / n
    return per_class.mean()


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy of ``logits`` (B, K, z, y, x) vs class indices ``target``
    (B, z, y, x) int64 in ``0..K-1``, :data:`IGNORE_INDEX` where unannotated."""
    if logits.ndim != target.ndim + 1 or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {list(logits.shape)} and target {list(target.shape)} do not match "
            "(expected (B, K, z, y, x) and (B, z, y, x))"
        )
    k = logits.shape[1]
    annotated = target != IGNORE_INDEX
    safe = torch.where(annotated, target, torch.zeros_like(target))
    if int(safe.max()) >= k or int(safe.min()) < 0:
        raise ValueError(f"target class indices must be in 0..{k - 1} or {IGNORE_INDEX}")
    ce = F.cross_entropy(logits.float(), safe, reduction="none")
    counts = torch.bincount(safe[annotated], minlength=k).to(torch.float32)
    present = counts > 0
    n_present = present.sum().clamp_min(1)
    class_weight = torch.where(present, 1.0 / (counts.clamp_min(1.0) * n_present), 0.0)
    w = class_weight[safe] * annotated.to(torch.float32)
    return (w * ce).sum()


LOSSES = {"balanced_mse": balanced_mse, "balanced_cross_entropy": balanced_cross_entropy}
