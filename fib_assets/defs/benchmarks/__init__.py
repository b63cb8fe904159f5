"""Benchmark tables family: format_benchmark (later: segmentation, infrastructure, curation)."""

import dagster as dg

from fib_assets.defs.benchmarks.assets import format_benchmark

defs = dg.Definitions(assets=[format_benchmark])
