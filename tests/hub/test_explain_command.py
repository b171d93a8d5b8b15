"""`casa-hub explain CONFIG --user NAME --groups G...`: the dry run of one user's spawn.

What must hold: for a Kubernetes and a local configuration the output names the grants the user's
groups allow, each token's claims (iss, sub, aud, scope, lifetime, kid) and never a token value,
the env vars, the files with sizes and modes, and on Kubernetes the pod and Secret manifests
(valid, Secret data redacted); nothing is written, no API server is called and the facility's key
signs nothing; a user without grants or refused at login gets a clear statement; an unknown
group, profile or a broken configuration is an error with a non-zero exit status.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from kube_fake_api import FakeKubeAPI

from casa_hub import cli
from casa_hub.cli.explain_dry_run import ExplainError, explain
from casa_hub.tokens import keyring

JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
ISSUER = "https://hub.example.org/hub/casa-issuer"
#: a site's spawner whose extra config file holds the storage token (like a client config would)
SITE_SPAWNER = '''
from casa_hub.integrations import Contribution
from casa_hub.spawner import CasaKubeSpawner

class SiteKubeSpawner(CasaKubeSpawner):
    async def casa_contribute(self, ctx):
        return Contribution(env={"SITE_ENDPOINT": "https://site.example.org"},
                            files={"site.yaml": ("token: " + ctx.tokens.get("xcache", "")).encode()})

c.JupyterHub.spawner_class = SiteKubeSpawner
'''


def write_config(tmp_path: Path, kind: str, extra: str = "") -> Path:
    """A hub config like a site's: casa-oidc, two grants, XCache and HTCondor, two profiles."""
    spawner = {
        "kube": 'c.JupyterHub.spawner_class = "casa-kube"\n'
                'c.KubeSpawner.namespace = "casa"\n'
                'c.KubeSpawner.image = "registry.example.org/casa/notebook:0.1.0"\n'
                'c.KubeSpawner.cmd = ["jupyterhub-singleuser"]\n'
                'c.KubeSpawner.fs_gid = 100\n',
        "local": 'c.JupyterHub.spawner_class = "casa-local"\n'
                 f'c.CasaLocalProcessSpawner.casa_dir_template = "{tmp_path}/home/{{username}}/.casa"\n',
    }[kind]
    path = tmp_path / f"{kind}_config.py"
    path.write_text(f'''c = get_config()  # noqa
c.JupyterHub.authenticator_class = "casa-oidc"
c.CasaOIDCAuthenticator.oidc_issuer = "https://idp.example.org"
c.CasaOIDCAuthenticator.client_id = "casa-hub"
c.CasaOIDCAuthenticator.allowed_groups = {{"physicists", "visitors"}}
c.CasaOIDCAuthenticator.admin_groups = {{"facility-admins"}}
c.CasaTokenIssuer.issuer_url = "{ISSUER}"
c.CasaTokenIssuer.key_dir = "{tmp_path / "keys"}"
c.CasaTokenIssuer.grants = {{
    "xcache": {{"audience": "https://xcache.example.org", "scopes": ["storage.read:/user/{{username}}"],
               "lifetime": 1200, "groups": ["physicists"]}},
    "htcondor": {{"audience": "https://condor.example.org", "scopes": ["compute.create", "compute.read"],
                 "lifetime": 3600, "groups": ["physicists"]}},
}}
c.CasaSpawnerMixin.integration_classes = ["casa_hub.integrations.XCacheIntegration",
                                          "casa_hub.integrations.HTCondorIntegration"]
c.CasaSpawnerMixin.renewal_agent = False
c.XCacheIntegration.endpoint = "roots://xcache.example.org:1094"
c.HTCondorIntegration.collector_host = "condor.example.org:9618"
c.CasaProfiles.profiles = [
    {{"slug": "standard", "display_name": "Standard", "groups": ["physicists", "visitors"], "cpu_limit": 2,
     "mem_limit": "4G", "default": True}},
    {{"slug": "gpu", "display_name": "GPU", "groups": ["gpu-users"], "gpus": 1}},
]
{spawner}{extra}''')
    return path


@pytest.fixture
def site(tmp_path):
    """The issuer's key directory as `casa-hub keys add-next` leaves it; returns the signing kid."""
    key = keyring.add_next(tmp_path / "keys")
    return key.kid


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_token(text: str) -> None:
    found = JWT_LIKE.findall(text)
    assert not found, f"explain printed something token-shaped: {found[0][:20]}..."


def test_kube_explain_lists_grants_claims_env_files_pod_and_secret(tmp_path, site, capsys):
    config = write_config(tmp_path, "kube")
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists", "--json")
    assert code == 0, err
    assert_no_token(out + err)
    doc = json.loads(out)
    assert doc["login"] == {"allowed": True, "admin": False, "reason": "member of allowed group(s) physicists"}
    assert doc["profile"]["slug"] == "standard"
    assert {g: (e["allowed"], e["delivered"]) for g, e in doc["grants"].items()} == \
        {"xcache": (True, True), "htcondor": (True, True)}
    tokens = {t["grant"]: t for t in doc["tokens"]}
    assert tokens["xcache"]["claims"] == {
        "iss": ISSUER, "sub": "alice", "aud": "https://xcache.example.org", "wlcg.ver": "1.0",
        "scope": "storage.read:/user/alice", "wlcg.groups": ["/physicists"]}
    assert tokens["htcondor"]["claims"]["scope"] == "compute.create compute.read"
    assert tokens["xcache"]["lifetime"] == 1200 and tokens["htcondor"]["lifetime"] == 3600
    assert tokens["xcache"]["header"] == {"alg": "ES256", "kid": site, "typ": "JWT"}
    assert tokens["xcache"]["set_at_each_mint"] == ["iat", "nbf", "exp", "jti"]
    assert doc["env"]["BEARER_TOKEN_FILE"] == "/etc/casa/tokens/xcache.token"
    assert doc["env"]["CONDOR_CONFIG"] == "/etc/casa/config/condor_config"
    assert doc["env"]["CASA_PROFILE"] == "standard"
    files = {f["path"]: f for f in doc["files"]}
    assert set(files) == {"/etc/casa/tokens/xcache.token", "/etc/casa/tokens/htcondor.token",
                          "/etc/casa/config/condor_config"}
    assert {f["mode"] for f in files.values()} == {"0440"}
    assert all(f["size"] > 100 for f in files.values())

    pod, secret = doc["pod"], doc["secret"]
    kubernetes_validate.validate(pod, "1.28.0", strict=True)
    kubernetes_validate.validate(secret | {"data": {}}, "1.28.0", strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/casa/notebook:0.1.0"
    assert float(container["resources"]["limits"]["cpu"]) == 2  # the standard profile
    api_token = next(e for e in container["env"] if e["name"] == "JUPYTERHUB_API_TOKEN")
    assert api_token["valueFrom"]["secretKeyRef"] == {"name": "jupyter-alice-casa", "key": "jupyterhub-api-token"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["casa-tokens"] == {"name": "casa-tokens", "mountPath": "/etc/casa/tokens", "readOnly": True}
    assert secret["metadata"]["name"] == "jupyter-alice-casa"
    assert secret["metadata"]["ownerReferences"][0]["name"] == "jupyter-alice"
    assert set(secret["data"]) == {"token.xcache", "token.htcondor", "config.condor_config", "jupyterhub-api-token"}
    assert all(v.startswith("<redacted: ") for v in secret["data"].values())


def test_text_output_from_the_installed_command(tmp_path, site):
    config = write_config(tmp_path, "kube")
    r = subprocess.run([sys.executable, "-m", "casa_hub.cli", "explain", str(config), "--user", "alice",
                        "--groups", "physicists"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")})
    assert r.returncode == 0, r.stderr
    assert_no_token(r.stdout + r.stderr)
    assert "mint user=" not in r.stdout + r.stderr, "a dry run writes no audit line"
    for line in ("Login: allowed (member of allowed group(s) physicists)",
                 "  xcache       delivered to the server; aud https://xcache.example.org, 1200 s",
                 f"  xcache: header alg ES256, kid {site}, typ JWT; lifetime 1200 s",
                 "    scope        storage.read:/user/alice",
                 "  BEARER_TOKEN_FILE=/etc/casa/tokens/xcache.token",
                 "/etc/casa/tokens/xcache.token  (token of grant xcache)",
                 "Pod manifest (token values redacted):",
                 "Secret manifest (token values redacted):"):
        assert line in r.stdout, f"missing {line!r} in:\n{r.stdout}"


def test_local_explain_writes_nothing(tmp_path, site, capsys):
    config = write_config(tmp_path, "local")
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists", "--json")
    assert code == 0, err
    assert_no_token(out + err)
    doc = json.loads(out)
    casa_dir = tmp_path / "home" / "alice" / ".casa"
    assert doc["spawner"] == "CasaLocalProcessSpawner"
    assert doc["env"]["BEARER_TOKEN_FILE"] == f"{casa_dir}/tokens/xcache.token"
    assert {f["path"]: f["mode"] for f in doc["files"]} == {
        f"{casa_dir}/tokens/xcache.token": "0600", f"{casa_dir}/tokens/htcondor.token": "0600",
        f"{casa_dir}/config/condor_config": "0600"}
    assert "pod" not in doc and "secret" not in doc
    assert not (tmp_path / "home").exists(), "the dry run must not create the user's files"


def test_site_hook_file_with_a_token_is_listed_but_never_shown(tmp_path, site, capsys):
    config = write_config(tmp_path, "kube", SITE_SPAWNER)
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists", "--json")
    assert code == 0, err
    assert_no_token(out + err)
    doc = json.loads(out)
    assert doc["spawner"] == "SiteKubeSpawner" and doc["env"]["SITE_ENDPOINT"] == "https://site.example.org"
    site_file = next(f for f in doc["files"] if f["path"] == "/etc/casa/config/site.yaml")
    assert site_file["size"] > len("token: ") + 100  # the token is in the file, not in the output
    assert doc["secret"]["data"]["config.site.yaml"] == f"<redacted: {site_file['size']} bytes>"


def test_user_whose_groups_allow_no_grant_gets_a_statement(tmp_path, site, capsys):
    config = write_config(tmp_path, "kube")
    code, out, err = run(capsys, str(config), "--user", "eve", "--groups", "visitors")
    assert code == 0, err
    assert (">>> eve (groups: visitors) would get no facility tokens: the grants this server asks for "
            "(xcache, htcondor) are not allowed for these groups") in out
    assert "  xcache       not allowed (only for: physicists)" in out
    assert "token of grant" not in out, "no token file for a user without grants"


def test_user_refused_at_login_gets_a_statement(tmp_path, site, capsys):
    config = write_config(tmp_path, "kube")
    code, out, err = run(capsys, str(config), "--user", "mallory", "--groups", "gpu-users", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["login"]["allowed"] is False
    assert doc["statement"] == ("mallory would be refused at login: not in CasaOIDCAuthenticator.allowed_groups "
                                "(physicists, visitors) nor an admin; no tokens, no server.")
    assert "tokens" not in doc and "pod" not in doc


def test_profile_not_allowed_is_a_statement_and_an_unknown_profile_an_error(tmp_path, site, capsys):
    config = write_config(tmp_path, "kube")
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists", "--profile", "gpu")
    assert code == 0, err
    assert ">>> alice would be refused at spawn: The server profile 'gpu' is not available to your groups." in out
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists", "--profile", "huge")
    assert code == 2 and out == ""
    assert "casa-hub explain: error: --profile: There is no server profile 'huge'." in err


@pytest.mark.parametrize("args, expected", [
    (["--user", "alice", "--groups", "physicist"],
     "unknown group(s) physicist: {config} names them nowhere (allowed_groups, admin_groups, grants, profiles, "
     "roles); the groups it names: facility-admins, gpu-users, physicists, visitors"),
    (["--user", "../alice", "--groups", "physicists"], "--user '../alice': usernames may only contain"),
])
def test_unknown_group_or_unsafe_username_is_an_error(tmp_path, site, capsys, args, expected):
    config = write_config(tmp_path, "kube")
    code, out, err = run(capsys, str(config), *args)
    assert code == 2 and out == ""
    assert f"casa-hub explain: error: {expected.format(config=config)}" in err


@pytest.mark.parametrize("extra, expected", [
    ('c.CasaTokenIssuer.grants = {"xcache": {"audience": "a", "scopes": ["storage.read:/"], "lifetime": 30000}}',
     "CasaTokenIssuer.grants['xcache'].lifetime: 30000 s is longer than the maximum"),
    ('c.JupyterHub.spawner_class = "simple"', "JupyterHub.spawner_class is SimpleLocalProcessSpawner, not a casa spawner"),
    ("c.CasaTokenIssuer.grants = {", "failed to load: SyntaxError"),
])
def test_bad_configuration_is_an_error(tmp_path, site, capsys, extra, expected):
    config = write_config(tmp_path, "kube", extra + "\n")
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists")
    assert code == 2 and out == ""
    assert expected in err, err


def test_missing_config_is_an_error(tmp_path, capsys):
    code, out, err = run(capsys, str(tmp_path / "nope.py"), "--user", "alice")
    assert code == 2 and f"casa-hub explain: error: {tmp_path / 'nope.py'} does not exist" in err


async def test_dry_run_calls_no_api_server_and_signs_nothing_with_the_facility_key(tmp_path, site, caplog):
    api = FakeKubeAPI()
    api.start()
    try:
        config = write_config(tmp_path, "kube", f'c.KubeSpawner.k8s_api_host = "{api.url}"\n')
        keys_before = {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir()}
        with caplog.at_level(logging.DEBUG):
            doc = await explain(str(config), "alice", ["physicists"])
        assert doc["tokens"], "alice gets tokens in this configuration"
        assert api.requests == [], "explain must not contact the Kubernetes API server"
        assert {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir()} == keys_before
        assert not [r for r in caplog.records if "mint user=" in r.getMessage()], "no audit line: nothing minted"
    finally:
        await api.stop()


async def test_explain_error_names_the_problem_for_callers(tmp_path):
    with pytest.raises(ExplainError, match="does not exist"):
        await explain(str(tmp_path / "missing.py"), "alice", [])


def test_a_hook_that_calls_the_kubernetes_api_is_stopped(tmp_path, site, capsys):
    hook = '''
from casa_hub.spawner import CasaKubeSpawner

class LookupSpawner(CasaKubeSpawner):
    async def casa_modify_pod(self, pod):
        await self.api.read_namespaced_config_map(name="site", namespace=self.namespace)
        return pod

c.JupyterHub.spawner_class = LookupSpawner
'''
    config = write_config(tmp_path, "kube", hook)
    code, out, err = run(capsys, str(config), "--user", "alice", "--groups", "physicists")
    assert code == 2 and out == ""
    assert ("casa-hub explain: error: the dry run does not contact the Kubernetes API "
            "(something called read_namespaced_config_map)") in err
