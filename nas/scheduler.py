"""The study's schedule: which training a worker runs next, decided under the study's slot lock.

:class:`Scheduler` reads the main study (one trial per candidate) and its ledger (promotions and
confirmation seeds, :mod:`nas.points`) under :func:`nas.storage.slot_lock`, so any number of
workers on one SQLite or PostgreSQL storage share one schedule, and returns the next
:class:`Job`: a waiting retry first, then (``mo_asha``) a promotion chosen by
:func:`nas.moasha.schedule_promotion` (Schmucker et al. 2021), then a new candidate while slots and
the time and infeasibility budgets allow, then the confirmation seeds of the front
(:func:`nas.moasha.next_confirmation`); None when the study is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from nas.config import SearchSettings
from nas.moasha import next_confirmation, schedule_promotion
from nas.points import candidates, rung_front
from nas.rungs import RungLadder
from nas.storage import ask_claimed, count_slots, fail_dead_trials, retry_storage, slot_lock
from search_spaces import get_genotype

__all__ = ["Job", "Scheduler"]

_JOB_KEYS = ("candidate", "rung", "seed", "kind")  # user attributes that make a ledger trial a job


@dataclass
class Job:
    """One training to run: a new candidate (a main-study trial, trained at rung 0) or a
    promotion / confirmation of candidate ``candidate`` (a ledger trial) at ``rung`` and ``seed``."""

    kind: str  # "new" | "promotion" | "confirm"
    trial: optuna.Trial
    candidate: int | None = None
    rung: int = 0
    seed: int = 0


_WAIT = object()


class Scheduler:
    """The next job of one worker (see the module docstring).

    Args:
        settings: the study settings (scheduler, eta, n_trials, budgets, confirm_seeds, ...).
        study / ledger / storage: from :func:`nas.study.open_study`.
        ladder: the study's rungs.
        space: the search space (its class count and input size build the enqueued references).
        on_trials: called with every trial read under the lock, after the decision (the worker
            closes the MLflow runs of failed trials with it).

    Attributes:
        stopped: why the study stopped early (time or infeasibility budget), or None.
    """

    def __init__(self, settings: SearchSettings, study: optuna.Study, ledger: optuna.Study, storage: RDBStorage,
                 ladder: RungLadder, space: Any, on_trials: Callable[[list[FrozenTrial]], Any] | None = None):
        self.s, self.study, self.ledger, self.storage = settings, study, ledger, storage
        self.ladder, self.space, self.on_trials = ladder, space, on_trials
        self.stopped: str | None = None

    def _db(self, fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
        return retry_storage(fn, *args, retry_s=self.s.storage_retry_s, what=what, **kwargs)

    def _time_up(self) -> bool:
        if self.s.time_budget_s is None:
            return False
        started = self.study.user_attrs.get("started_at", time.time())
        return time.time() - float(started) > self.s.time_budget_s

    def _ask_main(self) -> Job:
        trial = ask_claimed(self.study, self.storage)
        return Job("new", trial, rung=0, seed=self.ladder.seed)

    def _ask_ledger(self, candidate: int | None = None, rung: int = 0, seed: int = 0, kind: str = "") -> Job | object:
        trial = ask_claimed(self.ledger, self.storage)  # a WAITING retry of an interrupted training comes first
        a = trial.user_attrs
        if all(a.get(k) is not None for k in _JOB_KEYS):
            return Job(a["kind"], trial, int(a["candidate"]), int(a["rung"]), int(a["seed"]))
        if candidate is None:  # the retry of a ledger trial created when the storage went away, never assigned
            self.ledger.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return _WAIT  # decide again
        for k, v in (("candidate", candidate), ("rung", rung), ("rung_name", self.ladder.names[rung]), ("seed", seed),
                     ("kind", kind)):
            trial.set_user_attr(k, v)
        return Job(kind, trial, candidate, rung, seed)

    def _rung_of(self, cands: dict[int, Any], n: int) -> int:
        ci = self.ladder.confirm_index
        return ci if ci is not None else cands[n].top_rung(self.ladder.seed)

    def _decide(self, trials: Sequence[FrozenTrial], led: Sequence[FrozenTrial]) -> Job | object | None:
        """The next job (called under the slot lock), ``_WAIT`` or None (the study is done)."""
        c = count_slots(trials)
        if c["waiting"]:
            return self._ask_main()
        if any(t.state == TrialState.WAITING for t in led):
            return self._ask_ledger()
        seed, s = self.ladder.seed, self.s
        cands = candidates(trials, led, seed, self.s.objectives)
        time_up = self._time_up()
        if time_up and self.stopped is None:
            self.stopped = f"study.time_budget_s={s.time_budget_s:g} s reached"
        if s.scheduler == "mo_asha" and not time_up:
            prom = schedule_promotion(cands, self.ladder.n_sched, seed, s.eta, s.max_retry)
            if prom is not None:
                return self._ask_ledger(prom[0], prom[1], seed, "promotion")
        if not time_up and c["slots"] < s.n_trials:
            if c["infeasible"] < s.max_infeasible:
                return self._ask_main()
            self.stopped = (f"study.max_infeasible={s.max_infeasible} over-budget proposals reached with "
                            f"{c['slots']} of {s.n_trials} candidates trained: loosen study.budgets, narrow the "
                            "space, or raise study.max_infeasible")
        running = [t for t in led if t.state == TrialState.RUNNING]
        if c["running"] or any(t.user_attrs.get("kind") == "promotion" for t in running):
            return _WAIT  # their results may still change the schedule or the front
        if s.confirm_seeds:
            _, front = rung_front(trials, led, self.ladder.names[: self.ladder.n_sched], seed, self.s.objectives)
            members = [p.trial for p in front]
            rung_of = {n: self._rung_of(cands, n) for n in members}
            seeds = [seed + i for i in range(1, s.confirm_seeds + 1)]
            nxt = next_confirmation(members, cands, rung_of, seeds, s.max_retry)
            if nxt is not None:
                return self._ask_ledger(nxt[0], nxt[1], nxt[2], "confirm")
        return _WAIT if running else None

    def _next_job_once(self) -> Job | object | None:
        fail_dead_trials(self.study, self.storage)  # a killed worker's trial: FAIL, and its retry queued
        fail_dead_trials(self.ledger, self.storage)
        with slot_lock(self.s.storage, self.s.name):
            trials = self.study.get_trials(deepcopy=False)
            if not trials:
                for name in self.s.enqueue:
                    g = get_genotype(name, num_classes=self.space.num_classes)
                    self.study.enqueue_trial(self.space.params_for(g), user_attrs={"reference": name})
                trials = self.study.get_trials(deepcopy=False)
            led = self.ledger.get_trials(deepcopy=False)
            job = self._decide(trials, led)
        if self.on_trials is not None:  # the worker closes the MLflow runs of trials failed above (or elsewhere)
            self.on_trials([*trials, *led])
        return job

    def next_job(self) -> Job | None:
        """The next job under the slot lock, retried through storage outages; None when the study is done."""
        while True:
            job = self._db(self._next_job_once, what="scheduling")
            if job is not _WAIT:
                return job
            time.sleep(min(self.s.heartbeat_interval, 5))  # other workers' (or stale) trainings still running

