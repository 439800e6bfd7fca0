"""MLflow tracking: one small wrapper over ``MlflowClient`` with explicit run ids.

The default store is a local SQLite file (``sqlite:///mlflow.db``), so nothing
has to be started; a tracking server is just another URI. Runs are created
with explicit ids (no fluent "active run" stack), so a study can hold a parent
run per process and a nested child run per trial, and every run a crash left
RUNNING can be found and closed as FAILED.

Every training is tracked the same way, through :func:`training_run` (training, the study's
trials, ablation cells, fidelity cells): the run starts with its tags, the training config
(``train.*``), the genotype (``genotype.*`` and ``genotype.yaml``) and its costs; per-epoch
metrics carry the keys of :func:`epoch_metrics`; an exception closes the run FAILED
(Ctrl-C: KILLED) instead of leaving it RUNNING.

Conventions: metrics are named ``val/miou``, ``train/loss``...; every child
run carries the tags ``study``, ``trial``, ``state``, ``feasible``,
``on_pareto_front``; ablation cells carry ``ablation``, ``variant``, ``seed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from nas._filelock import file_lock

__all__ = ["Tracker", "TrainingRun", "close_runs_of_failed_trials", "default_tracking_uri", "epoch_metrics",
           "log_evaluation", "result_metrics", "start_worker_run", "training_run", "RUNNING", "FINISHED", "FAILED",
           "KILLED"]

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


def start_worker_run(tracker: Tracker | None, study: str, tags: Mapping[str, Any],
                     params: Mapping[str, Any]) -> str | None:
    """Open the MLflow parent run of one study worker (``<study>-worker-<host>-<pid>``) and return its id.

    Runs of this study's workers left RUNNING on this host by a process that no longer exists
    (killed before it could close them) are closed KILLED first. ``None`` without a tracker.
    """
    if not tracker:
        return None
    from nas.storage import pid_alive

    host, pid = socket.gethostname(), os.getpid()
    for r in tracker.runs(f"tags.study = '{study}' and tags.role = 'worker' and attributes.status = 'RUNNING'"):
        if r.data.tags.get("host") == host and not pid_alive(int(r.data.tags.get("pid", "0"))):
            tracker.end_run(r.info.run_id, KILLED)
    run_id = tracker.start_run(f"{study}-worker-{host}-{pid}",
                               tags={"study": study, "role": "worker", "host": host, "pid": pid, **tags})
    tracker.log_params(run_id, params)
    return run_id


def close_runs_of_failed_trials(tracker: Tracker | None, trials: Iterable[Any], seen: set[str],
                                tag_state: bool = False) -> int:
    """Close (FAILED) the MLflow runs (user attribute ``mlflow_run_id``) of Optuna trials that ended
    FAIL while their run stayed RUNNING -- a worker killed mid-training: its trial is failed as
    stale and retried by Optuna, its run is closed here. ``seen`` (run ids already handled) is
    updated; ``tag_state`` also tags the run ``state=FAIL``. Returns how many were closed."""
    if tracker is None:
        return 0
    n = 0
    for t in trials:
        rid = t.user_attrs.get("mlflow_run_id")
        if t.state.name == "FAIL" and rid and rid not in seen:
            with contextlib.suppress(Exception):  # a run in another store, or deleted: nothing to close
                if tracker.close_stale_runs([rid], FAILED):
                    n += 1
                    if tag_state:
                        tracker.set_tags(rid, {"state": "FAIL"})
            seen.add(rid)
    return n


# -- one tracking path for every training ----------------------------------------------------


def epoch_metrics(rec: Any) -> dict[str, float | None]:
    """The per-epoch MLflow metrics of every training (a :class:`nas.train.EpochRecord`):
    ``train/loss``, ``train/iou`` (x100), ``holdout/miou`` (x100), ``train/images_per_s``
    (images/s), ``lr``, ``stage`` (1 or 2)."""
    return {"train/loss": rec.train_loss, "train/iou": rec.train_iou, "holdout/miou": rec.holdout_miou,
            "train/images_per_s": rec.images_per_s, "lr": rec.lr, "stage": rec.stage}


def result_metrics(res: Any) -> dict[str, float | None]:
    """The end-of-training MLflow metrics (a :class:`nas.train.TrainResult`): ``val/miou``
    (foreground IoU per image, x100), ``val/miou_2class``, ``train/images_per_s_mean`` and, where the
    result has them, ``val/miou_cm`` and ``val/iou/<class name>`` (confusion matrix, x100)."""
    out = {"val/miou": res.miou, "val/miou_2class": res.miou_2class,
           "train/images_per_s_mean": getattr(res, "images_per_s", None)}
    if getattr(res, "miou_cm", None) is not None:
        out["val/miou_cm"] = res.miou_cm
    for name, v in (getattr(res, "class_iou", None) or {}).items():
        out[f"val/iou/{name}"] = v
    return out


class TrainingRun:
    """One tracked run; every method is a no-op when tracking is off (``run_id`` None).

    Attributes:
        run_id: the MLflow run id, or None.
        closed: True once :meth:`close` ran (the context of :func:`training_run` then leaves it).
    """

    def __init__(self, tracker: Tracker | None, run_id: str | None):
        self.tracker, self.run_id, self.closed = tracker, run_id, False

    def __bool__(self) -> bool:
        return self.run_id is not None

    def on_epoch(self, rec: Any) -> None:
        """Log :func:`epoch_metrics` of ``rec`` at step ``rec.global_epoch`` (a trainer callback)."""
        self.log_metrics(epoch_metrics(rec), step=rec.global_epoch)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        if self.run_id:
            self.tracker.log_metrics(self.run_id, metrics, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id:
            self.tracker.log_params(self.run_id, params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id:
            self.tracker.set_tags(self.run_id, tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.run_id:
            self.tracker.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self.tracker.log_artifact(self.run_id, path, artifact_path)

    def close(self, status: str = FINISHED, state: str | None = None) -> None:
        """End the run as ``status`` (FINISHED, FAILED, KILLED), first tagging ``state`` (the
        trial's Optuna state, e.g. ``COMPLETE``, ``PRUNED``, ``FAIL``) when given. Idempotent."""
        if self.run_id and not self.closed:
            if state is not None:
                self.tracker.set_tags(self.run_id, {"state": state})
            self.tracker.end_run(self.run_id, status)
        self.closed = True


@contextlib.contextmanager
def training_run(tracker: Tracker | None, name: str, *, tags: Mapping[str, Any] | None = None,
                 parent_run_id: str | None = None, train_cfg: Any = None, genotype: Any = None,
                 costs: Mapping[str, float] | None = None, state_tags: bool = False) -> Iterator[TrainingRun]:
    """Start a run, log what it is, yield a :class:`TrainingRun`, and close it whatever happens.

    Args:
        tracker: the experiment's tracker (None: tracking off, the run is a no-op).
        name / tags / parent_run_id: the run's name, tags and parent (a study's worker run).
        train_cfg: a :class:`nas.config.TrainConfig`, logged as ``train.<key>`` params.
        genotype: logged as ``genotype.<key>`` params and ``genotype.yaml``.
        costs: e.g. ``{"params": ..., "conv_macs": ...}``, logged as metrics at step 0.
        state_tags: also keep a ``state`` tag (``RUNNING`` at the start, ``FAIL`` on an exception),
            as the study's trial runs do.

    The run ends FINISHED when the block ends normally (unless :meth:`TrainingRun.close` ran),
    KILLED on Ctrl-C and FAILED on any other exception, which is re-raised.
    """
    if tracker is None:
        yield TrainingRun(None, None)
        return
    all_tags = {**(tags or {}), **({"state": "RUNNING"} if state_tags else {})}
    run = TrainingRun(tracker, tracker.start_run(name, tags=all_tags, parent_run_id=parent_run_id))
    try:
        if train_cfg is not None:
            run.log_params({f"train.{k}": v for k, v in train_cfg.as_dict().items()})
        if genotype is not None:
            run.log_params({f"genotype.{k}": v for k, v in genotype.flat_params().items()})
            run.log_text(genotype.to_yaml(), "genotype.yaml")
        if costs:
            run.log_metrics(costs)
        yield run
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            run.close(KILLED, "FAIL" if state_tags else None)
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            run.close(FAILED, "FAIL" if state_tags else None)
        raise
    else:
        run.close(FINISHED, "COMPLETE" if state_tags else None)


def log_evaluation(tracking: Mapping[str, Any] | None, result: Mapping[str, Any], *, prefix: str,
                   artifacts: Iterable[str | Path] = ()) -> str | None:
    """Log an evaluation (:func:`nas.predict.evaluate_checkpoint`'s result) on the training run a
    checkpoint records (``tracking`` = its ``{uri, experiment, run_id}``); return that run id, or None
    when the checkpoint records no run.

    Metrics ``<prefix>/<key>`` (x100) for every numeric key (``miou``, ``miou_cm``, ``iou_p10`` ...)
    and ``<prefix>/iou/<class>``; the result (less its per-image lists) as ``<prefix>.json``; each of
    ``artifacts`` (e.g. the overlays) under ``<prefix>/``.

    Raises:
        mlflow.exceptions.MlflowException: the store cannot be reached or the run does not exist.
    """
    if not tracking or not tracking.get("run_id"):
        return None
    tracker = Tracker(tracking.get("uri"), str(tracking.get("experiment") or "nas-train"))
    rid = str(tracking["run_id"])
    skip = {"images", "n_images", "skipped_ids", "resized_masks", "num_classes"}
    metrics = {f"{prefix}/{k}": v for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}
    metrics.update({f"{prefix}/iou/{n}": v for n, v in (result.get("class_iou") or {}).items()})
    metrics[f"{prefix}/images"] = result.get("images")
    tracker.log_metrics(rid, metrics)
    keep = {k: v for k, v in result.items() if k not in ("per_image_iou", "ids", "predictions")}
    tracker.log_dict(rid, keep, f"{prefix}.json")
    for a in artifacts:
        tracker.log_artifact(rid, a, prefix)
    return rid
