"""PNG previews (as markdown images) of predictions and segmentations for asset metadata: the
middle slice of the raw beside the same slice with each class (or instance) coloured in the
ground-truth overlay palette."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core import labels, storage
from fib_assets.core.formats import open_volume
from fib_assets.core.geometry import Roi
from fib_assets.core.ml.classes import ClassSpec
from fib_assets.core.ml.predict import read_container_roi, read_prediction_attrs
from fib_assets.core.ml.targets import UINT8_THRESHOLD
from fib_assets.core.preview import markdown_image

Array = npt.NDArray[Any]


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


# --- inference outputs (no Dagster) -------------------------------------------------------------


def read_plane(path: str | Path, roi: Roi) -> Array:
    """One (1, y, x) ROI of a format variant as a uint8 (y, x) plane."""
    src = open_volume(path)
    try:
        plane: Array = np.asarray(src.read(roi))[0].astype(np.uint8)
        return plane
    finally:
        src.close()


def prediction_classes_present(container: str | Path, classes: Sequence[str]) -> list[str]:
    """Classes whose map exists in a prediction container (a local path or an s3:// URL)."""
    return [
        c
        for c in classes
        if storage.exists(storage.join(container, "predictions", c, "s0", "zarr.json"))
    ]


def prediction_preview(raw_path: str | Path, container: str | Path) -> str:
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


def instance_preview(raw_path: str | Path, container: str | Path, class_name: str) -> str:
    """Markdown: the middle slice of the raw beside it with one class's instances coloured
    (paths or s3:// URLs)."""
    array_json = storage.join(container, "instances", class_name, "s0", "zarr.json")
    shape = storage.read_json(array_json)["shape"]
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
