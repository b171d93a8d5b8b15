# casa_hub drop-in: the facility services notebooks are configured for (casa.integrations).
# Settings come from the site file ($CASA_SITE_CONFIG) or the Helm values (custom.casa); see the README.
from casa_hub.site_settings import apply

apply(get_config(), "integrations")  # noqa: F821 - provided by JupyterHub
