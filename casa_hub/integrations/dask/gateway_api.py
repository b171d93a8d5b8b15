"""A small client of Dask Gateway's REST API for the hub (no dask import in the hub process).

The hub talks to the gateway only on a user's behalf, with a JupyterHub token of that user
(``Authorization: jupyterhub <token>``, what dask-gateway-server's ``JupyterHubAuthenticator``
reads). Answers of ``GET /api/v1/clusters/...`` hold the cluster's TLS key: they are never logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: statuses of a cluster that is (or will be) usable
ACTIVE = ("PENDING", "RUNNING")


class GatewayError(RuntimeError):
    """The gateway refused or failed a request; the message is safe to show (no secrets)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnreachable(GatewayError):
    """No answer from the gateway (not started yet, down, or wrong address)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the hub keeps of a gateway's cluster report (never the TLS credentials)."""

    name: str
    status: str
    options: dict[str, Any] = field(default_factory=dict)
    dashboard_route: str | None = None
    start_time: int | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> ClusterInfo:
        return cls(
            name=report["name"],
            status=report.get("status", "UNKNOWN"),
            options=dict(report.get("options") or {}),
            dashboard_route=report.get("dashboard_route"),
            start_time=report.get("start_time"),
        )

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class GatewayAPI:
    """Calls to one gateway (``url``: its address, e.g. ``http://host/services/dask-gateway``)
    as the owner of ``token``."""

    def __init__(self, url: str, token: str, request_timeout: float = 20.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.request_timeout = request_timeout

    def __repr__(self) -> str:  # never the token
        return f"GatewayAPI({self.url!r})"

    async def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        request = HTTPRequest(
            f"{self.url}/api/v1/{path}",
            method=method,
            headers={"Authorization": f"jupyterhub {self._token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=timeout or self.request_timeout,
            connect_timeout=min(10.0, timeout or self.request_timeout),
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:  # refused, reset, timed out (599)
            raise GatewayUnreachable(f"Dask Gateway at {self.url} did not answer ({type(e).__name__})") from None
        if response.code == 599:
            raise GatewayUnreachable(f"Dask Gateway at {self.url} did not answer")
        if response.code >= 400:
            reason = response.reason or ""
            try:
                reason = json.loads(response.body or b"{}").get("error") or reason
            except (ValueError, AttributeError):
                pass
            raise GatewayError(f"Dask Gateway answered {response.code}: {reason}", response.code)
        if response.code == 204 or not response.body:
            return None
        return json.loads(response.body)

    async def list_clusters(self, statuses: tuple[str, ...] = ACTIVE) -> list[ClusterInfo]:
        """The caller's own clusters in these statuses, oldest first."""
        reports = await self._call("GET", "clusters/?status=" + ",".join(statuses))
        clusters = [ClusterInfo.from_report(r) for r in (reports or {}).values()]
        return sorted(clusters, key=lambda c: (c.start_time or 0, c.name))

    async def create_cluster(self, options: dict[str, Any]) -> str:
        """Submit a new cluster; returns its name at once (it starts in the background)."""
        answer = await self._call("POST", "clusters/", {"cluster_options": options})
        return answer["name"]

    async def get_cluster(self, name: str, wait: bool = False) -> ClusterInfo | None:
        """The cluster's report, None if the gateway does not know it. With ``wait`` the gateway
        holds the answer until the cluster runs or failed (at most about 20 s)."""
        try:
            report = await self._call("GET", f"clusters/{quote(name, safe='')}" + ("?wait" if wait else ""),
                                      timeout=self.request_timeout + (25 if wait else 0))
        except GatewayError as e:
            if e.status == 404:
                return None
            raise
        return ClusterInfo.from_report(report)

    async def stop_cluster(self, name: str) -> None:
        await self._call("DELETE", f"clusters/{quote(name, safe='')}")

    async def scale(self, name: str, workers: int) -> None:
        await self._call("POST", f"clusters/{quote(name, safe='')}/scale", {"count": workers})

    async def adapt(self, name: str, minimum: int | None, maximum: int | None) -> None:
        body = {"minimum": minimum, "maximum": maximum, "active": True}
        await self._call("POST", f"clusters/{quote(name, safe='')}/adapt", body)
