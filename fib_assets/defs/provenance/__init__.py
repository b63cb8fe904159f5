"""Provenance family: lineage audit, fixity checks and schedule, deposit package, repository
draft. The Figshare resource is wired in fib_assets/definitions.py (token from FIGSHARE_TOKEN)."""

import dagster as dg

from fib_assets.defs.provenance.assets import deposit_package, provenance_audit, repository_draft
from fib_assets.defs.provenance.checks import package_fixity, source_fixity
from fib_assets.defs.provenance.schedules import (
    fixity_schedules,
    package_fixity_job,
    source_fixity_job,
)

defs = dg.Definitions(
    assets=[provenance_audit, deposit_package, repository_draft],
    asset_checks=[source_fixity, package_fixity],
    jobs=[source_fixity_job, package_fixity_job],
    schedules=fixity_schedules,
)
