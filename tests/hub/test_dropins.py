"""The jupyterhub_config.d drop-ins: every combination loads, a running hub starts from them, and a
broken setting stops the hub with a message naming it."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import yaml

from casa_hub.cli.check import load_hub
from casa_hub.tokens.issuer import CasaTokenIssuer

DROPINS = sorted((Path(__file__).parents[2] / "jupyterhub_config.d").glob("*.py"))
MAIN = """\
import glob
c = get_config()  # noqa
for f in sorted(glob.glob({dropins!r} + "/*.py")):
    if any(f.endswith(name) for name in {names!r}):
        exec(compile(open(f).read(), f, "exec"))  # as the README says (and Zero to JupyterHub does)
"""


def site(tmp_path: Path, idp_url: str = "https://idp.example.org") -> dict:
    return {
        "facility": {"name": "Example Analysis Facility"},
        "auth": {"oidc_issuer": idp_url, "client_id": "casa-hub",
                 "client_secret": {"env": "CASA_TEST_CLIENT_SECRET"},
                 "allowed_groups": ["physicists"], "admin_groups": ["facility-admins"]},
        "tokens": {"issuer_url": "https://hub.example.org/hub/casa-issuer", "key_dir": str(tmp_path / "keys"),
                   "generate_key_if_missing": "ES256",
                   "grants": {"xcache": {"audience": "https://xcache.example.org",
                                         "scopes": ["storage.read:/user/{username}"]}}},
        "spawner_kind": "local",
        "integrations": {"xcache": {"endpoint": "root://xcache.example.org:1094"}},
        "metrics_public": False,
    }


def write(tmp_path: Path, settings: dict, names: list[str]) -> Path:
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(settings))
    main = tmp_path / "jupyterhub_config.py"
    main.write_text(MAIN.format(dropins=str(DROPINS[0].parent), names=names))
    return main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CASA_SITE_CONFIG", str(tmp_path / "site.yaml"))
    monkeypatch.setenv("CASA_TEST_CLIENT_SECRET", "not-a-real-secret")
    CasaTokenIssuer.clear_instance()
    yield
    CasaTokenIssuer.clear_instance()


def test_there_are_drop_ins_for_each_part():
    assert [p.name for p in DROPINS] == ["10-casa-auth.py", "20-casa-tokens.py", "30-casa-spawner.py",
                                         "40-casa-integrations.py", "60-casa-metrics.py"]


@pytest.mark.parametrize("subset", [c for n in range(1, len(DROPINS) + 1)
                                    for c in itertools.combinations([p.name for p in DROPINS], n)],
                         ids=lambda s: "+".join(n.split("-")[2].removesuffix(".py") for n in s))
def test_every_combination_loads(tmp_path, env, subset):
    app = load_hub(str(write(tmp_path, site(tmp_path), list(subset))))
    cfg = app.config
    assert ("10-casa-auth.py" in subset) == (cfg.CasaOIDCAuthenticator.get("oidc_issuer") == "https://idp.example.org")
    assert ("20-casa-tokens.py" in subset) == ("custom:casa-tokens:renew" in cfg.JupyterHub.get("custom_scopes", {}))
    if "30-casa-spawner.py" in subset:
        assert cfg.JupyterHub.spawner_class == "casa-local"
    if "40-casa-integrations.py" in subset:
        assert [c.__name__ for c in cfg.CasaSpawnerMixin.integration_classes] == ["XCacheIntegration"]
        assert cfg.XCacheIntegration.endpoint == "root://xcache.example.org:1094"
    if "60-casa-metrics.py" in subset:
        assert cfg.JupyterHub.authenticate_prometheus is True


@pytest.mark.parametrize("change, message", [
    (lambda s: s["tokens"].update(isuer_url="x"), "casa.tokens.isuer_url is not a setting; did you mean issuer_url"),
    (lambda s: s["tokens"]["grants"]["xcache"].update(lifetime=99999),
     "casa.tokens.grants: CasaTokenIssuer.grants['xcache'].lifetime: 99999 s is longer than the maximum"),
    (lambda s: s["auth"].update(client_secret={"env": "CASA_TEST_UNSET"}),
     "casa.auth.client_secret is read from the environment variable CASA_TEST_UNSET, which is not set"),
    (lambda s: s.update(spawner_kind="docker"), "casa.spawner_kind must be one of local, kube, not 'docker'"),
    (lambda s: s["integrations"].update(xcahe={}), "casa.integrations.xcahe is not a setting; did you mean xcache"),
    (lambda s: s["integrations"]["xcache"].update(endpoint=["not", "a", "string"]), "casa.integrations.xcache.endpoint"),
    (lambda s: s.update(tokenz={}), "casa.tokenz is not a setting; did you mean tokens"),
], ids=["misspelt key", "grant too long", "secret env unset", "bad spawner kind", "unknown integration",
        "wrong type", "unknown section"])
def test_a_broken_setting_stops_the_hub_with_its_name(tmp_path, env, change, message):
    settings = site(tmp_path)
    change(settings)
    os.environ.pop("CASA_TEST_UNSET", None)
    with pytest.raises(Exception, match=None) as e:
        load_hub(str(write(tmp_path, settings, [p.name for p in DROPINS])))
    assert message in str(e.value), str(e.value)
    assert "not-a-real-secret" not in str(e.value)


@pytest.mark.e2e
async def test_a_hub_starts_from_the_drop_ins(hub_app, facility, tmp_path, env, monkeypatch):
    from tornado.httpclient import AsyncHTTPClient

    monkeypatch.setenv("PATH", f"{facility.node_modules / '.bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "0" * 64)
    loaded = load_hub(str(write(tmp_path, site(tmp_path, facility.idp_url), [p.name for p in DROPINS])))
    loaded.config.JupyterHub.cookie_secret_file = str(tmp_path / "cookie_secret")
    app = await hub_app(loaded.config)
    assert type(app.authenticator).__name__ == "CasaOIDCAuthenticator"
    assert app.spawner_class.__name__ == "CasaLocalProcessSpawner"
    hub = app.proxy.public_url.rstrip("/") + "/hub/"
    r = await AsyncHTTPClient().fetch(hub + "casa-issuer/jwks.json")
    assert b'"kid"' in r.body
    meta = await app.authenticator.ensure_provider()
    assert meta.issuer == facility.idp_url


def test_drop_ins_run_the_way_zero_to_jupyterhub_runs_them(tmp_path, env, monkeypatch):
    """The chart's jupyterhub_config.py execs each drop-in in its own namespace, where `c` is the
    config and `get_config(key, default)` is the chart's values reader (z2jh.get_config)."""
    import sys
    import types

    from traitlets.config import Config

    values = {"custom.casa": site(tmp_path)}
    z2jh = types.ModuleType("z2jh")
    z2jh.get_config = lambda key, default=None: values.get(key, default)
    monkeypatch.setitem(sys.modules, "z2jh", z2jh)
    monkeypatch.delenv("CASA_SITE_CONFIG")  # the values come from the chart, not a file
    namespace = {"c": Config(), "get_config": z2jh.get_config}
    for path in DROPINS:
        exec(compile(path.read_text(), path.name, "exec"), namespace)  # noqa: S102 - as the chart does
    cfg = namespace["c"]
    assert cfg.JupyterHub.authenticator_class == "casa-oidc"
    assert cfg.CasaOIDCAuthenticator.oidc_issuer == "https://idp.example.org"
    assert cfg.CasaOIDCAuthenticator.client_secret == "not-a-real-secret"
    assert cfg.JupyterHub.spawner_class == "casa-local"
    assert "apply" not in namespace, "drop-ins must not shadow names in the chart's namespace"
