"""Running assets through Dagster's own ``materialize`` path in tests and reading what a run
reported: one copy of the small helpers every Dagster-level test module needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg


def project_assets() -> list[dg.AssetsDefinition]:
    """The code location's assets (with their checks), without source assets or specs."""
    # imported here so that importing this module does not load the code location
    from fib_assets.definitions import defs

    return [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]


def materialize(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    selection: Any,
    partition: str | None = None,
    run_config: Any = None,
    *,
    assets: Sequence[Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize ``selection`` of ``assets`` (the project's assets unless given) in process,
    returning the result even when a step or a blocking check fails."""
    return dg.materialize(
        project_assets() if assets is None else assets,
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config=run_config,
    )


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dg.AssetMaterialization:
    """The one materialization of asset ``key`` (its user string, e.g. ``"raw_volume"``) in a
    run; fails the test if there is none or more than one."""
    (mat,) = [
        m.materialization
        for m in result.get_asset_materialization_events()
        if m.asset_key.to_user_string() == key
    ]
    return mat


def metadata_of(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The metadata values (unwrapped from their ``MetadataValue``) of asset ``key``'s one
    materialization in a run."""
    return {k: v.value for k, v in materialization(result, key).metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult, *, traceback: bool = False) -> str:
    """Every step failure's error message in a run, one a line; with ``traceback=True`` the
    full error text instead (stack and chained causes, where a wrapped library error's own
    message ends up)."""
    errors = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
    return "\n".join(e.to_string() if traceback else str(e.message) for e in errors)
