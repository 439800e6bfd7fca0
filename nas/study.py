"""The architecture search: an Optuna 5 study driven by our own ask/tell loop.

Two modes (``study.mode``):

* ``pareto`` -- maximise mIoU, minimise parameters, minimise conv MACs (NSGA-II
  or TPE), with optional hard budgets. Multi-objective studies cannot prune.
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
from dataclasses import replace
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from nas.config import MODES, SearchSettings
from nas.cost import count_fvcore, genotype_cost, measure_latency
from nas.points import front_of, trained_points
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
from nas.study_results import front_objectives, write_study_results
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
from nas.train import DataBundle, TrainConfig, train_genotype
from search_spaces import Genotype, create_model, genotype_from_dict
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
# -- storage and locking ------------------------------------------------------------------------


# -- the worker's parts ------------------------------------------------------------------------


class DataCache:
    """Loaded data per data fidelity (input size, fraction, holdout, seed), loaded on first use.

    Args:
        load: ``TrainConfig -> DataBundle`` (None: only what :meth:`put` stored is returned).
    """

    KEYS = ("input_size", "train_fraction", "holdout_fraction", "selection", "seed", "drop_split_duplicates")

    def __init__(self, load: Callable[[TrainConfig], DataBundle] | None):
        self.load, self._data = load, {}

    def _key(self, cfg: TrainConfig) -> str:
        return json.dumps({k: getattr(cfg, k) for k in self.KEYS}, sort_keys=True, default=list)

    def put(self, cfg: TrainConfig, data: DataBundle) -> None:
        self._data[self._key(cfg)] = data

    def get(self, cfg: TrainConfig) -> DataBundle | None:
        key = self._key(cfg)
        if key not in self._data and self.load is not None:
            self._data[key] = self.load(cfg)
        return self._data.get(key)


def ort_latency(g: Genotype, input_size: tuple[int, int], threads: int) -> float:
    """Median batch-1 ONNX Runtime CPU latency (ms) of ``g`` at ``input_size`` (:func:`nas.export.ort_latency_ms`)."""
    from nas.export import ort_latency_ms

    return float(ort_latency_ms(create_model(g), input_size, threads=threads, warmup=3, repeats=10)["ort_latency_ms"])


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
    ):
        self.s, self.space, self.train_cfg, self.tracker = settings, space, train_cfg, tracker
        self.objectives = front_objectives(settings)
        self.study, self.storage, self.ledger = self._db(open_study, settings, sampler, pruner, what="opening")
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
        self.progress = progress
        self.train_fn = train_fn  # None: nas.study.train_genotype at call time
        self.parent_run: str | None = None
        self._closed: set[str] = set()
        self.timing = {"infeasible_s": 0.0, "trained_s": 0.0, "failed_s": 0.0}
        self.ladder = build_ladder(train_cfg, list(settings.rungs) if settings.scheduler == "mo_asha"
                                   else [fidelity_name], settings.confirm_rung, seed=train_cfg.seed,
                                   base_is_rung0=settings.scheduler != "mo_asha")
        self.scheduler = Scheduler(settings, self.study, self.ledger, self.storage, self.ladder, space,
                                   on_trials=self._close_orphan_runs)
        self.data = DataCache(load_data_fn)
        if data is not None:
            self.data.put(train_cfg, data)
        fid = self.ladder.fidelity_json()
        attrs = self._db(lambda: self.study.user_attrs, what="reading the study")
        if attrs.get("fidelity") not in (None, fid):
            log.warning("study %s was run at fidelity %s; this worker trains at %s", settings.name, attrs["fidelity"],
                        fid)
        new = {"fidelity": fid, "started_at": time.time()}
        for k, v in {**{k: v for k, v in new.items() if attrs.get(k) is None}, "scheduler": settings.scheduler,
                     "schedule": self.ladder.schedule()}.items():
            self._db(self.study.set_user_attr, k, v)

    @property
    def stopped(self) -> str | None:
        """Why the study stopped early (time or infeasibility budget), or None."""
        return self.scheduler.stopped

    def _db(self, fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
        """A storage call, retried while the storage is unreachable (``study.storage_retry_s``)."""
        return retry_storage(fn, *args, retry_s=self.s.storage_retry_s, what=what, **kwargs)

    # -- tracking helpers ------------------------------------------------------------------------
    def _start_parent(self) -> None:
        s = self.s
        params = {"mode": s.mode, "scheduler": s.scheduler, "n_trials": s.n_trials, "storage": redact(s.storage),
                  "space": type(self.space).__name__, "rungs": ",".join(self.ladder.names[: self.ladder.n_sched]),
                  "eta": s.eta, "confirm_seeds": s.confirm_seeds, **{f"budget.{k}": v for k, v in s.budgets.items()},
                  **{f"fidelity.{k}": v for k, v in self.ladder.cfgs[0].fidelity().items()}}
        self.parent_run = start_worker_run(self.tracker, s.name, {"mode": s.mode, "scheduler": s.scheduler}, params)

    def _close_orphan_runs(self, trials: Sequence[FrozenTrial]) -> int:
        """Close MLflow runs of trials that ended FAIL while their run stayed RUNNING."""
        return close_runs_of_failed_trials(self.tracker, trials, self._closed, tag_state=True)

    def run(self) -> dict[str, Any]:
        """Work until the study is done; return the summary (the JSON line of ``nas-search``)."""
        from tqdm.auto import tqdm

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._start_parent()
        self._close_orphan_runs(self.study.get_trials(deepcopy=False))
        t_start = time.perf_counter()
        status = FINISHED
        bar = tqdm(total=self.s.n_trials, desc=f"study {self.s.name}", disable=not self.progress, dynamic_ncols=True)
        try:
            while (job := self.scheduler.next_job()) is not None:
                if job.kind == "new":
                    self._run_trial(job.trial)
                else:
                    self._run_ledger(job)
                trials = self._db(self.study.get_trials, deepcopy=False, what="progress")
                c = count_slots(trials)
                bar.n = min(c["slots"] - c["running"] - c["waiting"], self.s.n_trials)
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
            log.warning("study %s stopped: %s", self.s.name, self.stopped)
        return summary

    # -- one training -----------------------------------------------------------------------------
    def _train(self, g: Genotype, rung: int, seed: int, run: TrainingRun, trial: optuna.Trial | None) -> Any:
        """Train ``g`` at rung ``rung`` with ``seed``; a constrained study reports each epoch's
        holdout mIoU to ``trial`` for pruning."""
        cfg = self.ladder.cfgs[rung]
        if cfg.seed != seed:
            cfg = replace(cfg, seed=seed)
        if cfg.resume_dir is None:  # a trial retried after a crash resumes from its last finished epoch
            cfg = replace(cfg, resume_dir=os.path.join(self.s.output_dir, self.s.name, "resume"))
        pruning = self.s.mode == "constrained" and trial is not None

        def on_epoch(rec) -> None:
            run.on_epoch(rec)
            if pruning and rec.holdout_miou is not None:
                trial.report(rec.holdout_miou, rec.global_epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {rec.global_epoch}")

        train = self.train_fn or train_genotype
        return train(g, cfg, self.data.get(cfg), on_epoch=on_epoch)

    def _run_ledger(self, job: Job) -> None:
        """Train a promotion or confirmation; tell its ledger trial (FAIL on error, the run goes on)."""
        t0, kind = time.perf_counter(), "failed_s"
        trial = job.trial
        try:
            with Heartbeat(self.storage, trial._trial_id, self.s.heartbeat_interval):
                main = self._db(self.study.get_trials, deepcopy=False, what="reading a candidate")[job.candidate]
                g = genotype_from_dict(json.loads(main.user_attrs["genotype"]))
                rung = self.ladder.names[job.rung]
                tags = {"study": self.s.name, "trial": job.candidate, "rung": rung, "seed": job.seed, "kind": job.kind,
                        "archid": g.archid()}
                with training_run(self.tracker, f"trial-{job.candidate:04d}-{rung}-seed{job.seed}", tags=tags,
                                  parent_run_id=self.parent_run, state_tags=True) as run:
                    if run:
                        self._db(trial.set_user_attr, "mlflow_run_id", run.run_id)
                    res = self._train(g, job.rung, job.seed, run, None)
                    for k in ("holdout_miou", "miou_2class"):
                        self._db(trial.set_user_attr, k, getattr(res, k, None))
                    run.log_metrics(result_metrics(res))
                    self._db(self.ledger.tell, trial, res.miou, what="telling a rung result")
                kind = "trained_s"
        except KeyboardInterrupt:  # the run is closed KILLED by training_run
            with contextlib.suppress(Exception):
                self.ledger.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:  # recorded as failed; the schedule tries it again up to max_retry times
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("%s of trial %s at %s seed %d failed: %s", job.kind, job.candidate,
                        self.ladder.names[job.rung], job.seed, msg)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", msg[:2000])
            tell_failed(self.ledger, trial, self.s.storage_retry_s)
        finally:
            self.timing[kind] += time.perf_counter() - t0

    def _run_trial(self, trial: optuna.Trial) -> None:
        """Evaluate one candidate (:meth:`_evaluate`) in its tracked run; record a failure and go on."""
        t0, kind, run = time.perf_counter(), "failed_s", None
        try:
            with Heartbeat(self.storage, trial._trial_id, self.s.heartbeat_interval):
                with training_run(self.tracker, f"trial-{trial.number:04d}", tags={"study": self.s.name,
                                  "trial": trial.number}, parent_run_id=self.parent_run, state_tags=True) as run:
                    if run:
                        self._db(trial.set_user_attr, "mlflow_run_id", run.run_id)
                    try:
                        kind = self._evaluate(trial, run)
                    except optuna.TrialPruned:
                        # skip_if_finished: another worker may have failed (and retried) this trial meanwhile,
                        # had our heartbeat stalled past the grace period; this worker then goes on
                        self._db(self.study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
                        run.close(FINISHED, "PRUNED")
                        kind = "trained_s"
        except KeyboardInterrupt:  # the run is closed KILLED by training_run
            requeue_interrupted(self.study, trial, self.retry, run)
            raise
        except Exception as exc:  # a failed trial is recorded and the study goes on (its run closed FAILED)
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("trial %d failed: %s", trial.number, msg)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", msg[:2000])
            tell_failed(self.study, trial, self.s.storage_retry_s)
            if run:
                with contextlib.suppress(Exception):
                    run.set_tags({"error": msg[:5000]})
        finally:
            self.timing[kind] += time.perf_counter() - t0

    def _costs(self, trial: optuna.Trial, g: Genotype) -> tuple[dict[str, float], bool]:
        """Count (and, if a budget or objective needs it, measure) ``g``'s costs; set each budget's
        constraint (the excess over it). Returns ``(costs, feasible)``."""
        cost = genotype_cost(g, self.s.cost_input_size)  # shapes only: milliseconds
        measured: dict[str, float] = {"params": cost.params, "conv_macs": cost.conv_macs}
        over = {}
        for key, value in measured.items():
            limit = self.s.budgets.get(key)
            if limit is not None:
                self._db(trial.set_constraint, key, float(value - limit))
                over[key] = value > limit
        ort_limit = self.s.budgets.get("ort_latency_ms")
        # seconds of export: only for candidates within the counted budgets
        if (ort_limit is not None or "ort_latency_ms" in self.objectives) and not any(over.values()):
            measured["ort_latency_ms"] = ort_latency(g, self.s.cost_input_size, self.s.latency_threads)
        if ort_limit is not None:
            # over another budget: not measured; the constraint says "infeasible" (+1 ms) without a figure
            excess = measured["ort_latency_ms"] - ort_limit if "ort_latency_ms" in measured else 1.0
            self._db(trial.set_constraint, "ort_latency_ms", float(excess))
            over["ort_latency_ms"] = excess > 0
        return measured, not any(over.values())

    def _evaluate(self, trial: optuna.Trial, run: TrainingRun) -> str:
        """Suggest, count, check budgets, train at rung 0; tell Optuna. Returns the timing bucket."""
        g = self.space.suggest(trial)
        measured, feasible = self._costs(trial, g)
        attrs = {"archid": g.archid(), "family": g.family, "genotype": g.to_json(), **measured,
                 "rung": self.ladder.names[0], "feasible": feasible}
        for k, v in attrs.items():  # "feasible" last: it makes the trial a candidate for the schedule
            self._db(trial.set_user_attr, k, v)
        run.set_tags({"archid": g.archid(), "family": g.family, "feasible": feasible, "kind": "new",
                      "reference": trial.user_attrs.get("reference", ""), "rung": self.ladder.names[0],
                      "seed": self.train_cfg.seed})
        run.log_params({f"genotype.{k}": v for k, v in g.flat_params().items()})
        run.log_metrics(measured)
        if not feasible:
            # never trained, takes no slot: the sampler sees the constraint values; 0 marks "no mIoU measured"
            self._db(self.study.tell, trial, self._values(0.0, measured))
            return "infeasible_s"
        run.log_text(g.to_yaml(), "genotype.yaml")
        res = self._train(g, 0, self.train_cfg.seed, run, trial)
        for k in ("miou", "miou_2class", "holdout_miou"):
            self._db(trial.set_user_attr, k, getattr(res, k, None))
        metrics = result_metrics(res)
        if self.s.extra_costs:
            model = create_model(g)
            metrics["fvcore_total"] = count_fvcore(model, self.s.cost_input_size)
            metrics["latency_ms"], _ = measure_latency(
                model, self.s.cost_input_size, threads=self.s.latency_threads, warmup=2, repeats=5
            )
            self._db(trial.set_user_attr, "fvcore_total", metrics["fvcore_total"])
            self._db(trial.set_user_attr, "latency_ms", metrics["latency_ms"])
        run.log_metrics(metrics, step=self.ladder.cfgs[0].epochs)
        self._db(self.study.tell, trial, self._values(res.miou, measured), what="telling a result")
        return "trained_s"

    def _values(self, miou: float, costs: dict[str, float]) -> float | list[float]:
        """The values told to Optuna: ``[miou, cost, ...]`` in ``study.objectives`` order (a cost not
        measured, over another budget: its reference value), or ``miou`` (constrained)."""
        if self.s.mode != "pareto":
            return miou
        return [miou, *(float(costs.get(n, self.s.reference_point[n])) for n in self.objectives[1:])]

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, status: str = FINISHED) -> dict[str, Any]:
        """Write the study's results and return its summary (:func:`nas.study_results.write_study_results`)."""
        return write_study_results(self.s, self.study, self.ledger, self.ladder, tracker=self.tracker,
                                   parent_run=self.parent_run, timing=self.timing, stopped=self.stopped,
                                   status=status)
