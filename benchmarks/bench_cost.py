"""How long cost accounting takes per candidate (a search counts every candidate before training).

python benchmarks/bench_cost.py [--n 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import optuna

from nas.cost import count_fvcore, count_ptflops, genotype_cost, measure_latency
from search_spaces import create_model
from search_spaces.spaces import C3Space, SINetSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="random candidates per space")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = (224, 224)
    for space in (SINetSpace(), C3Space()):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        t = {"genotype_cost (params + conv MACs)": [], "fvcore": [], "ptflops pytorch": [], "latency (5 runs)": []}
        for _ in range(a.n):
            trial = study.ask()
            g = space.suggest(trial)
            study.tell(trial, 0.0)
            t0 = time.perf_counter()
            genotype_cost(g, size)
            t["genotype_cost (params + conv MACs)"].append(time.perf_counter() - t0)
            m = create_model(g)
            t0 = time.perf_counter()
            count_fvcore(m, size)
            t["fvcore"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            count_ptflops(m, size, "pytorch")
            t["ptflops pytorch"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            measure_latency(m, size, warmup=2, repeats=5)
            t["latency (5 runs)"].append(time.perf_counter() - t0)
        print(f"{type(space).__name__}, {a.n} random candidates at 224x224 (median / max, ms):")
        for k, v in t.items():
            print(f"  {k:<36} {statistics.median(v) * 1e3:8.1f} / {max(v) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
