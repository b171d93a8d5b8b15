"""helm-values.yaml: the Zero to JupyterHub values schema, the drop-ins it mounts, the hub configuration
they produce from custom.casa under the chart's hub config, and the manifests in deploy/.

What must hold: the values validate against the chart's schema; the drop-in copies in
hub.extraFiles are byte for byte the repository's files; no secret value is in the file (secrets
come from Kubernetes Secrets, the issuer keys are mounted at custom.casa.tokens.key_dir); loaded
the way the chart loads its hub config (tests/z2jh_stub stands in for the chart's config and its
z2jh module), the drop-ins and hub.extraConfig give casa-oidc, casa-kube, the grants,
integrations, profiles, roles and scopes from custom.casa; `casa-hub check` passes and `casa-hub
explain` describes alice's pod; the network policies and the RBAC manifest are valid Kubernetes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from casa_hub.cli.check import load_hub, run_checks
from casa_hub.cli.explain_dry_run import explain
from casa_hub.tokens import keyring
from casa_hub.tokens.broker import RENEW_SCOPE
from casa_hub.tokens.grants import parse_grants
from casa_hub.tokens.issuer import CasaTokenIssuer

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "helm-values.yaml"
DROPINS = ROOT / "jupyterhub_config.d"
STUB = Path(__file__).resolve().parents[1] / "support" / "z2jh_stub"
MOUNT_DIR = "/usr/local/etc/jupyterhub/jupyterhub_config.d"
GATEWAY_SCOPE = "access:services!service=dask-gateway"
K8S_VERSIONS = [v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.28")]
# the chart's values schema (a copy, see its SOURCE note; override with CASA_Z2JH_SCHEMA)
SCHEMA = Path(os.environ.get("CASA_Z2JH_SCHEMA", ROOT / "tests" / "support" / "z2jh_schema" / "values.schema.yaml"))



def _sync_module():
    spec = importlib.util.spec_from_file_location("casa_sync_dropins", ROOT / "deploy" / "sync_dropins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synced = _sync_module().synced


def load(path: Path) -> dict:
    assert path.exists(), f"{path} not found; set CASA_Z2JH_SCHEMA to the Zero to JupyterHub values schema"
    return yaml.safe_load(path.read_text())


def without_required(node):
    """The schema as it applies to an overlay: Helm merges the chart's defaults (which supply every
    required key of an object) before validating, so objects' ``required`` lists are dropped; a
    ``required`` that picks one branch of a ``oneOf`` (extraFiles: data, stringData or binaryData)
    stays."""
    if isinstance(node, dict):
        drop = "properties" in node
        return {k: without_required(v) for k, v in node.items() if not (drop and k == "required")}
    if isinstance(node, list):
        return [without_required(v) for v in node]
    return node


@pytest.fixture(scope="module")
def values() -> dict:
    return load(VALUES)


def test_values_validate_against_z2jh_schema(values):
    jsonschema.validate(values, without_required(load(SCHEMA)))


def test_schema_check_catches_a_misspelled_key(values):
    values = load(VALUES)
    values["hub"]["extraEnvs"] = values["hub"].pop("extraEnv")
    with pytest.raises(jsonschema.ValidationError, match="extraEnvs"):
        jsonschema.validate(values, without_required(load(SCHEMA)))


def test_dropins_are_mounted_byte_for_byte(values):
    mounted = {Path(f["mountPath"]).name: f for f in values["hub"]["extraFiles"].values()
               if f["mountPath"].startswith(MOUNT_DIR + "/")}
    repo = {p.name: p for p in sorted(DROPINS.glob("*.py"))}
    assert sorted(mounted) == sorted(repo), "every drop-in, and only those, is mounted into the chart's directory"
    for name, path in repo.items():
        content = path.read_bytes()
        assert mounted[name]["stringData"].encode() == content, (
            f"hub.extraFiles copy of {name} differs from jupyterhub_config.d/{name}: run deploy/sync_dropins.py")
        # the chart writes stringData back with exactly one final newline
        assert content.endswith(b"\n") and not content.endswith(b"\n\n"), name
    assert synced(VALUES.read_text(), DROPINS) == VALUES.read_text()


def test_sync_script_restores_a_stale_copy():
    text = VALUES.read_text()
    last_line = (DROPINS / "20-casa-tokens.py").read_text().splitlines()[-1]
    stale = text.replace(f"        {last_line}\n", "        # an older copy\n", 1)
    assert stale != text, "the test must change a drop-in copy"
    assert synced(stale, DROPINS) == text


def test_values_carry_no_secret_values_and_valid_grants(values):
    text = VALUES.read_text()
    casa = values["custom"]["casa"]
    secret_env = casa["auth"]["client_secret"]
    assert secret_env == {"env": "OAUTH_CLIENT_SECRET"}, "the client secret is read from the environment"
    env = values["hub"]["extraEnv"]
    for name in ("JUPYTERHUB_CRYPT_KEY", secret_env["env"]):
        assert set(env[name]) == {"valueFrom"} and "secretKeyRef" in env[name]["valueFrom"], \
            f"{name} must come from a Kubernetes Secret"
    assert "CryptKeeper" not in values["hub"]["config"] and "cookieSecret" not in values["hub"]
    parse_grants(casa["tokens"]["grants"], setting="custom.casa.tokens.grants")
    assert "BEGIN" not in text.replace("# BEGIN casa drop-ins", "") and "PRIVATE KEY" not in text
    assert values["hub"]["image"]["name"] == "registry.example.org/casa/hub"


def test_issuer_keys_secret_is_mounted_at_key_dir(values):
    key_dir = values["custom"]["casa"]["tokens"]["key_dir"]
    volume = next(v for v in values["hub"]["extraVolumes"] if v["name"] == "casa-issuer-keys")
    mount = next(m for m in values["hub"]["extraVolumeMounts"] if m["name"] == "casa-issuer-keys")
    assert volume["secret"]["secretName"] == "casa-issuer-keys"
    assert mount == {"name": "casa-issuer-keys", "mountPath": key_dir, "readOnly": True}, \
        "read-only, and without subPath so a rotated Secret reaches the hub"


def test_dask_gateway_names_agree(values):
    dask = values["custom"]["casa"]["integrations"]["dask"]
    service = values["hub"]["services"]["dask-gateway"]
    hosts = {urlsplit(service["url"]).hostname, urlsplit(dask["gateway_url"]).hostname,
             urlsplit(dask["proxy_address"]).hostname}
    assert hosts == {"traefik-dask-gateway"}, "hub service, notebooks' address and scheduler proxy: one traefik"
    assert urlsplit(dask["gateway_url"]).path == "/services/dask-gateway"
    assert dask["access_groups"], "the gateway is for the facility's physicists, not every user"
    assert "casa-dask-gateway" not in values["hub"]["loadRoles"], "the drop-ins own the gateway's role"
    assert "user" not in values["hub"]["loadRoles"], "the drop-ins own the user role (enable_broker replaces it)"


def network_policy(name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": {}, **spec}}


def test_network_policy_rules_are_valid_and_open_what_notebooks_need(values):
    singleuser = values["singleuser"]["networkPolicy"]
    hub = values["hub"]["networkPolicy"]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(network_policy("singleuser", {"egress": singleuser["egress"]}), version, strict=True)
        kubernetes_validate.validate(network_policy("hub", {"ingress": hub["ingress"]}), version, strict=True)
    assert singleuser["egressAllowRules"]["privateIPs"] is False, "private addresses only through explicit rules"
    traefik = next(r for r in singleuser["egress"] if "podSelector" in r["to"][0])
    assert traefik["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "traefik"
    assert [p["port"] for p in traefik["ports"]] == [8000]
    services = next(r for r in singleuser["egress"] if "ipBlock" in r["to"][0])
    assert {p["port"] for p in services["ports"]} == {1094, 9618, 443}
    assert hub["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_rbac_manifest_validates_and_adds_only_patch_on_secrets():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "hub-secret-patch-rbac.yaml").read_text()))
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"][0]["kind"] == "ServiceAccount" and binding["subjects"][0]["name"] == "hub"
    broken = dict(role, rules=[{"resources": ["secrets"], "verbs": "patch"}])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# ---- the hub configuration the chart would load ---------------------------------------------------


def mount_extra_files(values: dict, directory: Path) -> Path:
    """What the chart mounts into its drop-in directory from hub.extraFiles."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in values["hub"]["extraFiles"].values():
        if entry["mountPath"].startswith(MOUNT_DIR + "/"):
            (directory / Path(entry["mountPath"]).name).write_text(entry["stringData"])
    return directory


@pytest.fixture
def chart_env(tmp_path, monkeypatch):
    """The hub pod's environment: values, mounted drop-ins, and the env vars from the Secrets."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(VALUES.read_text())
    monkeypatch.setenv("CASA_Z2JH_VALUES", str(values_file))
    monkeypatch.setenv("CASA_Z2JH_DROPIN_DIR", str(mount_extra_files(load(VALUES), tmp_path / "config.d")))
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "cd" * 32)
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "secret-from-the-kubernetes-secret")
    monkeypatch.setenv("POD_NAMESPACE", "casa")
    monkeypatch.delenv("CASA_SITE_CONFIG", raising=False)
    path = list(sys.path)
    CasaTokenIssuer.clear_instance()
    yield values_file
    sys.path[:] = path  # the chart's config puts its directory (with z2jh) first
    sys.modules.pop("z2jh", None)
    CasaTokenIssuer.clear_instance()


def load_chart_hub():
    try:
        return load_hub(str(STUB / "jupyterhub_config.py"))
    except TypeError as e:
        if "get_config()" in str(e):
            pytest.fail("A drop-in calls get_config(): the chart runs drop-ins with exec() in its own config's "
                        "namespace, where get_config is z2jh.get_config(key). Drop-ins must use `c` (defined both "
                        f"there and by JupyterHub's config loader). ({e})")
        raise


def test_dropins_configure_the_hub_from_custom_casa(chart_env, values):
    from casa_hub.auth.authenticator import CasaOIDCAuthenticator
    from casa_hub.integrations import (
        HTCondorIntegration,
        MLflowIntegration,
        ServiceXIntegration,
        XCacheIntegration,
    )
    from casa_hub.integrations.dask.integration import DaskIntegration
    from casa_hub.spawner import CasaKubeSpawner

    casa = values["custom"]["casa"]
    app = load_chart_hub()
    c = app.config
    assert app.authenticator_class is CasaOIDCAuthenticator and app.spawner_class is CasaKubeSpawner
    auth = c.CasaOIDCAuthenticator
    assert auth.oidc_issuer == casa["auth"]["oidc_issuer"] and auth.client_id == casa["auth"]["client_id"]
    assert auth.client_secret == "secret-from-the-kubernetes-secret"
    assert auth.allowed_groups == ["physicists"] and auth.admin_groups == ["facility-admins"]
    assert c.CasaTokenIssuer.grants == casa["tokens"]["grants"]
    assert c.CasaTokenIssuer.key_dir == "/etc/casa/issuer-keys"
    assert c.CasaSpawnerMixin.integration_classes == [XCacheIntegration, HTCondorIntegration, ServiceXIntegration,
                                                      MLflowIntegration, DaskIntegration]
    assert c.DaskIntegration.gateway_url == casa["integrations"]["dask"]["gateway_url"]
    assert c.CasaProfiles.profiles == casa["profiles"]["profiles"]
    assert c.CasaFacility.name == casa["facility"]["name"]
    assert c.JupyterHub.authenticate_prometheus is True
    assert c.KubeSpawner.image == "registry.example.org/casa/notebook:0.1.0" and c.KubeSpawner.fs_gid == 100


def test_roles_scopes_services_and_crypt_key_under_the_chart(chart_env):
    c = load_chart_hub().config
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["user"] == {"name": "user", "scopes": ["self", f"{RENEW_SCOPE}!user"]}
    assert roles["casa-dask-gateway"]["scopes"] == [GATEWAY_SCOPE]
    assert roles["casa-dask-gateway"]["groups"] == ["physicists"]
    assert "jupyterhub-idle-culler" in roles, "the chart's own role is kept"
    assert RENEW_SCOPE in c.JupyterHub.custom_scopes
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server", f"{RENEW_SCOPE}!user",
                                            GATEWAY_SCOPE]
    gateway = next(s for s in c.JupyterHub.services if s["name"] == "dask-gateway")
    assert gateway["url"] == "http://traefik-dask-gateway" and gateway["api_token"]
    assert c.CryptKeeper["keys"] == ["cd" * 32], "auth_state is encrypted with the key from casa-hub-secrets"


def test_check_passes_on_the_helm_configuration(chart_env, tmp_path):
    values = load(VALUES)
    keys = tmp_path / "issuer-keys"  # the Secret's files, as `casa-hub keys add-next` made them
    keyring.add_next(keys)
    values["custom"]["casa"]["tokens"]["key_dir"] = str(keys)
    chart_env.write_text(yaml.safe_dump(values))
    load_chart_hub()  # a clear failure if the drop-ins cannot run under the chart
    sys.modules.pop("z2jh", None)
    report = run_checks(str(STUB / "jupyterhub_config.py"), online=False)
    errors = [str(f) for f in report.findings if f.level == "error"]
    assert report.ok, errors
    topics = {f.topic for f in report.findings if f.level == "ok"}
    assert {"JupyterHub.spawner_class", "JUPYTERHUB_CRYPT_KEY", "integration dask",
            "CasaTokenIssuer.grants['htcondor']"} <= topics


async def test_explain_describes_alices_pod_from_the_helm_configuration(chart_env):
    load_chart_hub()
    sys.modules.pop("z2jh", None)
    doc = await explain(str(STUB / "jupyterhub_config.py"), "alice", ["physicists"])
    assert doc["spawner"] == "CasaKubeSpawner" and doc["profile"]["slug"] == "standard"
    assert sorted(t["grant"] for t in doc["tokens"]) == ["htcondor", "mlflow", "servicex", "xcache"]
    assert doc["pod"]["spec"]["containers"][0]["image"] == "registry.example.org/casa/notebook:0.1.0"
    assert doc["pod"]["spec"]["securityContext"]["fsGroup"] == 100
    assert doc["env"]["DASK_GATEWAY__ADDRESS"] == "http://traefik-dask-gateway/services/dask-gateway"
    dask = next(i for i in doc["integrations"] if i["name"] == "dask")
    assert dask["prepare_skipped"], "the dry run creates no Dask cluster"
