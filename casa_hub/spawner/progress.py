"""What a user sees while a server starts, and when it cannot start or a form value is wrong.

- ``SpawnProgress``: casa_hub's steps of one spawn (facility tokens, services, secret files,
  cluster, ...) as JupyterHub progress events, followed by any number of spawn-pending pages.
- ``CasaSpawnError``: a failure the user can act on: a heading, what failed and what to do. No
  traceback and no secret: JupyterHub shows ``jupyterhub_message`` (or ``jupyterhub_html_message``)
  on its pages, and casa_hub's templates lay out the parts.
- ``FormFieldError``: a server-side validation error for one field of the spawn form; the spawn
  page shows it next to that field.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from html import escape
from typing import Any

from tornado import web

from casa_hub.integrations.base import Integration, IntegrationError

#: progress (percent) of the first casa_hub step, and the most casa_hub's own steps may reach;
#: the base spawner's own events are scaled into the range above it
FIRST_STEP, LAST_STEP = 5, 80


class SpawnProgress:
    """The progress events of one spawn, in order, for any number of followers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.step = "starting"
        self.finished = False
        self.failed = False
        self._changed = asyncio.Event()

    @property
    def last_progress(self) -> int:
        return self.events[-1]["progress"] if self.events else 0

    def add(self, step: str, message: str, progress: int | None = None) -> dict[str, Any]:
        """Record that ``step`` (a short name: "tokens", "services", "secret", "cluster") began or
        ended with ``message``. ``progress`` never goes backwards; without it, a little more."""
        wanted = progress if progress is not None else self.last_progress + 5
        value = min(LAST_STEP, max(FIRST_STEP, wanted, self.last_progress))
        event = {"progress": value, "message": message, "casa_step": step}
        self.step = step
        self.events.append(event)
        self._wake()
        return event

    def finish(self, failed: bool = False) -> None:
        """No more casa_hub steps; followers go on with the base spawner's own events (unless
        ``failed``: the spawn ends here)."""
        self.finished = True
        self.failed = failed
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event so far, then each new one, until ``finish``."""
        sent = 0
        while True:
            changed = self._changed
            while sent < len(self.events):
                yield dict(self.events[sent])
                sent += 1
            if self.finished:
                return
            await changed.wait()


def scale_base_event(event: dict[str, Any]) -> dict[str, Any]:
    """A base spawner's progress event, moved into the range after casa_hub's own steps."""
    event = dict(event)
    if isinstance(event.get("progress"), int | float):
        event["progress"] = int(LAST_STEP + (100 - LAST_STEP) * min(100, max(0, event["progress"])) / 100)
    return event


def _now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


class CasaSpawnError(Exception):
    """A spawn failure explained to the user: ``heading``, ``what`` failed, ``advice`` (what to do).

    The three parts are plain text shown as they are: never put a token, a path holding one, or
    an exception's text from a library into them.
    """

    def __init__(self, heading: str, what: str, advice: str, support_url: str = "") -> None:
        self.casa_heading = heading
        self.casa_what = what
        self.casa_advice = advice
        self.casa_support_url = support_url
        self.casa_time = _now_utc()
        contact = f" Support: {support_url}" if support_url else ""
        #: what JupyterHub shows (spawn-pending page, error pages, API errors)
        self.jupyterhub_message = f"{heading}. {what} What to do: {advice}{contact} (at {self.casa_time})"
        link = (f' <a href="{escape(support_url)}">Contact the facility\'s support</a>.'
                if support_url else "")
        self.jupyterhub_html_message = (
            f'<strong class="casa-failure-heading">{escape(heading)}.</strong> {escape(what)} '
            f'<span class="casa-failure-advice">What to do: {escape(advice)}{link}</span> '
            f'<span class="casa-failure-time">({escape(self.casa_time)})</span>'
        )
        super().__init__(self.jupyterhub_message)


def service_unavailable(integration: Integration, error: BaseException, support_url: str = "") -> CasaSpawnError:
    """The user-facing failure for an integration that raised while preparing a server.

    The reason is the IntegrationError's message (written for users); any other exception's text
    stays in the hub's log (the caller logs it), since it may hold internals or secrets."""
    title = integration.title or integration.name
    if isinstance(error, IntegrationError) and str(error):
        reason = str(error).rstrip(".") + "."
        reason = reason[0].upper() + reason[1:]
    else:
        reason = "It failed in an unexpected way; the details are in the hub's log."
    return CasaSpawnError(
        f"{title} is unavailable",
        f"{reason} Your server was not started.",
        "Try starting your server again in a few minutes. If this keeps happening, tell the "
        "facility's support which service failed and when.",
        support_url,
    )


def unexpected_failure(step: str, support_url: str = "") -> CasaSpawnError:
    """The user-facing failure for an unexpected error in a casa_hub step (details are logged)."""
    return CasaSpawnError(
        "Your server could not be prepared",
        f"Something went wrong in the step \u201c{step}\u201d; the details are in the hub's log. "
        "Your server was not started.",
        "Try starting your server again. If this keeps happening, tell the facility's support "
        "the time shown here.",
        support_url,
    )


class FormFieldError(web.HTTPError):
    """A value of the spawn form that the server refused, for the field named ``field`` (the
    form control's ``name``). Raise it from ``options_from_form`` (or ``run_options_from_form``);
    the spawn page shows ``message`` next to the field and in the error summary. ``status``: 400
    for a malformed value, 403 for a choice the user may not have."""

    def __init__(self, field: str, message: str, label: str = "", status: int = 400) -> None:
        super().__init__(status, "invalid value for spawn form field %s", field)
        self.field = field
        self.label = label or field
        self.jupyterhub_message = f"{self.label}: {message}"
        self.jupyterhub_html_message = (
            f'<span class="casa-field-error" data-casa-field="{escape(field)}">'
            f'<span class="casa-field-label">{escape(self.label)}</span>: '
            f'<span class="casa-field-text">{escape(message)}</span></span>'
        )
