"""Training throughput: images/s of forward + backward + Adam step (batch 24, 224 x 224, CPU).

The reference (../shared/REFERENCE.md): the authors' own model code trains SINet at about
22 images/s and ExtremeC3Net at about 6.3 images/s on these 2-core machines.

    python benchmarks/bench_train.py [--threads 2] [--steps 6] [--batch 24] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nas.losses import SegmentationLoss
from nas.train import TrainConfig, param_groups
from search_spaces import create_model


def bench(name: str, batch: int, size: int, steps: int, warmup: int, channels_last: bool, compile: bool
          ) -> tuple[float, float]:
    """The trainer's step (nas.train): same loss, parameter groups, memory format and compile switch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name).train().to(memory_format=fmt)
    opt = torch.optim.Adam(param_groups(model, TrainConfig()), lr=5e-4)
    forward = torch.compile(model) if compile else model
    loss_fn = SegmentationLoss(kind="ce", class_weights=torch.tensor([1.0, 1.0]), boundary=True, boundary_window=15)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(batch, size, size) > 0.4).long()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = loss_fn(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return batch / med, med * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", default="sinet,extremec3net")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compile per model)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ref = {"sinet": 22.0, "extremec3net": 6.3}
    print(f"torch {torch.__version__}, {a.threads} thread(s), batch {a.batch}, {a.size}x{a.size}, "
          f"forward + backward (CE + boundary loss) + Adam step, median of {a.steps} steps")
    modes = [("contiguous", False, False), ("channels_last (default)", True, False)]
    if a.compile:
        modes.append(("channels_last + torch.compile", True, True))
    for name in a.models.split(","):
        for label, cl, comp in modes:
            ips, ms = bench(name, a.batch, a.size, a.steps, a.warmup, cl, comp)
            r = ref.get(name)
            extra = f"  (authors' code: ~{r} images/s; x{ips / r:.2f})" if r else ""
            print(f"{name:<14} {label:<30} {ips:7.1f} images/s  {ms:8.1f} ms/step{extra}", flush=True)


if __name__ == "__main__":
    main()
