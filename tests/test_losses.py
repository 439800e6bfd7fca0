"""Tests for nas.losses (class weights, boundary band, CE + boundary, Lovasz hinge)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from nas.losses import SegmentationLoss, boundary_band, class_weights_from_masks, downsample_labels, lovasz_hinge


def square_mask(h=40, w=40, top=10, left=12, side=16, n=1):
    t = torch.zeros(n, h, w, dtype=torch.long)
    t[:, top:top + side, left:left + side] = 1
    return t


# ---------------------------------------------------------------- class weights
def test_class_weights_hand_values():
    m = np.zeros((2, 4, 4), dtype=np.uint8)
    m[0, :2, :] = 1          # 8 of 32 pixels foreground -> p = (0.75, 0.25)
    m[1, 0, 0] = 255         # ignored pixels are not counted ...
    m[1, 0, 1] = 255
    m[1, 1, :2] = 1          # ... so fg = 10, bg = 20 of 30 counted -> recompute below
    w = class_weights_from_masks(m)
    # p = (20/30, 10/30): 1/ln(1.1+2/3) = 1/ln(1.76667), 1/ln(1.1+1/3) = 1/ln(1.43333)
    assert w.dtype == torch.float32 and w.shape == (2,)
    assert w[0].item() == pytest.approx(1.757177, abs=1e-5)
    assert w[1].item() == pytest.approx(2.777757, abs=1e-5)
    m2 = torch.zeros(4, 4, dtype=torch.long)
    m2[0, :] = 1             # p = (0.75, 0.25)
    w2 = class_weights_from_masks(m2)
    assert w2.tolist() == pytest.approx([1.625526, 3.332172], abs=1e-5)
    assert w2[1] > w2[0]     # rarer class weighs more


def test_class_weights_errors():
    with pytest.raises(ValueError):
        class_weights_from_masks(np.full((3, 3), 255))
    with pytest.raises(ValueError):
        class_weights_from_masks(np.array([0, 1, 2]), num_classes=2)


# ---------------------------------------------------------------- band
@pytest.mark.parametrize("window", [3, 15])
def test_band_square_count(window):
    side, r = 16, window // 2
    t = square_mask(h=64, w=64, top=20, left=20, side=side)
    band = boundary_band(t, window)
    assert band.dtype == torch.bool and band.shape == t.shape
    expected = (side + 2 * r) ** 2 - max(side - 2 * r, 0) ** 2
    assert int(band.sum()) == expected   # w=3: 18^2-14^2=128 ; w=15: 30^2-2^2=896


def test_band_empty_and_full():
    for t in (torch.zeros(2, 20, 20, dtype=torch.long), torch.ones(2, 20, 20, dtype=torch.long)):
        for w in (1, 3, 15):
            assert not boundary_band(t, w).any()


def test_band_matches_scipy_and_ignores_255():
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(3, 30, 33, generator=g) > 0.6).long()
    t[0, :5, :5] = 255
    band = boundary_band(t, 5)
    for i in range(3):
        y = (t[i] == 1).numpy()
        st = np.ones((5, 5), bool)
        ref = ndimage.binary_dilation(y, st) & ~ndimage.binary_erosion(y, st, border_value=1)
        assert np.array_equal(band[i].numpy(), ref)


def test_band_ignore_is_background():
    t = square_mask(h=64, w=64, top=5, left=5, side=16)
    ref = boundary_band(t, 3)
    t[0, 40:50, 40:50] = 255          # ignore block in the background: no band around it
    assert torch.equal(boundary_band(t, 3), ref)
    t2 = torch.full((1, 12, 12), 255, dtype=torch.long)
    assert not boundary_band(t2, 3).any()


def test_band_of_a_label_map_is_the_union_of_every_class_edge():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 5, (2, 9, 11), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 5 classes
    t[1, :6, :6] = 255
    band = boundary_band(t, 5)
    st = np.ones((5, 5), bool)
    for i in range(2):
        y = torch.where(t[i] == 255, 0, t[i]).numpy()
        ref = np.zeros(y.shape, bool)
        for c in range(5):
            m = y == c
            ref |= ndimage.binary_dilation(m, st) & ~ndimage.binary_erosion(m, st, border_value=1)
        assert np.array_equal(band[i].numpy(), ref)
    # a 9-class cross-entropy with the boundary term trains on it (class weights over all 9 classes)
    labels = torch.randint(0, 9, (2, 16, 16), generator=g)
    w = class_weights_from_masks(labels, num_classes=9)
    logits = torch.randn(2, 9, 16, 16, generator=g, requires_grad=True)
    loss = SegmentationLoss("ce", class_weights=w, boundary_window=3)(logits, labels)
    loss.backward()
    assert w.shape == (9,) and torch.isfinite(loss) and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, 2, -3, 4.0, True])
def test_band_bad_window(bad):
    with pytest.raises(ValueError, match="window"):
        boundary_band(square_mask(), bad)
    with pytest.raises(ValueError, match="window"):
        SegmentationLoss(boundary_window=bad)


# ---------------------------------------------------------------- CE
def _logits_target(n=2, c=2, h=24, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, requires_grad=True)
    target = square_mask(h, w, top=5, left=6, side=10, n=n)
    return logits, target


def test_ce_without_boundary_equals_cross_entropy():
    logits, target = _logits_target()
    target[0, 0, :4] = 255
    wts = torch.tensor([0.7, 2.5])
    got = SegmentationLoss("ce", wts, boundary=False)(logits, target)
    ref = F.cross_entropy(logits, target, weight=wts, ignore_index=255)
    assert torch.allclose(got, ref, atol=1e-6)
    got0 = SegmentationLoss("ce", None, boundary=False)(logits, target)
    assert torch.allclose(got0, F.cross_entropy(logits, target, ignore_index=255), atol=1e-6)


def test_ce_with_boundary_hand_reference():
    logits, target = _logits_target()
    wts = torch.tensor([0.7, 2.5])
    # band by hand: square of side 10, window 3 -> rows/cols [top-1, top+side] minus interior
    band = torch.zeros_like(target, dtype=torch.bool)
    band[:, 4:16, 5:17] = True
    band[:, 6:14, 7:15] = False
    t_band = torch.where(band, target, torch.full_like(target, 255))
    ref = (F.cross_entropy(logits, target, weight=wts)
           + 0.5 * F.cross_entropy(logits, t_band, weight=wts, ignore_index=255))
    got = SegmentationLoss("ce", wts, boundary=True, boundary_window=3)(logits, target)
    assert torch.allclose(got, ref, atol=1e-6)
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_ce_empty_band_no_nan():
    logits, _ = _logits_target()
    target = torch.zeros(2, 24, 24, dtype=torch.long)   # no foreground -> empty band
    loss_fn = SegmentationLoss("ce", torch.tensor([1.0, 3.0]), boundary=True)
    got = loss_fn(logits, target)
    assert torch.isfinite(got)
    ref = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))
    assert torch.allclose(got, ref, atol=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()
    # all pixels ignored: 0, not NaN
    logits2 = logits.detach().clone().requires_grad_(True)
    z = loss_fn(logits2, torch.full((2, 24, 24), 255, dtype=torch.long))
    assert z.item() == 0.0
    z.backward()


# ---------------------------------------------------------------- Lovasz
def _lovasz_bruteforce(scores, labels):
    """Lovasz extension of the Jaccard set loss, integrated over thresholds directly:
    loss = int_0^inf Delta_J({i : m_i > t}) dt,  m = relu(1 - s * sign),
    Delta_J(M) = |M| / |{y=1} U M|."""
    s, y = np.asarray(scores, float), np.asarray(labels, float)
    m = np.maximum(1 - s * (2 * y - 1), 0)
    levels = np.unique(np.concatenate([[0.0], m]))
    total = 0.0
    for lo, hi in zip(levels[:-1], levels[1:]):
        mis = m >= hi
        union = np.sum((y == 1) | mis)
        total += (hi - lo) * (mis.sum() / union if union else 0.0)
    return total


def test_lovasz_perfect_separation_zero():
    target = square_mask(16, 16, 4, 4, 6, n=2)
    logits = (5.0 * (2 * target - 1).float()).unsqueeze(1).requires_grad_(True)
    loss = SegmentationLoss("lovasz", boundary=True, boundary_window=3)(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_lovasz_analytic_2x2():
    target = torch.tensor([[[1, 0], [1, 0]]])
    zero = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = SegmentationLoss("lovasz", boundary=False)(zero, target)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)   # all errors 1 -> Jaccard loss 1
    loss.backward()
    assert torch.isfinite(zero.grad).all()
    # margins: (+2 fg ok), (-0.5 bg, err .5), (0.5 fg, err .5), (-2 bg ok):
    # for t in (0, .5) mistakes = 2 pixels, union = 2 fg + 1 fp -> 2/3; loss = 0.5 * 2/3
    s = torch.tensor([[[[2.0, -0.5], [0.5, -2.0]]]], requires_grad=True)
    loss = SegmentationLoss("lovasz", boundary=False)(s, target)
    assert loss.item() == pytest.approx(1.0 / 3.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_lovasz_matches_bruteforce_and_per_image_mean():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, 4, generator=g) * 1.5
    t = (torch.rand(3, 5, 4, generator=g) > 0.5).long()
    t[2] = 0                                     # image without foreground
    t[1, 0, :] = 255                             # ignored pixels
    per = []
    for i in range(3):
        v = t[i] != 255
        per.append(_lovasz_bruteforce(s[i][v].numpy(), t[i][v].numpy()))
    got = lovasz_hinge(s, t)
    assert got.item() == pytest.approx(np.mean(per), abs=1e-5)


def test_lovasz_boundary_term():
    target = square_mask(16, 16, 4, 4, 6, n=1)
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 1, 16, 16, generator=g)
    band = boundary_band(target, 3)
    t_band = torch.where(band, target, torch.full_like(target, 255))
    ref = lovasz_hinge(s[:, 0], target) + 0.5 * lovasz_hinge(s[:, 0], t_band)
    got = SegmentationLoss("lovasz", boundary=True, boundary_window=3)(s, target)
    assert got.item() == pytest.approx(float(ref), abs=1e-6)


# ---------------------------------------------------------------- errors / utils
def test_errors():
    with pytest.raises(ValueError, match="ce"):
        SegmentationLoss("dice")
    with pytest.raises(ValueError, match="kind.*C=1"):
        SegmentationLoss("ce")(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="kind.*C=2"):
        SegmentationLoss("lovasz")(torch.zeros(1, 2, 4, 4),
                                   torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 2, 4, 4\)"):
        SegmentationLoss("ce")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss("ce", torch.ones(3))(torch.zeros(1, 2, 4, 4),
                                              torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        SegmentationLoss("lovasz", torch.ones(1))


def test_downsample_labels_nearest():
    t = torch.arange(64).reshape(1, 8, 8) % 2
    t[0, 0, 0] = 255
    d = downsample_labels(t, (2, 2))
    assert d.shape == (1, 2, 2) and d.dtype == torch.long
    assert d.tolist() == [[[255, 0], [0, 0]]]   # nearest picks rows/cols 0 and 4
    with pytest.raises(ValueError):
        downsample_labels(t[0], (2, 2))
