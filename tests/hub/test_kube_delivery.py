"""Token delivery on Kubernetes: the real KubeSpawner and kubernetes_asyncio client, driven through
CasaKubeSpawner against a recording stand-in for the API server (tests/kube_fake_api.py).

What must hold: one Secret per server, created after the pod and owned by it, mounted read-only;
the JupyterHub API token taken from the Secret; no token value in the pod, the log or the progress
events; a Secret that cannot be created fails the spawn and leaves no pod and no Secret; stop
deletes the Secret; fresh tokens are patched into it; every manifest validates for the Kubernetes
versions Zero to JupyterHub 4.x supports (1.28 and newer).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import kubernetes_validate
import pytest
from casa_spawner_harness import (  # noqa: F401 - the api fixture
    FakeUser,
    base_config,
    kube_api_fixture,
    kube_config,
    make_spawner,
    restore_kubeconfig,
    token_values,
    use_kubeconfig,
)
from jupyterhub.objects import Server
from leak_scan import dump_manifests
from packaging.version import Version

from casa_hub.integrations import Contribution
from casa_hub.spawner import CasaKubeSpawner
from casa_hub.spawner.kube_secret import SecretDeliveryError
from casa_hub.tokens.broker import update_running_servers
from casa_hub.tokens.issuer import CasaTokenIssuer

#: Zero to JupyterHub 4.0 requires Kubernetes 1.28+; check every version kubernetes-validate knows
K8S_VERSIONS = [v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.28")]
POD, SECRET = "jupyter-alice", "jupyter-alice-casa"


class SiteKubeSpawner(CasaKubeSpawner):
    """A site that adds a config file holding a token (like a ServiceX config) and an env var."""

    async def casa_contribute(self, ctx):
        token = ctx.tokens.get("xcache", "")
        return Contribution(env={"SITE_ENDPOINT": "https://site.test"},
                            files={"site.yaml": f"endpoint: https://site.test\ntoken: {token}\n".encode()})


@pytest.fixture
def config(api, tmp_path):
    api.reset()
    yield kube_config(base_config(tmp_path / "keys"), api)
    CasaTokenIssuer.clear_instance()


def spawner_for(cls, config, name="alice", groups=("physicists",)):
    user = FakeUser(name, list(groups))
    return make_spawner(cls, config, user, logging.getLogger("casa-test-hub")), user


async def start_collecting_progress(spawner):
    """Start the server and follow its progress events, as the hub's progress API does."""
    events: list[dict] = []

    async def follow():
        async for event in spawner.progress():
            events.append(event)

    follower = asyncio.ensure_future(follow())
    try:
        url = await spawner.start()
    finally:
        await asyncio.wait_for(follower, 30)
    return url, events


def find_leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [what for what, value in secrets.items()
            if value in text or base64.b64encode(value.encode()).decode() in text]


async def test_secret_is_created_after_the_pod_owned_by_it_and_mounted_read_only(api, config):
    spawner, user = spawner_for(CasaKubeSpawner, config)
    url = await spawner.start()
    assert url == "http://10.0.0.7:8888"
    creates = [(r.kind, r.body["metadata"]["name"]) for r in api.requests if r.method == "POST"]
    assert creates == [("pods", POD), ("secrets", SECRET)], "the Secret must follow the pod it belongs to"

    pod_uid = api.get("pods", POD)["metadata"]["uid"]
    secret = api.sent("POST", "secrets")[0].body
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": pod_uid,
         "blockOwnerDeletion": True, "controller": False}]
    assert sorted(secret["data"]) == ["jupyterhub-api-token", "token.xcache"]

    container = api.sent("POST", "pods")[0].body["spec"]["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/casa/tokens"]["readOnly"] and mounts["/etc/casa/config"]["readOnly"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {
            "name": SECRET, "key": "jupyterhub-api-token"}}}, f"{name} must come from the Secret"
    assert env["BEARER_TOKEN_FILE"]["value"] == "/etc/casa/tokens/xcache.token"
    assert env["CASA_TOKEN_DIR"]["value"] == "/etc/casa/tokens"

    # what the notebook container sees once the kubelet resolved the Secret
    seen = api.mounted[POD]
    assert seen.files["/etc/casa/tokens/xcache.token"].decode() == user.auth_state["casa_tokens"]["xcache"]["token"]
    assert seen.env["JUPYTERHUB_API_TOKEN"] == spawner.api_token
    assert not api.kubelet_errors
    await spawner.stop()


async def test_pod_and_secret_manifests_validate_for_supported_kubernetes_versions(api, config, artifacts_dir):
    assert K8S_VERSIONS and K8S_VERSIONS[0] == "1.28.0", K8S_VERSIONS
    manifests = []
    for cls in (CasaKubeSpawner, SiteKubeSpawner):  # without and with config files
        spawner, _ = spawner_for(cls, config)
        await spawner.start()
        manifests += [r.body for r in api.requests if r.method == "POST" and r.kind in ("pods", "secrets")]
        await spawner.stop()
        api.reset()
    assert [m["kind"] for m in manifests] == ["Pod", "Secret", "Pod", "Secret"]
    dump_manifests(artifacts_dir / "k8s-manifests", "kube-delivery", manifests)  # read by the leak scan
    config_volumes = [v for v in manifests[2]["spec"]["volumes"] if v["name"] == "casa-config"]
    assert config_volumes[0]["secret"]["items"] == [{"key": "config.site.yaml", "path": "site.yaml"}]
    problems = []
    for version in K8S_VERSIONS:
        for manifest in manifests:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{version} {manifest['kind']}: {e.message} at {list(e.absolute_path)}")
    assert not problems, "\n".join(problems)

    broken = json.loads(json.dumps(manifests[0]))
    broken["spec"]["volumes"][-1]["secret"] = {"secretName": SECRET, "readOnly": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


async def test_no_token_value_in_the_pod_the_log_or_the_progress_events(api, config, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the Kubernetes client's included
    spawner, user = spawner_for(SiteKubeSpawner, config)
    _, events = await start_collecting_progress(spawner)
    new_token = spawner.token_issuer.mint("alice", "xcache", ["physicists"]).token
    await spawner.casa_update_tokens({"xcache": new_token})
    await spawner.stop()

    secrets = token_values(spawner, user) | {"refreshed facility token": new_token}
    assert len(secrets) == 3
    secret_writes = [r for r in api.requests if r.kind == "secrets" and r.method in ("POST", "PATCH")]
    everything_else = [r for r in api.requests if r not in secret_writes]
    secret_text = json.dumps([r.body for r in secret_writes])
    assert sorted(find_leaks(secret_text, secrets)) == sorted(secrets), (
        "the Secret itself carries every token (base64): the check below must be able to see them")

    pod_text = json.dumps([r.body for r in everything_else if r.body is not None])
    assert '"kind": "Pod"' in pod_text
    assert find_leaks(pod_text, secrets) == [], "token value in the pod spec or another API request"
    assert "Created Secret casa/jupyter-alice-casa" in caplog.text
    assert any(r.name.startswith("kubernetes_asyncio") for r in caplog.records), "client debug log captured"
    assert find_leaks(caplog.text, secrets) == [], "token value in the hub's log"
    assert len(events) >= 6 and any("Started container" in e.get("message", "") for e in events)
    assert find_leaks(json.dumps(events, default=str), secrets) == [], "token value in progress events"


async def test_secret_creation_failure_fails_the_spawn_and_leaves_nothing(api, config, caplog):
    api.fail("POST", "secrets", 403, 'secrets is forbidden: User "system:serviceaccount:casa:hub" '
             'cannot create resource "secrets" in API group "" in the namespace "casa"', times=100)
    spawner, user = spawner_for(CasaKubeSpawner, config)
    with pytest.raises(SecretDeliveryError) as failed:
        await start_collecting_progress(spawner)
    message = str(failed.value)
    assert message.startswith("Could not create the Kubernetes Secret casa/jupyter-alice-casa for "
                              "alice's facility tokens (403 Forbidden: secrets is forbidden"), message
    assert message.endswith("the server was not started")
    assert api.names("pods") == [] and api.names("secrets") == [], "no pod and no Secret may be left"
    assert [r.name for r in api.sent("DELETE", "pods")] == [POD]
    await spawner.stop()  # what JupyterHub does after a failed start: still nothing, no error
    assert api.names("pods") == [] and api.names("secrets") == []
    assert find_leaks(message + caplog.text, token_values(spawner, user)) == []


async def test_stop_deletes_the_secret_itself(api, config):
    api.gc = False  # Kubernetes' garbage collector has not acted (yet)
    spawner, _ = spawner_for(CasaKubeSpawner, config)
    await spawner.start()
    assert api.names("secrets") == [SECRET]
    await spawner.stop()
    assert [r.name for r in api.sent("DELETE", "secrets")] == [SECRET]
    assert api.names("secrets") == [] and api.names("pods") == []


async def test_a_leftover_secret_is_replaced_not_reused(api, config):
    api.put("secrets", "casa", {"metadata": {"name": SECRET, "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": "old-pod"}]}, "data": {}})
    spawner, _ = spawner_for(CasaKubeSpawner, config)
    await spawner.start()
    secret = api.get("secrets", SECRET)
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [api.get("pods", POD)["metadata"]["uid"]]
    assert "token.xcache" in secret["data"]
    assert [r.name for r in api.sent("DELETE", "secrets")] == [SECRET]
    await spawner.stop()


async def test_a_leftover_pod_is_replaced_and_the_new_pod_gets_its_secret(api, config):
    old_uid = api.put("pods", "casa", {"metadata": {"name": POD, "labels": {}},
                                       "spec": {"containers": []}, "status": {"phase": "Running"}})["metadata"]["uid"]
    spawner, _ = spawner_for(CasaKubeSpawner, config)
    await spawner.start()  # KubeSpawner: 409 for the pod, stop (our cleanup runs), create again
    assert [r.name for r in api.sent("DELETE", "pods")] == [POD]
    new_uid = api.get("pods", POD)["metadata"]["uid"]
    assert new_uid != old_uid
    owners = api.get("secrets", SECRET)["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [new_uid]
    assert api.mounted[POD].files["/etc/casa/tokens/xcache.token"]
    await spawner.stop()


async def test_fresh_tokens_are_patched_into_the_secret(api, config):
    spawner, _ = spawner_for(CasaKubeSpawner, config)
    await spawner.start()
    new = spawner.token_issuer.mint("alice", "xcache", ["physicists"]).token
    other = spawner.token_issuer.mint("alice", "htcondor", ["physicists"]).token
    await spawner.casa_update_tokens({"xcache": new, "htcondor": other})
    patch = api.sent("PATCH", "secrets")
    assert len(patch) == 1 and patch[0].name == SECRET
    assert patch[0].content_type == "application/strategic-merge-patch+json"
    assert patch[0].body == {"data": {"token.xcache": base64.b64encode(new.encode()).decode()}}, (
        "only the tokens of grants the server has, and nothing else of the Secret")
    assert base64.b64decode(api.get("secrets", SECRET)["data"]["token.xcache"]).decode() == new

    api.fail("PATCH", "secrets", 403, "secrets is forbidden: cannot patch resource")
    with pytest.raises(SecretDeliveryError, match=r"403 Forbidden.*needs `patch` on secrets") as e:
        await spawner.casa_update_tokens({"xcache": new})
    assert new not in str(e.value)
    await spawner.stop()


async def test_the_broker_hands_its_fresh_token_to_the_running_server(api, config, caplog):
    spawner, user = spawner_for(CasaKubeSpawner, config)
    await spawner.start()
    spawner.server = Server(ip="10.0.0.7", port=8888)  # JupyterHub records the running server
    assert spawner.active
    new = spawner.token_issuer.mint("alice", "xcache", ["physicists"]).token
    await update_running_servers(user, {"xcache": new}, logging.getLogger("casa-test-hub"))
    assert base64.b64decode(api.get("secrets", SECRET)["data"]["token.xcache"]).decode() == new

    api.fail("PATCH", "secrets", 500, "etcdserver: request timed out")
    await update_running_servers(user, {"xcache": new}, logging.getLogger("casa-test-hub"))
    assert "could not hand new xcache token(s) to alice's server" in caplog.text
    assert new not in caplog.text
    spawner.server = None
    await spawner.stop()


async def test_a_pod_spec_holding_a_token_is_refused_before_anything_is_created(api, config):
    class LeakySite(CasaKubeSpawner):
        async def casa_modify_pod(self, pod):
            pod.spec.containers[0].env.append(
                type(pod.spec.containers[0].env[0])(name="OOPS", value=self._casa_payload.tokens["xcache"]))
            return pod

    spawner, _ = spawner_for(LeakySite, config)
    with pytest.raises(SecretDeliveryError, match=r"refusing to create pod jupyter-alice: its spec "
                       r"would contain the 'xcache' facility token"):
        await spawner.start()
    assert not api.sent("POST", "pods") and not api.sent("POST", "secrets")
    await spawner.stop()
