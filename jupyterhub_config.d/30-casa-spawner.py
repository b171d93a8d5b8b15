# casa_hub drop-in: the casa spawner and profiles (casa.spawner_kind, casa.spawner, casa.profiles).
# Settings come from the site file ($CASA_SITE_CONFIG) or the Helm values (custom.casa); see the README.
from casa_hub.site_settings import apply

apply(get_config(), "spawner")  # noqa: F821 - provided by JupyterHub
