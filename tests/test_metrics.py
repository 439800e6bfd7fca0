"""Tests for nas.metrics: per-image foreground IoU ("mIoU" of the papers) vs pooled metrics."""
import pytest
import torch

from nas.metrics import SegmentationMetrics, foreground_iou_per_image, predictions_from_logits


def blank(n=1, h=10, w=10):
    return torch.zeros(n, h, w, dtype=torch.long)


def test_half_coverage_iou():
    t = blank()
    t[0, 2:6, 2:6] = 1            # 16 px
    p = blank()
    p[0, 2:4, 2:6] = 1            # 8 px inside target
    iou = foreground_iou_per_image(p, t)
    assert iou.dtype == torch.float32 and iou.shape == (1,)
    assert iou.item() == pytest.approx(0.5)
    p2 = p.clone()
    p2[0, 8, 8] = 1               # one false positive: 8 / 17
    assert foreground_iou_per_image(p2.bool(), t).item() == pytest.approx(8 / 17)


def test_empty_union_is_one_and_disjoint_is_zero():
    t, p = blank(2), blank(2)
    t[1, 0, 0] = 1
    p[1, 5, 5] = 1
    iou = foreground_iou_per_image(p, t)
    assert iou.tolist() == [1.0, 0.0]


def test_predictions_from_logits():
    l2 = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])      # (1, 2, 1, 2)
    assert predictions_from_logits(l2).tolist() == [[[0, 1]]]
    l1 = torch.tensor([[[[0.3, -0.2, 0.0]]]])               # (1, 1, 1, 3)
    out = predictions_from_logits(l1)
    assert out.dtype == torch.long and out.tolist() == [[[1, 0, 0]]]
    with pytest.raises(ValueError):
        predictions_from_logits(torch.zeros(2, 3, 3))


def test_confusion_miou_hand_computed():
    # 1 image, 10 pixels: target 4 fg / 6 bg; pred: 3 TP, 1 FN, 2 FP, 4 TN
    t = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]])
    p = torch.tensor([[[1, 1, 1, 0, 1, 1, 0, 0, 0, 0]]])
    m = SegmentationMetrics()
    m.update(p, t)
    r = m.compute()
    fg = 3 / (3 + 1 + 2)          # 0.5
    bg = 4 / (4 + 2 + 1)          # 4/7
    assert r["miou_2class"] == pytest.approx(100 * (fg + bg) / 2)
    assert r["fg_iou_global"] == pytest.approx(100 * fg)
    assert r["miou"] == pytest.approx(100 * fg)
    assert r["pixel_acc"] == pytest.approx(70.0)
    assert r["n_images"] == 1


def test_ignore_index_respected():
    t = torch.tensor([[[1, 1, 0, 0, 255, 255]]])
    p = torch.tensor([[[1, 1, 0, 0, 1, 0]]])   # wrong-looking values only on ignored pixels
    m = SegmentationMetrics()
    m.update(p, t)
    r = m.compute()
    assert r["miou"] == r["miou_2class"] == r["fg_iou_global"] == r["pixel_acc"] == 100.0
    assert int(m.confusion.sum()) == 4
    assert foreground_iou_per_image(p, t).item() == 1.0


def test_per_image_mean_differs_from_pooled():
    # image 0: small person (4 px) completely missed -> IoU 0
    # image 1: large person (96 px) perfectly found   -> IoU 1
    t, p = blank(2), blank(2)
    t[0, 0:2, 0:2] = 1
    t[1, 0:8, 0:10] = 1
    t[1, 8, 0:10] = 1
    t[1, 9, 0:6] = 1
    p[1] = t[1]
    m = SegmentationMetrics()
    m.update(p[:1], t[:1])         # accumulate over two batches
    m.update(p[1:], t[1:])
    r = m.compute()
    assert r["n_images"] == 2
    assert r["miou"] == pytest.approx(50.0)                 # paper "mIoU"
    assert r["fg_iou_global"] == pytest.approx(100 * 96 / 100)
    assert abs(r["miou"] - r["fg_iou_global"]) > 40
    assert m.per_image_iou().tolist() == [0.0, 1.0]


def test_all_foreground_baseline():
    t = blank(3, 10, 10)
    t[0, :6] = 1                   # 60 %
    t[1, :3] = 1                   # 30 %
    t[2, :9] = 1                   # 90 %
    logits = torch.full((3, 2, 10, 10), 0.0)
    logits[:, 1] = 1.0             # argmax -> foreground everywhere
    m = SegmentationMetrics()
    m.update(logits, t)
    r = m.compute()
    assert r["miou"] == pytest.approx(100 * (0.6 + 0.3 + 0.9) / 3)
    assert r["fg_iou_global"] == pytest.approx(100 * 180 / 300)
    assert r["miou_2class"] == pytest.approx(100 * (0.0 + 0.6) / 2)
    assert r["pixel_acc"] == pytest.approx(60.0)


def test_single_channel_logits_and_reset():
    t = blank(1, 4, 4)
    t[0, :2] = 1
    s = torch.where(t == 1, 3.0, -3.0).float().unsqueeze(1)
    m = SegmentationMetrics()
    m.update(s, t)
    assert m.compute()["miou"] == 100.0
    m.reset()
    with pytest.raises(RuntimeError):
        m.compute()
    m.update(-s, t)
    assert m.compute()["miou"] == 0.0 and m.compute()["n_images"] == 1


def test_shape_mismatch_and_bad_labels():
    m = SegmentationMetrics()
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(1, 8, 8\)"):
        m.update(torch.zeros(1, 2, 4, 4), blank(1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        foreground_iou_per_image(blank(1, 4, 4), blank(2, 4, 4))
    with pytest.raises(ValueError):
        m.update(blank(1, 2, 2), torch.tensor([[[0, 3], [0, 1]]]))
