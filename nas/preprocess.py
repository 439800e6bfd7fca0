"""The input a network was trained on: channel order, mean, std and scale, carried by every checkpoint.

A checkpoint records its :class:`Preprocessing`; ``nas-eval`` and ``nas-predict`` apply it, so a
model is always fed what it was trained on:

* ``OURS`` -- what ``nas-train`` feeds (:mod:`nas.data`): the image shrunk with area
  interpolation to uint8 (nas.data's cache), RGB, ``(x - MEAN_RGB) / STD_RGB`` in 0..255 units,
  scale 1 (values of about +/-2).
* ``RELEASE`` -- what the authors' released SINet / ExtremeC3Net weights expect (the release's
  ``README``; ``../shared/weights/ext_portrait_segmentation/README.md``): BGR (OpenCV), minus the
  mean and divided by the std (both in B, G, R order), resized from full resolution with
  bilinear interpolation (OpenCV's default, in float), then divided by 255 (values of about
  +/-0.02). The resize matters at the 0.05-point level: with area-shrunk uint8 images the
  released SINet scores 95.02 instead of the release's 94.96.

Example:
    >>> import numpy as np
    >>> img = np.full((1, 2, 2, 3), 128, np.uint8)
    >>> OURS.apply(img).shape
    torch.Size([1, 3, 2, 2])
    >>> Preprocessing.from_dict(RELEASE.to_dict()) == RELEASE
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

from nas.data import MEAN_RGB, STD_RGB

__all__ = ["OURS", "RELEASE", "Preprocessing", "load_eval_images"]

_ORDERS = ("RGB", "BGR")
# channel index -> colour index (0 = R, 1 = G, 2 = B) for each order
_ORDERS_IDX = {"RGB": (0, 1, 2), "BGR": (2, 1, 0)}
# How a full-resolution image is brought to the network's input size.
_RESIZES: dict[str, int] = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """``x = (image[channel_order] - mean) / std * scale`` per channel, image in 0..255 units.

    Attributes:
        channel_order: ``RGB`` or ``BGR``: the order of the network's input channels.
        mean, std: three values each, in ``channel_order``, 0..255 units.
        scale: a factor applied after normalising (the release: 1/255).
        resize: ``area`` (uint8, area interpolation when shrinking: nas.data's cache) or
            ``bilinear`` (float, OpenCV's INTER_LINEAR from full resolution: the release).

    Raises:
        ValueError: an unknown channel order or resize, not three means/stds, a std or scale that is not a
            positive finite number (the message names the field and value).
    """

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    resize: str = "area"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "scale", float(self.scale))
        if self.channel_order not in _ORDERS:
            raise ValueError(f"preprocessing.channel_order={self.channel_order!r}; allowed: {', '.join(_ORDERS)}")
        if self.resize not in _RESIZES:
            raise ValueError(f"preprocessing.resize={self.resize!r}; allowed: {', '.join(_RESIZES)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocessing mean={self.mean} / std={self.std}: three values each expected")
        bad = [v for v in (*self.std, self.scale) if not (math.isfinite(v) and v > 0)]
        if bad or not all(math.isfinite(v) for v in self.mean):
            raise ValueError(
                f"preprocessing std={self.std}, scale={self.scale}, mean={self.mean}: "
                "std and scale must be positive finite numbers, mean finite"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint: ``{channel_order, mean, std, scale}``."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "preprocessing") -> Preprocessing:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` naming ``where`` on unknown or missing keys."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = {"channel_order", "mean", "std", "scale", "resize"}
        if set(data) - names or not {"channel_order", "mean", "std"} <= set(data):
            raise ValueError(f"{where}: keys {sorted(data)}; expected {sorted(names)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def affine_from(self, other: Preprocessing) -> tuple[list[int], np.ndarray, np.ndarray]:
        """How ``other``'s input is made from ours: ``x_other[c] = a[c] * x_self[perm[c]] + b[c]``.

        Returns ``(perm, a, b)``; exact for the same uint8 image (ignores the resize field).
        """
        rgb_self = [_ORDERS_IDX[self.channel_order][c] for c in range(3)]  # our channel c holds colour rgb_self[c]
        pos = {colour: c for c, colour in enumerate(rgb_self)}
        perm, a, b = [], np.zeros(3), np.zeros(3)
        for c in range(3):
            colour = _ORDERS_IDX[other.channel_order][c]
            j = pos[colour]
            perm.append(j)
            # pixel = x_self[j] * std_j / scale_s + mean_j ; x_other[c] = (pixel - m_c) / s_c * scale_o
            a[c] = self.std[j] / self.scale / other.std[c] * other.scale
            b[c] = (self.mean[j] - other.mean[c]) / other.std[c] * other.scale
        return perm, a, b

    def resize_image(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A full-resolution RGB uint8 H x W x 3 image at ``size`` = (h, w).

        Returns uint8 (``area``) or float32 (``bilinear``).
        """
        h, w = size
        if image.shape[:2] == (h, w):
            return image
        if self.resize == "bilinear":
            return cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        shrinking = h <= image.shape[0] and w <= image.shape[1]
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def apply(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (or float) RGB images N x H x W x 3 (0..255) -> float32 network input N x 3 x H x W."""
        x = np.asarray(images, np.float32)
        if x.ndim != 4 or x.shape[3] != 3:
            raise ValueError(f"expected RGB images N x H x W x 3, got shape {x.shape}")
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        # (x - mean) * (1 / std) in float32: bit-identical to nas.data.SegmentationDataset for OURS
        x = (x - np.asarray(self.mean, np.float32)) * (1.0 / np.asarray(self.std, np.float32))
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


OURS = Preprocessing("RGB", MEAN_RGB, STD_RGB, 1.0)
# The release's ToTensor divides by 255 *after* normalising (its README); B, G, R order.
RELEASE = Preprocessing(
    "BGR", (107.304565, 115.69884, 132.35703), (63.97182, 65.1337, 68.29726), 1.0 / 255.0, resize="bilinear"
)


def load_eval_images(
    pre: Preprocessing,
    ids: list[str],
    root,
    size: tuple[int, int],
    cached: np.ndarray | None = None,
    load: Callable | None = None,
) -> np.ndarray:
    """Images of ``ids`` at ``size`` the way ``pre`` resizes: N x h x w x 3 (uint8 or float32 RGB).

    ``area``: the cached uint8 arrays (``cached``, from :func:`nas.data.load_split_arrays`) as they are.
    ``bilinear``: each JPEG decoded again at full resolution and resized in float (no cache).

    Raises:
        FileNotFoundError, ValueError: from :func:`nas.data.load_pair`, naming the file.
    """
    if pre.resize == "area" and cached is not None:
        return cached
    from nas.data import load_pair

    load = load or load_pair
    out = np.empty((len(ids), *size, 3), np.float32 if pre.resize == "bilinear" else np.uint8)
    for k, i in enumerate(ids):
        out[k] = pre.resize_image(load(root, i)[0], size)
    return out
