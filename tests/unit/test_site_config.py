"""The site-side snippets (XRootD scitokens.cfg, HTCondor settings and map file) and their safety checks."""

from __future__ import annotations

import configparser
import re

import pytest

from casa_hub.cli import main
from casa_hub.tokens.grants import Grant, parse_grants
from casa_hub.tokens.site_snippets import (
    MAX_INI_LINE,
    SiteConfigError,
    htcondor_config,
    htcondor_mapfile_lines,
    load_issuer,
    pcre_literal,
    select_grants,
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


def test_command_errors_are_one_clear_line(hub_config, capsys):
    assert main(["site-config", "xrootd", "-f", str(hub_config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("casa-hub site-config: error: grants with storage.* scopes name several audiences")
    assert "Traceback" not in err
    hub_config.write_text(HUB_CONFIG.replace("https://hub.example.org", "http://hub.example.org"))
    assert main(["site-config", "htcondor", "-f", str(hub_config)]) == 1
    assert "must be an https URL" in capsys.readouterr().err
