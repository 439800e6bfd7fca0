"""Tests of nas.data on the real EG1800 copy (skipped when it is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from nas import data as D
from nas.augment import Augment

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "EG1800"
SIZE = (48, 40)  # small and non-square: catches (H, W) / (W, H) mix-ups


@pytest.fixture(scope="module")
def root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"EG1800 not found at {DATA_ROOT}")
    return DATA_ROOT


def make_root(tmp: Path, src: Path, train: list[str], val: list[str]) -> Path:
    """A copy of part of EG1800 in the release layout."""
    new = tmp / "eg"
    (new / D.IMAGE_DIR).mkdir(parents=True)
    (new / D.MASK_DIR).mkdir()
    for i in dict.fromkeys(train + val):
        shutil.copyfile(D.image_path(src, i), D.image_path(new, i))
        shutil.copyfile(D.mask_path(src, i), D.mask_path(new, i))
    (new / "eg1800_train.txt").write_text("".join(f"{i}.png\n" for i in train))
    (new / "eg1800_test.txt").write_text("".join(f"{i}.png\n" for i in val))
    for p in new.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)  # the source copy is read-only
    return new


# ---------------------------------------------------------------- root resolution


def test_unset_root_raises(monkeypatch):
    monkeypatch.delenv("EG1800_ROOT", raising=False)
    for value in (None, ""):
        with pytest.raises(ValueError, match=r"data\.root=.*EG1800_ROOT"):
            D.resolve_data_root(value)


def test_env_root_and_missing_root(monkeypatch, tmp_path, root):
    monkeypatch.setenv("EG1800_ROOT", str(root))
    assert D.resolve_data_root(None) == root
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        D.resolve_data_root(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        D.read_split(missing, "train")


# ---------------------------------------------------------------- listings and counts


def test_split_counts(root):
    train, val = D.read_split(root, "train"), D.read_split(root, "val")
    assert (len(train.ids), len(train.skipped_ids)) == (1341, 106)
    assert (len(val.ids), len(val.skipped_ids)) == (264, 25)
    assert train.num_listed == 1447 and val.num_listed == 289
    assert train.list_path.name == "eg1800_train.txt"
    assert all(len(i) == 5 and i.isdigit() for i in train.ids)
    assert not set(train.ids) & set(val.ids)


def test_straddling_duplicates_found_by_content(root):
    pairs = D.find_split_duplicates(root)
    assert {frozenset(p) for p in pairs} == {
        frozenset(("00203", "01175")), frozenset(("00971", "00990")), frozenset(("01016", "01023")),
    }
    train_ids = D.read_split(root, "train").ids
    kept, dropped = D.remove_split_duplicates(root, train_ids)
    assert sorted(dropped) == sorted(t for t, _ in pairs)
    assert len(kept) == 1338 and not set(kept) & set(dropped)


def test_load_split_drops_duplicates_by_default(root, tmp_path):
    a = D.load_split_arrays(root, "train", size=SIZE, cache_dir=tmp_path, fraction=0.01, progress=False)
    assert sorted(a.dropped_duplicate_ids) == ["00203", "00990", "01016"]
    assert len(a) == round(0.01 * 1338) and not set(a.ids) & set(a.dropped_duplicate_ids)
    assert len(a.skipped_ids) == 106
    # Switched off: nothing dropped, and the duplicates can be loaded.
    b = D.load_split_arrays(root, "train", size=SIZE, cache_dir=tmp_path, ids=["00203", "00990"],
                            drop_split_duplicates=False, progress=False)
    assert b.dropped_duplicate_ids == [] and b.ids == ["00203", "00990"]
    c = D.load_split_arrays(root, "train", size=SIZE, cache_dir=tmp_path, ids=["00203", "00001"],
                            progress=False)
    assert c.ids == ["00001"] and c.dropped_duplicate_ids == ["00203"]


# ---------------------------------------------------------------- decoding


def test_grayscale_jpegs_become_rgb(root, tmp_path):
    from PIL import Image

    train_ids = D.read_split(root, "train").ids
    gray = [i for i in train_ids if Image.open(D.image_path(root, i)).mode == "L"]
    assert len(gray) == 2
    for i in gray:
        image, mask = D.load_pair(root, i)
        assert image.shape == (800, 600, 3) and image.dtype == np.uint8
        assert mask.shape == (800, 600)
        assert np.array_equal(image[..., 0], image[..., 2])
    a = D.load_split_arrays(root, "train", size=SIZE, cache_dir=tmp_path, ids=gray, progress=False)
    assert a.images.shape == (2, *SIZE, 3) and a.masks.shape == (2, *SIZE)


def test_arrays_shapes_values_and_resize(root, tmp_path):
    ids = D.read_split(root, "val").ids[:3]
    a = D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, progress=False)
    assert a.images.dtype == np.uint8 and a.masks.dtype == np.uint8
    assert set(np.unique(a.masks)) <= {0, 1}
    # The cached mask agrees with a nearest-neighbour resize of the original.
    import cv2

    _, full = D.load_pair(root, ids[0])
    ref = cv2.resize(full, SIZE[::-1], interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(a.masks[0], ref)
    # Image: close to an area resize of the full decode (JPEG DCT scaling may differ slightly).
    image, _ = D.load_pair(root, ids[0])
    ref_img = cv2.resize(image, SIZE[::-1], interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(a.images[0].astype(int) - ref_img).mean() < 3.0


# ---------------------------------------------------------------- cache


def test_cache_second_run_only_hits(root, tmp_path, monkeypatch):
    ids = D.read_split(root, "val").ids[:6]
    first = D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, progress=False)
    assert (first.cache_hits, first.cache_misses) == (0, 6)
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    assert not list(tmp_path.rglob(".tmp-*"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a JPEG on a warm cache")

    monkeypatch.setattr(D, "_decode_jpeg", no_decode)
    second = D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, progress=False)
    assert (second.cache_hits, second.cache_misses) == (6, 0)
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.masks, second.masks)
    assert second.ids == first.ids
    # Another size is another key.
    monkeypatch.undo()
    other = D.load_split_arrays(root, "val", size=(32, 32), cache_dir=tmp_path, ids=ids[:2], progress=False)
    assert other.cache_misses == 2


def test_cache_invalidated_by_changed_source(root, tmp_path):
    ids = D.read_split(root, "val").ids[:3]
    new = make_root(tmp_path, root, train=ids, val=ids)
    cache = tmp_path / "cache"
    a = D.load_split_arrays(new, "val", size=SIZE, cache_dir=cache, progress=False)
    assert a.cache_misses == 3
    mask = scipy.io.loadmat(D.mask_path(new, ids[1]))["mask"]
    mask[:400] = 1 - mask[:400]
    scipy.io.savemat(D.mask_path(new, ids[1]), {"mask": mask})
    b = D.load_split_arrays(new, "val", size=SIZE, cache_dir=cache, progress=False)
    assert (b.cache_hits, b.cache_misses) == (2, 1)
    assert not np.array_equal(a.masks[1], b.masks[1])
    assert np.array_equal(a.masks[0], b.masks[0]) and np.array_equal(a.images, b.images)


def test_cache_corrupt_entry_rebuilt_and_concurrent_writers(root, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ids = D.read_split(root, "val").ids[:4]

    def load():
        return D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, workers=1, progress=False)

    with ThreadPoolExecutor(2) as pool:  # two builders racing on the same keys
        a, b = pool.map(lambda _: load(), range(2))
    assert np.array_equal(a.images, b.images) and len(list(tmp_path.rglob("*.npy"))) == 4
    entries = sorted(tmp_path.rglob("*.npy"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # torn/corrupt entry
    np.save(entries[1], np.zeros((5, 5, 4), np.uint8))  # readable but wrong shape
    c = load()
    assert (c.cache_hits, c.cache_misses) == (2, 2) and np.array_equal(c.images, a.images)


# ---------------------------------------------------------------- errors


@pytest.fixture
def small_root(root, tmp_path) -> Path:
    ids = D.read_split(root, "val").ids[:2]
    return make_root(tmp_path, root, train=ids, val=ids)


def _load(r: Path, tmp_path: Path, **kw):
    return D.load_split_arrays(r, "val", size=SIZE, cache_dir=tmp_path / "c", progress=False, **kw)


def test_truncated_jpeg_raises(small_root, tmp_path):
    i = D.read_split(small_root, "val").ids[0]
    p = D.image_path(small_root, i)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(p)):
        _load(small_root, tmp_path)
    with pytest.raises(ValueError, match=str(p)):
        D.load_pair(small_root, i)


def test_missing_mask_skipped_in_listing_but_raises_when_requested(small_root, tmp_path):
    i = D.read_split(small_root, "val").ids[0]
    p = D.mask_path(small_root, i)
    p.unlink()
    listing = D.read_split(small_root, "val")
    assert listing.skipped_ids == [i] and len(listing.ids) == 1
    with pytest.raises(FileNotFoundError, match=str(p)):
        D.load_pair(small_root, i)
    with pytest.raises(FileNotFoundError, match=str(p)):
        _load(small_root, tmp_path, ids=[i])
    with pytest.raises(ValueError, match="99999"):
        _load(small_root, tmp_path, ids=["99999"])


@pytest.mark.parametrize(
    "content, pattern",
    [
        ({"mask": np.zeros((400, 300), np.uint8)}, "shape"),
        ({"other": np.zeros((800, 600), np.uint8)}, "no variable 'mask'"),
        ({"mask": np.full((800, 600), 2, np.uint8)}, "outside"),
        (None, "cannot read"),
    ],
)
def test_bad_mask_raises(small_root, tmp_path, content, pattern):
    i = D.read_split(small_root, "val").ids[0]
    p = D.mask_path(small_root, i)
    if content is None:
        p.write_bytes(b"this is not a MATLAB file at all" * 10)
    else:
        scipy.io.savemat(p, content)
    with pytest.raises(ValueError, match=pattern) as info:
        _load(small_root, tmp_path)
    assert str(p) in str(info.value)


def test_bad_split_lists(small_root, tmp_path):
    lst = small_root / "eg1800_test.txt"
    lst.write_text("\n\n")
    with pytest.raises(ValueError, match=f"empty.*{lst}"):
        D.read_split(small_root, "val")
    lst.write_text("00001.png\nnot-a-name\n")
    with pytest.raises(ValueError, match=f"{lst}:2"):
        D.read_split(small_root, "val")
    lst.unlink()
    with pytest.raises(FileNotFoundError, match=str(lst)):
        _load(small_root, tmp_path)
    # Dropping duplicates from train needs the val list too.
    with pytest.raises(FileNotFoundError, match=str(lst)):
        D.load_split_arrays(small_root, "train", size=SIZE, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="split"):
        D.read_split(small_root, "validation")


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_fraction(small_root, tmp_path, bad):
    with pytest.raises(ValueError, match="fraction"):
        _load(small_root, tmp_path, fraction=bad)


def test_bad_size(small_root, tmp_path):
    with pytest.raises(ValueError, match="size"):
        D.load_split_arrays(small_root, "val", size=(0, 10), cache_dir=tmp_path)


# ---------------------------------------------------------------- subsets and holdout


def test_subset_and_holdout_deterministic():
    ids = [f"{i:05d}" for i in range(1, 1001)]
    s1, s2 = D.subset_ids(ids, 0.1, seed=3), D.subset_ids(ids, 0.1, seed=3)
    assert s1 == s2 and len(s1) == 100 and s1 == sorted(s1)
    assert D.subset_ids(ids, 0.1, seed=4) != s1
    assert set(s1) <= set(D.subset_ids(ids, 0.3, seed=3))  # nested fidelities
    assert D.subset_ids(ids, 1.0) == ids
    assert len(D.subset_ids(ids[:3], 0.01)) == 1

    tr, ho = D.split_holdout(ids, 0.1, seed=0)
    assert (tr, ho) == D.split_holdout(ids, 0.1, seed=0)
    assert len(ho) == 100 and len(tr) == 900 and set(tr) | set(ho) == set(ids)
    assert not set(tr) & set(ho)
    assert set(D.split_holdout(list(reversed(ids)), 0.1, seed=0)[1]) == set(ho)  # order-free
    assert D.split_holdout(ids, 0.1, seed=1)[1] != ho
    assert D.split_holdout(ids, 0.0) == (ids, [])
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            D.split_holdout(ids, bad)


def test_select(root, tmp_path):
    ids = D.read_split(root, "val").ids[:4]
    a = D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, progress=False)
    tr, ho = D.split_holdout(a.ids, 0.25, seed=0)
    b = a.select(ho)
    assert b.ids == ho and np.array_equal(b.images[0], a.images[a.ids.index(ho[0])])
    with pytest.raises(KeyError):
        a.select(["99999"])


# ---------------------------------------------------------------- dataset and loader


def _synthetic(n=10, h=32, w=24):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = (rng.random((n, h, w)) > 0.5).astype(np.uint8)
    return images, masks


def test_dataset_item_shapes_and_normalisation():
    images, masks = _synthetic()
    ds = D.SegmentationDataset(images, masks)
    x, y = ds[3]
    assert x.shape == (3, 32, 24) and x.dtype == torch.float32
    assert y.shape == (32, 24) and y.dtype == torch.int64
    expected = (images[3, 5, 7].astype(np.float32) - np.array(D.MEAN_RGB)) / np.array(D.STD_RGB)
    assert torch.allclose(x[:, 5, 7], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert torch.equal(y, torch.from_numpy(masks[3].astype(np.int64)))
    assert len(ds) == 10 and torch.equal(ds[-1][1], ds[9][1])
    with pytest.raises(ValueError):
        D.SegmentationDataset(images.astype(np.float32), masks)


def test_dataset_on_real_arrays(root, tmp_path):
    ids = D.read_split(root, "val").ids[:4]
    a = D.load_split_arrays(root, "val", size=SIZE, cache_dir=tmp_path, ids=ids, progress=False)
    ds = D.SegmentationDataset.from_arrays(a, augment=Augment(), seed=1)
    x, y = ds[0]
    assert x.shape == (3, *SIZE) and y.shape == SIZE and set(y.unique().tolist()) <= {0, 1}


def test_loader_seeded_and_worker_independent():
    images, masks = _synthetic(n=13)
    ds = D.SegmentationDataset(images, masks, augment=Augment(), seed=5)

    def epoch_batches(workers: int, epoch: int):
        ds.set_epoch(epoch)
        loader = D.make_loader(ds, batch_size=4, shuffle=True, seed=11, num_workers=workers)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = epoch_batches(0, 2), epoch_batches(2, 2)
    assert len(a) == 3 and a[0][0].shape == (4, 3, 32, 24)  # drop_last when shuffling
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = epoch_batches(0, 3)
    assert not torch.equal(a[0][0], c[0][0])
    val = D.make_loader(ds, batch_size=4, shuffle=False)
    assert sum(len(y) for _, y in val) == 13
