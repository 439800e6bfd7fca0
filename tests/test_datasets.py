"""Data sets behind one reader: a folder of images and masks, the EasyPortrait layout, cross-dataset nas-eval.

Every data set here is built in ``tmp_path`` from real EG1800 images and masks: PNG / JPEG masks written
by the test (some downscaled, one of another shape, one missing), EasyPortrait label maps drawn on the
person masks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from nas import data as D
from nas.config import TrainConfig
from nas.datasets import (
    EASYPORTRAIT_CLASSES,
    DataSource,
    EasyPortraitReader,
    FolderReader,
    data_source,
    reader_from_config,
)
from tests.conftest import PROJECT, cli_env, compose

TINY = dict(epochs=1, schedule="single_stage", input_size=(64, 64), batch_size=4, lr=3e-3, threads=1, progress=False)


def _eg_mask(root: Path, i: str) -> np.ndarray:
    return D.load_pair(root, i)[1]  # uint8 (800, 600) in {0, 1}


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def defects_folder(eg1800_root, tmp_path_factory) -> dict:
    """10 EG1800 JPEGs in ``images/``, their masks in ``masks/`` with the real-world defects."""
    root = tmp_path_factory.mktemp("folder")
    ids = D.read_split(eg1800_root, "train").ids[:10]
    (root / "images").mkdir()
    for i in ids:
        shutil.copyfile(D.image_path(eg1800_root, i), root / "images" / f"{i}.jpg")
    for k, i in enumerate(ids[:7]):
        m = _eg_mask(eg1800_root, i)
        if k % 2:
            _write_png(root / "masks" / f"{i}.png", m * 255)  # 0/255
        else:
            _write_png(root / "masks" / f"{i}.png", m)  # 0/1
    resized = ids[7:9]
    for i in resized:  # downscaled copies: 300 x 400 and 150 x 200 (W x H), same aspect as 600 x 800
        m = _eg_mask(eg1800_root, i) * 255
        w = 300 if i == resized[0] else 150
        _write_png(root / "masks" / f"{i}.png", cv2.resize(m, (w, w * 4 // 3), interpolation=cv2.INTER_NEAREST))
    # a JPEG 0/255 mask (lossy: thresholded) replaces the PNG of ids[1]
    (root / "masks" / f"{ids[1]}.png").unlink()
    cv2.imwrite(str(root / "masks" / f"{ids[1]}.jpg"), _eg_mask(eg1800_root, ids[1]) * 255)
    mismatched, missing = ids[2], ids[9]
    _write_png(root / "masks" / f"{mismatched}.png", cv2.resize(_eg_mask(eg1800_root, mismatched), (400, 400)))
    _write_png(root / "masks" / "orphan.png", np.zeros((8, 8), np.uint8))  # a mask without an image
    return {"root": root, "ids": ids, "resized": resized, "mismatched": mismatched, "missing": missing}


def test_folder_pairs_defects_counted_and_named(defects_folder, eg1800_root, tmp_path) -> None:
    f = defects_folder
    reader = FolderReader(f["root"], val_split=0.3, split_seed=0)
    train, val = reader.listing("train"), reader.listing("val")
    assert sorted(train.ids + train.skipped_ids + val.ids + val.skipped_ids) == sorted(f["ids"])
    assert len(val.ids) + len(val.skipped_ids) == 3  # round(0.3 * 10), seeded
    assert FolderReader(f["root"], val_split=0.3, split_seed=0).listing("val").ids == val.ids
    rep = reader.report()
    assert (rep["n_skipped"], rep["n_resized"]) == (2, 2)
    assert sorted(rep["resized"]) == sorted(f["resized"])
    assert f"{f['mismatched']}.png is 400x400 but image" in rep["skipped"][f["mismatched"]]
    assert "no mask" in rep["skipped"][f["missing"]] and f"{f['missing']}.jpg" in rep["skipped"][f["missing"]]
    assert rep["orphan_masks"] == [str(f["root"] / "masks" / "orphan.png")]

    # masks read as class ids: 0/1, 0/255 and a lossy JPEG all give the EG1800 mask; a downscaled one is resized
    ids = f["ids"]
    for i in (ids[0], ids[3], ids[1]):
        _, mask, _ = reader.read_pair(i)
        agree = (mask == _eg_mask(eg1800_root, i)).mean()
        assert mask.shape == (800, 600) and set(np.unique(mask)) <= {0, 1}
        assert agree > (0.995 if i == ids[1] else 1 - 1e-9)  # the JPEG mask: thresholded at 128
    _, mask, (ip, mp) = reader.read_pair(f["resized"][1])
    assert mask.shape == (800, 600) and mp.name == f"{f['resized'][1]}.png"
    assert (mask == _eg_mask(eg1800_root, f["resized"][1])).mean() > 0.98

    # one cache for every reader: entries under <cache>/folder/HxW, a second load decodes nothing
    a = D.load_split_arrays(reader, "train", (64, 64), cache_dir=tmp_path, progress=False)
    assert a.dataset == "folder" and a.num_classes == 2 and a.cache_misses == len(a) == len(train.ids)
    assert len(list((tmp_path / "folder" / "64x64").glob("*.npy"))) == len(train.ids)
    b = D.load_split_arrays(FolderReader(f["root"], val_split=0.3), "train", (64, 64), cache_dir=tmp_path,
                            progress=False)
    assert (b.cache_hits, b.cache_misses) == (len(b), 0) and np.array_equal(a.masks, b.masks)
    assert sorted(a.resized_ids) == sorted(set(f["resized"]) & set(a.ids))


def test_folder_trains_one_tiny_epoch_and_counts_skipped_and_resized(defects_folder, workdir) -> None:
    from nas.checkpoint import read_checkpoint
    from nas.cli.train import run_training

    f = defects_folder
    cfg = compose("train", ["data=folder", f"data.root={f['root']}", "data.val_split=0.3", "fidelity=tiny",
                            "train.train_fraction=1.0", "train.holdout_fraction=0", "train.threads=1",
                            "train.progress=false", "train.batch_size=4", "tracking.enabled=false", "output_dir=out"])
    out = run_training(cfg)
    assert out["dataset"] == "folder" and out["num_classes"] == 2
    assert out["train_images"] + out["val_images"] == 8  # 10 images, 2 skipped
    assert out["skipped_ids"] == 2 and out["resized_masks"] == 2
    assert 0.0 <= out["miou"] <= 100.0 and out["miou_cm"] == pytest.approx(out["miou_2class"])
    assert set(out["class_iou"]) == {"background", "person"}
    ck = read_checkpoint(out["checkpoint"])
    assert ck["data"]["name"] == "folder" and ck["data"]["root"] == str(f["root"])


def test_folder_errors_name_the_file(tmp_path, eg1800_root) -> None:
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(ValueError, match=f"no images .* in {root / 'images'}"):
        FolderReader(root).listing("train")
    i = D.read_split(eg1800_root, "val").ids[0]
    shutil.copyfile(D.image_path(eg1800_root, i), root / "images" / "a.jpg")
    _write_png(root / "masks" / "a.png", _eg_mask(eg1800_root, i) * 7)  # values 0/7: neither binary form
    reader = FolderReader(root, val_split=1.0)
    with pytest.raises(ValueError, match=r"binary mask .*a\.png has values \[0, 7\]"):
        reader.read_pair("a")
    (root / "images" / "b.png").write_bytes(b"not an image at all")
    _write_png(root / "masks" / "b.png", np.zeros((8, 8), np.uint8))
    rep = FolderReader(root, val_split=1.0).report(["val"])
    assert rep["n_skipped"] == 1 and "unreadable file" in rep["skipped"]["b"] and "b.png" in rep["skipped"]["b"]
    (root / "images" / "a.jpg").unlink()
    with pytest.raises(ValueError, match="no usable image/mask pair"):
        FolderReader(root).listing("val")
    with pytest.raises(FileNotFoundError, match="masks_dir: folder not found"):
        FolderReader(root, masks_dir="nope").listing("val")
    with pytest.raises(ValueError, match="data.num_classes"):
        FolderReader(root, num_classes=1)


def test_folder_list_files(defects_folder) -> None:
    f = defects_folder
    ids = f["ids"]
    (f["root"] / "val.txt").write_text(f"{ids[0]}.jpg\n{ids[3]}\n{ids[9]}\n")
    reader = FolderReader(f["root"], val_list="val.txt")
    val, train = reader.listing("val"), reader.listing("train")
    assert val.ids == [ids[0], ids[3]] and val.skipped_ids == [ids[9]]
    assert set(train.ids + train.skipped_ids) == set(ids) - {ids[0], ids[3], ids[9]}
    (f["root"] / "bad.txt").write_text("zzz.jpg\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: 'zzz\.jpg' is not an image"):
        FolderReader(f["root"], val_list="bad.txt").listing("val")


# ---------------------------------------------------------------- EasyPortrait layout


def _draw_labels(person: np.ndarray) -> np.ndarray:
    """An EasyPortrait-style label map on an EG1800 person mask: face parts drawn in its upper third."""
    lab = person.astype(np.uint8).copy()
    ys, xs = np.nonzero(person)
    cx, top, h = int(xs.mean()), int(ys.min()), int(ys.max() - ys.min())
    fw, fh = max(h // 7, 20), max(h // 5, 24)
    cy = top + fh + 5
    cv2.ellipse(lab, (cx, cy), (fw, fh), 0, 0, 360, 2, -1)  # skin
    cv2.line(lab, (cx - fw // 2 - 10, cy - fh // 3), (cx - 8, cy - fh // 3), 3, 4)  # left brow
    cv2.line(lab, (cx + 8, cy - fh // 3), (cx + fw // 2 + 10, cy - fh // 3), 4, 4)  # right brow
    cv2.ellipse(lab, (cx - fw // 3, cy - fh // 6), (8, 4), 0, 0, 360, 5, -1)  # left eye
    cv2.ellipse(lab, (cx + fw // 3, cy - fh // 6), (8, 4), 0, 0, 360, 6, -1)  # right eye
    cv2.ellipse(lab, (cx, cy + fh // 2), (fw // 3, 6), 0, 0, 360, 7, -1)  # lips
    cv2.rectangle(lab, (cx - 6, cy + fh // 2 - 2), (cx + 6, cy + fh // 2 + 2), 8, -1)  # teeth
    return lab


@pytest.fixture(scope="module")
def easyportrait_root(eg1800_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyportrait")
    ids = D.read_split(eg1800_root, "train").ids[20:30]
    parts = {"train": ids[:6], "val": ids[6:8], "test": ids[8:10]}
    for split, part in parts.items():
        (root / "images" / split).mkdir(parents=True)
        for i in part:
            shutil.copyfile(D.image_path(eg1800_root, i), root / "images" / split / f"ep-{i}.jpg")
            _write_png(root / "annotations" / split / f"ep-{i}.png", _draw_labels(_eg_mask(eg1800_root, i)))
    return root


def test_easyportrait_reader_labels_and_two_class_variant(easyportrait_root, tmp_path) -> None:
    r9 = reader_from_config(compose("train", ["data=easyportrait", f"data.root={easyportrait_root}"]).data)
    assert isinstance(r9, EasyPortraitReader) and r9.num_classes == 9 and r9.class_names == EASYPORTRAIT_CLASSES
    assert [len(r9.split_ids(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    image, lab, (ip, mp) = r9.read_pair(r9.split_ids("test")[0])
    assert image.shape == (800, 600, 3) and set(np.unique(lab)) == set(range(9))
    assert ip.parent == easyportrait_root / "images" / "test" and mp.suffix == ".png"
    r2 = EasyPortraitReader(easyportrait_root, two_class=True)
    assert (r2.num_classes, r2.name) == (2, "easyportrait_2class")
    _, person, _ = r2.read_pair(r9.split_ids("test")[0])
    assert np.array_equal(person, (lab > 0).astype(np.uint8))
    a9 = D.load_split_arrays(r9, "val", (64, 64), cache_dir=tmp_path, progress=False)
    a2 = D.load_split_arrays(r2, "val", (64, 64), cache_dir=tmp_path, progress=False)
    assert a2.cache_misses == 2 and np.array_equal(a2.masks, (a9.masks > 0).astype(np.uint8))  # own cache keys
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        r9.listing("all")


def test_easyportrait_trains_a_9_class_genotype_and_reports_per_class_iou(easyportrait_root, cache_dir,
                                                                          tmp_path) -> None:
    from nas.train import load_data, train_genotype

    src = DataSource(EasyPortraitReader(easyportrait_root))
    cfg = src.train_config(TrainConfig(holdout_fraction=0.0, **TINY))
    assert cfg.num_classes == 9
    data = load_data(src.reader, cfg, cache_dir=str(cache_dir), progress=False)
    assert data.num_classes == 9 and set(np.unique(data.train.masks)) > {0, 1, 2}
    res = train_genotype("sinet", cfg, data)
    assert res.genotype.num_classes == 9 and res.num_classes == 9
    assert res.miou is None and res.miou_2class is None  # no 2-class figure on a 9-class set
    assert list(res.class_iou) == list(EASYPORTRAIT_CLASSES)
    assert all(0.0 <= v <= 100.0 for v in res.class_iou.values())
    # the same figures by hand: the selected network's argmax on the validation arrays, IoU per class over the split
    from nas.data import MEAN_RGB, STD_RGB
    from search_spaces import create_model

    model = create_model(res.genotype)
    model.load_state_dict(res.best_state)
    model.eval()
    x = torch.from_numpy(((data.val.images - np.float32(MEAN_RGB)) / np.float32(STD_RGB)).transpose(0, 3, 1, 2))
    with torch.no_grad():
        pred = model(x.float().contiguous()).argmax(1).numpy()
    t = data.val.masks
    inter = np.array([((pred == k) & (t == k)).sum() for k in range(9)])
    union = np.array([((pred == k) | (t == k)).sum() for k in range(9)])
    hand = np.where(union > 0, inter / np.maximum(union, 1), 1.0) * 100
    assert [res.class_iou[n] for n in EASYPORTRAIT_CLASSES] == pytest.approx(hand.tolist(), abs=1e-3)
    assert res.miou_cm == pytest.approx(hand[union > 0].mean(), abs=1e-3)
    assert res.summary()["class_iou"] == res.class_iou
    # its checkpoint scored on the test split (nas-eval's path): per-class IoU, no 2-class figures
    from nas.checkpoint import save_checkpoint
    from nas.predict import evaluate_and_log

    ck = save_checkpoint(tmp_path / "ep9.pt", res.genotype, res.best_state, train=cfg.as_dict())
    m = evaluate_and_log(ck, DataSource(src.reader, str(cache_dir)), "test", (64, 64), worst_k=1)
    assert (m["num_classes"], m["split"], m["images"], m["mlflow_run_id"]) == (9, "test", 2, None)
    assert "miou" not in m and list(m["class_iou"]) == list(EASYPORTRAIT_CLASSES)
    assert m["iou_mean"] == pytest.approx(m["image_miou"]) and m["worst"][0]["name"].startswith("ep-")
    with pytest.raises(ValueError, match="lovasz is a binary loss but the data set has 9 classes"):
        src.train_config(TrainConfig(loss="lovasz", **TINY))
    with pytest.raises(ValueError, match="has 9 classes but train.data_classes=2"):
        train_genotype("sinet", TrainConfig(holdout_fraction=0.0, **TINY), data)


# ---------------------------------------------------------------- cross-dataset nas-eval


@pytest.fixture(scope="module")
def eval_folder(eg1800_root, tmp_path_factory) -> Path:
    """6 EG1800 validation images as 150 x 200 PNGs (decoded identically by any reader) with 0/255 PNG masks."""
    root = tmp_path_factory.mktemp("evalfolder")
    for i in D.read_split(eg1800_root, "val").ids[:6]:
        image, mask = D.load_pair(eg1800_root, i)
        _write_png(root / "images" / f"v{i}.png", cv2.resize(image, (150, 200), interpolation=cv2.INTER_AREA))
        _write_png(root / "masks" / f"v{i}.png", cv2.resize(mask * 255, (150, 200), interpolation=cv2.INTER_NEAREST))
    return root


def _hand_iou(checkpoint: str, folder: Path, size: tuple[int, int]) -> dict[str, float]:
    """Per-image foreground IoU (x100) computed from the files: decode, the checkpoint's resize and
    normalisation, argmax, IoU against the nearest-resized mask."""
    from nas.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    pre = meta["preprocessing"]
    names = sorted(p.name for p in (folder / "images").iterdir())
    x = np.stack([pre.resize_image(np.asarray(Image.open(folder / "images" / n).convert("RGB")), size) for n in names])
    with torch.no_grad():
        pred = model(pre.apply(x)).argmax(1).numpy().astype(bool)
    out = {}
    for k, n in enumerate(names):
        m = np.asarray(Image.open(folder / "masks" / n)) > 127
        t = cv2.resize(m.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
        union = (pred[k] | t).sum()
        out[n] = 100.0 * ((pred[k] & t).sum() / union if union else 1.0)
    return out


def test_nas_eval_of_an_eg1800_checkpoint_on_a_folder_matches_a_hand_computation(eval_folder, workdir) -> None:
    from mlflow.tracking import MlflowClient

    from nas.checkpoint import read_checkpoint
    from nas.cli.train import run_training

    cfg = compose("train", ["fidelity=tiny", "train.threads=1", "train.progress=false", "output_dir=out",
                            "data.val_fraction=0.05"])
    ck = run_training(cfg)["checkpoint"]
    tracking = read_checkpoint(ck)["tracking"]
    assert tracking["run_id"] and tracking["experiment"] == "nas-train"
    hand = _hand_iou(ck, eval_folder, (64, 64))

    code = "from nas.cli.train import eval_main; eval_main()"
    res = subprocess.run([sys.executable, "-c", code, f"checkpoint={ck}", "data=folder", f"data.root={eval_folder}",
                          "split=all", "worst_k=2", "overlays_dir=ov"], capture_output=True, text=True,
                         env=cli_env({"PYTHONPATH": str(PROJECT)}), cwd=workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert (m["dataset"], m["split"], m["images"], m["input_size"]) == ("folder", "all", 6, [64, 64])
    assert m["miou"] == pytest.approx(np.mean(list(hand.values())), abs=1e-6)
    assert m["iou_mean"] == pytest.approx(m["miou"], abs=1e-9)
    vals = np.array(list(hand.values()))
    for q in (10, 50, 90):
        assert m[f"iou_p{q}"] == pytest.approx(np.percentile(vals, q), abs=1e-6)
    worst = sorted(hand.items(), key=lambda kv: kv[1])[:2]
    assert [(w["name"], round(w["iou"], 6)) for w in m["worst"]] == [(n, round(v, 6)) for n, v in worst]
    assert len(m["overlays"]) == 2 and all(Path(workdir, p).is_file() for p in m["overlays"])
    assert "worst: " + worst[0][0] in res.stdout
    # logged on the checkpoint's own training run
    run = MlflowClient(tracking["uri"]).get_run(tracking["run_id"])
    assert m["mlflow_run_id"] == tracking["run_id"]
    assert run.data.metrics["eval/folder/all/miou"] == pytest.approx(m["miou"])
    assert run.data.metrics["eval/folder/all/iou_p10"] == pytest.approx(m["iou_p10"])


def test_release_checkpoint_on_a_folder_with_its_own_preprocessing(eval_folder, tmp_path) -> None:
    from nas.predict import evaluate_and_log
    from nas.release import write_release_checkpoint

    weights = PROJECT.parent / "shared" / "weights" / "ext_portrait_segmentation" / "SINet.pth"
    if not weights.is_file():
        pytest.skip(f"released weights not found: {weights}")
    ck = write_release_checkpoint(weights, tmp_path / "sinet.pt")["checkpoint"]
    cfg = compose("eval", ["checkpoint=x", "data=folder", f"data.root={eval_folder}", "data.val_split=1"])
    src = data_source(cfg.data)
    m = evaluate_and_log(ck, src, "val", (224, 224), worst_k=3)
    hand = _hand_iou(ck, eval_folder, (224, 224))  # bilinear from full resolution, BGR, /255
    assert m["images"] == 6 and m["mlflow_run_id"] is None  # an imported checkpoint has no run
    assert m["miou"] == pytest.approx(np.mean(list(hand.values())), abs=1e-6)
    assert m["miou"] > 85.0  # the released SINet still segments these (smaller) portraits
    ep = DataSource(FolderReader(eval_folder, num_classes=3, val_split=1.0))
    with pytest.raises(ValueError, match="predicts 2 classes but the data set folder has 3"):
        evaluate_and_log(ck, ep, "val", (224, 224))
