"""The demo runs the admins' configuration path: its hub config is the drop-ins of
``jupyterhub_config.d/`` reading the site file, plus the loopback overlay, and nothing else.

Only ``DemoFacility.prepare()`` runs (state directory, site file, secrets); no process is started.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import LazyConfigValue

from casa_hub.cli.check import load_hub
from casa_hub.common.ports import free_port
from casa_hub.demo.facility import DemoFacility
from casa_hub.site_file import SiteSettingsError

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "casa_hub" / "demo" / "jupyterhub_config.py"
LOOPBACK = REPO / "casa_hub" / "demo" / "loopback.py"
DROPINS = REPO / "jupyterhub_config.d"

#: how jupyterhub_config.d/README.md tells admins to run the drop-ins (as Zero to JupyterHub does)
ADMIN_EXEC = """\
from glob import glob
c = get_config()  # noqa
for f in sorted(glob({dropins!r} + "/*.py")):
    exec(compile(open(f).read(), f, "exec"))
load_subconfig({loopback!r})
"""
#: JupyterHub's own sub-config mechanism: each drop-in gets an empty config of its own
ADMIN_SUBCONFIG = """\
from glob import glob
c = get_config()  # noqa
for f in sorted(glob({dropins!r} + "/*.py")):
    load_subconfig(f)
load_subconfig({loopback!r})
"""
LOST_ROLES = ("load_subconfig gives each drop-in an empty config, so 20-casa-tokens' load_roles replaces the "
              "casa-facility-admin role 10-casa-auth wrote (jupyterhub_config.d/README.md says to exec them)")


@pytest.fixture
def fac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DemoFacility:
    """A prepared demo state directory and the environment loading its hub config needs."""
    fac = DemoFacility(tmp_path / "state", hub_port=free_port(), idp_port=free_port(), progress=lambda _: None)
    fac.prepare()
    monkeypatch.setenv("CASA_DEMO_STATE", str(fac.state_dir))
    monkeypatch.setenv("CASA_SITE_CONFIG", str(fac.state_dir / "site.json"))
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", (fac.state_dir / "secrets" / "crypt_key").read_text())
    assert len(bytes.fromhex(os.environ["JUPYTERHUB_CRYPT_KEY"])) == 32
    return fac


def admin_config(tmp_path: Path, template: str) -> Path:
    """The jupyterhub_config.py an admin writes: the shipped drop-ins, then the loopback overlay."""
    path = tmp_path / "admin" / "jupyterhub_config.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(template.format(dropins=str(DROPINS), loopback=str(LOOPBACK)))
    return path


def plain(value: Any) -> Any:
    """A (traitlets) config as nested plain dicts and lists; a lazy value as its operations."""
    if isinstance(value, LazyConfigValue):
        return {"<lazy>": plain(value.to_dict())}
    if isinstance(value, dict):  # traitlets.config.Config is a dict
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if callable(value):  # a hook defined by a config file: each load defines a new function object
        return f"<callable {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}>"
    return value


def loaded(config_file: Path) -> dict[str, Any]:
    return plain(load_hub(str(config_file)).config)


@pytest.mark.parametrize("template", [
    ADMIN_EXEC, pytest.param(ADMIN_SUBCONFIG, marks=pytest.mark.xfail(raises=AssertionError, strict=True, reason=LOST_ROLES)),
], ids=["exec", "load_subconfig"])
def test_demo_config_equals_the_admins_config(fac: DemoFacility, tmp_path: Path, template: str) -> None:
    """Loading the demo's jupyterhub_config.py gives exactly the config of an admin's file that runs
    jupyterhub_config.d/*.py in sorted order and then loopback.py."""
    demo, admin = loaded(DEMO_CONFIG), loaded(admin_config(tmp_path, template))
    assert demo == admin


def test_the_drop_ins_applied_the_site_file(fac: DemoFacility) -> None:
    """The demo's login, spawner, issuer and provider settings are the site file's, through the drop-ins;
    the client secret is read from the file the site file names."""
    secret_file = fac.state_dir / "secrets" / "oidc_client_secret"
    site = json.loads((fac.state_dir / "site.json").read_text())
    assert site["auth"]["client_secret"] == {"file": str(secret_file)}
    config = load_hub(str(DEMO_CONFIG)).config
    assert config.JupyterHub.authenticator_class == "casa-oidc"
    assert config.JupyterHub.spawner_class == "casa-local"
    assert config.CasaTokenIssuer.issuer_url == fac.issuer_url
    assert config.CasaOIDCAuthenticator.oidc_issuer == fac.idp_url
    assert config.CasaOIDCAuthenticator.client_secret == secret_file.read_text()
    assert "casa-facility-admin" in [r["name"] for r in config.JupyterHub.load_roles]


def test_demo_config_files_set_no_facility_settings() -> None:
    """Neither the demo's jupyterhub_config.py nor loopback.py assigns CasaTokenIssuer,
    CasaOIDCAuthenticator or CasaFacility settings: those come only from the site file."""
    facility_setting = re.compile(r"\bc\s*(\.\s*|\[\s*[\"'])(CasaTokenIssuer|CasaOIDCAuthenticator|CasaFacility)\b")
    for path in (DEMO_CONFIG, LOOPBACK):
        found = [line for line in path.read_text().splitlines() if facility_setting.search(line)]
        assert not found, f"{path.name} sets facility settings: {found}"


@pytest.mark.parametrize("which", ["demo", "admin"])
def test_an_unknown_site_key_stops_loading(fac: DemoFacility, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           which: str) -> None:
    """A misspelt key in the site file makes loading the hub config fail with the key's full name."""
    site = json.loads((fac.state_dir / "site.json").read_text())
    site["tokens"] = {**site["tokens"], "isuer_url": "x"}
    typo = tmp_path / "site-typo.json"
    typo.write_text(json.dumps(site))
    monkeypatch.setenv("CASA_SITE_CONFIG", str(typo))
    config_file = DEMO_CONFIG if which == "demo" else admin_config(tmp_path, ADMIN_EXEC)
    with pytest.raises(SiteSettingsError, match=r"casa\.tokens\.isuer_url is not a setting"):
        load_hub(str(config_file))
