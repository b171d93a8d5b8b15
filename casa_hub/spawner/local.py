"""``CasaLocalProcessSpawner``: local notebook processes with their token files in a private directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode, default

from casa_hub.common.files import token_file_name, write_private
from casa_hub.integrations.base import SpawnContext
from casa_hub.spawner.mixin import CasaSpawnerMixin
from casa_hub.spawner.profiles import options_from_form, passthrough_options, render_options_form


class CasaLocalProcessSpawner(CasaSpawnerMixin, SimpleLocalProcessSpawner):
    """Local notebook processes, for the demo and single-machine installs.

    Token and config files go into a private directory (0700, files 0600). Like JupyterHub's
    SimpleLocalProcessSpawner, notebooks run as the hub's own system user: there is no isolation
    between users, so use CasaKubeSpawner for a shared facility.
    """

    casa_dir_template = Unicode(
        "{home}/.casa",
        config=True,
        help="Private per-user directory for token and config files; ``{home}`` and ``{username}`` expand.",
    )

    @default("default_url")
    def _default_url_default(self) -> str:
        return "/lab"

    @default("options_form")
    def _casa_options_form(self) -> Any:
        return render_options_form if self.casa_profiles.profiles else ""

    @default("options_from_form")
    def _casa_options_from_form(self) -> Any:
        return options_from_form if self.casa_profiles.profiles else passthrough_options

    @property
    def casa_dir(self) -> Path:
        return Path(self.casa_dir_template.format(home=self.home_dir, username=self.user.name))

    def casa_paths(self) -> tuple[str, str]:
        return str(self.casa_dir / "tokens"), str(self.casa_dir / "config")

    async def casa_deliver(self, ctx: SpawnContext, files: dict[str, bytes]) -> None:
        token_dir, config_dir = (Path(p) for p in self.casa_paths())
        for d in (self.casa_dir, token_dir, config_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        for grant, token in ctx.tokens.items():
            write_private(Path(ctx.token_path(grant)), token.encode("ascii"))
        for name, content in files.items():
            write_private(config_dir / name, content)

    async def casa_cleanup(self) -> None:
        shutil.rmtree(self.casa_dir / "tokens", ignore_errors=True)

    async def casa_update_tokens(self, tokens: dict[str, str]) -> None:
        token_dir = Path(self.casa_paths()[0])
        if not token_dir.is_dir():
            return
        wanted = set(self.casa_grants())
        for grant, token in tokens.items():
            if grant in wanted:
                write_private(token_dir / token_file_name(grant), token.encode("ascii"))
