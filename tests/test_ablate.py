"""Ablations: experiment files parse and cost in seconds; a real two-variant run resumes without retraining."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from nas.ablate import Cell, _rows, apply_edits, delta_interval, load_experiment, run_ablation, write_results
from nas.cost import genotype_cost
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


def _decoder_rows(mious: dict[str, list[float]]) -> list[dict]:
    """The row builder on hand-given per-seed mIoUs of the sinet_decoder experiment (no training)."""
    exp = load_experiment("sinet_decoder")
    costs = {v.name: genotype_cost(get_genotype("sinet"), (224, 224)) for v in exp.variants}
    cells = [Cell(name, seed, m, m - 4.0, None, True) for name, ms in mious.items() for seed, m in enumerate(ms)]
    return _rows(exp, costs, cells, trained=True)


def test_delta_interval_is_welch_t() -> None:
    a, b = [83.1, 82.4, 82.9], [82.0, 81.5, 81.9]
    # by hand: diff 1.0; s_a^2 = 0.13, s_b^2 = 0.07, se = sqrt(0.2/3); Welch-Satterthwaite df = 3.6697;
    # t_{0.975, 3.6697} = 2.8781 -> 1.0 +/- 0.7431
    lo, hi = delta_interval(a, b)
    assert (lo, hi) == pytest.approx((0.2569489, 1.7430511), abs=1e-6)
    from scipy import stats
    se = (statistics.variance(a) / 3 + statistics.variance(b) / 3) ** 0.5
    df = se ** 4 / ((statistics.variance(a) / 3) ** 2 / 2 + (statistics.variance(b) / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    assert (lo, hi) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-12)
    assert delta_interval([83.1], b) is None and delta_interval(a, [82.0]) is None  # 1 seed: no interval
    assert delta_interval([82.0, 82.0], [81.0, 81.0]) is None  # zero variance in both: no interval
    assert delta_interval([82.0, 82.0, 82.0], b) is not None  # zero variance in one only: defined
    with pytest.raises(ValueError, match="confidence"):
        delta_interval(a, b, confidence=95)


def test_rows_carry_the_interval_and_the_mark() -> None:
    rows = {r["variant"]: r for r in _decoder_rows({
        "information_blocking": [82.0, 81.5, 81.9],
        "skip": [83.1, 82.4, 82.9],          # +1.0, interval [0.26, 1.74]: outside the noise
        "none": [82.6, 81.0, 82.2],          # +0.13, interval contains 0: inside
    })}
    base, skip, none = rows["information_blocking"], rows["skip"], rows["none"]
    assert base["delta_miou"] == 0.0 and base["delta_ci_lo"] is None and base["outside_noise"] is None
    assert skip["delta_miou"] == pytest.approx(1.0)
    assert (skip["delta_ci_lo"], skip["delta_ci_hi"]) == pytest.approx(delta_interval([83.1, 82.4, 82.9],
                                                                                      [82.0, 81.5, 81.9]))
    assert skip["outside_noise"] is True
    assert none["delta_ci_lo"] < 0 < none["delta_ci_hi"] and none["outside_noise"] is False
    assert [r["seeds"] for r in rows.values()] == [3, 3, 3]
    # a worse variant, clearly: the interval lies below 0 and is marked too
    worse = {r["variant"]: r for r in _decoder_rows({"information_blocking": [82.0, 81.5, 81.9],
                                                     "skip": [80.1, 80.4, 79.9], "none": [82.0]})}
    assert worse["skip"]["delta_ci_hi"] < 0 and worse["skip"]["outside_noise"] is True


def test_one_seed_gives_no_interval_and_no_mark() -> None:
    rows = {r["variant"]: r for r in _decoder_rows({"information_blocking": [82.0, 81.5], "skip": [83.1],
                                                    "none": [82.6, 81.0]})}
    assert rows["skip"]["seeds"] == 1 and rows["skip"]["miou_std"] is None
    assert rows["skip"]["delta_miou"] == pytest.approx(1.35)
    assert (rows["skip"]["delta_ci_lo"], rows["skip"]["delta_ci_hi"], rows["skip"]["outside_noise"]) == (None,) * 3
    assert rows["none"]["delta_ci_lo"] is not None and rows["none"]["seeds"] == 2


def test_written_table_names_the_method_and_marks(tmp_path) -> None:
    exp = load_experiment("sinet_decoder")
    rows = _decoder_rows({"information_blocking": [82.0, 81.5, 81.9], "skip": [83.1, 82.4, 82.9],
                          "none": [82.6, 81.0, 82.2]})
    res = {"rows": rows, "cells": [], "seeds": [0, 1, 2],
           "fidelity": {"epochs": 4, "schedule": "single_stage", "stage1_epochs": 0, "input_size": [96, 96],
                        "train_fraction": 1.0}}
    files = write_results(exp, res, tmp_path, trained=True)
    md = files["md"].read_text()
    assert "Welch's t 95% interval over seeds, unequal variances" in md and "excludes 0" in md
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in md.splitlines()
             if ln.startswith("| ") and not ln.startswith("| variant")}
    head = [c.strip() for c in md.splitlines()[2].split("|")[1:-1]]
    mark, n = head.index("outside_noise"), head.index("seeds")
    assert [lines[v][mark] for v in ("information_blocking", "skip", "none")] == ["–", "yes", "no"]
    assert lines["skip"][head.index("delta_ci_lo")] == "0.26" and lines["skip"][n] == "3"
    csv_rows = {r["variant"]: r for r in csv.DictReader(files["csv"].open())}
    assert (csv_rows["skip"]["outside_noise"], csv_rows["none"]["outside_noise"]) == ("True", "False")
    assert csv_rows["information_blocking"]["outside_noise"] == ""
    assert "yes" in files["tex"].read_text()


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
