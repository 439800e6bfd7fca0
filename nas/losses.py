"""Segmentation losses of the SINet / ExtremeC3Net training recipe.

Sources
-------
* Class weights 1/ln(c + p_c): ENet (Paszke et al., 2016, "ENet: A Deep Neural Network
  Architecture for Real-Time Semantic Segmentation", sec. 5.2, c = 1.02 there); the portrait
  release (clovaai/ext_portrait_segmentation) uses c = 1.10 over the training-label histogram.
* Boundary term: the release's "CE" option adds the same loss computed only inside the band
  dilate(y) - erode(y) (15x15 window at full resolution, 5x5 at the stage-1 label resolution),
  weighted 0.5 (see /work/shared/REFERENCE.md, "Training recipe").
* Lovasz hinge: Berman, Triki & Blaschko, CVPR 2018, "The Lovasz-Softmax loss: A tractable
  surrogate for the optimization of the intersection-over-union measure in neural networks";
  per-image variant averaged over the images of the batch, as the release uses it.
  Reimplemented here from the paper's algorithm.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "class_weights_from_masks",
    "boundary_band",
    "boundary_band_pooled",
    "lovasz_hinge",
    "SegmentationLoss",
    "downsample_labels",
]

_KINDS = ("ce", "lovasz")


def class_weights_from_masks(masks, num_classes: int = 2, c: float = 1.10,
                             ignore_index: int = 255) -> torch.Tensor:
    """ENet-style class weights ``w_c = 1 / ln(c + p_c)``.

    Args:
        masks: label array/tensor of any shape (e.g. (N, H, W)) with integer class ids in
            ``[0, num_classes)``; pixels equal to ``ignore_index`` are not counted.
        num_classes: number of classes C.
        c: the ENet constant (1.02 in ENet, 1.10 in the portrait release).
        ignore_index: label value excluded from the histogram.

    Returns:
        float32 tensor (C,); ``p_c`` is the fraction of counted pixels of class c.

    Raises:
        ValueError: if a label is outside ``[0, num_classes)`` and not ``ignore_index``, if no
            pixel is counted, or if ``c + p_c <= 1`` for some class (weight undefined/negative).
    """
    if isinstance(masks, torch.Tensor):
        arr = masks.detach().cpu().numpy()
    else:
        arr = np.asarray(masks)
    flat = arr.reshape(-1).astype(np.int64)
    flat = flat[flat != ignore_index]
    if flat.size == 0:
        raise ValueError("class_weights_from_masks: no labelled pixels (all ignored or empty)")
    if flat.min() < 0 or flat.max() >= num_classes:
        raise ValueError(f"class_weights_from_masks: labels must lie in [0, {num_classes}) or "
                         f"equal ignore_index={ignore_index}; got range "
                         f"[{flat.min()}, {flat.max()}]")
    hist = np.bincount(flat, minlength=num_classes).astype(np.float64)
    p = hist / hist.sum()
    if np.any(c + p <= 1.0):
        raise ValueError(f"class_weights_from_masks: c={c} gives c + p_c <= 1; use c > 1")
    w = 1.0 / np.log(c + p)
    return torch.tensor(w, dtype=torch.float32)


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) \
            or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive int, got window={window!r}")
    return int(window)


def boundary_band(target: torch.Tensor, window: int, ignore_index: int = 255) -> torch.Tensor:
    """Boundary band ``dilate(y) != erode(y)`` with a ``window x window`` square element.

    ``y`` is the label map with ignored pixels counted as background (0). Grey-level
    dilation / erosion are the max / min over the window, so a pixel is in the band when its
    window holds more than one class: the union of every class's edge band. For 2-class
    labels this is the foreground's ``dilate - erode`` band of the release. OpenCV's
    ``dilate``/``erode`` do the work (labels need no gradient; this is ~50x faster than
    max-pooling in torch on a 24 x 224 x 224 batch). Their default border value is neutral,
    so the image border does not erode a mask (a one-class mask gives an empty band).

    Args:
        target: LongTensor (N, H, W) of labels (class ids 0..K-1, or ``ignore_index``).
        window: odd positive side of the square structuring element, in pixels.

    Returns:
        BoolTensor (N, H, W), True inside the band.

    Raises:
        ValueError: if ``window`` is not an odd positive int or ``target`` is not 3-D.
    """
    window = _check_window(window)
    if target.dim() != 3:
        raise ValueError(f"boundary_band: target must be (N, H, W), got shape "
                         f"{tuple(target.shape)}")
    if target.device.type != "cpu":
        return boundary_band_pooled(target, window, ignore_index)
    t = target.clamp(0, 255)
    y = torch.where(target == ignore_index, torch.zeros_like(t), t).to(torch.uint8).cpu().numpy()
    kernel = np.ones((window, window), np.uint8)
    band = np.stack([cv2.dilate(m, kernel) != cv2.erode(m, kernel) for m in y]) if len(y) else y.astype(bool)
    return torch.from_numpy(band).to(target.device)


def boundary_band_pooled(target: torch.Tensor, window: int, ignore_index: int = 255) -> torch.Tensor:
    """:func:`boundary_band` with max-pooling, on ``target``'s device (the path taken off the CPU).

    Dilation is a ``window x window`` max-pool of the label map, erosion the max-pool of its
    negation; the pools pad with -inf, which is OpenCV's neutral border, so the band equals
    :func:`boundary_band`'s pixel for pixel (the union of every class's edges).

    Args:
        target: LongTensor (N, H, W) of labels. window: odd positive side, in pixels.

    Returns:
        BoolTensor (N, H, W) on ``target.device``.

    Raises:
        ValueError: as :func:`boundary_band`.
    """
    window = _check_window(window)
    if target.dim() != 3:
        raise ValueError(f"boundary_band: target must be (N, H, W), got shape {tuple(target.shape)}")
    # label maps (ignored pixels as background): grey dilation = local max, erosion = local min, so the
    # band is the union of every class's edges, as on the CPU; labels <= 255 are exact in float16
    t = torch.where(target == ignore_index, torch.zeros_like(target), target.clamp(0, 255))
    y = t.unsqueeze(1).to(torch.float16 if target.is_cuda else torch.float32)
    pad = window // 2
    dilated = F.max_pool2d(y, window, stride=1, padding=pad)
    eroded = -F.max_pool2d(-y, window, stride=1, padding=pad)
    return (dilated != eroded).squeeze(1)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor,
                 ignore_index: int = 255, per_image: bool = True) -> torch.Tensor:
    """Binary Lovasz hinge (Berman et al. 2018), per image, averaged over the batch.

    With ``per_image=False`` the whole batch is one flattened image (the release's ExtremeC3Net
    training, ``per_img=False``): one sort over N*H*W pixels.

    Per image: hinge errors ``m = 1 - s * sign`` (sign +1 foreground, -1 background) over the
    valid pixels, sorted in decreasing order, then ``loss = <relu(m_sorted), g>`` where ``g``
    is the gradient of the Lovasz extension of the Jaccard loss,
    ``g_i = J_i - J_{i-1}``, ``J_i = 1 - |fg minus first i| / |fg union first i|``.
    All images are sorted in one batched call; ignored pixels get error -inf, so they sort
    after every valid pixel and contribute relu(-inf) = 0 (the same value and gradient as
    dropping them). An image with no valid pixel
    contributes 0 and still counts in the mean (as in the paper's reference code).

    Args:
        logits: (N, H, W) single-channel scores (foreground if > 0).
        target: (N, H, W) long, values in {0, 1} or ``ignore_index``.

    Returns:
        scalar tensor.
    """
    n = logits.shape[0] if per_image else 1
    s = logits.reshape(n, -1)
    t = target.reshape(n, -1)
    valid = t != ignore_index
    gt = ((t == 1) & valid).to(s.dtype)
    errors = 1.0 - s * (2.0 * gt - 1.0)
    errors = torch.where(valid, errors, torch.full_like(errors, -math.inf))
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    with torch.no_grad():
        gt_sorted = gt.gather(1, perm)
        gts = gt_sorted.sum(1, keepdim=True)
        intersection = gts - gt_sorted.cumsum(1)
        # ignored pixels sit after every valid one: what they add to the union only meets
        # relu(-inf) = 0, so they need no masking here
        union = gts + (1.0 - gt_sorted).cumsum(1)
        jaccard = 1.0 - intersection / union.clamp_min(1.0)
        grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_image = (F.relu(errors_sorted) * grad).sum(1)
    return per_image.mean()


def _weighted_ce(logits, target, weight, ignore_index) -> torch.Tensor:
    """Weighted-mean cross-entropy (the value of F.cross_entropy(..., reduction='mean')),
    but 0 (with a graph) instead of NaN when the weighted pixel count is 0 (all ignored)."""
    valid = target != ignore_index
    if logits.device.type != "cpu":  # no host synchronisation on an accelerator
        return _weighted_ce_nosync(logits, target, weight, ignore_index)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    if weight is None or bool((weight > 0).all()):
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                reduction="none")
    safe = torch.where(valid, target, torch.zeros_like(target))
    denom = (weight[safe] * valid.to(logits.dtype)).sum()
    if float(denom) <= 0.0:
        return logits.sum() * 0.0
    return per_pixel.sum() / denom


def _weighted_ce_nosync(logits, target, weight, ignore_index) -> torch.Tensor:
    """:func:`_weighted_ce` as one masked expression (no data-dependent branch, so no host sync)."""
    valid = target != ignore_index
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none")
    w = valid.to(logits.dtype) if weight is None else weight[torch.where(valid, target, 0)] * valid
    denom = w.sum()
    return torch.where(denom > 0, per_pixel.sum() / denom.clamp_min(1e-12), logits.sum() * 0.0)


class SegmentationLoss(torch.nn.Module):
    """Loss of the release: main loss + ``boundary_weight`` x the same loss inside the band.

    Args:
        kind: ``"ce"`` (weighted cross-entropy, needs C >= 2 logit channels) or ``"lovasz"``
            (binary Lovasz hinge on a single logit channel, C == 1).
        class_weights: optional (C,) weights for ``"ce"`` (see class_weights_from_masks);
            must be None for ``"lovasz"`` (the Lovasz hinge has no class weights).
        boundary: add the boundary term.
        boundary_window: odd side of the band's square element, in label pixels (15 at full
            resolution, 5 for stage-1 labels at 1/8 or 1/4 resolution).
        boundary_weight: weight of the boundary term (0.5 in the release).
        ignore_index: label ignored by both terms.
        lovasz_per_image: the Lovasz hinge per image, averaged (True), or over the whole batch
            flattened (False, as the release trains ExtremeC3Net).

    The boundary term is the same loss on a copy of the target whose pixels outside
    ``boundary_band(target, boundary_window)`` are set to ``ignore_index``. For ``"ce"`` it is
    0 (not NaN) when the band is empty in the whole batch. For ``"lovasz"`` it is the per-image
    Lovasz hinge over band pixels only, averaged over all images (band-less images give 0).

    forward(logits (N, C, H, W), target (N, H, W) long) -> scalar tensor.

    Raises:
        ValueError: unknown ``kind``; ``kind``/channel-count mismatch; target shape not equal
            to (N, H, W) of the logits; bad ``boundary_window``; class weights of wrong length
            or given with ``"lovasz"``; Lovasz labels outside {0, 1, ignore_index}
            (checked on the CPU only: elsewhere the check would cost a host synchronisation per step).
    """

    def __init__(self, kind: str = "ce", class_weights: torch.Tensor | None = None,
                 boundary: bool = True, boundary_window: int = 15,
                 boundary_weight: float = 0.5, ignore_index: int = 255, lovasz_per_image: bool = True):
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got kind={kind!r}")
        if kind == "lovasz" and class_weights is not None:
            raise ValueError("kind='lovasz' takes no class_weights (pass None)")
        self.kind = kind
        self.boundary = bool(boundary)
        self.boundary_window = _check_window(boundary_window)
        self.boundary_weight = float(boundary_weight)
        self.ignore_index = int(ignore_index)
        self.lovasz_per_image = bool(lovasz_per_image)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        self.register_buffer("class_weights", class_weights)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, boundary={self.boundary}, "
                f"boundary_window={self.boundary_window}, "
                f"boundary_weight={self.boundary_weight}, ignore_index={self.ignore_index}")

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 4:
            raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
        n, ch, h, w = logits.shape
        if tuple(target.shape) != (n, h, w):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape "
                             f"{tuple(logits.shape)} (expected ({n}, {h}, {w}); resize labels "
                             f"with downsample_labels)")
        if self.kind == "ce" and ch < 2:
            raise ValueError(f"kind='ce' needs >= 2 logit channels, got C={ch}")
        if self.kind == "lovasz" and ch != 1:
            raise ValueError(f"kind='lovasz' needs exactly 1 logit channel, got C={ch}")
        if self.class_weights is not None and self.class_weights.numel() != ch:
            raise ValueError(f"class_weights has {self.class_weights.numel()} entries but "
                             f"logits have C={ch} channels")

    def _term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            w = None if self.class_weights is None else self.class_weights.to(logits)
            return _weighted_ce(logits, target, w, self.ignore_index)
        return lovasz_hinge(logits[:, 0], target, self.ignore_index, per_image=self.lovasz_per_image)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        target = target.long()
        if self.kind == "lovasz" and target.device.type == "cpu":  # off the CPU: no host sync per step
            bad = (target != self.ignore_index) & ((target < 0) | (target > 1))
            if bool(bad.any()):
                raise ValueError("kind='lovasz' needs labels in {0, 1} or ignore_index")
        loss = self._term(logits, target)
        if self.boundary:
            band = boundary_band(target, self.boundary_window, self.ignore_index)
            t_band = torch.where(band, target, torch.full_like(target, self.ignore_index))
            loss = loss + self.boundary_weight * self._term(logits, t_band)
        return loss


def downsample_labels(target: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of labels (stage-1 training against low-res encoder logits).

    Args:
        target: LongTensor (N, H, W).
        size: (h, w) output size in pixels.

    Returns:
        LongTensor (N, h, w); ``ignore_index`` values survive unchanged.

    Raises:
        ValueError: if ``target`` is not 3-D or ``size`` is not two positive ints.
    """
    if target.dim() != 3:
        raise ValueError(f"downsample_labels: target must be (N, H, W), got shape "
                         f"{tuple(target.shape)}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"downsample_labels: size must be (h, w) positive, got {size}")
    out = F.interpolate(target.unsqueeze(1).float(), size=size, mode="nearest")
    return out.squeeze(1).to(target.dtype)
