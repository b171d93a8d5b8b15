# Test stand-in for the hub configuration of the Zero to JupyterHub chart (4.4), reduced to what
# casa_hub meets: it is loaded by JupyterHub's config loader, puts its own directory on sys.path,
# then rebinds `get_config` to z2jh.get_config (values by dotted key), builds services and roles
# from hub.services / hub.loadRoles, sets the chart's generated crypt key, applies hub.config,
# runs every `jupyterhub_config.d/*.py` with exec() in this file's namespace (as the chart does:
# the drop-ins see `c` and z2jh's get_config), and last runs hub.extraConfig the same way.
# Paths the chart fixes are read from the environment here: $CASA_Z2JH_DROPIN_DIR is the
# directory the chart mounts hub.extraFiles into (/usr/local/etc/jupyterhub/jupyterhub_config.d).
c = get_config()  # noqa: F821 - provided by JupyterHub's config loader

import glob  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from z2jh import get_config, get_secret_value, set_config_if_not_none  # noqa: E402

c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.JupyterHub.hub_bind_url = "http://:8081"
c.JupyterHub.hub_connect_url = "http://hub:8081"
c.JupyterHub.cleanup_servers = False
c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "default")
c.KubeSpawner.common_labels = {
    "app.kubernetes.io/name": get_config("Chart.Name"),
    "app.kubernetes.io/instance": get_config("Release.Name"),
    "app.kubernetes.io/managed-by": "kubespawner",
}
for trait, key in (("fs_gid", "fsGid"), ("profile_list", "profileList"), ("extra_labels", "extraLabels")):
    set_config_if_not_none(c.KubeSpawner, trait, f"singleuser.{key}")
c.KubeSpawner.image = f'{get_config("singleuser.image.name")}:{get_config("singleuser.image.tag")}'
c.Spawner.cmd = get_config("singleuser.cmd")
set_config_if_not_none(c.Spawner, "default_url", "singleuser.defaultUrl")

c.JupyterHub.services = []
c.JupyterHub.load_roles = []
if get_config("cull.enabled", False):
    c.JupyterHub.services.append({"name": "jupyterhub-idle-culler",
                                  "command": ["python3", "-m", "jupyterhub_idle_culler"]})
    c.JupyterHub.load_roles.append({"name": "jupyterhub-idle-culler", "services": ["jupyterhub-idle-culler"],
                                    "scopes": ["list:users", "read:users:activity", "read:servers",
                                               "delete:servers"]})
for key, service in get_config("hub.services", {}).items():
    service = dict(service, name=service.get("name", key))
    service.pop("apiToken", None)
    service["api_token"] = get_secret_value(f"hub.services.{key}.apiToken")
    c.JupyterHub.services.append(service)
for key, role in get_config("hub.loadRoles", {}).items():
    c.JupyterHub.load_roles.append(dict(role, name=role.get("name", key)))

c.CryptKeeper.keys = get_secret_value("hub.config.CryptKeeper.keys").split(";")
for section, cfg in get_config("hub.config", {}).items():
    c[section].update(cfg)

for file_path in sorted(glob.glob(os.path.join(os.environ["CASA_Z2JH_DROPIN_DIR"], "*.py"))):
    with open(file_path) as f:
        exec(compile(source=f.read(), filename=os.path.basename(file_path), mode="exec"))

for _key, config_py in sorted(get_config("hub.extraConfig", {}).items()):
    exec(config_py)
