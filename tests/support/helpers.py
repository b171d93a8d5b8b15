"""Helpers shared by the end-to-end tests: HTTP login through the real provider, token checks."""

from __future__ import annotations

import re
import time
from html import unescape
from urllib.parse import urljoin

import jwt
import requests

FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


def start_login(hub_url: str) -> tuple[requests.Session, requests.Response]:
    """Open the hub's OAuth login and follow redirects to the provider's login form."""
    s = requests.Session()
    r = s.get(f"{hub_url}/hub/oauth_login?next=/hub/home", timeout=30)
    r.raise_for_status()
    assert 'name="password"' in r.text, f"expected the provider's login form, got {r.url}"
    return s, r


def submit_login(s: requests.Session, form_page: requests.Response, username: str, password: str) -> requests.Response:
    """Post the provider's login form and follow redirects back to the hub."""
    action = unescape(FORM_ACTION.search(form_page.text).group(1))
    return s.post(urljoin(form_page.url, action), data={"username": username, "password": password}, timeout=60)


def http_login(hub_url: str, username: str, password: str) -> tuple[requests.Session, requests.Response]:
    s, page = start_login(hub_url)
    return s, submit_login(s, page, username, password)


def http_logout(s: requests.Session, hub_url: str) -> requests.Response:
    """Sign out as a browser does: ``GET /hub/logout`` shows the confirmation page (nothing changes
    yet), its form POSTs with the hub's XSRF token; returns the POST's final response."""
    page = s.get(f"{hub_url}/hub/logout", timeout=30)
    assert page.status_code == 200 and 'id="casa-logout-form"' in page.text, page.text[:300]
    form = re.search(r'<form[^>]*id="casa-logout-form"[^>]*>(.*?)</form>', page.text, re.S)
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(1)))
    return s.post(f"{hub_url}/hub/logout", data=fields, timeout=30)


def admin_api(hub_url: str, token: str, path: str, method: str = "GET", **kw) -> requests.Response:
    return requests.request(
        method, f"{hub_url}/hub/api{path}", headers={"Authorization": f"token {token}"}, timeout=30, **kw
    )


def wait_for_server(hub_url: str, token: str, username: str, timeout: float = 120) -> dict:
    """Wait until the user's default server is ready; return the user model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = admin_api(hub_url, token, f"/users/{username}").json()
        server = model.get("servers", {}).get("")
        if server and server.get("ready"):
            return model
        time.sleep(0.5)
    raise AssertionError(f"{username}'s server was not ready within {timeout} s")


def login_and_start_server(hub_url: str, admin_token: str, username: str, password: str) -> dict:
    """Sign in over HTTP, start the default server unless it runs already, wait until ready.

    Returns the user model (with ``servers[""]["state"]["pid"]``). The facility is shared by the
    whole test session, so another test may have started the server before."""
    s, r = http_login(hub_url, username, password)
    assert r.status_code == 200, r.text[:500]
    r = s.post(f"{hub_url}/hub/api/users/{username}/server",
               headers={"X-XSRFToken": s.cookies.get("_xsrf", "")}, timeout=60)
    assert r.status_code in (201, 202) or "already running" in r.text, r.text
    return wait_for_server(hub_url, admin_token, username)


def read_server_environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def verify_with_published_jwks(token: str, issuer_url: str, audience: str) -> dict:
    """Verify a facility token with the keys fetched over HTTP from the issuer's discovery."""
    discovery = requests.get(f"{issuer_url}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == issuer_url
    jwks = requests.get(discovery["jwks_uri"], timeout=10).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=audience, issuer=issuer_url)


