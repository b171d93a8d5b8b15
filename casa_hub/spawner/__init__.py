"""Spawners: facility tokens, env and files for every notebook.

- ``mixin.py`` -- ``CasaSpawnerMixin``: the ordered site hooks (its docstring is the one list);
- ``local.py`` -- ``CasaLocalProcessSpawner`` (entry point ``casa-local``): files in a private directory;
- ``kube.py`` -- ``CasaKubeSpawner`` (entry point ``casa-kube``), with ``kube_delivery.py`` and
  ``kube_secret.py`` (one Secret per server, no token in the pod spec);
- ``profiles.py`` -- profiles offered by group; ``progress.py`` -- spawn progress and error pages.
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "CasaSpawnerMixin": "mixin",
    "CasaLocalProcessSpawner": "local",
    "CasaKubeSpawner": "kube",
    "CasaProfiles": "profiles",
    "Profile": "profiles",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
