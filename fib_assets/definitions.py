"""The fib_assets code location: wires asset families, resources and the executor."""

import dagster as dg

from fib_assets.defs import acquisitions, benchmarks, formats
from fib_assets.defs.resources import QCThresholdsResource, StorageResource

defs = dg.Definitions.merge(
    acquisitions.defs,
    formats.defs,
    benchmarks.defs,
    dg.Definitions(
        resources={"storage": StorageResource(), "qc_thresholds": QCThresholdsResource()},
    ),
)
