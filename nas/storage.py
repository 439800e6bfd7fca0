"""Study storage: URLs, drivers, the slot lock, slot counting and trial heartbeats.

No torch here: :mod:`nas.pareto` (which only reads a database and draws) imports this module
and :mod:`nas.points`, never the trainer.

A slot is a trial in COMPLETE, PRUNED, RUNNING or WAITING state, or a FAIL that was not
superseded by a retry; see :func:`count_slots`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from nas._filelock import file_lock
from nas.config import SearchSettings
from nas.objectives import directions, objective_names
from nas.points import ledger_name

if TYPE_CHECKING:
    from nas.tracking import TrainingRun

__all__ = ["Heartbeat", "ask_claimed", "check_storage", "count_slots", "engine_url", "fail_dead_trials", "open_study",
           "pid_alive", "redact", "requeue_interrupted", "retry_storage", "slot_lock", "tell_failed"]

log = logging.getLogger(__name__)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a ``study.storage`` value.

    A bare ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1, psycopg2 to 2.0; the project's
    ``postgres`` extra installs psycopg2. So a bare URL gets the driver that is installed.

    Raises:
        ImportError: a PostgreSQL URL and no driver installed (the message says what to install).
    """
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    raise ImportError(f"study.storage={redact(url)} needs a PostgreSQL driver: "
                      "pip install 'portrait-nas[postgres]' (psycopg2-binary)")


def check_storage(url: str) -> None:
    """Fail early, before any data is loaded, when a SQLite storage's folder cannot take the file.

    Raises:
        OSError: the folder does not exist or is not writable (the message names it).
    """
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise OSError(f"study.storage={url!r}: folder {parent.resolve()} does not exist or is not writable")


@contextlib.contextmanager
def slot_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Serialise the count-then-ask step of all workers of one study.

    PostgreSQL: ``pg_advisory_lock`` (any number of machines). SQLite: an
    exclusive ``flock`` on ``<db>.lock`` (one machine, as SQLite itself).
    """
    if storage_url.startswith("postgresql"):
        import sqlalchemy

        engine = _engines.get(storage_url) or _engines.setdefault(
            storage_url, sqlalchemy.create_engine(engine_url(storage_url), pool_pre_ping=True))
        key = int(hashlib.sha1(study_name.encode()).hexdigest()[:15], 16)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        with file_lock(storage_url.split("sqlite:///", 1)[-1] + ".lock"):
            yield


_engines: dict[str, Any] = {}


def count_slots(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Slots used, and the trials by state; see the module docstring for what a slot is.

    A candidate found over a hard budget (``user_attrs["feasible"] is False``, COMPLETE, never
    trained) takes no slot: ``study.n_trials`` counts trained candidates. It is counted in
    ``infeasible``.
    """
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    by = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in trials:
        if t.state.name in by:
            by[t.state.name] += 1
    superseded = sum(1 for t in trials if t.state == TrialState.FAIL and t.number in retried)
    infeasible = sum(1 for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible") is False)
    return {"slots": sum(by.values()) - superseded - infeasible, "retried": superseded, "infeasible": infeasible,
            **{k.lower(): v for k, v in by.items()}}


def _transient() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, StorageInternalError)


def retry_storage(fn: Any, *args: Any, retry_s: float = 300.0, what: str = "", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried with exponential backoff (0.5 s doubling to 30 s) while the
    storage is unreachable (a PostgreSQL restart, a network blip, a locked SQLite file), for at most
    ``retry_s`` seconds in all.

    Raises:
        sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError: still unreachable after ``retry_s`` seconds.
    """
    transient = _transient()
    t0, delay = time.monotonic(), 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except transient as exc:
            waited = time.monotonic() - t0
            if waited + delay > retry_s:
                raise
            log.warning("study storage unreachable%s (%s: %s); retrying in %.1f s (%.0f of %.0f s waited)",
                        f" during {what}" if what else "", type(exc).__name__, str(exc).splitlines()[0][:200],
                        delay, waited, retry_s)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id, interval), daemon=True)

    def _run(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial must not die of it
                storage.record_heartbeat(trial_id)
            self._stop.wait(interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


CLAIM_ATTR = "claimed_trial"


def ask_claimed(study: optuna.Study, storage: RDBStorage) -> optuna.Trial:
    """``study.ask()``, then a first heartbeat and the claim: user attributes ``claimed_trial`` (the
    trial's own number: a retry inherits its predecessor's attributes) and ``worker`` (``host:pid``).

    Optuna never finds a RUNNING trial stale that has no heartbeat, so a worker killed between
    ``ask`` and its first beat would leave a trial that blocks the study forever; the claim marks
    every trial a live worker holds, and :func:`fail_dead_trials` fails the unclaimed ones.
    """
    import socket

    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(CLAIM_ATTR, trial.number)
    return trial


def fail_dead_trials(study: optuna.Study, storage: RDBStorage) -> int:
    """Fail the trials of dead workers: Optuna's stale trials (no heartbeat for the storage's grace
    period; their retries are queued by the storage's failed-trial callback), and RUNNING trials
    started more than a grace period ago that were never claimed (a worker killed inside
    :func:`ask_claimed`), retried by the same callback. Returns how many unclaimed trials were failed.
    """
    import datetime

    optuna.storages.fail_stale_trials(study)
    grace_period = storage.grace_period or 2 * (storage.heartbeat_interval or 60)
    now, n = datetime.datetime.now(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(CLAIM_ATTR) == t.number or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() <= grace_period:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except (RuntimeError, ValueError):  # finished meanwhile (UpdateFinishedTrialError is a RuntimeError)
            continue
        log.warning("trial %d of study %s was never claimed by a worker (killed at start): failed", t.number,
                    study.study_name)
        n += 1
        if (retry := storage.get_heartbeat_stale_trial_callback()) is not None:
            retry(study, storage.get_trial(t._trial_id))
    return n


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redact(url: str) -> str:
    """A storage URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


# -- opening a study, telling failures ------------------------------------------------------------


def open_study(
    s: SearchSettings, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner | None = None
) -> tuple[optuna.Study, RDBStorage, optuna.Study]:
    """Create or load the study and its ledger ``<name>.rungs`` (``load_if_exists``) on
    heartbeat-enabled RDB storage. The ledger holds one trial per promotion or confirmation
    training (see :mod:`nas.points`); the sampler never sees it.

    Raises:
        ValueError: the stored study has other directions or objectives than ``s.mode`` and ``s.objectives``.
        sqlalchemy.exc.OperationalError: the storage cannot be reached.
    """
    kwargs: dict[str, Any] = {}
    check_storage(s.storage)
    if s.storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    dirs = directions(s.mode, s.objectives)
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
            directions=dirs,
            load_if_exists=True,
        )
        ledger = optuna.create_study(study_name=ledger_name(s.name), storage=storage, direction="maximize",
                                     sampler=optuna.samplers.RandomSampler(seed=s.seed), load_if_exists=True)
    names = objective_names(s.mode, s.objectives)
    stored = list(study.metric_names) if study.metric_names is not None else None
    if [d.name.lower() for d in study.directions] != dirs or stored not in (None, names):
        had = stored or f"{len(study.directions)} objective(s)"
        raise ValueError(f"study {s.name!r} exists with objectives {had}; study.objectives={names} "
                         f"(study.mode={s.mode}) differs: use another study.name")
    if stored is None:
        study.set_metric_names(names)
    return study, storage, ledger


def tell_failed(study: optuna.Study, trial: optuna.Trial, retry_s: float) -> None:
    """Tell ``trial`` FAIL (retrying an unreachable storage for ``retry_s`` seconds); a trial whose
    record the storage lost is logged and left to the schedule.

    A database that acknowledges commits before they are durable (PostgreSQL with
    ``synchronous_commit=off``) can lose the newest trials in a crash; their jobs are
    simply scheduled again (a lost candidate leaves its slot open, a lost promotion is
    promoted again), so the worker goes on instead of dying of ``KeyError``.
    """
    try:
        retry_storage(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True, retry_s=retry_s,
                      what="telling a failure")
    except KeyError:
        log.warning("trial %d of %s was lost by the storage (a crash lost acknowledged writes: is PostgreSQL's "
                    "synchronous_commit off?); its job is scheduled again", trial.number, study.study_name)


def requeue_interrupted(study: optuna.Study, trial: optuna.Trial, retry: RetryHeartbeatStaleTrialCallback,
                        run: TrainingRun | None) -> None:
    """After Ctrl-C: tell ``trial`` FAIL and queue its retry, so its slot runs again on resume.

    A trial already finished (Ctrl-C came just after its tell) keeps its state, and its run
    is tagged COMPLETE. The retry copies the user attributes, but not this error nor the run id.
    """
    with contextlib.suppress(Exception):
        trial.set_user_attr("error", "interrupted (Ctrl-C)")
    frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if frozen.user_attrs.get("error") == "interrupted (Ctrl-C)":  # failed here, not already retried
        frozen = copy.copy(frozen)
        frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ("error", "mlflow_run_id")}
        retry(study, frozen)
    if run and frozen.state == TrialState.COMPLETE:
        with contextlib.suppress(Exception):
            run.set_tags({"state": "COMPLETE"})
