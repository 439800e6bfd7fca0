"""Resumable training on real EG1800: a run killed (SIGKILL, SIGTERM, Ctrl-C) and rerun ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.resume import Interrupted, Resumer, resume_file
from nas.train import TrainConfig, load_data, train_genotype
from tests.conftest import PROJECT, cli_env

FAST = dict(epochs=4, schedule="two_stage", stage1_epochs=1, input_size=(32, 32), train_fraction=0.05,
            holdout_fraction=0.2, batch_size=8, stage1_batch_size=8, lr=3e-3, threads=1, progress=False)


@pytest.fixture(scope="module")
def tiny(eg1800_root, cache_dir):
    return load_data(str(eg1800_root), TrainConfig(**FAST), cache_dir=str(cache_dir), val_fraction=0.05,
                     progress=False)


def _same(a, b) -> None:
    assert (a.miou, a.miou_2class, a.holdout_miou, a.best_epoch) == (b.miou, b.miou_2class, b.holdout_miou,
                                                                      b.best_epoch)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)


@pytest.mark.parametrize("stop_at,how,backend", [(3, "sigterm", "numpy"), (2, "ctrl-c", "numpy"),
                                                 (3, "ctrl-c", "tensor")])
def test_interrupted_run_resumes_to_the_same_result(tiny, tmp_path, stop_at, how, backend) -> None:
    ref = train_genotype("sinet", TrainConfig(**FAST, augment_backend=backend), tiny)
    # resume_every=100: only the interrupt writes the file
    cfg = TrainConfig(**FAST, resume_dir=str(tmp_path), resume_every=100, augment_backend=backend)

    def stop(rec) -> None:
        if rec.global_epoch == stop_at:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this returns
            raise KeyboardInterrupt

    with pytest.raises(Interrupted if how == "sigterm" else KeyboardInterrupt):
        train_genotype("sinet", cfg, tiny, on_epoch=stop)
    files = list(tmp_path.glob("*.resume.pt"))
    assert len(files) == 1
    saved = torch.load(files[0], weights_only=False)
    assert (saved["stage"], saved["epoch"]) == ((2, 1) if stop_at == 3 else (1, 1))  # the last finished epoch
    seen = []
    res = train_genotype("sinet", cfg, tiny, on_epoch=lambda r: seen.append(r.global_epoch))
    assert res.resumed_from_epoch == stop_at - 1
    assert seen == [1, 2, 3, 4]  # the epochs done before are replayed to on_epoch, then the rest trained
    _same(res, ref)
    assert not list(tmp_path.glob("*.resume.pt"))  # removed when the run ends
    assert ref.resumed_from_epoch is None


def test_resume_file_is_keyed_by_the_settings_that_shape_the_result(tmp_path) -> None:
    a = resume_file(tmp_path, "abc", TrainConfig(**FAST))
    assert a == resume_file(tmp_path, "abc", TrainConfig(**{**FAST, "threads": 2, "progress": True}))
    assert a != resume_file(tmp_path, "abc", TrainConfig(**{**FAST, "lr": 1e-3}))
    assert a != resume_file(tmp_path, "abd", TrainConfig(**FAST))


def test_a_foreign_resume_file_is_a_clear_error(tmp_path) -> None:
    p = tmp_path / "x.resume.pt"
    torch.save({"hello": 1}, p)
    with pytest.raises(ValueError, match="not a resume checkpoint"):
        Resumer(p).load()
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        Resumer(p).load()


def _train_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "nas.cli.train", "model=sinet", "fidelity=tiny", "train.threads=1",
            "train.progress=false", "train.input_size=[32,32]", "train.epochs=6", "train.schedule=two_stage",
            "train.stage1_epochs=2", "train.batch_size=8", "train.stage1_batch_size=8", "data.val_fraction=0.05",
            "tracking.enabled=false", f"output_dir={out}"]


@pytest.mark.slow
def test_sigkilled_nas_train_rerun_ends_bit_identical(workdir) -> None:
    env = cli_env({"PYTHONPATH": str(PROJECT)})

    def run(out: Path) -> dict:
        p = subprocess.run(_train_cmd(out), capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    ref = run(workdir / "ref")
    assert ref["resumed_from_epoch"] is None
    out = workdir / "killed"
    proc = subprocess.Popen(_train_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "resume").glob("*.resume.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before its first resume checkpoint was seen"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    got = run(out)
    assert got["resumed_from_epoch"] is not None and 1 <= got["resumed_from_epoch"] < 6
    for k in ("miou", "miou_2class", "holdout_miou", "best_epoch", "stage1_epoch"):
        assert got[k] == ref[k], k
    a, b = (torch.load(r["checkpoint"], weights_only=False)["state_dict"] for r in (ref, got))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "resume").glob("*.resume.pt"))


def test_search_trials_train_with_the_study_resume_folder(tmp_path, monkeypatch) -> None:
    """A retried trial trains the same genotype at the same rung and seed, so it finds the interrupted
    run's file under ``<output_dir>/<study>/resume`` (the resume itself: the tests above)."""
    from tests.test_schedule import ROWS, Table, make_worker

    monkeypatch.chdir(tmp_path)
    t, seen = Table(ROWS), []
    monkeypatch.setattr("nas.budgets.genotype_cost", t.cost)

    def train(g, cfg, data, on_epoch=None):
        seen.append(cfg.resume_dir)
        return t.train(g, cfg, data, on_epoch)

    make_worker(["study.name=res", "study.n_trials=2", "study.output_dir=out"], train).run()
    assert seen == [str(Path("out") / "res" / "resume")] * 2
