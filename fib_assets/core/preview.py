"""Small PNG previews for asset metadata (kept small: they are stored in the event log)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def to_uint8(plane: np.ndarray) -> np.ndarray:
    """Scale a 2D plane to uint8 between its 0.5 and 99.5 percentiles (uint8 passes through)."""
    if plane.dtype == np.uint8:
        return plane
    lo, hi = np.percentile(plane, [0.5, 99.5]) if plane.size else (0.0, 1.0)
    hi = max(hi, lo + 1)
    return np.clip((plane.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def png_bytes(plane: np.ndarray, *, max_side: int = 384) -> bytes:
    """Encode a 2D (rows, cols) plane as PNG, downscaled so its longer side is <= max_side px."""
    if plane.ndim != 2:
        raise ValueError(f"preview needs a 2D plane, got shape {plane.shape}")
    img = Image.fromarray(to_uint8(plane))
    scale = max(img.size) / max_side
    if scale > 1:
        img = img.resize((max(1, round(img.size[0] / scale)), max(1, round(img.size[1] / scale))))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def side_by_side(planes: list[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Place uint8 planes next to each other (top-aligned) on a white background."""
    planes = [to_uint8(p) for p in planes]
    h = max(p.shape[0] for p in planes)
    w = sum(p.shape[1] for p in planes) + gap * (len(planes) - 1)
    out = np.full((h, w), 255, dtype=np.uint8)
    x = 0
    for p in planes:
        out[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown with the PNG inlined as a data URI (what the Dagster UI renders in metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
