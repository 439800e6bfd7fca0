"""Zero-cost proxies: score an untrained network from one fixed batch, with no training.

Each proxy maps ``(model, images, labels)`` to one float, higher meaning "predicted better".
``nas-fidelity`` ranks architectures by them as rungs of zero training cost and measures how
well each ranking agrees with real training (Kendall tau against the top rung); parameter
count and conv MACs are the baselines a proxy must beat.

Conventions shared by every proxy here:

* ``images``: float tensor (N, 3, H, W), normalised like training; ``labels``: int64
  (N, H, W) with class ids (255 = ignore). N >= 2 (ZiCo needs two sub-batches).
* The model is scored as built (its seed's initialisation); the caller's model is not
  modified (proxies work on a deep copy where they change weights or modes).
* The loss of the gradient proxies is the training objective's data term: cross-entropy
  over the classes for a C >= 2 output, binary cross-entropy with logits for a 1-class
  output (the boundary term and class weights are left out: they are training choices,
  not properties of the architecture).
* Gradient proxies (snip, grad_norm, ZiCo) run in training mode (batch statistics, as at the
  first step of training); forward-only proxies (NASWOT, MeCo) too, as their papers do.

No maintained package implements these for arbitrary PyTorch segmentation networks, so
they are written here, small, each citing its paper.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROXIES", "synflow", "naswot", "snip", "grad_norm", "zico", "meco", "score_proxies", "seg_loss"]


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The data term used by the gradient proxies.

    Args:
        logits: (N, C, h, w); resized (bilinear) to the labels' (H, W) when they differ.
        labels: (N, H, W) int64, 255 = ignore.

    Returns:
        A scalar: mean cross-entropy (C >= 2) or binary cross-entropy with logits (C = 1).
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if logits.shape[1] == 1:
        valid = labels != 255
        return F.binary_cross_entropy_with_logits(logits[:, 0][valid], labels[valid].float())
    return F.cross_entropy(logits, labels, ignore_index=255)


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every Conv2d and Linear layer (the "prunable" layers of SNIP and its successors)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def _grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    seg_loss(model(images), labels).backward()
    return [w.grad.detach().clone() if w.grad is not None else torch.zeros_like(w) for w in _weights(model)]


@torch.no_grad()
def _linearise(model: nn.Module) -> None:
    for p in model.parameters():
        p.abs_()


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """SynFlow: the synaptic flow of the network with all weights made positive.

    Tanaka et al., "Pruning neural networks without any data by iteratively conserving
    synaptic flow", NeurIPS 2020; used as a NAS proxy by Abdelfattah et al., "Zero-Cost
    Proxies for Lightweight NAS", ICLR 2021.

    Computed: on a float64 copy with every parameter replaced by its absolute value and
    batch norm in eval mode with its initial statistics (mean 0, variance 1: the
    no-batch-norm variant of Abdelfattah et al.), R = sum of the outputs for one all-ones
    input of ``images``' shape (1, 3, H, W); the synaptic flow is the sum over every
    parameter of |theta * dR/dtheta|, and the score is its natural log (the flow spans tens of
    orders of magnitude across architectures; the log keeps its ranking and makes its seed
    noise readable). No data is used. For a chain of L positive linear maps the flow is L * R.
    """
    net = copy.deepcopy(model).double().eval()
    _linearise(net)
    net.zero_grad(set_to_none=True)
    x = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
    net(x).sum().backward()
    flow = sum((p.detach() * p.grad).abs().sum() for p in net.parameters() if p.grad is not None)
    return float(torch.log(flow)) if flow > 0 else -math.inf


def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """NASWOT: log |det K| of the Hamming-agreement kernel of binary activation codes.

    Mellor et al., "Neural Architecture Search without Training", ICML 2021.

    Computed: every ReLU/PReLU unit's input sign (pre-activation > 0) gives each image a
    binary code c_i; K_ij = number of units where c_i and c_j agree
    (c_i . c_j + (1 - c_i) . (1 - c_j)), summed over all activation layers; the score is
    ``slogdet(K)``'s log-absolute-determinant (float64). Distinct codes for distinct images
    give a large score; identical codes a singular K (-inf).
    """
    net = copy.deepcopy(model).train()
    n = images.shape[0]
    k = torch.zeros((n, n), dtype=torch.float64, device=images.device)

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        c = (inp[0].detach().reshape(n, -1) > 0).double()
        k.add_(c @ c.t() + (1 - c) @ (1 - c).t())

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.ReLU, nn.PReLU))]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in hooks:
            h.remove()
    return float(torch.linalg.slogdet(k)[1])


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SNIP: connection sensitivity, sum of |w * dL/dw| over conv and linear weights.

    Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR
    2019; as a NAS proxy, Abdelfattah et al., ICLR 2021. L is :func:`seg_loss` on the batch.
    """
    net = copy.deepcopy(model).train()
    grads = _grads(net, images, labels)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(_weights(net), grads)))


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """grad_norm: sum over conv and linear layers of the Euclidean norm of dL/dW.

    Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021. L is
    :func:`seg_loss` on the batch.
    """
    net = copy.deepcopy(model).train()
    return float(sum(g.norm() for g in _grads(net, images, labels)))


def zico(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, splits: int = 2) -> float:
    """ZiCo: sum over layers of log(sum over weights of mean|g| / std(g)) across sub-batches.

    Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR
    2023. Computed: the batch is cut into ``splits`` equal sub-batches; for every conv and
    linear weight, its gradient of :func:`seg_loss` on each sub-batch; per weight element
    the mean absolute gradient over sub-batches divided by the standard deviation over
    sub-batches (elements with zero std are skipped); summed per layer, the log of each
    positive layer sum is added up.

    Raises:
        ValueError: fewer images than ``splits`` (>= 2).
    """
    if splits < 2 or images.shape[0] < splits:
        raise ValueError(f"zico needs >= 2 sub-batches of >= 1 image: {images.shape[0]} images, splits={splits}")
    net = copy.deepcopy(model).train()
    per = [_grads(net, x, y) for x, y in zip(images.chunk(splits), labels.chunk(splits))]
    score = 0.0
    for layer in zip(*per):
        g = torch.stack(layer)  # (splits, *weight shape)
        std, mean_abs = g.std(dim=0), g.abs().mean(dim=0)
        nz = std != 0
        s = float((mean_abs[nz] / std[nz]).sum())
        if s > 0:
            score += math.log(s)
    return score


def meco(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """MeCo: sum over layers of the minimum eigenvalue of the channels' Pearson correlation.

    Jiang et al., "MeCo: Zero-Shot NAS with One Data and Single Forward Pass via Minimum
    Eigenvalue of Pearson Correlation", NeurIPS 2023. Computed: one forward pass; for the
    output of every Conv2d, the first image's feature map (C, H*W); its C x C Pearson
    correlation matrix between channels (NaN from constant channels set to 0); the minimum
    eigenvalue (``eigvalsh``, float64); summed over layers.
    """
    net = copy.deepcopy(model).train()
    total = torch.zeros((), dtype=torch.float64)

    def hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        fea = out[0].detach().double().reshape(out.shape[1], -1)
        if fea.shape[0] < 2:
            return
        corr = torch.nan_to_num(torch.corrcoef(fea), nan=0.0, posinf=0.0, neginf=0.0)
        total.add_(torch.linalg.eigvalsh(corr).min().cpu())

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in hooks:
            h.remove()
    return float(total)


#: name -> proxy. Every proxy takes (model, images, labels) and returns a float, higher = better.
PROXIES: dict[str, Callable[..., float]] = {
    "synflow": synflow,
    "naswot": naswot,
    "snip": snip,
    "grad_norm": grad_norm,
    "zico": zico,
    "meco": meco,
}


def score_proxies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, names: list[str] | None = None,
                  ) -> dict[str, dict[str, float]]:
    """Every proxy in ``names`` (default all) on one batch, with its cost.

    Returns:
        ``{name: {"score": float, "cpu_s": CPU-seconds of this process, "wall_s": seconds}}``.

    Raises:
        ValueError: an unknown proxy name (the message lists the known ones).
    """
    names = list(PROXIES) if names is None else list(names)
    unknown = sorted(set(names) - set(PROXIES))
    if unknown:
        raise ValueError(f"unknown proxy name(s) {unknown}; known: {sorted(PROXIES)}")
    out = {}
    for name in names:
        c0, t0 = time.process_time(), time.perf_counter()
        score = PROXIES[name](model, images, labels)
        out[name] = {"score": score, "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}
    return out
