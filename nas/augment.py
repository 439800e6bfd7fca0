"""Training-time augmentation of the release's EG1800 recipe (see REFERENCE.md).

Pipeline, in order, each stage switchable through :class:`AugmentConfig`:

1. random affine (always applied when enabled): rotation U(-45, 45) degrees,
   scale U(0.5, 1.5), shift up to 1/4 of the width/height; grey (128) padding for
   the image, 0 (background) padding and nearest-neighbour sampling for the mask;
2. horizontal flip, p = 0.5 (image and mask);
3. colour, p = 0.5: saturation, brightness, contrast, sharpness factors (image only);
4. blur, p = 0.5: Gaussian, median or box, kernel 3 or 5 (image only);
5. Gaussian pixel noise, sigma U(0, 10) in 0..255 units, p = 0.5 (image only).

The inputs are expected to be already resized to the training size (the cache of
``nas.data`` stores them so), so the affine scale is relative to that
"fit-to-size" scale, as in the release.

All randomness comes from the ``numpy.random.Generator`` passed in, so a result is
a pure function of (image, mask, generator state); the dataset derives that
generator from (seed, epoch, index).
"""

from __future__ import annotations

import cv2
import numpy as np

from nas.config import AugmentConfig  # re-exported: the augmentation and its settings side by side

__all__ = ["AugmentConfig", "Augment"]

# PIL's ImageFilter.SMOOTH kernel: ImageEnhance.Sharpness blends towards this
# blurred copy, so using it keeps our sharpness factor's meaning the same as PIL's.
_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
_BLUR_KINDS = ("gaussian", "median", "box")


class Augment:
    """Random joint transform of an (image, mask) pair.

    Args:
        config: stage switches and parameters; defaults to the release's recipe.

    Call with ``image`` uint8 (H, W, 3) RGB, ``mask`` uint8 (H, W) with values in
    {0, 1}, and a ``numpy.random.Generator``; returns new arrays
    ``(image uint8 (H, W, 3), mask uint8 (H, W) in {0, 1})`` of the same shapes.
    The inputs are never modified.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()

    def __repr__(self) -> str:
        return f"Augment({self.config!r})"

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply the enabled stages.

        Raises:
            ValueError: if ``image`` is not uint8 (H, W, 3) or ``mask`` is not
                uint8 (H, W) matching the image.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask must be uint8 {image.shape[:2]}, got {mask.dtype} {mask.shape}"
            )
        c = self.config
        # Copies so callers (e.g. a dataset holding the cached arrays) can never see
        # their source mutated, even when every stage is off.
        image = np.ascontiguousarray(image).copy()
        mask = np.ascontiguousarray(mask).copy()
        if c.affine:
            image, mask = self._affine(image, mask, rng)
        if c.flip and rng.random() < c.flip_p:
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
        if c.color and rng.random() < c.color_p:
            image = self._color(image, rng)
        if c.blur and rng.random() < c.blur_p:
            image = self._blur(image, rng)
        if c.noise and rng.random() < c.noise_p:
            sigma = np.float32(rng.uniform(0.0, c.noise_sigma_max))
            noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
            # Float sum, rounded and saturated to uint8 in one cv2 pass.
            image = cv2.add(image, noise, dtype=cv2.CV_8U)
        return image, mask

    def _affine(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        h, w = mask.shape
        angle = rng.uniform(-c.rotation_deg, c.rotation_deg)
        scale = rng.uniform(*c.scale_range)
        tx = rng.uniform(-c.shift_frac, c.shift_frac) * w
        ty = rng.uniform(-c.shift_frac, c.shift_frac) * h
        # Rotate/scale about the pixel-grid centre so the identity parameters map
        # every pixel onto itself.
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
        m[0, 2] += tx
        m[1, 2] += ty
        image = cv2.warpAffine(
            image, m, (w, h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(c.pad_value,) * 3,
        )
        # Nearest keeps the mask binary; 0 padding marks the new border as background.
        mask = cv2.warpAffine(
            mask, m, (w, h), flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT, borderValue=c.mask_pad_value,
        )
        return image, mask

    def _color(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """cv2 equivalents of PIL ImageEnhance Color, Brightness, Contrast and
        Sharpness, applied in that order. Each is PIL's ``blend(degenerate, image,
        f)`` = f*image + (1-f)*degenerate, saturated to uint8 after every step as
        PIL does; cv2.addWeighted is that blend, vectorised on uint8."""
        c = self.config
        f_sat = rng.uniform(*c.saturation_range)
        f_bri = rng.uniform(*c.brightness_range)
        f_con = rng.uniform(*c.contrast_range)
        f_sha = rng.uniform(*c.sharpness_range)
        # Saturation: towards the ITU-R 601-2 luma image (PIL's mode "L").
        gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        x = cv2.addWeighted(image, f_sat, gray, 1.0 - f_sat, 0.0)
        # Brightness: towards black.
        x = cv2.addWeighted(x, f_bri, x, 0.0, 0.0)
        # Contrast: towards the (rounded, as in PIL) mean luma.
        mean = int(cv2.mean(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY))[0] + 0.5)
        x = cv2.addWeighted(x, f_con, x, 0.0, (1.0 - f_con) * mean)
        # Sharpness: towards PIL's SMOOTH-filtered copy.
        smooth = cv2.filter2D(x, -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
        return cv2.addWeighted(x, f_sha, smooth, 1.0 - f_sha, 0.0)

    def _blur(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        kind = _BLUR_KINDS[int(rng.integers(len(_BLUR_KINDS)))]
        k = int(c.blur_kernels[int(rng.integers(len(c.blur_kernels)))])
        if kind == "gaussian":
            return cv2.GaussianBlur(image, (k, k), 0)
        if kind == "median":
            return cv2.medianBlur(image, k)
        return cv2.blur(image, (k, k))
