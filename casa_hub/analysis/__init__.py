"""The example analysis a physicist runs on the facility, and the data it reads.

- ``fileset.py``: data set names -> file URLs (through the data cache), from the fileset file;
- ``ttbar.py``: the AGC-style ttbar selection with coffea, ``run(fileset, client)``;
- ``results.py``: ``plot`` and the histograms' files; ``tracking.py``: ``log_to_mlflow``;
- ``preflight.py``: before a run, the data servers answer and the token may read the data;
- ``sample.py``: the shipped sample file (``data/``); ``generate.py``: larger data sets from it.

In a notebook::

    from casa_hub.analysis import fileset, log_to_mlflow, plot, run
    from casa_hub.dask import get_client
    result = run(fileset(["ttbar"]), client=get_client())
    plot(result)
    log_to_mlflow(result)

Importing this package imports neither coffea nor MLflow (names load on first use).
"""

from __future__ import annotations

from casa_hub.analysis.fileset import fileset as fileset
from casa_hub.analysis.generate import generate as generate
from casa_hub.common.lazy import lazy_exports

# ``fileset`` and ``generate`` are functions named like their modules: bound here, after their
# module is imported (which would otherwise set the package attribute to the module); both modules
# import only the standard library and traitlets at import time.

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "DataAccessError": "preflight",
    "FilesetError": "fileset",
    "Filesets": "fileset",
    "write_fileset": "fileset",
    "Cuts": "ttbar",
    "TtbarProcessor": "ttbar",
    "run": "ttbar",
    "plot": "results",
    "histograms_json": "results",
    "save_histograms": "results",
    "MlflowLogResult": "tracking",
    "log_to_mlflow": "tracking",
    "SAMPLE_FILE": "sample",
    "sample_fileset": "sample",
}
__all__ = sorted([*_EXPORTS, "fileset", "generate"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
