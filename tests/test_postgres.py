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
