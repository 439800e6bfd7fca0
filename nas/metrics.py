"""Evaluation metrics for portrait segmentation: 2-class (background / person) and K-class label maps.

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

* ``class_iou`` / ``miou_cm`` -- per-class IoU from the pooled confusion matrix (x100, by class
  name) and their mean over the classes present: EasyPortrait's convention, the headline of a
  K > 2 data set (for K = 2, ``miou_cm`` equals ``miou_2class``). A K > 2 set has no ``miou``:
  its per-image figure is ``image_miou``, each image's mean class IoU, averaged.

Pixels whose target equals ``ignore_index`` (255) are excluded from every metric.
"""
from __future__ import annotations

import torch

__all__ = ["class_iou_per_image", "foreground_iou_per_image", "predictions_from_logits", "SegmentationMetrics"]


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


def class_iou_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> torch.Tensor:
    """Each image's mean IoU over the classes present in its prediction or target.

    Args:
        pred: LongTensor (N, H, W) in [0, K). target: LongTensor (N, H, W) in [0, K) or ``ignore_index``.
        num_classes: K.

    Returns:
        FloatTensor (N,) in [0, 1]; an image without a valid pixel scores 1.0.

    Raises:
        ValueError: if the shapes differ or are not (N, H, W).
    """
    _check_pair(pred, target)
    valid = target != ignore_index
    inter = torch.zeros(pred.shape[0], num_classes, dtype=torch.float64)
    union = torch.zeros_like(inter)
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        inter[:, c] = (p & t).sum(dim=(1, 2)).double()
        union[:, c] = (p | t).sum(dim=(1, 2)).double()
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1.0), torch.zeros_like(union)).sum(1)
    n = present.sum(1)
    return torch.where(n > 0, iou / n.clamp_min(1), torch.ones_like(iou)).float()


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
    """Accumulates segmentation metrics over batches (2 classes, or K > 2 for label maps).

    ``update(x, target)`` takes either logits (N, C, H, W) (converted with
    predictions_from_logits) or hard predictions (N, H, W) (long or bool), with target
    (N, H, W) long in [0, K) or ignore_index. ``compute()`` returns a dict:

    * ``miou`` (K = 2 only): per-image foreground IoU averaged over images, x100 -- THE number
      the SINet/ExtremeC3Net papers call "mIoU" (empty union -> 100 for that image).
    * ``miou_2class`` (K = 2 only): confusion-matrix mean IoU over background and foreground,
      x100 (a class whose pooled union is empty is left out of the mean). Not the paper's "mIoU".
    * ``fg_iou_global`` (K = 2 only): foreground IoU of the pooled confusion matrix, x100 (100
      if the pooled union is empty).
    * ``class_iou``: ``{class name: IoU x100}`` from the pooled confusion matrix (100 for a class
      whose pooled union is empty); ``miou_cm``: their mean over the classes with a non-empty
      union, x100 (EasyPortrait's convention; equals ``miou_2class`` for K = 2).
    * ``image_miou`` (K > 2 only): each image's mean class IoU (classes present), averaged, x100.
    * ``pixel_acc``: fraction of valid pixels labelled correctly, x100.
    * ``n_images``: number of images seen.

    Args:
        num_classes: K >= 2 (default 2).
        class_names: K names (default background, person for K = 2, ``class_<k>`` otherwise).

    Raises (init): ValueError for K < 2 or a wrong number of names.
    Raises (update): ValueError if prediction and target shapes differ (evaluation must
    resize logits to the label size first) or a valid label / prediction is outside [0, K).
    Raises (compute): RuntimeError if nothing was accumulated.
    """

    def __init__(self, ignore_index: int = 255, num_classes: int = 2, class_names=None):
        if int(num_classes) < 2:
            raise ValueError(f"num_classes={num_classes}; metrics need >= 2 classes (a 1-logit net scores 2)")
        self.num_classes = int(num_classes)
        names = list(class_names) if class_names else (
            ["background", "person"] if self.num_classes == 2 else [f"class_{k}" for k in range(self.num_classes)])
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for num_classes={self.num_classes}")
        self.class_names = names
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        k = self.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64)  # [target, pred]
        self._per_image: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. See the class docstring for shapes."""
        x = logits_or_pred.detach()
        pred = predictions_from_logits(x) if x.dim() == 4 else x.long()
        target = target.detach().long()
        _check_pair(pred, target)
        pred, target = pred.cpu(), target.cpu()
        k = self.num_classes
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        if t.numel() and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target labels must be in 0..{k - 1} or {self.ignore_index}")
        if p.numel() and (p.min() < 0 or p.max() >= k):
            raise ValueError("predictions must be 0 or 1 (2-class metrics)" if k == 2 else
                             f"predictions must be in 0..{k - 1} ({k}-class metrics)")
        self.confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        if k == 2:
            self._per_image.append(foreground_iou_per_image(pred, target, self.ignore_index))
        else:
            self._per_image.append(class_iou_per_image(pred, target, k, self.ignore_index))

    def per_image_iou(self) -> torch.Tensor:
        """Per-image IoU of every image seen so far, FloatTensor (n_images,) in [0, 1]: the
        foreground IoU for K = 2, the image's mean class IoU for K > 2."""
        if not self._per_image:
            return torch.zeros(0)
        return torch.cat(self._per_image)

    def compute(self) -> dict:
        """The metrics of the class docstring (floats x100, ``class_iou`` a dict, ``n_images`` an int)."""
        per_image = self.per_image_iou()
        if per_image.numel() == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        class_iou = torch.where(present, tp / union.clamp_min(1.0), torch.ones_like(tp))
        miou_cm = float(class_iou[present].mean()) if bool(present.any()) else 1.0
        total = float(cm.sum())
        out: dict = {}
        if self.num_classes == 2:
            out.update(miou=100.0 * float(per_image.double().mean()), miou_2class=100.0 * miou_cm,
                       fg_iou_global=100.0 * float(class_iou[1]))
        else:
            out["image_miou"] = 100.0 * float(per_image.double().mean())
        out.update(
            miou_cm=100.0 * miou_cm,
            class_iou={n: 100.0 * float(v) for n, v in zip(self.class_names, class_iou)},
            pixel_acc=100.0 * float(tp.sum()) / total if total > 0 else float("nan"),
            n_images=int(per_image.numel()),
        )
        return out
