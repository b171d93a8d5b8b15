"""Profiles in the real hub with local notebooks: a user is offered only their groups' profiles on
/hub/spawn; a hand-made form post (with a valid XSRF token) or API call for another group's profile
is refused with 403 and starts nothing; a valid choice starts a server whose environment carries
the profile's resources and env. Then the broker's fresh token reaches the running server's file.

The facility's profiles (``shared_facilities.PROFILES_CONFIG``: standard and large for physicists,
operations and admin-gpu for facility admins; no renewal agent in servers) are those of
``shared_pages_facility``, shared with the browser's page tests and other modules; alice's server is
stopped when this module ends."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
import requests
from facilities import stop_servers
from helpers import admin_api, http_login, read_server_environ, wait_for_server

from casa_hub.demo.facility import DemoFacility

pytestmark = pytest.mark.e2e

XSRF = re.compile(r'xsrf_token: "([^"]+)"')


@pytest.fixture(scope="module")
def profiles_facility(shared_pages_facility, admin_token):
    yield shared_pages_facility
    stop_servers(shared_pages_facility, admin_token, "alice")


def spawn_page(fac: DemoFacility, username: str) -> tuple[requests.Session, str, str]:
    s, r = http_login(fac.hub_url, username, fac.password(username))
    assert r.status_code == 200, r.text[:300]
    page = s.get(f"{fac.hub_url}/hub/spawn", timeout=30)
    assert page.status_code == 200 and 'name="profile"' in page.text, page.text[:500]
    return s, page.text, XSRF.search(page.text).group(1)


def server_of(fac: DemoFacility, token: str, username: str) -> dict | None:
    return admin_api(fac.hub_url, token, f"/users/{username}").json().get("servers", {}).get("")


def test_each_user_is_offered_only_their_groups_profiles(profiles_facility):
    _, alice_form, _ = spawn_page(profiles_facility, "alice")
    assert 'value="standard"' in alice_form and 'value="large"' in alice_form
    assert "admin-gpu" not in alice_form and "GPU (facility admins)" not in alice_form
    _, bob_form, _ = spawn_page(profiles_facility, "bob")
    assert 'value="admin-gpu"' in bob_form and "GPU (facility admins)" in bob_form


def test_a_forged_post_for_another_groups_profile_is_refused(profiles_facility, admin_token):
    fac = profiles_facility
    s, _, xsrf = spawn_page(fac, "alice")
    r = s.post(f"{fac.hub_url}/hub/spawn", data={"profile": "admin-gpu", "_xsrf": xsrf}, timeout=60)
    assert r.status_code == 403, (r.status_code, r.text[:500])
    assert "The server profile 'admin-gpu' is not available to your groups." in unescape(r.text)
    assert server_of(fac, admin_token, "alice") is None, "no server may start"

    r = s.post(f"{fac.hub_url}/hub/api/users/alice/server", json={"profile": "admin-gpu"},
               headers={"X-XSRFToken": xsrf}, timeout=60)
    assert r.status_code == 403, (r.status_code, r.text[:500])
    assert "not available to your groups" in r.json()["message"]
    assert server_of(fac, admin_token, "alice") is None, "no server may start through the API either"
    homes = Path(fac.state_dir) / "homes" / "alice" / ".casa" / "tokens"
    assert not homes.exists() or not any(homes.iterdir()), "no token files for a refused spawn"


def test_a_valid_choice_starts_a_server_with_the_profile(profiles_facility, admin_token):
    fac = profiles_facility
    s, _, xsrf = spawn_page(fac, "alice")
    r = s.post(f"{fac.hub_url}/hub/spawn", data={"profile": "large", "_xsrf": xsrf}, timeout=120)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    model = wait_for_server(fac.hub_url, admin_token, "alice")
    assert model["servers"][""]["user_options"] == {"profile": "large"}
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    assert env["CASA_PROFILE"] == "large" and env["CASA_SITE_QUEUE"] == "large"
    assert env["MEM_LIMIT"] == str(8 * 2**30) and float(env["CPU_LIMIT"]) == 2.0  # large: 8G, 2 CPUs
    token_file = Path(env["BEARER_TOKEN_FILE"])
    assert token_file.is_file()

    # the broker hands the token it mints to the running server's token file
    r = requests.post(f"{env['JUPYTERHUB_API_URL']}/casa/tokens/xcache",
                      headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert token_file.read_text() == r.json()["token"]

    r = admin_api(fac.hub_url, admin_token, "/users/alice/server", method="DELETE")
    assert r.status_code in (202, 204)
