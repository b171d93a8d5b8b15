"""Fuzzing site configuration: the drop-ins' site file (``casa_hub.site_file``) and the XRootD /
HTCondor snippets (``casa_hub.tokens.site_snippets``).

- Any mapping a YAML or JSON site file can hold (any keys, any values, ``{"env": ...}`` references)
  is either applied, each value checked by its class, or refused with ``SiteSettingsError`` naming
  where; the same for any text in the site file. Never another exception type (a hub that stops with
  a traceback instead of the setting's name).
- Any issuer URL, audience, base path, issuer name, default user or user list gives either
  ``SiteConfigError`` or a snippet that parses (configparser) into exactly the expected sections and
  keys with exactly the given values, and an HTCondor map file whose every line maps exactly one
  issuer's subjects.
- Prefix matching (XRootD < 5.6.9 compares scope paths as strings): a per-user scope path classified
  prefix-safe never matches, as a string prefix, a path in another user's directory, for any two hub
  usernames; and every per-user rule of the prefix-safe authorization database matches paths of its
  own user's directory only.
"""

from __future__ import annotations

import configparser
import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from casa_hub.site_file import (
    INTEGRATIONS,
    SECTIONS,
    TOP_LEVEL,
    SiteSettingsError,
    _load_class,
    apply,
    read_site_settings,
)
from casa_hub.tokens.grants import check_username, parse_grants
from casa_hub.tokens.site_snippets import (
    MAX_INI_LINE,
    SiteConfigError,
    htcondor_config,
    join_base,
    storage_scope_paths,
    xrootd_prefix_safe_files,
    xrootd_scitokens_cfg,
)

SCALE = int(os.environ.get("CASA_FUZZ_SCALE", "1"))
# CI: the same examples on every run (derandomized, no example database). CASA_FUZZ_SCALE=N runs N
# times as many; CASA_FUZZ_RANDOM=1 draws new ones (a failure prints the example to paste in @example).
FUZZ = settings(deadline=None, derandomize=os.environ.get("CASA_FUZZ_RANDOM") != "1", database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow])
PARTS = ["auth", "tokens", "spawner", "integrations", "metrics"]
SET_VAR, UNSET_VAR = "CASA_FUZZ_SITE_VALUE", "CASA_FUZZ_SITE_UNSET"


def fuzz(examples: int) -> settings:
    """The shared profile with ``examples`` examples (times ``CASA_FUZZ_SCALE``)."""
    return settings(FUZZ, max_examples=examples * SCALE)


@pytest.fixture(scope="module", autouse=True)
def environment():
    """``{"env": ...}`` references find one variable set and one unset."""
    os.environ[SET_VAR] = "from-the-environment"
    os.environ.pop(UNSET_VAR, None)
    yield
    os.environ.pop(SET_VAR, None)


# ---- site settings --------------------------------------------------------------------------------

def traits_of(spec: str) -> list[str]:
    return sorted(_load_class(spec).class_traits(config=True))


SECTION_TRAITS = {name: traits_of(spec) for name, spec in SECTIONS.items()}
INTEGRATION_TRAITS = sorted({t for spec in INTEGRATIONS.values() for t in traits_of(spec)})

scalars = st.none() | st.booleans() | st.integers(-5, 100000) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
yaml_keys = st.text(max_size=10) | st.integers(-3, 3) | st.none() | st.booleans() | st.floats(allow_nan=False)
env_refs = st.fixed_dictionaries({"env": st.sampled_from([SET_VAR, UNSET_VAR]) | json_values})
setting_values = json_values | env_refs | st.lists(env_refs, max_size=2) | st.dictionaries(
    st.text(max_size=6), env_refs, max_size=2)
profiles = st.lists(st.dictionaries(
    st.sampled_from(["display_name", "slug", "groups", "cpu_limit", "mem_limit", "gpus", "env", "default",
                     "kubespawner_override", "description", "image"]) | st.text(max_size=5),
    json_values, max_size=5), max_size=2)
grants = st.dictionaries(st.text(max_size=8) | st.sampled_from(["xcache"]), st.dictionaries(
    st.sampled_from(["audience", "scopes", "lifetime", "groups"]), json_values, max_size=4), max_size=2)


def section(traits: list[str]) -> st.SearchStrategy:
    special = {"profiles": profiles, "grants": grants}
    return st.dictionaries(st.sampled_from(traits) | yaml_keys, setting_values, max_size=4).flatmap(
        lambda d: st.fixed_dictionaries({k: special.get(k, st.just(v)) for k, v in d.items()}))


site_files = st.fixed_dictionaries({}, optional={
    **{name: section(traits) | json_values for name, traits in SECTION_TRAITS.items()},
    "integrations": st.dictionaries(st.sampled_from(sorted(INTEGRATIONS)) | yaml_keys,
                                    section(INTEGRATION_TRAITS) | json_values, max_size=3) | json_values,
    "spawner_kind": st.sampled_from(["local", "kube", "docker"]) | json_values,
    "metrics_public": st.booleans() | json_values,
}) | st.dictionaries(yaml_keys | st.sampled_from(sorted(TOP_LEVEL)), json_values, max_size=3)


def applied_or_refused(settings_doc: dict) -> None:
    """Each drop-in part applies the file or refuses it with SiteSettingsError, nothing else."""
    for part in PARTS:
        c = Config()
        try:
            apply(c, part, settings_doc)
        except SiteSettingsError as e:
            assert str(e).startswith(("casa", "CASA_SITE_CONFIG")), f"{part}: the error names no setting: {e}"
            continue
        if part == "tokens":
            assert set(c.CasaTokenIssuer) == set(settings_doc.get("tokens") or {}), "every key applied"
            assert "custom:casa-tokens:renew" in c.JupyterHub.custom_scopes
        if part == "metrics":
            assert c.JupyterHub.authenticate_prometheus is not settings_doc.get("metrics_public", False)


@fuzz(300)
@given(settings_doc=site_files)
@example(settings_doc={"tokens": {"grants": {"xcache": {"audience": "a", "scopes": ["compute.read"], "groups": 5}}}})
@example(settings_doc={"auth": {"client_secret": {"env": 5}}})
@example(settings_doc={"auth": {"client_secret": {"env": ["A"]}}})
@example(settings_doc={1: {}})
@example(settings_doc={None: {}})
@example(settings_doc={"spawner_kind": ["local"]})
@example(settings_doc={"tokens": {3: "x"}})
@example(settings_doc={"profiles": {"profiles": [{"display_name": "A", "slug": 5}]}})
@example(settings_doc={"profiles": {"profiles": [{"display_name": "A", "groups": 5}]}})
@example(settings_doc={"integrations": {"xcache": ["endpoint"]}})
@example(settings_doc={"tokens": {"issuer_url": "https://hub.example.org/hub/casa-issuer",
                                  "grants": {"xcache": {"audience": "a", "scopes": ["storage.read:/user/{username}"]}}}})
def test_any_site_settings_are_applied_or_refused_with_their_name(settings_doc):
    applied_or_refused(settings_doc)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-site-files")


yaml_text = st.lists(st.sampled_from([
    "tokens:", "auth:", "integrations:", "  xcache:", "  grants:", "    xcache: {audience: a, scopes: [compute.read]}",
    "  issuer_url: https://hub.example.org/hub/casa-issuer", "spawner_kind: local", "metrics_public: yes",
    "  client_secret: {env: " + SET_VAR + "}", "- a", "? [a, b]", ": x", "&a [*a]", "*x", "!!python/object:os.system",
    "{", "[", "'", '"', "\t", "%YAML 1.1", "---", "...", "key: !!binary AAAA", "1: 2", "null: 3", "~: x",
]) | st.text(max_size=20), max_size=8).map("\n".join)


@fuzz(200)
@given(text=yaml_text, suffix=st.sampled_from([".yaml", ".json"]))
@example(text="!!python/object/apply:os.system ['true']", suffix=".yaml")
@example(text="[" * 2000, suffix=".yaml")
@example(text="[" * 2000, suffix=".json")
def test_any_site_file_text_is_read_or_refused(site_dir, text, suffix):
    path = site_dir / f"site{suffix}"
    path.write_text(text)
    try:
        doc = read_site_settings(str(path))
    except SiteSettingsError as e:
        assert str(path) in str(e) or str(e).startswith("casa"), str(e)
        return
    assert isinstance(doc, dict)
    applied_or_refused(doc)


# ---- XRootD and HTCondor snippets -----------------------------------------------------------------

HOSTILE = ["\n", "\r", "[", "]", ";", "#", "$", " ", ",", "=", "..", "%", "%0a", "\\", "'", '"', "(", ")", "|",
           "\u2028", "\x00", "\u00e9", "/", ":", "@", "{", "}", "*", "^", "$(", "ENV"]
url_text = st.one_of(
    st.builds(lambda scheme, host, path: f"{scheme}{host}{''.join(path)}",
              st.sampled_from(["https://", "http://", "HTTPS://", "https:///", "", "ftp://", "https://user@"]),
              st.sampled_from(["hub.example.org", "127.0.0.1:8443", "[::1]", "", "h" * 190, "hub.example.org."]),
              st.lists(st.sampled_from(["/hub", "/casa-issuer", "/", "..", ".", *HOSTILE]), max_size=5)),
    st.text(max_size=40),
)
word_text = st.one_of(st.lists(st.sampled_from(["aud", "https://xcache.example.org", "a" * 60, *HOSTILE]),
                               min_size=1, max_size=5).map("".join), st.text(max_size=30))
path_text = st.one_of(st.lists(st.sampled_from(["/", "store", "data", ".", "..", "a.b", "-", *HOSTILE]),
                               max_size=6).map("".join), st.text(max_size=20))


def ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(comment_prefixes=("#", ";"), inline_comment_prefixes=None,
                                          strict=True, delimiters=("=",))
    parser.optionxform = str  # keep key case: XRootD reads them as written
    parser.read_string(text)
    return parser


def storage_grants(audience: str) -> dict:
    return parse_grants({"xcache": {"audience": audience, "scopes": ["storage.read:/user/{username}"]},
                         "htcondor": {"audience": audience, "scopes": ["compute.read", "compute.create"]}})


@fuzz(400)
@given(issuer=url_text, audience=word_text, base_path=path_text,
       issuer_name=st.sampled_from(["casa", "facility-1"]) | word_text,
       default_user=st.none() | st.sampled_from(["xrootd", "root"]) | word_text, map_subject=st.booleans())
@example(issuer="https://hub.example.org/hub/casa-issuer\n[Issuer evil]", audience="a", base_path="/store",
         issuer_name="casa", default_user=None, map_subject=False)
@example(issuer="https://hub.example.org/" + "x" * 200, audience="a", base_path="/store", issuer_name="casa",
         default_user=None, map_subject=False)
@example(issuer="https://hub.example.org/hub/casa-issuer", audience="aud;x", base_path="/store/../etc",
         issuer_name="casa", default_user=None, map_subject=False)
def test_xrootd_snippet_is_refused_or_has_exactly_the_given_values(issuer, audience, base_path, issuer_name,
                                                                   default_user, map_subject):
    try:
        text = xrootd_scitokens_cfg(issuer, storage_grants(audience), base_path=base_path, issuer_name=issuer_name,
                                    default_user=default_user, map_subject=map_subject)
    except SiteConfigError:
        return
    except ValueError as e:  # the grant itself refused the audience (GrantConfigError)
        assert type(e).__name__ == "GrantConfigError", repr(e)
        return
    cfg = ini(text)
    assert cfg.sections() == ["Global", f"Issuer {issuer_name}"], text
    assert dict(cfg["Global"]) == {"audience": audience}, text
    expected = {"issuer": issuer.rstrip("/"), "base_path": base_path.rstrip("/") or "/"}
    if map_subject:
        expected["map_subject"] = "true"
    if default_user is not None:
        expected["default_user"] = default_user
    assert dict(cfg[f"Issuer {issuer_name}"]) == expected, text
    assert all(len(line) <= MAX_INI_LINE and line.isprintable() for line in text.splitlines()), text
    assert "\r" not in text and "\x00" not in text


MAP_LINE = re.compile(r"SCITOKENS /(.+)/ (\S+)")


@fuzz(300)
@given(issuer=url_text, audience=word_text,
       users=st.none() | st.lists(st.sampled_from(["alice", "bob", "_svc"]) | word_text, max_size=3))
@example(issuer="https://hub.example.org/hub/casa-issuer", audience="aud", users=["alice/", "bob"])
@example(issuer="https://hub.example.org/hub/casa-issuer", audience="aud", users=[".*"])
@example(issuer="https://hub.example.org/hub/casa-issuer", audience="aud\nSEC_DEFAULT_AUTHENTICATION = NEVER",
         users=None)
def test_htcondor_snippet_is_refused_or_maps_exactly_the_issuers_subjects(issuer, audience, users):
    try:
        text = htcondor_config(issuer, storage_grants(audience), users=users)
    except SiteConfigError:
        return
    except ValueError as e:
        assert type(e).__name__ == "GrantConfigError", repr(e)
        return
    config_part, _, map_part = text.partition("# --- the file named by CERTIFICATE_MAPFILE")
    cfg = ini("[condor]\n" + config_part)
    assert dict(cfg["condor"]) == {"SCITOKENS_SERVER_AUDIENCE": audience}, text
    issuer = issuer.rstrip("/")
    lines = [line for line in map_part.splitlines()[1:] if line and not line.startswith("#")]
    assert len(lines) == (1 if users is None else len(users)), text
    for number, line in enumerate(lines):
        match = MAP_LINE.fullmatch(line)
        assert match, f"not a map line: {line!r}"
        pattern = re.compile(match.group(1).replace("\\/", "/"))
        subject = "alice" if users is None else users[number]
        assert pattern.fullmatch(f"{issuer},{subject}"), f"{line!r} does not map {issuer},{subject}"
        assert not pattern.fullmatch(f"{issuer}x,{subject}") and not pattern.fullmatch(f"x{issuer},{subject}")
        assert not pattern.fullmatch(f"{issuer},{subject}/x") and not pattern.fullmatch(f"{issuer},a@b")
        if users is None:
            assert match.group(2) == "\\1"
        else:
            assert match.group(2) == subject and not pattern.fullmatch(f"{issuer},{subject}x")


# ---- prefix matching -----------------------------------------------------------------------------

username_text = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,12}", fullmatch=True).filter(lambda u: ".." not in u)
template_text = st.builds(
    lambda before, after: "/" + "/".join(before) + "/{username}" + after,
    st.lists(st.sampled_from(["user", "u", "store", "a.b"]), max_size=2),
    st.sampled_from(["", "/", "//", "/data", "/data/", "_x", ".d", "-", "/{username}", "x/y", "/d/{username}", "@"]),
)


def user_directory(template: str, base: str, user: str) -> str:
    """The directory a user's paths live in: up to the first {username}, then '/'."""
    return join_base(base, template.split("{username}", 1)[0] + user) + "/"


def overlap(rule: str, directory: str) -> bool:
    """Whether a string-prefix rule matches some path in ``directory`` (they agree where both are defined)."""
    n = min(len(rule), len(directory))
    return rule[:n] == directory[:n]


# a second username that often extends the first (bob, bobby) or is extended by it
two_usernames = username_text.flatmap(lambda u: st.tuples(st.just(u), st.one_of(
    username_text, st.from_regex(r"[A-Za-z0-9._@+-]{1,6}", fullmatch=True).map(lambda x: u + x),
    st.integers(1, max(1, len(u) - 1)).map(lambda n: u[:n]))))


@fuzz(400)
@given(template=template_text, base=st.sampled_from(["/", "/store", "/data/x"]), users=two_usernames)
@example(template="/user/{username}", base="/store", users=("bob", "bobby"))
@example(template="/user/{username}/", base="/store", users=("bob", "bobby"))
@example(template="/user/{username}/data", base="/store", users=("bob", "bobby"))
def test_prefix_safe_per_user_paths_match_no_other_users_directory(template, base, users):
    u, v = users
    if u == v or ".." in v or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._@+-]*", v):
        return
    [sp] = storage_scope_paths(parse_grants({"g": {"audience": "a", "scopes": [f"storage.read:{template}"]}}))
    rule = sp.shown(base, check_username(u))  # canonical, as the plugin compares it
    crosses = overlap(rule, user_directory(template, base, check_username(v)))
    if sp.prefix_safe:
        assert not crosses, (rule, v)
    if (template, u, v) in (("/user/{username}", "bob", "bobby"), ("/user/{username}/", "bob", "bobby")):
        assert crosses and not sp.prefix_safe


@fuzz(200)
@given(template=template_text, users=st.lists(username_text, min_size=1, max_size=5, unique=True))
@example(template="/user/{username}", users=["bob", "bobby", "ali", "alice"])
def test_prefix_safe_authdb_rules_match_only_their_own_users_directory(template, users):
    grants = parse_grants({"g": {"audience": "a", "scopes": [f"storage.read:{template}"], "groups": ["phys"]}})
    try:
        files = xrootd_prefix_safe_files("https://hub.example.org/i", grants, users=users, install_dir="/etc/x")
    except SiteConfigError as e:
        assert "cannot be placed in the XRootD authorization" in str(e) or "already starts with the base" in str(e), e
        return
    idents, checked = {}, 0
    for line in files["casa-authdb"].splitlines():
        words = line.split()
        if line.startswith("= "):
            idents[words[1]] = dict(zip(words[2::2], words[3::2], strict=True))
        elif line.startswith("s "):
            owner, path = idents[words[1]]["u:"], words[2]
            assert path.endswith("/") and idents[words[1]]["o:"] == "https://hub.example.org/i"
            for other in users:
                # the rule's path is a string prefix of a path in another user's directory only if that
                # directory is inside the owner's paths (a template with {username} twice, /d/{username})
                if other != owner:
                    assert not overlap(path, user_directory(template, "/store", other)) or \
                        user_directory(template, "/store", other).startswith(path), (path, other)
            checked += 1
    assert checked == len(users)
