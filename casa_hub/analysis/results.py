"""The analysis result's histograms: a figure, a plain JSON form, and the files MLflow keeps.

``plot`` builds a ``matplotlib.figure.Figure`` without pyplot (no global figure state). A figure made
without pyplot has no picture in Jupyter unless a backend registered one, so the returned figure draws
itself as PNG (``casa_hub.analysis.figure``). ``histograms_json`` needs no hist to read back: per histogram the bin
edges, and per data set the bin contents and variances with underflow and overflow kept apart.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

PNG, JSON, PICKLE = "histograms.png", "histograms.json", "histograms.pkl"


def plot(result: dict[str, Any]) -> Any:
    """One panel per histogram, one step line per data set (a ``matplotlib.figure.Figure``)."""
    from casa_hub.analysis.figure import ResultFigure

    histograms = result["histograms"]
    figure = ResultFigure(figsize=(5 * len(histograms), 4), layout="constrained")
    for ax, (name, h) in zip(figure.subplots(1, len(histograms), squeeze=False)[0], histograms.items(),
                             strict=True):
        edges = h.axes["observable"].edges
        for dataset in h.axes["dataset"]:
            ax.stairs(h[{"dataset": dataset}].values(), edges, label=dataset)
        ax.set_xlabel(h.axes["observable"].label)
        ax.set_ylabel("events")
        ax.set_title(name)
        if len(h.axes["dataset"]):
            ax.legend()
    return figure


def histograms_json(result: dict[str, Any]) -> dict[str, Any]:
    """``{name: {"label", "edges", "datasets": {dataset: {"values", "variances", "underflow", "overflow"}}}}``."""
    out: dict[str, Any] = {}
    for name, h in result["histograms"].items():
        axis = h.axes["observable"]
        datasets = {}
        for dataset in h.axes["dataset"]:
            one = h[{"dataset": dataset}]
            flow = one.values(flow=True)
            datasets[dataset] = {"values": one.values().tolist(), "variances": (v.tolist() if (v := one.variances()) is not None else None),
                                 "underflow": float(flow[0]), "overflow": float(flow[-1])}
        out[name] = {"label": axis.label, "edges": axis.edges.tolist(), "datasets": datasets}
    return out


def save_histograms(result: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write the figure (PNG), the JSON form and the pickled ``hist.Hist`` objects to ``directory``."""
    import json

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    plot(result).savefig(target / PNG, dpi=100)
    (target / JSON).write_text(json.dumps(histograms_json(result), indent=1) + "\n")
    with open(target / PICKLE, "wb") as f:
        pickle.dump(result["histograms"], f)
    return [target / PNG, target / JSON, target / PICKLE]
