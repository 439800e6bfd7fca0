"""Tests of nas.augment (synthetic inputs, plus real EG1800 pairs when present)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nas import data as D
from nas.augment import Augment, AugmentConfig

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "EG1800"
OFF = AugmentConfig.disabled()


def _pair(h=64, w=48, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    return image, mask


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def test_shapes_dtypes_binary_mask_many_draws():
    image, mask = _pair()
    aug = Augment()
    changed = 0
    for k in range(60):
        out_i, out_m = aug(image, mask, _rng(0, 0, k))
        assert out_i.shape == image.shape and out_i.dtype == np.uint8
        assert out_m.shape == mask.shape and out_m.dtype == np.uint8
        assert set(np.unique(out_m)) <= {0, 1}
        changed += not np.array_equal(out_i, image)
    assert changed == 60  # the affine always moves something


def test_inputs_not_modified():
    image, mask = _pair()
    i0, m0 = image.copy(), mask.copy()
    Augment()(image, mask, _rng(1))
    assert np.array_equal(image, i0) and np.array_equal(mask, m0)


def test_deterministic_given_generator_state():
    image, mask = _pair()
    a = Augment()(image, mask, _rng(7, 3, 11))
    b = Augment()(image, mask, _rng(7, 3, 11))
    c = Augment()(image, mask, _rng(7, 4, 11))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_all_disabled_is_identity():
    image, mask = _pair()
    out_i, out_m = Augment(OFF)(image, mask, _rng(0))
    assert np.array_equal(out_i, image) and np.array_equal(out_m, mask)
    assert out_i is not image  # a copy: callers may hold cached arrays


def test_flip_only():
    image, mask = _pair()
    mask[:, :5] = 1  # asymmetric, so an unflipped mask is caught
    aug = Augment(replace(OFF, flip=True, flip_p=1.0))
    out_i, out_m = aug(image, mask, _rng(0))
    assert np.array_equal(out_i, image[:, ::-1]) and np.array_equal(out_m, mask[:, ::-1])


def test_affine_pads_grey_and_background():
    image, mask = _pair()
    mask[:] = 1
    cfg = replace(OFF, affine=True, rotation_deg=0.0, scale_range=(0.5, 0.5), shift_frac=0.0)
    out_i, out_m = Augment(cfg)(image, mask, _rng(0))
    assert (out_i[:5, :5] == 128).all() and (out_i[-5:, -5:] == 128).all()
    assert (out_m[:5, :5] == 0).all() and out_m[32, 24] == 1
    assert 0.2 < out_m.mean() < 0.3  # half-size square: a quarter of the area
    # Identity parameters leave the pair unchanged (centre handled on the pixel grid).
    ident = replace(OFF, affine=True, rotation_deg=0.0, scale_range=(1.0, 1.0), shift_frac=0.0)
    out_i, out_m = Augment(ident)(image, mask, _rng(0))
    assert np.array_equal(out_i, image) and np.array_equal(out_m, mask)


def test_affine_moves_mask_with_image():
    # A white square on black: after the warp the mask must cover the bright pixels.
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    image[20:44, 20:44] = 255
    mask[20:44, 20:44] = 1
    cfg = replace(OFF, affine=True, pad_value=0)
    for k in range(10):
        out_i, out_m = Augment(cfg)(image, mask, _rng(k))
        bright = out_i[..., 0] > 200
        assert (out_m[bright] == 1).mean() > 0.95


def test_affine_mask_uses_nearest():
    # Degenerate ranges fix the matrix: pure scaling about the centre.
    image, _ = _pair()
    mask = (np.random.default_rng(1).random((64, 48)) > 0.5).astype(np.uint8)
    cfg = replace(OFF, affine=True, rotation_deg=0.0, scale_range=(1.7, 1.7), shift_frac=0.0)
    out_i, out_m = Augment(cfg)(image, mask, _rng(0))
    m = cv2.getRotationMatrix2D((23.5, 31.5), 0.0, 1.7)
    assert np.array_equal(out_m, cv2.warpAffine(mask, m, (48, 64), flags=cv2.INTER_NEAREST))
    assert np.array_equal(out_i, cv2.warpAffine(image, m, (48, 64), flags=cv2.INTER_LINEAR))


@pytest.mark.parametrize("stage", ["color", "blur", "noise"])
def test_photometric_stages_leave_mask(stage):
    image, mask = _pair()
    cfg = replace(OFF, **{stage: True, f"{stage}_p": 1.0})
    out_i, out_m = Augment(cfg)(image, mask, _rng(3))
    assert np.array_equal(out_m, mask)
    assert out_i.shape == image.shape and out_i.dtype == np.uint8
    assert not np.array_equal(out_i, image)


@pytest.mark.parametrize("factors", [(1.3, 0.8, 1.2, 1.15), (0.5, 1.5, 0.7, 0.85)])
def test_colour_matches_pil_enhance(factors):
    from PIL import Image, ImageEnhance

    image, _ = _pair(seed=4)
    sat, bri, con, sha = factors
    cfg = replace(OFF, color=True, color_p=1.0, saturation_range=(sat, sat),
                  brightness_range=(bri, bri), contrast_range=(con, con), sharpness_range=(sha, sha))
    ours, _ = Augment(cfg)(image, np.zeros(image.shape[:2], np.uint8), _rng(0))
    pil = Image.fromarray(image)
    for enh, f in zip((ImageEnhance.Color, ImageEnhance.Brightness, ImageEnhance.Contrast,
                       ImageEnhance.Sharpness), factors):
        pil = enh(pil).enhance(f)
    diff = np.abs(ours.astype(int) - np.asarray(pil).astype(int))[1:-1, 1:-1]  # PIL skips borders
    assert diff.max() <= 5 and diff.mean() < 2.5


def test_probability_zero_disables():
    image, mask = _pair()
    cfg = AugmentConfig(affine=False, flip_p=0.0, color_p=0.0, blur_p=0.0, noise_p=0.0)
    out_i, _ = Augment(cfg)(image, mask, _rng(0))
    assert np.array_equal(out_i, image)


def test_config_validation_and_input_checks():
    with pytest.raises(ValueError):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(scale_range=(1.5, 0.5))
    with pytest.raises(ValueError):
        AugmentConfig(blur_kernels=(4,))
    image, mask = _pair()
    with pytest.raises(ValueError):
        Augment()(image.astype(np.float32), mask, _rng(0))
    with pytest.raises(ValueError):
        Augment()(image, mask[:10], _rng(0))


def test_dataset_augmentation_seed_epoch_index():
    images = np.stack([_pair(seed=s)[0] for s in range(4)])
    masks = np.stack([_pair(seed=s)[1] for s in range(4)])
    ds = D.SegmentationDataset(images, masks, augment=Augment(), seed=9)
    ds.set_epoch(1)
    a = ds[2]
    b = ds[2]
    ds.set_epoch(2)
    c = ds[2]
    ds.set_epoch(1)
    d = ds[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])
    assert not torch.equal(a[0], c[0])
    other = D.SegmentationDataset(images, masks, augment=Augment(), seed=10)
    other.set_epoch(1)
    assert not torch.equal(a[0], other[2][0])
    # Expected draw: exactly what the documented (seed, epoch, index) generator yields.
    ref_i, _ = Augment()(images[2], masks[2], _rng(9, 1, 2))
    ref = (ref_i.astype(np.float32) - np.array(D.MEAN_RGB, np.float32)) / np.array(D.STD_RGB, np.float32)
    assert torch.allclose(a[0], torch.from_numpy(ref.transpose(2, 0, 1)), atol=1e-5)


def test_real_pair_mask_stays_binary():
    if not DATA_ROOT.is_dir():
        pytest.skip(f"EG1800 not found at {DATA_ROOT}")
    image, mask = D.load_pair(DATA_ROOT, D.read_split(DATA_ROOT, "val").ids[0])
    image = cv2.resize(image, (96, 128), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (96, 128), interpolation=cv2.INTER_NEAREST)
    for k in range(20):
        out_i, out_m = Augment()(image, mask, _rng(k))
        assert out_i.shape == (128, 96, 3) and set(np.unique(out_m)) <= {0, 1}
