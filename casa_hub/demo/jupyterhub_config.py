# JupyterHub configuration of the embedded demo facility (`casa-hub demo`).
# Reads the state directory prepared by casa_hub.demo.facility (env CASA_DEMO_STATE).
# Everything binds 127.0.0.1; secrets are read from files, never placed on a command line.
import json
import os
import sys
from pathlib import Path

from casa_hub.tokens.broker import enable_broker

c = get_config()  # noqa: F821 - provided by JupyterHub

state = Path(os.environ["CASA_DEMO_STATE"])
settings = json.loads((state / "settings.json").read_text())
hub_url = f"http://127.0.0.1:{settings['hub_port']}"

# --- hub, proxy, database
c.JupyterHub.bind_url = hub_url
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings['hub_api_port']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
c.ConfigurableHTTPProxy.command = [str(Path(settings["node_modules"]) / ".bin" / "configurable-http-proxy")]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "secrets" / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True

# --- login: the demo OpenID Connect provider, by its issuer URL
c.JupyterHub.authenticator_class = "casa-oidc"
c.CasaOIDCAuthenticator.oidc_issuer = settings["idp_url"]
c.CasaOIDCAuthenticator.client_id = "casa-hub"
c.CasaOIDCAuthenticator.client_secret = (state / "secrets" / "oidc_client_secret").read_text()
c.CasaOIDCAuthenticator.oauth_callback_url = f"{hub_url}/hub/oauth_callback"
c.CasaOIDCAuthenticator.login_service = "the casa_hub demo identity provider"
c.CasaOIDCAuthenticator.allowed_groups = {"physicists"}
c.CasaOIDCAuthenticator.admin_groups = {"facility-admins"}
c.CasaOIDCAuthenticator.enable_auth_state = True  # key: JUPYTERHUB_CRYPT_KEY, kept in the state dir

# --- the hub's pages: the facility's name, logo and support contact (casa_hub.pages.facility_info)
c.CasaFacility.name = "casa_hub demo facility"
c.CasaFacility.support_url = "mailto:facility-support@demo.invalid"
c.JupyterHub.logo_file = str(Path(__file__).resolve().parent / "logo.svg")

# --- facility tokens
c.CasaTokenIssuer.issuer_url = settings["issuer_url"]
c.CasaTokenIssuer.key_dir = str(state / "issuer-keys")
c.CasaTokenIssuer.generate_key_if_missing = "ES256"
c.CasaTokenIssuer.grants = {
    "xcache": {
        "audience": "casa-demo-xcache",
        "scopes": ["storage.read:/user/{username}"],
        "lifetime": 20 * 60,
        "groups": ["physicists"],
    },
    "htcondor": {
        "audience": "casa-demo-htcondor",
        "scopes": ["compute.read", "compute.create", "compute.modify", "compute.cancel"],
        "groups": ["physicists"],
    },
    "operations": {  # facility admins may read the whole cache namespace
        "audience": "casa-demo-xcache",
        "scopes": ["storage.read:/"],
        "lifetime": 10 * 60,
        "groups": ["facility-admins"],
    },
}

# the token broker: sessions and servers may obtain fresh tokens for themselves only
enable_broker(c)
c.CasaTokenIssuer.broker_rate_per_minute = int(os.environ.get("CASA_DEMO_BROKER_RATE", "30"))

# --- notebooks: local processes with their token files in a private directory
c.JupyterHub.spawner_class = "casa-local"
c.CasaLocalProcessSpawner.home_dir_template = str(state / "homes" / "{username}")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.http_timeout = 90
c.Spawner.start_timeout = 120

# --- test harness only: an API token for an admin service, given through the environment
if os.environ.get("CASA_DEMO_ADMIN_TOKEN"):
    c.JupyterHub.services = [{"name": "casa-demo-admin", "api_token": os.environ["CASA_DEMO_ADMIN_TOKEN"]}]
    c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {
        "name": "casa-demo-admin",
        "scopes": ["admin:users", "admin:servers", "admin:server_state", "admin:auth_state", "list:users", "read:metrics",
                   "tokens"],
        "services": ["casa-demo-admin"],
    }]

# --- a Dask cluster per user: Dask Gateway (local backend) as a managed JupyterHub service, when
# installed (the `dask` extra) and CASA_DEMO_DASK=1 (`casa-hub demo` sets it unless --no-dask)
from casa_hub.integrations.dask.gateway_service import add_embedded_gateway, gateway_available  # noqa: E402

if gateway_available() and os.environ.get("CASA_DEMO_DASK") == "1":
    add_embedded_gateway(c, state, hub_url)

# --- extra config files (tests, site experiments), loaded last so they override the above
for extra in settings.get("extra_hub_config", []):
    load_subconfig(extra)  # noqa: F821 - provided by JupyterHub
