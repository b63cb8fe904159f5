"""Raw-data quality metrics for FIB-SEM volumes, computed blockwise.

The raw-volume assembler reads a volume as XY tiles of consecutive slices ("slabs", arrays
``(z, y, x)`` of native int16, uint16 or uint8) and never holds the whole volume. Each slab goes
through :func:`slab_statistics`, which returns additive per-slice sums for that tile;
:func:`combine_statistics` adds the tiles of each slice and turns the sums into per-slice metrics.
Lateral drift is measured separately on consecutive slices with :func:`lateral_shifts`. The
``check_*`` functions turn those tables into :class:`QCOutcome` verdicts against
:class:`QCThresholds`.

Metrics (all per slice ``z``):

* **saturation fraction** -- share of pixels at or beyond the detector extremes (``<= low`` or
  ``>= high``, e.g. the int16 limits).
* **brightness drift** -- end-to-end change of the slice mean along z from a robust (Theil-Sen)
  line fit, relative to the mean of the fitted line: ``slope * (z_last - z_first) / |fit(mid)|``.
  Intensities are taken in the data's own units, so the data's zero should be the detector's black
  level (the native int16 of a .dat file, not an arbitrarily shifted copy).
* **curtaining score** -- fraction of the slice's variance explained by narrow vertical streaks.
  Per tile, the column-mean profiles of the top and bottom halves are high-pass filtered (profile
  minus a Gaussian-smoothed copy, sigma :data:`CURTAIN_SMOOTH_PX`); their product summed over x
  and scaled by the tile height estimates the energy of structure that is constant along y
  (``streak_energy``). Multiplying two halves instead of squaring one profile cancels the
  pixel-noise floor (noise is independent between the halves, a curtain is not), and little cell
  structure runs straight through both halves of a tile. ``score = max(0, sum(streak_energy)) /
  sum(total_energy)`` over the tiles of the slice, ``total_energy`` being the summed squared
  deviation from each tile's mean. Larger tiles separate curtains from structure better: clean
  synthetic slices score < 0.01 with 128 px tiles and up to ~0.03 with 32 px tiles.
* **lateral shift** -- translation between consecutive slices by cross-correlation on a central
  crop (``skimage.registration.phase_cross_correlation`` with ``normalization=None``, 1/10 px
  precision): phase normalisation whitens the spectrum and lets the shot noise of FIB-SEM slices
  pick random peaks several px away, plain correlation does not.

Charging (bright smeared patches) has no check of its own: the patches are bright enough to clip,
so slices with charging fail the per-slice saturation check.

Pure numpy/scipy/scikit-image/pandas: this module never imports dagster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage, stats

__all__ = [
    "CURTAIN_SMOOTH_PX",
    "COMBINED_COLUMNS",
    "QCOutcome",
    "QCThresholds",
    "SHIFT_COLUMNS",
    "SLAB_COLUMNS",
    "check_brightness_drift",
    "check_curtaining",
    "check_lateral_drift",
    "check_saturation",
    "check_slice_continuity",
    "combine_statistics",
    "lateral_shifts",
    "slab_statistics",
]

#: Gaussian sigma (px) of the low-pass that is subtracted from column/row-mean profiles: streaks
#: narrower than about this width count as curtaining.
CURTAIN_SMOOTH_PX = 4.0

#: Columns of :func:`slab_statistics` (additive over the tiles of a slice, except ``z``).
SLAB_COLUMNS: tuple[str, ...] = (
    "z",
    "n",
    "sum",
    "sum_sq",
    "n_low",
    "n_high",
    "streak_energy",
    "total_energy",
    "tile_mean",
)
#: Columns of :func:`combine_statistics`.
COMBINED_COLUMNS: tuple[str, ...] = (
    "z",
    "n",
    "mean",
    "std",
    "n_low",
    "n_high",
    "saturation_fraction",
    "curtaining_score",
)
#: Columns of the lateral-shift table expected by :func:`check_lateral_drift`.
SHIFT_COLUMNS: tuple[str, ...] = ("z", "dy", "dx")


# ---------------------------------------------------------------------------------------------
# thresholds and outcomes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QCThresholds:
    """Pass/fail limits of the raw-data checks (defaults: clean synthetic data pass, each artefact
    of :mod:`fib_assets.core.acquisition.synthetic` fails its check).

    * ``max_saturation_fraction`` -- largest share of a slice's pixels at the detector extremes.
    * ``max_brightness_drift`` -- largest end-to-end relative change of the slice mean along z
      (robust line fit).
    * ``max_curtaining_score`` -- largest fraction of a slice's variance in vertical streaks
      (see the module docstring); clean synthetic slices score below 0.035 even with 32 px
      tiles, visibly curtained ones 0.08-0.3.
    * ``max_lateral_drift_px`` -- largest translation (px) between consecutive slices.
    """

    max_saturation_fraction: float = 0.005
    max_brightness_drift: float = 0.10
    max_curtaining_score: float = 0.05
    max_lateral_drift_px: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"threshold {f.name} must be a number, got {value!r}")
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(
                    f"threshold {f.name} must be a positive finite number, got {value}"
                )
            object.__setattr__(self, f.name, float(value))

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QCThresholds:
        """Build from a mapping; missing keys keep their defaults, unknown keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"QC thresholds must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"unknown QC threshold {key!r}; known thresholds: {known}")
        return cls(**dict(d))


@dataclass(frozen=True)
class QCOutcome:
    """Verdict of one check.

    ``value`` is compared with ``threshold`` (``passed`` iff no slice breaks it);
    ``offending_slices`` are the z indices (slice positions in the assembled volume) that break
    it; ``description`` is one sentence for a curator; ``details`` holds JSON-safe extras.
    """

    name: str
    passed: bool
    value: float
    threshold: float
    offending_slices: list[int]
    description: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def _ranges(zs: Sequence[int], limit: int = 8) -> str:
    """Compact 'a-b, c, ...' rendering of sorted ints for descriptions."""
    if not zs:
        return "none"
    parts: list[str] = []
    start = prev = zs[0]
    for z in list(zs[1:]) + [None]:
        if z is not None and z == prev + 1:
            prev = z
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if z is not None:
            start = prev = z
    text = ", ".join(parts[:limit])
    return text + (f", ... ({len(zs)} in all)" if len(parts) > limit else "")


# ---------------------------------------------------------------------------------------------
# blockwise statistics
# ---------------------------------------------------------------------------------------------


def _highpass(profiles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Profile minus its Gaussian-smoothed copy along the last axis (reflecting edges)."""
    smooth = ndimage.gaussian_filter1d(profiles, CURTAIN_SMOOTH_PX, axis=-1, mode="reflect")
    return np.asarray(profiles - smooth, dtype=np.float64)


def _streak_energy(sl: npt.NDArray[np.float64]) -> float:
    """Energy of vertical streaks (constant along y) in one 2D tile (y, x), noise floor removed.

    Column means of the top and bottom halves are high-passed along x; their dot product times
    the tile height estimates ``sum over pixels of streak**2``.
    """
    ny = sl.shape[0]
    half = ny // 2
    if half < 1:
        return 0.0
    top = sl[:half].mean(axis=0)
    bottom = sl[ny - half :].mean(axis=0)
    return float(ny * np.dot(_highpass(top), _highpass(bottom)))


def slab_statistics(slab: npt.NDArray[Any], *, z0: int, low: float, high: float) -> pd.DataFrame:
    """Additive per-slice sums of one XY tile of consecutive slices.

    ``slab`` is ``(z, y, x)`` (any integer or float dtype, native units); its first slice is
    volume slice ``z0``. ``low``/``high`` are the detector extremes (e.g. -32768/32767 for int16):
    pixels ``<= low`` / ``>= high`` count as saturated. Returns one row per slice with the columns
    :data:`SLAB_COLUMNS`: ``z``, ``n`` (pixels), ``sum``, ``sum_sq``, ``n_low``, ``n_high``,
    ``streak_energy`` (vertical-streak energy, may be slightly negative from noise),
    ``total_energy`` (sum of squared deviations from the tile mean) and ``tile_mean``. Feed the
    rows of all tiles to :func:`combine_statistics`.
    """
    arr = np.asarray(slab)
    if arr.ndim != 3:
        raise ValueError(f"slab must be (z, y, x), got shape {arr.shape}")
    rows = []
    for i in range(arr.shape[0]):
        raw = arr[i]
        sl = raw.astype(np.float64)
        n = int(sl.size)
        total = float(sl.sum())
        mean = total / n if n else 0.0
        dev = sl - mean
        rows.append(
            (
                int(z0) + i,
                n,
                total,
                float(np.square(sl).sum()),
                int(np.count_nonzero(raw <= low)),
                int(np.count_nonzero(raw >= high)),
                _streak_energy(sl),
                float(np.square(dev).sum()),
                mean,
            )
        )
    return pd.DataFrame(rows, columns=list(SLAB_COLUMNS))


def combine_statistics(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Add the tiles of each slice: columns :data:`COMBINED_COLUMNS`, one row per z, sorted.

    ``mean``/``std`` (population) are exact over all tiles of the slice (the standard deviation
    is pooled from per-tile deviations, which is numerically stable); ``saturation_fraction`` =
    ``(n_low + n_high) / n``; ``curtaining_score`` as in the module docstring.
    """
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in COMBINED_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    missing = [c for c in SLAB_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"slab statistics lack columns {missing}; use slab_statistics()")
    sums = df.groupby("z", sort=True)[
        ["n", "sum", "n_low", "n_high", "streak_energy", "total_energy"]
    ].sum()
    mean = sums["sum"] / sums["n"]
    between = df["n"] * (df["tile_mean"] - df["z"].map(mean)) ** 2
    m2 = sums["total_energy"] + between.groupby(df["z"]).sum()
    streaks = sums["streak_energy"].clip(lower=0.0)
    score = streaks / sums["total_energy"].where(sums["total_energy"] > 0)
    out = pd.DataFrame(
        {
            "z": sums.index.astype("int64"),
            "n": sums["n"].astype("int64").to_numpy(),
            "mean": mean.to_numpy(),
            "std": np.sqrt(np.maximum(m2.to_numpy(), 0.0) / sums["n"].to_numpy()),
            "n_low": sums["n_low"].astype("int64").to_numpy(),
            "n_high": sums["n_high"].astype("int64").to_numpy(),
            "saturation_fraction": ((sums["n_low"] + sums["n_high"]) / sums["n"]).to_numpy(),
            "curtaining_score": score.fillna(0.0).to_numpy(),
        }
    )
    return out.reset_index(drop=True)


def lateral_shifts(prev: npt.NDArray[Any], nxt: npt.NDArray[Any]) -> tuple[float, float]:
    """Translation (dy, dx) in px of ``nxt``'s content relative to ``prev`` (2D, same shape).

    Positive dy means the content moved towards larger y: ``nxt(y, x) ~ prev(y - dy, x - dx)``.
    Both slices are mean-subtracted and registered with
    ``skimage.registration.phase_cross_correlation(..., upsample_factor=10,
    normalization=None)``: plain cross-correlation, because phase normalisation amplifies the
    shot noise of single FIB-SEM slices into spurious peaks several px away (on clean synthetic
    slices of 48 px crops: up to 9 px with, below 1 px without). A blank slice gives (0, 0).
    Shifts larger than about a quarter of the crop are not reliable.
    """
    from skimage.registration import phase_cross_correlation

    a = np.asarray(prev, dtype=np.float64)
    b = np.asarray(nxt, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two 2D slices of one shape, got {a.shape} and {b.shape}")
    if a.std() == 0 or b.std() == 0:
        return 0.0, 0.0
    shift, _, _ = phase_cross_correlation(  # type: ignore[no-untyped-call]  # untyped skimage
        a - a.mean(), b - b.mean(), upsample_factor=10, normalization=None
    )
    # + 0.0 turns -0.0 into 0.0
    return float(-shift[0]) + 0.0, float(-shift[1]) + 0.0


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def check_slice_continuity(fib_slice_nums: Sequence[int], file_names: Sequence[str]) -> QCOutcome:
    """Gaps and duplicates in the FIBSliceNum sequence of the files in z (file-name) order.

    Passes iff the numbers increase by exactly one from file to file. ``value`` counts the
    problems: missing slice numbers + extra copies of a number + steps backwards.
    ``offending_slices`` are the z positions (indices into ``file_names``) of the file after a
    gap, of every repeated copy and of every step backwards.
    """
    nums = _ints(fib_slice_nums)
    names = [str(n) for n in file_names]
    if len(nums) != len(names):
        raise ValueError(f"{len(nums)} slice numbers but {len(names)} file names")
    offending: set[int] = set()
    gaps: list[dict[str, Any]] = []
    backwards: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    duplicates: dict[int, list[str]] = {}
    for i, num in enumerate(nums):
        if num in seen:
            offending.add(i)
            duplicates.setdefault(num, [names[seen[num]]]).append(names[i])
        else:
            seen[num] = i
        if i == 0:
            continue
        step = num - nums[i - 1]
        if step > 1:
            offending.add(i)
            gaps.append(
                {
                    "after_file": names[i - 1],
                    "before_file": names[i],
                    "missing": list(range(nums[i - 1] + 1, num)),
                }
            )
        elif step < 0:
            offending.add(i)
            backwards.append({"file": names[i], "slice_num": num, "previous": nums[i - 1]})
    n_missing = sum(len(g["missing"]) for g in gaps)
    n_extra = sum(len(v) - 1 for v in duplicates.values())
    value = float(n_missing + n_extra + len(backwards))
    problems = []
    for g in gaps:
        miss = g["missing"]
        label = f"{miss[0]}" if len(miss) == 1 else f"{miss[0]}-{miss[-1]}"
        problems.append(
            f"FIBSliceNum {label} missing between {g['after_file']} and {g['before_file']}"
        )
    for num, files in duplicates.items():
        problems.append(f"FIBSliceNum {num} appears {len(files)} times ({', '.join(files)})")
    for b in backwards:
        problems.append(f"{b['file']} steps back to FIBSliceNum {b['slice_num']}")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        noun = "problem" if value == 1 else "problems"
        description = f"Slice sequence broken ({value:g} {noun}, threshold 0): {shown}."
    else:
        first = f"{nums[0]}-{nums[-1]}" if nums else "none"
        description = (
            f"Slice sequence complete: {len(nums)} files, FIBSliceNum {first}, no gaps or "
            f"duplicates."
        )
    return QCOutcome(
        name="slice_continuity",
        passed=not problems,
        value=value,
        threshold=0.0,
        offending_slices=sorted(offending),
        description=description,
        details={
            "n_files": len(nums),
            "gaps": gaps,
            "duplicates": {str(k): v for k, v in duplicates.items()},
            "steps_backwards": backwards,
            "missing_slice_nums": [m for g in gaps for m in g["missing"]],
        },
    )


def check_saturation(stats: pd.DataFrame, t: QCThresholds) -> QCOutcome:
    """Per-slice share of pixels at the detector extremes against ``max_saturation_fraction``."""
    _require(stats, ["z", "saturation_fraction"], "QC statistics")
    thr = t.max_saturation_fraction
    frac = stats["saturation_fraction"].to_numpy(dtype=np.float64)
    zs = stats["z"].to_numpy()
    bad = _ints(zs[frac > thr])
    worst = int(np.argmax(frac)) if frac.size else -1
    value = float(frac[worst]) if frac.size else 0.0
    details: dict[str, Any] = {}
    if {"n", "n_low", "n_high"} <= set(stats.columns) and len(stats):
        n = float(stats["n"].sum())
        details = {
            "overall_fraction": float((stats["n_low"].sum() + stats["n_high"].sum()) / n),
            "low_fraction": float(stats["n_low"].sum() / n),
            "high_fraction": float(stats["n_high"].sum() / n),
        }
    if bad:
        description = (
            f"Saturation: {len(bad)} of {len(frac)} slices have more than {thr:.2%} of pixels at "
            f"the detector limits (worst {value:.2%} at z={int(zs[worst])}; slices {_ranges(bad)})."
        )
    else:
        description = (
            f"Saturation OK: at most {value:.2%} of a slice's pixels are at the detector limits "
            f"(threshold {thr:.2%})."
        )
    details["worst_slice"] = int(zs[worst]) if frac.size else None
    return QCOutcome("saturation", not bad, value, thr, bad, description, details)


def _robust_line(z: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Theil-Sen slope and intercept; above 256 points, fitted to medians of 256 z bins so
    memory stays O(1) for volumes of many thousand slices."""
    if z.size > 256:
        order = np.argsort(z)
        bins = np.array_split(order, 256)
        z = np.array([np.median(z[b]) for b in bins])
        y = np.array([np.median(y[b]) for b in bins])
    res = stats.theilslopes(y, z)
    return float(res[0]), float(res[1])


def check_brightness_drift(stats: pd.DataFrame, t: QCThresholds) -> QCOutcome:
    """End-to-end relative change of the slice mean along z (Theil-Sen fit).

    ``value = |slope * (z_last - z_first)| / |fit(z_mid)|``. Offending slices are those whose
    fitted mean differs from the fitted mean of the first slice by more than the threshold
    (relative to the same reference), i.e. where the drift has become too large.
    """
    _require(stats, ["z", "mean"], "QC statistics")
    thr = t.max_brightness_drift
    df = stats[np.isfinite(stats["mean"].to_numpy(dtype=np.float64))]
    z = df["z"].to_numpy(dtype=np.float64)
    m = df["mean"].to_numpy(dtype=np.float64)
    if z.size < 2:
        return QCOutcome(
            "brightness_drift",
            True,
            0.0,
            thr,
            [],
            f"Brightness drift not measurable on {z.size} slice(s) (threshold {thr:.0%}).",
            {},
        )
    slope, intercept = _robust_line(z, m)
    z_first, z_last = float(z.min()), float(z.max())
    fit_first = intercept + slope * z_first
    fit_last = intercept + slope * z_last
    ref = abs(intercept + slope * (z_first + z_last) / 2)
    ref = ref if ref > 0 else max(float(np.abs(m).max()), 1.0)
    signed = (fit_last - fit_first) / ref
    value = abs(signed)
    rel_from_start = np.abs(slope * (z - z_first)) / ref
    bad = _ints(z[rel_from_start > thr])
    direction = "darker" if signed < 0 else "brighter"
    if bad:
        description = (
            f"Brightness drift: slices get {value:.0%} {direction} from z={int(z_first)} to "
            f"z={int(z_last)} (robust fit), above the {thr:.0%} limit from z={bad[0]} on."
        )
    else:
        description = (
            f"Brightness stable: slice mean changes {value:.1%} from first to last slice "
            f"(robust fit; threshold {thr:.0%})."
        )
    details = {
        "relative_drift": signed,
        "slope_per_slice": slope,
        "fit_first": fit_first,
        "fit_last": fit_last,
        "reference_mean": ref,
        "method": "Theil-Sen fit of slice mean vs z",
    }
    return QCOutcome("brightness_drift", not bad, value, thr, bad, description, details)


def check_curtaining(stats: pd.DataFrame, t: QCThresholds) -> QCOutcome:
    """Per-slice curtaining score (fraction of variance in vertical streaks) vs the threshold."""
    _require(stats, ["z", "curtaining_score"], "QC statistics")
    thr = t.max_curtaining_score
    score = stats["curtaining_score"].to_numpy(dtype=np.float64)
    zs = stats["z"].to_numpy()
    bad = _ints(zs[score > thr])
    worst = int(np.argmax(score)) if score.size else -1
    value = float(score[worst]) if score.size else 0.0
    if bad:
        description = (
            f"Curtaining: vertical streaks carry more than {thr:.1%} of the image variance in "
            f"{len(bad)} of {len(score)} slices (worst {value:.1%} at z={int(zs[worst])}; "
            f"slices {_ranges(bad)})."
        )
    else:
        description = (
            f"No curtaining: vertical streaks carry at most {value:.1%} of a slice's variance "
            f"(threshold {thr:.1%})."
        )
    details = {
        "median_score": float(np.median(score)) if score.size else 0.0,
        "worst_slice": int(zs[worst]) if score.size else None,
        "smoothing_sigma_px": CURTAIN_SMOOTH_PX,
    }
    return QCOutcome("curtaining", not bad, value, thr, bad, description, details)


def check_lateral_drift(shifts_zyx: pd.DataFrame, t: QCThresholds) -> QCOutcome:
    """Largest translation between consecutive slices (rows: ``z``, ``dy``, ``dx`` = shift from
    slice z-1 to z, px) against ``max_lateral_drift_px``."""
    _require(shifts_zyx, SHIFT_COLUMNS, "lateral shift table")
    thr = t.max_lateral_drift_px
    df = shifts_zyx.sort_values("z")
    dy = df["dy"].to_numpy(dtype=np.float64)
    dx = df["dx"].to_numpy(dtype=np.float64)
    zs = df["z"].to_numpy()
    mag = np.hypot(dy, dx)
    if mag.size == 0:
        return QCOutcome(
            "lateral_drift",
            True,
            0.0,
            thr,
            [],
            f"Lateral drift not measurable (fewer than two slices; threshold {thr:g} px).",
            {},
        )
    bad = _ints(zs[mag > thr])
    worst = int(np.argmax(mag))
    value = float(mag[worst])
    cum = np.hypot(np.cumsum(dy), np.cumsum(dx))
    if bad:
        description = (
            f"Lateral drift: {len(bad)} slice(s) jump by more than {thr:g} px from the previous "
            f"one (worst {value:.1f} px at z={int(zs[worst])}; slices {_ranges(bad)}); the "
            f"volume needs alignment."
        )
    else:
        description = (
            f"Slices aligned: at most {value:.2f} px shift between consecutive slices "
            f"(threshold {thr:g} px)."
        )
    details = {
        "worst_slice": int(zs[worst]),
        "max_cumulative_px": float(cum.max()),
        "median_shift_px": float(np.median(mag)),
    }
    return QCOutcome("lateral_drift", not bad, value, thr, bad, description, details)
