"""How much of a request the hub's own HTTP server reads: ``CasaHubServer.max_body_size``.

JupyterHub (5.x and 6.x alike) creates its ``tornado.httpserver.HTTPServer`` in ``JupyterHub.start()``
without a ``max_body_size``, so tornado's default applies: a body of up to 100 MB is read into the
hub's memory before any handler runs, with a credential or without one. No hub handler needs a large
body (API JSON, the login, logout and spawn forms are kilobytes).

``limit_request_bodies`` makes the limit tornado's default for the ``HTTPServer`` of the hub process,
through tornado's public ``HTTPServer.configure`` ("keyword arguments will be saved and added to the
arguments passed to the constructor; this can be used to set global defaults"). The auth drop-in
calls it while the hub loads its configuration, before ``start()`` creates the server, so the server
is created with the limit and holds every request of every route to it: a body announced larger is
refused after its headers (400, connection closed) without being read, a chunked body as soon as it
grows past the limit. An explicit ``max_body_size`` that a later JupyterHub passes would win.

Not chosen:

- setting ``http_server.conn_params.max_body_size`` once the hub created its server: nothing runs
  between the creation and the first accepted connection (``start()`` listens in the same call), and
  ``conn_params`` is not part of tornado's API;
- ``stream_request_body`` handlers lowering the limit in ``prepare``: JupyterHub's handlers are not
  streaming, their body is read before any of their code runs, and so is the body of a request for a
  route without a handler;
- a limit at the proxy: configurable-http-proxy has none, and notebooks and services reach the hub's
  API at ``hub_connect_url`` without passing the proxy.
"""

from __future__ import annotations

import sys
from typing import Any

from tornado.httpserver import HTTPServer
from traitlets import Integer
from traitlets.config import Configurable

MIN_BODY_SIZE = 64 * 2**10


class CasaHubServer(Configurable):
    """The hub's own HTTP server (site file section ``hub``)."""

    max_body_size = Integer(
        4 * 2**20,
        min=MIN_BODY_SIZE,
        config=True,
        help="""Largest request body, in bytes, the hub reads (default 4 MiB; at least 64 KiB). A
        request announcing a larger body is refused after its headers (400, connection closed) and
        none of it is read; a chunked body is cut off once it grows past the limit. Applies to every
        request the hub itself serves (``/hub/...`` through the proxy, and the hub's API URL), not to
        notebook servers or services. Without it tornado reads bodies up to 100 MB into the hub's
        memory, credential or not.""",
    )


def in_hub_process() -> bool:
    """Whether this process is a JupyterHub: its instance exists (``jupyterhub`` creates it before
    loading the config files). ``casa-hub check`` and tests that only load the drop-ins are not."""
    app = sys.modules.get("jupyterhub.app")
    return app is not None and app.JupyterHub.initialized()


def set_default_max_body_size(max_body_size: int) -> None:
    """Make ``max_body_size`` the default of every ``tornado.httpserver.HTTPServer`` this process
    creates from now on (an explicit argument still wins; the configured class is kept)."""
    HTTPServer.configure(HTTPServer.configured_class(), max_body_size=max_body_size)


def limit_request_bodies(config: Any) -> int | None:
    """In a hub process, have the hub's HTTP server created with ``CasaHubServer.max_body_size`` of
    ``config``; returns the limit, or None in any other process (whose tornado defaults stay)."""
    limit = CasaHubServer(config=config).max_body_size
    if not in_hub_process():
        return None
    set_default_max_body_size(limit)
    return limit
