"""A throwaway PostgreSQL server for the tests (``postgres_server`` / ``postgres_url`` fixtures).

The server is started from the Debian binaries (``/usr/lib/postgresql/<version>/bin``)
in a temporary folder, on a free port of localhost, with trust authentication,
and stopped (and its folder removed) at the end of the session. Nothing else is
tried: no system service, no other install. When the binaries are absent the
tests that need the server are SKIPPED, loudly (a skip reason and a warning in
the summary); ``.ci/run`` installs the ``postgresql`` package so that CI runs them.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
system user (``runuser``/``su``), with its folder owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["PgServer", "find_pg_bin", "postgres_server", "postgres_url"]

_REASON = ("POSTGRESQL IS NOT INSTALLED (no initdb/pg_ctl under /usr/lib/postgresql/*/bin): the PostgreSQL "
           "parallel-worker tests are SKIPPED. Install it (apt-get install postgresql; .ci/run does) to run them.")


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if (p / "initdb").is_file() and (p / "pg_ctl").is_file() and (p / "postgres").is_file():
            try:
                found.append((float(p.parent.name), p))
            except ValueError:
                found.append((0.0, p))
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server: ``url(db)`` gives a SQLAlchemy URL, ``create_database`` a fresh database."""

    bin: Path
    base: Path
    port: int
    user: str | None  # the system user the server runs as (None: the current one)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def sockets(self) -> Path:
        return self.base / "sockets"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@localhost:{self.port}/{db}"

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program as the server's user."""
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.user, "--", *cmd]
            else:
                import shlex

                cmd = ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if check and out.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n{tail}")
        return out

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
                 "--no-instructions")
        self.start_again()

    def start_again(self) -> None:
        """Start the (initialised, stopped) server on its port again."""
        # fsync off is safe against a server crash (`stop`), only not against an OS crash; synchronous_commit
        # stays on (PostgreSQL's default): with it off a crash loses commits the client was told had succeeded
        opts = (f"-k {self.sockets} -p {self.port} -c listen_addresses=localhost -c fsync=off "
                "-c full_page_writes=off -c max_connections=100")
        self.run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "server.log"), "-w", "-t", "60",
                 "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh unique name by default) and return its URL."""
        import psycopg2

        name = name or f"pnas_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(host="localhost", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _skip_loudly(reason: str) -> None:
    warnings.warn(reason, UserWarning, stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (skips, loudly, when PostgreSQL is not installed)."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        _skip_loudly(_REASON)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip_loudly("psycopg2 IS NOT INSTALLED (pip install -e '.[test]'): the PostgreSQL tests are SKIPPED")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _skip_loudly("running as root and there is no 'postgres' user to run the server as: the PostgreSQL "
                         "tests are SKIPPED")
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="pnas-pg-"))  # not under pytest's 0700 basetemp: the server user needs it
    (base / "sockets").mkdir()
    if user:
        pw = pwd.getpwnam(user)
        for p in (base, base / "sockets"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    server = PgServer(pg_bin, base, _free_port(), user)
    try:
        t0 = time.perf_counter()
        server.start()
        print(f"\nPostgreSQL {pg_bin.parent.name} started on localhost:{server.port} in "
              f"{time.perf_counter() - t0:.1f} s ({base})")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PgServer) -> str:
    """``postgresql://postgres@localhost:<port>/<db>``: a database created for this session."""
    return postgres_server.create_database()
