"""ClassAd string literals, for HTCondor submit descriptions and job directives."""

from __future__ import annotations

import re

#: what a ClassAd string literal may hold without escaping (no quote, backslash or line break)
_PLAIN = re.compile(r"[^\"\\\n\r]*")


def classad_string(value: str, setting: str = "value") -> str:
    """``value`` as a quoted ClassAd string literal; ``ValueError`` naming ``setting`` when it
    holds a quote, a backslash or a line break (refused rather than escaped: such a value in a
    site setting or a path is a mistake or an attack)."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value):
        raise ValueError(f"{setting} {value!r} cannot be a ClassAd string (quote, backslash, newline)")
    return f'"{value}"'
