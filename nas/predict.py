"""Inference on image files: a binary mask PNG and an overlay PNG per image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from nas.checkpoint import load_checkpoint
from nas.data import MEAN_RGB, STD_RGB

__all__ = ["predict_files", "predict_image"]

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
def predict_image(model: torch.nn.Module, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Person mask of one RGB uint8 H x W x 3 image: uint8 H x W in {0, 1}.

    The image is resized to ``size`` (area), scored, and the mask resized back (nearest).
    """
    h, w = image.shape[:2]
    x = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (x - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    pred = model.predict(torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0))[0].numpy().astype(np.uint8)
    return cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)


def predict_files(checkpoint: str, inputs: Sequence[str], out_dir: str, input_size=None) -> list[tuple[Path, Path, Path]]:
    """Write ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` for each input image.

    Raises:
        FileNotFoundError: a missing checkpoint or input. ValueError: an
            unreadable image (named) or no images at all.
    """
    model, meta = load_checkpoint(checkpoint)
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
        mask = predict_image(model, image, size)
        overlay = image.copy()
        red = np.array([255, 0, 0], np.float32)
        overlay[mask == 1] = (0.5 * overlay[mask == 1] + 0.5 * red).astype(np.uint8)
        mp, op = out / f"{p.stem}_mask.png", out / f"{p.stem}_overlay.png"
        Image.fromarray(mask * 255).save(mp)
        Image.fromarray(overlay).save(op)
        written.append((p, mp, op))
    return written
