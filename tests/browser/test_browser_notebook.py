"""The physicist's first day in the real headless Chromium: alice signs in, finds the example notebook in
JupyterLab, runs all its cells (no set-up cell) and the analysis lands in MLflow as hers.

The facility runs Dask Gateway (local backend), the MLflow server with casa_hub's auth plugin, the demo's data
cache (a real XRootD origin and XCache) and the sample data set (2 files x 400 events) that the notebook reads
by name through the cache with alice's token: the cache's log shows alice's token authorising the reads. The
histograms MLflow holds are compared with an independent uproot computation on the same files
(tests/unit/test_analysis.py ``reference``), with the notebook's own (default) cuts.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import requests
from facilities import stop_servers
from helpers import http_login
from playwright.sync_api import expect
from shared_facilities import ANALYSIS_EVENTS, ANALYSIS_FILES
from test_browser_login import browser, page, sign_in  # noqa: F401 - the same Chromium fixtures

pytest.importorskip("coffea")
pytestmark = pytest.mark.browser

FILES, EVENTS = ANALYSIS_FILES, ANALYSIS_EVENTS
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ttbar_analysis.ipynb"
EXAMPLE_CODE_CELLS = [c for c in json.loads(EXAMPLE.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.fixture(scope="module")
def fac(shared_analysis_facility, admin_token):
    """The shared analysis facility; alice's server (and so her cluster) stops when the module ends."""
    yield shared_analysis_facility
    stop_servers(shared_analysis_facility, admin_token, "alice")


def reference(paths: list[Path]) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    try:
        import test_analysis as unit
    finally:
        sys.path.pop(0)
    from casa_hub.analysis.ttbar import Cuts

    return unit.reference(paths, Cuts())


def run_cells_one_by_one(tab, notebook) -> None:
    """Each code cell in turn: select it, Ctrl+Enter, wait for its execution count. A key press that reaches
    JupyterLab before the kernel's connection is ready leaves the prompt at '[ ]': pressed again then."""
    cells = notebook.locator(".jp-CodeCell")
    expect(cells).to_have_count(len(EXAMPLE_CODE_CELLS), timeout=30_000)
    for i in range(len(EXAMPLE_CODE_CELLS)):
        prompt = cells.nth(i).locator(".jp-InputArea-prompt")
        for _attempt in range(3):
            prompt.click()
            tab.keyboard.press("Control+Enter")
            try:
                expect(prompt).not_to_have_text(re.compile(r"^\[ \]"), timeout=15_000)
                break
            except AssertionError:
                continue
        # cluster start-up and the analysis itself take the longest
        expect(prompt).to_have_text(re.compile(r"\[\d+\]"), timeout=240_000)


def mlflow_headers(fac) -> dict[str, str]:
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    token = s.post(f"{fac.hub_url}/hub/api/casa/tokens/mlflow", headers={"X-XSRFToken": s.cookies.get("_xsrf", "")},
                   timeout=30).json()["token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow(45)
@pytest.mark.timeout(600)  # the facility, JupyterLab, a kernel, the cluster and the analysis
def test_alice_runs_the_example_notebook_and_her_run_is_in_mlflow(page, fac, artifacts_dir):  # noqa: F811
    began_ms = int(time.time() * 1000)  # the facility is shared: alice's runs from before are not this test's
    cache_log_mark = len(fac.data_cache.xrootd_log("cache"))
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    sign_in(page, fac, "alice", fac.password("alice"))
    page.wait_for_url(re.compile(r"/user/alice/lab"), timeout=180_000)
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=120_000)
    # the notebook is in her home: the file browser lists it
    expect(page.locator(".jp-DirListing-itemText", has_text="ttbar_analysis.ipynb")).to_be_visible(timeout=60_000)
    page.locator(".jp-DirListing-itemText", has_text="ttbar_analysis.ipynb").dblclick()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first).to_be_attached(timeout=120_000)
    # cell by cell, as a physicist does (Shift+Enter), each code cell's prompt must show its execution count
    try:
        run_cells_one_by_one(page, notebook)
        # the last cell's output: the run logged to MLflow
        expect(notebook.locator(".jp-OutputArea-output", has_text="MlflowLogResult(ok=True")).to_be_visible(
            timeout=60_000)
    except AssertionError:
        print("\n".join(console[-60:]))  # JupyterLab's console: why a cell did not run
        raise
    finally:
        page.screenshot(path=str(artifacts_dir / "notebook-example-analysis-run.png"), full_page=True)
    # saved, the notebook on disk says what every cell did: all ran, in order, none raised
    page.keyboard.press("Control+s")
    saved = fac.state_dir / "homes" / "alice" / "ttbar_analysis.ipynb"
    deadline = time.monotonic() + 60
    while True:
        cells = [c for c in json.loads(saved.read_text())["cells"] if c["cell_type"] == "code"]
        if all(c.get("execution_count") for c in cells) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    n = len(EXAMPLE_CODE_CELLS)
    assert len(cells) == n and [c["execution_count"] for c in cells] == list(range(1, n + 1)), \
        [c.get("execution_count") for c in cells]
    errors = [o.get("ename") for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], f"cells raised {errors}"
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plot cell drew the histograms"
    page.screenshot(path=str(artifacts_dir / "notebook-example-analysis.png"), full_page=True)
    (artifacts_dir / "notebook-example-analysis.html").write_text(page.content())  # read by the leak scan

    # MLflow: alice's run, with the events processed and the histograms equal to uproot's on the same files
    headers = mlflow_headers(fac)
    experiments = requests.post(f"{fac.mlflow_url}/api/2.0/mlflow/experiments/search", headers=headers, timeout=30,
                                json={"max_results": 100}).json()["experiments"]
    ours = [e["experiment_id"] for e in experiments if e["name"] == "ttbar-alice"]
    assert ours, [e["name"] for e in experiments]
    runs = requests.post(f"{fac.mlflow_url}/api/2.0/mlflow/runs/search", headers=headers, timeout=30,
                         json={"experiment_ids": ours}).json()["runs"]
    runs = [r for r in runs if int(r["info"]["start_time"]) >= began_ms]
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["info"]["user_id"] == "alice" and run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["events_processed"] == FILES * EVENTS, metrics
    r = requests.get(f"{fac.mlflow_url}/get-artifact", headers=headers, timeout=30,
                     params={"path": "histograms/histograms.json", "run_uuid": run["info"]["run_id"]})
    assert r.status_code == 200, r.text[:300]
    logged = json.loads(r.text)
    files = sorted((fac.state_dir / "data" / "store" / "data" / "ttbar").glob("*.root"))
    assert len(files) == FILES
    # the notebook read them through the cache, which authorised alice's token (XRootD maps the token's sub)
    new_log = fac.data_cache.xrootd_log("cache")[cache_log_mark:]
    assert "login as alice" in new_log and "login as bob" not in new_log, new_log[-2000:]
    cached = fac.data_cache.server_dir("cache") / "data" / "store" / "data" / "ttbar"
    assert sorted(p.name for p in cached.glob("*.root")) == [f.name for f in files], "the cache holds the data set"
    expected = reference(files)
    for name in ("ht_4j1b", "mbjj_4j2b"):
        got = logged[name]["datasets"]["ttbar"]
        flow = [got["underflow"], *got["values"], got["overflow"]]
        assert flow == expected[name].tolist(), f"{name}: MLflow holds {flow}, uproot gives {expected[name].tolist()}"
    assert sum(logged["ht_4j1b"]["datasets"]["ttbar"]["values"]) + logged["ht_4j1b"]["datasets"]["ttbar"][
        "overflow"] + logged["ht_4j1b"]["datasets"]["ttbar"]["underflow"] == expected["cutflow"]["4j1b"]
