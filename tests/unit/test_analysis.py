"""The example analysis (casa_hub.analysis): its histograms against an independent selection, the
data generator, the fileset, MLflow logging that never fails the analysis, and the notebook.

The reference selection below is written again from the cuts' definitions with uproot, awkward
and numpy (per-event loops for the trijet), never from casa_hub's code or hard-coded counts.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from casa_hub.analysis import (
    SAMPLE_FILE,
    Cuts,
    FilesetError,
    fileset,
    generate,
    histograms_json,
    log_to_mlflow,
    plot,
    run,
    sample_fileset,
)
from casa_hub.analysis.generate import COLLECTIONS, EVENT_BRANCHES, branch_names, main, read_source
from casa_hub.common.ports import free_port

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # coffea: cross-references to absent collections

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "ttbar_analysis.ipynb"
#: loose enough that the 200 sample events populate both regions
LOOSE = Cuts(jet_pt=15, lepton_pt=10, btag=0.2, electron_id=0, muon_tight_id=False, muon_iso=1e9)
EDGES = np.linspace(50.0, 550.0, 26)


# ---- the reference selection ---------------------------------------------------------------

def _four_vector(pt: float, eta: float, phi: float, mass: float) -> np.ndarray:
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return np.array([math.sqrt(px * px + py * py + pz * pz + mass * mass), px, py, pz])


def _with_flow(values: list[float]) -> np.ndarray:
    """Counts per bin of EDGES, with underflow first and overflow last (as hist's ``flow=True``)."""
    v = np.asarray(values, dtype=float)
    inside, _ = np.histogram(v[(v >= EDGES[0]) & (v < EDGES[-1])], bins=EDGES)
    return np.concatenate([[np.sum(v < EDGES[0])], inside, [np.sum(v >= EDGES[-1])]])


def reference(paths: list[Path], c: Cuts) -> dict:
    """HT (4j1b), m_bjj (4j2b) and the cut flow, computed from the files directly."""
    ht: list[float] = []
    mbjj: list[float] = []
    flow = dict.fromkeys(("events", "one_lepton", "four_jets", "one_btag", "4j1b", "4j2b"), 0)
    for path in paths:
        a = uproot.open(path)["Events"].arrays(filter_name=["Electron_*", "Muon_*", "Jet_*"])
        electron = ((a.Electron_pt > c.lepton_pt) & (abs(a.Electron_eta) < c.electron_eta)
                    & (a.Electron_cutBased >= c.electron_id))
        muon = (a.Muon_pt > c.lepton_pt) & (abs(a.Muon_eta) < c.muon_eta) & (a.Muon_pfRelIso04_all < c.muon_iso)
        if c.muon_tight_id:
            muon = muon & a.Muon_tightId
        jet = (a.Jet_pt > c.jet_pt) & (abs(a.Jet_eta) < c.jet_eta) & (a.Jet_jetId >= c.jet_id)
        leptons = (ak.sum(electron, axis=1) + ak.sum(muon, axis=1)).to_list()
        jets = ak.zip({"keep": jet, "pt": a.Jet_pt, "eta": a.Jet_eta, "phi": a.Jet_phi, "mass": a.Jet_mass,
                       "btag": a.Jet_btagCSVV2}).to_list()
        for n_leptons, event_jets in zip(leptons, jets, strict=True):
            flow["events"] += 1
            if n_leptons != 1:
                continue
            flow["one_lepton"] += 1
            kept = [j for j in event_jets if j["keep"]]
            if len(kept) < c.min_jets:
                continue
            flow["four_jets"] += 1
            nb = sum(j["btag"] > c.btag for j in kept)
            if nb == 0:
                continue
            flow["one_btag"] += 1
            if nb == 1:
                flow["4j1b"] += 1
                ht.append(sum(j["pt"] for j in kept))
                continue
            flow["4j2b"] += 1
            best = max((sum(_four_vector(j["pt"], j["eta"], j["phi"], j["mass"]) for j in trio)
                        for trio in itertools.combinations(kept, 3) if any(j["btag"] > c.btag for j in trio)),
                       key=lambda p: math.hypot(p[1], p[2]))
            mbjj.append(math.sqrt(max(best[0] ** 2 - best[1] ** 2 - best[2] ** 2 - best[3] ** 2, 0.0)))
    return {"ht_4j1b": _with_flow(ht), "mbjj_4j2b": _with_flow(mbjj), "cutflow": flow}


def assert_matches(result: dict, expected: dict, dataset: str = "ttbar") -> None:
    assert result["cutflow"][dataset] == expected["cutflow"]
    for name in ("ht_4j1b", "mbjj_4j2b"):
        h = result["histograms"][name]
        np.testing.assert_allclose(h.axes["observable"].edges, EDGES, rtol=1e-12)
        np.testing.assert_array_equal(h[{"dataset": dataset}].values(flow=True), expected[name], err_msg=name)


# ---- the analysis on the sample --------------------------------------------------------------

@pytest.mark.parametrize("cuts", [Cuts(), LOOSE], ids=["default-cuts", "loose-cuts"])
def test_histograms_equal_an_independent_selection_on_the_sample(cuts):
    expected = reference([SAMPLE_FILE], cuts)
    result = run(sample_fileset(), cuts=cuts, chunksize=64)  # several chunks: the sums are accumulated
    assert_matches(result, expected)
    assert expected["cutflow"]["4j1b"] > 0, "the comparison must not be of empty histograms"
    if cuts == LOOSE:
        assert expected["cutflow"]["4j2b"] > 0
    assert result["events"] == uproot.open(SAMPLE_FILE)["Events"].num_entries
    assert result["events_per_second"] > 0 and result["bytes_read"] > 0
    assert result["parameters"]["btag"] == cuts.btag and result["parameters"]["executor"] == "IterativeExecutor"


def test_plot_draws_one_panel_per_histogram():
    figure = plot(run(sample_fileset(), cuts=LOOSE))
    assert [ax.get_title() for ax in figure.axes] == ["ht_4j1b", "mbjj_4j2b"]
    assert all(ax.get_legend() is not None for ax in figure.axes)


def test_the_figure_shows_as_a_picture_in_ipython_without_pyplot():
    """IPython's display asks for image/png; a bare Figure (no pyplot backend) would give only text."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(plot(run(sample_fileset(), cuts=LOOSE)))
    assert data["image/png"].startswith(b"\x89PNG\r\n"), sorted(data)


# ---- the generator ------------------------------------------------------------------------------

def test_generator_writes_n_files_of_m_resampled_events_the_analysis_reads(tmp_path):
    messages: list[str] = []
    paths = generate(tmp_path / "a", files=3, events=100, seed=7, progress=messages.append)
    again = generate(tmp_path / "b", files=2, events=100, seed=7, progress=None)
    other = generate(tmp_path / "c", files=1, events=100, seed=8, progress=None)

    sample = uproot.open(SAMPLE_FILE)["Events"]
    wanted = {k for k in sample.keys() if k.startswith(("Jet_", "Muon_", "Electron_", "MET_"))}
    wanted |= {f"n{c}" for c in COLLECTIONS} | {k for k in EVENT_BRANCHES if k in sample.keys()}
    assert wanted == set(branch_names(read_source()))
    sample_events = set(sample["event"].array(library="np").tolist())
    assert [p.name for p in paths] == ["nano_000.root", "nano_001.root", "nano_002.root"]
    assert len(messages) == 3 and all(str(p) in m for p, m in zip(paths, messages, strict=True))
    for path in paths:
        tree = uproot.open(path)["Events"]
        assert tree.num_entries == 100
        assert set(tree.keys()) == wanted
        for branch in ("Jet_pt", "Jet_jetId", "Muon_tightId", "MET_pt", "event"):
            assert str(tree[branch].array().type.content) == str(sample[branch].array().type.content)
        assert ak.all(tree["nElectron"].array() == ak.num(tree["Electron_pt"].array()))  # int32, not uint32
        assert set(tree["event"].array(library="np").tolist()) <= sample_events
    # the same seed gives the same files (file k does not depend on N); another seed other events
    for first, second in zip(paths[:2], again, strict=True):
        assert ak.all(uproot.open(first)["Events"]["Jet_pt"].array() == uproot.open(second)["Events"]["Jet_pt"].array())
    assert not np.array_equal(uproot.open(paths[0])["Events"]["event"].array(library="np"),
                              uproot.open(other[0])["Events"]["event"].array(library="np"))

    files = {str(p): "Events" for p in paths}
    result = run({"ttbar": {"files": files}}, cuts=LOOSE)
    assert result["events"] == 300
    assert_matches(result, reference(paths, LOOSE))


def test_generator_command_adds_the_data_set_to_a_fileset(tmp_path, capsys):
    out = tmp_path / "store" / "data" / "ttbar"
    assert main(["--files", "2", "--events", "20", "--out", str(out), "--seed", "1",
                 "--fileset", str(tmp_path / "fileset.json"), "--namespace", "/store/data/ttbar"]) == 0
    assert "[2/2]" in capsys.readouterr().out
    assert json.loads((tmp_path / "fileset.json").read_text()) == {
        "ttbar": ["/store/data/ttbar/nano_000.root", "/store/data/ttbar/nano_001.root"]}
    resolved = fileset(["ttbar"], path=str(tmp_path / "fileset.json"), cache_url="")
    assert resolved == {"ttbar": {"files": {(out / f"nano_00{i}.root").as_uri(): "Events" for i in range(2)}}}
    assert run(resolved)["events"] == 40


# ---- the fileset ---------------------------------------------------------------------------

@pytest.fixture
def fileset_file(tmp_path, monkeypatch):
    for name in ("CASA_FILESET", "CASA_XCACHE_URL", "CASA_DATA_DIR", "CASA_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "fileset.json"
    path.write_text(json.dumps({"ttbar": ["/store/data/ttbar/nano_000.root"],
                                "wjets": {"files": ["/store/data/wjets/a.root"], "treename": "Tree"}}))
    return path


def test_namespace_paths_are_read_through_the_cache(fileset_file, monkeypatch):
    monkeypatch.setenv("CASA_FILESET", str(fileset_file))
    monkeypatch.setenv("CASA_XCACHE_URL", "root://127.0.0.1:1094")
    assert fileset(["ttbar", "wjets"]) == {
        "ttbar": {"files": {"root://127.0.0.1:1094//store/data/ttbar/nano_000.root": "Events"}},
        "wjets": {"files": {"root://127.0.0.1:1094//store/data/wjets/a.root": "Tree"}}}
    assert fileset("ttbar", cache_url="roots://cache.example.org:1094/") == {
        "ttbar": {"files": {"roots://cache.example.org:1094//store/data/ttbar/nano_000.root": "Events"}}}


def test_without_a_cache_files_are_read_from_the_local_directory(fileset_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CASA_CONFIG_DIR", str(tmp_path))  # the default place of fileset.json
    with pytest.raises(FilesetError) as missing:
        fileset(["ttbar"])
    assert "CASA_XCACHE_URL is unset" in str(missing.value)
    assert str(tmp_path / "store" / "data" / "ttbar" / "nano_000.root") in str(missing.value)
    local = tmp_path / "elsewhere" / "store" / "data" / "ttbar" / "nano_000.root"
    local.parent.mkdir(parents=True)
    local.write_bytes(SAMPLE_FILE.read_bytes())
    monkeypatch.setenv("CASA_DATA_DIR", str(tmp_path / "elsewhere"))
    assert fileset(["ttbar"]) == {"ttbar": {"files": {local.as_uri(): "Events"}}}


def test_an_unknown_data_set_lists_the_known_ones(fileset_file):
    with pytest.raises(FilesetError) as e:
        fileset(["ttbar", "zprime"], path=str(fileset_file), cache_url="root://c:1094")
    assert "'zprime'" in str(e.value) and "ttbar, wjets" in str(e.value)
    assert "'ttbar'" not in str(e.value).split(";")[0]


def test_a_missing_fileset_file_names_the_variable_and_the_path(fileset_file, tmp_path, monkeypatch):
    with pytest.raises(FilesetError, match=r"set \$CASA_FILESET"):
        fileset(["ttbar"])
    monkeypatch.setenv("CASA_FILESET", str(tmp_path / "nowhere.json"))
    with pytest.raises(FilesetError) as e:
        fileset(["ttbar"])
    assert str(tmp_path / "nowhere.json") in str(e.value) and "$CASA_FILESET=" in str(e.value)
    assert "No such file" in str(e.value)


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "mapping"),
    ('{"ttbar": "/store/a.root"}', "list of file paths"),
    ('{"ttbar": ["store/a.root"]}', "absolute namespace path"),
    ('{"ttbar": ["/store/../etc/passwd"]}', "absolute namespace path"),
    ("{not json", "not valid"),
])
def test_a_wrong_fileset_file_is_refused_with_the_reason(fileset_file, content, problem):
    fileset_file.write_text(content)
    with pytest.raises(FilesetError, match=problem):
        fileset(["ttbar"], path=str(fileset_file), cache_url="root://c:1094")


def test_yaml_fileset_and_full_urls(tmp_path):
    path = tmp_path / "fileset.yaml"
    path.write_text("ttbar:\n  - /store/data/ttbar/a.root\n  - https://data.example.org/b.root\n")
    assert fileset("ttbar", path=str(path), cache_url="root://c:1094") == {"ttbar": {"files": {
        "root://c:1094//store/data/ttbar/a.root": "Events", "https://data.example.org/b.root": "Events"}}}


# ---- MLflow --------------------------------------------------------------------------------

def _unused_port() -> int:
    return free_port()  # nothing listens there


def test_mlflow_down_is_reported_and_the_result_kept(caplog):
    result = run(sample_fileset())
    before = histograms_json(result)
    uri = f"http://127.0.0.1:{_unused_port()}"
    outcome = log_to_mlflow(result, tracking_uri=uri, experiment="ttbar-test", retries=0, timeout=2)
    assert not outcome and outcome.ok is False and outcome.run_id is None
    assert outcome.tracking_uri == uri
    assert "Connection refused" in outcome.error or "Failed to establish" in outcome.error
    assert str(outcome).startswith(f"NOT logged to MLflow at {uri}")
    assert any("NOT logged to MLflow" in r.getMessage() for r in caplog.records)
    assert histograms_json(result) == before and result["events"] > 0


def test_a_run_is_logged_with_parameters_metrics_and_histograms(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(sample_fileset(), cuts=LOOSE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = log_to_mlflow(result, tracking_uri=uri, experiment="ttbar-alice", run_name="first")
    assert outcome.ok, str(outcome)
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(outcome.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "first"
    assert logged.data.metrics["events_processed"] == result["events"]
    assert logged.data.metrics["events_per_second"] == pytest.approx(result["events_per_second"])
    assert logged.data.metrics["cutflow.ttbar.4j2b"] == result["cutflow"]["ttbar"]["4j2b"]
    assert logged.data.params["btag"] == str(LOOSE.btag) and logged.data.params["datasets"] == "ttbar"
    names = {a.path for a in client.list_artifacts(outcome.run_id, "histograms")}
    assert names == {"histograms/histograms.png", "histograms/histograms.json", "histograms/histograms.pkl"}
    saved = Path(client.download_artifacts(outcome.run_id, "histograms/histograms.json", str(tmp_path)))
    assert json.loads(saved.read_text()) == json.loads(json.dumps(histograms_json(result)))


# ---- the notebook --------------------------------------------------------------------------------

def test_the_notebook_is_valid_without_outputs_and_uses_the_module():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    tree = ast.parse(source)  # every cell is plain Python: no magics, no set-up
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported == {("casa_hub.analysis", name) for name in ("fileset", "log_to_mlflow", "plot", "run")} \
        | {("casa_hub.dask", "get_client")}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"get_client", "fileset", "run", "plot", "log_to_mlflow"} <= called
    assert 'fileset(["ttbar"])' in source
