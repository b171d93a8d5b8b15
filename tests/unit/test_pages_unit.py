"""The pieces behind the hub's pages, without a hub: the summary never carries a token value or
an unsafe link, a service that cannot be asked is shown as unavailable with a reason, spawn
progress reaches every follower in order, failure messages are escaped, templates are installed
in the right place."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from traitlets.config import Config

from casa_hub.integrations.base import Integration, IntegrationError
from casa_hub.pages.facility_info import TEMPLATES, CasaFacility, install_templates
from casa_hub.pages.summary import describe, grant_rows, live_status
from casa_hub.spawner.progress import (
    CasaSpawnError,
    FormFieldError,
    SpawnProgress,
    service_unavailable,
)
from casa_hub.tokens.issuer import CasaTokenIssuer

GRANTS = {
    "xcache": {"audience": "aud-x", "scopes": ["storage.read:/user/{username}"], "lifetime": 1200,
               "groups": ["physicists"]},
    "ops": {"audience": "aud-o", "scopes": ["storage.read:/"], "groups": ["admins"]},
}


def test_grant_rows_show_metadata_of_the_recorded_token_never_its_value():
    issuer = CasaTokenIssuer(grants=GRANTS)
    auth_state = {"casa_tokens": {"xcache": {"token": "SECRET-VALUE", "exp": 2000, "iat": 800, "jti": "j-1",
                                             "scope": "storage.read:/user/alice", "aud": "aud-x"}}}
    rows = grant_rows(issuer, "alice", ["physicists"], auth_state, now=1500)
    assert [r["grant"] for r in rows] == ["xcache"], "only the grants the user's groups allow"
    (row,) = rows
    assert "SECRET-VALUE" not in repr(rows)
    assert (row["expires_in"], row["state"], row["jti"]) == (500, "valid", "j-1")
    assert row["scopes"] == ["storage.read:/user/alice"]
    expired = grant_rows(issuer, "alice", ["physicists"], auth_state, now=2500)[0]
    assert (expired["expires_in"], expired["state"]) == (-500, "expired")
    unissued = grant_rows(issuer, "alice", ["physicists"], {}, now=0)[0]
    assert (unissued["state"], unissued["expires_at"], unissued["scopes"]) == (
        "not issued", None, ["storage.read:/user/alice"])


class Service(Integration):
    name = "svc"
    title = "A service"

    def __init__(self, status=None, error=None, hang=False, **kw):
        super().__init__(**kw)
        self._status, self._error, self._hang = status, error, hang

    async def status(self, username):
        if self._hang:
            await asyncio.Event().wait()
        if self._error:
            raise self._error
        return self._status


async def test_a_service_that_cannot_be_asked_is_unavailable_with_a_reason_that_leaks_nothing(caplog):
    caplog.set_level(logging.WARNING)
    said = await live_status(Service(error=IntegrationError("the gateway did not answer")), "alice", 5)
    assert said == {"available": False, "reason": "the gateway did not answer"}
    leaky = await live_status(Service(error=RuntimeError("password=hunter2")), "alice", 5)
    assert leaky["available"] is False and "hunter2" not in leaky["reason"]
    slow = await live_status(Service(hang=True), "alice", 0.01)
    assert slow == {"available": False, "reason": "no answer within 0.01 s"}
    assert await live_status(Service(status=None), "alice", 5) is None


async def test_a_status_is_cleaned_of_unknown_keys_and_unsafe_links():
    raw = {"state": "running", "workers": 3, "token": "SECRET", "dashboard": "javascript:alert(1)"}
    assert await live_status(Service(status=raw), "alice", 5) == {
        "available": True, "state": "running", "workers": 3}
    ok = await live_status(Service(status={"state": "running", "workers": True,
                                           "dashboard": "https://gw.example.org/dash"}), "alice", 5)
    assert ok == {"available": True, "state": "running", "dashboard": "https://gw.example.org/dash"}


def test_describe_keeps_public_endpoints_only():
    class WithSecretURL(Service):
        endpoint = "https://user:pw@svc.example.org"

    assert describe(Service())["endpoint"] == ""
    assert describe(WithSecretURL())["endpoint"] == "", "credentials in a URL are never shown"

    class Public(Service):
        endpoint = "root://xcache.example.org:1094"

    assert describe(Public()) == {"name": "svc", "title": "A service", "endpoint": "root://xcache.example.org:1094",
                                  "description": "", "grants": []}


async def test_spawn_progress_reaches_every_follower_in_order_and_never_goes_back():
    steps = SpawnProgress()
    early = asyncio.ensure_future(_collect(steps))
    steps.add("tokens", "Facility tokens: obtaining", 10)
    await asyncio.sleep(0)
    steps.add("services", "Services: configured", 5)  # asked to go back: stays at 10
    steps.add("cluster", "Dask cluster: submitted")
    late = asyncio.ensure_future(_collect(steps))
    steps.finish()
    for events in (await early, await late):
        assert [(e["casa_step"], e["progress"]) for e in events] == [
            ("tokens", 10), ("services", 10), ("cluster", 15)]
    assert steps.step == "cluster" and not steps.failed


async def _collect(steps: SpawnProgress) -> list[dict]:
    return [event async for event in steps.follow()]


def test_failure_messages_are_escaped_and_say_what_to_do():
    error = CasaSpawnError("<b>X</b> is down", "Reason <script>", "Wait.", "https://help.example/?a=1&b=2")
    assert "<script>" not in error.jupyterhub_html_message and "&lt;script&gt;" in error.jupyterhub_html_message
    assert 'href="https://help.example/?a=1&amp;b=2"' in error.jupyterhub_html_message
    assert error.jupyterhub_message.startswith("<b>X</b> is down. Reason <script> What to do: Wait.")
    generic = service_unavailable(Service(), RuntimeError("token=abc.def.ghi"))
    assert "abc.def.ghi" not in generic.jupyterhub_message and "A service is unavailable" == generic.casa_heading
    field = FormFieldError("profile", "not <yours>", "Server profile", 403)
    assert field.status_code == 403 and 'data-casa-field="profile"' in field.jupyterhub_html_message
    assert "not &lt;yours&gt;" in field.jupyterhub_html_message


class FakeHub:
    """What install_templates reads of the JupyterHub application."""

    def __init__(self, paths, config=None):
        self.template_paths = list(paths)
        self.template_vars = {}
        self.config = config or Config()

    def _template_paths_default(self):
        return ["/usr/share/jupyterhub/templates"]


@pytest.mark.parametrize("site_paths", [[], ["/etc/site-templates"], ["/etc/site-templates", TEMPLATES]])
def test_templates_come_after_the_sites_and_before_jupyterhubs(site_paths):
    config = Config()
    config.CasaFacility.name = "Facility X"
    hub = FakeHub(site_paths, config)
    install_templates(hub)
    install_templates(hub)  # twice: no duplicate
    site = [p for p in site_paths if p != TEMPLATES]
    assert hub.template_paths == [*site, TEMPLATES, os.path.normpath("/usr/share/jupyterhub/templates")]
    assert isinstance(hub.template_vars["casa"], CasaFacility) and hub.template_vars["casa"].name == "Facility X"
