"""Profiles on Kubernetes: KubeSpawner's profile_list and options form hold only the user's groups'
profiles, and the pod's resources, image and env follow the chosen profile; a profile the user may
not have is refused (403) before anything is minted or created. Plus the profile settings' checks."""

from __future__ import annotations

import logging
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from casa_spawner_harness import (  # noqa: F401 - the api fixture
    FakeUser,
    base_config,
    kube_api_fixture,
    kube_config,
    make_spawner,
    restore_kubeconfig,
    use_kubeconfig,
)
from leak_scan import dump_manifests
from packaging.version import Version
from tornado import web

from casa_hub.spawner import CasaKubeSpawner
from casa_hub.spawner.profiles import CasaProfiles, ProfileConfigError, kube_profile_list
from casa_hub.tokens.issuer import CasaTokenIssuer

PROFILES = [
    {"slug": "standard", "display_name": "Standard analysis", "description": "2 CPUs, 4 GB",
     "groups": ["physicists"], "cpu_limit": 2, "mem_limit": "4G", "default": True,
     "env": {"CASA_SITE_QUEUE": "standard"}},
    {"slug": "admin-gpu", "display_name": "GPU (facility admins)", "groups": ["facility-admins"],
     "cpu_limit": 8, "cpu_guarantee": 2, "mem_limit": "32G", "gpus": 1,
     "image": "casa-hub/notebook-gpu:0.1.0", "env": {"CASA_SITE_QUEUE": "gpu"},
     "kubespawner_override": {"node_selector": {"casa.example.org/gpu": "true"}}},
]
K8S_VERSIONS = [v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.28")]


@pytest.fixture
def config(api, tmp_path):
    api.reset()
    c = kube_config(base_config(tmp_path / "keys"), api)
    c.CasaProfiles.profiles = PROFILES
    yield c
    CasaTokenIssuer.clear_instance()


def spawner_for(config, name, groups, options=None):
    spawner = make_spawner(CasaKubeSpawner, config, FakeUser(name, groups), logging.getLogger("t"))
    spawner.user_options = options or {}
    return spawner


def notebook_container(api):
    return api.sent("POST", "pods")[0].body["spec"]["containers"][0]


async def test_profile_list_and_form_hold_only_the_users_groups_profiles(config):
    alice = spawner_for(config, "alice", ["physicists"])
    bob = spawner_for(config, "bob", ["physicists", "facility-admins"])
    assert alice.profile_list is kube_profile_list
    assert [p["slug"] for p in kube_profile_list(alice)] == ["standard"]
    assert [p["slug"] for p in kube_profile_list(bob)] == ["standard", "admin-gpu"]
    form = await alice.get_options_form()
    assert "Standard analysis" in form and "GPU" not in form and "admin-gpu" not in form
    assert "GPU (facility admins)" in await bob.get_options_form()


async def test_casa_profiles_apply_although_zero_to_jupyterhub_sets_an_empty_profile_list(config):
    config.KubeSpawner.profile_list = []  # what the chart's singleuser.profileList: [] gives
    alice = spawner_for(config, "alice", ["physicists"])
    assert alice.profile_list is kube_profile_list
    config.CasaProfiles.profiles = []
    assert spawner_for(config, "alice", ["physicists"]).profile_list == []


async def test_a_forged_form_post_for_another_groups_profile_is_refused(config):
    alice = spawner_for(config, "alice", ["physicists"])
    with pytest.raises(web.HTTPError) as e:
        await alice.run_options_from_form({"profile": ["admin-gpu"]})
    assert e.value.status_code == 403
    assert e.value.jupyterhub_message.endswith(
        "The server profile 'admin-gpu' is not available to your groups."), e.value.jupyterhub_message
    bob = spawner_for(config, "bob", ["physicists", "facility-admins"])
    assert await bob.run_options_from_form({"profile": ["admin-gpu"]}) == {"profile": "admin-gpu"}


async def test_starting_with_a_profile_the_user_may_not_have_creates_nothing(api, config):
    alice = spawner_for(config, "alice", ["physicists"], {"profile": "admin-gpu"})
    with pytest.raises(web.HTTPError) as e:
        await alice.start()
    assert e.value.status_code == 403
    assert not [r for r in api.requests if r.method != "GET"], "no pod, no Secret"
    assert alice.user.auth_state == {}, "no token minted for a refused spawn"


async def test_the_pod_follows_the_chosen_profile(api, config, artifacts_dir):
    bob = spawner_for(config, "bob", ["physicists", "facility-admins"], {"profile": "admin-gpu"})
    await bob.start()
    pod = api.sent("POST", "pods")[0].body
    dump_manifests(artifacts_dir / "k8s-manifests", "kube-profile-gpu", [pod])  # read by the leak scan
    container = notebook_container(api)
    assert container["image"] == "casa-hub/notebook-gpu:0.1.0"
    assert container["resources"]["limits"] == {"cpu": 8.0, "memory": 32 * 2**30, "nvidia.com/gpu": "1"}
    assert container["resources"]["requests"]["cpu"] == 2.0
    assert pod["spec"]["nodeSelector"] == {"casa.example.org/gpu": "true"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CASA_PROFILE"] == "admin-gpu" and env["CASA_SITE_QUEUE"] == "gpu"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    await bob.stop()


async def test_without_a_choice_the_default_profile_of_the_users_groups_applies(api, config):
    alice = spawner_for(config, "alice", ["physicists"])
    await alice.start()
    container = notebook_container(api)
    assert container["resources"]["limits"] == {"cpu": 2.0, "memory": 4 * 2**30}
    assert container["image"] == "casa-hub/notebook:0.1.0"
    assert {e["name"]: e.get("value") for e in container["env"]}["CASA_PROFILE"] == "standard"
    await alice.stop()


@pytest.mark.parametrize(("profile", "message"), [
    ({"slug": "x"}, r"profiles\[0\]\.display_name: required"),
    ({"display_name": "X", "gpus": -1}, r"profiles\[0\]\.gpus: expected a whole number"),
    ({"display_name": "X", "mem_limit": "lots"}, r"profiles\[0\]\.mem_limit: 'lots' is not a size"),
    ({"display_name": "X", "groups": "physicists"}, r"profiles\[0\]\.groups: expected a list"),
    ({"display_name": "X", "cpu": 2}, r"profiles\[0\]: unknown key\(s\) cpu"),
    ({"display_name": "Bad Slug", "slug": "Bad Slug"}, r"profiles\[0\]\.slug: 'Bad Slug' must be"),
])
def test_a_bad_profile_setting_is_refused_with_its_name(profile, message):
    with pytest.raises(ProfileConfigError, match=r"^CasaProfiles\." + message):
        CasaProfiles(profiles=[profile])


def test_profiles_without_groups_are_for_everyone_and_unknown_slugs_are_400():
    profiles = CasaProfiles(profiles=[{"display_name": "Everyone"}, *PROFILES])
    assert [p.slug for p in profiles.for_groups(["visitors"])] == ["everyone"]
    assert profiles.select(["visitors"], {}).slug == "everyone"
    with pytest.raises(web.HTTPError) as e:
        profiles.select(["physicists"], {"profile": "nope"})
    assert e.value.status_code == 400


def test_the_profiles_in_helm_values_are_valid():
    values = yaml.safe_load((Path(__file__).parents[2] / "helm-values.yaml").read_text())
    profiles = CasaProfiles(profiles=values["custom"]["casa"]["profiles"]["profiles"])  # read by the drop-ins
    assert [p.slug for p in profiles.for_groups(["physicists"])] == ["standard"]
    assert profiles.parsed[1].kubespawner_entry("nvidia.com/gpu")["kubespawner_override"][
        "extra_resource_limits"] == {"nvidia.com/gpu": "1"}
