"""Ablations: experiment files parse and cost in seconds; a real two-variant run resumes without retraining."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from nas.ablate import apply_edits, load_experiment, run_ablation, write_results
from nas.tracking import Tracker
from nas.train import TrainConfig
from search_spaces import get_genotype

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_loads_and_costs_without_training(path: Path, tmp_path) -> None:
    exp = load_experiment(str(path))
    res = run_ablation(exp, TrainConfig(), data_root=None, train=False, log=lambda s: None)
    assert [r["variant"] for r in res["rows"]] == [v.name for v in exp.variants]
    assert all(r["params"] > 0 and r["conv_macs"] > 0 for r in res["rows"])
    files = write_results(exp, res, tmp_path, trained=False)
    assert set(files) == {"md", "csv", "tex"}


def test_cost_columns_are_exact() -> None:
    exp = load_experiment("sinet_decoder")
    rows = {r["variant"]: r for r in run_ablation(exp, TrainConfig(), data_root=None, train=False,
                                                  log=lambda s: None)["rows"]}
    assert (rows["information_blocking"]["params"], rows["information_blocking"]["conv_macs"]) == (86_910, 63_866_208)
    assert rows["none"]["params"] == 86_764  # the decoder's 146 parameters gone
    c3 = {r["variant"]: r for r in run_ablation(load_experiment("extremec3net"), TrainConfig(), data_root=None,
                                                train=False, log=lambda s: None)["rows"]}
    assert (c3["published"]["params"], c3["published"]["conv_macs"]) == (37_762, 128_971_136)
    lov = {r["variant"]: r for r in run_ablation(load_experiment("training"), TrainConfig(), data_root=None,
                                                 train=False, log=lambda s: None)["rows"]}
    assert lov["lovasz_1class_ib"]["params"] == 86_684  # 1-class head


def test_path_edits() -> None:
    d = get_genotype("sinet").to_dict()
    e = apply_edits(d, [{"path": "stages.*.modules.*.branches.*.dilation", "from": "pool"},
                        {"path": "stages.*.modules.*.branches.*.pool", "value": 1}])
    assert e["stages"][1]["modules"][3]["branches"][1] == {"kernel": 3, "dilation": 4, "pool": 1}
    assert d["stages"][1]["modules"][3]["branches"][1]["pool"] == 4  # the input is not changed
    with pytest.raises(ValueError, match=r"edits\[0\]: path 'stages\.\*\.nope' matches nothing"):
        apply_edits(d, [{"path": "stages.*.nope", "value": 1}])


def test_bad_experiment_files_name_the_file_and_key(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "base": {"model": "sinet"}, "variants": [{"name": "a", "colour": 1}]}))
    with pytest.raises(ValueError, match=r"bad\.yaml: variant 'a': unknown key\(s\) \['colour'\]"):
        load_experiment(str(p))
    p.write_text(yaml.safe_dump({"name": "bad", "base": {"model": "sinet"},
                                 "variants": [{"name": "a", "genotype": {"decoder": "unet"}}]}))
    with pytest.raises(ValueError, match=r"bad\.yaml: variant 'a': .*decoder='unet'"):
        load_experiment(str(p))
    p.write_text(yaml.safe_dump({"name": "bad", "base": {"model": "sinet"},
                                 "variants": [{"name": "a", "train": {"lossy": 1}}]}))
    with pytest.raises(ValueError, match=r"variant 'a': unknown train key 'lossy'"):
        load_experiment(str(p))
    with pytest.raises(FileNotFoundError, match="experiment not found.*available.*sinet_decoder"):
        load_experiment("nope")


@pytest.mark.slow
def test_two_variant_ablation_on_real_data_resumes_without_retraining(workdir, eg1800_root, cache_dir) -> None:
    exp_file = workdir / "tiny_decoder.yaml"
    exp_file.write_text(yaml.safe_dump({
        "name": "tiny_decoder", "title": "tiny decoder ablation",
        "base": {"model": "sinet", "train": {"epochs": 1, "schedule": "single_stage", "input_size": [64, 64],
                                             "train_fraction": 0.1, "holdout_fraction": 0.2, "batch_size": 8,
                                             "lr": 3e-3, "threads": 1, "progress": False}},
        "seeds": [0],
        "variants": [{"name": "information_blocking", "genotype": {"decoder": "information_blocking"}},
                     {"name": "none", "genotype": {"decoder": "none"}}],
    }))
    exp = load_experiment(str(exp_file))
    tracker = Tracker(None, "ablations")
    logs: list[str] = []
    res = run_ablation(exp, TrainConfig(), data_root=str(eg1800_root), cache_dir=str(cache_dir), tracker=tracker,
                       log=logs.append)
    files = write_results(exp, res, workdir / "results", trained=True)
    assert all(not c["reused"] for c in res["cells"]) and len(res["cells"]) == 2
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["variant"] for r in rows] == ["information_blocking", "none"]
    assert float(rows[0]["delta_miou"]) == 0.0
    assert int(rows[0]["params"]) == 86_910 and int(rows[1]["params"]) == 86_764
    assert all(0 <= float(r["miou_mean"]) <= 100 for r in rows)
    md = files["md"].read_text()
    assert "fidelity: 1 epochs" in md and "64x64" in md and "foreground IoU per image" in md
    assert "\\toprule" in files["tex"].read_text()

    runs = mlflow.search_runs(experiment_names=["ablations"], output_format="list")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {(r.data.tags["ablation"], r.data.tags["variant"]) for r in runs} == {
        ("tiny_decoder", "information_blocking"), ("tiny_decoder", "none")}

    # the rerun reads both cells back from MLflow: nothing retrained, same figures
    again = run_ablation(exp, TrainConfig(), data_root=str(eg1800_root), cache_dir=str(cache_dir), tracker=tracker,
                         log=logs.append)
    assert all(c["reused"] for c in again["cells"])
    assert [c["miou"] for c in again["cells"]] == [c["miou"] for c in res["cells"]]
    assert len(mlflow.search_runs(experiment_names=["ablations"], output_format="list")) == 2

    # a crashed cell (its run left RUNNING) is closed as FAILED and trained again
    rid = again["cells"][1]["run_id"]
    tracker.client.update_run(rid, status="RUNNING")
    third = run_ablation(exp, TrainConfig(), data_root=str(eg1800_root), cache_dir=str(cache_dir), tracker=tracker,
                         log=logs.append)
    assert [c["reused"] for c in third["cells"]] == [True, False]
    assert tracker.client.get_run(rid).info.status == "FAILED"
    assert third["cells"][1]["miou"] == res["cells"][1]["miou"]  # same seed, same data, CPU: same digits


def test_nas_ablate_cli_costs_only(workdir) -> None:
    out = subprocess.run([sys.executable, "-m", "nas.cli.ablate", "experiment=sinet_squeeze", "train=false",
                          f"experiments_dir={EXPERIMENTS[0].parent}", f"results_dir={workdir / 'res'}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cells_trained"] == 0 and len(res["rows"]) == 7
    assert (workdir / "res" / "sinet_squeeze.md").is_file()
