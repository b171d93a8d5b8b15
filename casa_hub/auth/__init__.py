"""Login: the authenticator and its helpers.

- ``authenticator.py`` -- ``CasaOIDCAuthenticator`` (entry point ``casa-oidc``): discovery, PKCE,
  ID-token checks, username and groups, facility tokens at login; the override points are listed in
  its docstring;
- ``oidc.py`` -- provider discovery and ID-token verification (no JupyterHub);
- ``refresh.py`` -- single-flight ``refresh_user`` with facility re-mint;
- ``logout.py`` -- provider token revocation and RP-initiated logout;
- ``contract.py`` -- the Protocol ``refresh`` and ``logout`` are typed against, so they never import
  the authenticator.
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "CasaOIDCAuthenticator": "authenticator",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
