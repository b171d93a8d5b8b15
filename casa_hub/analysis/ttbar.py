"""The example analysis: an Analysis-Grand-Challenge-style ttbar selection on CMS NanoAOD, with coffea.

Selection (defaults of :class:`Cuts`; every number is a field, logged with the result):

- jets: pT > 25 GeV, |eta| < 2.4, ``Jet_jetId >= 2`` (tight PF jet id);
- electrons: pT > 25 GeV, |eta| < 2.5, ``Electron_cutBased >= 4`` (cut-based tight id);
- muons: pT > 25 GeV, |eta| < 2.4, ``Muon_tightId``, ``Muon_pfRelIso04_all < 0.15``;
- events: exactly one lepton (electron or muon as above), >= 4 jets, >= 1 b-tagged jet
  (``Jet_btagCSVV2 > 0.5``, the AGC's CSVv2 threshold);
- regions: ``4j1b`` (exactly one b-tagged jet) and ``4j2b`` (two or more);
- histograms (25 bins, 50-550 GeV, a ``dataset`` category axis): ``ht_4j1b``, the scalar sum of
  the selected jets' pT in 4j1b; ``mbjj_4j2b``, in 4j2b the mass of the trijet (three selected
  jets, at least one b-tagged) with the highest pT.

The events are NanoEvents (``NanoAODSchema``) processed in chunks by ``coffea.processor``: on a
Dask cluster with ``DaskExecutor`` (``run(fs, client=get_client())``), else one chunk after the
other in this process (``IterativeExecutor``). coffea's dask-awkward mode is not used: no
dask-awkward release supports dask >= 2025.4 (they pin ``dask<2025.4.0``), and the facility's
images run dask 2026.8.0.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea import util as coffea_util
from coffea.nanoevents import NanoAODSchema

from casa_hub.analysis.preflight import check_access

#: histogram binning (GeV), as in the AGC
BINS, LOW, HIGH = 25, 50.0, 550.0
HISTOGRAMS = {"ht_4j1b": "H_T [GeV] (4j1b)", "mbjj_4j2b": "m_bjj [GeV] (4j2b)"}
_SCHEMA_NOTICES = ("Missing cross-reference index", "Branch .* already exists but its values will be replaced")


@dataclasses.dataclass(frozen=True)
class Cuts:
    """The selection's thresholds (GeV for momenta)."""

    jet_pt: float = 25.0
    jet_eta: float = 2.4
    jet_id: int = 2
    lepton_pt: float = 25.0
    electron_eta: float = 2.5
    electron_id: int = 4
    muon_eta: float = 2.4
    muon_tight_id: bool = True
    muon_iso: float = 0.15
    btag: float = 0.5
    min_jets: int = 4


def empty_histogram(name: str, datasets: list[str] | None = None) -> hist.Hist:
    """Histogram ``name`` with no entries, for ``datasets`` (more are added when filled)."""
    return (hist.Hist.new.StrCat(datasets or [], name="dataset", growth=True)
            .Reg(BINS, LOW, HIGH, name="observable", label=HISTOGRAMS[name]).Double())


class TtbarProcessor(processor.ProcessorABC):
    """One chunk of events -> the two histograms and the cut flow."""

    def __init__(self, cuts: Cuts | None = None) -> None:
        self.cuts = cuts or Cuts()

    def process(self, events: Any) -> dict[str, Any]:
        c = self.cuts
        el, mu, jet = events.Electron, events.Muon, events.Jet
        electrons = el[(el.pt > c.lepton_pt) & (abs(el.eta) < c.electron_eta) & (el.cutBased >= c.electron_id)]
        muon_ok = (mu.pt > c.lepton_pt) & (abs(mu.eta) < c.muon_eta) & (mu.pfRelIso04_all < c.muon_iso)
        muons = mu[muon_ok & mu.tightId] if c.muon_tight_id else mu[muon_ok]
        jets = jet[(jet.pt > c.jet_pt) & (abs(jet.eta) < c.jet_eta) & (jet.jetId >= c.jet_id)]

        one_lepton = (ak.num(electrons) + ak.num(muons)) == 1
        four_jets = one_lepton & (ak.num(jets) >= c.min_jets)
        nbtag = ak.sum(jets.btagCSVV2 > c.btag, axis=1)
        selected = four_jets & (nbtag >= 1)
        region_1b = selected & (nbtag == 1)
        region_2b = selected & (nbtag >= 2)

        dataset = events.metadata["dataset"]
        ht = empty_histogram("ht_4j1b", [dataset])
        ht.fill(dataset=dataset, observable=ak.to_numpy(ak.sum(jets[region_1b].pt, axis=1)))
        mbjj = empty_histogram("mbjj_4j2b", [dataset])
        mbjj.fill(dataset=dataset, observable=ak.to_numpy(self.trijet_mass(jets[region_2b])))
        counts = {"events": len(events), "one_lepton": ak.sum(one_lepton), "four_jets": ak.sum(four_jets),
                  "one_btag": ak.sum(selected), "4j1b": ak.sum(region_1b), "4j2b": ak.sum(region_2b)}
        return {"histograms": {"ht_4j1b": ht, "mbjj_4j2b": mbjj},
                "cutflow": {dataset: {k: int(v) for k, v in counts.items()}}}

    def trijet_mass(self, jets: Any) -> Any:
        """Per event, the mass of the highest-pT trijet with at least one b-tagged jet."""
        trijet = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
        btagged = np.maximum(trijet.j1.btagCSVV2, np.maximum(trijet.j2.btagCSVV2, trijet.j3.btagCSVV2))
        p4 = (trijet.j1 + trijet.j2 + trijet.j3)[btagged > self.cuts.btag]
        best = p4[ak.argmax(p4.pt, axis=1, keepdims=True)]
        return ak.flatten(ak.drop_none(best.mass), axis=1)

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


def run(fileset: dict[str, Any], client: Any = None, *, cuts: Cuts | None = None,
        chunksize: int = 100_000, progress: bool = False, timeout: int = 60,
        preflight: bool = True) -> dict[str, Any]:
    """Run the selection on ``fileset`` (coffea's format, e.g. from ``casa_hub.analysis.fileset``).

    ``client``: a ``distributed.Client`` (``casa_hub.dask.get_client()`` in a notebook) to run on its
    cluster; None processes the chunks here, one after the other. ``timeout``: seconds to wait for
    a remote file (XRootD) before failing. Returns ``histograms`` (name -> ``hist.Hist``),
    ``cutflow`` (dataset -> counts), ``events``, ``seconds``, ``events_per_second``, ``bytes_read``
    and the ``parameters`` of the run.

    ``preflight``: first check that the data servers answer and that the user's token may read the
    first file of each data set (``casa_hub.analysis.preflight``); ``DataAccessError`` says what is wrong
    before any work is sent to the cluster.
    """
    cuts = cuts or Cuts()
    if preflight:
        check_access(fileset)
    if client is None:
        executor: processor.ExecutorBase = processor.IterativeExecutor(status=progress)
    else:
        executor = processor.DaskExecutor(client=client, status=progress)
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunksize,
                              savemetrics=True, xrootdtimeout=timeout)
    start = time.perf_counter()
    console, quiet = coffea_util.coffea_console, coffea_util.coffea_console.quiet
    console.quiet = quiet or not progress  # coffea's local executor shows its bars whatever ``status`` says
    try:
        with warnings.catch_warnings():
            for message in _SCHEMA_NOTICES:  # NanoAODSchema on files without every collection: harmless
                warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
            output, metrics = runner(fileset, TtbarProcessor(cuts), treename="Events")
    finally:
        console.quiet = quiet
    seconds = time.perf_counter() - start
    histograms = {name: output.get("histograms", {}).get(name, empty_histogram(name)) for name in HISTOGRAMS}
    cutflow = output.get("cutflow", {})
    events = sum(flow["events"] for flow in cutflow.values())
    files = sum(len(spec["files"]) if isinstance(spec, dict) else len(spec) for spec in fileset.values())
    return {
        "histograms": histograms,
        "cutflow": cutflow,
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds if seconds > 0 else 0.0,
        "bytes_read": int(metrics.get("bytesread", 0)),
        "parameters": {**dataclasses.asdict(cuts), "datasets": ",".join(sorted(fileset)), "files": files,
                       "chunksize": chunksize, "executor": type(executor).__name__},
    }
