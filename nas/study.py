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
import copy
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from nas.cost import count_fvcore, genotype_cost, measure_latency
from nas.points import front_of, trained_points
from nas.report import FrontPoint
from nas.storage import Heartbeat, check_storage, count_slots, engine_url, pid_alive, redact, slot_lock
from nas.tracking import FAILED, FINISHED, KILLED, Tracker
from nas.train import DataBundle, TrainConfig, train_genotype
from search_spaces import Genotype, create_model, get_genotype
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
MODES = ("pareto", "constrained")
OBJECTIVES = ("miou", "params", "conv_macs")


@dataclass
class SearchSettings:
    """The ``study`` config node.

    Attributes:
        name: study name (also the MLflow experiment name).
        mode: ``pareto`` or ``constrained``.
        n_trials: the study's total number of slots (not an increment).
        storage: ``sqlite:///file.db`` (default, embedded) or ``postgresql://...``.
        budgets: hard limits ``{"params": P, "conv_macs": F}`` (None = no limit).
        cost_input_size: (H, W) at which parameters/MACs are counted for budgets.
        enqueue: registered names trained first as references at the same fidelity.
        heartbeat_interval / grace_period: seconds; a RUNNING trial whose
            heartbeat is older than ``grace_period`` is failed and retried.
        max_retry: retries of one interrupted trial.
        extra_costs: also count fvcore MACs and latency for trained candidates.
        output_dir: Pareto artifacts and exported genotypes go to
            ``<output_dir>/<name>/``.
    """

    name: str
    mode: str = "pareto"
    n_trials: int = 40
    storage: str = "sqlite:///nas_studies.db"
    seed: int = 0
    budgets: dict[str, float | None] = field(default_factory=dict)
    cost_input_size: tuple[int, int] = (224, 224)
    enqueue: Sequence[str] = ()
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    extra_costs: bool = True
    latency_threads: int = 1
    output_dir: str = "runs/search"
    reference_point: dict[str, float] = field(
        default_factory=lambda: {"miou": 50.0, "params": 200_000, "conv_macs": 300_000_000}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            # study.name=nan / true / 1e3 reach us as a float or bool (YAML typing): say so, not MLflow later
            raise ValueError(
                f"study.name={self.name!r} ({type(self.name).__name__}); allowed: a non-empty string "
                f"(quote a name that YAML reads as a number or boolean: study.name=\"'{self.name}'\")"
            )
        if self.mode not in MODES:
            raise ValueError(f"study.mode={self.mode!r}; allowed: {', '.join(MODES)}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ValueError(f"study.n_trials={self.n_trials!r}; allowed: an integer >= 1")
        bad = sorted(set(self.budgets) - {"params", "conv_macs"})
        if bad:
            raise ValueError(f"study.budgets has unknown key(s) {bad}; allowed: params, conv_macs")
        if self.mode == "constrained" and not any(v is not None for v in self.budgets.values()):
            raise ValueError("study.mode=constrained needs study.budgets.params and/or study.budgets.conv_macs")
        scheme = self.storage.split(":", 1)[0]
        if not (scheme == "sqlite" or scheme.startswith("postgresql")):
            raise ValueError(f"study.storage={self.storage!r}; allowed: sqlite:///path.db or postgresql://user@host/db")
        self.cost_input_size = (int(self.cost_input_size[0]), int(self.cost_input_size[1]))


# -- storage and locking ------------------------------------------------------------------------


def open_study(
    s: SearchSettings, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner | None = None
) -> tuple[optuna.Study, RDBStorage]:
    """Create or load the study (``load_if_exists``) on heartbeat-enabled RDB storage.

    Raises:
        ValueError: the stored study has other directions than ``s.mode``.
        sqlalchemy.exc.OperationalError: the storage cannot be reached.
    """
    kwargs: dict[str, Any] = {}
    check_storage(s.storage)
    if s.storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    directions = ["maximize", "minimize", "minimize"] if s.mode == "pareto" else ["maximize"]
    # Workers started together on a new database would race to create its tables ("table already exists")
    with slot_lock(s.storage, "portrait-nas/create-tables"):
        storage = RDBStorage(
            engine_url(s.storage),
            heartbeat_interval=s.heartbeat_interval,
            grace_period=s.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=s.max_retry),
            **kwargs,
        )
        study = optuna.create_study(
            study_name=s.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner if s.mode == "constrained" else None,
            directions=directions,
            load_if_exists=True,
        )
    if [d.name.lower() for d in study.directions] != [d + "" for d in directions]:
        raise ValueError(
            f"study {s.name!r} exists with {len(study.directions)} objective(s); "
            f"study.mode={s.mode} needs {len(directions)}: use another study.name"
        )
    study.set_metric_names(list(OBJECTIVES) if s.mode == "pareto" else ["miou"])
    return study, storage


# -- the worker ---------------------------------------------------------------------------------


class StudyWorker:
    """One ``nas-search`` process: asks, checks budgets, trains, tells, tracks.

    Args:
        settings: the study settings.
        space: the search space at the training fidelity.
        train_cfg: the training recipe at the search fidelity.
        data: loaded once per process at ``train_cfg.input_size``.
        tracker: MLflow experiment of this study (None: no tracking).
        sampler / pruner: built from config by the caller.
    """

    def __init__(
        self,
        settings: SearchSettings,
        space: SearchSpace,
        train_cfg: TrainConfig,
        data: DataBundle,
        tracker: Tracker | None,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner | None = None,
        progress: bool = True,
    ):
        self.s, self.space, self.train_cfg, self.data, self.tracker = settings, space, train_cfg, data, tracker
        self.study, self.storage = open_study(settings, sampler, pruner)
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
        self.progress = progress
        self.parent_run: str | None = None
        self._closed: set[str] = set()
        self.timing = {"infeasible_s": 0.0, "trained_s": 0.0, "failed_s": 0.0}
        fid = json.dumps(train_cfg.fidelity(), sort_keys=True)
        stored = self.study.user_attrs.get("fidelity")
        if stored is None:
            self.study.set_user_attr("fidelity", fid)
        elif stored != fid:
            log.warning("study %s was run at fidelity %s; this worker trains at %s", settings.name, stored, fid)

    # -- tracking helpers ------------------------------------------------------------------------
    def _start_parent(self) -> None:
        if not self.tracker:
            return
        host, pid = socket.gethostname(), os.getpid()
        for r in self.tracker.runs(
            f"tags.study = '{self.s.name}' and tags.role = 'worker' and attributes.status = 'RUNNING'"
        ):
            if r.data.tags.get("host") == host and not pid_alive(int(r.data.tags.get("pid", "0"))):
                self.tracker.end_run(r.info.run_id, KILLED)  # a worker killed before it could close its run
        self.parent_run = self.tracker.start_run(
            f"{self.s.name}-worker-{host}-{pid}",
            tags={"study": self.s.name, "role": "worker", "host": host, "pid": pid, "mode": self.s.mode},
        )
        self.tracker.log_params(
            self.parent_run,
            {
                "mode": self.s.mode,
                "n_trials": self.s.n_trials,
                "storage": redact(self.s.storage),
                "space": type(self.space).__name__,
                **{f"budget.{k}": v for k, v in self.s.budgets.items()},
                **{f"fidelity.{k}": v for k, v in self.train_cfg.fidelity().items()},
            },
        )

    def _close_orphan_runs(self, trials: Sequence[FrozenTrial]) -> int:
        """Close MLflow runs of trials that ended FAIL while their run stayed RUNNING."""
        if not self.tracker:
            return 0
        n = 0
        for t in trials:
            rid = t.user_attrs.get("mlflow_run_id")
            if t.state == TrialState.FAIL and rid and rid not in self._closed:
                with contextlib.suppress(Exception):  # a run in another store, or deleted: nothing to close
                    if self.tracker.close_stale_runs([rid], FAILED):
                        self.tracker.set_tags(rid, {"state": "FAIL"})
                        n += 1
                self._closed.add(rid)
        return n

    # -- the loop ----------------------------------------------------------------------------------
    def _next_trial(self) -> optuna.Trial | None:
        """Ask for the next trial under the slot lock; None when the study is done."""
        wait = object()
        while True:
            optuna.storages.fail_stale_trials(self.study)  # a killed worker's trial: FAIL, and its retry queued
            with slot_lock(self.s.storage, self.s.name):
                trials = self.study.get_trials(deepcopy=False)
                if not trials:
                    for name in self.s.enqueue:
                        g = get_genotype(name, num_classes=self.space.num_classes, input_size=self.space.input_size)
                        self.study.enqueue_trial(self.space.params_for(g), user_attrs={"reference": name})
                    trials = self.study.get_trials(deepcopy=False)
                c = count_slots(trials)
                if c["waiting"] or c["slots"] < self.s.n_trials:
                    trial = self.study.ask()
                    # beat at once: a worker killed before its heartbeat thread's first beat would leave a
                    # RUNNING trial without heartbeat, which Optuna never finds stale (the study never ends)
                    self.storage.record_heartbeat(trial._trial_id)
                else:
                    trial = wait if c["running"] else None
            self._close_orphan_runs(trials)  # the MLflow runs of trials failed above (or by another worker)
            if trial is not wait:
                return trial
            time.sleep(min(self.s.heartbeat_interval, 5))  # other workers' (or stale) trials still running

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
            while (trial := self._next_trial()) is not None:
                self._run_trial(trial)
                trials = self.study.get_trials(deepcopy=False)
                c, front = count_slots(trials), front_of(trials)
                best = max((p.miou for p in front), default=float("nan"))
                bar.n = min(c["slots"] - c["running"] - c["waiting"], self.s.n_trials)
                bar.set_postfix(
                    best_miou=f"{best:.2f}",
                    front=len(front),
                    infeasible=sum(1 for t in trials if t.user_attrs.get("feasible") is False),
                )
                bar.refresh()
        except KeyboardInterrupt:
            status = KILLED
            raise
        finally:
            bar.close()
            self.timing["wall_s"] = time.perf_counter() - t_start
            summary = self.finish(status)
        return summary

    def _run_trial(self, trial: optuna.Trial) -> None:
        t0 = time.perf_counter()
        rid = None
        kind = "failed_s"
        try:
            with Heartbeat(self.storage, trial._trial_id, self.s.heartbeat_interval):
                if self.tracker:
                    rid = self.tracker.start_run(
                        f"trial-{trial.number:04d}",
                        parent_run_id=self.parent_run,
                        tags={"study": self.s.name, "trial": trial.number, "state": "RUNNING"},
                    )
                    trial.set_user_attr("mlflow_run_id", rid)
                kind = self._evaluate(trial, rid)
        # skip_if_finished below: another worker may have failed (and retried) this trial meanwhile, had our
        # heartbeat stalled past the grace period; this worker then goes on instead of crashing
        except optuna.TrialPruned:
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            self._close(rid, "PRUNED", FINISHED)
            kind = "trained_s"
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", "interrupted (Ctrl-C)")
            frozen = self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if frozen.user_attrs.get("error") == "interrupted (Ctrl-C)":  # failed here, not already retried
                # its slot is run again on resume; the retry copies the user attributes: not this error, nor the run
                frozen = copy.copy(frozen)
                frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ("error", "mlflow_run_id")}
                self.retry(self.study, frozen)
            if frozen.state == TrialState.COMPLETE:  # Ctrl-C came just after its tell
                self._close(rid, "COMPLETE", FINISHED)
            else:
                self._close(rid, frozen.state.name, KILLED)
            raise
        except Exception as exc:  # a failed trial is recorded and the study goes on
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("trial %d failed: %s", trial.number, msg)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", msg[:2000])
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if rid and self.tracker:
                self.tracker.set_tags(rid, {"error": msg[:5000]})
            self._close(rid, "FAIL", FAILED)
        finally:
            self.timing[kind] += time.perf_counter() - t0

    def _close(self, rid: str | None, state: str, status: str) -> None:
        if rid and self.tracker:
            self.tracker.set_tags(rid, {"state": state})
            self.tracker.end_run(rid, status)

    def _evaluate(self, trial: optuna.Trial, rid: str | None) -> str:
        """Suggest, count, check budgets, train; tell Optuna. Returns the timing bucket."""
        g = self.space.suggest(trial)
        counted = get_genotype(g, input_size=self.s.cost_input_size)
        cost = genotype_cost(counted, self.s.cost_input_size)  # shapes only: milliseconds
        trial.set_user_attr("archid", g.archid())
        trial.set_user_attr("family", g.family)
        trial.set_user_attr("genotype", g.to_json())
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("conv_macs", cost.conv_macs)
        over = {}
        for key, value in (("params", cost.params), ("conv_macs", cost.conv_macs)):
            limit = self.s.budgets.get(key)
            if limit is not None:
                trial.set_constraint(key, float(value - limit))
                over[key] = value > limit
        feasible = not any(over.values())
        trial.set_user_attr("feasible", feasible)
        tags = {
            "archid": g.archid(),
            "family": g.family,
            "feasible": feasible,
            "reference": trial.user_attrs.get("reference", ""),
        }
        if self.tracker and rid:
            self.tracker.set_tags(rid, tags)
            self.tracker.log_params(rid, {f"genotype.{k}": v for k, v in g.flat_params().items()})
            self.tracker.log_metrics(rid, {"params": cost.params, "conv_macs": cost.conv_macs})
        if not feasible:
            # never trained: the sampler sees the constraint values; 0 marks "no mIoU measured"
            self.study.tell(trial, self._values(0.0, cost.params, cost.conv_macs))
            self._close(rid, "COMPLETE", FINISHED)
            return "infeasible_s"
        if self.tracker and rid:
            self.tracker.log_text(rid, g.to_yaml(), "genotype.yaml")
        pruning = self.s.mode == "constrained"

        def on_epoch(rec) -> None:
            if self.tracker and rid:
                self.tracker.log_metrics(
                    rid,
                    {
                        "train/loss": rec.train_loss,
                        "train/iou": rec.train_iou,
                        "holdout/miou": rec.holdout_miou,
                        "train/images_per_s": rec.images_per_s,
                    },
                    step=rec.global_epoch,
                )
            if pruning and rec.holdout_miou is not None:
                trial.report(rec.holdout_miou, rec.global_epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {rec.global_epoch}")

        res = train_genotype(g, self.train_cfg, self.data, on_epoch=on_epoch)
        trial.set_user_attr("miou", res.miou)
        trial.set_user_attr("miou_2class", res.miou_2class)
        trial.set_user_attr("holdout_miou", res.holdout_miou)
        metrics = {
            "val/miou": res.miou,
            "val/miou_2class": res.miou_2class,
            "train/images_per_s_mean": res.images_per_s,
        }
        if self.s.extra_costs:
            model = create_model(counted)
            metrics["fvcore_total"] = count_fvcore(model, self.s.cost_input_size)
            metrics["latency_ms"], _ = measure_latency(
                model, self.s.cost_input_size, threads=self.s.latency_threads, warmup=2, repeats=5
            )
            trial.set_user_attr("fvcore_total", metrics["fvcore_total"])
            trial.set_user_attr("latency_ms", metrics["latency_ms"])
        if self.tracker and rid:
            self.tracker.log_metrics(rid, metrics, step=self.train_cfg.epochs)
        self.study.tell(trial, self._values(res.miou, cost.params, cost.conv_macs))
        self._close(rid, "COMPLETE", FINISHED)
        return "trained_s"

    def _values(self, miou: float, params: int, macs: int) -> float | list[float]:
        return [miou, float(params), float(macs)] if self.s.mode == "pareto" else miou

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, status: str = FINISHED) -> dict[str, Any]:
        """Tag the front in MLflow, write and log the Pareto artifacts, export genotypes; return the summary."""
        from nas.report import hypervolume, plot_fronts, write_front_csv

        trials = self.study.get_trials(deepcopy=False)
        c = count_slots(trials)
        front = front_of(trials)
        on_front = {p.trial for p in front}
        ref = self.s.reference_point
        hv = hypervolume(front, (ref["miou"], ref["params"], ref["conv_macs"])) if front else 0.0
        out = Path(self.s.output_dir) / self.s.name
        exported = export_front(trials, front, out / "pareto")
        if self.tracker:
            for t in trials:
                rid = t.user_attrs.get("mlflow_run_id")
                if rid and t.state == TrialState.COMPLETE:
                    with contextlib.suppress(Exception):
                        self.tracker.set_tags(rid, {"on_pareto_front": t.number in on_front})
        if front:
            everything = trained_points(trials)
            refs = [p for p in everything if trials[p.trial].user_attrs.get("reference")]
            png, html = plot_fronts(
                {self.s.name: front},
                out / "pareto.png",
                out / "pareto.html",
                references=refs,
                all_points={self.s.name: everything},
                title=f"{self.s.name}: Pareto front",
            )
            csv = write_front_csv(front, out / "pareto.csv")
            if self.tracker and self.parent_run:
                for p in (png, html, csv):
                    self.tracker.log_artifact(self.parent_run, p, "pareto")
                for p in exported:
                    self.tracker.log_artifact(self.parent_run, p, "pareto/genotypes")
        n_infeasible = sum(
            1 for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible") is False
        )
        summary = {
            "study": self.s.name,
            "n_complete": sum(1 for t in trials if t.state == TrialState.COMPLETE) - n_infeasible,
            "n_infeasible": n_infeasible,
            "n_failed": c["fail"] - c["retried"],
            "n_pruned": c["pruned"],
            "n_retried": c["retried"],
            "pareto": [
                {"trial": p.trial, "miou": round(p.miou, 3), "params": p.params, "conv_macs": p.conv_macs}
                for p in front
            ],
            "hypervolume": hv,
            "reference_point": ref,
            "infeasible_time_fraction": self.timing["infeasible_s"] / max(self.timing.get("wall_s", 0.0), 1e-9),
            "timing_s": {k: round(v, 2) for k, v in self.timing.items()},
            "output_dir": str(out),
        }
        if self.tracker and self.parent_run:
            self.tracker.log_metrics(
                self.parent_run,
                {
                    "hypervolume": hv,
                    "front_size": len(front),
                    "n_infeasible": n_infeasible,
                    "infeasible_time_fraction": summary["infeasible_time_fraction"],
                },
            )
            self.tracker.log_dict(self.parent_run, summary, "summary.json")
            self.tracker.end_run(self.parent_run, status)
        return summary


def export_front(trials: Sequence[FrozenTrial], front: Sequence[FrontPoint], folder: Path) -> list[Path]:
    """Write each Pareto-optimal genotype as YAML (``nas-train model=<file>`` accepts it)."""
    from search_spaces import genotype_from_dict

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in front:
        g: Genotype = genotype_from_dict(json.loads(trials[p.trial].user_attrs["genotype"]))
        paths.append(g.save(folder / f"trial{p.trial:04d}-{g.archid()}.yaml"))
    return paths
