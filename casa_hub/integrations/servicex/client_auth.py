"""ServiceX client plugin: the facility's ServiceX gets the user's ServiceX token, nothing else.

The ServiceX client (PyPI ``servicex`` 3.x) sends the file named by ``BEARER_TOKEN_FILE`` as its
access token when that variable is set. In a facility notebook that file is the *storage* token
(WLCG bearer-token discovery, for XRootD), so the stock client would send the storage token to
ServiceX. The client loads the ``servicex.query`` entry points whenever ``servicex`` is imported;
casa_hub registers this module there, and importing it adjusts the client in that process:

- **Token.** When ``CASA_SERVICEX_URL`` is set (casa_hub's ServiceX integration sets it), the
  client's bearer-token lookup returns, for the endpoint at that URL, the current content of
  ``CASA_SERVICEX_TOKEN_FILE`` (read on every lookup, so renewed tokens are used), and for every
  other endpoint nothing, so the storage token never goes to any ServiceX. Other endpoints use the
  refresh ``token`` of their entry in the user's own ServiceX config, as usual. Without
  ``CASA_SERVICEX_URL`` the client behaves as shipped.
- **Config.** When the client's own search (``.servicex`` / ``servicex.yaml`` upward from the
  working directory, then in ``$HOME``) finds nothing and no path was given, the file named by
  ``CASA_SERVICEX_CONFIG`` is read. A user's own file keeps precedence.

Without this plugin (casa_hub not installed where the client runs) the client finds no
configuration and refuses to start, so it fails closed instead of sending the storage token.
Token values are never logged.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from casa_hub.integrations.servicex.integration import ENV_CONFIG, ENV_TOKEN_FILE, ENV_URL

log = logging.getLogger("casa_hub.servicex")

#: what install() replaced: {"bearer": staticmethod, "read": classmethod}
_originals: dict[str, Any] = {}


class CasaFacilityAuth:
    """The object the ServiceX client loads from casa_hub's ``servicex.query`` entry point.

    Loading it imports this module, which installs the facility token selection (see the module
    doc). It is not a query type and has no use of its own."""

    yaml_tag = "!CasaFacilityAuth"


def _same_endpoint(a: str, b: str) -> bool:
    pa, pb = urlsplit(a.strip()), urlsplit(b.strip())
    return (
        pa.scheme.lower() == pb.scheme.lower()
        and pa.netloc.lower() == pb.netloc.lower()
        and pa.path.rstrip("/") == pb.path.rstrip("/")
    )


def facility_token(url: str) -> str | None:
    """The token to send to the ServiceX at ``url``: the facility's for its endpoint, else None."""
    facility = os.environ.get(ENV_URL, "")
    if not facility or not _same_endpoint(url, facility):
        return None
    path = os.environ.get(ENV_TOKEN_FILE, "")
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError as e:
        log.warning("casa_hub: cannot read the ServiceX token file %s (%s)", path, e.strerror)
        return None


def install() -> bool:
    """Adjust the ServiceX client in this process (idempotent). False if it cannot be adjusted."""
    if _originals:
        return True
    try:
        from servicex.configuration import Configuration
        from servicex.servicex_adapter import ServiceXAdapter
    except ImportError:
        return False
    bearer = ServiceXAdapter.__dict__.get("_get_bearer_token_file")
    read = Configuration.__dict__.get("read")
    if not isinstance(bearer, staticmethod) or not isinstance(read, classmethod):
        log.warning(
            "casa_hub: this ServiceX client has no bearer-token lookup to adjust; the facility's "
            "ServiceX token is not used (BEARER_TOKEN_FILE, the storage token, may be sent instead)"
        )
        return False

    def _get_bearer_token_file(self: ServiceXAdapter) -> str | None:
        if not os.environ.get(ENV_URL):
            return bearer.__func__()
        return facility_token(self.url)

    def _read(cls: type, config_path: str | None = None) -> Any:
        try:
            return read.__func__(cls, config_path)
        except NameError:  # the client's "Can't find .servicex or servicex.yaml config file"
            fallback = os.environ.get(ENV_CONFIG, "")
            if config_path or not fallback or not os.path.isfile(fallback):
                raise
            return read.__func__(cls, fallback)

    _get_bearer_token_file.__doc__ = "casa_hub: the facility's ServiceX token for its endpoint."
    _read.__doc__ = read.__func__.__doc__
    ServiceXAdapter._get_bearer_token_file = _get_bearer_token_file
    Configuration.read = classmethod(_read)
    _originals.update(bearer=bearer, read=read)
    return True


def uninstall() -> None:
    """Restore the client as shipped in this process (for tests)."""
    if not _originals:
        return
    from servicex.configuration import Configuration
    from servicex.servicex_adapter import ServiceXAdapter

    ServiceXAdapter._get_bearer_token_file = _originals["bearer"]
    Configuration.read = _originals["read"]
    _originals.clear()


install()
