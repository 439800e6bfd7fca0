"""Parallel ``nas-search`` workers sharing one study on PostgreSQL.

The server is a throwaway one started by ``tests/_pg.py`` (skipped, loudly, when
PostgreSQL is not installed; ``.ci/run`` installs it). The workers' MLflow store
is the ``workdir`` fixture's SQLite file, as on one machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nas.storage import redact as _redact
from tests._pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.test_robustness import (  # noqa: F401  (mlflow_template, tracked: fixtures)
    check_parallel_study,
    mlflow_template,
    report,
    run_parallel,
    search_cmd,
    tracked,
)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_share_a_study_on_postgres(tracked: Path, postgres_url: str) -> None:
    n, name, workers = 4, "par-pg", 3
    t0 = time.perf_counter()
    cmd = search_cmd(name, n, [f"study.storage={postgres_url}"], epochs=1)
    summaries = run_parallel([cmd] * workers, tracked)
    got = check_parallel_study(postgres_url, name, n, workers=workers)
    assert all(s["study"] == name for s in summaries)
    assert not (tracked / "nas_studies.db").exists()  # the study really is on the server
    report(f"{workers} workers on PostgreSQL ({_redact(postgres_url)})", slots_expected=n, **got, mlflow_runs_open=0,
           wall_s=round(time.perf_counter() - t0, 1))


def _pg_states(url: str, study: str) -> dict[int, str]:
    """``{trial_id: state}`` of a study, straight from the server (empty while it is down)."""
    import psycopg2

    try:
        with psycopg2.connect(url, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute("SELECT t.trial_id, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                        "WHERE s.study_name = %s", (study,))
            return {i: str(s) for i, s in cur.fetchall()}
    except psycopg2.Error:
        return {}


@pytest.mark.slow
@pytest.mark.postgres
def test_study_survives_a_postgres_restart(tracked: Path, postgres_server) -> None:
    """The server is stopped (immediate shutdown, as a crash) while a mo_asha study trains, and started
    again 8 s later: the worker retries with backoff and the study finishes with every slot accounted for
    and no trial or rung result lost."""
    from tests.test_robustness import assert_no_open_runs, assert_study_done, spawn, tail

    url = postgres_server.create_database()
    n, name = 5, "pg-restart"
    cmd = search_cmd(name, n, [f"study.storage={url}", "study.storage_retry_s=180", "study.scheduler=mo_asha",
                               "study.rungs=[tiny,tiny]", "study.eta=2"], epochs=1)
    log = tracked / "restart.log"
    proc = spawn(cmd, log)
    try:
        t0 = time.monotonic()
        while sum(s == "COMPLETE" for s in _pg_states(url, name).values()) < 2:
            assert proc.poll() is None, tail(log)
            assert time.monotonic() - t0 < 240, tail(log)
            time.sleep(0.2)
        before = {**_pg_states(url, name), **_pg_states(url, name + ".rungs")}
        done_before = {i for i, s in before.items() if s == "COMPLETE"}
        postgres_server.stop()
        time.sleep(8)
        postgres_server.start_again()
        rc = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, tail(log)
    assert "study storage unreachable" in log.read_text()  # it did meet the outage, and retried
    trials = assert_study_done(url, name, n)
    after = {**_pg_states(url, name), **_pg_states(url, name + ".rungs")}
    lost = sorted(i for i in done_before if after.get(i) != "COMPLETE")
    assert not lost, lost
    assert_no_open_runs(name)
    ledger = {i: s for i, s in _pg_states(url, name + ".rungs").items()}
    report("PostgreSQL stopped for 8 s mid-study and restarted", slots_expected=n,
           slots_found=sum(t.state.name == "COMPLETE" for t in trials), complete_before_outage=len(done_before),
           lost=len(lost), rung_results=sum(s == "COMPLETE" for s in ledger.values()), mlflow_runs_open=0)
