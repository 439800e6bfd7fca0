"""The release's augmentation, per batch, on tensors on the training device (``train.augment_backend=tensor``).

The same pipeline, switches and parameter ranges as :mod:`nas.augment` (read from one
:class:`~nas.config.AugmentConfig`), applied to a whole uint8 batch at once with kornia and torch:

1. random affine (always, when enabled): rotation U(-rotation_deg, rotation_deg) degrees, scale
   U(scale_range), shift U(-shift_frac, shift_frac) x width / height, about the pixel-grid centre
   (OpenCV's ``getRotationMatrix2D`` convention, kornia's ``get_rotation_matrix2d``); the image
   bilinear with ``pad_value`` grey fill, the mask nearest with ``mask_pad_value`` fill
   (``kornia.geometry.transform.warp_affine``);
2. horizontal flip, p = ``flip_p`` (image and mask, exact);
3. colour, p = ``color_p``: PIL's saturation (towards ITU-R 601-2 luma), brightness (towards
   black), contrast (towards the mean luma) and sharpness (towards the 3x3 SMOOTH filter,
   ``kornia.enhance.sharpness``) blends, rounded and saturated to 0..255 after each, as PIL does;
4. blur, p = ``blur_p``: Gaussian (OpenCV's sigma for the kernel), median or box, kernel from
   ``blur_kernels`` (``kornia.filters``);
5. Gaussian pixel noise, sigma U(0, noise_sigma_max) in 0..255 units, p = ``noise_p``.

Differences from the per-image OpenCV path, none in a range or probability: the interpolation
kernels are kornia's (same convention, floating-point rounding differs), the sharpness blend keeps
the one-pixel border (PIL's rule; the OpenCV path replicates the border), the median blur pads
with zeros. All randomness comes from one ``torch.Generator`` per batch: a batch is a pure
function of (images, masks, generator state), so the same seed gives the same batch.

:class:`DeviceBatches` holds a split as uint8 tensors in device memory (loaded once) and yields
augmented, normalised training batches from it.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import kornia
import torch

from nas.config import AugmentConfig
from nas.data import MEAN_RGB, STD_RGB, SplitArrays

__all__ = ["DeviceBatches", "TensorAugment", "batch_generator"]

_BLUR_KINDS = ("gaussian", "median", "box")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's mode "L"


def _opencv_sigma(k: int) -> float:
    """The sigma ``cv2.GaussianBlur`` uses for kernel size ``k`` when given sigma 0."""
    return 0.3 * ((k - 1) * 0.5 - 1) + 0.8


def batch_generator(device: torch.device | str, *key: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from the integers ``key`` (e.g. seed, epoch, batch)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int.from_bytes(hashlib.sha1(repr(tuple(int(k) for k in key)).encode()).digest()[:8], "little")
                  & (2**63 - 1))
    return g


class TensorAugment:
    """Random joint transform of a batch of (image, mask) pairs, on their device.

    Args:
        config: stage switches and parameter ranges (:class:`~nas.config.AugmentConfig`, the release's by default).

    Call with ``images`` uint8 (B, 3, H, W) RGB, ``masks`` uint8 (B, H, W) in {0, 1} on one device,
    and a ``torch.Generator`` on that device; returns new ``(images uint8 (B, 3, H, W), masks uint8
    (B, H, W) in {0, 1})``. The inputs are never modified.

    Raises:
        ValueError: wrong dtypes or shapes, or tensors and generator on different devices.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()

    def __repr__(self) -> str:
        return f"TensorAugment({self.config!r})"

    def sample(self, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image parameters for a batch of ``b``, drawn from ``generator`` in a fixed order.

        Returns float tensors (b,) ``angle`` (degrees), ``scale``, ``shift_x``/``shift_y`` (fractions
        of the width / height), ``saturation``, ``brightness``, ``contrast``, ``sharpness``,
        ``noise_sigma`` (0..255 units); bool tensors (b,) ``flip``, ``color``, ``blur``, ``noise``
        (whether the stage applies, and the stage is enabled); long tensors (b,) ``blur_kind`` (index
        into gaussian, median, box) and ``blur_kernel`` (a size from ``blur_kernels``).
        """
        c, dev = self.config, generator.device

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator, device=dev)

        def coin(p: float, on: bool) -> torch.Tensor:
            return (torch.rand(b, generator=generator, device=dev) < p) & on

        kernels = torch.tensor(c.blur_kernels, device=dev)
        return {
            "angle": u(-c.rotation_deg, c.rotation_deg), "scale": u(*c.scale_range),
            "shift_x": u(-c.shift_frac, c.shift_frac), "shift_y": u(-c.shift_frac, c.shift_frac),
            "flip": coin(c.flip_p, c.flip),
            "color": coin(c.color_p, c.color), "saturation": u(*c.saturation_range),
            "brightness": u(*c.brightness_range), "contrast": u(*c.contrast_range),
            "sharpness": u(*c.sharpness_range),
            "blur": coin(c.blur_p, c.blur),
            "blur_kind": torch.randint(len(_BLUR_KINDS), (b,), generator=generator, device=dev),
            "blur_kernel": kernels[torch.randint(len(kernels), (b,), generator=generator, device=dev)],
            "noise": coin(c.noise_p, c.noise), "noise_sigma": u(0.0, c.noise_sigma_max),
        }

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the enabled stages (see the class docstring for shapes and errors)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if masks.dtype != torch.uint8 or tuple(masks.shape) != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks must be uint8 {(images.shape[0], *images.shape[2:])}, got {masks.dtype} "
                             f"{tuple(masks.shape)}")
        if images.device != masks.device or images.device.type != generator.device.type:
            raise ValueError(f"images ({images.device}), masks ({masks.device}) and generator "
                             f"({generator.device}) must be on one device")
        c = self.config
        p = self.sample(images.shape[0], generator)
        x, m = images.float(), masks.float().unsqueeze(1)
        if c.affine:
            x, m = self._affine(x, m, p)
        flip = p["flip"].view(-1, 1, 1, 1)
        x, m = torch.where(flip, x.flip(-1), x), torch.where(flip, m.flip(-1), m)
        if c.color:
            x = torch.where(p["color"].view(-1, 1, 1, 1), self._color(x, p), x)
        if c.blur:
            x = self._blur(x, p)
        if c.noise:
            sigma = (p["noise_sigma"] * p["noise"]).view(-1, 1, 1, 1)
            x = x + torch.randn(x.shape, generator=generator, device=x.device) * sigma
        return x.round().clamp_(0, 255).to(torch.uint8), m.squeeze(1).round().to(torch.uint8)

    def _affine(self, x: torch.Tensor, m: torch.Tensor, p: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        b, _, h, w = x.shape
        center = torch.tensor([[(w - 1) / 2.0, (h - 1) / 2.0]], device=x.device).expand(b, 2)
        scale = p["scale"].view(-1, 1).expand(b, 2)
        mat = kornia.geometry.transform.get_rotation_matrix2d(center, p["angle"], scale)
        mat[:, 0, 2] += p["shift_x"] * w
        mat[:, 1, 2] += p["shift_y"] * h
        fill = torch.full((3,), float(c.pad_value), device=x.device)
        x = kornia.geometry.transform.warp_affine(x, mat, (h, w), mode="bilinear", padding_mode="fill",
                                                  fill_value=fill, align_corners=True)
        m = kornia.geometry.transform.warp_affine(m, mat, (h, w), mode="nearest", padding_mode="fill",
                                                  fill_value=torch.full((1,), float(c.mask_pad_value),
                                                                        device=x.device), align_corners=True)
        return x, m

    @staticmethod
    def _color(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        def f(name: str) -> torch.Tensor:
            return p[name].view(-1, 1, 1, 1)

        def luma(t: torch.Tensor) -> torch.Tensor:
            return kornia.color.rgb_to_grayscale(t, rgb_weights=torch.tensor(_LUMA, device=t.device)).round()

        def blend(t: torch.Tensor, degenerate: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return (k * t + (1 - k) * degenerate).round().clamp(0, 255)

        x = blend(x, luma(x), f("saturation"))
        x = blend(x, torch.zeros_like(x), f("brightness"))
        x = blend(x, luma(x).mean(dim=(1, 2, 3), keepdim=True).round(), f("contrast"))
        return (kornia.enhance.sharpness(x / 255.0, p["sharpness"]) * 255.0).round()

    def _blur(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        # On an accelerator every (kind, size) filters the whole batch and a mask picks (no host
        # synchronisation); on the CPU only the images that drew it are filtered (6x less work).
        subset = x.device.type == "cpu"
        out = x.clone() if subset else x
        for kind_i, kind in enumerate(_BLUR_KINDS):
            for k in self.config.blur_kernels:
                sel = p["blur"] & (p["blur_kind"] == kind_i) & (p["blur_kernel"] == k)
                if subset:
                    idx = sel.nonzero().flatten()
                    if len(idx):
                        out[idx] = _filter(kind, x[idx], k)
                else:
                    out = torch.where(sel.view(-1, 1, 1, 1), _filter(kind, x, k), out)
        return out


def _filter(kind: str, x: torch.Tensor, k: int) -> torch.Tensor:
    if kind == "gaussian":
        return kornia.filters.gaussian_blur2d(x, (k, k), (_opencv_sigma(k),) * 2, border_type="reflect")
    if kind == "median":
        return kornia.filters.median_blur(x, (k, k))
    return kornia.filters.box_blur(x, (k, k), border_type="reflect")


class DeviceBatches:
    """A training split held once in device memory as uint8 tensors, served as augmented batches.

    Args:
        arrays: the split (images uint8 (N, H, W, 3), masks uint8 (N, H, W)).
        batch_size: images per batch; the ragged last batch is dropped (as the DataLoader path).
        device: where the tensors live and the augmentation runs.
        config: the augmentation (:class:`TensorAugment`).
        seed: the shuffle generator's seed (:attr:`generator`, a CPU ``torch.Generator``, part of a
            resume checkpoint) and the root of every batch's augmentation generator
            (:func:`batch_generator` (seed, epoch, batch index)).
        mean, std: per-channel normalisation, RGB, 0..255 units.
        tensors: ``arrays`` already on ``device`` (:meth:`to_device`), to share one copy.

    ``epoch(e)`` yields ``(x float32 (B, 3, H, W) = (image - mean) / std, y int64 (B, H, W) in {0, 1})``
    on ``device``, ``len(arrays) // batch_size`` of them.

    Raises:
        ValueError: ``batch_size`` < 1 or larger than the split.
    """

    def __init__(self, arrays: SplitArrays, batch_size: int, device: torch.device | str,
                 config: AugmentConfig | None = None, seed: int = 0, mean: Sequence[float] = MEAN_RGB,
                 std: Sequence[float] = STD_RGB, tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if not 1 <= batch_size <= len(arrays):
            raise ValueError(f"batch_size={batch_size}; allowed: 1..{len(arrays)} (the split's size)")
        self.device = torch.device(device)
        self.images, self.masks = tensors if tensors is not None else self.to_device(arrays, self.device)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.augment = TensorAugment(config)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @staticmethod
    def to_device(arrays: SplitArrays, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images uint8 (N, 3, H, W), masks uint8 (N, H, W))`` of ``arrays`` on ``device`` (one copy)."""
        dev = torch.device(device)
        return (torch.from_numpy(arrays.images).to(dev).permute(0, 3, 1, 2).contiguous(),
                torch.from_numpy(arrays.masks).to(dev))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``e`` (the order advances :attr:`generator`)."""
        perm = torch.randperm(len(self.images), generator=self.generator).to(self.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = self.augment(self.images[idx], self.masks[idx], batch_generator(self.device, self.seed, e, i))
            yield (x.float() - self._mean) * self._inv_std, y.long()
