"""Dask: a per-user cluster in Dask Gateway that exists before the notebook opens.

At spawn (``prepare``) the hub finds the user's running cluster or asks the gateway for a new one,
with the options of the chosen profile, *as the user*: with a short-lived token of the user's own
holding only the gateway's access scope (``casa_hub.integrations.dask.credentials``). Submitting takes a few
tens of milliseconds; the cluster then starts while the notebook does, and the spawn never waits
for it. A background watch reports when it runs, scales it to ``initial_workers`` (or makes it
adaptive) and deletes the token. The notebook gets the gateway's address and the cluster's name
(env vars and a dask config file) and attaches with ``casa_hub.dask.get_client()``. When the server
stops, the cluster is shut down (``shutdown_on_stop``); the gateway culls clusters left idle.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import yaml
from traitlets import Bool, Callable, Dict, Float, Integer, List, Unicode, Union

from casa_hub import metrics
from casa_hub.integrations.base import Contribution, Integration, IntegrationError, SpawnContext
from casa_hub.integrations.checks import url_problem
from casa_hub.integrations.dask.credentials import (
    MissingGatewayScope,
    issue_user_token,
    revoke_user_token,
)
from casa_hub.integrations.dask.gateway_api import ClusterInfo, GatewayAPI, GatewayError

#: env var naming the pre-created cluster (``casa_hub.dask.get_client`` reads it)
CLUSTER_ENV = "CASA_DASK_CLUSTER"
#: answers meaning "the gateway is not up yet" for calls that never answer 404 otherwise
NOT_READY = (0, 404, 502, 503)


class DaskIntegration(Integration):
    """The user's Dask cluster in the facility's Dask Gateway, created at spawn."""

    name = "dask"
    title = "Dask cluster"

    service_name = Unicode(
        "dask-gateway",
        config=True,
        help="""The gateway's JupyterHub service name. The gateway admits tokens holding
        ``access:services!service=<this>``; the drop-ins give that scope to the users in
        ``access_groups`` and to their servers' tokens.""",
    )

    access_groups = List(
        Unicode(),
        config=True,
        help="""Groups whose members may create and use Dask clusters in the gateway: the drop-ins
        give them the role ``casa-dask-gateway`` (``access:services!service=<service_name>``).
        Empty (the default): every user, through the ``user`` role.""",
    )

    gateway_url = Unicode(
        "",
        config=True,
        help="""The gateway's address as notebooks reach it, e.g.
        ``https://hub.example.org/services/dask-gateway``; exported as ``DASK_GATEWAY__ADDRESS``.
        Empty: notebooks get no Dask settings.""",
    )

    gateway_api_url = Unicode(
        "",
        config=True,
        help="""The gateway's address as the hub reaches it (e.g. the in-cluster service
        ``http://traefik-dask-gateway/services/dask-gateway``). Empty: ``gateway_url``.""",
    )

    proxy_address = Unicode(
        "",
        config=True,
        help="""The gateway's scheduler proxy as notebooks reach it, e.g.
        ``gateway://traefik-dask-gateway:80``; exported as ``DASK_GATEWAY__PROXY_ADDRESS``.
        Empty: the client uses ``gateway_url``'s host and port.""",
    )

    public_address = Unicode(
        "",
        config=True,
        help="""The gateway's address for browsers (dashboard links); exported as
        ``DASK_GATEWAY__PUBLIC_ADDRESS``. Empty: ``gateway_url``.""",
    )

    precreate = Bool(
        True,
        config=True,
        help="""Create (or reuse) the user's cluster when their server starts. False: notebooks
        only get the gateway settings and create clusters themselves.""",
    )

    cluster_options = Union(
        [Dict(), Callable()],
        default_value={},
        config=True,
        help="""Options of the pre-created cluster (the gateway's ``cluster_options``, e.g.
        ``{"worker_cores": 2, "worker_memory": 4}``), or a callable ``(spawner) -> dict`` (may be
        async). Options from the spawn (``user_options[options_key]``, set by a profile or the
        spawn API) are merged over them; the gateway checks them against its limits, for the user.""",
    )

    options_key = Unicode(
        "dask_cluster_options",
        config=True,
        help="""The key of the spawner's ``user_options`` holding a dict of cluster options;
        ``false`` there means no cluster for this server (the Dask settings are still exported).""",
    )

    reuse_existing = Bool(
        True,
        config=True,
        help="""Reuse a pending or running cluster the user already has with matching options
        (e.g. kept over a restart with ``shutdown_on_stop = False``) instead of creating another;
        clusters used by the user's other running servers are left alone.""",
    )

    shutdown_on_stop = Bool(
        True,
        config=True,
        help="""Shut the cluster down when the server stops (also when it is found dead or failed
        to start). False: it keeps running until the gateway culls it as idle
        (``c.ClusterConfig.idle_timeout`` in the gateway's config) or the next start reuses it.""",
    )

    initial_workers = Integer(
        0,
        min=0,
        config=True,
        help="Workers to ask for once a newly created cluster runs (ignored when ``adapt`` is set).",
    )

    adapt = Dict(
        {},
        config=True,
        help="""Adaptive scaling of a newly created cluster, e.g. ``{"minimum": 0, "maximum": 10}``.
        Empty: a fixed ``initial_workers``.""",
    )

    start_timeout = Float(
        600,
        config=True,
        help="""Seconds the hub watches a new cluster (to scale it once it runs); also bounds the
        lifetime of the hub's token for it. The spawn itself never waits for the cluster.""",
    )

    request_timeout = Float(20, config=True, help="Seconds for one request to the gateway.")

    connect_timeout = Float(
        30,
        config=True,
        help="""Seconds to keep retrying while the gateway does not answer at all (e.g. it is still
        starting with the hub) before the server starts without a cluster.""",
    )

    required = Bool(
        False,
        config=True,
        help="""Refuse to start the server when its cluster cannot be created. False: the server
        starts without one (``get_client()`` then says why) and the reason is logged.""",
    )

    config_file = Unicode(
        "dask-gateway.yaml",
        config=True,
        help="Name of the dask config file written to ``CASA_CONFIG_DIR`` (``DASK_CONFIG`` points at it).",
    )

    #: the cluster this server uses (kept in the spawner's state over hub restarts)
    cluster_name: str | None = None
    _options: dict[str, Any] | None = None
    _created = False
    _watch: asyncio.Task | None = None

    # ---- settings ---------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.gateway_api_url or self.gateway_url

    def configuration_problem(self) -> str | None:
        where = type(self).__name__
        problem = url_problem(f"{where}.gateway_url", self.gateway_url, ("https", "http"))
        if not problem and self.gateway_api_url:
            problem = url_problem(f"{where}.gateway_api_url", self.gateway_api_url, ("https", "http"))
        if not problem and self.public_address:
            problem = url_problem(f"{where}.public_address", self.public_address, ("https", "http"))
        if not problem and self.proxy_address:
            parts = urlsplit(self.proxy_address if "://" in self.proxy_address else f"gateway://{self.proxy_address}")
            if parts.scheme not in ("gateway", "tls", "tcp") or not parts.hostname or parts.path not in ("", "/"):
                problem = f"{where}.proxy_address {self.proxy_address!r} must look like gateway://host:port"
        if not problem and set(self.adapt) - {"minimum", "maximum"}:
            problem = f"{where}.adapt: only 'minimum' and 'maximum' are allowed"
        return problem

    # ---- the hub's credential for the user's cluster (see casa_hub.integrations.dask.credentials) -----------

    def issue_token(self, lifetime: float) -> str:
        """A new token of the spawner's user holding only the gateway's access scope."""
        return issue_user_token(self.parent.user, self.service_name, lifetime)

    def revoke_token(self, token: str) -> None:
        revoke_user_token(self.parent.user.db, token)

    @contextmanager
    def user_token(self, lifetime: float) -> Iterator[str]:
        token = self.issue_token(lifetime)
        try:
            yield token
        finally:
            self.revoke_token(token)

    async def options_for_spawn(self) -> dict[str, Any]:
        """The cluster options for this spawn: ``cluster_options``, then the chosen profile's
        ``dask_cluster_options`` (if it has such a field), then ``user_options[options_key]``. They
        only select among what the gateway allows this user: the hub asks as the user."""
        chosen = self.cluster_options
        if callable(chosen):
            chosen = chosen(self.parent)
            if inspect.isawaitable(chosen):
                chosen = await chosen
        options = dict(chosen or {})
        profile = getattr(self.parent, "casa_profile", None)  # a profile may carry cluster options
        if isinstance(getattr(profile, "dask_cluster_options", None), dict):
            options.update(profile.dask_cluster_options)
        user_options = getattr(self.parent, "user_options", None) or {}
        extra = user_options.get(self.options_key) if isinstance(user_options, dict) else None
        if isinstance(extra, dict):
            options.update(extra)
        return options

    # ---- spawn ------------------------------------------------------------------------------

    async def prepare(self, ctx: SpawnContext) -> None:
        if not self.usable:
            return
        self._options = await self.options_for_spawn()
        user_options = getattr(self.parent, "user_options", None) or {}
        if not self.precreate or user_options.get(self.options_key) is False:
            return
        user = self.parent.user
        self.report_progress("Dask cluster: asking the gateway for yours")
        token = None
        self._submitted = submitted = time.monotonic()
        try:
            token = self.issue_token(self.start_timeout + 3 * self.request_timeout)
            api = GatewayAPI(self.api_url, token, self.request_timeout)
            info, self._created = await self._find_or_create(api, self._options)
        except Exception as e:
            if token is not None:
                self.revoke_token(token)
            # our own errors are written to be read; anything else stays in the hub's log
            reason = str(e) if isinstance(e, GatewayError | MissingGatewayScope) else type(e).__name__
            self.log.warning("No Dask cluster for %s: %s", ctx.username, reason,
                             exc_info=not isinstance(e, GatewayError))
            metrics.observe_dask_cluster("failed", time.monotonic() - submitted)
            if self.required:
                raise IntegrationError(f"the Dask Gateway could not create your cluster ({reason})") from None
            self.report_progress("Dask cluster: unavailable; your server starts without one")
            return
        self.cluster_name = info.name
        metrics.observe_dask_cluster("submit", time.monotonic() - submitted)
        verb = "created" if self._created else "reusing"
        self.log.info("Dask cluster %s for %s: %s (%s)", verb, ctx.username, info.name, info.status)
        self.report_progress(f"Dask cluster: {verb} {info.name}; it starts along with your server")
        self._watch = asyncio.ensure_future(self._watch_cluster(api, token, info, user))

    async def _find_or_create(self, api: GatewayAPI, options: dict[str, Any]) -> tuple[ClusterInfo, bool]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            try:
                if self.reuse_existing:
                    held = self._held_by_other_servers()
                    for cluster in await api.list_clusters():
                        if cluster.name not in held and _matches(cluster.options, options):
                            return cluster, False
                return ClusterInfo(await api.create_cluster(options), "PENDING", options), True
            except GatewayError as e:
                # no answer, or the gateway's proxy has no routes yet (it is starting with the hub)
                if e.status not in NOT_READY or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def _held_by_other_servers(self) -> set[str]:
        """Clusters the same user's other servers use (named servers): never adopted."""
        held: set[str] = set()
        for other in getattr(self.parent.user, "spawners", {}).values():
            if other is self.parent:
                continue
            for integration in getattr(other, "_casa_integrations", None) or []:
                if isinstance(integration, DaskIntegration) and integration.cluster_name:
                    held.add(integration.cluster_name)
        return held

    async def _watch_cluster(self, api: GatewayAPI, token: str, info: ClusterInfo, user: Any) -> None:
        """Until the cluster runs: report it, scale a new one; then delete the hub's token."""
        name = info.name
        try:
            deadline = asyncio.get_running_loop().time() + self.start_timeout
            while info.status != "RUNNING":
                if asyncio.get_running_loop().time() > deadline:
                    self.log.warning("Dask cluster %s of %s did not run within %.0f s", name, user.name,
                                     self.start_timeout)
                    return
                found = await api.get_cluster(name, wait=True)
                if found is None or found.status in ("STOPPING", "STOPPED", "FAILED"):
                    state = found.status.lower() if found else "gone"
                    self.log.warning("Dask cluster %s of %s is %s before it ran", name, user.name, state)
                    self.report_progress(f"Dask cluster: {name} is {state}")
                    return
                info = found
            self.report_progress(f"Dask cluster: {name} is running")
            metrics.observe_dask_cluster("running", time.monotonic() - self._submitted)
            if self._created and self.adapt:
                await api.adapt(name, self.adapt.get("minimum"), self.adapt.get("maximum"))
            elif self._created and self.initial_workers:
                await api.scale(name, self.initial_workers)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.warning("Watching Dask cluster %s of %s failed: %s", name, user.name, e,
                             exc_info=not isinstance(e, GatewayError))
        finally:
            self.revoke_token(token)

    async def stopped(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and not watch.done():
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        name, self.cluster_name = self.cluster_name, None
        if not name or not self.shutdown_on_stop or not self.usable:
            return
        user = self.parent.user
        try:
            with self.user_token(3 * self.request_timeout) as token:
                await GatewayAPI(self.api_url, token, self.request_timeout).stop_cluster(name)
        except Exception as e:
            self.log.warning("Could not shut down Dask cluster %s of %s: %s (a gateway that is itself "
                             "stopping stops its clusters; a running one culls it once idle)", name,
                             user.name, e, exc_info=not isinstance(e, GatewayError))
            return
        self.log.info("Shut down Dask cluster %s of %s with the server", name, user.name)

    def get_state(self) -> dict[str, Any]:
        return {"cluster": self.cluster_name} if self.cluster_name else {}

    def load_state(self, state: dict[str, Any]) -> None:
        self.cluster_name = state.get("cluster") or None

    # ---- what the notebook gets ---------------------------------------------------------------

    def dask_config(self) -> dict[str, Any]:
        """The dask configuration the notebook loads (``DASK_CONFIG``): gateway, auth, options."""
        gateway: dict[str, Any] = {"address": self.gateway_url, "auth": {"type": "jupyterhub"}}
        if self.proxy_address:
            gateway["proxy-address"] = self.proxy_address
        if self.public_address:
            gateway["public-address"] = self.public_address
        if self._options:  # clusters the user creates by hand get the same options
            gateway["cluster"] = {"options": dict(self._options)}
        config: dict[str, Any] = {"gateway": gateway}
        if self.cluster_name:
            config["casa-hub"] = {"dask": {"cluster": self.cluster_name}}
        return config

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        env = {
            "DASK_GATEWAY__ADDRESS": self.gateway_url,
            "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
            "DASK_CONFIG": f"{ctx.config_dir}/{self.config_file}",
        }
        if self.proxy_address:
            env["DASK_GATEWAY__PROXY_ADDRESS"] = self.proxy_address
        if self.public_address:
            env["DASK_GATEWAY__PUBLIC_ADDRESS"] = self.public_address
        if self.cluster_name:
            env[CLUSTER_ENV] = self.cluster_name
        text = "# written by casa_hub when your server started\n" + yaml.safe_dump(
            self.dask_config(), default_flow_style=False, sort_keys=False)
        return Contribution(env=env, files={self.config_file: text.encode()})

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["endpoint"] = self.public_address or self.gateway_url
        return described

    async def status(self, username: str) -> dict[str, Any] | None:
        """The user's cluster as the gateway reports it (asked as the user)."""
        if not self.usable:
            return None
        user = getattr(self.parent, "user", None)
        if user is None or user.name != username:
            raise IntegrationError("the cluster's state is not available here")
        try:
            with self.user_token(3 * self.request_timeout) as token:
                api = GatewayAPI(self.api_url, token, self.request_timeout)
                if self.cluster_name:
                    found = await api.get_cluster(self.cluster_name)
                    clusters = [found] if found else []
                else:
                    clusters = await api.list_clusters()
        except GatewayError as e:
            raise IntegrationError(f"the Dask Gateway did not answer ({e.status or 'unreachable'})") from None
        if not clusters:
            return {"state": "none", "reason": "no cluster; casa_hub.dask.get_client() explains"}
        cluster = clusters[0]
        status: dict[str, Any] = {"state": cluster.status.lower(), "name": cluster.name}
        if cluster.dashboard_route:
            status["dashboard"] = (self.public_address or self.gateway_url).rstrip("/") + cluster.dashboard_route
        return status


def _matches(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a cluster created with ``existing`` options satisfies a request for ``wanted``."""
    return all(existing.get(key) == value for key, value in wanted.items())
