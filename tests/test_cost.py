"""Exact parameter and MAC counts of the published networks (REFERENCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from nas.cost import cheap_cost, cost_report
from search_spaces import create_model

# model -> (params, conv MACs, fvcore total, ptflops pytorch, ptflops aten) at 2 classes, 1x3x224x224
REFERENCE = {
    "sinet": (86_910, 63_866_208, 71_531_696, 75_367_348, 63_870_556),
    "extremec3net": (37_762, 128_971_136, 147_504_896, 153_105_792, 128_971_136),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_counts_match_reference_table(name: str) -> None:
    rep = cost_report(create_model(name), (224, 224), latency=False)
    got = (rep.params, rep.conv_macs, rep.fvcore_total, rep.ptflops_pytorch, rep.ptflops_aten)
    assert got == REFERENCE[name]


@pytest.mark.parametrize("name,params", [("sinet", 86_684), ("extremec3net", 37_738)])
def test_one_class_parameter_counts(name: str, params: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cheap_cost(create_model(name, num_classes=1), (224, 224)).params == params


def test_conv_macs_scale_with_input_area() -> None:
    m = create_model("sinet")
    assert cheap_cost(m, (448, 448)).conv_macs == 4 * REFERENCE["sinet"][1]


def test_cheap_cost_is_cheap() -> None:
    m = create_model("extremec3net")
    cheap_cost(m, (224, 224))
    t0 = time.perf_counter()
    cheap_cost(m, (224, 224))
    # a loose sanity bound (a search runs this on every candidate); figures live in benchmarks/
    assert time.perf_counter() - t0 < 5.0


def test_latency_is_positive_and_threads_recorded() -> None:
    rep = cost_report(create_model("sinet"), (64, 64), fvcore=False, ptflops=False, threads=1)
    assert rep.latency_ms > 0 and rep.latency_threads == 1


def test_nas_cost_cli_last_line_is_json(tmp_path) -> None:
    g = create_model("extremec3net").genotype
    path = g.save(tmp_path / "c3.yaml")
    out = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nas.cli.cost",
                f"model={path}",
                "input_size=224,224",
                "num_classes=2",
                "latency_threads=1",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    res = json.loads(out[-1])
    assert set(res) >= {"params", "conv_macs", "fvcore_total", "ptflops_pytorch", "ptflops_aten", "latency_ms"}
    assert (res["params"], res["conv_macs"], res["fvcore_total"]) == REFERENCE["extremec3net"][:3]
    assert (res["ptflops_pytorch"], res["ptflops_aten"]) == REFERENCE["extremec3net"][3:]
    assert any("conv MACs" in line for line in out[:-1])  # the readable table names its counters
    import onnxruntime

    # measured latency beside the counts: ONNX Runtime's, its version recorded (exported, checked vs PyTorch)
    assert res["ort_latency_ms"] > 0 and res["ort_version"] == onnxruntime.__version__
    assert any(f"ONNX Runtime {onnxruntime.__version__}, 1 thread(s)" in line for line in out[:-1])


def test_nas_cost_cli_bad_model_fails_clearly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nas.cli.cost", "model=nonexistent_net"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "unknown model 'nonexistent_net'" in proc.stderr + proc.stdout
