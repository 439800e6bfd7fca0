"""Nothing lost: a search survives SIGKILL, Ctrl-C, parallel workers on SQLite, a NaN loss, and a
live worker whose trial another worker found stale.

Each test injects one fault into a tiny real search on EG1800 and checks what
survived, with the study's own definition of done (:func:`nas.study.count_slots`):
exactly ``n_trials`` slots, no RUNNING or WAITING trial, trial numbers 0..len-1,
an interrupted trial FAIL and retried, and no MLflow run left RUNNING. Each prints
one ``[robustness]`` line with the numbers (``pytest -s`` shows them).
PostgreSQL: tests/test_postgres.py (same helpers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from nas.study import count_slots, engine_url

# tests/test_search.py's tiny fidelity, on 2% of the training list; no budgets (every trial trains); the
# random sampler (cheaper than TPE; the sampler plays no part here)
TINY = ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "progress=false",
        "study.heartbeat_interval=1", "study.grace_period=3", "study.extra_costs=false"]
ROBUST = [*TINY, "train.train_fraction=0.02", "study.budgets.params=null", "study.budgets.conv_macs=null",
          "sampler=random"]
SQLITE = "sqlite:///nas_studies.db"


_TEMPLATE: list[Path] = []  # one per session, also when tests/test_postgres.py imports the fixture


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its tables created (migrating a new one takes seconds)."""
    from mlflow.tracking import MlflowClient

    if not _TEMPLATE:
        path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


@pytest.fixture()
def tracked(workdir: Path, mlflow_template: Path) -> Path:
    """``workdir`` with its MLflow store already created."""
    shutil.copyfile(mlflow_template, workdir / "mlflow.db")
    return workdir


# -- helpers (also used by tests/test_postgres.py) -----------------------------------------------


def search_cmd(name: str, n: int, extra: Sequence[str] = (), epochs: int = 2) -> list[str]:
    """The ``nas-search`` command line of a tiny robust study."""
    return [sys.executable, "-m", "nas.cli.search", *ROBUST, f"train.epochs={epochs}", f"study.name={name}",
            f"study.n_trials={n}", *extra]


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a command in the current directory and environment, output to ``log`` (never a full pipe)."""
    fh = open(log, "w")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    finally:
        fh.close()


def wait_or_dump(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """``proc.wait(timeout)``; past it, SIGABRT so a child started with ``-X faulthandler`` writes every
    thread's stack to ``log``, and fail with that tail (where it hung, not only that it did)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise AssertionError(f"{proc.args!r} still running after {timeout} s; its stacks:\n{tail(log, 12000)}")


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "(no output)"


def sqlite_trials(db: Path, study: str, attr: str = "mlflow_run_id") -> list[tuple[int, str, str | None]]:
    """``(number, state, user_attrs[attr])`` of a study, read-only and straight from the file (the worker
    may be creating it: an absent file or table is an empty list)."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            rows = conn.execute(
                "SELECT t.number, t.state, (SELECT a.value_json FROM trial_user_attributes a "
                "WHERE a.trial_id = t.trial_id AND a.key = ?) "
                "FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = ? ORDER BY t.number",
                (attr, study)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [(n, s, json.loads(r) if r else None) for n, s, r in rows]


def wait_mid_trial(proc: subprocess.Popen, db: Path, study: str, log: Path, timeout: float = 120) -> tuple[int, str]:
    """Wait until a trial of ``study`` is RUNNING and training (its genotype chosen, so its MLflow run
    started); ``(number, run id)``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"nas-search exited ({proc.returncode}) before a trial ran:\n{tail(log)}")
        running = [n for n, s, g in sqlite_trials(db, study, "archid") if s == "RUNNING" and g]
        if running:
            rid = dict((n, r) for n, _, r in sqlite_trials(db, study))[running[0]]
            return running[0], rid
        time.sleep(0.05)
    pytest.fail(f"no trial of {study} was RUNNING after {timeout} s:\n{tail(log)}")


def run_to_end(cmd: list[str], log: Path, timeout: float = 240) -> dict:
    """Run a ``nas-search`` command to completion; its JSON summary line."""
    proc = spawn(cmd, log)
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, tail(log)
    return json.loads(log.read_text().strip().splitlines()[-1])


def search_in_process(name: str, n: int, extra: Sequence[str] = (), epochs: int = 2) -> dict:
    """The same search as :func:`search_cmd`, in this process; its summary."""
    from nas.cli.search import build_worker
    from tests.conftest import compose

    cfg = compose("search", [*ROBUST, f"train.epochs={epochs}", f"study.name={name}", f"study.n_trials={n}", *extra])
    return build_worker(cfg).run()


def assert_study_done(storage: str, study: str, n: int) -> list[FrozenTrial]:
    """The study's definition of done, and trial numbers 0..len-1 without gaps or duplicates."""
    trials = optuna.load_study(study_name=study, storage=engine_url(storage)).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), numbers
    c = count_slots(trials)
    assert c["slots"] == n, c
    assert c["running"] == 0 and c["waiting"] == 0, c
    return trials


def mlflow_runs(study: str) -> list:
    """All MLflow runs of the study's experiment (the tracking URI of the ``workdir`` fixture)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def assert_no_open_runs(study: str) -> list:
    runs = mlflow_runs(study)
    still = [(r.info.run_name, r.info.status) for r in runs if r.info.status == "RUNNING"]
    assert not still, f"MLflow runs left RUNNING: {still}"
    return runs


def retries_of(trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
    return [t for t in trials if number in t.system_attrs.get("retry_history", [])]


def report(what: str, **numbers) -> None:
    print(f"\n[robustness] {what}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


# -- 1. SIGKILL in the middle of a trial, then resume ----------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tracked: Path) -> None:
    workdir = tracked
    n, name = 3, "kill"
    cmd = search_cmd(name, n)
    t0 = time.perf_counter()
    proc = spawn(cmd, workdir / "killed.log")
    try:
        victim, victim_run = wait_mid_trial(proc, workdir / "nas_studies.db", name, workdir / "killed.log")
        time.sleep(0.3)  # inside training
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # the damage: the trial is left RUNNING and so are its MLflow runs
    assert (victim, "RUNNING") in [(t[0], t[1]) for t in sqlite_trials(workdir / "nas_studies.db", name)]
    open_before = sum(r.info.status == "RUNNING" for r in mlflow_runs(name))
    assert open_before == 2  # the worker's parent run and the trial's child run

    t_kill = time.perf_counter() - t0
    run_to_end(cmd, workdir / "resumed.log")  # the same command resumes
    t_resume = time.perf_counter() - t0 - t_kill
    trials = assert_study_done(SQLITE, name, n)
    killed = trials[victim]
    assert killed.state == TrialState.FAIL
    retries = retries_of(trials, victim)
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params  # the same candidate, run again
    runs = {r.info.run_id: r for r in assert_no_open_runs(name)}
    assert runs[victim_run].info.status == "FAILED" and runs[victim_run].data.tags["state"] == "FAIL"
    parents = [r for r in runs.values() if r.data.tags.get("role") == "worker"]
    by_pid = {int(r.data.tags["pid"]): r.info.status for r in parents}
    assert by_pid.pop(proc.pid) == "KILLED" and list(by_pid.values()) == ["FINISHED"]
    report("SIGKILL mid-trial", slots_expected=n, slots_found=count_slots(trials)["slots"], trials=len(trials),
           killed_trial=victim, retried_as=retries[0].number, mlflow_runs_open_after_kill=open_before,
           mlflow_runs_open_after_resume=0, killed_after_s=round(t_kill, 1), resume_s=round(t_resume, 1))


# -- 2. Ctrl-C ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_fails_trial_queues_retry_and_closes_runs(tracked: Path) -> None:
    workdir = tracked
    n, name = 3, "ctrlc"
    cmd = search_cmd(name, n)
    log = workdir / "interrupted.log"
    proc = spawn(cmd, log)
    try:
        victim, victim_run = wait_mid_trial(proc, workdir / "nas_studies.db", name, log)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, tail(log)
    assert "interrupted" in tail(log)
    trials = optuna.load_study(study_name=name, storage=SQLITE).get_trials()
    assert trials[victim].state == TrialState.FAIL
    assert trials[victim].user_attrs["error"] == "interrupted (Ctrl-C)"
    queued = retries_of(trials, victim)
    assert [t.state for t in queued] == [TrialState.WAITING]
    assert "error" not in queued[0].user_attrs  # the retry does not inherit the interruption
    assert count_slots(trials)["running"] == 0
    runs = {r.info.run_id: r for r in assert_no_open_runs(name)}
    assert runs[victim_run].info.status == "KILLED" and runs[victim_run].data.tags["state"] == "FAIL"
    assert [r.info.status for r in runs.values() if r.data.tags.get("role") == "worker"] == ["KILLED"]

    search_in_process(name, n)  # resume (in this process: quicker than a third start of nas-search)
    trials = assert_study_done(SQLITE, name, n)
    assert [t.state for t in retries_of(trials, victim)] == [TrialState.COMPLETE]
    assert_no_open_runs(name)
    report("Ctrl-C mid-trial", exit_code=rc, slots_expected=n, slots_found=count_slots(trials)["slots"],
           trials=len(trials), interrupted_trial=victim, mlflow_runs_open=0)


# -- 3. parallel workers on the embedded SQLite storage ----------------------------------------------


def run_parallel(cmds: list[list[str]], workdir: Path, timeout: float = 300) -> list[dict]:
    """Start the commands at the same time; wait for all; their JSON summaries."""
    logs = [workdir / f"worker{i}.log" for i in range(len(cmds))]
    procs = [spawn(c, log) for c, log in zip(cmds, logs)]
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, tail(log)
    return [json.loads(log.read_text().strip().splitlines()[-1]) for log in logs]


def check_parallel_study(storage: str, name: str, n: int, workers: int) -> dict[str, int]:
    trials = assert_study_done(storage, name, n)
    c = count_slots(trials)
    # nothing failed; a trial retried after a heartbeat stalled past the grace period (an overloaded machine)
    # would be legitimate, and is counted
    retried = {t.number for t in trials if retries_of(trials, t.number)}
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number not in retried), \
        [(t.number, t.state.name) for t in trials]
    assert len(trials) == n + c["retried"]
    runs = assert_no_open_runs(name)
    parents = [r for r in runs if r.data.tags.get("role") == "worker"]
    assert len(parents) == workers and all(r.info.status == "FINISHED" for r in parents)
    children = [r for r in runs if r.data.tags.get("role") != "worker"]
    assert sorted(int(r.data.tags["trial"]) for r in children) == list(range(len(trials)))  # a run per trial
    per_worker = {p.info.run_id: 0 for p in parents}
    for r in children:
        per_worker[r.data.tags["mlflow.parentRunId"]] += 1
    return {"slots": c["slots"], "trials": len(trials), "retried": c["retried"],
            "per_worker": sorted(per_worker.values(), reverse=True)}


@pytest.mark.slow
def test_parallel_workers_on_sqlite(workdir: Path) -> None:
    n, name = 4, "par-sqlite"
    t0 = time.perf_counter()
    # both also create the study database and the MLflow store (new here): the first start in a new folder
    run_parallel([search_cmd(name, n, epochs=1)] * 2, workdir)
    got = check_parallel_study(SQLITE, name, n, workers=2)
    report("2 workers on SQLite", slots_expected=n, **got, mlflow_runs_open=0,
           wall_s=round(time.perf_counter() - t0, 1))


# -- 5. a non-finite loss inside one trial -----------------------------------------------------------


@pytest.mark.slow
def test_non_finite_loss_fails_one_trial_and_the_study_goes_on(tracked: Path, monkeypatch) -> None:
    """A real NaN: the second trial trains with lr=1e30 (the others with the configured lr)."""
    import nas.rung_trainer

    real = nas.rung_trainer.train_genotype
    calls = []

    def one_bad_trial(g, cfg, data, on_epoch=None):
        calls.append(g.archid())
        if len(calls) == 2:
            cfg = dataclasses.replace(cfg, lr=1e30)
        return real(g, cfg, data, on_epoch=on_epoch)

    monkeypatch.setattr(nas.rung_trainer, "train_genotype", one_bad_trial)
    n, name = 3, "nan-loss"
    summary = search_in_process(name, n, epochs=1)
    trials = assert_study_done(SQLITE, name, n)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    bad = trials[1]
    assert bad.user_attrs["error"].startswith("NonFiniteLossError: non-finite training loss")
    assert not retries_of(trials, 1)  # a NaN is not retried: it would come back
    assert summary["n_failed"] == 1 and summary["n_complete"] == 2
    runs = {r.info.run_id: r for r in assert_no_open_runs(name)}
    r = runs[bad.user_attrs["mlflow_run_id"]]
    assert r.info.status == "FAILED" and r.data.tags["state"] == "FAIL"
    assert "NonFiniteLossError" in r.data.tags["error"]
    assert all(runs[t.user_attrs["mlflow_run_id"]].info.status == "FINISHED" for t in (trials[0], trials[2]))
    report("NaN loss in trial 1", slots_expected=n, slots_found=count_slots(trials)["slots"], complete=2, failed=1,
           mlflow_runs_open=0)


# -- a live worker whose trial another worker found stale --------------------------------------------


@pytest.mark.slow
def test_worker_goes_on_when_its_trial_was_failed_as_stale(tracked: Path, monkeypatch) -> None:
    """A heartbeat that stalls past the grace period (an overloaded machine) gets the trial failed and
    retried by another worker while this one still trains it: this worker must not crash at ``tell``."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    import nas.rung_trainer

    real = nas.rung_trainer.train_genotype
    n, name = 2, "stale-alive"

    def found_stale_meanwhile(g, cfg, data, on_epoch=None):
        res = real(g, cfg, data, on_epoch=on_epoch)
        study = optuna.load_study(study_name=name, storage=SQLITE)
        running = study.get_trials(states=(TrialState.RUNNING,))
        if running and running[0].number == 0:  # what fail_stale_trials does in the other worker
            study._storage.set_trial_state_values(running[0]._trial_id, state=TrialState.FAIL)
            RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study._storage.get_trial(running[0]._trial_id))
        return res

    monkeypatch.setattr(nas.rung_trainer, "train_genotype", found_stale_meanwhile)
    summary = search_in_process(name, n, epochs=1)
    trials = assert_study_done(SQLITE, name, n)
    assert trials[0].state == TrialState.FAIL and [t.state for t in retries_of(trials, 0)] == [TrialState.COMPLETE]
    assert summary["n_retried"] == 1
    runs = {r.info.run_id: r for r in assert_no_open_runs(name)}
    assert runs[trials[0].user_attrs["mlflow_run_id"]].info.status == "FAILED"
    report("trial failed as stale by another worker while alive", slots_expected=n,
           slots_found=count_slots(trials)["slots"], trials=len(trials), mlflow_runs_open=0)


def test_a_worker_killed_between_ask_and_its_first_beat_does_not_block_the_study(tmp_path: Path) -> None:
    """Optuna never finds a RUNNING trial stale that has no heartbeat: a worker SIGKILLed inside ``ask``
    left nas-fidelity waiting forever on CI. An unclaimed trial past the grace period is failed and
    retried; a claimed one with a fresh heartbeat is left alone."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from nas.storage import ask_claimed, fail_dead_trials

    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({}, user_attrs={"cell": "a"})
    study.enqueue_trial({}, user_attrs={"cell": "b"})
    dead = study.ask()  # the killed worker: asked, never beat, never claimed
    live = ask_claimed(study, storage)
    assert live.user_attrs["claimed_trial"] == live.number and ":" in live.user_attrs["worker"]
    assert fail_dead_trials(study, storage) == 0  # within the grace period: nothing failed
    time.sleep(1.3)
    storage.record_heartbeat(live._trial_id)
    assert fail_dead_trials(study, storage) == 1
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert by_number[dead.number].state == TrialState.FAIL and by_number[live.number].state == TrialState.RUNNING
    retry = [t for t in by_number.values() if t.state == TrialState.WAITING]
    assert [t.user_attrs["cell"] for t in retry] == ["a"]
    again = ask_claimed(study, storage)  # the retry inherits no valid claim: it is claimed afresh
    assert again.user_attrs["cell"] == "a" and again.user_attrs["claimed_trial"] == again.number
    assert fail_dead_trials(study, storage) == 0
