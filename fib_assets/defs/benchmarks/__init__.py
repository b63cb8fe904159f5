"""Benchmark tables family: format_benchmark, and the evaluation tables of the curator loop
(evaluation[region], segmentation_benchmark, intervention_benchmark, infrastructure_benchmark)."""

import dagster as dg

from fib_assets.defs.benchmarks.assets import format_benchmark
from fib_assets.defs.benchmarks.evaluation import ASSETS as EVALUATION_ASSETS

defs = dg.Definitions(assets=[format_benchmark, *EVALUATION_ASSETS])
