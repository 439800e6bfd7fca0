"""Training throughput in images/s: the step alone, the augmentation alone, and end to end.

* step: forward + backward (CE + boundary loss) + Adam step on a fixed batch (no data);
* augment: the release's augmentation of one batch, per image with OpenCV (``numpy``, the
  DataLoader path, in the main process) or per batch with kornia on ``--device`` (``tensor``);
* end to end: data (real EG1800 images at ``--size``), augmentation, normalisation, transfer,
  forward, backward, step, for each ``--augment`` backend, at the release's batch sizes (SINet 24,
  ExtremeC3Net 40, stage 2) times each ``--scale``; and the seconds one full-recipe epoch (every
  training image but the 10 % holdout) takes at that rate.

The reference (../shared/REFERENCE.md): the authors' own model code trains SINet at about
22 images/s and ExtremeC3Net at about 6.3 images/s on these 2-core machines.

    EG1800_ROOT=... python benchmarks/bench_train.py [--device cpu|cuda] [--augment numpy,tensor]
        [--threads 2] [--steps 4] [--size 224] [--scale 1,4] [--models sinet,extremec3net] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nas.augment import Augment
from nas.config import AugmentConfig
from nas.data import (
    SegmentationDataset,
    load_split_arrays,
    make_loader,
    read_split,
    remove_split_duplicates,
    split_holdout,
)
from nas.device import configure_backends, resolve_device
from nas.losses import SegmentationLoss
from nas.tensor_augment import DeviceBatches, TensorAugment, batch_generator
from nas.train import TrainConfig, param_groups
from search_spaces import create_model

RELEASE_BATCH = {"sinet": 24, "extremec3net": 40}
REF = {"sinet": 22.0, "extremec3net": 6.3}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(name: str, size: int, device: torch.device, channels_last: bool, compile: bool):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name).train().to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(param_groups(model, TrainConfig()), lr=5e-4)
    forward = torch.compile(model) if compile else model
    loss_fn = SegmentationLoss(kind="ce", class_weights=torch.tensor([1.0, 1.0]), boundary=True,
                               boundary_window=15).to(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = forward(x.contiguous(memory_format=fmt))
        if logits.shape[1] == 1:  # a 1-class network: the step's cost is the point, not the loss
            logits = torch.cat([-logits, logits], 1)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_step(name: str, batch: int, size: int, steps: int, warmup: int, device: torch.device,
               channels_last: bool, compile: bool) -> tuple[float, float]:
    """images/s and ms/step of the trainer's step on a fixed random batch."""
    step = _trainer(name, size, device, channels_last, compile)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, size, size, device=device) > 0.4).long()
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return batch / med, med * 1e3


def bench_augment(arrays, batch: int, backend: str, device: torch.device, repeats: int) -> float:
    """images/s of the release's augmentation of ``batch`` images (uint8 in, uint8 out), ``repeats`` draws."""
    n = min(batch, len(arrays))
    if backend == "numpy":
        aug = Augment(AugmentConfig())
        import numpy as np

        t0 = time.perf_counter()
        for r in range(repeats):
            for k in range(n):
                aug(arrays.images[k], arrays.masks[k], np.random.default_rng([r, k]))
        return repeats * n / (time.perf_counter() - t0)
    aug = TensorAugment(AugmentConfig())
    x = torch.from_numpy(arrays.images[:n]).to(device).permute(0, 3, 1, 2).contiguous()
    m = torch.from_numpy(arrays.masks[:n]).to(device)
    aug(x, m, batch_generator(device, 0))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for r in range(repeats):
        aug(x, m, batch_generator(device, r))
    _sync(device)
    return repeats * n / (time.perf_counter() - t0)


def bench_end_to_end(name: str, arrays, batch: int, size: int, steps: int, warmup: int, device: torch.device,
                     backend: str, channels_last: bool, compile: bool) -> float:
    """images/s of data + augmentation + transfer + step, median over ``steps`` batches after ``warmup``."""
    step = _trainer(name, size, device, channels_last, compile)
    if backend == "tensor":
        batches = DeviceBatches(arrays, batch, device, AugmentConfig(), seed=0).epoch(0)
    else:
        ds = SegmentationDataset.from_arrays(arrays, augment=Augment(AugmentConfig()), seed=0)
        batches = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                   for x, y in make_loader(ds, batch, shuffle=True, seed=0))
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        x, y = next(batches)
        step(x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--augment", default="numpy,tensor", help="backends of the end-to-end figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--scale", default="1,4", help="batch sizes: the release's times each of these")
    ap.add_argument("--models", default="sinet,extremec3net")
    ap.add_argument("--data-root", default=None, help="EG1800 root (default: EG1800_ROOT)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (minutes of compile per model)")
    ap.add_argument("--no-step", action="store_true", help="skip the fixed-batch step figures")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device, key="--device")
    configure_backends(device)
    models = a.models.split(",")
    scales = [int(s) for s in a.scale.split(",")]
    backends = [b for b in a.augment.split(",") if b]
    biggest = max(RELEASE_BATCH[m] for m in models) * max(scales)
    need = biggest * (a.steps + a.warmup + 1)  # a batch of margin: the subset's size is rounded
    n_train = len(read_split(a.data_root, "train").ids)
    arrays = load_split_arrays(a.data_root, "train", (a.size, a.size), fraction=min(1.0, need / n_train),
                               progress=False)
    kept, _ = remove_split_duplicates(a.data_root, read_split(a.data_root, "train").ids)
    epoch_images = len(split_holdout(kept, TrainConfig().holdout_fraction)[0])  # what one full-recipe epoch sees
    print(f"torch {torch.__version__}, device {device}, {a.threads} CPU thread(s), {a.size}x{a.size}, "
          f"{len(arrays)} EG1800 training images loaded; median of {a.steps} steps")
    print("augmentation alone (the release's pipeline, uint8 in and out):")
    for backend in ("numpy", "tensor"):
        ips = bench_augment(arrays, 24, backend, device if backend == "tensor" else torch.device("cpu"), 8)
        where = "OpenCV per image, CPU, 1 process" if backend == "numpy" else f"kornia per batch of 24, {device}"
        print(f"  {backend:<7} {ips:8.1f} images/s  ({where})", flush=True)
    for name in models:
        for s in scales:
            batch = RELEASE_BATCH[name] * s
            if not a.no_step:
                ips, ms = bench_step(name, batch, a.size, a.steps, a.warmup, device, True, a.compile)
                ref = f"  (authors' code on 2 CPU cores: ~{REF[name]} images/s)" if device.type == "cpu" else ""
                print(f"{name:<13} batch {batch:<4} step only            {ips:8.1f} images/s {ms:9.1f} ms/step{ref}",
                      flush=True)
            for backend in backends:
                if len(arrays) < batch * (a.steps + a.warmup):
                    print(f"{name:<13} batch {batch:<4} end to end, {backend}: skipped (too few images loaded)")
                    continue
                ips = bench_end_to_end(name, arrays, batch, a.size, a.steps, a.warmup, device, backend, True,
                                       a.compile)
                print(f"{name:<13} batch {batch:<4} end to end, {backend:<7} {ips:8.1f} images/s "
                      f"{epoch_images / ips:9.1f} s per full-recipe epoch ({epoch_images} images)", flush=True)


if __name__ == "__main__":
    main()
