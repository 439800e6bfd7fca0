"""nas-fidelity: architecture sampling, settings errors, and a real two-architecture, two-rung study on an
EG1800 subset that is SIGKILLed mid-study and rerun without retraining a finished cell."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nas.fidelity import FidelitySettings, sample_architectures
from search_spaces import get_genotype
from search_spaces.spaces import SINetSpace

from .test_robustness import spawn, tail, wait_or_dump


def test_sample_architectures_spread_in_budget_and_deterministic() -> None:
    s = FidelitySettings(n_archs=5, candidates=40)
    archs = sample_architectures(SINetSpace(), s)
    assert [a.arch for a in archs] == list(range(5))
    assert archs[0].label == "sinet" and archs[0].genotype.archid() == get_genotype("sinet").archid()
    assert (archs[0].params, archs[0].conv_macs) == (86_910, 63_866_208)
    assert all(a.params <= 100_000 and a.conv_macs <= 100_000_000 for a in archs)
    sampled = [a.params for a in archs[1:]]
    assert sampled == sorted(sampled) and sampled[0] < sampled[-1]  # spread over the parameter range
    assert len({a.genotype.archid() for a in archs}) == 5
    again = sample_architectures(SINetSpace(), s)
    assert [a.genotype.archid() for a in again] == [a.genotype.archid() for a in archs]


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(FileNotFoundError, match=r"fidelity rung 'nope' not found .* shipped rungs: \[.*'search'"):
        FidelitySettings(rungs=["search", "nope"])
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['synflw'\]"):
        FidelitySettings(proxies=["synflw"])
    with pytest.raises(ValueError, match=r"fidelity.rungs=\['search', 'search'\]"):
        FidelitySettings(rungs=["search", "search"])
    with pytest.raises(ValueError, match=r"fidelity.seeds=\[0, 0\]"):
        FidelitySettings(seeds=[0, 0])


def _rung(path: Path, lr: float) -> str:
    path.write_text(f"epochs: 1\nschedule: single_stage\ninput_size: [64, 64]\ntrain_fraction: 0.05\n"
                    f"holdout_fraction: 0.2\nbatch_size: 8\nlr: {lr}\n")
    return str(path)


@pytest.mark.slow
def test_killed_study_reruns_without_retraining_a_finished_cell(workdir: Path) -> None:
    low, top = _rung(workdir / "low.yaml", 3e-3), _rung(workdir / "top.yaml", 2e-3)
    cmd = [sys.executable, "-X", "faulthandler", "-m", "nas.cli.fidelity", "study.name=t", "study.n_archs=2",
           "study.candidates=8", f"study.rungs=[{low},{top}]", "study.seeds=[0]", "study.proxies=[synflow,naswot]",
           "study.proxy_batch=4",
           "study.proxy_input_size=[64,64]", "study.heartbeat_interval=1", "study.grace_period=3",
           "study.bootstrap=50", "study.results_dir=res", "data.val_fraction=0.1", "progress=false"]
    log1 = workdir / "killed.log"
    proc = spawn(cmd, log1)
    try:
        t0 = time.monotonic()
        while "mIoU" not in (log1.read_text() if log1.exists() else ""):  # the first trained cell finished
            assert proc.poll() is None, f"nas-fidelity exited early:\n{tail(log1)}"
            assert time.monotonic() - t0 < 240, tail(log1)
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not mlflow.set_tracking_uri: process-wide
    exp_id = client.get_experiment_by_name("nas-fidelity").experiment_id
    before = client.search_runs([exp_id])
    done_before = {r.data.tags["cell"] for r in before if r.info.status == "FINISHED"}
    assert len(done_before) >= 3  # two proxy cells and at least one trained cell

    log2 = workdir / "resumed.log"
    proc = spawn(cmd, log2)
    assert wait_or_dump(proc, 300, log2) == 0, tail(log2)
    out = json.loads(log2.read_text().strip().splitlines()[-1])
    assert out["complete"] and out["cells_done"] == out["cells_planned"] == 6
    assert out["n_archs"] == 2 and [r["name"] for r in out["rungs"]][-2:] == [low, top]
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("kind") == "fidelity"]
    finished = [r.data.tags["cell"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(set(finished)) == sorted(finished) and len(finished) == 6  # no finished cell trained twice
    assert out["cells_trained"] + out["cells_reused"] == 6 - len(done_before)
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the killed cell's run was closed
    res = workdir / "res"
    assert {p.name for p in res.iterdir()} >= {"t.md", "t.csv", "t.tex", "t.json", "t.png", "t.html",
                                                 "t-archs.csv", "t-cells.csv"}
    saved = json.loads((res / "t.json").read_text())
    assert saved["rungs"][-1]["kendall_tau"] == pytest.approx(1.0)  # the top rung against itself
    assert {r["name"] for r in saved["rungs"]} >= {"params", "conv_macs", "synflow", "naswot"}
