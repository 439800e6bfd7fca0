"""Seconds per candidate of the zero-cost proxies, and each rung's cost per architecture.

    python benchmarks/bench_proxies.py [--n 10] [--threads 2] [--size 96] [--batch 16]
        [--results experiments/results/fidelity/sinet-fidelity.json]

Proxies run on a random batch of the given size (their cost does not depend on the pixel
values); the published SINet and ExtremeC3Net, then ``--n`` random SINet-space candidates.
Rung costs come from a finished ``nas-fidelity`` study's JSON (CPU-seconds of one training of
one architecture, as measured by the study itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import optuna
import torch

from nas.proxies import PROXIES, score_proxies
from search_spaces import create_model, get_genotype
from search_spaces.spaces import SINetSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="random SINet-space candidates")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=96, help="proxy input size (square)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--results", default="experiments/results/fidelity/sinet-fidelity.json")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(a.threads)
    size = (a.size, a.size)
    x = torch.randn(a.batch, 3, *size)
    y = (torch.rand(a.batch, *size) > 0.5).long()
    print(f"proxies on {a.batch} images at {a.size}x{a.size}, {a.threads} torch threads (wall seconds)")
    print(f"  {'network':<24}" + "".join(f"{p:>10}" for p in PROXIES) + f"{'all':>10}")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    nets = [("sinet", get_genotype("sinet")), ("extremec3net", get_genotype("extremec3net", num_classes=1))]
    space = SINetSpace(input_size=size)
    for i in range(a.n):
        trial = study.ask()
        nets.append((f"sinet-space #{i}", space.suggest(trial)))
        study.tell(trial, 0.0)
    totals = []
    for name, g in nets:
        torch.manual_seed(0)
        m = create_model(g)
        t0 = time.perf_counter()
        r = score_proxies(m, x, y)
        total = time.perf_counter() - t0
        if name.startswith("sinet-space"):
            totals.append(total)
        print(f"  {name:<24}" + "".join(f"{r[p]['wall_s']:>10.3f}" for p in PROXIES) + f"{total:>10.3f}")
    print(f"random SINet-space candidates: all six proxies, median {statistics.median(totals):.2f} s, "
          f"max {max(totals):.2f} s per candidate")
    p = Path(a.results)
    if p.is_file():
        res = json.loads(p.read_text())
        print(f"\nrung costs from {p} ({res['cells_done']}/{res['cells_planned']} cells):")
        for r in res["rungs"]:
            if r["kind"] == "trained":
                print(f"  {r['name']:<14} {r['seconds_per_arch']:8.1f} {r['seconds_unit']} per architecture and seed"
                      f"  ({r['fidelity']})")


if __name__ == "__main__":
    main()
