"""Groups from the provider's claims, as real providers shape them.

- where: a top-level claim (``groups``, ``wlcg.groups``), a dotted path into nested claims
  (Keycloak's ``realm_access.roles``), or a callable taking the claims;
- what: a list or a space-separated string; a leading ``/`` (WLCG group paths) is dropped;
- mapped: an exact table (``{"urn:...:cms:role=member#aai.egi.eu": "cms/physicists"}``) and regular
  expressions (``{"match": "urn:mace:egi.eu:group:([a-z]+):role=member#aai.egi.eu", "group": "\\1"}``);
  the first that matches names the facility group; values matching neither are kept or dropped
  (``keep_unmapped``);
- checked: a name with a control character is dropped (it would reach JupyterHub, the logs and the
  tokens' ``wlcg.groups``), and reported by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from casa_hub.common.logsafe import has_controls


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """``claims[path]`` if that key exists (claim names may hold dots: ``wlcg.groups``), else the
    value at the dotted path (``realm_access.roles``), else None."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def as_names(value: Any) -> list[str]:
    """A claim's groups as strings: a list, or a space-separated string; other shapes give none."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple, set)):
        return []
    return [v.strip("/") for v in value if isinstance(v, str) and v.strip("/")]


@dataclass
class GroupMapping:
    """Claim values -> facility groups (exact table first, then patterns in order)."""

    table: Mapping[str, str] = field(default_factory=dict)
    patterns: Sequence[tuple[re.Pattern[str], str]] = ()
    keep_unmapped: bool = True

    @classmethod
    def from_settings(cls, table: Mapping[str, str], patterns: Iterable[Mapping[str, str]],
                      keep_unmapped: bool) -> GroupMapping:
        """Build from settings; ``ValueError`` naming the bad entry."""
        compiled = []
        for i, entry in enumerate(patterns):
            if set(entry) != {"match", "group"}:
                raise ValueError(f"group_patterns[{i}] needs exactly the keys 'match' and 'group'")
            try:
                compiled.append((re.compile(entry["match"]), entry["group"]))
            except re.error as e:
                raise ValueError(f"group_patterns[{i}].match is not a regular expression: {e}") from None
        return cls(dict(table), tuple(compiled), keep_unmapped)

    def map(self, names: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for name in names:
            if name in self.table:
                out.add(self.table[name].strip("/"))
                continue
            for pattern, template in self.patterns:
                m = pattern.fullmatch(name)
                if m:
                    out.add(m.expand(template).strip("/"))
                    break
            else:
                if self.keep_unmapped:
                    out.add(name)
        return {g for g in out if g}


def split_unsafe(groups: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(safe, unsafe)``: names with control characters are unsafe."""
    groups = set(groups)
    unsafe = {g for g in groups if has_controls(g)}
    return groups - unsafe, unsafe
