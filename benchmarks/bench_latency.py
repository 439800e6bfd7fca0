"""Do conv MACs rank networks like measured latency? Params, conv MACs, torch and ONNX Runtime CPU latency
(batch 1, fixed threads, 224 x 224) of SINet, ExtremeC3Net and random genotypes of both spaces, with the
Kendall tau between each count and the ONNX Runtime latency (scipy.stats.kendalltau).

python benchmarks/bench_latency.py [--n 8] [--threads 1] [--size 224]

Each network is exported once (torch's dynamo ONNX exporter, about 20 s on one core).
"""

from __future__ import annotations

import argparse
import warnings

import optuna
from scipy.stats import kendalltau

from nas.cost import cheap_cost, measure_latency
from nas.export import ort_latency_ms
from search_spaces import create_model
from search_spaces.spaces import C3Space, SINetSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="random genotypes per space")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = (a.size, a.size)
    nets = [("sinet", create_model("sinet")), ("extremec3net", create_model("extremec3net"))]
    for space in (SINetSpace(input_size=size), C3Space(input_size=size)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for i in range(a.n):
            g = space.suggest(study.ask())
            nets.append((f"{space.family}-random{i}", create_model(g)))
    rows = []
    print(f"batch 1, {size[0]}x{size[1]}, {a.threads} thread(s); latency = median of 20 runs after 5 warm-up")
    print(f"{'network':<22}{'params':>10}{'conv MACs':>14}{'torch ms':>10}{'ORT ms':>9}  MACs/ORT-ms")
    for name, m in nets:
        c = cheap_cost(m, size)
        t_ms, _ = measure_latency(m, size, threads=a.threads)
        o = ort_latency_ms(m, size, threads=a.threads)
        rows.append((name, c.params, c.conv_macs, t_ms, o["ort_latency_ms"]))
        print(f"{name:<22}{c.params:>10,}{c.conv_macs:>14,}{t_ms:>10.2f}{o['ort_latency_ms']:>9.2f}"
              f"  {c.conv_macs / o['ort_latency_ms'] / 1e6:6.2f}M", flush=True)
    print(f"onnxruntime {o['ort_version']} ({o['ort_provider']})")
    ort = [r[4] for r in rows]
    for label, col in (("params", 1), ("conv MACs", 2), ("torch latency", 3)):
        tau, p = kendalltau([r[col] for r in rows], ort)
        print(f"Kendall tau({label}, ORT latency) over {len(rows)} networks: {tau:.3f} (p = {p:.3g})")


if __name__ == "__main__":
    main()
