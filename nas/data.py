"""EG1800 reading, preprocessed on-disk cache, torch Dataset and DataLoader builder.

Layout under the data root (the original release's; see the data README)::

    eg1800_train.txt, eg1800_test.txt      names "NNNNN.png", one per line
    images_data_crop/NNNNN.jpg              600x800 JPEGs (2 stored grayscale)
    images_mask/NNNNN_mask.mat              MATLAB variable "mask", uint8 (800, 600), 0/1

Defects of this copy are handled, not hidden: listed ids without files are skipped
and reported; training crops byte-identical to validation crops are found by
content hash and dropped (reported); grayscale JPEGs become RGB; corrupt,
truncated or mismatched files raise errors naming the file.

The cache and :func:`load_split_arrays` serve every data set: pass a
:class:`nas.datasets.DatasetReader` (a folder of images and masks, EasyPortrait)
instead of an EG1800 root.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from tqdm import tqdm

PathLike = str | os.PathLike

# Items are (x - MEAN_RGB) / STD_RGB in 0..255 units: the authors' release reads images with
# OpenCV (BGR) and normalises with mean (107.304, 115.997, 132.23), std (63.0, 65.1, 68.3) in
# that order. We decode RGB, so the same statistics are listed here reversed, in RGB order
# (this copy's training images measure mean R, G, B = 130.3, 114.8, 106.6 at 224x224).
MEAN_RGB = (132.23, 115.997, 107.304)
STD_RGB = (68.3, 65.1, 63.0)

SPLIT_FILES = {"train": "eg1800_train.txt", "val": "eg1800_test.txt"}
IMAGE_DIR, MASK_DIR = "images_data_crop", "images_mask"
# Part of every cache key: bump when the cached content's meaning changes.
_CACHE_VERSION = b"eg1800-cache-v1"
_NAME_RE = re.compile(r"^(\d+)\.png$")


def resolve_data_root(root: PathLike | None) -> Path:
    """The EG1800 root: ``root`` if given and non-empty, else env ``EG1800_ROOT``.

    Raises:
        ValueError: neither is set.
        FileNotFoundError: the resolved path is not an existing directory.
    """
    value = (os.fspath(root) if root is not None else "") or os.environ.get("EG1800_ROOT", "")
    if not value:
        raise ValueError("EG1800 data root is not set: pass data.root=/path/to/EG1800 "
                         "or set the EG1800_ROOT environment variable")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"EG1800 data root does not exist or is not a directory: {path}")
    return path


def default_cache_dir() -> Path:
    """Env ``PORTRAIT_NAS_CACHE`` if set, else ``~/.cache/portrait-nas``."""
    env = os.environ.get("PORTRAIT_NAS_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "portrait-nas"


def image_path(root: PathLike, image_id: str) -> Path:
    """``root/images_data_crop/<id>.jpg`` for an id such as "00001"."""
    return Path(root) / IMAGE_DIR / f"{image_id}.jpg"


def mask_path(root: PathLike, image_id: str) -> Path:
    """``root/images_mask/<id>_mask.mat``."""
    return Path(root) / MASK_DIR / f"{image_id}_mask.mat"


@dataclass(frozen=True)
class SplitListing:
    """A split list as found on disk: ``ids`` listed with both files present (list
    order), ``skipped_ids`` listed but missing the image or mask (or unusable: ``reasons``), the list's
    path, and ``resized_ids``: usable ids whose mask is a downscaled copy of the image (resized)."""

    split: str
    list_path: Path
    ids: list[str]
    skipped_ids: list[str]
    resized_ids: list[str] = field(default_factory=list)  # masks resized to their image (nas.datasets)
    reasons: dict[str, str] = field(default_factory=dict)  # skipped id -> why (nas.datasets)

    @property
    def num_listed(self) -> int:
        return len(self.ids) + len(self.skipped_ids)


def read_split(root: PathLike | None, split: str) -> SplitListing:
    """Read ``eg1800_train.txt`` (split "train") or ``eg1800_test.txt`` ("val"/"test").

    Raises:
        FileNotFoundError: root or list file missing (path in message).
        ValueError: unknown split; empty list; malformed line (file:line in message).
    """
    root = resolve_data_root(root)
    split = {"test": "val"}.get(split, split)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    list_path = root / SPLIT_FILES[split]
    if not list_path.is_file():
        raise FileNotFoundError(f"split list not found: {list_path}")
    ids: list[str] = []
    skipped: list[str] = []
    for lineno, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _NAME_RE.match(line.strip())
        if match is None:
            raise ValueError(f"{list_path}:{lineno}: expected a name like 00001.png, got {line!r}")
        image_id = f"{int(match.group(1)):05d}"
        present = image_path(root, image_id).is_file() and mask_path(root, image_id).is_file()
        (ids if present else skipped).append(image_id)
    if not ids and not skipped:
        raise ValueError(f"split list is empty: {list_path}")
    return SplitListing(split, list_path, ids, skipped)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _duplicate_pairs(root: Path, train_ids: Sequence[str], workers: int) -> list[tuple[str, str]]:
    def sha1(i: str) -> bytes:
        return hashlib.sha1(image_path(root, i).read_bytes()).digest()

    val_ids = read_split(root, "val").ids
    with ThreadPoolExecutor(workers) as pool:
        by_hash: dict[bytes, list[str]] = {}
        for i, h in zip(val_ids, pool.map(sha1, val_ids)):
            by_hash.setdefault(h, []).append(i)
        return [(t, v) for t, h in zip(train_ids, pool.map(sha1, train_ids)) for v in by_hash.get(h, [])]


def find_split_duplicates(root: PathLike | None, train_ids: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(train_id, val_id)`` pairs whose JPEG files are byte-identical (SHA-1 of the
    bytes: no id is hard-coded). ``train_ids`` defaults to the whole train list.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_split`.
    """
    root = resolve_data_root(root)
    ids = read_split(root, "train").ids if train_ids is None else train_ids
    return _duplicate_pairs(root, ids, _default_workers())


def remove_split_duplicates(root: PathLike | None, train_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(kept_ids, dropped_ids)``, input order: ``train_ids`` split by whether their
    JPEG bytes also occur in the validation split. Raises as :func:`read_split`."""
    dropped = {t for t, _ in find_split_duplicates(root, train_ids)}
    return [i for i in train_ids if i not in dropped], [i for i in train_ids if i in dropped]


def _decode_jpeg(data: bytes, path: PathLike, min_hw: tuple[int, int] | None = None):
    """Strict decode -> (uint8 RGB (h, w, 3), full-resolution (H, W)).

    With ``min_hw`` the JPEG decoder may downscale in the DCT domain by 1/2, 1/4 or
    1/8 while staying >= min_hw (PIL ``draft``): ~3x faster for 800x600 -> 224x224
    and still an averaging, anti-aliased reduction. Truncation raises as long as
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left False (never set here).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            full_hw = (im.height, im.width)
            if min_hw is not None:
                im.draft(im.mode, (min_hw[1], min_hw[0]))
            im.load()
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            return np.asarray(rgb, dtype=np.uint8).copy(), full_hw
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


def decode_mask(data: bytes, path: PathLike) -> np.ndarray:
    """MATLAB .mat bytes with variable ``mask`` -> uint8 (H, W) in {0, 1}.

    Raises:
        ValueError: unreadable file, no ``mask``, not 2-D, or values outside {0, 1}
            (path in message; EG1800 has no 0/255 masks, so those are defects too).
    """
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except Exception as exc:  # scipy raises a zoo of types on malformed files
        raise ValueError(f"cannot read mask file {path}: {exc}") from exc
    if "mask" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"mask file {path} has no variable 'mask' (variables: {keys})")
    mask = np.asarray(mat["mask"])
    if mask.ndim != 2:
        raise ValueError(f"mask in {path} must be 2-D, got shape {mask.shape}")
    # max() on uint8 is ~50x cheaper than np.unique over 800x600.
    binary = mask.max(initial=0) <= 1 if mask.dtype == np.uint8 else ((mask == 0) | (mask == 1)).all()
    if not binary:
        raise ValueError(f"mask in {path} has values outside {{0, 1}}: {np.unique(mask)[:10].tolist()}")
    return mask.astype(np.uint8)


def _read_pair(root: Path, image_id: str) -> tuple[bytes, bytes, Path, Path]:
    ip, mp = image_path(root, image_id), mask_path(root, image_id)
    for p in (ip, mp):
        if not p.is_file():
            raise FileNotFoundError(f"file for id {image_id} not found: {p}")
    return ip.read_bytes(), mp.read_bytes(), ip, mp


def _decode_pair(img_b: bytes, mask_b: bytes, ip: Path, mp: Path, min_hw=None):
    image, full_hw = _decode_jpeg(img_b, ip, min_hw)
    mask = decode_mask(mask_b, mp)
    if mask.shape != full_hw:
        raise ValueError(f"mask {mp} has shape {mask.shape} but image {ip} is {full_hw}")
    return image, mask


def load_pair(root: PathLike | None, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Full resolution ``(image uint8 (H, W, 3) RGB, mask uint8 (H, W) in {0, 1})``.

    Raises:
        FileNotFoundError: image or mask file missing (path in message).
        ValueError: undecodable file or image/mask shape mismatch (path in message).
    """
    return _decode_pair(*_read_pair(resolve_data_root(root), image_id))


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]):
    h, w = size
    if image.shape[:2] != (h, w):
        shrinking = h <= image.shape[0] and w <= image.shape[1]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _hash_order(ids: Sequence[str], seed: int, tag: str) -> list[str]:
    # Order depends only on (tag, seed, id): subsets are stable whatever else is listed.
    return sorted(ids, key=lambda i: hashlib.sha1(f"{tag}:{seed}:{i}".encode()).digest())


def _check_fraction(name: str, value: float, allow_zero: bool, allow_one: bool) -> float:
    v = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not ((0.0 < v or (allow_zero and v == 0.0)) and (v < 1.0 or (allow_one and v == 1.0))):
        bounds = ("[0" if allow_zero else "(0") + ", " + ("1]" if allow_one else "1)")
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return v


def subset_ids(ids: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """Seeded deterministic subset of ``round(fraction * len(ids))`` ids (>= 1), in
    input order. Nested: for one seed a smaller fraction's subset lies inside a
    larger one's, so low-fidelity runs see a subset of high-fidelity data.

    Raises:
        ValueError: ``fraction`` not in (0, 1].
    """
    fraction = _check_fraction("fraction", fraction, allow_zero=False, allow_one=True)
    if fraction == 1.0 or not ids:
        return list(ids)
    chosen = set(_hash_order(ids, seed, "subset")[: max(1, round(fraction * len(ids)))])
    return [i for i in ids if i in chosen]


def split_holdout(ids: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train_ids, holdout_ids)``, input order, for checkpoint selection on held-out
    training data. ``round(fraction * len(ids))`` ids (>= 1 if fraction > 0, <= len-1)
    are held out; membership depends only on (seed, id), so apply this to the full
    training list and subsample the train part afterwards (:func:`subset_ids`).

    Raises:
        ValueError: ``fraction`` not in [0, 1).
    """
    fraction = _check_fraction("holdout fraction", fraction, allow_zero=True, allow_one=False)
    n = round(fraction * len(ids))
    if fraction > 0:
        n = min(max(n, 1), max(len(ids) - 1, 0))
    held = set(_hash_order(ids, seed, "holdout")[:n])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


@dataclass
class SplitArrays:
    """A decoded, resized split: ``images`` uint8 (N, H, W, 3) RGB, ``masks`` uint8
    (N, H, W) class ids (EG1800: {0, 1}; 255 = ignored), ``ids`` (N,), what was
    skipped/dropped/resized (``skip_reasons``: id -> why), cache stats, and the data set's
    ``dataset`` name and ``num_classes``."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    split: str
    size: tuple[int, int]
    skipped_ids: list[str] = field(default_factory=list)
    dropped_duplicate_ids: list[str] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    resized_ids: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    dataset: str = "eg1800"
    num_classes: int = 2

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, ids: Sequence[str]) -> SplitArrays:
        """Copy restricted to ``ids``, in that order. Raises KeyError on unknown ids."""
        pos = {i: k for k, i in enumerate(self.ids)}
        if missing := [i for i in ids if i not in pos]:
            raise KeyError(f"ids not in this {self.split} split: {missing[:5]}")
        idx = np.array([pos[i] for i in ids], dtype=np.int64)
        return replace(self, images=self.images[idx], masks=self.masks[idx], ids=list(ids))


def _entry_path(cache_dir: Path, img_b: bytes, mask_b: bytes, size: tuple[int, int], tag: str = "eg1800",
                salt: bytes = b"") -> Path:
    # EG1800 (tag eg1800, no salt) keeps the keys of before; another reader's salt says how it reads masks.
    h = hashlib.sha1(_CACHE_VERSION + f"|{size[0]}x{size[1]}|".encode() + salt)
    h.update(hashlib.sha1(img_b).digest() + hashlib.sha1(mask_b).digest())
    return cache_dir / tag / f"{size[0]}x{size[1]}" / f"{h.hexdigest()}.npy"


def _load_entry(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent or unreadable: rebuild it
    return arr if arr.shape == (*size, 4) and arr.dtype == np.uint8 else None


def _write_atomic(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same directory + os.replace: other processes see no file or a
    # complete one, and two processes writing the same key are harmless.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split_arrays(
    root, split: str, size: tuple[int, int] = (224, 224),
    cache_dir: PathLike | None = None, fraction: float = 1.0, drop_split_duplicates: bool = True,
    seed: int = 0, ids: Sequence[str] | None = None, workers: int | None = None, progress: bool = True,
) -> SplitArrays:
    """Load a split resized to ``size`` = (H, W) pixels, through the on-disk cache.

    Each pair is decoded once and stored as one (H, W, 4) uint8 .npy (RGB + mask)
    under ``cache_dir/<reader.cache_tag>/HxW/`` (EG1800: ``eg1800``), keyed by SHA-1 of
    (image bytes, mask bytes, size, the reader's :meth:`~nas.datasets.DatasetReader.cache_salt`):
    an edited source gets a new key, so stale entries are never used (nor deleted). Images:
    JPEG DCT downscale + area interpolation (bilinear when enlarging); masks: nearest. The
    source bytes are re-read and hashed every call (~1 s for the EG1800 train split), but
    nothing is decoded on a warm cache.

    Args:
        root: an EG1800 root (``None``: env ``EG1800_ROOT``) or a :class:`nas.datasets.DatasetReader`.
        split: "train" or "val" (a reader may know more: "test", "all"). For "train", ids whose
            image also occurs in "val" are dropped when ``drop_split_duplicates`` (reported in the result).
        cache_dir: default :func:`default_cache_dir`.
        fraction: in (0, 1]; seeded nested subset (see :func:`subset_ids`).
        ids: only these ids (applied before duplicate dropping and ``fraction``).
        workers: reading/decoding threads; default min(4, cpu count).

    Raises:
        ValueError: bad ``fraction``/``size``/split, ids not in the list, or an
            undecodable/mismatched file (path in message).
        FileNotFoundError: root, split list, or a requested id's file missing.
    """
    from nas.datasets import as_reader

    ints = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    if len(size) != 2 or not ints or min(size) < 1:
        raise ValueError(f"size must be a (H, W) pair of positive ints, got {size!r}")
    size = (int(size[0]), int(size[1]))
    _check_fraction("fraction", fraction, allow_zero=False, allow_one=True)
    reader = as_reader(root)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    workers = workers or _default_workers()
    listing = reader.listing(split)
    tag, salt = reader.cache_tag, reader.cache_salt()

    selected = list(listing.ids)
    if ids is not None:
        if unknown := [i for i in ids if i not in {*listing.ids, *listing.skipped_ids}]:
            raise ValueError(f"ids not in {listing.list_path}: {unknown[:5]}")
        selected = list(ids)  # listed-but-missing ones raise FileNotFoundError below
    dropped: list[str] = []
    if listing.split == "train" and drop_split_duplicates:
        present = [i for i in selected if i not in set(listing.skipped_ids)]
        dropped = [t for t, _ in reader.duplicate_pairs(present, workers)]
        selected = [i for i in selected if i not in set(dropped)]
    selected = subset_ids(selected, fraction, seed)

    n = len(selected)
    images, masks = np.empty((n, *size, 3), np.uint8), np.empty((n, *size), np.uint8)

    def probe(k: int) -> bool:
        img_b, mask_b, _, _ = reader.read_bytes(selected[k])
        entry = _load_entry(_entry_path(cache_dir, img_b, mask_b, size, tag, salt), size)
        if entry is not None:
            images[k], masks[k] = entry[..., :3], entry[..., 3]
        return entry is not None

    def build(k: int) -> None:
        # Re-read rather than hold every miss's bytes; the key comes from the bytes
        # actually decoded, so a file edited meanwhile stays consistent.
        img_b, mask_b, ip, mp = reader.read_bytes(selected[k])
        image, mask = _resize_pair(*reader.decode(img_b, mask_b, ip, mp, size), size)
        _write_atomic(_entry_path(cache_dir, img_b, mask_b, size, tag, salt), np.dstack([image, mask]))
        images[k], masks[k] = image, mask

    with ThreadPoolExecutor(workers) as pool:  # PIL, cv2, hashing and I/O release the GIL
        misses = [k for k, hit in enumerate(pool.map(probe, range(n))) if not hit]
        desc = f"caching {'EG1800' if tag == 'eg1800' else reader.name} {listing.split} {size[0]}x{size[1]}"
        with tqdm(total=len(misses), desc=desc, unit="img", disable=not (progress and misses)) as bar:
            for _ in pool.map(build, misses):
                bar.update(1)
    chosen = set(selected)
    return SplitArrays(images, masks, selected, listing.split, size, list(listing.skipped_ids),
                       dropped, cache_hits=n - len(misses), cache_misses=len(misses),
                       resized_ids=[i for i in listing.resized_ids if i in chosen],
                       skip_reasons=dict(listing.reasons), dataset=reader.name, num_classes=reader.num_classes)


AugmentFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class SegmentationDataset(Dataset):
    """Torch dataset over uint8 arrays with optional deterministic augmentation.

    Args:
        images: uint8 (N, H, W, 3) RGB. masks: uint8 (N, H, W) class ids (255: ignored).
        augment: ``f(image, mask, rng) -> (image, mask)``, e.g. ``nas.augment.Augment``.
        seed: item ``i`` in epoch ``e`` is augmented with
            ``np.random.default_rng(SeedSequence([seed, e, i]))``: results do not
            depend on worker count or order.
        mean, std: per-channel normalisation, RGB, 0..255 units.

    ``dataset[i]`` = ``(image float32 (3, H, W) = (x - mean) / std, mask int64 (H, W)
    class ids)``.

    Raises:
        ValueError: wrong dtypes or shapes.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: AugmentFn | None = None,
                 seed: int = 0, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STD_RGB) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise ValueError(f"masks must be uint8 {images.shape[:3]}, got {masks.dtype} {masks.shape}")
        self.images, self.masks, self.augment = images, masks, augment
        self.seed, self.epoch = int(seed), 0
        self._mean = np.asarray(mean, np.float32)
        self._inv_std = 1.0 / np.asarray(std, np.float32)

    @classmethod
    def from_arrays(cls, arrays: SplitArrays, **kwargs) -> SegmentationDataset:
        """Build from :class:`SplitArrays`; ``kwargs`` go to the constructor."""
        return cls(arrays.images, arrays.masks, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream. Call before each epoch's iterator is
        created: worker processes copy the dataset then (hence no persistent workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index) + (len(self) if int(index) < 0 else 0)
        image, mask = self.images[index], self.masks[index]
        if self.augment is not None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
            image, mask = self.augment(image, mask, rng)
        x = (image.astype(np.float32) - self._mean) * self._inv_std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(mask.astype(np.int64))


def collate_pairs(batch: Sequence) -> object:
    """In the main process, stack ``(tensor, tensor)`` items with numpy; otherwise
    use torch's default_collate.

    On a busy 2-core machine torch's intra-op threads made ``torch.stack`` of 24
    (3, 224, 224) images 5-20x slower than numpy's serial copy. Worker processes
    run torch single-threaded, and default_collate writes straight into the shared
    memory the batch travels in, so there it is the faster choice.
    """
    pairs = all(isinstance(b, tuple) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b) for b in batch)
    if pairs and get_worker_info() is None:
        return tuple(torch.from_numpy(np.stack([b[k].numpy() for b in batch])) for k in (0, 1))
    return default_collate(batch)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, drop_last: bool | None = None) -> DataLoader:
    """DataLoader whose shuffle order comes from a ``torch.Generator`` seeded with ``seed``.

    ``drop_last`` defaults to ``shuffle`` (drop the ragged batch in training, keep
    every sample in evaluation). Workers are not persistent, so ``set_epoch``
    reaches them. No worker_init_fn touches OpenCV: ``cv2.setNumThreads`` in a
    forked worker can deadlock on the parent's thread pool.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=shuffle if drop_last is None else drop_last, generator=generator,
                      collate_fn=collate_pairs, persistent_workers=False)
