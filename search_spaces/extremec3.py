"""ExtremeC3Net family: advanced C3 modules + a detail (fine) branch.

Source: Park et al., "ExtremeC3Net: Extreme Lightweight Portrait Segmentation
Networks using Advanced C3-modules", 2019, and the C3 module of "C3:
Concentrated-Comprehensive Convolution and its application to semantic
segmentation", 2018; the EG1800 configuration of the authors' release
(``../shared/REFERENCE.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import PortraitSegModel
from .blocks import BR, C3_DEFAULT_BN_EPS, CBR, AdvancedC3Module, upsample
from .genotype import BranchSpec, C3Genotype, C3ModuleSpec, C3Stage
from .registry import register_family, register_model

__all__ = ["ExtremeC3Net", "C3Encoder", "EXTREMEC3NET_EG1800", "ALIGN_CORNERS", "input_projection"]

# Every bilinear upsampling of the family is the release's UpsamplingBilinear2d (align_corners=True).
# A constant of the family, not a genotype field: no search varies it, and weights depend on it.
ALIGN_CORNERS = True


def input_projection(times: int) -> nn.Sequential:
    """The input image avg-pooled ``times`` times with AvgPool2d(2, stride 2, no padding).

    N x 3 x H x W -> N x 3 x H/2^times x W/2^times (floor), as the release's
    input pyramid (REFERENCE.md, "ExtremeC3Net", corrected: 2x2 stride 2, not
    ESPNet's 3x3 with padding). Same parameter and MAC counts either way; the
    released weights need this one.
    """
    return nn.Sequential(*(nn.AvgPool2d(2, 2) for _ in range(times)))


class C3Encoder(nn.Module):
    """ExtremeC3Net encoder: N x 3 x H x W -> N x ``out_channels`` x H/s x W/s.

    Stem CBR stride 2 concatenated with the input avg-pooled to H/2, then
    each stage BN+PReLU over the concat of its entry module's and last
    module's outputs (the release's order: (last, entry) in a downsampling
    stage, (entry, last) otherwise), plus the pooled input when injected.
    """

    def __init__(self, g: C3Genotype):
        super().__init__()
        self.stem = CBR(3, g.stem_channels, 3, 2)
        self.stem_pool = input_projection(1)
        self.stem_merge = BR(g.stem_channels + 3)
        c_in = g.stem_channels + 3
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.inject = nn.ModuleList()
        stride = 2
        for st in g.stages:
            stride *= st.modules[0].stride
            self.inject.append(input_projection(stride.bit_length() - 1) if st.inject_input else nn.Identity())
            mods, m_in = [], c_in
            for m in st.modules:
                mods.append(AdvancedC3Module(m_in, st.width, m.branches, m.residual, m.concentration, m.stride))
                m_in = st.width
            self.stages.append(nn.ModuleList(mods))
            c_in = 2 * st.width + (3 if st.inject_input else 0)
            self.merges.append(BR(c_in))
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem_merge(torch.cat([self.stem(x), self.stem_pool(x)], 1))
        for mods, merge, inject in zip(self.stages, self.merges, self.inject):
            down = mods[0].reduce.stride[0] == 2
            entry = mods[0](y)
            out = entry
            for m in mods[1:]:
                out = m(out)
            # The release's channel order: its downsampling stage concatenates (last, entry, input),
            # its stride-1 stage (entry, last). A permutation (same counts, same function when trained
            # from scratch), kept so the released weights load.
            parts = [out, entry] if down else [entry, out]
            parts += [inject(x)] if isinstance(inject, nn.Sequential) else []
            y = merge(torch.cat(parts, 1))
        return y


@register_family("extremec3net")
class ExtremeC3Net(PortraitSegModel):
    """An ExtremeC3Net-family network built from a :class:`C3Genotype`.

    Input N x 3 x H x W; output logits N x K x H x W (``coarse_fine`` or
    ``none`` decoder), or N x K x H/4 x W/4 for the stage-1 form. The 1x1
    ``classifier`` exists only where it is used (stage 1, ``none``), as in
    the release, so the full network's parameter count excludes it. Every
    bilinear upsampling uses ``align_corners=True`` (:data:`ALIGN_CORNERS`) and
    the coarse branch's BN keeps PyTorch's eps 1e-5, as released; the
    release's weights load through :mod:`nas.release`.
    """

    def __init__(self, genotype: C3Genotype):
        super().__init__(genotype)
        g = genotype
        k = g.num_classes
        self.encoder = C3Encoder(g)
        if g.encoder_only or g.decoder == "none":
            self.classifier = nn.Conv2d(self.encoder.out_channels, k, 1, bias=False)
            self.output_stride = g.output_stride if g.encoder_only else 1
            return
        h = g.head_channels
        self.coarse = nn.Sequential(
            nn.Conv2d(self.encoder.out_channels, h, 1, bias=False), nn.BatchNorm2d(h, eps=C3_DEFAULT_BN_EPS)
        )
        self.fine = None
        if g.detail_branch:
            m = g.detail_module
            self.fine = nn.Sequential(
                nn.Conv2d(3, h, 3, 2, 1, bias=False),
                AdvancedC3Module(h, h, m.branches, m.residual, m.concentration, m.stride),
            )
        self.fuse = BR(h)
        self.head = nn.Conv2d(h, k, 1, bias=False)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        g = self.genotype
        feats = self.encoder(x)
        if g.encoder_only:
            return self.classifier(feats)
        if g.decoder == "none":
            return upsample(self.classifier(feats), g.output_stride, align_corners=ALIGN_CORNERS)
        y = upsample(self.coarse(feats), 2, align_corners=ALIGN_CORNERS)
        if self.fine is not None:
            y = y + self.fine(x)
        return self.head(upsample(self.fuse(y), 2, align_corners=ALIGN_CORNERS))


def _c3(*dilations: int, residual: bool = True, stride: int = 1) -> C3ModuleSpec:
    return C3ModuleSpec(branches=tuple(BranchSpec(dilation=d) for d in dilations), residual=residual, stride=stride)


# EG1800 configuration of the release (REFERENCE.md): p = 1, q = 5.
EXTREMEC3NET_EG1800 = C3Genotype(
    stages=(
        C3Stage(width=48, inject_input=True, modules=(_c3(1, 2, 3, residual=False, stride=2), _c3(1, 3, 4))),
        C3Stage(width=56, modules=(_c3(1, 3, 5, residual=False),) + (_c3(2, 4, 8),) * 5),
    ),
    detail_module=_c3(2, 4, 8),
)


@register_model(family="extremec3net")
def extremec3net() -> C3Genotype:
    """ExtremeC3Net as released for EG1800 (37.7K parameters, 2 classes)."""
    return EXTREMEC3NET_EG1800


@register_model(family="extremec3net")
def extremec3net_encoder() -> C3Genotype:
    """ExtremeC3Net's stage-1 form: encoder + 1x1 classifier, logits at H/4."""
    return EXTREMEC3NET_EG1800.replace(encoder_only=True)
