"""Do conv MACs rank networks like measured latency? Params, conv MACs, torch and ONNX Runtime CPU latency
(batch 1, fixed threads, 224 x 224) of SINet, ExtremeC3Net and random genotypes of both spaces, with the
Kendall tau between each count and the ONNX Runtime latency (scipy.stats.kendalltau).

python benchmarks/bench_latency.py [--n 8] [--threads 1] [--size 224] [--data-root $EG1800_ROOT]

Each network is exported once (torch's dynamo ONNX exporter, 7-20 s on one core). ONNX Runtime is timed
on the seeded standard-normal input of ``nas.cost.timing_input`` and, given a data root, on 4 real
training images (ORT's PReLU is data-dependent: zeros under-report these networks about 2x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import optuna
from scipy.stats import kendalltau

from nas.cost import cheap_cost, measure_latency
from nas.export import export_onnx, ort_latency_ms, real_check_images
from search_spaces import create_model
from search_spaces.spaces import C3Space, SINetSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="random genotypes per space")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--data-root", default=os.environ.get("EG1800_ROOT"), help="EG1800 root: also time real images")
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
    real = None
    if a.data_root:
        from nas.datasets import EG1800Reader
        from nas.preprocess import OURS

        real = real_check_images(EG1800Reader(a.data_root), OURS, size, n=4, split="train")
    rows = []
    print(f"batch 1, {size[0]}x{size[1]}, {a.threads} thread(s); latency = median of 20 runs after 5 warm-up; "
          f"ORT on a seeded standard-normal input{' and on 4 real training images' if real is not None else ''}")
    print(f"{'network':<22}{'params':>10}{'conv MACs':>14}{'torch ms':>10}{'ORT ms':>9}{'ORT real':>10}  MACs/ORT-ms")
    with tempfile.TemporaryDirectory() as tmpd:
        for name, m in nets:
            c = cheap_cost(m, size)
            t_ms, _ = measure_latency(m, size, threads=a.threads)
            path = Path(tmpd) / f"{name}.onnx"
            export_onnx(m, path, size)
            o = ort_latency_ms(path, size, threads=a.threads)
            r = ort_latency_ms(path, size, threads=a.threads, inputs=real)["ort_latency_ms"] if real is not None \
                else float("nan")
            rows.append((name, c.params, c.conv_macs, t_ms, o["ort_latency_ms"], r))
            print(f"{name:<22}{c.params:>10,}{c.conv_macs:>14,}{t_ms:>10.2f}{o['ort_latency_ms']:>9.2f}{r:>10.2f}"
                  f"  {c.conv_macs / o['ort_latency_ms'] / 1e6:6.2f}M", flush=True)
    print(f"onnxruntime {o['ort_version']} ({o['ort_provider']})")
    for target, col in (("ORT latency", 4), ("ORT latency on real images", 5)):
        if col == 5 and real is None:
            continue
        for label, c in (("params", 1), ("conv MACs", 2), ("torch latency", 3)):
            tau, p = kendalltau([r[c] for r in rows], [r[col] for r in rows])
            print(f"Kendall tau({label}, {target}) over {len(rows)} networks: {tau:.3f} (p = {p:.3g})")
    if real is not None:
        tau, p = kendalltau([r[4] for r in rows], [r[5] for r in rows])
        print(f"Kendall tau(ORT standard-normal input, ORT real images): {tau:.3f} (p = {p:.3g})")


if __name__ == "__main__":
    main()
