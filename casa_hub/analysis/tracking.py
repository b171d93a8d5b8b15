"""Log an analysis result to MLflow, without ever failing the analysis.

``log_to_mlflow`` records the run's parameters, its metrics (events processed, events per second,
seconds, bytes read, the cut flow) and the histograms (PNG, JSON, pickle) as artifacts, with the
MLflow client. On the facility, the tracking URI is ``$MLFLOW_TRACKING_URI`` and casa_hub's
request header provider sends the user's own MLflow token, so the run is the user's.

Any failure (server down, token refused, ...) is caught: the result comes back with ``ok`` False
and an ``error`` that names the server, and is logged as a warning. HTTP retries and timeouts are
bounded for the call (``retries``, ``timeout``), instead of MLflow's defaults of minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

from casa_hub.analysis.results import save_histograms

log = logging.getLogger(__name__)

ARTIFACT_DIR = "histograms"
_HTTP_SETTINGS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@dataclasses.dataclass(frozen=True)
class MlflowLogResult:
    """What ``log_to_mlflow`` did: the run, or why nothing (or not everything) was logged."""

    ok: bool
    tracking_uri: str
    experiment: str
    run_id: str | None = None
    error: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"logged to MLflow at {self.tracking_uri}: experiment {self.experiment!r}, run {self.run_id}"
        return (f"NOT logged to MLflow at {self.tracking_uri} (the analysis result is unaffected): "
                f"{self.error}")

    def __bool__(self) -> bool:
        return self.ok


def default_experiment() -> str:
    """``ttbar-<user>``: an experiment of the user's own (MLflow grants MANAGE to its creator)."""
    return f"ttbar-{os.environ.get('JUPYTERHUB_USER') or getpass.getuser()}"


@contextlib.contextmanager
def _bounded_http(retries: int, timeout: float) -> Iterator[None]:
    values = (str(retries), str(max(1, round(timeout))), "1")
    saved = {name: os.environ.get(name) for name in _HTTP_SETTINGS}
    os.environ.update(dict(zip(_HTTP_SETTINGS, values, strict=True)))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``result`` MLflow records as metrics."""
    metrics = {"events_processed": float(result["events"]), "events_per_second": float(result["events_per_second"]),
               "seconds": float(result["seconds"]), "bytes_read": float(result.get("bytes_read", 0))}
    for dataset, flow in result.get("cutflow", {}).items():
        metrics.update({f"cutflow.{dataset}.{step}": float(n) for step, n in flow.items()})
    return metrics


def log_to_mlflow(result: Mapping[str, Any], *, experiment: str | None = None, run_name: str | None = None,
                  tracking_uri: str | None = None, tags: Mapping[str, str] | None = None,
                  retries: int = 1, timeout: float = 10.0) -> MlflowLogResult:
    """Log ``result`` (from ``casa_hub.analysis.run``) as one MLflow run; never raises.

    ``tracking_uri``: default MLflow's own (``$MLFLOW_TRACKING_URI``). ``experiment``: default
    ``ttbar-<user>``, created if missing.
    """
    experiment = experiment or default_experiment()
    try:
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
    except ImportError as e:
        return _failed(tracking_uri or "(none)", experiment, f"the MLflow client is not installed ({e})")
    uri = tracking_uri or mlflow.get_tracking_uri()
    run_id: str | None = None
    with _bounded_http(retries, timeout):
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            user = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()  # the token's subject in a notebook
            run_id = client.create_run(experiment_id, run_name=run_name,
                                       tags={"mlflow.user": user, **dict(tags or {})}).info.run_id
            now = int(time.time() * 1000)
            params = [Param(k, str(v)) for k, v in result.get("parameters", {}).items()]
            metrics = [Metric(k, v, now, 0) for k, v in metrics_of(result).items()]
            client.log_batch(run_id, metrics=metrics, params=params,
                             tags=[RunTag("casa_hub.analysis", "ttbar")])
            with tempfile.TemporaryDirectory(prefix="casa-histograms-") as tmp:
                save_histograms(dict(result), tmp)
                client.log_artifacts(run_id, tmp, artifact_path=ARTIFACT_DIR)
            client.set_terminated(run_id, "FINISHED")
        except Exception as e:  # noqa: BLE001 - the analysis result must survive any logging failure
            if run_id is not None:
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, "FAILED")
            return _failed(uri, experiment, f"{type(e).__name__}: {_first_line(e)}", run_id)
    return MlflowLogResult(True, uri, experiment, run_id)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:500] if text else "(no message)"


def _failed(uri: str, experiment: str, error: str, run_id: str | None = None) -> MlflowLogResult:
    outcome = MlflowLogResult(False, uri, experiment, run_id, error)
    log.warning("%s", outcome)
    return outcome
