"""Training and evaluation with the release's recipe, at a chosen fidelity.

The recipe (``../shared/REFERENCE.md``, "Training recipe of the release"):
Adam (0.9, 0.999), weight decay 2e-4 on conv weights, 0 on depthwise conv
weights, 2e-6 on everything else; MultiStepLR at 1/2 and 5/6 of each stage's
epochs (150 and 250 of 300), gamma 0.5; optionally two stages: the encoder
alone against nearest-downsampled labels, then the whole network from those
weights with a fresh optimiser.

Fidelity knobs a search turns down: ``epochs`` (and ``stage1_epochs``),
``input_size`` and ``train_fraction``.

Checkpoint selection (``selection``) is on a held-out slice of the
*training* list (``holdout``, the default), the last epoch on every training
image (``last``), or the release's protocol (``val_best``: the best epoch on
the reported validation list after 60% of a stage's epochs; every result made
so is tagged ``optimistic``). Stage 2 starts from the best stage-1 epoch by
the same score (``stage1_handoff=best``, as the release) or the last one.

Data flow: genotype -> :func:`train_genotype` (this module) -> metrics; the
study and the command-line tools add tracking around it through the
``on_epoch`` callback; nothing here knows about Optuna or MLflow.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from nas.augment import Augment
from nas.config import TrainConfig
from nas.data import SegmentationDataset, SplitArrays, load_split_arrays, make_loader, split_holdout
from nas.losses import SegmentationLoss, class_weights_from_masks, downsample_labels
from nas.metrics import SegmentationMetrics, foreground_iou_per_image, predictions_from_logits
from search_spaces import GateWarning, Genotype, create_model

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "EpochRecord",
    "NonFiniteLossError",
    "DataBundle",
    "load_data",
    "param_groups",
    "train_genotype",
    "evaluate",
    "score_of",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops with this error.

    A search records the trial as failed and goes on; ``nas-train`` exits with
    status 3.
    """


@dataclass
class EpochRecord:
    """Metrics of one epoch: ``stage`` (1 or 2), losses, holdout mIoU (x100; a data set of K > 2 classes:
    its ``miou_cm``), images/s."""

    stage: int
    epoch: int
    global_epoch: int
    train_loss: float
    train_iou: float
    holdout_miou: float | None
    images_per_s: float
    lr: float


@dataclass
class TrainResult:
    """What a training run produced.

    ``miou`` is foreground IoU per image averaged over the validation images
    (x100, the papers' "mIoU"); ``miou_2class`` the confusion-matrix mean over
    both classes (x100); both None for a data set of K > 2 classes, whose
    headline is ``miou_cm`` (confusion-matrix mean of ``class_iou``, x100;
    equal to ``miou_2class`` for K = 2). ``best_state`` is the selected checkpoint.
    """

    miou: float | None
    miou_2class: float | None
    holdout_miou: float | None
    best_epoch: int
    epochs: int
    train_images: int
    holdout_images: int
    val_images: int
    skipped_ids: int
    dropped_duplicates: int
    images_per_s: float
    train_seconds: float
    history: list[EpochRecord]
    best_state: dict[str, torch.Tensor] = field(repr=False)
    genotype: Genotype | None = field(default=None, repr=False)
    selection: str = "holdout"
    stage1_epoch: int | None = None
    miou_cm: float | None = None
    class_iou: dict[str, float] | None = None
    dataset: str = "eg1800"
    num_classes: int = 2
    resized_masks: int = 0

    @property
    def optimistic(self) -> bool:
        """Picked on the reported validation list (``selection=val_best``): an optimistic figure."""
        return self.selection == "val_best"

    def summary(self) -> dict[str, Any]:
        """The JSON line of ``nas-train``."""
        return {
            "miou": self.miou,
            "miou_2class": self.miou_2class,
            "epochs": self.epochs,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "skipped_ids": self.skipped_ids,
            "images_per_s": round(self.images_per_s, 2),
            "holdout_miou": self.holdout_miou,
            "best_epoch": self.best_epoch,
            "holdout_images": self.holdout_images,
            "dropped_duplicates": self.dropped_duplicates,
            "selection": self.selection,
            "optimistic": self.optimistic,
            "stage1_epoch": self.stage1_epoch,
            "miou_cm": self.miou_cm,
            "class_iou": self.class_iou,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "resized_masks": self.resized_masks,
        }


@dataclass
class DataBundle:
    """Arrays for one fidelity: training, holdout (may be empty) and validation, and what the data
    set is (``dataset``, ``num_classes`` K, ``class_names``; ``resized``: masks resized to their image)."""

    train: SplitArrays
    holdout: SplitArrays | None
    val: SplitArrays
    skipped_ids: int
    dataset: str = "eg1800"
    num_classes: int = 2
    class_names: tuple[str, ...] = ("background", "person")
    resized: int = 0


def load_data(
    root, cfg: TrainConfig, cache_dir: str | None = None, val_fraction: float = 1.0, progress: bool = True
) -> DataBundle:
    """Load (through the cache) the training list, its holdout slice and the validation list.

    Args:
        root: an EG1800 root (``None``: the ``EG1800_ROOT`` environment variable) or a
            :class:`nas.datasets.DatasetReader` (``data=folder``, ``data=easyportrait``).
        val_fraction: fraction of the validation list (tests use less; reports use 1).

    Raises:
        FileNotFoundError, ValueError: from :mod:`nas.data` / :mod:`nas.datasets`, naming the file.
    """
    from nas.datasets import as_reader

    reader = as_reader(root)
    train = load_split_arrays(
        reader, "train", cfg.input_size, cache_dir=cache_dir, fraction=cfg.train_fraction,
        drop_split_duplicates=cfg.drop_split_duplicates, seed=cfg.seed, progress=progress,
    )
    val = load_split_arrays(reader, "val", cfg.input_size, cache_dir=cache_dir, fraction=val_fraction, seed=cfg.seed,
                            progress=progress)
    _warn_skipped(reader, (train, val))
    resized = len(set(train.resized_ids) | set(val.resized_ids))
    holdout = None
    if cfg.holdout_fraction > 0 and cfg.selection == "holdout":  # last / val_best train on every image
        tr_ids, ho_ids = split_holdout(train.ids, cfg.holdout_fraction, seed=cfg.seed)
        train, holdout = train.select(tr_ids), train.select(ho_ids)
    return DataBundle(train, holdout, val, skipped_ids=len(train.skipped_ids) + len(val.skipped_ids),
                      dataset=reader.name, num_classes=reader.num_classes, class_names=tuple(reader.class_names),
                      resized=resized)


def _warn_skipped(reader, splits: Sequence[SplitArrays]) -> None:
    """One warning naming the listed ids skipped (image or mask missing or unusable), one for resized masks."""
    skipped = [(a.split, i) for a in splits for i in dict.fromkeys(a.skipped_ids)]
    if skipped:
        why = []
        for sp, i in skipped[:3]:
            reason = next((a.skip_reasons[i] for a in splits if i in a.skip_reasons), None)
            if reason is None:
                reason = ", ".join(str(p) for p in reader.read_paths(i) if not p.is_file()) or "file missing"
            why.append(reason)
        eg = reader.name == "eg1800"
        log.warning("%s: %d listed id(s) skipped, their image or mask file is missing%s: %s%s (e.g. %s)",
                    "EG1800" if eg else reader.name, len(skipped), "" if eg else " or unusable",
                    ", ".join(f"{sp} {i}" for sp, i in skipped[:5]), " ..." if len(skipped) > 5 else "",
                    "; ".join(why))
    resized = sorted({i for a in splits for i in a.resized_ids})
    if resized:
        log.warning("%s: %d mask(s) are downscaled copies of their image, resized (nearest): %s%s", reader.name,
                    len(resized), ", ".join(resized[:5]), " ..." if len(resized) > 5 else "")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The release's weight-decay groups: conv weights, depthwise conv weights, everything else."""
    conv, depthwise, other = [], [], []
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            (depthwise if m.groups == m.in_channels and m.groups > 1 else conv).append(m.weight)
            seen.add(id(m.weight))
    other = [p for p in model.parameters() if id(p) not in seen]
    groups = [
        {"params": conv, "weight_decay": cfg.weight_decay_conv, "name": "conv"},
        {"params": depthwise, "weight_decay": cfg.weight_decay_depthwise, "name": "depthwise"},
        {"params": other, "weight_decay": cfg.weight_decay_other, "name": "other"},
    ]
    return [g for g in groups if g["params"]]


def _is_channels_last(model: nn.Module) -> bool:
    w = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def _targets_for(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] == masks.shape[-2:]:
        return masks
    return downsample_labels(masks, tuple(logits.shape[-2:]))


@torch.no_grad()
def evaluate(model: nn.Module, arrays: SplitArrays, batch_size: int = 64, class_names=None) -> dict[str, Any]:
    """Score ``model`` on ``arrays`` without augmentation.

    Logits at a lower resolution (stage-1 networks) are compared with
    nearest-downsampled labels. Returns the keys of
    :meth:`nas.metrics.SegmentationMetrics.compute` for ``arrays.num_classes``
    classes (K = 2: ``miou`` x100 etc.; every K: ``miou_cm``, ``class_iou``).
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes=arrays.num_classes, class_names=class_names)
    loader = make_loader(SegmentationDataset.from_arrays(arrays), batch_size, shuffle=False)
    fmt = torch.channels_last if _is_channels_last(model) else torch.contiguous_format
    for x, y in loader:
        logits = model(x.contiguous(memory_format=fmt))
        metrics.update(logits, _targets_for(logits, y))
    model.train(was_training)
    return metrics.compute()


def score_of(metrics: dict[str, Any]) -> float:
    """The figure a checkpoint is selected by: ``miou`` (2 classes), else ``miou_cm`` (x100)."""
    return metrics["miou"] if "miou" in metrics else metrics["miou_cm"]


def _train_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Foreground IoU per image, batch mean x100 (K > 2: every non-background class is foreground)."""
    pred = predictions_from_logits(logits)
    if logits.shape[1] > 2:
        pred = (pred > 0).long()
        target = torch.where(target == 255, target, (target > 0).long())
    return foreground_iou_per_image(pred, target).mean().item() * 100


def _run_stage(
    model: nn.Module,
    stage: int,
    epochs: int,
    epoch_offset: int,
    data: DataBundle,
    cfg: TrainConfig,
    class_weights: torch.Tensor | None,
    on_epoch: Callable[[EpochRecord], None] | None,
    history: list[EpochRecord],
) -> tuple[float | None, int, dict[str, torch.Tensor], float, int]:
    window = cfg.boundary_window_stage1 if stage == 1 else cfg.boundary_window
    criterion = SegmentationLoss(
        kind=cfg.loss, class_weights=class_weights, boundary=cfg.boundary, boundary_window=window,
        boundary_weight=cfg.boundary_weight, lovasz_per_image=cfg.lovasz_per_image,
    )
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))
    milestones = sorted({max(1, round(f * epochs)) for f in cfg.milestones if round(f * epochs) < epochs})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    augment = Augment(cfg.augment)
    ds = SegmentationDataset.from_arrays(data.train, augment=augment, seed=cfg.seed * 1000 + stage)
    bs = cfg.stage1_batch_size if stage == 1 else cfg.batch_size
    bs = min(bs, len(ds))
    loader = make_loader(ds, bs, shuffle=True, seed=cfg.seed * 1000 + stage, num_workers=cfg.num_workers)
    best, best_epoch, best_state = -math.inf, epoch_offset + epochs, None
    n_images, busy = 0, 0.0
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    forward = torch.compile(model) if cfg.compile else model
    for e in range(epochs):
        ds.set_epoch(e)
        model.train()
        tot_loss, tot_iou, n_seen = 0.0, 0.0, 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"stage {stage} epoch {e + 1}/{epochs}", leave=False, disable=not cfg.progress,
                   dynamic_ncols=True)
        for x, y in bar:
            logits = forward(x.contiguous(memory_format=fmt))
            target = _targets_for(logits, y)
            loss = criterion(logits, target)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at stage {stage}, epoch {e + 1}, after {n_seen} images"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                iou = _train_iou(logits, target)
            b = x.shape[0]
            n_seen += b
            tot_loss += loss.item() * b
            tot_iou += iou * b
            rate = n_seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{tot_loss / n_seen:.4f}", iou=f"{tot_iou / n_seen:.1f}", img_s=f"{rate:.1f}")
        dt = time.perf_counter() - t0
        busy += dt
        n_images += n_seen
        lr = opt.param_groups[0]["lr"]
        sched.step()
        holdout = score_of(evaluate(model, data.holdout, cfg.eval_batch_size)) if data.holdout is not None else None
        rec = EpochRecord(stage, e + 1, epoch_offset + e + 1, tot_loss / max(n_seen, 1), tot_iou / max(n_seen, 1),
                          holdout, n_seen / dt if dt > 0 else 0.0, lr)
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)  # may raise (optuna.TrialPruned): nothing here catches it
        score = _selection_score(model, stage, e, epochs, holdout, data, cfg)
        if score is not None and score > best:
            best, best_epoch, best_state = score, epoch_offset + e + 1, copy.deepcopy(model.state_dict())
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    return (best if data.holdout is not None and best > -math.inf else None), best_epoch, best_state, busy, n_images


def _selection_score(model: nn.Module, stage: int, e: int, epochs: int, holdout: float | None, data: DataBundle,
                     cfg: TrainConfig) -> float | None:
    """The score an epoch is kept by (higher wins, ties keep the earlier), or None if it cannot be kept.

    ``holdout``: the holdout mIoU (no holdout slice: the epoch index, so the last wins); ``last``:
    the epoch index; ``val_best``: the validation mIoU once ``e + 1 > val_best_after * epochs``.
    In stage 1, ``stage1_handoff=last`` keeps the last epoch whatever the selection.
    """
    if cfg.selection == "last" or (stage == 1 and cfg.stage1_handoff == "last"):
        return float(e)
    if cfg.selection == "val_best":
        if e + 1 <= cfg.val_best_after * epochs:
            return None
        return score_of(evaluate(model, data.val, cfg.eval_batch_size))
    return holdout if holdout is not None else float(e)


def train_genotype(
    genotype: Genotype | str,
    cfg: TrainConfig,
    data: DataBundle,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train one architecture with ``cfg`` and score it on the validation list.

    Args:
        genotype: a genotype or registered name; its ``num_classes`` and
            is set from ``cfg`` (the loss decides it); it is checked at ``cfg.input_size``.
        data: from :func:`load_data` at ``cfg.input_size``.
        on_epoch: called after every epoch with its :class:`EpochRecord`
            (for tracking and pruning); exceptions it raises propagate.

    Returns:
        A :class:`TrainResult`; the validation metrics are those of the
        checkpoint selected on the holdout slice.

    Raises:
        NonFiniteLossError: the loss became NaN/inf.
        ValueError: ``data`` was loaded at another input size, or an invalid genotype.
    """
    if tuple(data.train.size) != tuple(cfg.input_size):
        raise ValueError(f"data loaded at {data.train.size}, but train.input_size={cfg.input_size}")
    if data.num_classes != cfg.data_classes:
        raise ValueError(f"the data set {data.dataset} has {data.num_classes} classes but train.data_classes="
                         f"{cfg.data_classes} (set it from the data set: nas.datasets.DataSource.train_config)")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        from search_spaces import get_genotype

        g = get_genotype(genotype, num_classes=cfg.num_classes, encoder_only=False)
        g.check_input_size(cfg.input_size)
        class_weights = None
        if cfg.loss == "ce":
            class_weights = class_weights_from_masks(data.train.masks, num_classes=cfg.num_classes,
                                                     c=cfg.class_weight_c)
        history: list[EpochRecord] = []
        busy, n_images = 0.0, 0
        s1 = cfg.stage1_epochs_resolved
        stage1_epoch = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GateWarning)  # warned once by the caller's create_model
            model = create_model(g)
            if cfg.init:
                model.load_state_dict(init_state(cfg.init, g))
            if s1:
                encoder = create_model(g.replace(encoder_only=True))
                encoder.load_state_dict(model.state_dict(), strict=False)  # init weights (or fresh ones) for both
                _, stage1_epoch, s1_state, b, n = _run_stage(encoder, 1, s1, 0, data, cfg, class_weights, on_epoch,
                                                             history)
                busy, n_images = busy + b, n_images + n
                # stage_1 handoff: the best stage-1 epoch by the selection score (or the last one)
                model.load_state_dict(s1_state, strict=False)
        holdout, best_epoch, best_state, b, n = _run_stage(
            model, 2, cfg.epochs - s1, s1, data, cfg, class_weights, on_epoch, history
        )
        busy, n_images = busy + b, n_images + n
        model.load_state_dict(best_state)
        val = evaluate(model, data.val, cfg.eval_batch_size, class_names=data.class_names)
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(
        miou=val.get("miou"), miou_2class=val.get("miou_2class"), holdout_miou=holdout, best_epoch=best_epoch,
        epochs=cfg.epochs, train_images=len(data.train), holdout_images=len(data.holdout) if data.holdout else 0,
        val_images=len(data.val), skipped_ids=data.skipped_ids,
        dropped_duplicates=len(data.train.dropped_duplicate_ids), images_per_s=n_images / busy if busy else 0.0,
        train_seconds=busy, history=history, best_state=best_state, genotype=g, selection=cfg.selection,
        stage1_epoch=stage1_epoch, miou_cm=val["miou_cm"], class_iou=val["class_iou"], dataset=data.dataset,
        num_classes=data.num_classes, resized_masks=data.resized,
    )


def init_state(path: str, genotype: Genotype) -> dict[str, torch.Tensor]:
    """The weights of checkpoint ``path`` for ``genotype``, adapted to our preprocessing.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: an unreadable checkpoint, or one of another architecture or class count (the
            message names both archids / class counts).
    """
    from nas.checkpoint import load_checkpoint
    from nas.preprocess import OURS
    from nas.release import adapt_input

    model, meta = load_checkpoint(path)
    src = meta["genotype"]
    if src.archid() != genotype.archid():
        raise ValueError(f"train.init={path}: its network ({src.family}, archid {src.archid()}, "
                         f"{src.num_classes} classes) is not the one trained ({genotype.family}, archid "
                         f"{genotype.archid()}, {genotype.num_classes} classes); check model= and train.loss")
    return adapt_input(model, meta["preprocessing"], OURS).state_dict()


