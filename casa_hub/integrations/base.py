"""The integration contract: what one facility service needs in a user's notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool
from traitlets.config import LoggingConfigurable

from casa_hub.common.files import token_file_name


@dataclass
class SpawnContext:
    """What an integration may read about the server being prepared."""

    username: str
    groups: list[str]
    token_dir: str  # where token files appear inside the notebook's environment
    config_dir: str  # where config files appear inside the notebook's environment
    tokens: dict[str, str] = field(default_factory=dict, repr=False)  # grant -> token value

    def token_path(self, grant: str) -> str:
        return f"{self.token_dir}/{token_file_name(grant)}"


@dataclass
class Contribution:
    """An integration's part of a spawn: env vars (paths and endpoints only) and config files."""

    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # name in config_dir -> content


class IntegrationError(Exception):
    """A facility service cannot be used right now. The message is shown to the user as the
    reason (e.g. "the cache at root://... did not answer"): no secrets, no internals."""


class Integration(LoggingConfigurable):
    """One facility service: what it needs in a user's notebook, and what it keeps outside it.

    Subclass, set ``name`` (and ``title``), add the service's settings as traitlets with ``help=``,
    and override, in the order the spawner calls them:

    1. ``configuration_problem()`` -- why the settings cannot work (a sentence naming the setting),
       or None. A misconfigured service is *skipped*: it asks for no grant and contributes nothing,
       the reason is logged once as a warning, and the notebook starts with every other service.
    2. ``service_grants()`` -- the issuer grants whose tokens the service needs.
    3. ``required_grant()`` -- the grant without whose token the service is useless (``""``: none);
       a user without it gets no settings for the service (an info line says why).
    4. ``prepare(ctx)`` -- create or find what the server needs outside itself (e.g. a Dask cluster).
    5. ``service_contribution(ctx)`` -- env vars (paths and endpoints, never token values) and
       config files for the notebook.
    6. ``describe()`` / ``status(username)`` -- what the "My facility" page shows.
    7. ``get_state()`` / ``load_state(state)`` -- survive a hub restart while the server runs.
    8. ``stopped()`` -- release what ``prepare`` created.

    ``grants()`` and ``contribute(ctx)`` are what the spawner calls; they apply the checks above and
    should not need overriding. The setting checks in ``casa_hub.integrations.checks``
    (``url_problem``, ``path_problem``, ...) give uniform reasons.
    """

    name = "integration"
    #: the service's name for people ("XCache", "Dask cluster"); default: ``name``
    title = ""

    enabled = Bool(True, config=True, help="Whether notebooks are configured for this service.")

    _problem_checked = False
    _problem: str | None = None

    # ---- what a service overrides --------------------------------------------------------------

    def configuration_problem(self) -> str | None:
        """Why this service cannot be configured with the current settings, or None."""
        return None

    def required_grant(self) -> str:
        """A grant whose token the user must have for this service to be configured; ``""``: none."""
        return ""

    def service_grants(self) -> list[str]:
        """Names of the issuer grants whose tokens this service needs."""
        return []

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        """Env vars and files for the notebook. Never put a token value in ``env``."""
        return Contribution()

    # ---- what the spawner calls -----------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Enabled and correctly configured; logs the reason (once) when it is not."""
        if not self.enabled:
            return False
        if not self._problem_checked:
            self._problem = self.configuration_problem()
            self._problem_checked = True
            if self._problem:
                self.log.warning(
                    "%s is enabled but not configured correctly, so notebooks get no %s settings: %s",
                    type(self).__name__, self.name, self._problem,
                )
        return self._problem is None

    def grants(self) -> list[str]:
        """The grants to mint for this service: none when it is disabled or misconfigured."""
        return self.service_grants() if self.usable else []

    def contribute(self, ctx: SpawnContext) -> Contribution:
        """The service's env vars and files, or nothing when it is unusable for this user."""
        if not self.usable:
            return Contribution()
        grant = self.required_grant()
        if grant and grant not in ctx.tokens:
            self.log.info(
                "%s: not configured for %s: no token for grant %r (not in CasaTokenIssuer.grants, "
                "or not allowed for the user's groups)", self.name, ctx.username, grant,
            )
            return Contribution()
        return self.service_contribution(ctx)

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


#: the former name of the base class (it and ``Integration`` were two contracts; now they are one)
CheckedIntegration = Integration
