"""Server profiles: site-defined choices of resources and image, offered by the user's groups.

``c.CasaProfiles.profiles`` lists the profiles. A user is offered the profiles of their groups (on
Kubernetes through KubeSpawner's ``profile_list``, locally through a small options form), and the
choice is checked again when the server starts: a hand-made form post or API call naming a profile
the user may not have is refused with 403 before anything is minted or started.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from tornado import web
from traitlets import Dict, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_KEYS = {"slug", "display_name", "description", "groups", "cpu_limit", "cpu_guarantee", "mem_limit",
         "mem_guarantee", "gpus", "image", "env", "default", "kubespawner_override"}


class ProfileConfigError(ValueError):
    """A profile setting is wrong; the message names it."""


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    groups: tuple[str, ...] = ()  # empty: every user of the hub
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None
    mem_limit: str | None = None  # e.g. "4G", as JupyterHub's mem_limit
    mem_guarantee: str | None = None
    gpus: int = 0
    image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    default: bool = False
    kubespawner_override: dict[str, Any] = field(default_factory=dict)  # anything else, Kubernetes only

    def allowed_for(self, groups: Iterable[str]) -> bool:
        return not self.groups or bool(set(self.groups) & set(groups))

    def kubespawner_entry(self, gpu_resource: str) -> dict[str, Any]:
        """This profile as an entry of KubeSpawner's ``profile_list``."""
        override: dict[str, Any] = {}
        for name in ("cpu_limit", "cpu_guarantee", "mem_limit", "mem_guarantee"):
            if getattr(self, name) is not None:
                override[name] = getattr(self, name)
        if self.image:
            override["image"] = self.image
        if self.gpus:
            override["extra_resource_limits"] = {gpu_resource: str(self.gpus)}
        override.update(self.kubespawner_override)
        return {"slug": self.slug, "display_name": self.display_name, "description": self.description,
                "default": self.default, "kubespawner_override": override}


def parse_profile(raw: Any, where: str) -> Profile:
    if not isinstance(raw, dict):
        raise ProfileConfigError(f"{where}: expected a dict, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ProfileConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = raw.get("display_name")
    if not isinstance(name, str) or not name:
        raise ProfileConfigError(f"{where}.display_name: required, a non-empty string")
    slug = raw.get("slug") or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise ProfileConfigError(f"{where}.slug: {slug!r} must be lower-case letters, digits and '-'")
    groups = raw.get("groups", [])
    if not isinstance(groups, list | tuple) or not all(isinstance(g, str) and g for g in groups):
        raise ProfileConfigError(f"{where}.groups: expected a list of group names")
    for key in ("cpu_limit", "cpu_guarantee"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ProfileConfigError(f"{where}.{key}: expected a positive number of CPUs")
    for key in ("mem_limit", "mem_guarantee"):
        value = raw.get(key)
        if value is not None and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?", str(value)):
            raise ProfileConfigError(f"{where}.{key}: {value!r} is not a size such as 512M or 4G")
    gpus = raw.get("gpus", 0)
    if not isinstance(gpus, int) or gpus < 0:
        raise ProfileConfigError(f"{where}.gpus: expected a whole number >= 0")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ProfileConfigError(f"{where}.env: expected a dict of strings")
    override = raw.get("kubespawner_override", {})
    if not isinstance(override, dict):
        raise ProfileConfigError(f"{where}.kubespawner_override: expected a dict")
    return Profile(
        slug=slug, display_name=name, description=str(raw.get("description", "")),
        groups=tuple(groups), cpu_limit=raw.get("cpu_limit"), cpu_guarantee=raw.get("cpu_guarantee"),
        mem_limit=None if raw.get("mem_limit") is None else str(raw["mem_limit"]),
        mem_guarantee=None if raw.get("mem_guarantee") is None else str(raw["mem_guarantee"]),
        gpus=gpus, image=str(raw.get("image", "")), env=dict(env), default=bool(raw.get("default")),
        kubespawner_override=dict(override),
    )


def parse_profiles(raw: list[Any]) -> list[Profile]:
    profiles = [parse_profile(p, f"CasaProfiles.profiles[{i}]") for i, p in enumerate(raw)]
    seen: set[str] = set()
    for i, p in enumerate(profiles):
        if p.slug in seen:
            raise ProfileConfigError(f"CasaProfiles.profiles[{i}].slug: {p.slug!r} is used twice")
        seen.add(p.slug)
    return profiles


def refused(status: int, message: str) -> web.HTTPError:
    error = web.HTTPError(status, message)
    error.jupyterhub_message = message  # what JupyterHub shows the user
    return error


class CasaProfiles(LoggingConfigurable):
    """The site's server profiles and who may use them."""

    profiles = List(
        Dict(),
        config=True,
        help="""Server profiles. Each: ``display_name`` (required), ``slug`` (default: from the
        name), ``description``, ``groups`` (who may use it; empty or missing: every user),
        ``cpu_limit``, ``cpu_guarantee``, ``mem_limit``, ``mem_guarantee`` (e.g. "4G"), ``gpus``,
        ``image`` (Kubernetes), ``env`` (extra env vars: paths and endpoints only), ``default``,
        ``kubespawner_override`` (further KubeSpawner settings, Kubernetes only).""",
    )

    gpu_resource = Unicode(
        "nvidia.com/gpu",
        config=True,
        help="Kubernetes extended resource a profile's ``gpus`` are requested as.",
    )

    @validate("profiles")
    def _check_profiles(self, proposal: Any) -> list:
        parse_profiles(proposal.value)
        return proposal.value

    @property
    def parsed(self) -> list[Profile]:
        return parse_profiles(self.profiles)

    def for_groups(self, groups: Iterable[str]) -> list[Profile]:
        groups = list(groups)
        return [p for p in self.parsed if p.allowed_for(groups)]

    def select(self, groups: Iterable[str], user_options: dict | None) -> Profile | None:
        """The profile ``user_options`` asks for (or the default), checked against ``groups``.

        Raises a 403 ``HTTPError`` for a profile the user may not have, 400 for an unknown one."""
        if not self.profiles:
            return None
        groups = list(groups)
        slug = (user_options or {}).get("profile")
        if isinstance(slug, list):  # raw form data
            slug = slug[0] if slug else None
        allowed = self.for_groups(groups)
        if slug:
            for p in allowed:
                if p.slug == slug:
                    return p
            if any(p.slug == slug for p in self.parsed):
                raise refused(403, f"The server profile {slug!r} is not available to your groups.")
            raise refused(400, f"There is no server profile {slug!r}.")
        if not allowed:
            raise refused(403, "No server profile is available to your groups.")
        return next((p for p in allowed if p.default), allowed[0])

    def kube_profile_list(self, groups: Iterable[str]) -> list[dict[str, Any]]:
        return [p.kubespawner_entry(self.gpu_resource) for p in self.for_groups(groups)]


class KubeProfiles(LoggingConfigurable):
    """Mixed into CasaKubeSpawner: ``c.CasaProfiles.profiles`` become KubeSpawner's
    ``profile_list`` (a callable filtering by the user's groups); KubeSpawner applies the chosen
    profile's overrides (resources, image, GPUs) when the pod is built."""

    @default("profile_list")
    def _casa_profile_list_default(self) -> Any:
        return kube_profile_list if self.casa_profiles.profiles else []

    @validate("profile_list")
    def _casa_profile_list_from_casa_profiles(self, proposal: Any) -> Any:
        # Zero to JupyterHub always sets KubeSpawner.profile_list (singleuser.profileList: [])
        if self.casa_profiles.profiles:
            if proposal.value:
                self.log.warning("KubeSpawner.profile_list is set: it is used as it is, and "
                                 "CasaProfiles.profiles (filtered by groups) is ignored")
                return proposal.value
            return kube_profile_list
        return proposal.value

    def casa_apply_profile(self, profile: Profile | None) -> None:
        """Nothing here: KubeSpawner applies the profile's overrides from ``profile_list``."""


def user_groups(spawner: Any) -> list[str]:
    return sorted(g.name for g in spawner.user.groups)


def kube_profile_list(spawner: Any) -> list[dict[str, Any]]:
    """KubeSpawner's ``profile_list`` callable: the profiles of the spawning user's groups."""
    return spawner.casa_profiles.kube_profile_list(user_groups(spawner))


def render_options_form(spawner: Any) -> str:
    """A plain options form (the local spawner): one radio button per profile of the user."""
    choices = spawner.casa_profiles.for_groups(user_groups(spawner))
    if not choices:
        return "<p>No server profile is available to your groups.</p>"
    default = next((p for p in choices if p.default), choices[0])
    rows = []
    for p in choices:
        checked = " checked" if p is default else ""
        rows.append(
            f'<div class="radio"><label><input type="radio" name="profile" value="{escape(p.slug)}"'
            f'{checked}> <strong>{escape(p.display_name)}</strong> {escape(p.description)}</label></div>'
        )
    return "\n".join(rows)


def options_from_form(form_data: dict[str, list[str]]) -> dict[str, str]:
    """``{"profile": <slug>}`` from the posted form; other fields are ignored."""
    values = form_data.get("profile") or []
    return {"profile": values[0]} if values else {}


def passthrough_options(form_data: dict[str, list[str]]) -> dict[str, list[str]]:
    """JupyterHub's long-standing ``options_from_form``: the form data as it is."""
    return form_data
