# casa_hub drop-in: who may read /hub/metrics (casa.metrics_public).
# Settings come from the site file ($CASA_SITE_CONFIG) or the Helm values (custom.casa); see the README.
from casa_hub.site_file import apply as casa_apply

casa_apply(c, "metrics")  # noqa: F821 - `c` is the hub config (JupyterHub and Zero to JupyterHub both provide it)
