# Extra JupyterHub config of the benchmarks' baseline hub, loaded after the demo facility's config:
# oauthenticator's GenericOAuthenticator against the same provider (explicit endpoints, PKCE, groups
# from the userinfo claim, encrypted auth_state) and FastSpawner, with none of casa_hub's additions
# (authenticator, issuer endpoints, broker scope, pages, spawn steps).
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for ``benchmarks``

from benchmarks.hub_gc import install_gc_log, install_gc_signal  # noqa: E402

c = get_config()  # noqa: F821 - provided by JupyterHub

state = Path(os.environ["CASA_DEMO_STATE"])
settings = json.loads((state / "settings.json").read_text())
idp = settings["idp_url"]

c.JupyterHub.authenticator_class = "oauthenticator.generic.GenericOAuthenticator"
c.GenericOAuthenticator.client_id = "casa-hub"
c.GenericOAuthenticator.client_secret = (state / "secrets" / "oidc_client_secret").read_text()
c.GenericOAuthenticator.oauth_callback_url = f"http://127.0.0.1:{settings['hub_port']}/hub/oauth_callback"
# oidc-provider's default routes (what its discovery document lists)
c.GenericOAuthenticator.authorize_url = f"{idp}/auth"
c.GenericOAuthenticator.token_url = f"{idp}/token"
c.GenericOAuthenticator.userdata_url = f"{idp}/me"
c.GenericOAuthenticator.scope = ["openid", "profile", "email", "groups"]
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.login_service = "the casa_hub demo identity provider"
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
c.GenericOAuthenticator.allowed_groups = {"physicists"}
c.GenericOAuthenticator.admin_groups = {"facility-admins"}
c.GenericOAuthenticator.enable_auth_state = True

# undo the demo config's casa_hub additions (values set here replace the demo config's): the
# broker's custom scope, the user role that holds it, servers' tokens carrying it. What stays is
# JupyterHub's default user role and server token (the server role's scopes), and the admin service.
c.JupyterHub.custom_scopes = {}
c.JupyterHub.load_roles = [{
    "name": "casa-test-admin",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "admin:auth_state", "list:users", "read:metrics",
               "tokens"],
    "services": ["casa-test-admin"],
}] if os.environ.get("CASA_TEST_ADMIN_TOKEN") else []
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server"]

c.JupyterHub.spawner_class = "benchmarks.fast_spawner.FastSpawner"
install_gc_signal()
install_gc_log()
