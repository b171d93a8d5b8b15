"""The integration contract: what one facility service needs in a user's notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool
from traitlets.config import LoggingConfigurable


@dataclass
class SpawnContext:
    """What an integration may read about the server being prepared."""

    username: str
    groups: list[str]
    token_dir: str  # where token files appear inside the notebook's environment
    config_dir: str  # where config files appear inside the notebook's environment
    tokens: dict[str, str] = field(default_factory=dict, repr=False)  # grant -> token value

    def token_path(self, grant: str) -> str:
        return f"{self.token_dir}/{grant}.token"


@dataclass
class Contribution:
    """An integration's part of a spawn: env vars (paths and endpoints only) and config files."""

    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # name in config_dir -> content


class IntegrationError(Exception):
    """A facility service cannot be used right now. The message is shown to the user as the
    reason (e.g. "the cache at root://... did not answer"): no secrets, no internals."""


class Integration(LoggingConfigurable):
    """One facility service. Subclass, set ``name``, and override ``grants`` and ``contribute``."""

    name = "integration"
    #: the service's name for people ("XCache", "Dask cluster"); default: ``name``
    title = ""

    enabled = Bool(True, config=True, help="Whether notebooks are configured for this service.")

    def grants(self) -> list[str]:
        """Names of the issuer grants whose tokens this service needs."""
        return []

    def contribute(self, ctx: SpawnContext) -> Contribution:
        """Env vars and files for the notebook. Never put a token value in ``env``."""
        return Contribution()

    # ---- lifecycle of things outside the server (e.g. the user's Dask cluster) -------------------

    async def prepare(self, ctx: SpawnContext) -> None:
        """Before ``contribute``, once tokens are minted: create or find what the server needs
        outside itself (the spawner is ``self.parent``). Keep it short: the spawn waits for it.
        Raise IntegrationError to refuse the spawn with a reason for the user."""

    async def stopped(self) -> None:
        """After the server stopped, also when it was found dead or failed to start: release what
        ``prepare`` created. Must not raise."""

    def get_state(self) -> dict[str, Any]:
        """JSON-able state kept in the spawner's state while the server runs (hub restarts)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned, after a hub restart."""

    def report_progress(self, message: str, progress: int | None = None) -> None:
        """Show ``message`` on the user's spawn-pending page (while the spawn runs)."""
        report = getattr(self.parent, "casa_progress", None)
        if callable(report):
            report(self.name, message, progress)

    def describe(self) -> dict[str, Any]:
        """What the user's "My facility" page shows about this service (public facts only):
        ``name``, ``title``, ``endpoint`` (URL or ``""``) and ``grants``. Override to add a
        ``description``. Never a token or a secret."""
        return {
            "name": self.name,
            "title": self.title or self.name,
            "endpoint": str(getattr(self, "endpoint", "") or ""),
            "grants": list(self.grants()),
        }

    async def status(self, username: str) -> dict[str, Any] | None:
        """Live state of the service for ``username``, shown on the "My facility" page; None (the
        default) when the service has none. A Dask cluster returns e.g. ``{"state": "running",
        "workers": 2, "dashboard": "https://..."}``. Raise IntegrationError with a reason the user
        may read when the service cannot be asked; the page then shows it as unavailable."""
        return None
