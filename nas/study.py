"""The architecture search: an Optuna 5 study driven by our own ask/tell loop.

Two modes (``study.mode``):

* ``pareto`` -- maximise mIoU, minimise parameters, minimise conv MACs (NSGA-II
  or TPE; ``study.objectives`` may add the measured ONNX Runtime latency), with
  optional hard budgets. Multi-objective studies cannot prune.
* ``constrained`` -- maximise mIoU subject to parameters <= P and MACs <= F,
  pruning over epochs (Hyperband or successive halving) on the holdout mIoU.

Budgets are checked from the genotype before any training: parameters and
conv MACs (at ``study.cost_input_size``, 224 x 224 by default, the papers'
convention) are counted in milliseconds; an over-budget candidate is told to
Optuna with its constraint values (``trial.set_constraint``) and costs, and
never trained.

Nothing is lost: ``study.n_trials`` is the study's total, so re-running a
command resumes it; a worker's heartbeat lets a later worker fail and retry a
trial whose process was killed; Ctrl-C fails the current trial, queues its
retry and closes its MLflow runs. The "slot" count that decides when a study
is done takes a short lock (a PostgreSQL advisory lock, or a file lock next to
a SQLite file), so several workers never overshoot ``n_trials``.

A slot is a trial in COMPLETE, PRUNED, RUNNING or WAITING state, or a FAIL that
was not superseded by a retry. A study is done when its slots reach
``n_trials`` and none is RUNNING or WAITING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from nas.budgets import check_costs, trained_costs
from nas.config import MODES, SearchSettings
from nas.objectives import told_values
from nas.points import front_of, trained_points
from nas.rung_trainer import RungTrainer
from nas.rungs import build_ladder
from nas.scheduler import Job, Scheduler
from nas.storage import (
    Heartbeat,
    check_storage,
    count_slots,
    engine_url,
    open_study,
    redact,
    requeue_interrupted,
    retry_storage,
    slot_lock,
    tell_failed,
)
from nas.study_results import write_study_results
from nas.tracking import (
    FINISHED,
    KILLED,
    Tracker,
    TrainingRun,
    close_runs_of_failed_trials,
    result_metrics,
    start_worker_run,
    training_run,
)
from nas.train import DataBundle, TrainConfig
from search_spaces import genotype_from_dict
from search_spaces.spaces import SearchSpace

__all__ = [
    "MODES",
    "SearchSettings",
    "StudyWorker",
    "check_storage",
    "count_slots",
    "engine_url",
    "front_of",
    "open_study",
    "slot_lock",
    "trained_points",
]

log = logging.getLogger(__name__)
# We drive heartbeats and stale-trial checks ourselves around an ask/tell loop.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# -- the worker's parts ------------------------------------------------------------------------


def record_schedule(study: optuna.Study, ladder: Any, scheduler: str) -> None:
    """Record on the study its fidelity and start time (once) and its scheduler and rung schedule
    (what :func:`nas.points.stored_front` reads back); warn if it ran at another fidelity."""
    fid = ladder.fidelity_json()
    attrs = study.user_attrs
    if attrs.get("fidelity") not in (None, fid):
        log.warning("study %s was run at fidelity %s; this worker trains at %s", study.study_name,
                    attrs["fidelity"], fid)
    new = {"fidelity": fid, "started_at": time.time()}
    for k, v in {**{k: v for k, v in new.items() if attrs.get(k) is None}, "scheduler": scheduler,
                 "schedule": ladder.schedule()}.items():
        study.set_user_attr(k, v)


def worker_params(s: SearchSettings, space_name: str, ladder: Any) -> dict[str, Any]:
    """The MLflow parameters of a worker's parent run: settings, budgets and the first rung's fidelity."""
    return {"mode": s.mode, "scheduler": s.scheduler, "n_trials": s.n_trials, "storage": redact(s.storage),
            "space": space_name, "rungs": ",".join(ladder.names[: ladder.n_sched]), "eta": s.eta,
            "objectives": ",".join(s.front_objectives), "confirm_seeds": s.confirm_seeds,
            **{f"budget.{k}": v for k, v in s.budgets.items()},
            **{f"fidelity.{k}": v for k, v in ladder.cfgs[0].fidelity().items()}}


def epoch_callback(run: TrainingRun, trial: optuna.Trial | None = None) -> Callable[[Any], None]:
    """The trainer's per-epoch callback: log the epoch to ``run``; with a ``trial`` (a constrained
    study), report its holdout mIoU and raise ``optuna.TrialPruned`` when the pruner says so."""
    def on_epoch(rec: Any) -> None:
        run.on_epoch(rec)
        if trial is not None and rec.holdout_miou is not None:
            trial.report(rec.holdout_miou, rec.global_epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec.global_epoch}")

    return on_epoch


# -- the worker ---------------------------------------------------------------------------------


class StudyWorker:
    """One ``nas-search`` process: asks, checks budgets, trains, promotes, confirms, tells, tracks.

    With ``study.scheduler=mo_asha`` the candidate's main trial is trained at rung 0 and its
    value (rung-0 mIoU, parameters, MACs) is what Optuna's sampler learns from: every candidate
    has a rung-0 result, so the sampler compares like with like. Promotions to higher rungs and
    confirmation seeds are trials of the ledger study ``<name>.rungs``, decided under the study's
    slot lock (so any number of workers share one schedule) by :func:`nas.moasha.schedule_promotion`.

    Args:
        settings: the study settings.
        space: the search space at the training fidelity.
        train_cfg: the training recipe at the search fidelity (rungs are applied on top of it).
        data: loaded once per process at ``train_cfg``'s fidelity (other rungs load theirs lazily).
        tracker: MLflow experiment of this study (None: no tracking).
        sampler / pruner: built from config by the caller.
        fidelity_name: the name of ``train_cfg``'s rung (``scheduler=none``), for reports.
        train_fn / load_data_fn: the trainer and data loader (tests inject stand-ins).
        timing_inputs: N x 3 x H x W real images at ``study.cost_input_size`` that ONNX Runtime
            latency is timed on (None: a seeded standard-normal input).
    """

    def __init__(
        self,
        settings: SearchSettings,
        space: SearchSpace,
        train_cfg: TrainConfig,
        data: DataBundle | None,
        tracker: Tracker | None,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner | None = None,
        progress: bool = True,
        *,
        fidelity_name: str = "base",
        train_fn: Callable[..., Any] | None = None,
        load_data_fn: Callable[[TrainConfig], DataBundle] | None = None,
        timing_inputs: Any = None,
    ):
        self.s, self.space, self.train_cfg, self.tracker, self.progress = settings, space, train_cfg, tracker, progress
        self.timing_inputs = timing_inputs
        self.study, self.storage, self.ledger = self._db(open_study, settings, sampler, pruner, what="opening")
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
        self.parent_run: str | None = None
        self._closed: set[str] = set()
        self.timing = {"infeasible_s": 0.0, "trained_s": 0.0, "failed_s": 0.0}
        mo_asha = settings.scheduler == "mo_asha"
        self.ladder = build_ladder(train_cfg, list(settings.rungs) if mo_asha else [fidelity_name],
                                   settings.confirm_rung, seed=train_cfg.seed, base_is_rung0=not mo_asha)
        self.scheduler = Scheduler(settings, self.study, self.ledger, self.storage, self.ladder, space,
                                   on_trials=self._close_orphan_runs)
        self.trainer = RungTrainer(self.ladder, os.path.join(settings.output_dir, settings.name, "resume"),
                                   train_fn, load_data_fn)
        if data is not None:
            self.trainer.data.put(train_cfg, data)
        self._db(record_schedule, self.study, self.ladder, settings.scheduler, what="recording the schedule")

    @property
    def stopped(self) -> str | None:
        """Why the study stopped early (time or infeasibility budget), or None."""
        return self.scheduler.stopped

    def _db(self, fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
        """A storage call, retried while the storage is unreachable (``study.storage_retry_s``)."""
        return retry_storage(fn, *args, retry_s=self.s.storage_retry_s, what=what, **kwargs)

    def _close_orphan_runs(self, trials: Sequence[FrozenTrial]) -> int:
        """Close MLflow runs of trials that ended FAIL while their run stayed RUNNING."""
        return close_runs_of_failed_trials(self.tracker, trials, self._closed, tag_state=True)

    def run(self) -> dict[str, Any]:
        """Work until the study is done; return the summary (the JSON line of ``nas-search``)."""
        from tqdm.auto import tqdm

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.s
        self.parent_run = start_worker_run(self.tracker, s.name, {"mode": s.mode, "scheduler": s.scheduler},
                                           worker_params(s, type(self.space).__name__, self.ladder))
        self._close_orphan_runs(self.study.get_trials(deepcopy=False))
        t_start, status = time.perf_counter(), FINISHED
        bar = tqdm(total=s.n_trials, desc=f"study {s.name}", disable=not self.progress, dynamic_ncols=True)
        try:
            while (job := self.scheduler.next_job()) is not None:
                (self._run_trial if job.kind == "new" else self._run_ledger)(job)
                c = count_slots(self._db(self.study.get_trials, deepcopy=False, what="progress"))
                bar.n = min(c["slots"] - c["running"] - c["waiting"], s.n_trials)
                bar.set_postfix(infeasible=c["infeasible"], last=f"{job.kind}@{self.ladder.names[job.rung]}")
                bar.refresh()
        except KeyboardInterrupt:
            status = KILLED
            raise
        finally:
            bar.close()
            self.timing["wall_s"] = time.perf_counter() - t_start
            summary = self._db(self.finish, status, what="the summary")
        if self.stopped:
            log.warning("study %s stopped: %s", s.name, self.stopped)
        return summary

    # -- one job: a new candidate, a promotion or a confirmation ----------------------------------
    def _tracked(self, study: optuna.Study, trial: optuna.Trial, what: str, name: str, tags: dict[str, Any],
                 body: Callable[[TrainingRun], str]) -> None:
        """``body(run)`` under the trial's heartbeat and in its MLflow run (closed FAILED / KILLED on an
        exception); a failure is recorded on the trial and the study goes on. ``body`` returns the timing
        bucket; Ctrl-C queues a retry of a main trial, fails a ledger one, and stops the worker."""
        t0, kind, run = time.perf_counter(), "failed_s", None
        try:
            with Heartbeat(self.storage, trial._trial_id, self.s.heartbeat_interval):
                with training_run(self.tracker, name, tags={"study": self.s.name, **tags},
                                  parent_run_id=self.parent_run, state_tags=True) as run:
                    if run:
                        self._db(trial.set_user_attr, "mlflow_run_id", run.run_id)
                    kind = body(run)
        except KeyboardInterrupt:  # the run is closed KILLED by training_run
            if study is self.study:
                requeue_interrupted(study, trial, self.retry, run)
            else:
                with contextlib.suppress(Exception):
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:  # recorded as failed (its run closed FAILED); retried up to max_retry times
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("%s failed: %s", what, msg)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", msg[:2000])
            tell_failed(study, trial, self.s.storage_retry_s)
            if run:
                with contextlib.suppress(Exception):
                    run.set_tags({"error": msg[:5000]})
        finally:
            self.timing[kind] += time.perf_counter() - t0

    def _run_trial(self, job: Job) -> None:
        """Evaluate a new candidate (:meth:`_evaluate`): its main trial, pruned or told."""
        trial = job.trial

        def body(run: TrainingRun) -> str:
            try:
                return self._evaluate(trial, run)
            except optuna.TrialPruned:
                # skip_if_finished: another worker may have failed (and retried) this trial meanwhile,
                # had our heartbeat stalled past the grace period; this worker then goes on
                self._db(self.study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
                run.close(FINISHED, "PRUNED")
                return "trained_s"

        self._tracked(self.study, trial, f"trial {trial.number}", f"trial-{trial.number:04d}",
                      {"trial": trial.number}, body)

    def _run_ledger(self, job: Job) -> None:
        """Train a promotion or confirmation of a candidate; tell its ledger trial."""
        rung = self.ladder.names[job.rung]

        def body(run: TrainingRun) -> str:
            main = self._db(self.study.get_trials, deepcopy=False, what="reading a candidate")[job.candidate]
            g = genotype_from_dict(json.loads(main.user_attrs["genotype"]))
            run.set_tags({"archid": g.archid()})
            res = self.trainer.train(g, job.rung, job.seed, epoch_callback(run))
            for k in ("holdout_miou", "miou_2class"):
                self._db(job.trial.set_user_attr, k, getattr(res, k, None))
            run.log_metrics(result_metrics(res))
            self._db(self.ledger.tell, job.trial, res.miou, what="telling a rung result")
            return "trained_s"

        self._tracked(self.ledger, job.trial, f"{job.kind} of trial {job.candidate} at {rung} seed {job.seed}",
                      f"trial-{job.candidate:04d}-{rung}-seed{job.seed}",
                      {"trial": job.candidate, "rung": rung, "seed": job.seed, "kind": job.kind}, body)

    def _evaluate(self, trial: optuna.Trial, run: TrainingRun) -> str:
        """Suggest, count, check budgets, train at rung 0; tell Optuna. Returns the timing bucket."""
        g = self.space.suggest(trial)
        check = check_costs(g, self.s, self.timing_inputs)
        for k, v in check.constraints.items():
            self._db(trial.set_constraint, k, v)
        attrs = {"archid": g.archid(), "family": g.family, "genotype": g.to_json(), **check.costs,
                 "rung": self.ladder.names[0], "feasible": check.feasible}
        for k, v in attrs.items():  # "feasible" last: it makes the trial a candidate for the schedule
            self._db(trial.set_user_attr, k, v)
        run.set_tags({"archid": g.archid(), "family": g.family, "feasible": check.feasible, "kind": "new",
                      "reference": trial.user_attrs.get("reference", ""), "rung": self.ladder.names[0],
                      "seed": self.train_cfg.seed})
        run.log_params({f"genotype.{k}": v for k, v in g.flat_params().items()})
        run.log_metrics(check.costs)
        if not check.feasible:
            # never trained, takes no slot: the sampler sees the constraint values; 0 marks "no mIoU measured"
            self._db(self.study.tell, trial, self._values(0.0, check.costs))
            return "infeasible_s"
        run.log_text(g.to_yaml(), "genotype.yaml")
        res = self.trainer.train(g, 0, self.train_cfg.seed,
                                 epoch_callback(run, trial if self.s.mode == "constrained" else None))
        extra = trained_costs(g, self.s)
        for k, v in {**{k: getattr(res, k, None) for k in ("miou", "miou_2class", "holdout_miou")}, **extra}.items():
            self._db(trial.set_user_attr, k, v)
        run.log_metrics(result_metrics(res) | extra, step=self.ladder.cfgs[0].epochs)
        self._db(self.study.tell, trial, self._values(res.miou, check.costs), what="telling a result")
        return "trained_s"

    def _values(self, miou: float, costs: dict[str, float]) -> float | list[float]:
        return told_values(self.s.mode, self.s.front_objectives, miou, costs, self.s.reference_point)

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, status: str = FINISHED) -> dict[str, Any]:
        """Write the study's results and return its summary (:func:`nas.study_results.write_study_results`)."""
        return write_study_results(self.s, self.study, self.ledger, self.ladder, tracker=self.tracker,
                                   parent_run=self.parent_run, timing=self.timing, stopped=self.stopped,
                                   status=status)
