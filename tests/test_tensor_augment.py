"""The per-batch tensor augmentation (nas.tensor_augment) on real EG1800 pairs."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from nas.config import AugmentConfig
from nas.data import load_split_arrays
from nas.tensor_augment import DeviceBatches, TensorAugment, batch_generator

OFF = AugmentConfig.disabled()


@pytest.fixture(scope="module")
def pairs(eg1800_root, cache_dir):
    """16 real validation pairs at 64x64: images uint8 (16, 3, 64, 64), masks uint8 (16, 64, 64), and the arrays."""
    a = load_split_arrays(str(eg1800_root), "val", (64, 64), cache_dir=str(cache_dir), fraction=0.06, progress=False)
    a = a.select(a.ids[:16])
    return torch.from_numpy(a.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(a.masks), a


def _gen(*key):
    return batch_generator("cpu", *key)


def test_disabled_is_the_identity_and_inputs_are_untouched(pairs) -> None:
    x, m, _ = pairs
    x0, m0 = x.clone(), m.clone()
    ox, om = TensorAugment(OFF)(x, m, _gen(0))
    assert torch.equal(ox, x) and torch.equal(om, m)
    TensorAugment()(x, m, _gen(1))
    assert torch.equal(x, x0) and torch.equal(m, m0)


def test_image_and_mask_stay_aligned_under_affine_and_flip(pairs) -> None:
    _, m, _ = pairs
    # the image *is* the mask (x255 in every channel): any misalignment shows as disagreement
    x = (m * 255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    geo = replace(OFF, affine=True, flip=True)
    ox, om = TensorAugment(geo)(x, m, _gen(3))
    # 191: between the grey fill (128) and the foreground (255)
    agree = ((ox[:, 0] > 191) == (om > 0)).float().mean().item()
    assert agree > 0.99, agree
    moved = (om != m).float().mean().item()
    assert moved > 0.05  # and the pairs did move
    # image-only stages never move the mask: the same generator gives the same mask with them on
    _, om_all = TensorAugment()(x, m, _gen(3))
    assert torch.equal(om_all, om)


def test_affine_matches_opencv_with_the_same_parameters(pairs) -> None:
    x, m, a = pairs
    aug = TensorAugment(replace(OFF, affine=True))
    ox, om = aug(x, m, _gen(5))
    p = aug.sample(len(x), _gen(5))  # sample() is the first draw of a call: the same parameters
    for k in range(4):
        mat = cv2.getRotationMatrix2D((31.5, 31.5), float(p["angle"][k]), float(p["scale"][k]))
        mat[0, 2] += float(p["shift_x"][k]) * 64
        mat[1, 2] += float(p["shift_y"][k]) * 64
        ref = cv2.warpAffine(a.images[k], mat, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(128,) * 3)
        ref_m = cv2.warpAffine(a.masks[k], mat, (64, 64), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
        diff = np.abs(ox[k].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2, (k, diff.mean())
        assert (om[k].numpy() != ref_m).mean() < 0.01


def test_fill_values_grey_for_the_image_background_for_the_mask(pairs) -> None:
    x, m, _ = pairs
    m = torch.ones_like(m)
    shrink = replace(OFF, affine=True, rotation_deg=0.0, scale_range=(0.5, 0.5), shift_frac=0.0)
    ox, om = TensorAugment(shrink)(x, m, _gen(0))
    for border in (ox[:, :, :8], ox[:, :, -8:], ox[:, :, :, :8], ox[:, :, :, -8:]):
        assert (border == 128).all()
    assert (om[:, :8] == 0).all() and (om[:, :, -8:] == 0).all()
    assert (om[:, 24:40, 24:40] == 1).all()  # the shrunken foreground stays in the middle


def test_flip_is_exact(pairs) -> None:
    x, m, _ = pairs
    ox, om = TensorAugment(replace(OFF, flip=True, flip_p=1.0))(x, m, _gen(0))
    assert torch.equal(ox, x.flip(-1)) and torch.equal(om, m.flip(-1))


def test_same_seed_same_batch_other_seed_other_batch(pairs) -> None:
    x, m, a = pairs
    aug = TensorAugment()
    b1, b2, b3 = aug(x, m, _gen(7, 1, 2)), aug(x, m, _gen(7, 1, 2)), aug(x, m, _gen(7, 1, 3))
    assert torch.equal(b1[0], b2[0]) and torch.equal(b1[1], b2[1])
    assert not torch.equal(b1[0], b3[0])
    d1, d2 = DeviceBatches(a, 4, "cpu", seed=3), DeviceBatches(a, 4, "cpu", seed=3)
    e1, e2 = list(d1.epoch(0)), list(d2.epoch(0))
    assert len(e1) == 4 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, e2))
    assert e1[0][0].dtype == torch.float32 and e1[0][1].dtype == torch.int64 and e1[0][0].shape == (4, 3, 64, 64)
    assert not torch.equal(list(d1.epoch(1))[0][0], e1[0][0])


def test_sampled_parameters_lie_in_the_release_ranges() -> None:
    c = AugmentConfig()
    p = TensorAugment(c).sample(20_000, _gen(0))
    assert p["angle"].abs().max() <= c.rotation_deg and p["angle"].abs().max() > 0.99 * c.rotation_deg
    for key, (lo, hi) in [("scale", c.scale_range), ("saturation", c.saturation_range),
                          ("brightness", c.brightness_range), ("contrast", c.contrast_range),
                          ("sharpness", c.sharpness_range), ("noise_sigma", (0.0, c.noise_sigma_max)),
                          ("shift_x", (-c.shift_frac, c.shift_frac)), ("shift_y", (-c.shift_frac, c.shift_frac))]:
        v = p[key]
        assert lo <= v.min() and v.max() <= hi, key
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo), key  # the whole range is used
    for key, prob in [("flip", c.flip_p), ("color", c.color_p), ("blur", c.blur_p), ("noise", c.noise_p)]:
        assert abs(p[key].float().mean().item() - prob) < 0.02, key
    assert set(p["blur_kind"].tolist()) == {0, 1, 2} and set(p["blur_kernel"].tolist()) == set(c.blur_kernels)
    off = TensorAugment(OFF).sample(100, _gen(0))
    assert not any(off[k].any() for k in ("flip", "color", "blur", "noise"))


def test_image_only_stages_change_pixels_within_bounds(pairs) -> None:
    x, m, _ = pairs
    for stage in ("color", "blur", "noise"):
        cfg = replace(OFF, **{stage: True, f"{stage}_p": 1.0})
        ox, om = TensorAugment(cfg)(x, m, _gen(1))
        assert torch.equal(om, m) and not torch.equal(ox, x), stage
        assert (ox.float() - x.float()).abs().mean() < 40, stage


def test_bad_inputs_are_clear_errors(pairs) -> None:
    x, m, a = pairs
    with pytest.raises(ValueError, match="images must be uint8"):
        TensorAugment()(x.float(), m, _gen(0))
    with pytest.raises(ValueError, match="masks must be uint8"):
        TensorAugment()(x, m[:, :32], _gen(0))
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(a, 17, "cpu")


@pytest.mark.gpu
def test_cuda_batches_stay_on_the_device(pairs) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, _, a = pairs
    xb, yb = next(iter(DeviceBatches(a, 8, "cuda", seed=0).epoch(0)))
    assert xb.is_cuda and yb.is_cuda and xb.shape == (8, 3, 64, 64)


def test_the_split_is_copied_to_the_device_once_per_bundle(eg1800_root, cache_dir) -> None:
    from nas.train import TrainConfig, load_data, train_genotype

    cfg = TrainConfig(epochs=2, stage1_epochs=1, input_size=(32, 32), train_fraction=0.03, holdout_fraction=0.2,
                      batch_size=4, stage1_batch_size=4, threads=1, progress=False, device="cpu",
                      augment_backend="tensor")
    data = load_data(str(eg1800_root), cfg, cache_dir=str(cache_dir), val_fraction=0.03, progress=False)
    train_genotype("sinet", cfg, data)
    images, masks = data.on_device["cpu"]
    assert images.shape == (len(data.train), 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(masks, torch.from_numpy(data.train.masks))
    train_genotype("sinet", cfg, data)  # both stages, and a second run, use that one copy
    assert data.on_device["cpu"][0] is images
