"""The benchmark tables of the curator loop (no Dagster): segmentation quality with bootstrap
confidence intervals, metric gain per curator-minute and per device-hour for each intervention
point, and the infrastructure/cost table, each with its great-expectations 1.x suite.

Tables are long pandas DataFrames with fixed columns (``*_COLUMNS``) so that Parquet files of
different runs concatenate. Every aggregate is over a seeded random sample of regions
(:func:`fib_assets.core.benchmark.sample_regions`), never a hand-picked one.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fib_assets.core import storage

# --------------------------------------------------------------------------------------------
# price table

PRICES_ENV = "FIB_ASSETS_PRICES"
DEFAULT_PRICES = Path(__file__).resolve().parents[1] / "config" / "prices.yaml"
INFRASTRUCTURES = ("local_cpu", "local_gpu", "cloud_gpu", "shared_cluster", "small_cluster")
TIERS = ("owned", "on_demand", "spot", "institutional")
# what the step's process says about where it runs (set in the pod spec / shell, never guessed)
INFRASTRUCTURE_ENV = "FIB_ASSETS_INFRASTRUCTURE"
INSTANCE_TYPE_ENV = "FIB_ASSETS_INSTANCE_TYPE"
PRICE_TIER_ENV = "FIB_ASSETS_PRICE_TIER"


class PriceTableError(ValueError):
    """A price table that breaks the schema; the message names the file and the entry."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: {problem}")


@dataclass(frozen=True)
class Rate:
    """The hourly price of one instance type on one infrastructure and tier (USD per
    instance-hour; ``None`` when nobody has looked it up)."""

    infrastructure: str
    tier: str
    instance_type: str
    usd_per_hour: float | None
    gpus: int
    source: str
    retrieved: str | None
    verified: bool
    gpu_model: str | None = None


@dataclass(frozen=True)
class PriceTable:
    path: str
    currency: str
    date: str
    rates: tuple[Rate, ...]

    def rate(self, infrastructure: str, tier: str | None, instance_type: str | None) -> Rate | None:
        """The rate for a run: exact instance type and tier if given, else the only rate of the
        infrastructure (and tier); ``None`` when the table has no single answer."""
        cands = [r for r in self.rates if r.infrastructure == infrastructure]
        if tier:
            cands = [r for r in cands if r.tier == tier]
        if instance_type:
            cands = [r for r in cands if r.instance_type == instance_type]
        return cands[0] if len(cands) == 1 else None


def load_price_table(path: Path | str | None = None) -> PriceTable:
    """Read and validate the price table (``$FIB_ASSETS_PRICES`` or the packaged
    ``fib_assets/config/prices.yaml``)."""
    p = Path(path or os.environ.get(PRICES_ENV) or DEFAULT_PRICES)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise PriceTableError(p, "file", "not found") from None
    except yaml.YAMLError as err:
        raise PriceTableError(p, "file", f"not valid YAML ({err})") from None
    if not isinstance(doc, dict):
        raise PriceTableError(p, "file", "must be a mapping with currency, date and rates")
    for key in ("currency", "date", "rates"):
        if key not in doc:
            raise PriceTableError(p, key, "missing")
    if doc["currency"] != "USD":
        raise PriceTableError(p, "currency", f"only USD is supported, got {doc['currency']!r}")
    if not isinstance(doc["rates"], list) or not doc["rates"]:
        raise PriceTableError(p, "rates", "must be a non-empty list")
    rates = []
    seen = set()
    for i, entry in enumerate(doc["rates"]):
        where = f"rates[{i}]"
        if not isinstance(entry, dict):
            raise PriceTableError(p, where, "must be a mapping")
        for key in ("infrastructure", "tier", "instance_type", "source", "usd_per_hour"):
            if key not in entry:
                raise PriceTableError(p, f"{where}.{key}", "missing")
        if entry["infrastructure"] not in INFRASTRUCTURES:
            raise PriceTableError(
                p,
                f"{where}.infrastructure",
                f"{entry['infrastructure']!r} not in {INFRASTRUCTURES}",
            )
        if entry["tier"] not in TIERS:
            raise PriceTableError(p, f"{where}.tier", f"{entry['tier']!r} not in {TIERS}")
        price = entry["usd_per_hour"]
        if price is not None and (
            not isinstance(price, int | float) or isinstance(price, bool) or price < 0
        ):
            raise PriceTableError(
                p, f"{where}.usd_per_hour", f"must be a number >= 0 or null, got {price!r}"
            )
        if not str(entry["source"]).strip():
            raise PriceTableError(p, f"{where}.source", "every rate needs its source")
        gpus = entry.get("gpus", 0)
        if not isinstance(gpus, int) or gpus < 0:
            raise PriceTableError(p, f"{where}.gpus", f"must be an integer >= 0, got {gpus!r}")
        rate_key = (entry["infrastructure"], entry["tier"], entry["instance_type"])
        if rate_key in seen:
            raise PriceTableError(p, where, f"duplicate rate for {rate_key}")
        seen.add(rate_key)
        retrieved = entry.get("retrieved")
        rates.append(
            Rate(
                infrastructure=entry["infrastructure"],
                tier=entry["tier"],
                instance_type=str(entry["instance_type"]),
                usd_per_hour=None if price is None else float(price),
                gpus=gpus,
                source=" ".join(str(entry["source"]).split()),
                retrieved=None if retrieved is None else str(retrieved),
                verified=bool(entry.get("verified", False)),
                gpu_model=entry.get("gpu_model"),
            )
        )
    return PriceTable(str(p), "USD", str(doc["date"]), tuple(rates))


def infrastructure_of(
    device: str, deployment: str, environ: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """Where a step ran, as the process running it knows: ``$FIB_ASSETS_INFRASTRUCTURE``
    (set by the operator in the pod spec or shell: cloud_gpu, shared_cluster, ...), else
    ``local_cpu``/``local_gpu`` for the local deployment from the torch device, else
    ``unknown`` (a Kubernetes step whose operator did not say). Instance type and price tier
    come from ``$FIB_ASSETS_INSTANCE_TYPE`` / ``$FIB_ASSETS_PRICE_TIER``."""
    env = os.environ if environ is None else environ
    declared = env.get(INFRASTRUCTURE_ENV)
    if declared:
        if declared not in INFRASTRUCTURES:
            raise ValueError(f"${INFRASTRUCTURE_ENV}={declared!r} is not one of {INFRASTRUCTURES}")
        infra = declared
    elif deployment == "local":
        infra = "local_gpu" if device.startswith("cuda") else "local_cpu"
    else:
        infra = "unknown"
    tier = env.get(PRICE_TIER_ENV) or ("owned" if infra in ("local_cpu", "local_gpu") else None)
    if tier is not None and tier not in TIERS:
        raise ValueError(f"${PRICE_TIER_ENV}={tier!r} is not one of {TIERS}")
    instance = env.get(INSTANCE_TYPE_ENV) or ("workstation" if infra == "local_cpu" else None)
    return {"infrastructure": infra, "price_tier": tier, "instance_type": instance}


# --------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(
    values: Sequence[float], *, seed: int, n_resamples: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile-bootstrap confidence interval (scipy.stats.bootstrap,
    seeded). One value gives a degenerate interval (lower = mean = upper): report ``n`` beside it.
    NaN values are dropped; no value at all raises."""
    from scipy import stats

    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    mean = float(arr.mean())
    if arr.size == 1 or np.all(arr == arr[0]):
        return mean, mean, mean
    res = stats.bootstrap(
        (arr,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo = float(res.confidence_interval.low)
    hi = float(res.confidence_interval.high)
    # the percentile interval always contains the sample mean for the mean statistic up to
    # float rounding; clamp so "lower <= point <= upper" holds exactly
    return mean, min(lo, mean), max(hi, mean)


# --------------------------------------------------------------------------------------------
# tables

# metrics of the evaluation table (core/metrics computes them); higher is better except
# the Hausdorff distances (nm)
METRICS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "dice_tolerance",
    "dice_band",
    "hausdorff_nm",
    "hausdorff95_nm",
    "instance_f1",
    "cellmap_score",
)
LOWER_IS_BETTER = frozenset({"hausdorff_nm", "hausdorff95_nm"})
EVALUATION_KEYS = ["region", "experiment", "organelle"]
EVALUATION_COLUMNS = [
    *EVALUATION_KEYS,
    "curator_intervention",
    "ground_truth_revision",
    "n_crops",
    "true_voxels",
    "predicted_voxels",
    "true_instances",
    "predicted_instances",
    *METRICS,
]
SEGMENTATION_KEYS = ["experiment", "organelle", "metric"]
SEGMENTATION_COLUMNS = [
    *SEGMENTATION_KEYS,
    "curator_intervention",
    "n_regions",
    "regions",
    "mean",
    "ci_low",
    "ci_high",
    "confidence",
    "seed",
]
INTERVENTION_KEYS = ["experiment", "organelle"]
INTERVENTION_COLUMNS = [
    *INTERVENTION_KEYS,
    "curator_intervention",
    "baseline",
    "metric",
    "baseline_value",
    "value",
    "gain",
    "curator_minutes",
    "device_hours",
    "device",
    "gain_per_curator_hour",
    "gain_per_device_hour",
    "n_regions",
]
INFRASTRUCTURE_KEYS = ["run_id", "step", "partition"]
INFRASTRUCTURE_COLUMNS = [
    *INFRASTRUCTURE_KEYS,
    "kind",
    "experiment",
    "infrastructure",
    "price_tier",
    "instance_type",
    "device",
    "wall_time_s",
    "device_hours",
    "usd_per_hour",
    "cost_usd",
    "price_source",
    "price_verified",
    "price_table_date",
]


def segmentation_table(
    evaluation: pd.DataFrame,
    sample: Sequence[str],
    *,
    seed: int,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per experiment × organelle × metric: mean over the sampled test regions with a bootstrap
    CI. Regions outside ``sample`` are ignored; a metric that is NaN for every sampled region
    (e.g. Hausdorff with empty masks) gives no row."""
    missing = sorted(set(sample) - set(evaluation["region"]))
    if missing:
        raise ValueError(f"the evaluation table has no rows for sampled regions {missing}")
    sub = evaluation[evaluation["region"].isin(sample)]
    rows = []
    for (exp, org), grp in sub.groupby(["experiment", "organelle"], sort=True):
        intervention = str(grp["curator_intervention"].iloc[0])
        for metric in METRICS:
            vals = [float(v) for v in grp[metric] if not pd.isna(v)]
            if not vals:
                continue
            mean, lo, hi = bootstrap_ci(vals, seed=seed, n_resamples=n_resamples, level=level)
            regions_used = sorted(grp.loc[~grp[metric].isna(), "region"])
            rows.append(
                [
                    exp,
                    org,
                    metric,
                    intervention,
                    len(vals),
                    ",".join(regions_used),
                    mean,
                    lo,
                    hi,
                    level,
                    seed,
                ]  # fmt: skip
            )
    return pd.DataFrame(rows, columns=SEGMENTATION_COLUMNS)


@dataclass(frozen=True)
class InterventionCost:
    """What an experiment's intervention cost: curator minutes (effort model or logged), and
    the device-hours of training it (wall hours × devices) on ``device``."""

    experiment: str
    curator_intervention: str
    baseline: str | None
    curator_minutes: float
    device_hours: float
    device: str


def intervention_table(
    segmentation: pd.DataFrame, costs: Iterable[InterventionCost], *, metric: str = "dice"
) -> pd.DataFrame:
    """For each experiment with an intervention and a baseline present in ``segmentation``: the
    gain of ``metric`` over its baseline per organelle, per curator-hour and per device-hour
    (a gain per hour is NaN when the hours are zero: a free intervention has no rate)."""
    sub = segmentation[segmentation["metric"] == metric].set_index(["experiment", "organelle"])
    rows = []
    for c in costs:
        if c.baseline is None or c.curator_intervention == "none":
            continue
        for org in sorted({o for (e, o) in sub.index if e == c.experiment}):
            if (c.baseline, org) not in sub.index:
                continue
            value = float(sub.loc[(c.experiment, org), "mean"])
            base = float(sub.loc[(c.baseline, org), "mean"])
            gain = value - base if metric not in LOWER_IS_BETTER else base - value
            n = int(
                min(
                    sub.loc[(c.experiment, org), "n_regions"],
                    sub.loc[(c.baseline, org), "n_regions"],
                )
            )
            rows.append(
                [
                    c.experiment,
                    org,
                    c.curator_intervention,
                    c.baseline,
                    metric,
                    base,
                    value,
                    gain,
                    c.curator_minutes,
                    c.device_hours,
                    c.device,
                    gain / (c.curator_minutes / 60.0) if c.curator_minutes > 0 else math.nan,
                    gain / c.device_hours if c.device_hours > 0 else math.nan,
                    n,
                ]  # fmt: skip
            )
    return pd.DataFrame(rows, columns=INTERVENTION_COLUMNS)


@dataclass(frozen=True)
class ComputeRun:
    """One training or inference step as recorded by the instance (no guessing)."""

    run_id: str
    step: str
    partition: str
    kind: str  # training | inference
    experiment: str
    device: str
    wall_time_s: float
    infrastructure: str
    price_tier: str | None
    instance_type: str | None
    devices: int = 1


def infrastructure_table(runs: Iterable[ComputeRun], prices: PriceTable) -> pd.DataFrame:
    """One row per recorded run: device-hours and cost from the price table. A run whose
    infrastructure has no unambiguous rate (or a null one) keeps its device-hours and gets
    cost NaN with price_source 'no rate in <table>': nothing is invented."""
    rows = []
    for r in runs:
        hours = r.wall_time_s / 3600.0 * max(r.devices, 1)
        rate = prices.rate(r.infrastructure, r.price_tier, r.instance_type)
        price = rate.usd_per_hour if rate else None
        rows.append(
            [
                r.run_id,
                r.step,
                r.partition,
                r.kind,
                r.experiment,
                r.infrastructure,
                r.price_tier or "",
                r.instance_type or "",
                r.device,
                r.wall_time_s,
                hours,
                math.nan if price is None else price,
                math.nan if price is None else price * r.wall_time_s / 3600.0,
                rate.source if rate and price is not None else f"no rate in {prices.path}",
                bool(rate.verified) if rate else False,
                prices.date,
            ]  # fmt: skip
        )
    return pd.DataFrame(rows, columns=INFRASTRUCTURE_COLUMNS)


# --------------------------------------------------------------------------------------------
# great-expectations suites


def run_suite(df: pd.DataFrame, name: str, expectations: Sequence[Any]) -> dict[str, Any]:
    """Validate ``df`` with great-expectations 1.x (ephemeral context, suite built in code).
    Returns ``{"success", "evaluated", "failed": [expectation types]}``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network from a check
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(name).add_dataframe_asset("table")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": df}
    )
    suite = gx.ExpectationSuite(name=name)
    for exp in expectations:
        suite.add_expectation(exp)
    result = batch.validate(suite)
    failed = [
        r.expectation_config.type
        for r in result.results
        if not r.success and r.expectation_config is not None
    ]
    return {"success": bool(result.success), "evaluated": len(result.results), "failed": failed}


def gx_expectations() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx.expectations  # GX does not re-export its expectation classes for mypy


def _unit_interval(e: Any, columns: Iterable[str]) -> list[Any]:
    return [
        e.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0) for c in columns
    ]


def validate_evaluation(df: pd.DataFrame, expected_regions: Sequence[str]) -> dict[str, Any]:
    """Columns exact, one row per region × experiment × organelle, scores in [0, 1], distances
    >= 0, and every expected (test) region present."""
    e = gx_expectations()
    return run_suite(
        df,
        "evaluation",
        [
            e.ExpectTableColumnsToMatchOrderedList(column_list=EVALUATION_COLUMNS),
            e.ExpectCompoundColumnsToBeUnique(column_list=EVALUATION_KEYS),
            e.ExpectTableRowCountToBeBetween(min_value=1),
            *_unit_interval(
                e, [m for m in METRICS if m not in LOWER_IS_BETTER and m != "cellmap_score"]
            ),
            e.ExpectColumnValuesToBeBetween(column="cellmap_score", min_value=0.0, max_value=1.0),
            e.ExpectColumnValuesToBeBetween(column="hausdorff_nm", min_value=0.0),
            e.ExpectColumnValuesToBeBetween(column="hausdorff95_nm", min_value=0.0),
            e.ExpectColumnValuesToBeBetween(column="true_voxels", min_value=0),
            e.ExpectColumnValuesToBeInSet(column="region", value_set=list(expected_regions)),
            e.ExpectColumnDistinctValuesToContainSet(
                column="region", value_set=list(expected_regions)
            ),
        ],
    )


def validate_segmentation(df: pd.DataFrame, n_regions: int) -> dict[str, Any]:
    """Columns exact, unique keys, CI lower <= point <= upper, and every row aggregated over the
    number of regions the sample asked for (fewer fails the check)."""
    e = gx_expectations()
    return run_suite(
        df,
        "segmentation_benchmark",
        [
            e.ExpectTableColumnsToMatchOrderedList(column_list=SEGMENTATION_COLUMNS),
            e.ExpectCompoundColumnsToBeUnique(column_list=SEGMENTATION_KEYS),
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="mean", column_B="ci_low", or_equal=True
            ),
            e.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="ci_high", column_B="mean", or_equal=True
            ),
            e.ExpectColumnValuesToBeBetween(
                column="n_regions", min_value=n_regions, max_value=n_regions
            ),
            e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.5, max_value=1.0),
            e.ExpectColumnValuesToBeInSet(column="metric", value_set=list(METRICS)),
        ],
    )


def validate_intervention(df: pd.DataFrame, n_regions: int) -> dict[str, Any]:
    e = gx_expectations()
    return run_suite(
        df,
        "intervention_benchmark",
        [
            e.ExpectTableColumnsToMatchOrderedList(column_list=INTERVENTION_COLUMNS),
            e.ExpectCompoundColumnsToBeUnique(column_list=INTERVENTION_KEYS),
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnValuesToBeBetween(column="curator_minutes", min_value=0.0),
            e.ExpectColumnValuesToBeBetween(column="device_hours", min_value=0.0),
            e.ExpectColumnValuesToBeBetween(column="gain", min_value=-1.0, max_value=1.0),
            e.ExpectColumnValuesToNotBeNull(column="baseline"),
            e.ExpectColumnValuesToBeBetween(
                column="n_regions", min_value=n_regions, max_value=n_regions
            ),
        ],
    )


def validate_infrastructure(df: pd.DataFrame, known: Sequence[str]) -> dict[str, Any]:
    e = gx_expectations()
    return run_suite(
        df,
        "infrastructure_benchmark",
        [
            e.ExpectTableColumnsToMatchOrderedList(column_list=INFRASTRUCTURE_COLUMNS),
            e.ExpectCompoundColumnsToBeUnique(column_list=INFRASTRUCTURE_KEYS),
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnValuesToBeInSet(column="kind", value_set=["training", "inference"]),
            e.ExpectColumnValuesToBeInSet(column="infrastructure", value_set=list(known)),
            e.ExpectColumnValuesToBeBetween(column="wall_time_s", min_value=0.0, strict_min=True),
            e.ExpectColumnValuesToBeBetween(column="device_hours", min_value=0.0, strict_min=True),
            e.ExpectColumnValuesToBeBetween(column="cost_usd", min_value=0.0),
        ],
    )


# --------------------------------------------------------------------------------------------
# presentation


def markdown_table(
    df: pd.DataFrame, columns: Sequence[str], fmt: Mapping[str, Callable[[Any], str]] | None = None
) -> str:
    """A Markdown table of ``columns`` (numbers to 3 decimals unless ``fmt`` says otherwise)."""
    fmt = fmt or {}

    def cell(col: str, v: Any) -> str:
        if col in fmt:
            return fmt[col](v)
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines)


def plot_intervals(
    df: pd.DataFrame, *, label: Sequence[str], value: str, low: str, high: str, title: str
) -> bytes:
    """Horizontal point-and-interval plot (PNG bytes) of one row per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [" / ".join(str(row[c]) for c in label) for _, row in df.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=80)
    y = np.arange(len(names))
    vals = df[value].to_numpy(dtype=float)
    err = np.vstack([vals - df[low].to_numpy(dtype=float), df[high].to_numpy(dtype=float) - vals])
    ax.errorbar(vals, y, xerr=np.clip(err, 0, None), fmt="o", capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_bars(df: pd.DataFrame, *, label: Sequence[str], value: str, title: str) -> bytes:
    """Horizontal bar plot (PNG bytes), NaN bars shown empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [" / ".join(str(row[c]) for c in label) for _, row in df.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=80)
    ax.barh(np.arange(len(names)), np.nan_to_num(df[value].to_numpy(dtype=float)))
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# table files: a local path or an s3:// object, one code path (fib_assets.core.storage)

TABLE_SUFFIX = ".parquet"


@dataclass(frozen=True)
class TableFiles:
    """Where a table was written: the Parquet file/object, its Markdown and PNG siblings (None
    when not written) and the sha256 each read back with."""

    parquet: str
    markdown: str | None
    png: str | None
    sha256: dict[str, str]


def _sibling(location: str, suffix: str) -> str:
    base = storage.name(location).removesuffix(TABLE_SUFFIX)
    return storage.join(storage.parent(location), base + suffix)


def write_table(
    location: str | os.PathLike[str],
    df: pd.DataFrame,
    *,
    markdown: str | None = None,
    png: bytes | None = None,
) -> TableFiles:
    """Write ``df`` as Parquet at ``location`` (``….parquet``: a local path or an ``s3://``
    URL), with ``markdown`` and ``png`` beside it (same name, ``.md`` / ``.png``).

    Each file is written atomically (temp + rename locally, one PUT on S3) and read back: its
    sha256 must equal the bytes sent (StorageError naming the file otherwise). The Parquet
    file goes LAST, so whoever finds it finds its Markdown and plot complete too."""
    parquet = storage.normalize(location)
    if not parquet.endswith(TABLE_SUFFIX):
        raise ValueError(f"{parquet}: a table location must end with {TABLE_SUFFIX}")
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    md_loc = _sibling(parquet, ".md") if markdown is not None else None
    png_loc = _sibling(parquet, ".png") if png is not None else None
    pieces = [(md_loc, (markdown or "").encode()), (png_loc, png or b""), (parquet, buf.getvalue())]
    digests: dict[str, str] = {}
    for where, data in pieces:
        if where is None:
            continue
        storage.write_bytes(where, data)
        sent = hashlib.sha256(data).hexdigest()
        back = storage.hash_location(where)["sha256"]
        if back != sent:
            raise storage.StorageError(
                f"{where}: does not read back as written (sha256 {back[:12]}…, sent {sent[:12]}…)"
            )
        digests[storage.name(where)] = sent
    return TableFiles(parquet, md_loc, png_loc, digests)


def read_table(location: str | os.PathLike[str]) -> pd.DataFrame:
    """The Parquet table at ``location`` (a local path or an ``s3://`` object), streamed by
    pyarrow through a file object; FileNotFoundError names the location when it is absent."""
    with storage.open_input(location) as f:
        return pd.read_parquet(f)
