# Test overlay (loaded after the demo's configuration): an API token for an admin service, so tests can
# read users, servers and auth_state through the hub's REST API. Never part of a facility.
import os

c = get_config()  # noqa: F821 - provided by JupyterHub

services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
c.JupyterHub.services = [*services, {"name": "casa-test-admin", "api_token": os.environ["CASA_TEST_ADMIN_TOKEN"]}]
c.JupyterHub.load_roles = [*roles, {
    "name": "casa-test-admin",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "admin:auth_state", "list:users",
               "read:metrics", "tokens"],
    "services": ["casa-test-admin"],
}]
