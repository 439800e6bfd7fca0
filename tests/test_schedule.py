"""The study's schedule without training: MOASHA promotions, budgets that spend no trial,
confirmation seeds, two workers sharing one schedule, and artifacts written atomically.

Training is replaced by a stand-in that returns chosen mIoU values (and costs are chosen by
patching the counter), so each schedule can be computed by hand; the study, its storage, the
slot lock and the ledger are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from nas.points import ledger_name
from tests.conftest import PROJECT, compose

BASE = ["sampler=random", "study.enqueue=[]", "study.extra_costs=false", "tracking.enabled=false", "progress=false",
        "study.heartbeat_interval=1", "study.grace_period=3", "study.budgets.params=null",
        "study.budgets.conv_macs=null"]


def make_worker(overrides: list[str], train_fn):
    """A real StudyWorker on the composed ``search`` config, with ``train_fn`` instead of training."""
    from hydra.utils import instantiate

    from nas.config import study_settings_from, train_settings_from
    from nas.study import StudyWorker

    cfg = compose("search", BASE + overrides)
    s = study_settings_from(cfg.study)
    tcfg = train_settings_from(cfg.train)
    space = instantiate(cfg.space).with_fidelity(tcfg.num_classes, tcfg.input_size)
    return StudyWorker(s, space, tcfg, None, None, instantiate(cfg.sampler, seed=s.seed), progress=False,
                       fidelity_name="search", train_fn=train_fn)


def result(miou: float) -> SimpleNamespace:
    return SimpleNamespace(miou=miou, miou_2class=miou, holdout_miou=miou, images_per_s=1.0)


class Table:
    """Costs and rung-0 mIoU chosen per candidate (in the order they are proposed)."""

    def __init__(self, rows):
        self.rows, self.order, self.calls = rows, {}, []

    def cost(self, g, input_size):
        i = len(self.order)
        self.order[g.archid()] = i
        return SimpleNamespace(params=self.rows[i][1], conv_macs=self.rows[i][2])

    def train(self, g, cfg, data, on_epoch=None):
        i = self.order[g.archid()]
        rung = {2: 0, 4: 1}[cfg.epochs]  # search_half: 2 epochs, search: 4
        self.calls.append((i, rung, cfg.seed))
        return result(self.rows[i][0] + 2.0 * rung + 0.1 * cfg.seed)


ROWS = [(80.0, 50_000, 50e6), (82.0, 60_000, 60e6), (81.0, 70_000, 70e6),
        (85.0, 40_000, 40e6), (70.0, 90_000, 90e6), (79.0, 30_000, 30e6)]


def test_mo_asha_schedule_matches_hand_computed(tmp_path, monkeypatch) -> None:
    """eta = 3, rungs search_half -> search, one worker. By hand (see nas/moasha.py):
    after c2: rung 0 holds 3 results, top 3//3 = 1: c0 and c1 are non-dominated (c2 is dominated
    by c1), crowding is infinite for both, the earlier wins: promote c0. After c3: 4 results, top
    1 = c3 (it dominates all): promote c3. After c4: top 1 is c3, already promoted: new c5.
    After c5: 6 results, top 2 = {c3, c5} (c5 has the fewest parameters): promote c5."""
    monkeypatch.chdir(tmp_path)
    t = Table(ROWS)
    monkeypatch.setattr("nas.budgets.genotype_cost", t.cost)
    w = make_worker(["study.name=hand", "study.n_trials=6", "study.scheduler=mo_asha", "study.eta=3"], t.train)
    summary = w.run()
    assert len(t.order) == 6, "the random sampler proposed a repeated architecture"
    assert t.calls == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0), (3, 0, 0), (3, 1, 0), (4, 0, 0), (5, 0, 0),
                       (5, 1, 0)]
    led = optuna.load_study(study_name=ledger_name("hand"), storage="sqlite:///nas_studies.db").trials
    assert [(x.user_attrs["candidate"], x.user_attrs["rung_name"], x.user_attrs["kind"]) for x in led] == [
        (0, "search", "promotion"), (3, "search", "promotion"), (5, "search", "promotion")]
    assert [x.value for x in led] == [82.0, 87.0, 81.0]
    assert summary["scheduler"] == "mo_asha" and summary["trained_per_rung"] == {"search_half": 6, "search": 3}
    # the front at each candidate's highest rung: c3 (87 at search) dominates c0, c1, c2, c4; c5 has fewer params
    assert [(p["trial"], p["rung"], p["miou"]) for p in summary["pareto"]] == [(5, "search", 81.0),
                                                                             (3, "search", 87.0)]
    # Optuna's sampler was told the rung-0 values only
    main = optuna.load_study(study_name="hand", storage="sqlite:///nas_studies.db").trials
    assert [x.values[0] for x in main] == [r[0] for r in ROWS]
    written = json.loads((tmp_path / "runs/search/hand/hand.json").read_text())
    assert written["pareto"] == summary["pareto"] and written["scheduler"] == "mo_asha"
    csv = (tmp_path / "runs/search/hand/pareto.csv").read_text().splitlines()
    assert csv[0].split(",")[6] == "rung" and csv[1].split(",")[6] == "search"


def test_budgets_spend_no_trials_and_max_infeasible_stops(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [(80.0, 50_000, 1e6), (0.0, 500_000, 1e6), (81.0, 60_000, 1e6), (0.0, 600_000, 1e6),
            (82.0, 70_000, 1e6)] + [(0.0, 900_000, 1e6)] * 20
    t = Table(rows)
    monkeypatch.setattr("nas.budgets.genotype_cost", t.cost)
    w = make_worker(["study.name=budget", "study.n_trials=3", "study.budgets.params=100000"], t.train)
    s = w.run()
    assert s["n_complete"] == 3 and s["n_infeasible"] == 2 and s["stopped"] is None  # n_trials counts trained ones
    assert [c[0] for c in t.calls] == [0, 2, 4]

    t2 = Table([(80.0, 50_000, 1e6)] + [(0.0, 900_000, 1e6)] * 20)
    monkeypatch.setattr("nas.budgets.genotype_cost", t2.cost)
    w = make_worker(["study.name=almost-all-over", "study.n_trials=4", "study.budgets.params=100000",
                     "study.max_infeasible=5"], t2.train)
    s = w.run()
    assert s["n_complete"] == 1 and s["n_infeasible"] == 5
    assert "study.max_infeasible=5" in s["stopped"] and "1 of 4" in s["stopped"]


def test_confirm_seeds_report_mean_std_and_noise_marks(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [(80.0, 50_000, 50e6), (85.0, 60_000, 60e6), (70.0, 90_000, 90e6)]
    t = Table(rows)
    monkeypatch.setattr("nas.budgets.genotype_cost", t.cost)
    w = make_worker(["study.name=conf", "study.n_trials=3", "study.confirm_seeds=2", "fidelity=search"], t.train)
    s = w.run()
    # the front (c0, c1) is retrained with seeds 1 and 2 at its own rung; c2 is dominated and is not
    assert sorted(c for c in t.calls if c[2] > 0) == [(0, 1, 1), (0, 1, 2), (1, 1, 1), (1, 1, 2)]
    assert s["confirmed"] and s["n_confirmations"] == 4
    p0, p1 = s["pareto"]
    assert p0["seeds"] == [0, 1, 2] and p0["miou_seeds"] == [82.0, 82.1, 82.2]
    assert p0["miou"] == pytest.approx(82.1) and p0["miou_std"] == pytest.approx(0.1)
    assert p0["within_noise"] is None and p1["within_noise"] is False  # 5 points apart, std 0.1: outside noise


def _two_worker_script(name: str) -> str:
    return f"""
import hashlib, sys, time
sys.path.insert(0, {str(PROJECT)!r})
from tests.test_schedule import make_worker, result
def train(g, cfg, data, on_epoch=None):
    time.sleep(0.3)
    h = int(hashlib.sha1(g.archid().encode()).hexdigest()[:6], 16) % 1000 / 100.0
    return result(70.0 + h + cfg.epochs)
w = make_worker(["study.name={name}", "study.n_trials=10", "study.scheduler=mo_asha", "study.eta=2",
                 "study.confirm_seeds=1"], train)
w.run()
"""


def test_two_workers_share_one_mo_asha_schedule(tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_two_worker_script("two"))
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    storage = f"sqlite:///{tmp_path / 'nas_studies.db'}"
    main = optuna.load_study(study_name="two", storage=storage).trials
    led = optuna.load_study(study_name=ledger_name("two"), storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in main) == 10
    assert all(t.state == TrialState.COMPLETE for t in [*main, *led])
    keys = [(t.user_attrs["candidate"], t.user_attrs["rung"], t.user_attrs["seed"]) for t in led]
    assert len(keys) == len(set(keys)), f"a training was done twice: {keys}"
    assert sum(t.user_attrs["kind"] == "promotion" for t in led) >= 10 // 2 - 1
    assert {t.user_attrs["kind"] for t in led} == {"promotion", "confirm"}


WRITER = """
import sys, time
sys.path.insert(0, {project!r})
from nas.report import FrontPoint, write_front_csv
class Slow(list):
    def __iter__(self):
        for p in list.__iter__(self):
            time.sleep(0.02)
            yield p
print("writing", flush=True)
write_front_csv(Slow(FrontPoint(f"p{{i}}", 80.0, 1000 + i, 2000 + i) for i in range(10000)), {path!r})
"""


def test_kill_during_artifact_write_leaves_the_previous_file(tmp_path) -> None:
    from nas.report import FrontPoint, write_front_csv

    target = tmp_path / "pareto.csv"
    write_front_csv([FrontPoint("good", 81.0, 1, 2)], target)
    before = target.read_bytes()
    script = tmp_path / "w.py"
    script.write_text(WRITER.format(project=str(PROJECT), path=str(target)))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    time.sleep(1.0)  # rows are being written to the temporary file
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert target.read_bytes() == before  # the previous file is intact, not truncated or half-written
    partial = [q for q in tmp_path.iterdir() if q.name.startswith(".pareto.tmp-")]
    assert partial  # the kill did land mid-write (rows still buffered in the temporary file)


def test_nas_pareto_compares_confirmed_figures(tmp_path, monkeypatch) -> None:
    from nas.pareto import compare_studies

    monkeypatch.chdir(tmp_path)
    t = Table([(80.0, 50_000, 50e6), (85.0, 60_000, 60e6)])
    monkeypatch.setattr("nas.budgets.genotype_cost", t.cost)
    make_worker(["study.name=c1", "study.n_trials=2", "study.confirm_seeds=2", "fidelity=search"], t.train).run()
    res = compare_studies(["c1"], "sqlite:///nas_studies.db", {"miou": 50.0, "params": 2e5, "conv_macs": 3e8},
                          str(tmp_path / "cmp"))
    assert res["confirmed"] == {"c1": True}
    rows = (tmp_path / "cmp/c1/front_c1.csv").read_text().splitlines()
    assert float(rows[1].split(",")[3]) == pytest.approx(82.1)  # the mean over seeds 0, 1, 2, not seed 0's 80.0


def test_nas_pareto_does_not_import_torch() -> None:
    code = "import sys, nas.pareto, nas.cli.search; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert out.returncode == 0, out.stderr
