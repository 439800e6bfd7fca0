"""Building blocks of SINet and ExtremeC3Net.

Shapes are given for an input of N x C x H x W. Conventions of the authors'
release (``../shared/REFERENCE.md``): every conv is bias-free, BatchNorm2d uses
eps=1e-3, PReLU has one slope per channel.

ExtremeC3Net's release leaves three kinds of BatchNorm at PyTorch's default
eps=1e-5 (``C3_DEFAULT_BN_EPS``): the two BNs of every C3 block's concentration
stage and the BN of the coarse branch. Counts do not see it; the released
weights do (REFERENCE.md, "Common pieces").

Sources:
    SINet: Park et al., "SINet: Extreme Lightweight Portrait Segmentation
    Networks with Spatial Squeeze Modules and Information Blocking Decoder",
    WACV 2020. C3 / advanced C3: Park et al., "C3: Concentrated-Comprehensive
    Convolution and its application to semantic segmentation", 2018, and
    "ExtremeC3Net: Extreme Lightweight Portrait Segmentation Networks using
    Advanced C3-modules", 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .genotype import BranchSpec

__all__ = [
    "BN_EPS",
    "C3_DEFAULT_BN_EPS",
    "CBR",
    "BR",
    "SqueezeExcite",
    "SESeparableDown",
    "channel_shuffle",
    "S2Block",
    "S2Module",
    "C3Block",
    "AdvancedC3Module",
    "InformationBlockingDecoder",
    "upsample",
]

BN_EPS = 1e-3
# PyTorch's default, kept by the release in ExtremeC3Net's concentration-stage and coarse-branch BNs.
C3_DEFAULT_BN_EPS = 1e-5


def upsample(x: torch.Tensor, scale: int, align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling by an integer ``scale``: N x C x H x W -> N x C x sH x sW."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners)


class BR(nn.Sequential):
    """BatchNorm + PReLU over ``channels``; shape-preserving."""

    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels, eps=BN_EPS), nn.PReLU(channels))


class CBR(nn.Sequential):
    """Conv k x k (same padding, bias-free) + BatchNorm + PReLU.

    N x c_in x H x W -> N x c_out x H/stride x W/stride.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=BN_EPS),
            nn.PReLU(c_out),
        )


class SqueezeExcite(nn.Module):
    """SINet's squeeze-excite: GAP, Linear(C, C/r), PReLU, Linear(C/r, C), PReLU, multiply.

    No sigmoid (as in the release). With ``reduction == 1`` a single
    Linear(C, C) + PReLU. The Linear layers keep their bias. Shape-preserving.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        if reduction > 1:
            hidden = channels // reduction
            self.dense = nn.Sequential(
                nn.Linear(channels, hidden), nn.PReLU(hidden), nn.Linear(hidden, channels), nn.PReLU(channels)
            )
        else:
            self.dense = nn.Sequential(nn.Linear(channels, channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dense(F.avg_pool2d(x, x.shape[2:]).flatten(1))
        return x * w[:, :, None, None]


class SESeparableDown(nn.Module):
    """SINet's downsampling block: depthwise 3x3 stride 2, SE, pointwise, BN, PReLU.

    ``se_reduction == 0`` drops the SE (the SE ablation).
    N x c_in x H x W -> N x c_out x H/2 x W/2.
    """

    def __init__(self, c_in: int, c_out: int, se_reduction: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False)
        self.se = SqueezeExcite(c_in, se_reduction) if se_reduction > 0 else nn.Identity()
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.br = BR(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(self.pointwise(self.se(self.depthwise(x))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: N x C x H x W (C % groups == 0), same shape."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class S2Block(nn.Module):
    """S2 block [k, d, s]: avg-pool s, depthwise k x k (dilation d), BN, PReLU, 1x1, upsample s, BN.

    The release's block has d = 1; d > 1 is the "dilated depthwise conv"
    alternative for widening the receptive field without pooling.
    N x C x H x W -> N x C x H x W (H, W divisible by s).
    """

    def __init__(self, channels: int, branch: BranchSpec):
        super().__init__()
        k, d, s = branch.kernel, branch.dilation, branch.pool
        self.pool = s
        self.squeeze = nn.AvgPool2d(s, s) if s > 1 else nn.Identity()
        self.depthwise = nn.Conv2d(channels, channels, k, 1, d * (k - 1) // 2, dilation=d, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.act(self.bn1(self.depthwise(self.squeeze(x)))))
        if self.pool > 1:
            x = upsample(x, self.pool, align_corners=True)
        return self.bn2(x)


class S2Module(nn.Module):
    """S2 module (spatial squeeze module) with n branches.

    Grouped 1x1 conv (n groups) c_in -> c_out/n, channel shuffle (n groups),
    n S2 blocks on that same tensor (not a split), concat -> c_out, identity
    residual when ``residual``, BN + PReLU.
    N x c_in x H x W -> N x c_out x H x W.
    """

    def __init__(self, c_in: int, c_out: int, branches: tuple[BranchSpec, ...], residual: bool):
        super().__init__()
        n = len(branches)
        self.groups = n
        self.reduce = nn.Conv2d(c_in, c_out // n, 1, groups=n, bias=False)
        self.branches = nn.ModuleList(S2Block(c_out // n, b) for b in branches)
        self.residual = residual
        self.br = BR(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(self.reduce(x), self.groups)
        out = torch.cat([b(y) for b in self.branches], 1)
        if self.residual:
            out = out + x
        return self.br(out)


class C3Block(nn.Module):
    """C3 block, dilation d (concentrated-comprehensive convolution).

    d = 1: depthwise k x k, pointwise 1x1. d > 1 with ``concentration``:
    depthwise (2d-1)x1, BN, PReLU, depthwise 1x(2d-1), BN, depthwise k x k
    with dilation d, pointwise 1x1. Without it: the naive depthwise dilated
    conv + pointwise. No BN or activation after the pointwise conv.
    N x c_in x H x W -> N x c_out x H x W.
    """

    def __init__(self, c_in: int, c_out: int, branch: BranchSpec, concentration: bool):
        super().__init__()
        k, d = branch.kernel, branch.dilation
        layers: list[nn.Module] = []
        if d > 1 and concentration:
            ck = 2 * d - 1
            layers += [
                nn.Conv2d(c_in, c_in, (ck, 1), 1, (d - 1, 0), groups=c_in, bias=False),
                nn.BatchNorm2d(c_in, eps=C3_DEFAULT_BN_EPS),
                nn.PReLU(c_in),
                nn.Conv2d(c_in, c_in, (1, ck), 1, (0, d - 1), groups=c_in, bias=False),
                nn.BatchNorm2d(c_in, eps=C3_DEFAULT_BN_EPS),
            ]
        layers += [
            nn.Conv2d(c_in, c_in, k, 1, d * (k - 1) // 2, dilation=d, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AdvancedC3Module(nn.Module):
    """Advanced C3 module with n branches.

    Full (not grouped) reduce c_in -> c_out // n (1x1, or 3x3 stride 2 when
    ``stride == 2``), n C3 blocks on that same tensor (the first also outputs
    the c_out % n remainder channels), concat -> c_out, residual when
    ``residual``, BN + PReLU.
    N x c_in x H x W -> N x c_out x H/stride x W/stride.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        branches: tuple[BranchSpec, ...],
        residual: bool,
        concentration: bool,
        stride: int = 1,
    ):
        super().__init__()
        n = len(branches)
        width, rem = divmod(c_out, n)
        k = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(c_in, width, k, stride, (k - 1) // 2, bias=False)
        self.branches = nn.ModuleList(
            C3Block(width, width + (rem if i == 0 else 0), b, concentration) for i, b in enumerate(branches)
        )
        self.residual = residual
        self.br = BR(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        out = torch.cat([b(y) for b in self.branches], 1)
        if self.residual:
            out = out + x
        return self.br(out)


class InformationBlockingDecoder(nn.Module):
    """SINet's decoder, gated (information blocking) or plain skip.

    Inputs: encoder logits N x K x H/8 x W/8 and the stage-2 features
    N x C2 x H/4 x W/4. A = BN(up x2(logits)); gate = 1 - max_c softmax(A)
    (not detached) when ``gated``, else 1; skip = CBR 1x1 (C2 -> K);
    B = BN(up x2(skip * gate + A)); output = conv 3x3 (K -> K) after a
    bilinear x2: N x K x H x W. With K = 1 the gate is identically 0.
    """

    def __init__(self, skip_channels: int, num_classes: int, gated: bool):
        super().__init__()
        self.gated = gated
        self.bn_low = nn.BatchNorm2d(num_classes, eps=BN_EPS)
        self.skip = CBR(skip_channels, num_classes, 1)
        self.bn_mid = nn.BatchNorm2d(num_classes, eps=BN_EPS)
        self.classifier = nn.Conv2d(num_classes, num_classes, 3, 1, 1, bias=False)

    def gate(self, a: torch.Tensor) -> torch.Tensor:
        """1 - confidence: N x K x h x w -> N x 1 x h x w (broadcast over classes)."""
        return 1.0 - F.softmax(a, dim=1).max(dim=1, keepdim=True)[0]

    def forward(self, logits: torch.Tensor, skip_features: torch.Tensor) -> torch.Tensor:
        a = self.bn_low(upsample(logits, 2, align_corners=True))
        s = self.skip(skip_features)
        if self.gated:
            s = s * self.gate(a)
        b = self.bn_mid(upsample(s + a, 2, align_corners=True))
        return self.classifier(upsample(b, 2, align_corners=True))
