"""The site-side snippets (XRootD scitokens.cfg, HTCondor settings and map file) and their safety checks."""

from __future__ import annotations

import configparser
import json
import re

import pytest

from casa_hub.cli import main
from casa_hub.tokens.grants import Grant, parse_grants
from casa_hub.tokens.site_snippets import (
    MAX_INI_LINE,
    NO_TOKEN_PATHS,
    SiteConfigError,
    htcondor_config,
    htcondor_mapfile_lines,
    load_issuer,
    parse_xrootd_version,
    pcre_literal,
    select_grants,
    storage_scope_paths,
    xrootd_matches_prefixes,
    xrootd_prefix_safe_files,
    xrootd_prefix_warnings,
    xrootd_scitokens_cfg,
)

ISSUER = "https://hub.example.org/hub/casa-issuer"
GRANTS = parse_grants({
    "xcache": {"audience": "https://xcache.example.org", "scopes": ["storage.read:/user/{username}"],
               "groups": ["physicists"]},
    "operations": {"audience": "https://xcache.example.org", "scopes": ["storage.read:/"]},
    "htcondor": {"audience": "htcondor.example.org", "scopes": ["compute.read", "compute.create"]},
})


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(comment_prefixes=("#", ";"), interpolation=None)
    parser.read_string(text)
    return parser


# ---- XRootD -------------------------------------------------------------------------------------


def test_xrootd_cfg_has_audience_issuer_and_base_path():
    text = xrootd_scitokens_cfg(ISSUER, GRANTS)
    cfg = ini(text)
    assert cfg.sections() == ["Global", "Issuer casa"]
    assert dict(cfg["Global"]) == {"audience": "https://xcache.example.org"}
    assert dict(cfg["Issuer casa"]) == {"issuer": ISSUER, "base_path": "/store"}
    assert "#   grant xcache: storage.read:/user/{username} -> /store/user/{username}" in text
    assert "#   grant operations: storage.read:/ -> /store" in text
    assert "htcondor" not in text, "only grants with storage scopes are listed"
    assert all(len(line) <= MAX_INI_LINE for line in text.splitlines())


def test_xrootd_cfg_options():
    text = xrootd_scitokens_cfg(ISSUER + "/", GRANTS, base_path="/data/", issuer_name="facility",
                                map_subject=True, default_user="xrootd")
    section = ini(text)["Issuer facility"]
    assert section["issuer"] == ISSUER, "a trailing slash is dropped, as in the tokens' iss"
    assert section["base_path"] == "/data"
    assert section["map_subject"] == "true" and section["default_user"] == "xrootd"


def test_audience_is_chosen_from_the_grants_or_explicitly():
    assert select_grants(GRANTS, "storage.")[0] == "https://xcache.example.org"
    two = parse_grants({
        "a": {"audience": "aud-a", "scopes": ["storage.read:/a"]},
        "b": {"audience": "aud-b", "scopes": ["storage.read:/b"]},
    })
    with pytest.raises(SiteConfigError, match=r"several audiences \['aud-a', 'aud-b'\].*--audience"):
        xrootd_scitokens_cfg(ISSUER, two)
    assert "audience = aud-b" in xrootd_scitokens_cfg(ISSUER, two, audience="aud-b")
    with pytest.raises(SiteConfigError, match="no grant with storage.* scopes has audience 'aud-c'"):
        xrootd_scitokens_cfg(ISSUER, two, audience="aud-c")
    with pytest.raises(SiteConfigError, match="no grant .* has storage.* scopes"):
        xrootd_scitokens_cfg(ISSUER, parse_grants({"c": {"audience": "x", "scopes": ["compute.read"]}}))


@pytest.mark.parametrize("issuer, message", [
    ("http://hub.example.org/hub/casa-issuer", "must be an https URL"),
    ("https://hub.example.org/x\n[Issuer evil]", "unsafe"),
    ("https://hub.example.org/x[1]", "unsafe"),
    ("https://hub.example.org/x ;comment", "unsafe"),
    ("https://hub.example.org/x?a=b", "unsafe"),
    ("https://user@hub.example.org/x", "unsafe"),
    ("https:///no-host", "with a host"),
    ("https://hub.example.org/a/../b", "'..'"),
    ("", "not set"),
    ("https://hub.example.org/" + "a" * 200, f"at most {MAX_INI_LINE}"),
])
def test_unsafe_issuer_is_refused(issuer, message):
    with pytest.raises(SiteConfigError, match=re.escape(message)):
        xrootd_scitokens_cfg(issuer, GRANTS)
    if "at most" not in message:  # HTCondor has no line limit, the same checks otherwise
        with pytest.raises(SiteConfigError, match=re.escape(message)):
            htcondor_config(issuer, GRANTS)


@pytest.mark.parametrize("audience", [
    "aud\nother", "aud,other", "aud other", "[aud]", "aud;x", "$(AUD)", "aud#x", "", "a" * 191, 'a"b',
])
def test_unsafe_audience_is_refused(audience):
    grants = {"g": Grant("g", audience, ("storage.read:/x", "compute.read"))}  # as if validated elsewhere
    for make in (xrootd_scitokens_cfg, htcondor_config):
        with pytest.raises(SiteConfigError, match="cannot be placed in a service configuration"):
            make(ISSUER, grants)  # taken from the grants
        with pytest.raises(SiteConfigError, match="--audience"):
            make(ISSUER, GRANTS, audience=audience)  # given explicitly


def test_grant_audience_with_newline_from_hub_config_is_refused():
    # grant validation accepts any non-empty string; the snippet generator must not
    grants = parse_grants({"g": {"audience": "aud\n[Issuer evil]", "scopes": ["storage.read:/"]}})
    with pytest.raises(SiteConfigError, match=r"'aud\\n\[Issuer evil\]'"):
        xrootd_scitokens_cfg(ISSUER, grants)


@pytest.mark.parametrize("base_path", ["store", "/store/../etc", "/a//b", "/st ore", "/a,/b", "/a\n", "/./a", ""])
def test_unsafe_base_path_is_refused(base_path):
    with pytest.raises(SiteConfigError, match="--base-path"):
        xrootd_scitokens_cfg(ISSUER, GRANTS, base_path=base_path)


@pytest.mark.parametrize("kw", [{"default_user": "Root\n"}, {"default_user": "a b"}, {"issuer_name": "x]"}])
def test_unsafe_xrootd_options_are_refused(kw):
    with pytest.raises(SiteConfigError, match="not allowed here"):
        xrootd_scitokens_cfg(ISSUER, GRANTS, **kw)


def test_long_scope_lists_only_shorten_comments():
    grants = parse_grants({"g": {"audience": "aud", "scopes": [f"storage.read:/d{i}/{{username}}" for i in range(20)]}})
    text = xrootd_scitokens_cfg(ISSUER, grants)
    assert all(len(line) <= MAX_INI_LINE for line in text.splitlines())
    assert ini(text)["Global"]["audience"] == "aud"


# ---- XRootD: prefix matching before 5.6.9 ----------------------------------------------------------


@pytest.mark.parametrize("text, version, prefixes", [
    ("v5.5.3", (5, 5, 3), True), ("5.6.8", (5, 6, 8), True), ("v5.6.9", (5, 6, 9), False),
    ("v5.7.0\n", (5, 7, 0), False), ("v4.12", (4, 12, 0), True), ("v6.0.0-rc1", (6, 0, 0), False),
    ("", None, None), ("unknown", None, None),
])
def test_xrootd_versions_before_5_6_9_match_prefixes(text, version, prefixes):
    assert parse_xrootd_version(text) == version
    assert xrootd_matches_prefixes(version) is prefixes


@pytest.mark.parametrize("path, safe", [
    ("/user/{username}", False),  # bob's /user/bob is a prefix of /user/bobby
    ("/user/{username}/", False),  # the plugin drops the trailing slash
    ("/user/{username}_data/x", False),  # bob_data is a prefix of bob_data2_data
    ("/user/{username}.d", False),
    ("/user/{username}/data", True),  # a component after the name: bob/ never starts bobby/
    ("/user/{username}//data", True),
    ("/{username}/{username}", True),
])
def test_per_user_scope_paths_are_classified_for_prefix_matching(path, safe):
    grants = parse_grants({"g": {"audience": "a", "scopes": [f"storage.read:{path}"]}})
    [sp] = storage_scope_paths(grants)
    assert sp.per_user and sp.prefix_safe is safe


def test_plain_cfg_is_refused_where_the_plugin_matches_prefixes():
    with pytest.raises(SiteConfigError, match=r"XRootD 5\.5\.3 matches token scope paths as string prefixes.*"
                                              r"also reads /store/user/bobby, another user's path.*--prefix-safe"):
        xrootd_scitokens_cfg(ISSUER, GRANTS, xrootd_version=(5, 5, 3))
    fixed = xrootd_scitokens_cfg(ISSUER, GRANTS, xrootd_version=(5, 6, 9))
    assert "WARNING" not in fixed
    forced = xrootd_scitokens_cfg(ISSUER, GRANTS, xrootd_version=(5, 5, 3), allow_prefix_reads=True)
    unknown = xrootd_scitokens_cfg(ISSUER, GRANTS)
    for text in (forced, unknown):
        assert "# WARNING: XRootD < 5.6.9 matches scope paths as string prefixes" in text
        assert ini(text)["Issuer casa"]["base_path"] == "/store"
    # a fixed component after the username holds on every version; so does a static path
    safe = parse_grants({"g": {"audience": "a", "scopes": ["storage.read:/user/{username}/data", "storage.read:/"]}})
    assert "WARNING" not in xrootd_scitokens_cfg(ISSUER, safe, xrootd_version=(5, 5, 3))


def test_prefix_warnings_name_what_would_be_read():
    assert xrootd_prefix_warnings(GRANTS, "/store", (5, 7, 0)) == []
    [warning] = xrootd_prefix_warnings(GRANTS, "/store", (5, 5, 3))
    assert warning.startswith("on XRootD 5.5.3 bob's token of grant xcache (storage.read:/user/{username}) "
                              "also reads /store/user/bobby")
    unknown = xrootd_prefix_warnings(GRANTS, "/store", None)
    assert "version unknown here" in unknown[0] and "--xrootd-version" in unknown[-1]
    root = parse_grants({"ops": {"audience": "a", "scopes": ["storage.read:/"]}})
    assert xrootd_prefix_warnings(root, "/", (5, 6, 9)) == [
        "XRootD 5.6.9 authorizes nothing below / for a rule of / (fixed in 5.7.0): grant ops (storage.read:/) "
        "reads nothing with --base-path /; use e.g. /store"]
    assert xrootd_prefix_warnings(root, "/store", (5, 6, 9)) == xrootd_prefix_warnings(root, "/", (5, 7, 0)) == []
    static = parse_grants({"g": {"audience": "a", "scopes": ["storage.read:/group/cms"]}})
    assert xrootd_prefix_warnings(static, "/store", (5, 5, 3)) == [
        "on XRootD 5.5.3 a token of grant g (storage.read:/group/cms) also reads every path that starts with "
        "/store/group/cms, e.g. /store/group/cms-other"]


@pytest.mark.parametrize("scope, base, doubled", [
    ("storage.read:/store/user/{username}", "/store", True),
    ("storage.read:/store", "/store", True),
    ("storage.read:/store/", "/store", True),
    ("storage.read:/store/user/{username}", "/", False),
    ("storage.read:/storex/{username}", "/store", False),
    ("storage.read:/user/{username}", "/store", False),
    ("storage.read:/data/store", "/store", False),
])
def test_base_path_that_the_scopes_already_start_with_is_refused(scope, base, doubled):
    grants = parse_grants({"g": {"audience": "a", "scopes": [scope]}})
    calls = [lambda: xrootd_scitokens_cfg(ISSUER, grants, base_path=base),
             lambda: xrootd_prefix_safe_files(ISSUER, grants, users=["bob"], install_dir="/etc/x", base_path=base)]
    for call in calls:
        if doubled:
            with pytest.raises(SiteConfigError, match=f"already starts with the base path {base}.*--base-path /"):
                call()
        else:
            call()


def authdb_rules(text: str) -> list[tuple[dict[str, str], str, str]]:
    """(selectors, path, privileges) of each ``=``/``s`` pair of a casa-authdb."""
    ids, rules = {}, []
    for line in text.splitlines():
        if line.startswith("= "):
            words = line.split()
            ids[words[1]] = dict(zip(words[2::2], words[3::2], strict=True))
        elif line.startswith("s "):
            _, ident, path, privs = line.split()
            rules.append((ids[ident], path, privs))
        else:
            assert not line or line.startswith("#"), line
    return rules


def test_prefix_safe_files():
    files = xrootd_prefix_safe_files(ISSUER, GRANTS, users=["bob", "bobby", "alice"], install_dir="/etc/xrootd/casa")
    assert list(files) == ["scitokens.cfg", "casa-users.json", "casa-authdb", "xrootd-casa.cfg"]
    cfg = ini(files["scitokens.cfg"])
    assert dict(cfg["Global"]) == {"audience": "https://xcache.example.org"}
    assert dict(cfg["Issuer casa"]) == {"issuer": ISSUER, "base_path": "/store", "restricted_path": NO_TOKEN_PATHS,
                                        "name_mapfile": "/etc/xrootd/casa/casa-users.json"}
    assert json.loads(files["casa-users.json"]) == [{"sub": u, "result": u} for u in ("alice", "bob", "bobby")]
    assert authdb_rules(files["casa-authdb"]) == [
        ({"o:": ISSUER}, "/store/", "lr"),  # operations: every user (no groups), the whole namespace
        ({"o:": ISSUER, "g:": "/physicists", "u:": "alice"}, "/store/user/alice/", "lr"),
        ({"o:": ISSUER, "g:": "/physicists", "u:": "bob"}, "/store/user/bob/", "lr"),
        ({"o:": ISSUER, "g:": "/physicists", "u:": "bobby"}, "/store/user/bobby/", "lr"),
    ]
    assert "share the audience https://xcache.example.org" in files["casa-authdb"]
    include = [line for line in files["xrootd-casa.cfg"].splitlines() if not line.startswith("#")]
    assert include == ["ofs.authorize 1", "acc.authdb /etc/xrootd/casa/casa-authdb", "acc.authrefresh 60",
                       "ofs.authlib ++ libXrdAccSciTokens.so config=/etc/xrootd/casa/scitokens.cfg"]


def test_prefix_safe_paths_never_extend_into_another_users_directory():
    # XRootD's authorization database matches a rule's path as a string prefix of the requested path
    users = ["bob", "bobby", "bob.by", "bo", "ali", "alice", "a_b", "alice@uni.example"]
    files = xrootd_prefix_safe_files(ISSUER, GRANTS, users=users, install_dir="/etc/x")
    for selectors, path, _ in authdb_rules(files["casa-authdb"]):
        if "u:" not in selectors:
            continue
        for other in users:
            inside = f"/store/user/{other}/events.txt"
            assert inside.startswith(path) == (other == selectors["u:"]), (selectors, path, other)


@pytest.mark.parametrize("kw, message", [
    ({"users": None}, r"--prefix-safe needs the hub users.*--user NAME"),
    ({"users": ["bob/x"]}, "user 'bob/x' is not a hub username"),
    ({"users": ["bob"], "groups_claim": "groups"}, r"XRootD reads from the wlcg.groups claim.*'groups'"),
    ({"users": ["bob"], "install_dir": "etc/x"}, "--install-dir"),
    ({"users": ["bob"], "install_dir": "/etc/x y"}, "--install-dir"),
])
def test_prefix_safe_refusals(kw, message):
    args = {"users": ["bob"], "install_dir": "/etc/x", **kw}
    with pytest.raises(SiteConfigError, match=message):
        xrootd_prefix_safe_files(ISSUER, GRANTS, **args)


@pytest.mark.parametrize("spec, message", [
    ({"scopes": ["storage.modify:/user/{username}"]}, "translates storage.read scopes only"),
    ({"scopes": ["storage.read:/user/{username}"], "groups": ["cms users"]}, "cannot be placed in the XRootD"),
    ({"scopes": ["storage.read:/a#b/{username}"]}, "cannot be placed in the XRootD"),
    ({"scopes": [f"storage.read:{NO_TOKEN_PATHS}/x"]}, "which prefix-safe mode reserves"),
])
def test_prefix_safe_refuses_what_it_cannot_express(spec, message):
    grants = parse_grants({"g": {"audience": "aud", **spec}})
    with pytest.raises(SiteConfigError, match=message):
        xrootd_prefix_safe_files(ISSUER, grants, users=["bob"], install_dir="/etc/x")


# ---- HTCondor -----------------------------------------------------------------------------------


def mapfile_regex(line: str) -> tuple[re.Pattern[str], str]:
    method, regex, canonical = line.split(" ")
    assert method == "SCITOKENS" and regex.startswith("/") and regex.endswith("/")
    return re.compile(regex[1:-1]), canonical


def test_htcondor_config_sets_audience_and_maps_subjects():
    text = htcondor_config(ISSUER, GRANTS)
    assert "\nSCITOKENS_SERVER_AUDIENCE = htcondor.example.org\n" in text
    assert "#   grant htcondor: compute.read compute.create" in text
    assert "xcache" not in text, "only grants with compute scopes are listed"
    (line,) = [x for x in text.splitlines() if x.startswith("SCITOKENS ")]
    regex, canonical = mapfile_regex(line)
    assert canonical == "\\1"
    match = regex.search(f"{ISSUER},alice")  # HTCondor searches; the regex is anchored
    assert match and match.group(1) == "alice"
    for principal in (f"{ISSUER},alice@elsewhere.org", f"{ISSUER}x,alice", f"{ISSUER},", f"{ISSUER},alice\nbob",
                      "https://hub.example.org/hub/other,alice", "https://hubXexample.org/hub/casa-issuer,alice"):
        assert not regex.search(principal), principal


def test_htcondor_explicit_users():
    lines = htcondor_mapfile_lines(ISSUER, ["alice", "bob"])
    assert lines == [
        r"SCITOKENS /^https\:\/\/hub\.example\.org\/hub\/casa\-issuer,alice$/ alice",
        r"SCITOKENS /^https\:\/\/hub\.example\.org\/hub\/casa\-issuer,bob$/ bob",
    ]
    assert mapfile_regex(lines[0])[0].fullmatch(f"{ISSUER},alice")
    for users, message in ((["Alice"], "not allowed here"), (["a b"], "not a hub username"), ([], "maps nobody")):
        with pytest.raises(SiteConfigError, match=message):
            htcondor_mapfile_lines(ISSUER, users)


def test_htcondor_maps_e_mail_style_hub_usernames_to_local_users():
    """Every username the hub accepts (e-mail style ones too) can be mapped: NAME=LOCAL_USER."""
    lines = htcondor_mapfile_lines(ISSUER, ["carol.higgs@uni.example=chiggs", "alice"])
    regex, canonical = mapfile_regex(lines[0])
    assert canonical == "chiggs" and regex.fullmatch(f"{ISSUER},carol.higgs@uni.example")
    assert not regex.fullmatch(f"{ISSUER},carolXhiggs@uni.example"), "the dot is literal"
    assert mapfile_regex(lines[1])[1] == "alice"
    catch_all = htcondor_mapfile_lines(ISSUER)
    assert catch_all[0].startswith("# subjects with '@'") and "--user NAME=LOCAL_USER" in catch_all[0]
    for users, message in ((["carol@x=Carol"], "local Unix account name"), (["../x=carol"], "not a hub username"),
                           (["a\nb=carol"], "not a hub username")):
        with pytest.raises(SiteConfigError, match=message):
            htcondor_mapfile_lines(ISSUER, users)


def test_pcre_literal_escapes_every_punctuation_character():
    text = "https://h.example/a-b_c~d%2F+e"
    escaped = pcre_literal(text)
    assert re.fullmatch(escaped, text) and "/" not in escaped.replace("\\/", "")
    assert re.fullmatch(r"(?:[A-Za-z0-9]|\\.)*", escaped)


# ---- loading the hub's config file and the command ----------------------------------------------

HUB_CONFIG = """\
c = get_config()
c.CasaTokenIssuer.issuer_url = "https://hub.example.org/hub/casa-issuer"
c.CasaTokenIssuer.grants = {
    "xcache": {"audience": "casa-xcache", "scopes": ["storage.read:/user/{username}"]},
    "htcondor": {"audience": "casa-htcondor", "scopes": ["compute.read"]},
}
load_subconfig("extra_config.py")
"""
EXTRA = """\
c.CasaTokenIssuer.grants.update({"origin": {"audience": "casa-origin", "scopes": ["storage.read:/"]}})
"""


@pytest.fixture
def hub_config(tmp_path):
    (tmp_path / "jupyterhub_config.py").write_text(HUB_CONFIG)
    (tmp_path / "extra_config.py").write_text(EXTRA)
    return tmp_path / "jupyterhub_config.py"


def test_load_issuer_reads_settings_like_jupyterhub(hub_config):
    issuer = load_issuer(hub_config)
    assert issuer.issuer_url == ISSUER
    assert set(issuer.parsed_grants) == {"xcache", "htcondor", "origin"}


def test_load_issuer_reports_missing_or_failing_files(tmp_path):
    with pytest.raises(SiteConfigError, match="not found"):
        load_issuer(tmp_path / "nope.py")
    (tmp_path / "bad.py").write_text("import os\nos.environ['CASA_NOT_SET']\n")
    with pytest.raises(SiteConfigError, match="cannot load hub config file .*KeyError"):
        load_issuer(tmp_path / "bad.py")


def test_command_prints_the_snippets(hub_config, capsys):
    assert main(["site-config", "xrootd", "-f", str(hub_config), "--audience", "casa-origin",
                 "--base-path", "/data"]) == 0
    cfg = ini(capsys.readouterr().out)
    assert cfg["Global"]["audience"] == "casa-origin" and cfg["Issuer casa"]["base_path"] == "/data"
    assert main(["site-config", "htcondor", "-f", str(hub_config), "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "SCITOKENS_SERVER_AUDIENCE = casa-htcondor" in out and out.rstrip().endswith(",alice$/ alice")


def test_command_refuses_or_warns_by_xrootd_version(hub_config, capsys):
    base = ["site-config", "xrootd", "-f", str(hub_config), "--audience", "casa-xcache"]
    assert main([*base, "--xrootd-version", "5.5.3"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "XRootD 5.5.3 matches token scope paths as string prefixes" in captured.err
    assert main([*base, "--xrootd-version", "v5.6.9"]) == 0
    captured = capsys.readouterr()
    assert ini(captured.out)["Global"]["audience"] == "casa-xcache" and captured.err == ""
    assert main([*base, "--xrootd-version", "5.5.3", "--allow-prefix-reads"]) == 0
    captured = capsys.readouterr()
    assert "# WARNING" in captured.out
    assert "casa-hub site-config: warning: on XRootD 5.5.3 bob's token of grant xcache" in captured.err
    assert main([*base, "--xrootd-version", "five"]) == 1
    assert "is not a version such as 5.5.3" in capsys.readouterr().err


def test_command_writes_the_prefix_safe_files(hub_config, tmp_path, capsys):
    out = tmp_path / "casa"
    args = ["site-config", "xrootd", "-f", str(hub_config), "--audience", "casa-xcache", "--prefix-safe",
            "--user", "bob", "--user", "bobby", "--output-dir", str(out), "--xrootd-version", "5.5.3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"continue {out / 'xrootd-casa.cfg'}" in captured.out
    assert sorted(p.name for p in out.iterdir()) == sorted(["scitokens.cfg", "casa-users.json", "casa-authdb",
                                                            "xrootd-casa.cfg"])
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    assert f"name_mapfile = {out / 'casa-users.json'}" in (out / "scitokens.cfg").read_text()
    # written for another directory on the server
    assert main([*args, "--install-dir", "/etc/xrootd/casa"]) == 0
    assert "acc.authdb /etc/xrootd/casa/casa-authdb" in (out / "xrootd-casa.cfg").read_text()
    capsys.readouterr()
    assert main([*args[:-2], "--xrootd-version", "5.7.0"]) == 0
    assert "the configuration without --prefix-safe is prefix-safe there too" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--prefix-safe", "--user", "bob"], "name the directory with --output-dir"),
    (["--prefix-safe", "--user", "bob", "--output-dir", "x", "--map-subject"], "drop --map-subject"),
    (["--user", "bob"], "add --prefix-safe"),
    (["--output-dir", "x"], "are for --prefix-safe"),
])
def test_command_refuses_inconsistent_xrootd_options(hub_config, capsys, extra, message):
    assert main(["site-config", "xrootd", "-f", str(hub_config), "--audience", "casa-xcache", *extra]) == 1
    assert message in capsys.readouterr().err
    assert main(["site-config", "htcondor", "-f", str(hub_config), "--prefix-safe"]) == 1
    assert "--prefix-safe is an xrootd option" in capsys.readouterr().err


def test_command_errors_are_one_clear_line(hub_config, capsys):
    assert main(["site-config", "xrootd", "-f", str(hub_config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("casa-hub site-config: error: grants with storage.* scopes name several audiences")
    assert "Traceback" not in err
    hub_config.write_text(HUB_CONFIG.replace("https://hub.example.org", "http://hub.example.org"))
    assert main(["site-config", "htcondor", "-f", str(hub_config)]) == 1
    assert "must be an https URL" in capsys.readouterr().err


# ---- casa-hub check ----------------------------------------------------------------------------------


@pytest.mark.parametrize("installed, level", [("5.5.3", "warn"), (None, "warn"), ("5.7.1", "ok")])
def test_check_warns_about_per_user_storage_scopes_on_xrootd_before_5_6_9(monkeypatch, installed, level):
    from types import SimpleNamespace

    from traitlets.config import Config

    from casa_hub.cli import check
    from casa_hub.tokens import site_snippets

    monkeypatch.setattr(site_snippets, "detect_xrootd_version", lambda: installed)
    config = Config()
    config.CasaTokenIssuer.grants = {
        "xcache": {"audience": "aud", "scopes": ["storage.read:/user/{username}"]},
        "safe": {"audience": "aud", "scopes": ["storage.read:/home/{username}/data", "storage.read:/"]},
    }
    report = check.Report()
    check.check_storage_prefixes(SimpleNamespace(config=config), report, online=False)
    [finding] = report.findings
    assert finding.level == level and report.ok
    if level == "warn":
        assert finding.topic == "CasaTokenIssuer.grants['xcache']"
        assert "a token for /user/bob (storage.read:/user/{username}) also reads /user/bobby" in finding.message
        assert ("XRootD 5.5.3 (installed here)" if installed else "XRootD before 5.6.9") in finding.message
        assert "casa-hub site-config xrootd --prefix-safe" in finding.message
