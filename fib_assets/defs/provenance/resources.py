"""The Figshare resource: the only place the repository's personal token lives."""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from fib_assets.core.provenance.figshare import DEFAULT_API_URL, FigshareClient, RetryPolicy


class FigshareResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Figshare API v2 (data.lib.vt.edu is Figshare for Institutions, served by the Figshare
    API host). Set ``token=dg.EnvVar("FIGSHARE_TOKEN")``: an EnvVar is read when a run needs the
    resource and is never shown in the UI; the client never logs or records it."""

    token: str = Field(
        description="Figshare personal token. Always dg.EnvVar('FIGSHARE_TOKEN'), never a literal."
    )
    api_url: str = Field(
        default=DEFAULT_API_URL,
        description="Figshare API v2 base URL (data.lib.vt.edu items live on api.figshare.com).",
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per request on 5xx, 429 and connection errors."
    )
    backoff_seconds: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles per attempt (max 60 s)."
    )
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per-request timeout.")

    def client(
        self, log: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> FigshareClient:
        return FigshareClient(
            self.token,
            self.api_url,
            retry=RetryPolicy(
                max_attempts=self.max_attempts,
                backoff_s=self.backoff_seconds,
                timeout_s=self.timeout_seconds,
            ),
            log=log,
            sleep=sleep,
        )
