"""Inference with a checkpoint: on image files (a mask PNG and an overlay PNG each) and on a split of any
data set (:mod:`nas.datasets`), with per-image IoU percentiles and the worst images.

Both feed the network through the checkpoint's own :class:`nas.preprocess.Preprocessing`
(channel order, mean, std, scale and resize), so an imported release checkpoint gets the
release's input and a checkpoint of ``nas-train`` ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from nas.checkpoint import load_checkpoint
from nas.preprocess import OURS, Preprocessing, load_eval_images

__all__ = ["predict_files", "predict_image", "evaluate_and_log", "evaluate_checkpoint", "write_overlays"]

_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _expand(inputs: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in _EXTS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not out:
        raise ValueError(f"no images ({', '.join(sorted(_EXTS))}) in inputs={list(inputs)}")
    return out


@torch.no_grad()
def predict_image(
    model: torch.nn.Module, image: np.ndarray, size: tuple[int, int], preprocessing: Preprocessing = OURS
) -> np.ndarray:
    """Person mask of one RGB uint8 H x W x 3 image: uint8 H x W in {0, 1} (K > 2 classes: class ids).

    The image is resized to ``size`` = (h, w) and normalised as ``preprocessing`` says, scored
    on the device of ``model``'s parameters, and the mask resized back to H x W (nearest).
    """
    h, w = image.shape[:2]
    device = next(model.parameters()).device
    x = preprocessing.apply(preprocessing.resize_image(image, size)[None]).to(device)
    pred = model.predict(x)[0].cpu().numpy().astype(np.uint8)
    return cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: str | Path,
    root=None,
    split: str = "val",
    input_size=None,
    batch_size: int = 64,
    cache_dir=None,
    fraction: float = 1.0,
    return_predictions: bool = False,
    *,
    worst_k: int = 5,
    overlays_dir: str | Path | None = None,
    device: str = "auto",
) -> dict:
    """Score a checkpoint on a split of any data set with its own preprocessing (what ``nas-eval`` runs).

    Labels are nearest-resized to ``input_size`` (default: the size the checkpoint was trained at); the metric is
    :class:`nas.metrics.SegmentationMetrics` with the data set's classes (2 classes: ``miou`` =
    foreground IoU per image, x100; every set: ``miou_cm`` and ``class_iou``). The network runs on
    ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, :func:`nas.device.resolve_device`).

    Args:
        root: an EG1800 root (``None``: env ``EG1800_ROOT``) or a :class:`nas.datasets.DatasetReader`.
        split: ``val`` (``test``), ``train``, or what the reader knows (``all`` for a folder).
        worst_k: how many of the lowest per-image IoUs to report (names and IoU).
        overlays_dir: if given, ``<rank>_<stem>_overlay.png`` of those worst images is written there
            (the input at ``input_size``; prediction tinted, ground-truth outline in green).

    Returns:
        the metrics plus ``images``, ``skipped_ids``, ``resized_masks``, ``input_size``, ``ids``,
        ``dataset``, ``num_classes``, ``preprocessing``, ``per_image_iou`` (x100, in ``ids`` order:
        foreground IoU, or for K > 2 each image's mean class IoU), ``iou_mean``, ``iou_p10``,
        ``iou_p50``, ``iou_p90`` (x100, numpy's linear percentiles), ``worst`` (``[{id, name, iou}]``),
        ``overlays`` (paths written) and, with ``return_predictions``, ``predictions`` (uint8 N x h x w).

    Raises:
        FileNotFoundError, ValueError: a bad checkpoint or data file (named), a checkpoint whose
            class count is not the data set's, or an unavailable device.
    """
    from nas.data import load_split_arrays
    from nas.datasets import as_reader
    from nas.device import resolve_device
    from nas.metrics import SegmentationMetrics, predictions_from_logits

    dev = resolve_device(device, key="device")
    model, meta = load_checkpoint(checkpoint)
    reader = as_reader(root)
    classes = max(2, int(meta["genotype"].num_classes))
    if classes != reader.num_classes:
        raise ValueError(f"{checkpoint}: predicts {classes} classes but the data set {reader.name} has "
                         f"{reader.num_classes} ({', '.join(reader.class_names)}); evaluate on a set of "
                         f"{classes} classes (EasyPortrait: data.two_class=true)")
    model.to(dev)
    pre: Preprocessing = meta["preprocessing"]
    size = meta["genotype"].check_input_size(tuple(int(v) for v in (input_size or meta["input_size"])))
    arrays = load_split_arrays(reader, split, size, cache_dir=cache_dir, fraction=fraction)
    images = load_eval_images(pre, arrays.ids, reader.root, size, cached=arrays.images,
                              load=lambda _root, i: reader.load_image(i))
    metrics = SegmentationMetrics(num_classes=reader.num_classes, class_names=reader.class_names)
    preds = []
    for s in range(0, len(arrays), batch_size):
        logits = model(pre.apply(images[s : s + batch_size]).to(dev)).cpu()  # metrics on the host, per batch
        target = torch.from_numpy(arrays.masks[s : s + batch_size]).long()
        metrics.update(logits, target)
        preds.append(predictions_from_logits(logits).numpy().astype(np.uint8))
    out = metrics.compute()
    per_image = 100.0 * metrics.per_image_iou().double().numpy()
    p10, p50, p90 = (float(v) for v in np.percentile(per_image, [10, 50, 90]))
    order = np.argsort(per_image, kind="stable")[: max(0, int(worst_k))]
    worst = [{"id": arrays.ids[k], "name": reader.image_file(arrays.ids[k]).name, "iou": float(per_image[k])}
             for k in order]
    predictions = np.concatenate(preds) if preds else np.zeros((0, *size), np.uint8)
    written = []
    if overlays_dir is not None and len(order):
        written = write_overlays(overlays_dir, [arrays.images[k] for k in order], [predictions[k] for k in order],
                                 [arrays.masks[k] for k in order],
                                 [f"{r + 1:02d}_{Path(w['name']).stem}" for r, w in enumerate(worst)])
    out.update(
        images=len(arrays),
        skipped_ids=len(arrays.skipped_ids),
        resized_masks=len(arrays.resized_ids),
        input_size=list(size),
        ids=list(arrays.ids),
        dataset=reader.name,
        split=arrays.split,
        num_classes=reader.num_classes,
        preprocessing=pre.to_dict(),
        per_image_iou=per_image.tolist(),
        iou_mean=float(per_image.mean()),
        iou_p10=p10,
        iou_p50=p50,
        iou_p90=p90,
        worst=worst,
        overlays=[str(p) for p in written],
    )
    if return_predictions:
        out["predictions"] = predictions
    return out


def evaluate_and_log(checkpoint: str | Path, source, split: str = "val", input_size=None, batch_size: int = 64, *,
                     worst_k: int = 5, overlays_dir: str | Path | None = None, log_to_run: bool = True,
                     device: str = "auto") -> dict:
    """:func:`evaluate_checkpoint` on a :class:`nas.datasets.DataSource`, logged on the checkpoint's MLflow run.

    The metrics go to that run (the checkpoint's ``tracking`` entry, written by ``nas-train``) as
    ``eval/<dataset>/<split>/<key>`` (:func:`nas.tracking.log_evaluation`), with the overlays; a checkpoint
    without a run (``nas-import``, or tracking off) is only scored. Returns the result with ``mlflow_run_id``
    (None when nothing was logged).

    Raises:
        as :func:`evaluate_checkpoint`; mlflow.exceptions.MlflowException when the recorded store fails.
    """
    from nas.checkpoint import read_checkpoint
    from nas.tracking import log_evaluation

    res = evaluate_checkpoint(checkpoint, source.reader, split, input_size, batch_size, cache_dir=source.cache_dir,
                              fraction=source.val_fraction, worst_k=worst_k, overlays_dir=overlays_dir,
                              device=device)
    tracking = read_checkpoint(checkpoint)["tracking"] if log_to_run else None
    res["mlflow_run_id"] = log_evaluation(tracking, res, prefix=f"eval/{res['dataset']}/{res['split']}",
                                          artifacts=res["overlays"])
    return res


_PALETTE = np.array([[0, 0, 0], [255, 0, 0], [255, 200, 0], [0, 120, 255], [0, 200, 255], [200, 0, 255],
                     [255, 0, 200], [255, 90, 90], [255, 255, 255]], np.float32)


def write_overlays(out_dir: str | Path, images: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                   masks: Sequence[np.ndarray], stems: Sequence[str]) -> list[Path]:
    """Write ``<stem>_overlay.png`` per image: the prediction tinted (person red; K > 2 a colour per
    class), the ground truth's class edges in green.

    Args:
        images: uint8 RGB h x w x 3 each; preds, masks: uint8 h x w class ids (255 in masks: ignored).

    Raises:
        OSError: ``out_dir`` cannot be created or a file not written (named).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    kernel = np.ones((3, 3), np.uint8)
    for image, pred, mask, stem in zip(images, preds, masks, stems):
        colour = _PALETTE[np.minimum(pred, len(_PALETTE) - 1)]
        fg = pred > 0
        rgb = image.astype(np.float32)
        rgb[fg] = 0.5 * rgb[fg] + 0.5 * colour[fg]
        gt = np.where(mask == 255, 0, mask).astype(np.uint8)
        edge = cv2.dilate(gt, kernel) != cv2.erode(gt, kernel)
        rgb[edge] = (0, 255, 0)
        path = out / f"{stem}_overlay.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write overlay {path}")
        written.append(path)
    return written


def predict_files(
    checkpoint: str, inputs: Sequence[str], out_dir: str, input_size=None, device: str = "auto"
) -> list[tuple[Path, Path, Path]]:
    """Write ``<stem>_mask.png`` (0/255; a network of K > 2 classes: the class ids 0..K-1) and
    ``<stem>_overlay.png`` for each input image; the network runs on ``device`` (:func:`nas.device.resolve_device`).

    Raises:
        FileNotFoundError: a missing checkpoint or input. ValueError: an
            unreadable image (named), no images at all, or an unavailable device.
    """
    from nas.device import resolve_device

    dev = resolve_device(device, key="device")
    model, meta = load_checkpoint(checkpoint)
    model.to(dev)
    size = meta["genotype"].check_input_size(tuple(int(v) for v in (input_size or meta["input_size"])))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in _expand(inputs):
        try:
            with Image.open(p) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from None
        mask = predict_image(model, image, size, meta["preprocessing"])
        overlay = image.copy()
        fg = mask > 0
        colour = _PALETTE[np.minimum(mask, len(_PALETTE) - 1)]
        overlay[fg] = (0.5 * overlay[fg] + 0.5 * colour[fg]).astype(np.uint8)
        mp, op = out / f"{p.stem}_mask.png", out / f"{p.stem}_overlay.png"
        Image.fromarray(mask * 255 if model.num_classes <= 2 else mask).save(mp)
        Image.fromarray(overlay).save(op)
        written.append((p, mp, op))
    return written
