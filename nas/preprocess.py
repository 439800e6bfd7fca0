"""The input a network was trained on: channel order, mean, std and scale, carried by every checkpoint.

A checkpoint records its :class:`Preprocessing`; ``nas-eval`` and ``nas-predict`` apply it, so a
model is always fed what it was trained on:

* ``OURS`` -- what ``nas-train`` feeds (:mod:`nas.data`): RGB, ``(x - MEAN_RGB) / STD_RGB`` in
  0..255 units, scale 1 (values of about +/-2).
* ``RELEASE`` -- what the authors' released SINet / ExtremeC3Net weights expect (the release's
  ``README``; ``../shared/weights/ext_portrait_segmentation/README.md``): BGR (OpenCV), minus the
  mean and divided by the std (both in B, G, R order), then divided by 255 (values of about
  +/-0.02).

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from nas.data import MEAN_RGB, STD_RGB

__all__ = ["Preprocessing", "OURS", "RELEASE"]

_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocessing:
    """``x = (image[channel_order] - mean) / std * scale`` per channel, image in 0..255 units.

    Attributes:
        channel_order: ``RGB`` or ``BGR``: the order of the network's input channels.
        mean, std: three values each, in ``channel_order``, 0..255 units.
        scale: a factor applied after normalising (the release: 1/255).

    Raises:
        ValueError: an unknown channel order, not three means/stds, a std or scale that is not a
            positive finite number (the message names the field and value).
    """

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "scale", float(self.scale))
        if self.channel_order not in _ORDERS:
            raise ValueError(f"preprocessing.channel_order={self.channel_order!r}; allowed: {', '.join(_ORDERS)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocessing mean={self.mean} / std={self.std}: three values each expected")
        bad = [v for v in (*self.std, self.scale) if not (math.isfinite(v) and v > 0)]
        if bad or not all(math.isfinite(v) for v in self.mean):
            raise ValueError(f"preprocessing std={self.std}, scale={self.scale}, mean={self.mean}: "
                             "std and scale must be positive finite numbers, mean finite")

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
        names = {"channel_order", "mean", "std", "scale"}
        if set(data) - names or not {"channel_order", "mean", "std"} <= set(data):
            raise ValueError(f"{where}: keys {sorted(data)}; expected {sorted(names)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def apply(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (or float) RGB images N x H x W x 3 (0..255) -> float32 network input N x 3 x H x W."""
        x = np.asarray(images, np.float32)
        if x.ndim != 4 or x.shape[3] != 3:
            raise ValueError(f"expected RGB images N x H x W x 3, got shape {x.shape}")
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


OURS = Preprocessing("RGB", MEAN_RGB, STD_RGB, 1.0)
# The release's ToTensor divides by 255 *after* normalising (its README); B, G, R order.
RELEASE = Preprocessing("BGR", (107.304565, 115.69884, 132.35703), (63.97182, 65.1337, 68.29726), 1.0 / 255.0)
