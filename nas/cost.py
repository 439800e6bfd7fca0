"""Cost accounting: parameters, MACs by several named counters, CPU latency.

Every figure carries the name of the counter that made it, because the
counters disagree (``../shared/REFERENCE.md``, "Numbers a faithful rebuild
must hit"):

* ``conv_macs`` -- multiply-accumulates of the convolutions only, as the
  SINet/ExtremeC3Net papers count their "FLOPs" (bias, activations, pooling,
  upsampling and the SE linear layers not counted);
* ``fvcore_total`` -- fvcore ``FlopCountAnalysis(...).total()`` (MACs; adds
  batch norm and bilinear upsampling, gives PReLU, add and avg-pool zero);
* ``ptflops_pytorch`` / ``ptflops_aten`` -- ptflops ``get_model_complexity_info``
  MACs with its two backends.

``params`` and ``conv_macs`` take one batch-1 forward pass (a few ms) and are
what a search checks budgets with before any training; the third-party
counters take longer (see :func:`measure_cost_time`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "COUNTERS",
    "CostReport",
    "count_params",
    "count_conv_macs",
    "count_fvcore",
    "count_ptflops",
    "measure_latency",
    "cost_report",
    "cheap_cost",
    "genotype_cost",
]

#: column -> the counter that makes it, for table headers and MLflow tags.
COUNTERS = {
    "params": "trainable parameters (torch numel)",
    "conv_macs": "conv MACs, the papers' FLOPs (each nn.Conv2d: outputs x C_in/groups x kH x kW)",
    "fvcore_total": "fvcore FlopCountAnalysis.total() (MACs)",
    "ptflops_pytorch": "ptflops MACs, backend=pytorch",
    "ptflops_aten": "ptflops MACs, backend=aten",
    "latency_ms": "median CPU latency at batch 1 (ms)",
    "ort_latency_ms": "median ONNX Runtime CPU latency at batch 1 (ms; CPUExecutionProvider)",
}


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dummy(model: nn.Module, input_size: tuple[int, int]) -> torch.Tensor:
    p = next(model.parameters())
    return torch.zeros(1, 3, *input_size, dtype=p.dtype, device=p.device)


def timing_input(input_size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """The input latency is timed on: seeded standard-normal pixels (``batch`` x 3 x H x W, float32),
    like a normalised image, not zeros.

    Element-wise kernels can be data-dependent: ONNX Runtime's PReLU took 0.92 ms on a zero input
    against 3.63 ms on this one for a searched SINet-space network (224 x 224, 1 thread; its
    profiler), so zeros under-report the latency of these networks about 2x.
    """
    return torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0))


def _conv_out(mod: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Zeros of the conv's output shape (PyTorch's output-size formula), without convolving."""
    hw = [
        (x.shape[2 + i] + 2 * mod.padding[i] - mod.dilation[i] * (mod.kernel_size[i] - 1) - 1) // mod.stride[i] + 1
        for i in range(2)
    ]
    return x.new_zeros(()).expand(x.shape[0], mod.out_channels, *hw)  # a view: allocates nothing


@torch.no_grad()
def count_conv_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Conv multiply-accumulates for one 1 x 3 x H x W image, as the papers count them.

    For every ``nn.Conv2d``: output elements x (C_in / groups) x kH x kW.
    Dilation does not change the count; bias would not be counted. The
    convolutions themselves are replaced by zeros of their output shape for
    the duration of the count, so counting costs milliseconds, not a forward
    pass (a new architecture's first real forward pays oneDNN's set-up).
    """
    total = 0
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    def fake_forward(mod: nn.Conv2d):
        def fwd(x: torch.Tensor) -> torch.Tensor:
            nonlocal total
            out = _conv_out(mod, x)
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            return out

        return fwd

    was_training = model.training
    try:
        model.eval()
        for m in convs:
            m.forward = fake_forward(m)
        model(_dummy(model, input_size))
    finally:
        for m in convs:
            del m.forward  # back to the class's forward
        model.train(was_training)
    return int(total)


@torch.no_grad()
def count_fvcore(model: nn.Module, input_size: tuple[int, int]) -> int:
    """fvcore ``FlopCountAnalysis(model, x).total()`` at batch 1 (MACs), its warnings silenced."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        fca = FlopCountAnalysis(model, _dummy(model, input_size))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(fca.total())
    finally:
        model.train(was_training)


@torch.no_grad()
def count_ptflops(model: nn.Module, input_size: tuple[int, int], backend: str) -> int:
    """ptflops MACs at batch 1 with ``backend`` in {"pytorch", "aten"}.

    Raises:
        ValueError: an unknown backend.
    """
    if backend not in ("pytorch", "aten"):
        raise ValueError(f"ptflops backend={backend!r}; allowed: pytorch, aten")
    from ptflops import get_model_complexity_info

    was_training = model.training
    model.eval()
    logging.getLogger("ptflops").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = get_model_complexity_info(
                model, (3, *input_size), as_strings=False, print_per_layer_stat=False, backend=backend, verbose=False
            )
        return int(macs)
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_latency(
    model: nn.Module, input_size: tuple[int, int], *, threads: int = 1, warmup: int = 5, repeats: int = 20
) -> tuple[float, int]:
    """Median wall-clock latency of one batch-1 forward pass on :func:`timing_input`, in ms.

    Args:
        threads: ``torch.set_num_threads`` during the measurement (restored
            after); recorded with the figure because latency depends on it.
        warmup: untimed passes first (allocator, oneDNN kernel selection).
        repeats: timed passes; the median is returned.

    Returns:
        ``(latency_ms, threads)``.
    """
    old = torch.get_num_threads()
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = timing_input(input_size).to(dtype=p.dtype, device=p.device)
    try:
        torch.set_num_threads(threads)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
        model.train(was_training)
    return statistics.median(times), threads


@dataclass(frozen=True)
class CostReport:
    """All cost figures of one network at one input size (batch 1).

    ``None`` marks a figure that was not requested. Units: parameters
    (count), MACs (multiply-accumulates), ms.
    """

    params: int
    conv_macs: int
    fvcore_total: int | None = None
    ptflops_pytorch: int | None = None
    ptflops_aten: int | None = None
    latency_ms: float | None = None
    latency_threads: int | None = None
    ort_latency_ms: float | None = None
    ort_threads: int | None = None
    ort_version: str | None = None
    input_size: tuple[int, int] = (224, 224)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cheap_cost(model: nn.Module, input_size: tuple[int, int]) -> CostReport:
    """Parameters and conv MACs of a built model (one batch-1 forward pass)."""
    return CostReport(
        params=count_params(model), conv_macs=count_conv_macs(model, input_size), input_size=tuple(input_size)
    )


def genotype_cost(genotype: Any, input_size: tuple[int, int]) -> CostReport:
    """Parameters and conv MACs of a genotype without computing anything.

    No convolution runs (see :func:`count_conv_macs`), so a search can check
    every candidate's budget in milliseconds, before any training.

    Raises:
        ValueError: the genotype cannot run at ``input_size``.
    """
    import warnings as _w

    from search_spaces import GateWarning, create_model, get_genotype

    genotype = get_genotype(genotype)
    input_size = genotype.check_input_size(input_size)
    with _w.catch_warnings():
        _w.simplefilter("ignore", GateWarning)
        model = create_model(genotype)
    return cheap_cost(model, input_size)


def cost_report(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    fvcore: bool = True,
    ptflops: bool = True,
    latency: bool = True,
    threads: int | None = None,
    ort: bool = False,
) -> CostReport:
    """Every counter on ``model`` at ``input_size``; see the module docstring.

    Args:
        threads: latency thread count, torch and ONNX Runtime alike (default:
            ``torch.get_num_threads()``, capped at ``os.cpu_count()``).
        ort: also export to ONNX and measure ONNX Runtime's CPU latency
            (:func:`nas.export.ort_latency_ms`; seconds of export).
    """
    base = cheap_cost(model, input_size)
    extra: dict[str, Any] = {}
    if fvcore:
        extra["fvcore_total"] = count_fvcore(model, input_size)
    if ptflops:
        extra["ptflops_pytorch"] = count_ptflops(model, input_size, "pytorch")
        extra["ptflops_aten"] = count_ptflops(model, input_size, "aten")
    if latency:
        n = threads or min(torch.get_num_threads(), os.cpu_count() or 1)
        extra["latency_ms"], extra["latency_threads"] = measure_latency(model, input_size, threads=n)
    if ort:
        from nas.export import ort_latency_ms

        r = ort_latency_ms(model, input_size, threads=threads or min(torch.get_num_threads(), os.cpu_count() or 1))
        extra.update(ort_latency_ms=r["ort_latency_ms"], ort_threads=r["ort_threads"], ort_version=r["ort_version"])
    return CostReport(params=base.params, conv_macs=base.conv_macs, input_size=tuple(input_size), **extra)
