"""``CasaSpawnerMixin``: what every casa spawner does to start a notebook ready to use the facility.

``CasaSpawnerMixin`` asks each enabled integration which grants, env vars and files it needs,
gets fresh tokens from the facility issuer, and hands them to ``casa_deliver``, which each concrete
spawner implements: files in a private directory locally, a per-user Secret on Kubernetes.
Env vars only ever carry paths and endpoints, never token values.

Site hooks (override in a subclass; each has a docstring), in the order ``start`` calls them:

1. ``casa_apply_profile(profile)`` — the server profile the user chose, checked against their groups
   (``c.CasaProfiles.profiles``); a profile they may not have is refused with 403 before step 2.
2. ``casa_grants()`` — the grants to obtain: the integrations' (call ``super()``) plus the site's.
3. tokens are minted (or reused from auth_state), then ``casa_after_tokens(ctx)``.
4. each integration's ``prepare(ctx)`` (e.g. the user's Dask cluster is submitted), then each
   integration's ``contribute(ctx)``, then ``casa_contribute(ctx)``: the site's extra env vars
   and config files (paths and endpoints only in env; they win over the integrations').
5. ``casa_deliver(ctx, files)`` — spawner-specific: files in a private directory locally; on
   Kubernetes kept for the per-server Secret.
6. the base spawner's start. On Kubernetes, inside it: the profile's KubeSpawner overrides →
   the pod manifest with the Secret mounted → ``casa_modify_pod(pod)`` → KubeSpawner's
   ``modify_pod_hook`` → the pod is created → the Secret is created, owned by the pod →
   KubeSpawner's ``after_pod_created_hook``.

On ``stop``: the base spawner's stop → ``casa_cleanup()`` (local: token files removed; Kubernetes:
the Secret deleted). After every stop (also of a dead server or a failed start): each integration's
``stopped()`` (e.g. the Dask cluster is shut down), then JupyterHub's ``post_stop_hook``. While a
server runs, ``casa_update_tokens(tokens)`` hands it fresh tokens.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jupyterhub.utils import maybe_future
from tornado import web
from traitlets import Bool, Float, List, Type
from traitlets.config import LoggingConfigurable

from casa_hub import metrics
from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.xcache import XCacheIntegration
from casa_hub.pages.facility_info import facility
from casa_hub.spawner.profiles import (
    CasaProfiles,
    Profile,
)
from casa_hub.spawner.progress import (
    FormFieldError,
    SpawnProgress,
    scale_base_event,
    service_unavailable,
    unexpected_failure,
)
from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.store import fresh_tokens


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
        ``casa_hub.tokens.renewal.server_extension``) in the notebook server, so token files are replaced before
        they expire. The notebook's environment needs casa_hub installed.""",
    )

    casa_env: dict[str, str]
    casa_profile: Profile | None = None
    _casa_integrations: list[Integration] | None = None
    _casa_profiles: CasaProfiles | None = None
    _casa_profile_defaults: dict[str, Any] | None = None

    @property
    def casa_profiles(self) -> CasaProfiles:
        if self._casa_profiles is None:
            self._casa_profiles = CasaProfiles(parent=self)
        return self._casa_profiles

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

    async def casa_contribute(self, ctx: SpawnContext) -> Contribution:
        """Site hook: extra env vars and config files, after the integrations' (and winning over
        them). Env vars hold paths and endpoints only, never a token value."""
        return Contribution()

    def casa_apply_profile(self, profile: Profile | None) -> None:
        """Apply the chosen server profile's CPU and memory to this spawner (JupyterHub exports
        them as ``CPU_LIMIT``, ``MEM_LIMIT``, ...). Called before anything is minted; ``None``
        when no profiles are configured."""
        names = ("cpu_limit", "cpu_guarantee", "mem_limit", "mem_guarantee")
        if self._casa_profile_defaults is None:
            self._casa_profile_defaults = {n: getattr(self, n) for n in names}
        for name in names:
            value = getattr(profile, name, None)
            setattr(self, name, self._casa_profile_defaults[name] if value is None else value)

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
        started = time.monotonic()
        try:
            ctx = await self._casa_prepare()
        except BaseException:
            metrics.observe_spawn_prepare("failed", time.monotonic() - started)
            raise
        metrics.observe_spawn_prepare("ok", time.monotonic() - started)
        return ctx

    async def _casa_prepare(self) -> SpawnContext:
        groups = sorted(g.name for g in self.user.groups)
        auth_state = await self.user.get_auth_state()
        grants = self.casa_grants()
        self.casa_progress("tokens", f"Facility tokens: obtaining {', '.join(grants) or 'none needed'}", 10)
        tokens, changed = fresh_tokens(
            self.token_issuer,
            self.user.name,
            groups,
            grants,
            auth_state,
            self.token_min_remaining_fraction,
        )
        if changed and auth_state is not None:
            await self.user.save_auth_state(auth_state)
        token_dir, config_dir = self.casa_paths()
        ctx = SpawnContext(self.user.name, groups, token_dir, config_dir, tokens)
        await self.casa_after_tokens(ctx)
        env = dict(self.casa_profile.env) if self.casa_profile else {}
        if self.casa_profile:
            env["CASA_PROFILE"] = self.casa_profile.slug
        env.update({"CASA_TOKEN_DIR": token_dir, "CASA_CONFIG_DIR": config_dir})
        files: dict[str, bytes] = {}
        self.casa_progress("tokens", f"Facility tokens: ready ({', '.join(sorted(tokens)) or 'none'})", 25)
        for integration in self.integrations:  # e.g. the user's Dask cluster is submitted here
            try:
                await integration.prepare(ctx)
            except Exception as e:
                self.log.error("%s could not be prepared for %s", integration.name, self._log_name, exc_info=True)
                raise service_unavailable(integration, e, facility(self.config).support_url) from None
        for integration in self.integrations:
            try:
                part = integration.contribute(ctx)
            except Exception as e:
                self.log.error("%s could not be configured for %s", integration.name, self._log_name, exc_info=True)
                raise service_unavailable(integration, e, facility(self.config).support_url) from None
            env.update(part.env)
            files.update(part.files)
        site = await self.casa_contribute(ctx)
        env.update(site.env)
        files.update(site.files)
        names = ", ".join(i.title or i.name for i in self.integrations) or "none"
        self.casa_progress("services", f"Services: configured {names}", 40)
        await self.casa_deliver(ctx, files)
        self.casa_progress("secret", f"Secret: {len(tokens)} token and {len(files)} config files delivered privately", 55)
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
            args.append("--ServerApp.jpserver_extensions=casa_hub.tokens.renewal.server_extension=True")
        return args

    _casa_progress: SpawnProgress | None = None

    def casa_progress(self, step: str, message: str, progress: int | None = None) -> None:
        """Report a casa_hub step ("tokens", "secret", "cluster", ...) on the spawn-pending page."""
        if self._casa_progress is not None:
            self._casa_progress.add(step, message, progress)

    async def progress(self) -> Any:
        """casa_hub's steps of the current spawn, then the base spawner's own events."""
        while (steps := self._casa_progress) is None:  # the spawn has not reached ``start`` yet
            await asyncio.sleep(0.1)
        async for event in steps.follow():
            yield event
        if not steps.failed:
            async for event in super().progress():
                yield scale_base_event(event)

    async def start(self) -> Any:
        steps = self._casa_progress = SpawnProgress()
        try:
            groups = sorted(g.name for g in self.user.groups)
            self.casa_profile = self.casa_profiles.select(groups, self.user_options)
            self.casa_apply_profile(self.casa_profile)
            await self.casa_prepare()
            self.casa_progress("server", "Notebook server: starting", 60)
        except Exception as e:
            steps.finish(failed=True)
            self._casa_progress = None
            if hasattr(e, "jupyterhub_message"):  # already written for the user
                raise
            self.log.error("Preparing %s failed in step %s", self._log_name, steps.step, exc_info=True)
            raise unexpected_failure(steps.step, facility(self.config).support_url) from None
        steps.finish()
        return await super().start()

    async def run_options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, Any]:
        """The base spawner's options, with the chosen profile checked against the user's groups
        (403 for a profile they may not have; checked again at ``start``)."""
        options = await maybe_future(super().run_options_from_form(form_data))
        try:
            self.casa_profiles.select(sorted(g.name for g in self.user.groups), options)
        except web.HTTPError as e:  # shown next to the form's profile field
            raise FormFieldError("profile", e.log_message or "", "Server profile", e.status_code) from None
        return options

    async def stop(self, now: bool = False) -> None:
        self._casa_progress = None
        try:
            await super().stop(now=now)
        finally:
            await self.casa_cleanup()

    async def run_post_stop_hook(self) -> Any:
        """After every stop, also of a server found dead or one whose start failed: each
        integration's ``stopped()`` (e.g. the user's Dask cluster is shut down), then JupyterHub's
        ``post_stop_hook``."""
        for integration in self._casa_integrations or []:
            await integration.stopped()
        return await maybe_future(super().run_post_stop_hook())

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        parts = {i.name: s for i in self._casa_integrations or [] if (s := i.get_state())}
        if parts:  # e.g. the name of the user's Dask cluster, for a hub restart
            state["casa_integrations"] = parts
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        for integration in self.integrations if state.get("casa_integrations") else []:
            integration.load_state(state["casa_integrations"].get(integration.name, {}))
