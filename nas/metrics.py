"""Evaluation metrics for 2-class (background / person) portrait segmentation.

Two different numbers are both commonly called "mIoU"; they are named apart here ON PURPOSE
(see /work/shared/REFERENCE.md, "Training recipe"):

* ``miou`` -- what the SINet (Park et al., 2019) and ExtremeC3Net (Park et al., 2019) papers
  and their release (clovaai/ext_portrait_segmentation) report as "mIoU" on EG1800: the IoU of
  the FOREGROUND class computed per image, then averaged over images, x100 (at 224x224).
* ``miou_2class`` -- the usual semantic-segmentation mean IoU: per-class IoU from the
  confusion matrix pooled over all pixels of the set, averaged over both classes, x100.
  It is NOT the paper number; report it beside ``miou`` under its own name.
* ``fg_iou_global`` -- foreground IoU from the same pooled confusion matrix, x100. It differs
  from ``miou`` because pooling weights large people more than small ones.

Pixels whose target equals ``ignore_index`` (255) are excluded from every metric.
"""
from __future__ import annotations

import torch

__all__ = ["foreground_iou_per_image", "predictions_from_logits", "SegmentationMetrics"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 3 or tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} and target shape "
                         f"{tuple(target.shape)} must be equal (N, H, W); resize logits to "
                         f"the label resolution before evaluating")


def foreground_iou_per_image(pred: torch.Tensor, target: torch.Tensor,
                             ignore_index: int = 255) -> torch.Tensor:
    """Foreground (class 1) IoU of each image.

    ``IoU = |P & T| / |P | T|`` over the pixels with ``target != ignore_index``, where P is
    ``pred == 1`` (or ``pred`` itself if bool) and T is ``target == 1``.
    Convention: if the union is empty (neither prediction nor target has foreground among the
    valid pixels) the IoU is 1.0 -- a correct "no person" answer is a perfect answer.

    Args:
        pred: LongTensor or BoolTensor (N, H, W).
        target: LongTensor (N, H, W), values {0, 1, ignore_index}.

    Returns:
        FloatTensor (N,) in [0, 1] (not x100).

    Raises:
        ValueError: if the shapes differ or are not (N, H, W).
    """
    _check_pair(pred, target)
    valid = target != ignore_index
    p = (pred.long() == 1) & valid
    t = (target == 1) & valid
    inter = (p & t).sum(dim=(1, 2)).double()
    union = (p | t).sum(dim=(1, 2)).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
    return iou.float()


def predictions_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Hard labels from logits.

    Args:
        logits: (N, C, H, W); C >= 2 -> argmax over classes; C == 1 -> ``logits[:, 0] > 0``
            (a single foreground logit, e.g. trained with the Lovasz hinge).

    Returns:
        LongTensor (N, H, W).

    Raises:
        ValueError: if ``logits`` is not 4-D.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


class SegmentationMetrics:
    """Accumulates 2-class segmentation metrics over batches.

    ``update(x, target)`` takes either logits (N, C, H, W) (converted with
    predictions_from_logits) or hard predictions (N, H, W) (long or bool), with target
    (N, H, W) long in {0, 1, ignore_index}. ``compute()`` returns a dict:

    * ``miou``: per-image foreground IoU averaged over images, x100 -- THE number the
      SINet/ExtremeC3Net papers call "mIoU" (empty union -> 100 for that image).
    * ``miou_2class``: confusion-matrix mean IoU over background and foreground, x100 (a class
      whose pooled union is empty is left out of the mean). Not the paper's "mIoU".
    * ``fg_iou_global``: foreground IoU of the pooled confusion matrix, x100 (100 if the
      pooled union is empty).
    * ``pixel_acc``: fraction of valid pixels labelled correctly, x100.
    * ``n_images``: number of images seen.

    Raises (update): ValueError if prediction and target shapes differ (evaluation must
    resize logits to the label size first) or a valid label / prediction is not 0 or 1.
    Raises (compute): RuntimeError if nothing was accumulated.
    """

    num_classes = 2

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.confusion = torch.zeros(2, 2, dtype=torch.int64)  # [target, pred]
        self._per_image: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. See the class docstring for shapes."""
        x = logits_or_pred.detach()
        pred = predictions_from_logits(x) if x.dim() == 4 else x.long()
        target = target.detach().long()
        _check_pair(pred, target)
        pred, target = pred.cpu(), target.cpu()
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"target labels must be 0, 1 or {self.ignore_index}")
        if p.numel() and (p.min() < 0 or p.max() > 1):
            raise ValueError("predictions must be 0 or 1 (2-class metrics)")
        self.confusion += torch.bincount(t * 2 + p, minlength=4).reshape(2, 2)
        self._per_image.append(foreground_iou_per_image(pred, target, self.ignore_index))

    def per_image_iou(self) -> torch.Tensor:
        """Foreground IoU of every image seen so far, FloatTensor (n_images,) in [0, 1]."""
        if not self._per_image:
            return torch.zeros(0)
        return torch.cat(self._per_image)

    def compute(self) -> dict:
        """Return ``{miou, miou_2class, fg_iou_global, pixel_acc, n_images}`` (floats x100)."""
        per_image = self.per_image_iou()
        if per_image.numel() == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        class_iou = torch.where(present, tp / union.clamp_min(1.0), torch.ones_like(tp))
        miou_2class = float(class_iou[present].mean()) if bool(present.any()) else 1.0
        total = float(cm.sum())
        return {
            "miou": 100.0 * float(per_image.double().mean()),
            "miou_2class": 100.0 * miou_2class,
            "fg_iou_global": 100.0 * float(class_iou[1]),
            "pixel_acc": 100.0 * float(tp.sum()) / total if total > 0 else float("nan"),
            "n_images": int(per_image.numel()),
        }
