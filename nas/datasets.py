"""Data sets behind one reader interface: EG1800, a folder of images and masks, EasyPortrait.

A :class:`DatasetReader` says which ids a split holds (and which it skips, and why), reads the
bytes of a pair and decodes them into ``(image uint8 (H, W, 3) RGB, mask uint8 (H, W) class ids)``.
:func:`nas.data.load_split_arrays` takes a reader (or an EG1800 root, as before) and caches the
resized pairs under ``<cache_dir>/<reader.cache_tag>/HxW/``, keyed by the bytes and
:meth:`DatasetReader.cache_salt` (how the mask bytes are read), so every reader shares one cache and
EG1800's keys are those of before.

* :class:`EG1800Reader` -- the release layout (:mod:`nas.data`'s functions, unchanged).
* :class:`FolderReader` -- ``<root>/<images_dir>/*`` and ``<root>/<masks_dir>/*`` paired by file stem;
  masks PNG or JPEG, binary (0/1 or 0/255; JPEG thresholded at 128) or label maps (``num_classes``);
  train/val from list files or a seeded fraction. Defects: a mask that is a downscaled copy of its
  image (aspect ratio within 2 %) is resized with nearest neighbour (counted); a mask of any other
  size, an unreadable file or an image without a mask is skipped (counted, named in
  :meth:`DatasetReader.report`); an empty folder or one without a usable pair raises.
* :class:`EasyPortraitReader` -- ``images/{train,val,test}/*.jpg``, ``annotations/{train,val,test}/*.png``,
  labels 0-8 (:data:`EASYPORTRAIT_CLASSES`), or its 2-class portrait variant (``two_class``: person =
  every label but background).

:func:`reader_from_config` builds one from the ``data`` config node (``nas/conf/data/*.yaml``);
:func:`data_source` adds the node's cache folder and validation fraction: what every command passes on.
"""

from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from nas import data as D

__all__ = ["DATA_KINDS", "EASYPORTRAIT_CLASSES", "DataSource", "DatasetReader", "EG1800Reader", "EasyPortraitReader",
           "FolderReader", "as_reader", "data_source", "reader_from_config"]

PathLike = str | os.PathLike
DATA_KINDS = ("eg1800", "folder", "easyportrait")
EASYPORTRAIT_CLASSES = ("background", "person", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "lips",
                        "teeth")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTS = (".png", ".jpg", ".jpeg")
_LOSSY = (".jpg", ".jpeg")
ASPECT_TOLERANCE = 0.02  # a smaller mask within 2 % of its image's aspect ratio is a downscaled copy
IGNORE = 255


class DatasetReader(ABC):
    """What :func:`nas.data.load_split_arrays` needs from a data set.

    Attributes:
        name: the data set's name (``eg1800``, ``folder``, ``easyportrait``, ...), logged with results.
        num_classes: K, the number of label classes (masks hold 0..K-1, or 255 = ignored).
        class_names: K names, background first.
        cache_tag: the cache sub-folder of its arrays.
        root: the data set's root folder.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    cache_tag: str
    root: Path

    @abstractmethod
    def listing(self, split: str) -> D.SplitListing:
        """The ids of ``split`` with usable files and those skipped (``reasons``: id -> why).

        Raises:
            ValueError: an unknown split or a bad list file (named); FileNotFoundError: a missing folder.
        """

    def split_ids(self, split: str) -> list[str]:
        """The usable ids of ``split``, in listing order (raises as :meth:`listing`)."""
        return list(self.listing(split).ids)

    @abstractmethod
    def read_bytes(self, image_id: str) -> tuple[bytes, bytes, Path, Path]:
        """``(image bytes, mask bytes, image path, mask path)``. Raises FileNotFoundError naming the file."""

    @abstractmethod
    def decode(self, img_b: bytes, mask_b: bytes, ip: Path, mp: Path,
               min_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bytes -> ``(image uint8 (h, w, 3) RGB, mask uint8 (H, W) class ids)``; the image may be
        JPEG-downscaled to no less than ``min_hw``, the mask is at the image's full resolution.

        Raises:
            ValueError: an undecodable file, a label outside the classes, a mismatched size (named).
        """

    def cache_salt(self) -> bytes:
        """Bytes added to every cache key: how mask bytes are read (empty for EG1800)."""
        return b""

    def read_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray, tuple[Path, Path]]:
        """Full resolution ``(image uint8 (H, W, 3) RGB, mask uint8 (H, W), (image path, mask path))``.

        Raises:
            FileNotFoundError / ValueError: as :meth:`read_bytes` / :meth:`decode`.
        """
        img_b, mask_b, ip, mp = self.read_bytes(image_id)
        image, mask = self.decode(img_b, mask_b, ip, mp)
        return image, mask, (ip, mp)

    def load_image(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` at full resolution (:meth:`read_pair` without the paths)."""
        image, mask, _ = self.read_pair(image_id)
        return image, mask

    def image_file(self, image_id: str) -> Path:
        """The image file of ``image_id``."""
        return self.read_paths(image_id)[0]

    @abstractmethod
    def read_paths(self, image_id: str) -> tuple[Path, Path]:
        """``(image path, mask path)`` of ``image_id`` (they may not exist for a skipped id)."""

    def duplicate_pairs(self, train_ids: Sequence[str], workers: int) -> list[tuple[str, str]]:
        """``(train_id, val_id)`` pairs whose image files are byte-identical (SHA-1)."""
        def sha1(i: str) -> bytes:
            return hashlib.sha1(self.image_file(i).read_bytes()).digest()

        val_ids = self.split_ids("val")
        with ThreadPoolExecutor(workers) as pool:
            by_hash: dict[bytes, list[str]] = {}
            for i, h in zip(val_ids, pool.map(sha1, val_ids)):
                by_hash.setdefault(h, []).append(i)
            return [(t, v) for t, h in zip(train_ids, pool.map(sha1, train_ids)) for v in by_hash.get(h, [])]

    def report(self, splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
        """Defects of ``splits``: ``{"skipped": {id: reason}, "resized": [ids], "n_skipped", "n_resized"}``."""
        skipped: dict[str, str] = {}
        resized: list[str] = []
        for s in splits:
            lst = self.listing(s)
            skipped.update({i: lst.reasons.get(i, "image or mask file missing") for i in lst.skipped_ids})
            resized += [i for i in lst.resized_ids if i not in resized]
        return {"skipped": skipped, "resized": resized, "n_skipped": len(skipped), "n_resized": len(resized)}

    def describe(self) -> dict[str, Any]:
        """``{"name", "root", "num_classes", "class_names"}`` (logged with results)."""
        return {"name": self.name, "root": str(self.root), "num_classes": self.num_classes,
                "class_names": list(self.class_names)}


class EG1800Reader(DatasetReader):
    """EG1800 in its release layout, read by :mod:`nas.data` exactly as before (same cache keys).

    Args:
        root: the EG1800 root (``None``: env ``EG1800_ROOT``), resolved when first used, so a command
            reports a bad model before a missing data root, as before.

    Raises:
        ValueError / FileNotFoundError (on first use): from :func:`nas.data.resolve_data_root`.
    """

    name, cache_tag, num_classes, class_names = "eg1800", "eg1800", 2, ("background", "person")

    def __init__(self, root: PathLike | None = None):
        self._given, self._root = root, None

    @property
    def root(self) -> Path:  # type: ignore[override]
        if self._root is None:
            self._root = D.resolve_data_root(self._given)
        return self._root

    def listing(self, split: str) -> D.SplitListing:
        return D.read_split(self.root, split)

    def read_bytes(self, image_id: str) -> tuple[bytes, bytes, Path, Path]:
        return D._read_pair(self.root, image_id)

    def decode(self, img_b, mask_b, ip, mp, min_hw=None):
        return D._decode_pair(img_b, mask_b, ip, mp, min_hw)

    def read_paths(self, image_id: str) -> tuple[Path, Path]:
        return D.image_path(self.root, image_id), D.mask_path(self.root, image_id)

    def duplicate_pairs(self, train_ids, workers):
        return D._duplicate_pairs(self.root, train_ids, workers)


@dataclass(frozen=True)
class _Pair:
    image: Path
    mask: Path | None
    status: str  # "ok", "resized" or the reason it is skipped


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (no decode). Raises ValueError naming the file."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def _is_downscaled_copy(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    (h, w), (big_h, big_w) = mask_hw, image_hw
    if h > big_h or w > big_w or min(h, w) < 1:
        return False
    return abs((w / h) / (big_w / big_h) - 1.0) <= ASPECT_TOLERANCE


class FolderReader(DatasetReader):
    """An ordinary folder of images and masks, paired by file stem.

    Args:
        root: the folder holding ``images_dir`` and ``masks_dir``.
        images_dir, masks_dir: sub-folders (relative to ``root``) of the images
            (``.jpg .jpeg .png .bmp .webp``) and masks (``.png .jpg .jpeg``).
        mask_suffix: what a mask's stem adds to its image's (``_mask``: ``a.jpg`` <-> ``a_mask.png``).
        num_classes: 2: binary masks, 0/1 or 0/255 (JPEG masks thresholded at 128); K > 2: label maps
            with values 0..K-1 (lossless files only); 255 is "ignore" in label maps.
        class_names: K names (default ``background, person`` for K = 2, ``class_<k>`` otherwise).
        train_list, val_list: optional list files (relative to ``root`` or absolute), one image name or
            stem per line; one given alone: the other split is every other image.
        val_split: without lists, the seeded fraction of images in ``val`` (0..1; 1: all of them,
            an evaluation-only set); ``split="all"`` is every image.
        split_seed: seed of that split (membership depends only on (seed, stem)).
        name: the data set's name.
        label_map: optional 256-entry lookup table from file values to class ids (values mapped to
            -1 are invalid): how a reader such as EasyPortrait's 2-class variant merges classes.
        source_classes: labels allowed in the files before ``label_map`` (default ``num_classes``).

    Raises:
        ValueError: a bad value (named); FileNotFoundError: a missing folder or list file (named).
        Defects found later (listing) are described in the class docstring of :mod:`nas.datasets`.
    """

    cache_tag = "folder"

    def __init__(self, root: PathLike, images_dir: str = "images", masks_dir: str = "masks", *,
                 mask_suffix: str = "", num_classes: int = 2, class_names: Sequence[str] | None = None,
                 train_list: str | None = None, val_list: str | None = None, val_split: float = 0.2,
                 split_seed: int = 0, name: str = "folder", label_map: np.ndarray | None = None,
                 source_classes: int | None = None):
        if root is None or not str(root):
            raise ValueError("data.root is not set: pass data.root=/path/to/folder")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root does not exist or is not a directory: {self.root}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 255:
            raise ValueError(f"data.num_classes={num_classes!r}; allowed: an integer in 2..255")
        if not isinstance(val_split, (int, float)) or isinstance(val_split, bool) or not 0.0 <= val_split <= 1.0:
            raise ValueError(f"data.val_split={val_split!r}; allowed: a number in [0, 1]")
        self.images_dir, self.masks_dir = self.root / images_dir, self.root / masks_dir
        self.mask_suffix, self.num_classes, self.name = str(mask_suffix), int(num_classes), str(name)
        names = tuple(class_names) if class_names else (
            ("background", "person") if num_classes == 2 else tuple(f"class_{k}" for k in range(num_classes)))
        if len(names) != num_classes:
            raise ValueError(f"data.class_names has {len(names)} names for num_classes={num_classes}")
        self.class_names = names
        self.train_list, self.val_list = train_list, val_list
        self.val_split, self.split_seed = float(val_split), int(split_seed)
        self.source_classes = int(source_classes or num_classes)
        self.label_map = None if label_map is None else np.asarray(label_map, np.int16).reshape(256)
        self._pairs: dict[str, _Pair] | None = None
        self._orphans: list[Path] = []
        self._splits: dict[str, D.SplitListing] = {}

    # ---------------------------------------------------------------- pairing
    def _index(self) -> dict[str, _Pair]:
        if self._pairs is not None:
            return self._pairs
        for d, key in ((self.images_dir, "images_dir"), (self.masks_dir, "masks_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"data.{key}: folder not found: {d}")
        images = sorted(p for p in self.images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {self.images_dir}")
        masks: dict[str, Path] = {}
        for p in sorted(self.masks_dir.iterdir()):
            if not (p.is_file() and p.suffix.lower() in MASK_EXTS):
                continue
            stem = p.stem[: len(p.stem) - len(self.mask_suffix)] if self.mask_suffix else p.stem
            if self.mask_suffix and not p.stem.endswith(self.mask_suffix):
                continue
            if stem in masks:
                raise ValueError(f"two masks for image stem {stem!r}: {masks[stem]} and {p}")
            masks[stem] = p
        pairs: dict[str, _Pair] = {}
        for ip in images:
            if ip.stem in pairs:
                raise ValueError(f"two images with stem {ip.stem!r}: {pairs[ip.stem].image} and {ip}")
            mp = masks.get(ip.stem)
            pairs[ip.stem] = _Pair(ip, mp, self._check_pair(ip, mp))
        used = {p.mask for p in pairs.values()}
        self._orphans = [m for m in masks.values() if m not in used]
        if not any(p.status in ("ok", "resized") for p in pairs.values()):
            why = "; ".join(f"{s}: {p.status}" for s, p in list(pairs.items())[:3])
            raise ValueError(f"no usable image/mask pair in {self.images_dir} and {self.masks_dir} ({why})")
        self._pairs = pairs
        return pairs

    def _check_pair(self, ip: Path, mp: Path | None) -> str:
        if mp is None:
            return f"no mask {self.masks_dir / (ip.stem + self.mask_suffix)}.{{png,jpg,jpeg}} for image {ip}"
        try:
            ihw, mhw = _header_size(ip), _header_size(mp)
        except ValueError as exc:
            return f"unreadable file: {exc}"
        if ihw == mhw:
            return "ok"
        if _is_downscaled_copy(mhw, ihw):
            return "resized"
        return f"mask {mp} is {mhw[1]}x{mhw[0]} but image {ip} is {ihw[1]}x{ihw[0]} (W x H)"

    def _read_list(self, which: str, value: str, pairs: Mapping[str, _Pair]) -> list[str]:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise FileNotFoundError(f"data.{which}: list file not found: {path}")
        out: list[str] = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not (s := line.strip()):
                continue
            stem = Path(s).stem if Path(s).suffix.lower() in IMAGE_EXTS else s
            if stem not in pairs:
                raise ValueError(f"{path}:{lineno}: {s!r} is not an image of {self.images_dir}")
            out.append(stem)
        if not out:
            raise ValueError(f"data.{which}: list file is empty: {path}")
        return out

    def _members(self, split: str) -> tuple[list[str], Path]:
        pairs = self._index()
        stems = list(pairs)
        if split == "all":
            return stems, self.images_dir
        if self.train_list or self.val_list:
            lists = {k: self._read_list(k, v, pairs) for k, v in
                     (("train_list", self.train_list), ("val_list", self.val_list)) if v}
            mine = lists.get(f"{split}_list")
            if mine is not None:
                return mine, Path(getattr(self, f"{split}_list"))
            other = set(next(iter(lists.values())))
            return [s for s in stems if s not in other], self.images_dir
        n_val = round(self.val_split * len(stems))
        if 0 < self.val_split < 1:
            n_val = min(max(n_val, 1), len(stems) - 1) if len(stems) > 1 else n_val
        val = set(D._hash_order(stems, self.split_seed, "folder-val")[:n_val])
        return [s for s in stems if (s in val) == (split == "val")], self.images_dir

    def listing(self, split: str) -> D.SplitListing:
        split = {"test": "val"}.get(split, split)
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if split not in self._splits:
            pairs = self._index()
            members, where = self._members(split)
            if not members:
                raise ValueError(f"split {split!r} of {self.images_dir} is empty (data.val_split={self.val_split}, "
                                 f"{len(pairs)} images); choose a fraction in (0, 1) or list files")
            ok = [s for s in members if pairs[s].status in ("ok", "resized")]
            skipped = [s for s in members if s not in set(ok)]
            self._splits[split] = D.SplitListing(
                split, where, ok, skipped, resized_ids=[s for s in ok if pairs[s].status == "resized"],
                reasons={s: pairs[s].status for s in skipped})
        return self._splits[split]

    def report(self, splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
        out = super().report(splits)
        self._index()
        out["orphan_masks"] = [str(p) for p in self._orphans]
        return out

    # ---------------------------------------------------------------- reading
    def read_paths(self, image_id: str) -> tuple[Path, Path]:
        pair = self._index().get(image_id)
        if pair is None:
            raise FileNotFoundError(f"no image with stem {image_id!r} in {self.images_dir}")
        return pair.image, pair.mask if pair.mask is not None else self.masks_dir / f"{image_id}{self.mask_suffix}.png"

    def read_bytes(self, image_id: str) -> tuple[bytes, bytes, Path, Path]:
        ip, mp = self.read_paths(image_id)
        for p in (ip, mp):
            if not p.is_file():
                raise FileNotFoundError(f"file for id {image_id} not found: {p}")
        return ip.read_bytes(), mp.read_bytes(), ip, mp

    def cache_salt(self) -> bytes:
        lut = b"" if self.label_map is None else hashlib.sha1(self.label_map.tobytes()).digest()
        return f"|mask-v1|K={self.num_classes}|src={self.source_classes}|".encode() + lut

    def decode_mask(self, data: bytes, path: Path) -> np.ndarray:
        """Mask bytes -> uint8 (H, W) class ids in 0..K-1 (or 255, ignored, in label maps).

        Raises:
            ValueError: unreadable, a colour mask, a lossy label map, or values outside the classes
                (path and values in the message).
        """
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot decode mask {path}: {exc}") from None
        if arr.ndim == 3:
            if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
                raise ValueError(f"mask {path} is a colour image; masks must be one channel of class ids")
            arr = arr[..., 0]
        arr = arr.astype(np.int64) if arr.dtype != np.uint8 else arr
        lossy = path.suffix.lower() in _LOSSY
        k = self.source_classes
        if k == 2:
            top = int(arr.max(initial=0))
            if top <= 1:
                mask = arr.astype(np.uint8)
            elif lossy:
                mask = (arr >= 128).astype(np.uint8)
            elif np.isin(arr, (0, 255)).all():
                mask = (arr == 255).astype(np.uint8)
            else:
                raise ValueError(f"binary mask {path} has values {np.unique(arr)[:10].tolist()}; "
                                 "allowed: 0/1 or 0/255 (or set data.num_classes for label maps)")
        else:
            if lossy:
                raise ValueError(f"label-map mask {path} is a lossy JPEG; label maps (num_classes > 2) must be PNG")
            bad = (arr >= k) & (arr != IGNORE)
            if bad.any() or (arr < 0).any():
                raise ValueError(f"mask {path} has labels {np.unique(arr[bad | (arr < 0)])[:10].tolist()} outside "
                                 f"0..{k - 1} (255 = ignore)")
            mask = arr.astype(np.uint8)
        if self.label_map is not None:
            mapped = self.label_map[mask]
            if (mapped < 0).any():
                raise ValueError(f"mask {path} has labels {np.unique(mask[mapped < 0]).tolist()} the label map rejects")
            mask = mapped.astype(np.uint8)
        return mask

    def decode(self, img_b, mask_b, ip, mp, min_hw=None):
        image, full_hw = D._decode_jpeg(img_b, ip, min_hw)
        mask = self.decode_mask(mask_b, mp)
        if mask.shape != full_hw:
            if not _is_downscaled_copy(mask.shape, full_hw):
                raise ValueError(f"mask {mp} has shape {mask.shape} but image {ip} is {full_hw}")
            mask = cv2.resize(mask, (full_hw[1], full_hw[0]), interpolation=cv2.INTER_NEAREST)
        return image, mask


class EasyPortraitReader(DatasetReader):
    """EasyPortrait's published layout: ``images/{train,val,test}/*.jpg``, ``annotations/{split}/*.png``.

    Args:
        root: the folder holding ``images/`` and ``annotations/``.
        two_class: the portrait variant: 2 classes, person = every label but background (0).

    Labels 0-8 are :data:`EASYPORTRAIT_CLASSES`; 255 is ignored. Defects are handled as by
    :class:`FolderReader` (one per split folder).

    Raises:
        FileNotFoundError: ``root`` or a requested split's folder missing (named).
    """

    cache_tag = "easyportrait"
    SPLITS = ("train", "val", "test")

    def __init__(self, root: PathLike, two_class: bool = False):
        if root is None or not str(root):
            raise ValueError("data.root is not set: pass data.root=/path/to/EasyPortrait")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root does not exist or is not a directory: {self.root}")
        self.two_class = bool(two_class)
        self.name = "easyportrait_2class" if self.two_class else "easyportrait"
        self.num_classes = 2 if self.two_class else len(EASYPORTRAIT_CLASSES)
        self.class_names = ("background", "person") if self.two_class else EASYPORTRAIT_CLASSES
        lut = None
        if self.two_class:
            lut = np.full(256, -1, np.int16)
            lut[0], lut[1 : len(EASYPORTRAIT_CLASSES)], lut[IGNORE] = 0, 1, IGNORE
        self._parts = {
            s: FolderReader(self.root, f"images/{s}", f"annotations/{s}", num_classes=self.num_classes,
                            class_names=self.class_names, val_split=1.0, name=self.name, label_map=lut,
                            source_classes=len(EASYPORTRAIT_CLASSES))
            for s in self.SPLITS
        }

    def _part(self, split: str) -> FolderReader:
        if split not in self._parts:
            raise ValueError(f"split must be one of {', '.join(self.SPLITS)}, got {split!r}")
        return self._parts[split]

    def listing(self, split: str) -> D.SplitListing:
        lst = self._part(split).listing("all")
        return D.SplitListing(split, lst.list_path, lst.ids, lst.skipped_ids, lst.resized_ids, lst.reasons)

    def _owner(self, image_id: str) -> FolderReader:
        for part in self._parts.values():
            try:
                if image_id in part._index():
                    return part
            except (OSError, ValueError):  # a split folder that is absent or empty holds no id
                continue
        raise FileNotFoundError(f"no image with stem {image_id!r} under {self.root / 'images'}")

    def read_paths(self, image_id: str) -> tuple[Path, Path]:
        return self._owner(image_id).read_paths(image_id)

    def read_bytes(self, image_id: str) -> tuple[bytes, bytes, Path, Path]:
        return self._owner(image_id).read_bytes(image_id)

    def decode(self, img_b, mask_b, ip, mp, min_hw=None):
        return self._parts["train"].decode(img_b, mask_b, ip, mp, min_hw)

    def cache_salt(self) -> bytes:
        return self._parts["train"].cache_salt()


def as_reader(source: DatasetReader | PathLike | None) -> DatasetReader:
    """``source`` itself if it is a reader, else an :class:`EG1800Reader` of that root (``None``: env)."""
    return source if isinstance(source, DatasetReader) else EG1800Reader(source)


_KIND_KEYS = {
    "eg1800": set(),
    "folder": {"images_dir", "masks_dir", "mask_suffix", "num_classes", "class_names", "train_list", "val_list",
               "val_split", "split_seed"},
    "easyportrait": {"two_class"},
}


def reader_from_config(node: Mapping[str, Any] | Any) -> DatasetReader:
    """The reader of a ``data`` config node (:class:`nas.config.DataConfig`: ``kind`` and its keys).

    Raises:
        ValueError: an unknown ``data.kind`` or a bad value (named); FileNotFoundError: a missing root.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        missing = [k for k in node if OmegaConf.is_missing(node, k)]
        if missing:
            raise ValueError(f"data.{missing[0]} is not set: pass data.{missing[0]}=... on the command line")
        d = OmegaConf.to_container(node, resolve=True)
    else:
        d = dict(node)
    kind = d.get("kind", "eg1800")
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind={kind!r}; allowed: {', '.join(DATA_KINDS)}")
    root = d.get("root")
    if kind == "eg1800":
        return EG1800Reader(root)
    if kind == "easyportrait":
        return EasyPortraitReader(root, two_class=bool(d.get("two_class", False)))
    kw = {k: d[k] for k in _KIND_KEYS["folder"] if d.get(k) is not None}
    return FolderReader(root, name=str(d.get("name") or "folder"), **kw)


@dataclass(frozen=True)
class DataSource:
    """What a command reads: the ``reader``, the cache folder and the validation fraction of a ``data`` node."""

    reader: DatasetReader
    cache_dir: str | None = None
    val_fraction: float = 1.0

    def train_config(self, tcfg):
        """``tcfg`` (a :class:`nas.config.TrainConfig`) with ``data_classes`` = the data set's K.

        Raises:
            ValueError: ``train.loss=lovasz`` on a data set of more than 2 classes.
        """
        from dataclasses import replace

        return replace(tcfg, data_classes=self.reader.num_classes)

    def require_two_classes(self, what: str) -> None:
        """Raise ``ValueError`` unless the data set has 2 classes (``what`` ranks by the 2-class ``miou``)."""
        if self.reader.num_classes != 2:
            raise ValueError(f"{what} ranks architectures by the 2-class miou, but data set {self.reader.name} has "
                             f"{self.reader.num_classes} classes; train it with nas-train, or use a 2-class variant "
                             "(EasyPortrait: data.two_class=true)")


def data_source(node: Mapping[str, Any] | Any) -> DataSource:
    """The ``data`` config node as a :class:`DataSource` (raises as :func:`reader_from_config`)."""
    return DataSource(reader_from_config(node), node.get("cache_dir") or None, float(node.get("val_fraction", 1.0)))
