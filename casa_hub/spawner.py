"""Spawners that start notebooks ready to use the facility.

``CasaSpawnerMixin`` asks each enabled integration which grants, env vars and files it needs,
gets fresh tokens from the facility issuer, and hands them to ``casa_deliver``, which each concrete
spawner implements: files in a private directory locally, a per-user Secret on Kubernetes.
Env vars only ever carry paths and endpoints, never token values.

Order of the hook points during ``start``: ``casa_grants`` → tokens minted (or reused) →
``casa_after_tokens`` → each integration's ``contribute`` → ``casa_deliver`` → the base spawner's start.
On ``stop``: the base spawner's stop → ``casa_cleanup``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jupyterhub.spawner import SimpleLocalProcessSpawner
from kubespawner import KubeSpawner
from traitlets import Bool, Float, List, Type, Unicode, default
from traitlets.config import LoggingConfigurable

from .integrations import Integration, SpawnContext, XCacheIntegration
from .tokens.issuer import CasaTokenIssuer
from .tokens.store import fresh_tokens


class CasaSpawnerMixin(LoggingConfigurable):
    """Facility tokens, env and files for every notebook. Mix in before a JupyterHub spawner.

    Settings under ``c.CasaSpawnerMixin`` apply to every casa spawner.
    """

    integration_classes = List(
        Type(klass=Integration),
        default_value=[XCacheIntegration],
        config=True,
        help="""Integrations (facility services) notebooks are configured for. Each is a
        configurable class; subclass one to change what it delivers.""",
    )

    token_min_remaining_fraction = Float(
        0.5,
        config=True,
        help="""At spawn, a token stored in auth_state is reused only if at least this fraction of
        its lifetime remains; otherwise a fresh one is minted.""",
    )

    renewal_agent = Bool(
        True,
        config=True,
        help="""Run the token renewal agent (the Jupyter server extension
        ``casa_hub.tokens.renewal_ext``) in the notebook server, so token files are replaced before
        they expire. The notebook's environment needs casa_hub installed.""",
    )

    casa_env: dict[str, str]
    _casa_integrations: list[Integration] | None = None

    @property
    def integrations(self) -> list[Integration]:
        if self._casa_integrations is None:
            made = [cls(parent=self) for cls in self.integration_classes]
            self._casa_integrations = [i for i in made if i.enabled]
        return self._casa_integrations

    @property
    def token_issuer(self) -> CasaTokenIssuer:
        return CasaTokenIssuer.instance(config=self.config, log=self.log)

    # ---- hook points ----------------------------------------------------------------------------

    def casa_grants(self) -> list[str]:
        """Grants to obtain for this server; override to add site grants."""
        names: list[str] = []
        for integration in self.integrations:
            names.extend(g for g in integration.grants() if g not in names)
        return names

    async def casa_after_tokens(self, ctx: SpawnContext) -> None:
        """Called once tokens are in ``ctx.tokens``, before integrations contribute."""

    async def casa_deliver(self, ctx: SpawnContext, files: dict[str, bytes]) -> None:
        """Make ``ctx.tokens`` and ``files`` available to the notebook. Spawner-specific."""
        raise NotImplementedError

    async def casa_cleanup(self) -> None:
        """Remove what ``casa_deliver`` created. Spawner-specific."""

    def casa_paths(self) -> tuple[str, str]:
        """(token_dir, config_dir) as the notebook sees them. Spawner-specific."""
        raise NotImplementedError

    async def casa_update_tokens(self, tokens: dict[str, str]) -> None:
        """Hand freshly minted tokens (grant -> token) to the running server.

        Called by the authenticator after it refreshed the user's provider tokens and re-minted
        the facility tokens. Spawner-specific; the default does nothing (the server's renewal
        agent fetches new tokens from the broker itself)."""

    # ---- the spawn ------------------------------------------------------------------------------

    async def casa_prepare(self) -> SpawnContext:
        """Obtain tokens and contributions, deliver them, and remember the env to export."""
        groups = sorted(g.name for g in self.user.groups)
        auth_state = await self.user.get_auth_state()
        tokens, changed = fresh_tokens(
            self.token_issuer,
            self.user.name,
            groups,
            self.casa_grants(),
            auth_state,
            self.token_min_remaining_fraction,
        )
        if changed and auth_state is not None:
            await self.user.save_auth_state(auth_state)
        token_dir, config_dir = self.casa_paths()
        ctx = SpawnContext(self.user.name, groups, token_dir, config_dir, tokens)
        await self.casa_after_tokens(ctx)
        env = {"CASA_TOKEN_DIR": token_dir, "CASA_CONFIG_DIR": config_dir}
        files: dict[str, bytes] = {}
        for integration in self.integrations:
            part = integration.contribute(ctx)
            env.update(part.env)
            files.update(part.files)
        await self.casa_deliver(ctx, files)
        self.casa_env = env
        self.log.info(
            "Prepared %s for %s: grants %s, files %s",
            self._log_name, self.user.name, sorted(tokens), sorted(files),
        )
        return ctx

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(getattr(self, "casa_env", {}))
        return env

    def get_args(self) -> list[str]:
        args = list(super().get_args())  # a copy: the base returns the ``args`` trait itself
        if self.renewal_agent:
            args.append("--ServerApp.jpserver_extensions=casa_hub.tokens.renewal_ext=True")
        return args

    async def start(self) -> Any:
        await self.casa_prepare()
        return await super().start()

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)
        finally:
            await self.casa_cleanup()


def _write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically with mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            _write_private(Path(ctx.token_path(grant)), token.encode("ascii"))
        for name, content in files.items():
            _write_private(config_dir / name, content)

    async def casa_cleanup(self) -> None:
        shutil.rmtree(self.casa_dir / "tokens", ignore_errors=True)

    async def casa_update_tokens(self, tokens: dict[str, str]) -> None:
        token_dir = Path(self.casa_paths()[0])
        if not token_dir.is_dir():
            return
        wanted = set(self.casa_grants())
        for grant, token in tokens.items():
            if grant in wanted:
                _write_private(token_dir / f"{grant}.token", token.encode("ascii"))


class CasaKubeSpawner(CasaSpawnerMixin, KubeSpawner):
    """KubeSpawner with facility tokens.

    Not complete yet: delivery through a per-user Secret is not implemented, so a spawn fails
    with a clear message rather than put tokens anywhere else.
    """

    def casa_paths(self) -> tuple[str, str]:
        return "/etc/casa/tokens", "/etc/casa/config"

    async def casa_deliver(self, ctx: SpawnContext, files: dict[str, bytes]) -> None:
        raise RuntimeError(
            "CasaKubeSpawner cannot deliver tokens yet: per-user Secret delivery is not implemented "
            "in this version of casa_hub"
        )
