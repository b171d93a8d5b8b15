"""The renewal agent: what runs in the notebook or a batch job to keep token files fresh.

- ``agent.py`` -- ``CasaTokenRenewal``: schedule, backoff, atomic replacement;
- ``broker_client.py`` -- the call to the hub's broker; ``files.py`` -- reading and replacing token files;
- ``server_extension.py`` -- the Jupyter server extension that runs the agent in the notebook server.
The command-line form is ``casa-hub renew-tokens`` (``casa_hub.cli.renew_tokens``).
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "CasaTokenRenewal": "agent",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
