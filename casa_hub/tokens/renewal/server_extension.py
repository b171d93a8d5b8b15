"""Jupyter server extension running the token renewal agent inside the notebook server.

Enable with ``--ServerApp.jpserver_extensions=casa_hub.tokens.renewal.server_extension=True`` (the casa spawners
add this when ``CasaSpawnerMixin.renewal_agent`` is on) or ``jupyter server extension enable
casa_hub.tokens.renewal.server_extension``. Configure with ``c.CasaTokenRenewal.*``. It does nothing when
``CASA_TOKEN_DIR`` is unset, so it is harmless in an image used outside the facility.
"""

from __future__ import annotations

import asyncio
from typing import Any

from casa_hub.tokens.renewal.agent import CasaTokenRenewal
from casa_hub.tokens.renewal.broker_client import redact

EXTENSION = "casa_hub.tokens.renewal.server_extension"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": EXTENSION}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    agent = CasaTokenRenewal(parent=serverapp, log=serverapp.log)
    problem = agent.problem()
    if problem:
        level = serverapp.log.debug if not agent.token_dir else serverapp.log.warning
        level("casa token renewal: not running: %s", problem)
        return
    serverapp.web_app.settings["casa_token_renewal"] = agent


async def _start_jupyter_server_extension(serverapp: Any) -> None:
    """Start the agent as a task in the server's running event loop."""
    agent = serverapp.web_app.settings.get("casa_token_renewal")
    if agent is None:
        return

    def done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            serverapp.log.error("casa token renewal: the agent stopped: %s", redact(repr(task.exception())))

    task = asyncio.get_running_loop().create_task(agent.run(), name="casa-token-renewal")
    task.add_done_callback(done)
    serverapp.web_app.settings["casa_token_renewal_task"] = task
