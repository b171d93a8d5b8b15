"""``FastSpawner`` with casa_hub's spawn steps: tokens, integrations, files written 0600.

``CasaFastSpawner.start`` runs everything ``CasaSpawnerMixin.start`` does (profile check, tokens
reused from auth_state or minted, integrations' ``prepare`` and ``contribute``, delivery) and then
``FastSpawner.start``. Delivery is ``CasaLocalProcessSpawner``'s own code: a private directory per
user (0700) with one file per token and config file (0600).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from traitlets import Unicode

from casa_hub.spawner import CasaLocalProcessSpawner, CasaSpawnerMixin

from .fast_spawner import FastSpawner


class CasaFastSpawner(CasaSpawnerMixin, FastSpawner):
    """casa_hub's spawn preparation around a spawner that starts no process."""

    casa_root = Unicode(
        "",
        config=True,
        help="""Directory holding one private ``<username>/.casa`` directory per user (token and
        config files). Empty: ``casa-fast-spawner`` in the system's temporary directory.""",
    )

    @property
    def casa_dir(self) -> Path:
        root = Path(self.casa_root or Path(tempfile.gettempdir()) / "casa-fast-spawner")
        return root / self.user.name / ".casa"

    # the local spawner's delivery, unchanged (it uses only ``casa_dir`` and ``casa_paths``)
    casa_paths = CasaLocalProcessSpawner.casa_paths
    casa_deliver = CasaLocalProcessSpawner.casa_deliver
    casa_cleanup = CasaLocalProcessSpawner.casa_cleanup
    casa_update_tokens = CasaLocalProcessSpawner.casa_update_tokens
