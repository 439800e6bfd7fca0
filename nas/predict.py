"""Inference with a checkpoint: on image files (a mask PNG and an overlay PNG each) and on a split.

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

__all__ = ["predict_files", "predict_image", "evaluate_checkpoint"]

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
    """Person mask of one RGB uint8 H x W x 3 image: uint8 H x W in {0, 1}.

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
    device: str = "auto",
) -> dict:
    """Score a checkpoint on an EG1800 split with its own preprocessing (what ``nas-eval`` runs).

    Labels are nearest-resized to ``input_size`` (default: the genotype's); the metric is
    :class:`nas.metrics.SegmentationMetrics` (``miou`` = foreground IoU per image, x100). The
    network runs on ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, :func:`nas.device.resolve_device`).

    Returns:
        the metrics plus ``images``, ``skipped_ids``, ``input_size``, ``ids`` and, with
        ``return_predictions``, ``predictions`` (uint8 N x h x w in {0, 1}).

    Raises:
        FileNotFoundError, ValueError: a bad checkpoint or data file (named), or an unavailable device.
    """
    from nas.data import load_split_arrays
    from nas.device import resolve_device
    from nas.metrics import SegmentationMetrics, predictions_from_logits

    dev = resolve_device(device, key="device")
    model, meta = load_checkpoint(checkpoint)
    model.to(dev)
    pre: Preprocessing = meta["preprocessing"]
    size = tuple(int(v) for v in (input_size or meta["genotype"].input_size))
    arrays = load_split_arrays(root, split, size, cache_dir=cache_dir, fraction=fraction)
    images = load_eval_images(pre, arrays.ids, root, size, cached=arrays.images)
    metrics, preds = SegmentationMetrics(), []
    for s in range(0, len(arrays), batch_size):
        logits = model(pre.apply(images[s : s + batch_size]).to(dev))
        target = torch.from_numpy(arrays.masks[s : s + batch_size]).long()
        metrics.update(logits, target)
        if return_predictions:
            preds.append(predictions_from_logits(logits).cpu().numpy().astype(np.uint8))
    out = metrics.compute()
    out.update(
        images=len(arrays),
        skipped_ids=len(arrays.skipped_ids),
        input_size=list(size),
        ids=list(arrays.ids),
        preprocessing=pre.to_dict(),
    )
    if return_predictions:
        out["predictions"] = np.concatenate(preds) if preds else np.zeros((0, *size), np.uint8)
    return out


def predict_files(
    checkpoint: str, inputs: Sequence[str], out_dir: str, input_size=None, device: str = "auto"
) -> list[tuple[Path, Path, Path]]:
    """Write ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` for each input image; the network
    runs on ``device`` (:func:`nas.device.resolve_device`).

    Raises:
        FileNotFoundError: a missing checkpoint or input. ValueError: an
            unreadable image (named), no images at all, or an unavailable device.
    """
    from nas.device import resolve_device

    dev = resolve_device(device, key="device")
    model, meta = load_checkpoint(checkpoint)
    model.to(dev)
    size = tuple(input_size or meta["genotype"].input_size)
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
        red = np.array([255, 0, 0], np.float32)
        overlay[mask == 1] = (0.5 * overlay[mask == 1] + 0.5 * red).astype(np.uint8)
        mp, op = out / f"{p.stem}_mask.png", out / f"{p.stem}_overlay.png"
        Image.fromarray(mask * 255).save(mp)
        Image.fromarray(overlay).save(op)
        written.append((p, mp, op))
    return written
