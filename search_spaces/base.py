"""The shared base class of every network built from a genotype."""

from __future__ import annotations

import torch
from torch import nn

from .genotype import Genotype, warn_if_zero_gate

__all__ = ["PortraitSegModel"]


class PortraitSegModel(nn.Module):
    """Base of the network families: genotype, input check, ``predict``.

    Subclasses build themselves from ``self.genotype`` and implement
    :meth:`forward_logits`. ``forward`` checks the input shape first.

    Attributes:
        genotype: the frozen genotype this network was built from.
        num_classes: K, the number of output channels.
        output_stride: 1 for a full network (logits N x K x H x W), the
            encoder's stride for a stage-1 (``encoder_only``) network.
    """

    output_stride: int = 1

    def __init__(self, genotype: Genotype):
        super().__init__()
        warn_if_zero_gate(genotype)
        self.genotype = genotype
        self.num_classes = genotype.num_classes
        self._allowed_sizes: dict[tuple[int, int], bool] = {}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is N x 3 x H x W with a size the genotype allows."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        size = (int(x.shape[2]), int(x.shape[3]))
        if size not in self._allowed_sizes:
            try:  # the genotype's own validation knows every size constraint
                self.genotype.check_input_size(size)
                self._allowed_sizes[size] = True
            except ValueError as exc:
                raise ValueError(f"input size {size[0]}x{size[1]} not allowed by this genotype: {exc}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W (normalised RGB) -> logits N x K x H/s x W/s (s = ``output_stride``)."""
        self.check_input(x)
        return self.forward_logits(x)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Hard masks N x H/s x W/s (int64, 1 = person): argmax, or logit > 0 for K = 1."""
        was_training = self.training
        self.eval()
        logits = self(x)
        self.train(was_training)
        return logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
