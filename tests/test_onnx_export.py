"""ONNX export and ONNX Runtime latency on real EG1800 images: the published networks (the authors'
released weights), a searched genotype, the CLI, the bad inputs, and the study's latency budget."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import torch

from nas.datasets import EG1800Reader
from nas.export import (
    ExportError,
    export_checkpoint,
    export_onnx,
    onnx_metadata,
    ort_latency_ms,
    ort_session,
    real_check_images,
)
from nas.preprocess import OURS
from search_spaces import create_model
from search_spaces.spaces import SINetSpace
from tests.conftest import cli_env, compose

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "ext_portrait_segmentation"
SIZE = (64, 64)  # small traced input: the check and the latency are fast; the batch axis stays dynamic


@pytest.fixture(scope="module")
def released(tmp_path_factory, eg1800_root) -> dict[str, Path]:
    from nas.release import write_release_checkpoint

    if not WEIGHTS.is_dir():
        pytest.skip(f"released weights not found at {WEIGHTS}")
    out = tmp_path_factory.mktemp("release")
    return {m: Path(write_release_checkpoint(WEIGHTS / f, out / f"{m}.pt", m)["checkpoint"])
            for m, f in (("sinet", "SINet.pth"), ("extremec3net", "ExtremeC3.pth"))}


@pytest.mark.parametrize("model", ["sinet", "extremec3net"])
def test_published_networks_export_and_match_pytorch_on_real_images(model, released, eg1800_root, tmp_path) -> None:
    reader = EG1800Reader(eg1800_root)
    res = export_checkpoint(released[model], reader, tmp_path / f"{model}.onnx", input_size=SIZE, check_images=4,
                            latency_threads=1)
    assert res["max_abs_diff"] <= 1e-4 and res["check_images"] == 4
    assert res["ort_latency_ms"] > 0 and res["ort_version"] == onnxruntime.__version__
    assert res["ort_input"] == "real images"  # timed on the check images, not zeros (PReLU is data-dependent)
    meta = onnx_metadata(res["path"])
    pre = json.loads(meta["preprocessing"])
    assert pre["channel_order"] == "BGR" and meta["input_size"] == "64,64"  # the release's input, recorded
    assert meta["family"] == model and meta["opset"] == "18" and meta["batch"] == "dynamic"

    # the batch axis is dynamic: a batch of 3 gives each image's batch-1 logits
    from nas.checkpoint import load_checkpoint

    net, ck = load_checkpoint(released[model])
    x = real_check_images(reader, ck["preprocessing"], SIZE, n=3)
    sess = ort_session(res["path"])
    batch = sess.run(["logits"], {"image": x.numpy()})[0]
    single = np.concatenate([sess.run(["logits"], {"image": x[i : i + 1].numpy()})[0] for i in range(3)])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(batch, net(x).numpy(), atol=1e-4)


def test_a_searched_genotype_exports_and_matches_pytorch(eg1800_root, tmp_path) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    g = SINetSpace(input_size=SIZE).suggest(study.ask())
    assert g.archid() != create_model("sinet").genotype.archid()
    x = real_check_images(EG1800Reader(eg1800_root), OURS, SIZE, n=4)
    torch.manual_seed(0)
    res = export_onnx(create_model(g), tmp_path / "g.onnx", SIZE, metadata={"archid": g.archid()}, check_inputs=x)
    assert res["max_abs_diff"] <= 1e-4 and onnx_metadata(res["path"])["archid"] == g.archid()


def test_latency_is_timed_on_a_seeded_normal_input_unless_given_images(tmp_path) -> None:
    from nas.cost import timing_input

    x = timing_input((16, 16))
    assert torch.equal(x, timing_input((16, 16))) and x.shape == (1, 3, 16, 16)
    assert abs(float(x.std()) - 1.0) < 0.1 and float((x > 0).float().mean()) == pytest.approx(0.5, abs=0.1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.PReLU(2))
    path = export_onnx(net, tmp_path / "p.onnx", (16, 16))["path"]
    assert ort_latency_ms(path, (16, 16), repeats=2)["ort_input"] == "seeded standard normal"
    res = ort_latency_ms(path, (16, 16), repeats=2, inputs=torch.rand(2, 3, 16, 16))
    assert res["ort_input"] == "real images" and res["ort_latency_ms"] > 0
    with pytest.raises(Exception, match="image"):  # images of another size than the model's: ORT names the input
        ort_latency_ms(path, (16, 16), repeats=1, inputs=np.zeros((1, 3, 8, 9), np.float32))


def test_bad_opset_and_unwritable_path_are_clear_errors(tmp_path) -> None:
    net = create_model("sinet")
    with pytest.raises(ExportError, match=r"opset=7 cannot be exported; allowed: an integer 18\.\.23"):
        export_onnx(net, tmp_path / "a.onnx", SIZE, opset=7)
    (tmp_path / "afile").write_text("a file, not a folder")
    bad = tmp_path / "afile" / "m.onnx"
    with pytest.raises(OSError, match=rf"cannot write ONNX model {re.escape(str(bad))}"):
        export_onnx(net, bad, SIZE)
    with pytest.raises(FileNotFoundError, match="ONNX model not found: .*missing.onnx"):
        ort_session(tmp_path / "missing.onnx")


def test_an_opset_the_exporter_did_not_write_is_an_error(tmp_path, monkeypatch) -> None:
    """The dynamo exporter falls back to its own opset when a conversion fails: the file is read back."""
    real = torch.onnx.export

    def falls_back(*args, **kwargs):
        return real(*args, **{**kwargs, "opset_version": 18})

    monkeypatch.setattr(torch.onnx, "export", falls_back)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1))
    with pytest.raises(ExportError, match=r"opset=21 requested for .*m\.onnx but the exporter wrote opset 18"):
        export_onnx(net, tmp_path / "m.onnx", (16, 16), opset=21)
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setattr(torch.onnx, "export", real)
    res = export_onnx(net, tmp_path / "m.onnx", (16, 16), opset=21)
    assert res["opset"] == 21 and onnx_metadata(res["path"])["opset"] == "21"


def test_nas_export_cli_errors_are_one_line(tmp_path, released) -> None:
    env = cli_env()
    out = subprocess.run([sys.executable, "-m", "nas.cli.export", f"checkpoint={released['sinet']}", "opset=99"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nas-export: error: opset=99 cannot be exported; allowed: an integer 18..23" in out.stderr
    out = subprocess.run([sys.executable, "-m", "nas.cli.export", f"checkpoint={tmp_path}/none.pt"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and f"nas-export: error: checkpoint not found: {tmp_path}/none.pt" in out.stderr


def test_study_budget_on_ort_latency_measures_before_training_and_never_trains_over_it(workdir) -> None:
    from nas.cli.search import build_worker

    cfg = compose("search", ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "progress=false",
                             "study.extra_costs=false", "study.name=ort", "study.n_trials=1", "study.enqueue=[sinet]",
                             "study.cost_input_size=[64,64]", "study.budgets.ort_latency_ms=0.001",
                             "study.max_infeasible=0"])
    summary = build_worker(cfg).run()
    t = optuna.load_study(study_name="ort", storage="sqlite:///nas_studies.db").get_trials()[0]
    assert t.user_attrs["reference"] == "sinet" and t.user_attrs["ort_latency_ms"] > 0.001
    # within the counted budgets (params, conv MACs), so measured; its constraint is the excess in ms
    c = t.constraints
    assert (c["params"], c["conv_macs"]) == (86_910 - 100_000, pytest.approx(t.user_attrs["conv_macs"] - 1e8))
    assert c["ort_latency_ms"] == pytest.approx(t.user_attrs["ort_latency_ms"] - 0.001)
    assert t.user_attrs["feasible"] is False and "miou" not in t.user_attrs  # measured, over budget, not trained
    assert summary["n_infeasible"] == 1 and summary["budgets"]["ort_latency_ms"] == 0.001


def test_ort_latency_as_a_pareto_objective_is_measured_told_and_on_the_front(workdir) -> None:
    from nas.cli.search import build_worker
    from nas.objectives import default_reference_point
    from nas.pareto import compare_studies
    from nas.report import hypervolume

    lat = ["miou", "params", "conv_macs", "ort_latency_ms"]
    base = ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "progress=false", "study.extra_costs=false",
            "study.n_trials=2", "study.enqueue=[sinet]", "study.cost_input_size=[64,64]"]
    cfg = compose("search", [*base, "study.name=lat", f"study.objectives=[{','.join(lat)}]"])
    worker = build_worker(cfg)
    assert tuple(worker.timing_inputs.shape) == (4, 3, 64, 64)  # timed on real training images at cost size
    summary = worker.run()
    study = optuna.load_study(study_name="lat", storage="sqlite:///nas_studies.db")
    assert study.metric_names == lat and len(study.directions) == 4
    trained = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trained) == 2
    for t in trained:  # measured before training, told to Optuna as the 4th value
        assert t.values[3] == pytest.approx(t.user_attrs["ort_latency_ms"]) and t.values[3] > 0
    assert summary["objectives"] == lat and set(summary["reference_point"]) == set(lat)
    assert summary["pareto"] and all(p["ort_latency_ms"] > 0 for p in summary["pareto"])
    ref = default_reference_point()
    pts = [{"label": str(p["trial"]), **p} for p in summary["pareto"]]
    assert summary["hypervolume"] == pytest.approx(hypervolume(pts, [ref[n] for n in lat], objectives=lat), rel=1e-4)
    html = (workdir / "runs" / "search" / "lat" / "pareto.html").read_text()
    assert "ONNX Runtime CPU latency (ms)" in html  # the third panel
    # the same study with other objectives, and fronts with other objectives, are refused
    with pytest.raises(ValueError, match=r"study 'lat' exists with objectives \['miou', 'params', 'conv_macs', "
                                         r"'ort_latency_ms'\]; study.objectives=\['miou', 'params', 'conv_macs'\]"):
        build_worker(compose("search", [*base, "study.name=lat"]))
    optuna.create_study(study_name="plain", storage="sqlite:///nas_studies.db",
                        directions=["maximize", "minimize", "minimize"]).set_metric_names(lat[:3])
    with pytest.raises(ValueError, match="different front objectives"):
        compare_studies(["lat", "plain"], "sqlite:///nas_studies.db", None, str(workdir / "cmp"))
