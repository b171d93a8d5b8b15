"""Fuzzing scope templating (``casa_hub.tokens.grants``: ``parse_grant`` and ``render_scopes``).

For any scope template a site might write and any username, either the template is refused at
configuration (``GrantConfigError`` naming the setting), or the username is refused
(``UnsafeUsername``), or the rendered scope is the template with the username put in its place and
nothing else: the authorization part is the template's, the path starts with the template's text
before the placeholder, holds no ``.``/``..`` segment (also percent-encoded), backslash, space or
control character, and the scope list keeps one scope per template.
"""

from __future__ import annotations

import os
import string
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from casa_hub.tokens.grants import GrantConfigError, UnsafeUsername, check_username, parse_grant

SCALE = int(os.environ.get("CASA_FUZZ_SCALE", "1"))
# CI: the same examples on every run (derandomized, no example database). CASA_FUZZ_SCALE=N runs N
# times as many; CASA_FUZZ_RANDOM=1 draws new ones (a failure prints the example to paste in @example).
FUZZ = settings(deadline=None, derandomize=os.environ.get("CASA_FUZZ_RANDOM") != "1", database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    """The shared profile with ``examples`` examples (times ``CASA_FUZZ_SCALE``)."""
    return settings(FUZZ, max_examples=examples * SCALE)


AUTHZ = ["storage.read", "storage.modify", "storage.create", "compute.read", "read", "write", "",
         "{username}", "storage.{username}", "x"]
PATH_PIECES = ["/", "user", "{username}", "..", ".", "%2e", "%2E", "%252e", "%", "%2", "%25", "\\", "\n",
               "\x00", "\x7f", "\u2028", "{", "}", "{{", "}}", "{user}", "{0}", "{}", "{username!r}",
               "{username!s}", "{username:>12}", "{username:.0}", "{username:x<3}", "{username[0]}",
               "{username.upper}", "a.b", "~", " ", "\u00e9", "data", "-", "_", "@", ":"]

templates = st.one_of(
    st.builds(lambda a, colon, p: a + colon + "".join(p), st.sampled_from(AUTHZ), st.sampled_from([":", ""]),
              st.lists(st.sampled_from(PATH_PIECES), max_size=8)),
    st.text(max_size=30),
)
usernames = st.one_of(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,12}", fullmatch=True),
    st.sampled_from(["..", ".", "2e", "2E", "e", "a..b", "../bob", "alice/..", "%2e%2e", "-x", "a" * 129]),
    st.text(max_size=16),
)


def expected_scope(template: str, username: str) -> str:
    """The template with each ``{username}`` replaced by the username and ``{{``/``}}`` unescaped."""
    return "".join(literal + (username if field is not None else "")
                   for literal, field, _, _ in string.Formatter().parse(template))


def before_first_placeholder(template: str) -> str:
    """The template's literal text (unescaped) up to its first placeholder, or all of it."""
    text = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is not None:
            break
    return text


def decoded_segments(path: str) -> list[str]:
    segments = []
    for segment in path.split("/"):
        while unquote(segment) != segment:
            segment = unquote(segment)
        segments.append(segment)
    return segments


def check_rendering(template_list: list[str], username: str) -> None:
    """The rules of the module docstring for one grant and one username."""
    try:
        grant = parse_grant("fuzzed", {"audience": "aud", "scopes": template_list}, "CasaTokenIssuer.grants")
    except GrantConfigError as e:
        assert "CasaTokenIssuer.grants['fuzzed']" in str(e), f"the error does not name the setting: {e}"
        return
    try:
        check_username(username)
        safe = True
    except UnsafeUsername:
        safe = False
    try:
        rendered = grant.render_scopes(username)
    except UnsafeUsername:
        assert not safe, f"the safe username {username!r} was refused"
        return
    assert safe, f"the unsafe username {username!r} was rendered"
    scopes = rendered.split(" ")
    assert len(scopes) == len(template_list) and all(scopes), f"{template_list} -> {rendered!r}: scopes split or lost"
    for template, scope in zip(template_list, scopes, strict=True):
        assert scope == expected_scope(template, username), f"{template!r} + {username!r} -> {scope!r}"
        fixed = before_first_placeholder(template)
        has_placeholder = any(field is not None for _, field, _, _ in string.Formatter().parse(template))
        if has_placeholder and ":" not in fixed:
            raise AssertionError(f"{template!r}: the username may decide the authorization of {scope!r}")
        if ":" not in scope:
            continue
        authz, path = scope.split(":", 1)
        assert authz == fixed.split(":", 1)[0], f"{template!r}: the authorization changed to {authz!r}"
        assert path.startswith(fixed.split(":", 1)[1]), f"{scope!r} left the template's prefix {fixed!r}"
        assert path.isprintable() and "\\" not in path and not any(c.isspace() for c in path), scope
        segments = decoded_segments(path)
        assert "." not in segments and ".." not in segments, f"{template!r} + {username!r} -> {scope!r}: traversal"


@fuzz(600)
@given(template_list=st.lists(templates, min_size=1, max_size=3), username=usernames)
@example(template_list=["storage.read:/user/%2{username}%2{username}"], username="e")   # -> /user/%2e%2e
@example(template_list=["storage.read:/user/%{username}"], username="2e")             # -> /user/%2e
@example(template_list=["storage.read:/user/{username:.0}"], username="alice")        # -> /user/
@example(template_list=["storage.read:/user/{username:>12}"], username="alice")       # spaces: two scopes
@example(template_list=["storage.read:/user/{username!r}"], username="alice")         # quotes
@example(template_list=["{username}"], username="storage.read")                       # the name is the scope
@example(template_list=["storage.read:/user/{username}"], username="alice")
@example(template_list=["storage.read:/user/{username}"], username="..")
def test_scope_templates_and_usernames(template_list, username):
    check_rendering(template_list, username)


@pytest.mark.parametrize("template, username", [
    ("storage.read:/user/{username}", "alice"),
    ("storage.create:/user/{username}/out", "bob.smith"),
    ("storage.read:/store/a.b..c/{username}", "u_1"),
    ("storage.read:/user/%25{username}", "x"),
    ("compute.read", "alice"),
])
def test_ordinary_templates_render_the_username_in_place(template, username):
    check_rendering([template], username)
    assert parse_grant("g", {"audience": "a", "scopes": [template]}).render_scopes(username) == \
        template.replace("{username}", username)


def test_the_rules_can_fail():
    """The checker rejects a rendering that leaves the prefix (here a hand-made traversal)."""
    with pytest.raises(AssertionError, match="traversal"):
        _check_scope_against("storage.read:/user/{username}", "storage.read:/user/%2e%2e", "alice")


def _check_scope_against(template: str, scope: str, username: str) -> None:
    path = scope.split(":", 1)[1]
    segments = decoded_segments(path)
    assert "." not in segments and ".." not in segments, f"{template!r} + {username!r} -> {scope!r}: traversal"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
grant_specs = st.dictionaries(
    st.sampled_from(["audience", "scopes", "lifetime", "groups"]) | st.text(max_size=8),
    json_values | st.lists(templates, max_size=3) | st.integers(-10, 30000),
    max_size=5,
)


@fuzz(400)
@given(name=st.text(max_size=12) | st.sampled_from(["xcache", "a-b_1"]), spec=grant_specs | json_values)
@example(name="xcache", spec={"audience": "a", "scopes": ["compute.read"], "groups": 5})
@example(name="xcache", spec={"audience": "a", "scopes": ["compute.read"], "lifetime": 1.5})
def test_any_grant_spec_is_parsed_or_refused_naming_the_setting(name, spec):
    """A grant spec of any shape gives a Grant or a GrantConfigError naming it, never another error."""
    try:
        grant = parse_grant(name, spec, "CasaTokenIssuer.grants")
    except GrantConfigError as e:
        assert str(e).startswith("CasaTokenIssuer.grants["), str(e)
        return
    assert grant.name == name and grant.audience and grant.scopes
    assert 0 < grant.lifetime <= 6 * 3600
    assert grant.groups is None or all(isinstance(g, str) for g in grant.groups)
