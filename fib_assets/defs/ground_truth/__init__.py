"""Ground-truth family: curators' annotations (annotations inbox) → ground_truth_crops
revisions, with blocking label checks."""

import dagster as dg

from fib_assets.defs.ground_truth.assets import ground_truth_crops
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.ground_truth.sensors import annotations_inbox_sensor

defs = dg.Definitions(
    assets=[ground_truth_crops],
    sensors=[annotations_inbox_sensor],
    resources={"annotations": AnnotationsResource()},
)
