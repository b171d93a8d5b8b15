"""``CasaKubeSpawner``: KubeSpawner with facility tokens in a per-server Secret and profiles by group."""

from __future__ import annotations

from kubespawner import KubeSpawner

from casa_hub.spawner.kube_delivery import KubeSecretDelivery
from casa_hub.spawner.mixin import CasaSpawnerMixin
from casa_hub.spawner.profiles import KubeProfiles


class CasaKubeSpawner(KubeSecretDelivery, KubeProfiles, CasaSpawnerMixin, KubeSpawner):
    """KubeSpawner with facility tokens in a per-server Secret (``casa_hub.spawner.kube_delivery``) and
    profiles filtered by the user's groups (``casa_hub.spawner.profiles.KubeProfiles``)."""
