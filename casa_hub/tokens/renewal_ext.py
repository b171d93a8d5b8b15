"""Former name of the renewal agent's Jupyter server extension
(``casa_hub.tokens.renewal.server_extension``); notebook configs that enable it by this name work."""

from casa_hub.tokens.renewal.server_extension import (
    _jupyter_server_extension_points,
    _load_jupyter_server_extension,
)

__all__ = ["_jupyter_server_extension_points", "_load_jupyter_server_extension"]
