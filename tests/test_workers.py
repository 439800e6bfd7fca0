"""nas-search / nas-fidelity workers=K: K processes on one study, spread over devices, all stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from nas.workers import worker_commands
from tests.conftest import PROJECT, cli_env

STUB = '''
import json, os, sys, time
from pathlib import Path
out = Path(os.environ["STUB_OUT"]); out.mkdir(parents=True, exist_ok=True)
me = out / str(os.getpid())
me.write_text(" ".join(sys.argv[1:]))
try:
    time.sleep(float(os.environ.get("STUB_SLEEP", "60")))
except KeyboardInterrupt:
    me.with_suffix(".stopped").write_text("")
    sys.exit(130)
print("a progress line")
print(json.dumps({"argv": sys.argv[1:]}))
'''

PARENT = ("import sys; from nas.workers import run_parallel; "
          "sys.exit(run_parallel('stubworker', 'nas-test', {k}, {devices!r}))")


def test_worker_commands_strip_their_own_keys_and_spread_devices() -> None:
    cmds = worker_commands("nas.cli.search", ["study.name=x", "workers=3", "devices=[cuda:0,cuda:1]",
                                              "train.device=cpu"], 3, ["cuda:0", "cuda:1"])
    assert [c[2:] for c in cmds] == [["nas.cli.search", "study.name=x", "workers=1", f"train.device=cuda:{i}"]
                                     for i in (0, 1, 0)]
    assert worker_commands("m", ["a=1"], 2)[1][3:] == ["a=1", "workers=1"]
    with pytest.raises(ValueError, match="workers=0"):
        worker_commands("m", [], 0)


def _parent(tmp_path, k, devices, sleep, args=()):
    (tmp_path / "stubworker.py").write_text(STUB)
    env = cli_env({"PYTHONPATH": f"{PROJECT}{os.pathsep}{tmp_path}", "STUB_OUT": str(tmp_path / "out"),
                   "STUB_SLEEP": str(sleep)})
    return subprocess.Popen([sys.executable, "-c", PARENT.format(k=k, devices=devices), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_workers_run_at_once_and_the_parent_prints_one_json_line(tmp_path) -> None:
    p = _parent(tmp_path, 2, ["cuda:0", "cuda:1"], 0, ["study.name=s"])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["workers"] == 2 and last["exit_codes"] == [0, 0]
    assert last["argv"] == ["study.name=s", "workers=1", "train.device=cuda:1"]  # the last worker's line
    assert "[worker 0] a progress line" in out
    started = sorted(f.read_text() for f in (tmp_path / "out").iterdir())
    assert started == [f"study.name=s workers=1 train.device=cuda:{i}" for i in (0, 1)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_every_worker(tmp_path, sig) -> None:
    p = _parent(tmp_path, 3, [], 60)
    out_dir = tmp_path / "out"
    deadline = time.monotonic() + 60
    while (not out_dir.is_dir() or len(list(out_dir.iterdir())) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(f.name) for f in out_dir.iterdir()]
    assert len(pids) == 3
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and time.monotonic() - t0 < 30
    assert "every worker was stopped" in err
    assert sorted(f.name for f in out_dir.glob("*.stopped")) == sorted(f"{i}.stopped" for i in pids)
    for pid in pids:  # all gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_nas_search_with_two_workers_shares_one_study(workdir) -> None:
    args = ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "progress=false", "study.name=two",
            "study.n_trials=3", "study.extra_costs=false", "study.heartbeat_interval=1", "study.grace_period=3",
            "tracking.enabled=false", "train.device=cpu", "train.input_size=[32,32]", "workers=2"]
    out = subprocess.run([sys.executable, "-m", "nas.cli.search", *args], capture_output=True, text=True,
                         env=cli_env({"PYTHONPATH": str(PROJECT)}), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["workers"] == 2 and last["exit_codes"] == [0, 0] and last["study"] == "two"
    study = optuna.load_study(study_name="two", storage="sqlite:///nas_studies.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "miou" in t.user_attrs]
    assert len(done) == 3
