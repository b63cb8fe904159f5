"""The fib_assets code location: wires asset families, resources, jobs and the executor."""

import dagster as dg

from fib_assets.defs import (
    acquisitions,
    benchmarks,
    curation,
    formats,
    ground_truth,
    jobs,
    provenance,
    training,
)
from fib_assets.defs.deployment import deployment_profile, executor_for, resources_for
from fib_assets.defs.ground_truth.resources import AnnotationsResource
from fib_assets.defs.provenance.resources import FigshareResource

# FIB_ASSETS_DEPLOYMENT=local (default: SQLite, disk, multiprocess) or k8s (pod per step, S3)
PROFILE = deployment_profile()

FAMILIES = [
    acquisitions.defs,
    formats.defs,
    ground_truth.defs,
    training.defs,
    curation.defs,
    benchmarks.defs,
    provenance.defs,
]

defs = dg.Definitions(
    # code references: the UI links every asset to the file and line that defines it
    assets=dg.with_source_code_references([a for f in FAMILIES for a in f.assets or []]),
    asset_checks=[c for f in FAMILIES for c in f.asset_checks or []],
    sensors=[s for f in FAMILIES for s in f.sensors or []],
    schedules=[jobs.nightly_region_backfill, *[s for f in FAMILIES for s in f.schedules or []]],
    jobs=[
        jobs.acquisitions_job,
        jobs.formats_job,
        jobs.benchmarks_job,
        jobs.region_pipeline_job,
        *[j for f in FAMILIES for j in f.jobs or []],
    ],
    executor=executor_for(PROFILE),
    resources={
        **resources_for(PROFILE),
        "annotations": AnnotationsResource(),
        # the token is read from the environment at run time, never stored or shown
        "figshare": FigshareResource(token=dg.EnvVar("FIGSHARE_TOKEN")),
    },
)
