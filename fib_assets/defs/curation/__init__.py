"""Curation family: proofreading_tasks[region] → simulated_corrections[region] (→ the annotations
inbox → ground_truth_crops' next revision)."""

import dagster as dg

from fib_assets.defs.curation.assets import proofreading_tasks, simulated_corrections

defs = dg.Definitions(assets=[proofreading_tasks, simulated_corrections])
