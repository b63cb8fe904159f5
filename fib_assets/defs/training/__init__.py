"""Training family: training_split → organelle_model[experiment] → predictions[region] →
segmentation[region].

``experiments`` (static partitions) are the experiment files read at import from
``$FIB_ASSETS_EXPERIMENTS`` or ``<repo>/experiments``; :func:`build_defs` builds the same family
for another set of experiments (tests use a temporary folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from fib_assets.core.ml.experiments import Experiment, training_order
from fib_assets.defs.training.assets import DEFAULT_EXPERIMENT, build_training_assets
from fib_assets.defs.training.checks import build_training_checks
from fib_assets.defs.training.partitions import (
    DECLARED,
    EXPERIMENTS_DIR,
    EXPERIMENTS_ENV,
    experiments,
    experiments_partitions,
)

# `fib-assets demo` trains only these (comma-separated names; their `from:` sources are added)
DEMO_EXPERIMENTS_ENV = "FIB_ASSETS_DEMO_EXPERIMENTS"
DEFAULT_DEMO_EXPERIMENTS = ("demo_mito_scratch", "demo_mito_transfer")
MAX_DEMO_MODELS = 2


def build_defs(
    declared: Mapping[str, Experiment],
    partitions_def: dg.StaticPartitionsDefinition | None = None,
) -> dg.Definitions:
    """The family's assets and checks for ``declared`` experiments (their names become the
    static partitions of organelle_model unless ``partitions_def`` is given)."""
    parts = partitions_def or experiments_partitions(declared)
    return dg.Definitions(
        assets=build_training_assets(declared, parts),
        asset_checks=build_training_checks(parts),
    )


def demo_experiments(
    declared: Mapping[str, Experiment] = DECLARED, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The experiments the demo trains, in training order: ``$FIB_ASSETS_DEMO_EXPERIMENTS``
    (default demo_mito_scratch, demo_mito_transfer) plus their ``from:`` sources; at most
    :data:`MAX_DEMO_MODELS` and never a GPU experiment."""
    env = os.environ if environ is None else environ
    raw = env.get(DEMO_EXPERIMENTS_ENV)
    wanted = [n.strip() for n in raw.split(",") if n.strip()] if raw else DEFAULT_DEMO_EXPERIMENTS
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        raise ValueError(
            f"{DEMO_EXPERIMENTS_ENV}: unknown experiments {unknown}; declared: {sorted(declared)}"
        )
    needed: set[str] = set()
    for name in wanted:
        current: str | None = name
        while current is not None and current not in needed:
            needed.add(current)
            current = declared[current].initialization.source
    gpu = sorted(n for n in needed if declared[n].compute == "gpu")
    if gpu:
        raise ValueError(f"{DEMO_EXPERIMENTS_ENV}: {gpu} need a GPU; the demo runs on CPU")
    if len(needed) > MAX_DEMO_MODELS:
        raise ValueError(
            f"{DEMO_EXPERIMENTS_ENV}: {sorted(needed)} (with their from: sources) is more than "
            f"{MAX_DEMO_MODELS} models; the demo keeps training under five minutes"
        )
    return [n for n in training_order(declared) if n in needed]


defs = build_defs(DECLARED, experiments)

__all__ = [
    "DECLARED",
    "DEMO_EXPERIMENTS_ENV",
    "DEFAULT_EXPERIMENT",
    "EXPERIMENTS_DIR",
    "EXPERIMENTS_ENV",
    "build_defs",
    "defs",
    "demo_experiments",
    "experiments",
]
