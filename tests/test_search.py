"""End-to-end: a tiny search on real EG1800 data; storage, MLflow runs, Pareto artifacts, exports."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from nas.cli.search import build_worker
from nas.study import count_slots
from search_spaces import create_model, load_genotype
from tests.conftest import compose

TINY = ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "progress=false",
        "study.heartbeat_interval=1", "study.grace_period=3", "study.extra_costs=false"]


def _search(name: str, n: int, extra: list[str] = ()) -> tuple[dict, object]:
    cfg = compose("search", TINY + [f"study.name={name}", f"study.n_trials={n}", *extra])
    worker = build_worker(cfg)
    return worker.run(), worker


@pytest.mark.slow
def test_tiny_pareto_search_end_to_end(workdir) -> None:
    # a params budget that the published SINet (86,910) meets and wide candidates do not
    summary, worker = _search("e2e", 5, ["study.budgets.params=90000", "study.extra_costs=true"])
    study = optuna.load_study(study_name="e2e", storage="sqlite:///nas_studies.db")
    trials = study.get_trials()
    # n_trials counts trained candidates: the over-budget ones are recorded beside them and take no slot
    n_over = sum(1 for t in trials if t.user_attrs.get("feasible") is False)
    assert len(trials) == 5 + n_over and [t.number for t in trials] == list(range(5 + n_over))
    assert count_slots(trials)["slots"] == 5 and count_slots(trials)["infeasible"] == n_over
    assert trials[0].user_attrs["reference"] == "sinet" and trials[0].user_attrs["params"] == 86_910
    assert trials[0].user_attrs["conv_macs"] == 63_866_208  # counted at 224 x 224 whatever the fidelity
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.constraints) == {"params", "conv_macs"}
        feasible = t.user_attrs["params"] <= 90_000
        assert t.user_attrs["feasible"] is feasible
        assert ("miou" in t.user_attrs) is feasible  # over-budget candidates are never trained
    assert summary["n_complete"] == 5 and summary["n_infeasible"] == n_over
    assert summary["pareto"] and all(p["params"] <= 90_000 for p in summary["pareto"])
    assert 0 <= summary["hypervolume"] <= 1

    # MLflow: one experiment per study, a parent run, a child per trial with the tags
    exp = mlflow.get_experiment_by_name("e2e")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get("role") == "worker"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 5 + n_over
    assert all(r.info.status == "FINISHED" for r in runs)
    front = {p["trial"] for p in summary["pareto"]}
    for r in children:
        tags = r.data.tags
        n = int(tags["trial"])
        assert tags["study"] == "e2e" and tags["state"] == "COMPLETE"
        assert tags["feasible"] == str(trials[n].user_attrs["feasible"])
        assert tags["on_pareto_front"] == str(n in front)
        assert r.data.params["genotype.family"] == "sinet"
        assert r.data.metrics["params"] == trials[n].user_attrs["params"]
        if tags["feasible"] == "True":
            assert "val/miou" in r.data.metrics and "fvcore_total" in r.data.metrics and "latency_ms" in r.data.metrics
            arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id)}
            assert "genotype.yaml" in arts
    parent_arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "pareto")}
    assert {"pareto/pareto.png", "pareto/pareto.html", "pareto/pareto.csv"} <= parent_arts

    # every Pareto-optimal genotype is exported as YAML that nas-train accepts
    exported = sorted((workdir / "runs/search/e2e/pareto").glob("*.yaml"))
    assert len(exported) == len(front)
    for p in exported:
        g = load_genotype(p)
        assert g.archid() == trials[int(p.name[5:9])].user_attrs["archid"]
        create_model(str(p))
    csv_lines = (workdir / "runs/search/e2e/pareto.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(front)

    # re-running the same command resumes: n_trials is the total, nothing is retrained
    again, _ = _search("e2e", 5, ["study.budgets.params=90000"])
    assert len(optuna.load_study(study_name="e2e", storage="sqlite:///nas_studies.db").trials) == 5 + n_over
    assert again["pareto"] == summary["pareto"]


@pytest.mark.slow
def test_same_seed_same_genotype_sequence(workdir) -> None:
    seqs = []
    for name in ("seed-a", "seed-b"):
        _search(name, 4, ["study.enqueue=[]", "sampler=random", "study.seed=7"])
        st = optuna.load_study(study_name=name, storage="sqlite:///nas_studies.db")
        seqs.append([t.user_attrs["archid"] for t in st.trials])
    assert seqs[0] == seqs[1] and len(set(seqs[0])) > 1


@pytest.mark.slow
def test_constrained_mode_prunes_or_completes_and_respects_budgets(workdir) -> None:
    summary, _ = _search("cons", 4, ["study.mode=constrained", "study.budgets.params=60000",
                                     "study.budgets.conv_macs=null", "study.enqueue=[]", "train.epochs=2",
                                     "pruner=sha"])
    st = optuna.load_study(study_name="cons", storage="sqlite:///nas_studies.db")
    assert len(st.directions) == 1
    for t in st.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        if t.user_attrs["params"] > 60000:
            assert t.state == TrialState.COMPLETE and "miou" not in t.user_attrs and t.value == 0.0
        elif t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.user_attrs["miou"])
            assert len(t.intermediate_values) == 2  # reported every epoch, for the pruner
    assert summary["n_complete"] + summary["n_failed"] + summary["n_pruned"] == 4  # over budget: no slot


@pytest.mark.slow
def test_nas_search_and_nas_pareto_cli(workdir) -> None:
    for name in ("cli-a", "cli-b"):
        out = subprocess.run([sys.executable, "-m", "nas.cli.search", *TINY, f"study.name={name}", "study.n_trials=2",
                              "study.budgets.params=null", "study.budgets.conv_macs=null"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(res) >= {"study", "n_complete", "n_infeasible", "n_failed", "pareto", "hypervolume"}
        assert res["study"] == name and res["n_complete"] == 2
    out = subprocess.run([sys.executable, "-c", "from nas.cli.search import pareto_main; pareto_main()",
                          "studies=cli-a,cli-b", "name=cmp"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["study"] for r in res["table"]] == ["cli-a", "cli-b"]
    assert res["references"] == ["sinet"]  # both trained the published SINet at the same fidelity
    for f in ("fronts.png", "fronts.html", "hypervolume.md", "hypervolume.csv", "hypervolume.tex"):
        assert (workdir / "runs/pareto/cmp" / f).stat().st_size > 0
