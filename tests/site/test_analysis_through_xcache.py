"""The example analysis reading CMS NanoAOD through the real XCache with the physicist's own storage token,
and what the physicist sees when that cannot work.

The sample file is placed at the real XRootD origin as ``/store/user/<name>/ttbar/nano.root`` for alice and
bob; the analysis (``casa_hub.analysis.run``, coffea + uproot + the XRootD bindings) runs as a process in the
servers' network namespace with alice's environment: her broker token in ``BEARER_TOKEN_FILE`` and the
site's CA. Its histograms are compared with an independent uproot computation on the local file.

Bad input, each with the message the physicist gets (``DataAccessError``) and nothing started: a file the
token does not allow ("your token allows /store/user/alice"), a file that does not exist, the cache down
(named; the cache is started again afterwards and serves again).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from xrootd_fixture import CACHE_PORT, broker_token

from casa_hub.analysis.sample import SAMPLE_FILE
from casa_hub.common.files import write_private

pytest.importorskip("coffea")
pytestmark = pytest.mark.e2e

CODE = """
import json, sys
from casa_hub.analysis import DataAccessError, run
from casa_hub.analysis.ttbar import Cuts
loose = Cuts(jet_pt=15, lepton_pt=10, btag=0.2, electron_id=0, muon_tight_id=False, muon_iso=1e9)
try:
    r = run({"ttbar": {"files": json.loads(sys.argv[1]), "treename": "Events"}}, cuts=loose, timeout=30)
except DataAccessError as e:
    print("RESULT " + json.dumps({"ok": False, "error": str(e)}))
else:
    print("RESULT " + json.dumps({"ok": True, "events": r["events"], "cutflow": r["cutflow"]["ttbar"],
        "ht": r["histograms"]["ht_4j1b"][{"dataset": "ttbar"}].values(flow=True).tolist(),
        "mbjj": r["histograms"]["mbjj_4j2b"][{"dataset": "ttbar"}].values(flow=True).tolist()}))
"""


def url(path: str) -> str:
    return f"root://localhost:{CACHE_PORT}/{path}"


@pytest.fixture(scope="module")
def alice_env(xrootd_facility, xrootd_site) -> Iterator[dict[str, str]]:
    for user in ("alice", "bob"):
        xrootd_site.add_file(f"/store/user/{user}/ttbar/nano.root", SAMPLE_FILE.read_bytes())
    scratch = Path(tempfile.mkdtemp(prefix="analysis-", dir=xrootd_site.run_dir))
    token_file = write_private(scratch / "xcache.token", broker_token(xrootd_facility, "alice", "xcache"))
    yield {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(scratch), "X509_CERT_DIR": str(xrootd_site.ca_dir), "BEARER_TOKEN_FILE": str(token_file),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "LANG": "C.UTF-8"}
    for user in ("alice", "bob"):  # the other site tests list the users' directories
        xrootd_site.remove_tree(f"/store/user/{user}/ttbar")


def analyse(site, env: dict[str, str], urls: list[str]) -> dict:
    r = site._run_in_netns([sys.executable, "-c", CODE, json.dumps(urls)], env=env, timeout=240)
    out = r.stdout.decode(errors="replace")
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"the analysis crashed ({r.returncode}):\n{r.stderr.decode(errors='replace')[-3000:]}"
    return json.loads(line[len("RESULT "):])


def reference() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    try:
        import test_analysis as unit
    finally:
        sys.path.pop(0)
    return unit.reference([SAMPLE_FILE], unit.LOOSE)


def test_the_analysis_reads_nanoaod_through_the_cache_as_the_user(xrootd_site, alice_env):
    logins = xrootd_site.xrootd_log("cache").count("login as alice")
    got = analyse(xrootd_site, alice_env, [url("/store/user/alice/ttbar/nano.root")])
    assert got["ok"], got
    expected = reference()
    assert got["events"] == expected["cutflow"]["events"] > 0
    assert got["cutflow"] == expected["cutflow"]
    assert got["ht"] == expected["ht_4j1b"].tolist() and got["mbjj"] == expected["mbjj_4j2b"].tolist()
    assert xrootd_site.xrootd_log("cache").count("login as alice") > logins, "the cache saw alice's token"
    assert xrootd_site.in_cache("/store/user/alice/ttbar/nano.root")


def test_a_path_the_token_does_not_allow_says_what_it_allows(xrootd_site, alice_env):
    got = analyse(xrootd_site, alice_env, [url("/store/user/bob/ttbar/nano.root")])
    assert not got["ok"]
    assert got["error"] == ("data set 'ttbar': the data cache refused to read /store/user/bob/ttbar/nano.root: "
                            "your token allows /store/user/alice"), got["error"]
    missing = analyse(xrootd_site, alice_env, [url("/store/user/alice/ttbar/missing.root")])
    assert missing["error"] == (f"data set 'ttbar': /store/user/alice/ttbar/missing.root does not exist at "
                                f"root://localhost:{CACHE_PORT}"), missing["error"]
    token = Path(alice_env["BEARER_TOKEN_FILE"]).read_text()
    assert token not in got["error"] and token not in missing["error"]


def test_the_cache_down_stops_the_analysis_before_it_starts_with_a_message_naming_it(xrootd_site, alice_env):
    xrootd_site.stop_server("cache")
    try:
        got = analyse(xrootd_site, alice_env, [url("/store/user/alice/ttbar/nano.root")])
    finally:
        xrootd_site.start_server("cache")
    assert not got["ok"]
    assert got["error"].startswith(f"the data cache root://localhost:{CACHE_PORT} is not reachable (Connection "
                                   f"refused): the analysis did not start. Your notebook and your Dask cluster "
                                   f"keep running"), got["error"]
    again = analyse(xrootd_site, alice_env, [url("/store/user/alice/ttbar/nano.root")])
    assert again["ok"], "the analysis runs again once the cache is back"
