"""Partitions of the training family: declared experiments, and the roles of regions.

Experiments are YAML files (schema: :mod:`fib_assets.core.ml.experiments`) in
``$FIB_ASSETS_EXPERIMENTS`` or ``<repo>/experiments``; their names are the static partitions of
``organelle_model``. A file that breaks the schema stops the code location from loading with
an error naming the file and the key, so a bad experiment never becomes a partition.

Regions (dynamic partitions) get one role each in ``training_split``: ``train`` (their
curator-designated training crops are learned from), ``validation`` (model selection) or
``test`` (never used for training or model selection; the Dice reported to curators).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
import numpy as np

from fib_assets.core.ml.experiments import Experiment, load_experiments, training_order
from fib_assets.defs.resources import REPO_ROOT

EXPERIMENTS_ENV = "FIB_ASSETS_EXPERIMENTS"
ROLES: tuple[str, ...] = ("train", "validation", "test")


def experiments_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$FIB_ASSETS_EXPERIMENTS`` or ``<repo>/experiments``."""
    env = os.environ if environ is None else environ
    return Path(env.get(EXPERIMENTS_ENV) or REPO_ROOT / "experiments")


def experiments_partitions(declared: Mapping[str, Experiment]) -> dg.StaticPartitionsDefinition:
    """One static partition per experiment, in training order (a ``from:`` source first)."""
    return dg.StaticPartitionsDefinition(training_order(declared))


# Loaded once at import: the partitions a curator sees are the files the code location read
# (edit a file, then reload the code location in the UI).
EXPERIMENTS_DIR = experiments_dir()
DECLARED: dict[str, Experiment] = load_experiments(EXPERIMENTS_DIR)
experiments = experiments_partitions(DECLARED)


# --- region roles ------------------------------------------------------------------------------


def role_targets(n: int, test_fraction: float, validation_fraction: float) -> dict[str, int]:
    """How many of ``n`` regions get each role: ``floor(n * fraction)`` test and validation
    regions, at least one test region once there are two regions, and always at least one
    training region."""
    if not 0.0 <= test_fraction < 1.0 or not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"fractions must be in [0, 1), got test {test_fraction}, "
            f"validation {validation_fraction}"
        )
    if test_fraction + validation_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + validation_fraction must be < 1 (training needs regions), got "
            f"{test_fraction} + {validation_fraction}"
        )
    n_test = math.floor(n * test_fraction)
    if n >= 2:
        n_test = max(1, n_test)
    n_test = min(n_test, max(n - 1, 0))
    n_val = max(0, min(math.floor(n * validation_fraction), n - n_test - 1))
    return {"train": n - n_test - n_val, "validation": n_val, "test": n_test}


def plan_split(
    regions: Sequence[str],
    *,
    seed: int,
    test_fraction: float,
    validation_fraction: float,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Region -> role. Regions of ``previous`` keep their role (a test region must never become
    a training region because new regions arrived); new regions, in a seeded random order,
    fill the roles up to :func:`role_targets`, test first, then validation, then train."""
    eligible = sorted(set(regions))
    kept = {r: previous[r] for r in eligible if previous and previous.get(r) in ROLES}
    new = [r for r in eligible if r not in kept]
    rng = np.random.default_rng(seed)
    order = [new[i] for i in rng.permutation(len(new))]
    targets = role_targets(len(eligible), test_fraction, validation_fraction)
    counts = {role: sum(v == role for v in kept.values()) for role in ROLES}
    out = dict(kept)
    for region in order:
        role = next((r for r in ("test", "validation") if counts[r] < targets[r]), "train")
        out[region] = role
        counts[role] += 1
    return dict(sorted(out.items()))


def regions_with_role(assignment: Mapping[str, str], role: str) -> list[str]:
    return sorted(r for r, v in assignment.items() if v == role)
