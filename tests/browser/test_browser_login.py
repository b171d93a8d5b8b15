"""A person's path through the facility, in the real headless Chromium."""

from __future__ import annotations

import os
import re

import pytest
from helpers import read_server_environ, verify_with_published_jwks, wait_for_server
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CASA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def sign_in(page, facility, username: str, password: str) -> None:
    page.goto(f"{facility.hub_url}/hub/login")
    page.get_by_role("button", name=re.compile("Sign in with")).click()
    expect(page.get_by_label("Username")).to_be_visible()
    assert page.url.startswith(facility.idp_url), f"expected the provider's page, got {page.url}"
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_lands_in_jupyterlab_with_a_verifiable_token(page, facility, admin_token, artifacts_dir):
    sign_in(page, facility, "bob", facility.password("bob"))
    page.wait_for_url(re.compile(r"/user/bob/lab"), timeout=120_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=120_000)
    expect(page.locator(".jp-Launcher").first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "jupyterlab-after-login.png"))
    (artifacts_dir / "jupyterlab-after-login.html").write_text(page.content())  # read by the leak scan

    model = wait_for_server(facility.hub_url, admin_token, "bob")
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    token = open(env["BEARER_TOKEN_FILE"]).read()
    claims = verify_with_published_jwks(token, facility.issuer_url, "casa-demo-xcache")
    assert (claims["sub"], claims["scope"]) == ("bob", "storage.read:/user/bob")
    assert token not in page.content(), "a token value must never reach a page"


def test_wrong_password_stays_at_provider_with_message(page, facility, admin_token, artifacts_dir):
    sign_in(page, facility, "alice", "wrong-password")
    expect(page.get_by_text("Invalid username or password")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "login-wrong-password.png"))
    assert page.url.startswith(facility.idp_url)
    cookies = {c["name"] for c in page.context.cookies(facility.hub_url)}
    assert "jupyterhub-hub-login" not in cookies, "no hub login cookie after a failed password"


def test_user_outside_allowed_groups_sees_clear_refusal(page, facility, admin_token, artifacts_dir):
    sign_in(page, facility, "eve", facility.password("eve"))
    expect(page.locator("p", has_text="not a member of a group allowed to use this facility")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "login-not-allowed.png"))
    assert "Traceback" not in page.content()


def test_user_without_admin_rights_then_logout_ends_both_sessions(page, facility, artifacts_dir):
    sign_in(page, facility, "alice", facility.password("alice"))
    page.wait_for_url(re.compile(r"/user/alice/"), timeout=120_000)
    page.goto(f"{facility.hub_url}/hub/home")
    expect(page.get_by_role("link", name="Token")).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)

    page.goto(f"{facility.hub_url}/hub/logout")
    # signing out is a POST from the confirmation page (a link from anywhere cannot sign a user out)
    expect(page.get_by_role("heading", name=re.compile("Sign out of"))).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(re.escape(f"{facility.hub_url}/hub/login")), timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "after-logout.png"))
    cookies = {c["name"] for c in page.context.cookies(facility.hub_url)}
    assert "jupyterhub-hub-login" not in cookies, "the hub session ended"
    # the provider session ended too: signing in asks for the password again
    page.get_by_role("button", name=re.compile("Sign in with")).click()
    expect(page.get_by_label("Password")).to_be_visible()
    assert page.url.startswith(facility.idp_url)


def test_admin_sees_the_admin_page(page, facility):
    sign_in(page, facility, "bob", facility.password("bob"))
    page.wait_for_url(re.compile(r"/user/bob/"), timeout=120_000)
    page.goto(f"{facility.hub_url}/hub/home")
    expect(page.get_by_role("link", name="Admin")).to_be_visible()
