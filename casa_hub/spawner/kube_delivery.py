"""Token delivery on Kubernetes, mixed into ``CasaKubeSpawner``.

At ``casa_deliver`` the tokens and files are only kept in memory. The pod is built with a
read-only mount of the server's Secret (``wire_pod``) and the JupyterHub API token taken from it,
then the site's ``casa_modify_pod`` runs, and a last check refuses any pod spec that contains a
token value. Once KubeSpawner has created the pod and it has a uid, the Secret is created with an
ownerReference to the pod (the kubelet waits for it before starting the container), so Kubernetes
deletes it with the pod; ``stop`` deletes it explicitly as well. If the Secret cannot be created,
KubeSpawner deletes the new pod and the spawn fails with a message naming the Secret and the API
server's answer.

The hub's service account needs ``create``, ``get`` and ``delete`` on Secrets (Zero to
JupyterHub's hub Role has them) and ``patch`` for ``casa_update_tokens``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from jupyterhub.utils import exponential_backoff, maybe_future
from kubernetes_asyncio.client import ApiException, V1Pod
from kubespawner.objects import make_owner_reference
from traitlets import Int, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from casa_hub.integrations.base import SpawnContext
from casa_hub.spawner.kube_secret import (
    TOKEN_KEY_PREFIX,
    SecretDeliveryError,
    SecretPayload,
    api_message,
    leaked_values,
    quiet_call,
    scrub,
    secret_manifest,
    wire_pod,
)


async def _create_casa_secret(spawner: Any, pod: dict) -> None:
    """KubeSpawner's ``after_pod_created_hook``: create the server's Secret, owned by ``pod``."""
    await spawner.casa_create_secret(pod)


class KubeSecretDelivery(LoggingConfigurable):
    """Facility tokens and config files in a per-server Secret, mounted read-only."""

    casa_token_dir = Unicode(
        "/etc/casa/tokens",
        config=True,
        help="Where the token files are mounted in the notebook container (``CASA_TOKEN_DIR``).",
    )

    casa_config_dir = Unicode(
        "/etc/casa/config",
        config=True,
        help="Where the integrations' config files are mounted (``CASA_CONFIG_DIR``).",
    )

    casa_secret_name_template = Unicode(
        "{pod_name}-casa",
        config=True,
        help="Name of the server's Secret holding its tokens; ``{pod_name}`` expands.",
    )

    casa_secret_file_mode = Int(
        0o440,
        config=True,
        help="""Mode of the mounted token and config files. 0o440 with the pod's fsGroup (Zero to
        JupyterHub sets ``singleuser.fsGid``: 100) lets the notebook user read them; without an
        fsGroup, use 0o444 (only this pod's containers see the files).""",
    )

    _casa_payload: SecretPayload | None = None

    @property
    def casa_secret_name(self) -> str:
        return self.casa_secret_name_template.format(pod_name=self.pod_name)

    def casa_paths(self) -> tuple[str, str]:
        return self.casa_token_dir, self.casa_config_dir

    # KubeSpawner runs after_pod_created_hook once the pod has a uid and deletes the pod if it
    # fails. The Secret's creation is chained before any hook the site configures.
    @default("after_pod_created_hook")
    def _casa_after_pod_created_default(self) -> Any:
        return _create_casa_secret

    @validate("after_pod_created_hook")
    def _casa_chain_after_pod_created(self, proposal: Any) -> Any:
        site_hook = proposal.value
        if site_hook is None:
            return _create_casa_secret
        if site_hook is _create_casa_secret or getattr(site_hook, "casa_chained", False):
            return site_hook

        async def chained(spawner: Any, pod: dict) -> None:
            await _create_casa_secret(spawner, pod)
            await maybe_future(site_hook(spawner, pod))

        chained.casa_chained = True  # type: ignore[attr-defined]
        return chained

    # ---- hook points ----------------------------------------------------------------------------

    async def casa_modify_pod(self, pod: V1Pod) -> V1Pod:
        """Site hook: change the notebook's pod before it is created; return the pod.

        Runs after the profile is applied and the Secret's volumes and env references are in
        place, before KubeSpawner's own ``modify_pod_hook``. A pod spec that would contain a token
        value is refused after this hook."""
        return pod

    # ---- delivery -------------------------------------------------------------------------------

    async def casa_deliver(self, ctx: SpawnContext, files: dict[str, bytes]) -> None:
        self._casa_payload = SecretPayload(dict(ctx.tokens), dict(files), self.api_token or "")

    async def get_pod_manifest(self) -> V1Pod:
        pod = await super().get_pod_manifest()  # type: ignore[misc]
        payload = self._casa_payload
        if payload is None:
            raise SecretDeliveryError("no facility tokens were prepared for this pod")
        wire_pod(pod, self.casa_secret_name, payload, self.casa_token_dir, self.casa_config_dir,
                 self.casa_secret_file_mode)
        pod = await maybe_future(self.casa_modify_pod(pod))
        leaks = leaked_values(pod, payload.secret_values())
        if leaks:
            raise SecretDeliveryError(
                f"refusing to create pod {self.pod_name}: its spec would contain {', '.join(leaks)}; "
                "tokens reach the notebook only through the mounted Secret"
            )
        return pod

    async def casa_create_secret(self, pod: dict) -> None:
        """Create the server's Secret with an ownerReference to ``pod`` (which has a uid)."""
        payload = self._casa_payload
        if payload is None:
            raise SecretDeliveryError("no facility tokens were prepared for this pod")
        name = self.casa_secret_name
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        labels["app.kubernetes.io/component"] = "casa-tokens"
        annotations = self._build_common_annotations(self._expand_all(self.extra_annotations))
        manifest = secret_manifest(
            name, payload, labels, annotations,
            make_owner_reference(self.pod_name, pod["metadata"]["uid"]),
        )
        try:
            await exponential_backoff(
                partial(self._casa_try_create_secret, manifest),
                f"Could not create Secret {self.namespace}/{name}",
                timeout=self.k8s_api_request_retry_timeout,
            )
        except (ApiException, TimeoutError) as e:
            why = api_message(e) if isinstance(e, ApiException) else str(e)
            raise SecretDeliveryError(scrub(
                f"Could not create the Kubernetes Secret {self.namespace}/{name} for "
                f"{self.user.name}'s facility tokens ({why}); the server was not started",
                payload.secret_values().values(),
            )) from None
        self.log.info("Created Secret %s/%s for %s: %d token file(s), %d config file(s)",
                      self.namespace, name, self.user.name, len(payload.tokens), len(payload.files))

    async def _casa_try_create_secret(self, manifest: Any) -> bool:
        """One create attempt for ``exponential_backoff``: a stale Secret of the same name is
        deleted first (it could hold another pod's ownerReference)."""
        try:
            await quiet_call(self.api.create_namespaced_secret, self.k8s_api_request_timeout,
                             namespace=self.namespace, body=manifest)
            return True
        except TimeoutError:
            return False
        except ApiException as e:
            if e.status != 409:
                raise
        self.log.info("Replacing a leftover Secret %s/%s", self.namespace, manifest.metadata.name)
        await self._casa_delete_secret()
        return False

    async def _casa_delete_secret(self) -> bool:
        name = self.casa_secret_name
        try:
            await quiet_call(self.api.delete_namespaced_secret, self.k8s_api_request_timeout,
                             namespace=self.namespace, name=name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def casa_cleanup(self) -> None:
        """Delete the server's Secret (Kubernetes would also delete it with the pod).

        KubeSpawner also stops while it starts, to remove a leftover pod of the same name; the
        prepared tokens are kept for the Secret of the pod it creates next."""
        try:
            if await self._casa_delete_secret():
                self.log.info("Deleted Secret %s/%s", self.namespace, self.casa_secret_name)
        except (ApiException, TimeoutError) as e:
            why = api_message(e) if isinstance(e, ApiException) else "timeout"
            self.log.warning("Could not delete Secret %s/%s (%s); Kubernetes deletes it with its pod",
                             self.namespace, self.casa_secret_name, why)

    async def casa_update_tokens(self, tokens: dict[str, str]) -> None:
        """Patch fresh tokens into the running server's Secret; the kubelet replaces the mounted
        files atomically (within its sync period, about a minute)."""
        grants = set(self.casa_grants())
        if self._casa_payload is not None:
            grants &= set(self._casa_payload.tokens)
        fresh = {g: t for g, t in tokens.items() if g in grants}
        if not fresh:
            return
        update = SecretPayload(tokens=fresh)
        body = {"data": {k: v for k, v in update.data().items() if k.startswith(TOKEN_KEY_PREFIX)}}
        name = self.casa_secret_name
        try:
            await quiet_call(self.api.patch_namespaced_secret, self.k8s_api_request_timeout,
                             namespace=self.namespace, name=name, body=body)
        except ApiException as e:
            hint = " (the hub's service account needs `patch` on secrets)" if e.status == 403 else ""
            raise SecretDeliveryError(scrub(
                f"Could not update Secret {self.namespace}/{name} with new tokens for "
                f"{', '.join(sorted(fresh))}: {api_message(e)}{hint}", fresh.values(),
            )) from None
        if self._casa_payload is not None:
            self._casa_payload.tokens.update(fresh)
        self.log.info("Updated Secret %s/%s with new %s token(s)", self.namespace, name,
                      ", ".join(sorted(fresh)))
