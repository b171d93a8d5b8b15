# casa_hub drop-in: login through the facility's OpenID Connect provider (casa.auth, casa.facility), and
# the largest request body the hub reads (casa.hub).
# Settings come from the site file ($CASA_SITE_CONFIG) or the Helm values (custom.casa); see the README.
from casa_hub.site_file import apply as casa_apply

casa_apply(c, "auth")  # noqa: F821 - `c` is the hub config (JupyterHub and Zero to JupyterHub both provide it)
