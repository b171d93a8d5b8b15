"""The hub's pages as a physicist sees them, in the real headless Chromium against a real hub and
provider: sign-in, the spawn form with profiles, spawn progress, "My facility", renewing tokens, a
service that is down, and a refused user. Every page is screenshotted into test-artifacts/ and
checked with axe-core: no serious or critical accessibility violations.

The facility here adds tests/support/pages_hub_config.py: profiles by group and two services that ask a
small HTTP service this module can take down (pages_support.ProbeService). It is
``shared_pages_facility`` (tests/support/shared_facilities.py), whose earlier users leave alice without
a server; its profiles (``shared_facilities.PROFILES_CONFIG``) are this file's plus a GPU profile for
facility admins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from facilities import stop_servers
from helpers import admin_api, read_server_environ, wait_for_server
from pages_support import ProbeService, secret_values, serious_violations
from playwright.sync_api import expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = os.environ.get("CASA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-first-run",
]
EXPIRY_TEXT = re.compile(r"^in (\d+ h )?(\d+ min )?\d+ s$")


@pytest.fixture(scope="module")
def probe(shared_probe) -> ProbeService:
    return shared_probe


@pytest.fixture(scope="module")
def site(shared_pages_facility, admin_token):
    """A facility with the test pages' configuration; alice's server is stopped when the module ends."""
    yield shared_pages_facility
    stop_servers(shared_pages_facility, admin_token, "alice")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    return context.new_page()


def sign_in(page, site, username: str) -> None:
    page.goto(f"{site.hub_url}/hub/login")
    page.get_by_role("button", name=re.compile("Sign in with")).click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(site.password(username))
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture(scope="module")
def alice(browser, site):
    """Alice's browser tab, signed in once for the whole module (she has no server yet)."""
    page = new_page(browser)
    sign_in(page, site, "alice")
    page.wait_for_url(re.compile(r"/hub/spawn"))
    yield page
    page.context.close()


def check_page(page, name: str, artifacts_dir: Path) -> None:
    """Screenshot ``name`` into the artifacts and assert axe-core finds nothing serious."""
    page.screenshot(path=str(artifacts_dir / f"pages-{name}.png"), full_page=True)
    (artifacts_dir / f"pages-{name}.html").write_text(page.content())  # read by the leak scan
    problems = serious_violations(page, artifacts_dir / f"axe-pages-{name}.json")
    assert not problems, f"accessibility problems on the {name} page:\n" + "\n".join(problems)


def auth_state(site, admin_token, username: str) -> dict:
    return admin_api(site.hub_url, admin_token, f"/users/{username}").json()["auth_state"]


def grant_cells(page, grant: str) -> dict:
    row = page.locator(f'#casa-grants tr[data-grant="{grant}"]')
    cell = row.locator(".casa-expiry")
    return {
        "expires_in": int(cell.get_attribute("data-expires-in")),
        "expires_at": int(cell.get_attribute("data-expires-at")),
        "jti": row.locator(".casa-jti").inner_text().strip(),
        "scopes": row.locator(".casa-scopes li").all_inner_texts(),
        "audience": row.locator(".casa-aud").inner_text().strip(),
    }


def test_sign_in_page_names_the_facility_its_provider_and_shows_its_logo(browser, site, artifacts_dir):
    page = new_page(browser)
    page.goto(f"{site.hub_url}/hub/login")
    expect(page).to_have_title(re.compile("Test Analysis Facility"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to Test Analysis Facility")
    logo = page.get_by_role("img", name="Test Analysis Facility logo")
    assert logo.get_attribute("src").startswith("data:image/svg+xml"), "the logo comes from CasaFacility.logo_url"
    expect(page.locator("#casa-idp-note")).to_contain_text("You sign in with Test Facility Login")
    expect(page.get_by_role("button", name="Sign in with Test Facility Login")).to_be_visible()
    expect(page.get_by_role("link", name="Contact the facility's support")).to_have_attribute(
        "href", "https://support.test-facility.invalid/help")
    # keyboard: the skip link comes first, then the sign-in button is reachable with Tab
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    check_page(page, "sign-in", artifacts_dir)
    page.context.close()


def test_spawn_form_offers_the_groups_profiles_and_shows_a_refusal_next_to_the_field(
        alice, site, admin_token, artifacts_dir):
    page = alice
    page.goto(f"{site.hub_url}/hub/spawn")
    expect(page.get_by_role("heading", level=1)).to_have_text("Start your server")
    expect(page.get_by_role("radio", name=re.compile("Standard"))).to_be_checked()
    expect(page.get_by_role("radio", name=re.compile("Large memory"))).to_be_visible()
    expect(page.locator("#spawn_form")).to_contain_text("2 CPUs and 8 GB of memory")
    expect(page.locator("#spawn_form")).not_to_contain_text("Operations")  # facility-admins only
    check_page(page, "spawn-form", artifacts_dir)

    # a hand-made post naming a profile of another group: refused by the server, shown at the field
    page.evaluate("document.querySelector('input[name=profile][value=large]').value = 'operations'")
    page.get_by_role("radio", name=re.compile("Large memory")).check()
    page.get_by_role("button", name="Start server").click()
    summary = page.locator("#casa-form-errors")
    expect(summary).to_be_visible()
    expect(summary).to_contain_text("not available to your groups")
    expect(summary).to_be_focused()
    message = page.locator("#spawn_form .casa-field-message")
    expect(message).to_have_text(re.compile(r"^Error: .*'operations' is not available to your groups"))
    assert message.evaluate("""m => {
        const radios = m.closest("form").querySelectorAll("input[name=profile]");
        return m.previousElementSibling.contains(radios[radios.length - 1]);
    }"""), "the message follows the profile choices"
    message_id = message.get_attribute("id")
    for radio in page.locator("input[name=profile]").all():
        assert radio.get_attribute("aria-invalid") == "true"
        assert message_id in radio.get_attribute("aria-describedby").split()
    summary.get_by_role("link", name="Server profile").click()
    expect(page.locator("input[name=profile]").first).to_be_focused()
    check_page(page, "spawn-form-error", artifacts_dir)
    servers = admin_api(site.hub_url, admin_token, "/users/alice").json()["servers"]
    assert servers == {}, "a refused form starts no server"


def test_spawn_progress_names_each_casa_step_and_starts_with_the_profile(
        alice, site, admin_token, probe, artifacts_dir):
    page = alice
    probe.gate.clear()  # the test data service holds the spawn after the "tokens" step
    try:
        page.goto(f"{site.hub_url}/hub/spawn")
        page.get_by_role("radio", name=re.compile("Large memory")).check()
        page.get_by_role("button", name="Start server").click()
        page.wait_for_url(re.compile(r"/hub/spawn-pending/alice"))
        steps = page.locator("#casa-steps li")
        expect(steps.filter(has_text=re.compile(r"^Facility tokens: ready \(xcache\)$"))).to_have_count(1)
        expect(steps.filter(has_text="Facility tokens: obtaining xcache")).to_have_count(1)
        assert steps.filter(has_text="Services:").count() == 0, "the spawn waits at the gate"
        expect(page.get_by_role("progressbar", name="Server start")).to_be_visible()
        check_page(page, "spawn-progress", artifacts_dir)
    finally:
        probe.gate.set()
    expect(steps.filter(has_text=re.compile(r"^Services: configured XCache, Test data service, Dask cluster$"))
           ).to_have_count(1)
    expect(steps.filter(has_text=re.compile(r"^Secret: "))).to_have_count(1)
    page.wait_for_url(re.compile(r"/user/alice/lab"), timeout=120_000)

    model = wait_for_server(site.hub_url, admin_token, "alice")
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    assert env["CASA_PROFILE"] == "large", "the chosen profile is the server's"
    assert env["MEM_LIMIT"] == str(8 * 1024**3)


def test_my_facility_shows_grants_services_cluster_and_a_decreasing_expiry(
        alice, site, admin_token, probe, artifacts_dir):
    page = alice
    page.goto(f"{site.hub_url}/hub/home")
    check_page(page, "home", artifacts_dir)
    page.get_by_role("link", name="Open My facility").click()
    page.wait_for_url(f"{site.hub_url}/hub/casa/facility")
    expect(page.get_by_role("heading", level=1)).to_have_text("My facility")
    expect(page.get_by_role("link", name="My facility")).to_have_attribute("aria-current", "page")

    state = auth_state(site, admin_token, "alice")
    stored = state["casa_tokens"]
    rows = page.locator("#casa-grants tr[data-grant]")
    expect(rows).to_have_count(2)  # xcache and htcondor; "operations" is for facility-admins
    xcache, htcondor = grant_cells(page, "xcache"), grant_cells(page, "htcondor")
    assert (xcache["audience"], xcache["scopes"]) == ("casa-demo-xcache", ["storage.read:/user/alice"])
    assert htcondor["scopes"] == ["compute.read", "compute.create", "compute.modify", "compute.cancel"]
    for grant, shown in (("xcache", xcache), ("htcondor", htcondor)):
        assert (shown["jti"], shown["expires_at"]) == (stored[grant]["jti"], stored[grant]["exp"]), \
            "the page shows the recorded token's id and expiry"
    expect(page.locator('tr[data-grant="xcache"] .casa-remaining')).to_have_text(EXPIRY_TEXT)
    content = page.content()
    for secret in secret_values(state):
        assert secret not in content, "a token value reached the page"

    # the time to expiry decreases: read it again once the server's reading has moved on
    first = xcache
    while (second := grant_cells(page, "xcache"))["expires_in"] == first["expires_in"]:
        page.wait_for_timeout(250)
        page.reload()
    assert second["expires_in"] < first["expires_in"], "the time to expiry must go down"
    assert second["expires_at"] == first["expires_at"], "same token, same expiry"

    service = page.locator('#casa-services tr[data-service="testdata"]')
    expect(service).to_contain_text("Test data service")
    expect(service).to_contain_text(probe.url)
    expect(service.locator(".casa-service-state")).to_have_text("answering")
    expect(page.locator(".casa-dask-state")).to_have_text("running")
    expect(page.locator(".casa-dask-workers")).to_have_text("2")
    expect(page.get_by_role("link", name="Open the Dask dashboard")).to_have_attribute(
        "href", f"{probe.url}/dashboard/alice")
    check_page(page, "my-facility", artifacts_dir)


def test_renew_tokens_now_shows_new_token_ids_and_expiry(alice, site, admin_token, artifacts_dir):
    page = alice
    page.goto(f"{site.hub_url}/hub/casa/facility")
    before = {g: grant_cells(page, g) for g in ("xcache", "htcondor")}
    button = page.get_by_role("button", name="Renew tokens now")
    button.focus()
    page.keyboard.press("Enter")  # operable from the keyboard
    status = page.locator("#casa-renew-status")
    expect(status).to_have_text(re.compile(r"^Renewed: xcache until .* UTC, htcondor until .* UTC\.$"))
    # the broker records mints in memory, not in auth_state: the audit log says which token is newest
    log = (site.log_dir / "hub.log").read_text()
    for grant in ("xcache", "htcondor"):
        after = grant_cells(page, grant)
        assert after["jti"] != before[grant]["jti"], f"{grant}: a new token was issued"
        assert after["expires_at"] >= before[grant]["expires_at"]
        newest = re.findall(rf"mint user=alice grant={grant} jti=(\S+) .* exp=(\d+)", log)[-1]
        assert (after["jti"], after["expires_at"]) == (newest[0], int(newest[1])), \
            f"{grant}: the page shows the newest token the hub minted"
    for secret in secret_values(auth_state(site, admin_token, "alice")):
        assert secret not in page.content()
    check_page(page, "my-facility-renewed", artifacts_dir)


def test_a_service_that_is_down_gives_clear_pages(alice, site, admin_token, probe, artifacts_dir):
    page = alice
    r = admin_api(site.hub_url, admin_token, "/users/alice/server", method="DELETE")
    assert r.status_code in (202, 204), r.text
    while admin_api(site.hub_url, admin_token, "/users/alice").json()["servers"]:
        page.wait_for_timeout(250)
    probe.healthy.clear()  # the test data service (and the cluster's status) answer 503
    probe.gate.clear()
    try:
        page.goto(f"{site.hub_url}/hub/casa/facility")
        state = page.locator('#casa-services tr[data-service="testdata"] .casa-service-state')
        expect(state).to_have_text(f"unavailable: the service at {probe.url} is down (HTTP 503)")
        expect(page.locator(".casa-dask-unavailable")).to_contain_text(
            f"Unavailable: the service at {probe.url} is down (HTTP 503)")
        check_page(page, "my-facility-service-down", artifacts_dir)

        page.goto(f"{site.hub_url}/hub/spawn")
        page.get_by_role("button", name="Start server").click()
        page.wait_for_url(re.compile(r"/hub/spawn-pending/alice"))
        expect(page.locator("#casa-steps li").filter(has_text="Facility tokens: ready")).to_have_count(1)
        probe.gate.set()  # the spawn goes on to configure the services, and fails there
        failure = page.locator("#casa-spawn-failed")
        expect(failure).to_be_visible()
        expect(failure).to_be_focused()
        expect(failure).to_contain_text("Test data service is unavailable.")
        expect(failure).to_contain_text(f"The service at {probe.url} is down (HTTP 503). Your server was not started.")
        expect(failure).to_contain_text("What to do: Try starting your server again in a few minutes.")
        expect(failure.get_by_role("link", name="Try again")).to_be_visible()
        check_page(page, "spawn-failed", artifacts_dir)

        page.reload()  # the hub's page for a server whose last start failed
        expect(page.get_by_role("heading", level=1)).to_have_text("Test data service is unavailable")
        expect(page.locator(".casa-failure")).to_contain_text(f"The service at {probe.url} is down (HTTP 503).")
        expect(page.get_by_role("heading", name="What to do")).to_be_visible()
        expect(page.get_by_role("button", name="Try again")).to_be_visible()
        content = page.content()
        assert "Traceback" not in content and 'File "/' not in content, "no stack trace on a page"
        for secret in secret_values(auth_state(site, admin_token, "alice")):
            assert secret not in content
        check_page(page, "spawn-failed-reload", artifacts_dir)
    finally:
        probe.gate.set()
        probe.healthy.set()


def test_a_refused_user_sees_a_short_heading_the_reason_and_what_to_do(browser, site, artifacts_dir):
    page = new_page(browser)
    sign_in(page, site, "eve")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text("Access denied")
    expect(page.locator("p.casa-message")).to_contain_text("not a member of a group allowed to use this facility")
    expect(page.locator(".casa-error-code")).to_have_text("Error 403")
    expect(page.locator(".casa-advice")).to_contain_text("ask the facility's administrators")
    assert "Traceback" not in page.content()
    check_page(page, "error-403", artifacts_dir)
    page.context.close()


def test_the_accessibility_check_reports_serious_problems(browser, tmp_path):
    """The axe-core check above can fail: a page with an unlabelled field, an image without a text
    alternative and low-contrast text is reported."""
    page = new_page(browser)
    page.set_content(
        '<html lang="en"><head><title>bad</title></head><body><main>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><input type="text">'
        '<p style="color:#bbb;background:#fff">hard to read</p></main></body></html>'
    )
    found = {line.split(" ")[0] for line in serious_violations(page, tmp_path / "axe.json")}
    assert {"image-alt", "label", "color-contrast"} <= found, found
    page.context.close()
