"""MLflow tracking: one small wrapper over ``MlflowClient`` with explicit run ids.

The default store is a local SQLite file (``sqlite:///mlflow.db``), so nothing
has to be started; a tracking server is just another URI. Runs are created
with explicit ids (no fluent "active run" stack), so a study can hold a parent
run per process and a nested child run per trial, and every run a crash left
RUNNING can be found and closed as FAILED.

Conventions: metrics are named ``val/miou``, ``train/loss``...; every child
run carries the tags ``study``, ``trial``, ``state``, ``feasible``,
``on_pareto_front``; ablation cells carry ``ablation``, ``variant``, ``seed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from nas._filelock import file_lock

__all__ = ["Tracker", "default_tracking_uri", "RUNNING", "FINISHED", "FAILED", "KILLED"]

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
_MAX_PARAM_LEN = 6000


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<file>.lock`` for a ``sqlite:///`` store, else nothing.

    MLflow creates and migrates the tables of a new SQLite store on first use; two processes
    doing it at once fail ("duplicate column name: step"), e.g. two ``nas-search`` workers
    started together in a new folder.
    """
    path = uri.split("sqlite:///", 1)[1].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # a folder that does not exist: MLflow's own error says which
            stack.enter_context(file_lock(path + ".lock"))
        yield


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


class Tracker:
    """MLflow runs of one experiment.

    Args:
        uri: tracking URI (``sqlite:///path.db``, ``http://host:5000``...);
            ``None`` = :func:`default_tracking_uri`.
        experiment: experiment name, created when missing.

    Raises:
        mlflow.exceptions.MlflowException: the store cannot be reached or
            written (the message names the URI).
    """

    def __init__(self, uri: str | None, experiment: str):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri or default_tracking_uri()
        with _sqlite_init_lock(self.uri):  # the first use of a new store creates (migrates) its tables
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    self.experiment_id = self.client.create_experiment(experiment)
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
        self.experiment = experiment

    # -- runs ---------------------------------------------------------------
    def start_run(self, name: str, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> str:
        """Create a RUNNING run (nested under ``parent_run_id`` if given) and return its id."""
        t = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            t["mlflow.parentRunId"] = parent_run_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=t).info.run_id

    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        """Close a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params (values cut to MLflow's 6000 characters), in batches of 100."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log the finite, non-None metrics at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and v == v]
        if ms:
            self.client.log_batch(run_id, metrics=ms)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_state_dict(self, run_id: str, state: Mapping[str, torch.Tensor], artifact_file: str = "best.pt") -> None:
        """Save a checkpoint (``torch.save`` of the state dict) as an artifact."""
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / artifact_file
            torch.save(dict(state), p)
            self.log_artifact(run_id, p)

    def download(self, run_id: str, artifact_file: str, dst: str | Path) -> Path:
        """Download one artifact of a run into ``dst`` and return its local path."""
        return Path(self.client.download_artifacts(run_id, artifact_file, str(dst)))

    # -- queries ------------------------------------------------------------
    def runs(self, filter_string: str = "", max_results: int = 5000) -> list[Any]:
        """Runs of this experiment matching an MLflow filter string (newest first)."""
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=min(max_results, 1000),
                order_by=["attributes.start_time DESC"], page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token or len(out) >= max_results:
                return out

    def close_stale_runs(self, run_ids: Iterable[str], status: str = FAILED) -> int:
        """Close those of ``run_ids`` still RUNNING; return how many were closed."""
        n = 0
        for rid in run_ids:
            if self.client.get_run(rid).info.status == RUNNING:
                self.end_run(rid, status)
                n += 1
        return n
