"""The integration contract: what one facility service needs in a user's notebook."""

from __future__ import annotations

from dataclasses import dataclass, field

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


class Integration(LoggingConfigurable):
    """One facility service. Subclass, set ``name``, and override ``grants`` and ``contribute``."""

    name = "integration"

    enabled = Bool(True, config=True, help="Whether notebooks are configured for this service.")

    def grants(self) -> list[str]:
        """Names of the issuer grants whose tokens this service needs."""
        return []

    def contribute(self, ctx: SpawnContext) -> Contribution:
        """Env vars and files for the notebook. Never put a token value in ``env``."""
        return Contribution()
