"""Partitions shared by every asset family."""

import dagster as dg

# Sample regions arrive by sensor (landing zone) and become partitions; keys are validated by
# fib_assets.core.geometry.validate_region_key before they are added or touch a path.
regions = dg.DynamicPartitionsDefinition(name="regions")
