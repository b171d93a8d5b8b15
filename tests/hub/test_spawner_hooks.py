"""Site hooks: a subclass overriding each hook point sees them called once each, in the documented
order (casa_hub/spawner/mixin.py's module docstring), for local processes and on Kubernetes."""

from __future__ import annotations

import logging
import sys

import pytest
from casa_spawner_harness import (  # noqa: F401 - the api fixture
    FakeUser,
    base_config,
    kube_api_fixture,
    kube_config,
    make_spawner,
    restore_kubeconfig,
    use_kubeconfig,
)

from casa_hub.integrations import Contribution, Integration
from casa_hub.spawner import CasaKubeSpawner, CasaLocalProcessSpawner
from casa_hub.tokens.issuer import CasaTokenIssuer

CALLS: list[str] = []


class RecordingIntegration(Integration):
    name = "recording"

    def grants(self):
        return ["xcache"]

    def contribute(self, ctx):
        CALLS.append("integration.contribute")
        return Contribution(env={"FROM_INTEGRATION": "1", "SHARED": "integration"})


class HookRecorder:
    """Overrides every site hook, records the call and defers to the base behaviour."""

    def casa_apply_profile(self, profile):
        CALLS.append("casa_apply_profile")
        return super().casa_apply_profile(profile)

    def casa_grants(self):
        CALLS.append("casa_grants")
        return [*super().casa_grants(), "htcondor"]  # a site grant

    async def casa_after_tokens(self, ctx):
        CALLS.append(f"casa_after_tokens:{','.join(sorted(ctx.tokens))}")

    async def casa_contribute(self, ctx):
        CALLS.append("casa_contribute")
        return Contribution(env={"SHARED": "site"}, files={"site.cfg": b"x = 1\n"})

    async def casa_deliver(self, ctx, files):
        CALLS.append(f"casa_deliver:{','.join(sorted(files))}")
        await super().casa_deliver(ctx, files)

    async def casa_cleanup(self):
        CALLS.append("casa_cleanup")
        await super().casa_cleanup()


class LocalSite(HookRecorder, CasaLocalProcessSpawner):
    def get_env(self):
        env = super().get_env()
        CALLS.append("base start")
        return env


class KubeSite(HookRecorder, CasaKubeSpawner):
    async def casa_modify_pod(self, pod):
        CALLS.append("casa_modify_pod")
        pod.metadata.labels["site.example.org/hooked"] = "yes"
        return await super().casa_modify_pod(pod)


@pytest.fixture
def config(tmp_path):
    CALLS.clear()
    c = base_config(tmp_path / "keys")
    c.CasaSpawnerMixin.integration_classes = [RecordingIntegration]
    yield c
    CasaTokenIssuer.clear_instance()


async def test_local_hooks_run_in_the_documented_order(config, tmp_path):
    config.SimpleLocalProcessSpawner.home_dir_template = str(tmp_path / "homes" / "{username}")
    config.Spawner.cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    spawner = make_spawner(LocalSite, config, FakeUser("alice", ["physicists"]), logging.getLogger("t"))
    await spawner.start()
    try:
        assert CALLS == [
            "casa_apply_profile", "casa_grants", "casa_after_tokens:htcondor,xcache",
            "integration.contribute", "casa_contribute", "casa_deliver:site.cfg", "base start",
        ]
        assert spawner.casa_env["SHARED"] == "site", "the site's env wins over the integrations'"
        token_dir, config_dir = spawner.casa_paths()
        assert (tmp_path / "homes" / "alice" / ".casa" / "tokens" / "htcondor.token").is_file()
        assert (tmp_path / "homes" / "alice" / ".casa" / "config" / "site.cfg").read_bytes() == b"x = 1\n"
        assert await spawner.poll() is None, "the notebook process runs"
    finally:
        await spawner.stop(now=True)
    assert CALLS[-1] == "casa_cleanup"


async def test_kube_hooks_run_in_the_documented_order(api, config):
    api.reset()
    kube_config(config, api)
    seen_by_site_hook = []

    def modify_pod_hook(spawner, pod):
        CALLS.append("KubeSpawner.modify_pod_hook")
        return pod

    async def after_pod_created_hook(spawner, pod):
        seen_by_site_hook.append(api.names("secrets"))
        CALLS.append("KubeSpawner.after_pod_created_hook")

    config.KubeSpawner.modify_pod_hook = modify_pod_hook
    config.KubeSpawner.after_pod_created_hook = after_pod_created_hook
    spawner = make_spawner(KubeSite, config, FakeUser("alice", ["physicists"]), logging.getLogger("t"))
    await spawner.start()
    assert CALLS == [
        "casa_apply_profile", "casa_grants", "casa_after_tokens:htcondor,xcache",
        "integration.contribute", "casa_contribute", "casa_deliver:site.cfg",
        "casa_modify_pod", "KubeSpawner.modify_pod_hook", "KubeSpawner.after_pod_created_hook",
    ]
    assert seen_by_site_hook == [["jupyter-alice-casa"]], (
        "a site's after_pod_created_hook runs after the Secret exists (chained, not replaced)")
    pod = api.sent("POST", "pods")[0].body
    assert pod["metadata"]["labels"]["site.example.org/hooked"] == "yes"
    assert sorted(api.get("secrets", "jupyter-alice-casa")["data"]) == [
        "config.site.cfg", "jupyterhub-api-token", "token.htcondor", "token.xcache"]
    await spawner.stop()
    assert CALLS[-1] == "casa_cleanup"
    assert api.names("secrets") == [] and api.names("pods") == []
