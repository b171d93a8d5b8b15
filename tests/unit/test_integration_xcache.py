"""XCacheIntegration: the storage token for WLCG bearer-token discovery and XRootD client settings.

Env vars carry paths and endpoints only; a misconfigured integration is skipped with one warning
that names the setting, and contributes no grant, env var or file.
"""

from __future__ import annotations

import logging
import secrets

import pytest
from integration_support import spawn_context
from traitlets.config import Config

from casa_hub.integrations import Contribution, XCacheIntegration

STORAGE = secrets.token_urlsafe(40)


def make(log: logging.Logger | None = None, **settings) -> XCacheIntegration:
    cfg = Config()
    for key, value in settings.items():
        setattr(cfg.XCacheIntegration, key, value)
    return XCacheIntegration(config=cfg, log=log or logging.getLogger("casa-test"))


def test_storage_token_is_found_through_bearer_token_file():
    part = make().contribute(spawn_context({"xcache": STORAGE}))
    # WLCG bearer-token discovery finds the storage token file; nothing else by default
    assert part.env == {"BEARER_TOKEN_FILE": "/home/alice/.casa/tokens/xcache.token"}
    assert part.files == {}
    assert make().grants() == ["xcache"]


def test_client_settings_are_exported_as_paths_and_endpoints():
    xc = make(endpoint="roots://xcache.example.org:1094", ca_dir="/etc/grid-security/certificates",
              plugin_conf_dir="/etc/xrootd/client.plugins.d",
              client_settings={"XRD_REQUESTTIMEOUT": "300", "XrdSecPROTOCOL": "ztn"})
    env = xc.contribute(spawn_context({"xcache": STORAGE})).env
    assert env == {
        "BEARER_TOKEN_FILE": "/home/alice/.casa/tokens/xcache.token",
        "CASA_XCACHE_URL": "roots://xcache.example.org:1094",
        "X509_CERT_DIR": "/etc/grid-security/certificates",
        "XRD_PLUGINCONFDIR": "/etc/xrootd/client.plugins.d",
        "XRD_REQUESTTIMEOUT": "300",
        "XrdSecPROTOCOL": "ztn",
    }
    assert not any(STORAGE in v for v in env.values()), "a token value reached the environment"


def test_without_a_storage_token_public_reads_stay_configured():
    # a user whose groups do not allow the grant: no BEARER_TOKEN_FILE, the client settings remain
    env = make(endpoint="root://xcache.example.org", ca_dir="/etc/grid-security/certificates").contribute(
        spawn_context({})).env
    assert "BEARER_TOKEN_FILE" not in env
    assert env == {"CASA_XCACHE_URL": "root://xcache.example.org",
                   "X509_CERT_DIR": "/etc/grid-security/certificates"}


def test_the_grant_is_configurable():
    xc = make(grant="storage")
    assert xc.grants() == ["storage"]
    assert xc.contribute(spawn_context({"xcache": STORAGE, "storage": STORAGE})).env == {
        "BEARER_TOKEN_FILE": "/home/alice/.casa/tokens/storage.token"}


def test_disabled_contributes_nothing():
    xc = make(enabled=False, endpoint="root://xcache.example.org")
    assert xc.grants() == []
    assert xc.contribute(spawn_context({"xcache": STORAGE})) == Contribution()


@pytest.mark.parametrize("settings, named", [
    ({"endpoint": "xcache.example.org:1094"}, "XCacheIntegration.endpoint"),
    ({"endpoint": "ftp://xcache.example.org"}, "XCacheIntegration.endpoint"),
    ({"endpoint": "root://user:pw@xcache.example.org"}, "credentials"),
    ({"ca_dir": "certificates"}, "XCacheIntegration.ca_dir"),
    ({"plugin_conf_dir": "/etc/x\nXRD_EVIL=1"}, "XCacheIntegration.plugin_conf_dir"),
    ({"client_settings": {"BEARER_TOKEN": "eyJ..."}}, "only XRD_* and XrdSec*"),
    ({"client_settings": {"XRD_PLUGINCONFDIR": "/x"}}, "plugin_conf_dir"),
    ({"client_settings": {"XRD_REQUESTTIMEOUT": "1\n2"}}, "single line"),
])
def test_misconfiguration_is_skipped_with_a_logged_reason(caplog, settings, named):
    xc = make(**settings)
    with caplog.at_level(logging.INFO, logger="casa-test"):
        assert xc.grants() == [], "a misconfigured service must not get tokens minted"
        assert xc.contribute(spawn_context({"xcache": STORAGE})) == Contribution()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, f"the reason is logged once per server: {warnings}"
    assert "XCacheIntegration is enabled but not configured correctly" in warnings[0]
    assert named in warnings[0]


def test_a_site_subclass_adds_its_own_settings():
    class SiteXCache(XCacheIntegration):
        def service_contribution(self, ctx):
            part = super().service_contribution(ctx)
            part.env["XRD_APPNAME"] = "casa-notebook"
            return part

    xc = SiteXCache(config=Config({"SiteXCache": {"endpoint": "root://cache.site.org"}}))
    env = xc.contribute(spawn_context({"xcache": STORAGE})).env
    assert env["XRD_APPNAME"] == "casa-notebook"
    assert env["CASA_XCACHE_URL"] == "root://cache.site.org", "the subclass is configured by its own name"
    assert env["BEARER_TOKEN_FILE"].endswith("/xcache.token")
