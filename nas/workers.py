"""Several worker processes on one study: ``nas-search workers=K`` (and ``nas-fidelity workers=K``).

The parent starts K copies of the same command (``workers=1``), each in its own session, so that a
terminal's Ctrl-C reaches only the parent, which then sends every worker exactly one SIGINT (each
worker marks its current trial failed, to be retried, and exits 130) and waits for them; SIGTERM to
the parent does the same. Workers share the study through its storage (SQLite or PostgreSQL), as
separately started processes always could. With ``devices=[cuda:0,cuda:1,...]`` worker i trains on
``devices[i % len(devices)]`` (``train.device=...``); without, every worker uses the configured
``train.device``, so one GPU trains K small networks at once.

This module imports neither torch nor the study code: the parent only starts and watches processes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator, Sequence

__all__ = ["run_parallel", "run_workers", "worker_commands"]

_OWN_KEYS = ("workers", "devices")


def worker_commands(module: str, overrides: Sequence[str], k: int, devices: Sequence[str] = ()) -> list[list[str]]:
    """The K command lines: ``python -m <module> <overrides> workers=1 [train.device=<device>]``.

    ``overrides`` lose their own ``workers=`` / ``devices=``; worker i gets ``devices[i % len(devices)]``.

    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"workers={k}; allowed: an integer >= 1")
    base = [a for a in overrides if a.partition("=")[0].lstrip("+~") not in _OWN_KEYS]
    if devices:
        base = [a for a in base if a.partition("=")[0] != "train.device"]
    cmds = []
    for i in range(k):
        extra = [f"train.device={devices[i % len(devices)]}"] if devices else []
        cmds.append([sys.executable, "-m", module, *base, "workers=1", *extra])
    return cmds


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_workers(cmds: Sequence[Sequence[str]], grace_s: float = 120.0, poll_s: float = 0.2
                ) -> tuple[list[int], list[str]]:
    """Run the commands at once; return their exit statuses and standard outputs (stderr passes through).

    On Ctrl-C or SIGTERM every running worker gets one SIGINT and ``grace_s`` seconds to finish
    (then SIGKILL); then KeyboardInterrupt is raised again.
    """
    outs = [tempfile.TemporaryFile(mode="w+") for _ in cmds]
    procs: list[subprocess.Popen] = []
    try:
        with _sigterm_as_interrupt():
            try:
                for c, o in zip(cmds, outs):
                    procs.append(subprocess.Popen(list(c), stdout=o, start_new_session=True))
                while any(p.poll() is None for p in procs):
                    time.sleep(poll_s)
            except KeyboardInterrupt:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)
                deadline = time.monotonic() + grace_s
                for p in procs:
                    try:
                        p.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                raise
        texts = []
        for o in outs:
            o.seek(0)
            texts.append(o.read())
        return [p.returncode for p in procs], texts
    finally:
        for o in outs:
            o.close()


def run_parallel(module: str, tool: str, k: int, devices: Sequence[str] = (), overrides: Sequence[str] | None = None
                 ) -> int:
    """``<tool> workers=K``: run K workers of ``module`` (:func:`worker_commands`, :func:`run_workers`),
    echo their output, and print one JSON line: the last worker's, with ``workers`` and ``exit_codes``.

    Returns:
        the exit status for the parent: 0 if every worker succeeded, 130 after Ctrl-C / SIGTERM,
        else the first non-zero worker status.
    """
    overrides = list(sys.argv[1:] if overrides is None else overrides)
    cmds = worker_commands(module, overrides, k, devices)
    print(f"{tool}: starting {k} workers" + (f" on {', '.join(devices)}" if devices else ""), file=sys.stderr)
    try:
        codes, texts = run_workers(cmds)
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; every worker was stopped (interrupted trials are retried on resume)",
              file=sys.stderr)
        return 130
    last: dict = {}
    for i, text in enumerate(texts):
        lines = text.strip().splitlines()
        for line in lines[:-1]:
            print(f"[worker {i}] {line}")
        if lines:
            try:
                last = json.loads(lines[-1])
            except json.JSONDecodeError:
                print(f"[worker {i}] {lines[-1]}")
    print(json.dumps(last | {"workers": k, "exit_codes": codes}, default=str), flush=True)
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0
