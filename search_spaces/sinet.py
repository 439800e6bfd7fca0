"""SINet family: spatial squeeze (S2) modules + information-blocking decoder.

Source: Park et al., "SINet: Extreme Lightweight Portrait Segmentation Networks
with Spatial Squeeze Modules and Information Blocking Decoder", WACV 2020; the
EG1800 configuration of the authors' release (``../shared/REFERENCE.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import PortraitSegModel
from .blocks import BR, CBR, InformationBlockingDecoder, S2Module, SESeparableDown, upsample
from .genotype import BranchSpec, S2ModuleSpec, SINetGenotype, SINetStage
from .registry import register_family, register_model

__all__ = ["SINet", "SINetEncoder", "SINET_EG1800"]


class SINetEncoder(nn.Module):
    """SINet encoder: N x 3 x H x W -> features.

    ``forward`` returns ``(features_1_8, stage2_out)``: the BR over
    concat(down, stage) at H/8 (``out_channels[1]`` channels) and the last
    stage-2 module's output at H/4 (``skip_channels``).
    """

    def __init__(self, g: SINetGenotype):
        super().__init__()
        self.stem = CBR(3, g.stem_channels, 3, 2)
        c_in = g.stem_channels
        self.downs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        for st in g.stages:
            self.downs.append(SESeparableDown(c_in, st.down_channels, st.se_reduction))
            mods, m_in = [], st.down_channels
            for m in st.modules:
                mods.append(S2Module(m_in, st.width, m.branches, m.residual))
                m_in = st.width
            self.stages.append(nn.Sequential(*mods))
            c_in = st.down_channels + st.width
            self.merges.append(BR(c_in))
        self.out_channels = c_in
        self.skip_channels = g.stages[0].width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        skip = x
        for i, (down, stage, merge) in enumerate(zip(self.downs, self.stages, self.merges)):
            d = down(x)
            s = stage(d)
            if i == 0:
                skip = s
            x = merge(torch.cat([d, s], 1))
        return x, skip


@register_family("sinet")
class SINet(PortraitSegModel):
    """A SINet-family network built from a :class:`SINetGenotype`.

    Input N x 3 x H x W; output logits N x K x H x W, or N x K x H/8 x W/8
    for the stage-1 (``encoder_only``) form. Parameter names are shared by
    both forms, so stage-1 weights load into the full network unchanged.
    """

    def __init__(self, genotype: SINetGenotype):
        super().__init__(genotype)
        g = genotype
        self.encoder = SINetEncoder(g)
        self.classifier = nn.Conv2d(self.encoder.out_channels, g.num_classes, 1, bias=False)
        self.decoder = None
        if g.encoder_only:
            self.output_stride = 8
        elif g.decoder != "none":
            self.decoder = InformationBlockingDecoder(
                self.encoder.skip_channels, g.num_classes, gated=g.decoder == "information_blocking"
            )

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        feats, skip = self.encoder(x)
        logits = self.classifier(feats)
        if self.genotype.encoder_only:
            return logits
        if self.decoder is None:
            return upsample(logits, 8, align_corners=True)
        return self.decoder(logits, skip)


def _s2(*pairs: tuple[int, int], residual: bool = True) -> S2ModuleSpec:
    return S2ModuleSpec(branches=tuple(BranchSpec(kernel=k, pool=s) for k, s in pairs), residual=residual)


# Per-module [kernel, pool] pairs of the EG1800 release (REFERENCE.md).
SINET_EG1800 = SINetGenotype(
    stages=(
        SINetStage(
            down_channels=16,
            se_reduction=1,
            width=48,
            modules=(_s2((3, 1), (5, 1), residual=False), _s2((3, 1), (3, 1))),
        ),
        SINetStage(
            down_channels=48,
            se_reduction=2,
            width=96,
            modules=(
                _s2((3, 1), (5, 1), residual=False),
                _s2((3, 1), (3, 1)),
                _s2((5, 1), (3, 2)),
                _s2((5, 2), (3, 4)),
                _s2((3, 1), (3, 1)),
                _s2((5, 1), (5, 1)),
                _s2((3, 2), (3, 4)),
                _s2((3, 1), (5, 2)),
            ),
        ),
    ),
)


@register_model(family="sinet")
def sinet() -> SINetGenotype:
    """SINet as released for EG1800 (86.9K parameters, 2 classes; WACV 2020)."""
    return SINET_EG1800


@register_model(family="sinet")
def sinet_encoder() -> SINetGenotype:
    """SINet's stage-1 form: the encoder with its 1x1 classifier, logits at H/8."""
    return SINET_EG1800.replace(encoder_only=True)
