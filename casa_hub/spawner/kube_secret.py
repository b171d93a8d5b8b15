"""The per-server Kubernetes Secret that carries a notebook's facility tokens and config files.

One Secret per user server holds:

- ``token.<grant>``: each facility token, mounted read-only as ``<token_dir>/<grant>.token``;
- ``config.<name>``: each integration's config file, mounted read-only as ``<config_dir>/<name>``;
- ``jupyterhub-api-token``: the server's JupyterHub API token, given to the notebook container as
  ``JUPYTERHUB_API_TOKEN`` (and ``JPY_API_TOKEN``) through ``valueFrom.secretKeyRef``.

The pod spec therefore names keys and paths only, never a token value. The Kubernetes API calls here
never ask the client to parse (and, at debug level, log) a response that would echo the Secret's data,
and errors carry the API server's status and message, never the request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client import (
    ApiException,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1KeyToPath,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1Secret,
    V1SecretKeySelector,
    V1SecretVolumeSource,
    V1Volume,
    V1VolumeMount,
)

from casa_hub.common.files import token_file_name

API_TOKEN_KEY = "jupyterhub-api-token"
TOKEN_KEY_PREFIX = "token."
CONFIG_KEY_PREFIX = "config."
#: env vars JupyterHub fills with the server's API token; taken from the Secret instead
HUB_TOKEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
TOKEN_VOLUME = "casa-tokens"
CONFIG_VOLUME = "casa-config"
_NAME_RE = re.compile(r"^[A-Za-z0-9][-._A-Za-z0-9]*$")


class SecretDeliveryError(RuntimeError):
    """The tokens could not be delivered; the message says what happened (never a token value)."""


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name) or len(name) > 200:
        raise SecretDeliveryError(
            f"cannot deliver the {kind} {name!r} on Kubernetes: names may use only letters, digits, "
            "'-', '_' and '.', starting with a letter or digit"
        )


@dataclass
class SecretPayload:
    """What goes into the Secret. Never printed: the values are left out of ``repr``."""

    tokens: dict[str, str] = field(default_factory=dict, repr=False)  # grant -> token
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # config file name -> content
    api_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for grant in self.tokens:
            _check_name("grant", grant)
        for name in self.files:
            _check_name("config file", name)

    def data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64 values)."""
        out = {f"{TOKEN_KEY_PREFIX}{g}": _b64(t.encode("ascii")) for g, t in self.tokens.items()}
        out.update({f"{CONFIG_KEY_PREFIX}{n}": _b64(c) for n, c in self.files.items()})
        if self.api_token:
            out[API_TOKEN_KEY] = _b64(self.api_token.encode("ascii"))
        return out

    def token_items(self) -> list[V1KeyToPath]:
        return [V1KeyToPath(key=f"{TOKEN_KEY_PREFIX}{g}", path=token_file_name(g)) for g in sorted(self.tokens)]

    def config_items(self) -> list[V1KeyToPath]:
        return [V1KeyToPath(key=f"{CONFIG_KEY_PREFIX}{n}", path=n) for n in sorted(self.files)]

    def secret_values(self) -> dict[str, str]:
        """Values that must never appear outside the Secret: description -> value."""
        found = {f"the {g!r} facility token": t for g, t in self.tokens.items()}
        if self.api_token:
            found["the JupyterHub API token"] = self.api_token
        return found


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def secret_manifest(
    name: str,
    payload: SecretPayload,
    labels: dict[str, str],
    annotations: dict[str, str],
    owner: V1OwnerReference,
) -> V1Secret:
    """The Secret, owned by the notebook's pod so Kubernetes deletes it with the pod."""
    return V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=V1ObjectMeta(
            name=name, labels=labels, annotations=annotations, owner_references=[owner]
        ),
        data=payload.data(),
    )


def _secret_volume(volume: str, secret: str, items: list[V1KeyToPath], mode: int) -> V1Volume:
    if not items:
        # a Secret volume without items would project every key, the API token included
        return V1Volume(name=volume, empty_dir=V1EmptyDirVolumeSource())
    return V1Volume(
        name=volume, secret=V1SecretVolumeSource(secret_name=secret, items=items, default_mode=mode)
    )


def wire_pod(
    pod: V1Pod, secret: str, payload: SecretPayload, token_dir: str, config_dir: str, mode: int
) -> V1Pod:
    """Mount the Secret read-only into the notebook container and take the hub API token from it."""
    spec = pod.spec
    container = spec.containers[0]  # KubeSpawner's notebook container comes first
    spec.volumes = [v for v in spec.volumes or [] if v.name not in (TOKEN_VOLUME, CONFIG_VOLUME)]
    spec.volumes += [
        _secret_volume(TOKEN_VOLUME, secret, payload.token_items(), mode),
        _secret_volume(CONFIG_VOLUME, secret, payload.config_items(), mode),
    ]
    mounts = [m for m in container.volume_mounts or [] if m.name not in (TOKEN_VOLUME, CONFIG_VOLUME)]
    container.volume_mounts = mounts + [
        V1VolumeMount(name=TOKEN_VOLUME, mount_path=token_dir, read_only=True),
        V1VolumeMount(name=CONFIG_VOLUME, mount_path=config_dir, read_only=True),
    ]
    ref = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=secret, key=API_TOKEN_KEY))
    env = []
    for var in container.env or []:
        if var.name in HUB_TOKEN_ENV:
            var = V1EnvVar(name=var.name, value_from=ref)
        env.append(var)
    container.env = env
    return pod


def leaked_values(obj: Any, secrets: dict[str, str]) -> list[str]:
    """Descriptions of the secret values found in ``obj`` (a Kubernetes model, dict or str),
    as they are or base64-encoded. The values themselves are never returned."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    return sorted(
        what for what, value in secrets.items()
        if value and (value in text or _b64(value.encode()) in text)
    )


def scrub(text: str, values: Iterable[str]) -> str:
    for value in values:
        if value:
            text = text.replace(value, "[redacted]").replace(_b64(value.encode()), "[redacted]")
    return text


# ---- Kubernetes API calls -------------------------------------------------------------------------


def api_message(e: ApiException) -> str:
    """``403 Forbidden: <the API server's message>`` from an ApiException."""
    message = ""
    try:
        message = json.loads(e.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        pass
    return f"{e.status} {e.reason}" + (f": {message}" if message else "")


async def quiet_call(call: Callable[..., Awaitable[Any]], timeout: float, /, **kwargs: Any) -> int:
    """Call a ``CoreV1Api`` method without parsing or logging its response; return the status.

    Raises ``ApiException`` (status, reason, and the API server's Status body) for non-2xx."""
    response = await asyncio.wait_for(call(_preload_content=False, **kwargs), timeout)
    try:
        if 200 <= response.status <= 299:
            return response.status
        body = await response.text()
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body if '"kind":"Status"' in body.replace(" ", "") else ""
        raise error
    finally:
        response.release()
