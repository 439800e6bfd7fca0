"""Data-pipeline throughput: cache build time and images/s with augmentation.

Usage::

    python benchmarks/bench_data.py [--root PATH] [--size 224] [--batch 24]
        [--epochs 1] [--workers 0 1 2] [--cache-dir DIR]

Root: ``--root``, else env ``EG1800_ROOT``, else ``../shared/data/EG1800`` next to
the project. Without ``--cache-dir`` a fresh temporary cache is used, so the first
load is a true cold build (the timing covers decoding the whole training split).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.augment import Augment  # noqa: E402
from nas.data import SegmentationDataset, load_split_arrays, make_loader  # noqa: E402


def _root(arg: str | None) -> str:
    if arg or os.environ.get("EG1800_ROOT"):
        return arg or os.environ["EG1800_ROOT"]
    return str(Path(__file__).resolve().parents[2] / "shared" / "data" / "EG1800")


def _loader_rate(ds: SegmentationDataset, batch: int, workers: int, epochs: int) -> float:
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for x, y in make_loader(ds, batch, shuffle=True, seed=0, num_workers=workers):
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache-dir")
    args = p.parse_args()
    root, size = _root(args.root), (args.size, args.size)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        cache = args.cache_dir or tmp
        t0 = time.perf_counter()
        train = load_split_arrays(root, "train", size=size, cache_dir=cache, progress=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_split_arrays(root, "train", size=size, cache_dir=cache, progress=False)
        warm = time.perf_counter() - t0
    print(f"train split {size[0]}x{size[1]}: {len(train)} images "
          f"(skipped {len(train.skipped_ids)}, dropped duplicates {train.dropped_duplicate_ids})")
    print(f"  first load : {cold:6.2f} s  ({train.cache_misses} decoded, {train.cache_hits} cached)")
    print(f"  second load: {warm:6.2f} s  ({again.cache_misses} decoded, {again.cache_hits} cached)")

    aug = Augment()
    rng = np.random.default_rng(0)
    k = min(300, len(train))
    t0 = time.perf_counter()
    for i in range(k):
        aug(train.images[i], train.masks[i], rng)
    print(f"Augment alone: {k / (time.perf_counter() - t0):7.1f} images/s (one process)")

    for name, augment in (("with augmentation", aug), ("no augmentation", None)):
        ds = SegmentationDataset.from_arrays(train, augment=augment, seed=0)
        for w in args.workers if augment is not None else [0]:
            rate = _loader_rate(ds, args.batch, w, args.epochs)
            print(f"loader {name:17s} batch {args.batch}, workers {w}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
