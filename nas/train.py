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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from nas.augment import Augment
from nas.config import TrainConfig
from nas.data import SegmentationDataset, SplitArrays, load_split_arrays, make_loader, split_holdout
from nas.device import autocast, configure_backends, resolve_device
from nas.losses import SegmentationLoss, class_weights_from_masks, downsample_labels
from nas.metrics import SegmentationMetrics, foreground_iou_per_image, predictions_from_logits
from nas.resume import Resumer, get_rng_states, raise_if_interrupted, resume_file, set_rng_states, sigterm_interrupts
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
    resumed_from_epoch: int | None = None

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
            "resumed_from_epoch": self.resumed_from_epoch,
        }


@dataclass
class DataBundle:
    """Arrays for one fidelity: training, holdout (may be empty) and validation, and what the data
    set is (``dataset``, ``num_classes`` K, ``class_names``; ``resized``: masks resized to their image).

    ``on_device`` caches the training split's uint8 tensors per device (``train.augment_backend=tensor``):
    copied to a device once, then shared by both stages and by every trial trained on this bundle.
    """

    train: SplitArrays
    holdout: SplitArrays | None
    val: SplitArrays
    skipped_ids: int
    dataset: str = "eg1800"
    num_classes: int = 2
    class_names: tuple[str, ...] = ("background", "person")
    resized: int = 0
    on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)


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
def evaluate(model: nn.Module, arrays: SplitArrays, batch_size: int = 64, class_names=None, precision: str = "fp32"
             ) -> dict[str, Any]:
    """Score ``model`` on ``arrays`` without augmentation, on the device the model's parameters are on.

    Logits at a lower resolution (stage-1 networks) are compared with
    nearest-downsampled labels. Returns the keys of
    :meth:`nas.metrics.SegmentationMetrics.compute` for ``arrays.num_classes``
    classes (K = 2: ``miou`` x100 etc.; every K: ``miou_cm``, ``class_iou``).
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes=arrays.num_classes, class_names=class_names)
    device = next(model.parameters()).device
    loader = make_loader(SegmentationDataset.from_arrays(arrays), batch_size, shuffle=False)
    fmt = torch.channels_last if _is_channels_last(model) else torch.contiguous_format
    for x, y in loader:
        with autocast(device, precision):
            logits = model(x.to(device, non_blocking=True).contiguous(memory_format=fmt))
        y = y.to(device, non_blocking=True)
        metrics.update(logits.float(), _targets_for(logits, y))
    model.train(was_training)
    return metrics.compute()


def score_of(metrics: dict[str, Any]) -> float:
    """The figure a checkpoint is selected by: ``miou`` (2 classes), else ``miou_cm`` (x100)."""
    return metrics["miou"] if "miou" in metrics else metrics["miou_cm"]


def _train_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground IoU per image, batch mean x100, a 0-d float64 tensor on the logits' device (no host
    synchronisation); K > 2: every non-background class is foreground."""
    pred = predictions_from_logits(logits)
    if logits.shape[1] > 2:
        pred = (pred > 0).long()
        target = torch.where(target == 255, target, (target > 0).long())
    return foreground_iou_per_image(pred, target).double().mean() * 100


def _batches(stage: int, data: DataBundle, cfg: TrainConfig, device: torch.device, bs: int):
    """The stage's training batches: ``(epoch -> iterable of (x float (N, 3, H, W), y long (N, H, W)) on
    device, the shuffle generator)``; the ``numpy`` backend through a DataLoader, ``tensor`` on the device."""
    seed = cfg.seed * 1000 + stage
    if cfg.augment_backend == "tensor":
        from nas.tensor_augment import DeviceBatches

        if str(device) not in data.on_device:
            data.on_device[str(device)] = DeviceBatches.to_device(data.train, device)
        src = DeviceBatches(data.train, bs, device, cfg.augment, seed=seed, tensors=data.on_device[str(device)])
        return src.epoch, src.generator
    ds = SegmentationDataset.from_arrays(data.train, augment=Augment(cfg.augment), seed=seed)
    loader = make_loader(ds, bs, shuffle=True, seed=seed, num_workers=cfg.num_workers)

    def epoch(e: int):
        ds.set_epoch(e)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return epoch, loader.generator


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
    device: torch.device,
    resumer: Resumer,
    resume: dict[str, Any] | None,
    carry: dict[str, Any],
) -> tuple[float | None, int, dict[str, torch.Tensor], float, int]:
    """One stage; ``resume`` (a snapshot of this stage) continues it after its last finished epoch.
    ``carry`` (busy seconds, images, stage-1 epoch of earlier stages) goes into every snapshot."""
    window = cfg.boundary_window_stage1 if stage == 1 else cfg.boundary_window
    criterion = SegmentationLoss(
        kind=cfg.loss, class_weights=class_weights, boundary=cfg.boundary, boundary_window=window,
        boundary_weight=cfg.boundary_weight, lovasz_per_image=cfg.lovasz_per_image,
    ).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)  # the optimiser is built on the parameters where they train
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))
    milestones = sorted({max(1, round(f * epochs)) for f in cfg.milestones if round(f * epochs) < epochs})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    bs = cfg.stage1_batch_size if stage == 1 else cfg.batch_size
    bs = min(bs, len(data.train))
    batches, generator = _batches(stage, data, cfg, device, bs)
    best, best_epoch, best_state = -math.inf, epoch_offset + epochs, None
    n_images, busy, first = 0, 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        best, best_epoch, n_images, busy, first = (resume["best"], resume["best_epoch"], resume["n_images"],
                                                   resume["busy"], resume["epoch"])
        best_state = ({k: v.to(device) for k, v in resume["best_state"].items()}
                      if resume["best_state"] is not None else None)
        set_rng_states(resume["rng"], generator)
    forward = torch.compile(model) if cfg.compile else model
    for e in range(first, epochs):
        model.train()
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        tot_iou = torch.zeros((), dtype=torch.float64, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        n_seen, step = 0, 0
        t0 = time.perf_counter()
        bar = tqdm(batches(e), desc=f"stage {stage} epoch {e + 1}/{epochs}", leave=False, disable=not cfg.progress,
                   dynamic_ncols=True, total=len(data.train) // bs)
        for x, y in bar:
            raise_if_interrupted()
            with autocast(device, cfg.precision):
                logits = forward(x.contiguous(memory_format=fmt))
                target = _targets_for(logits, y)
                loss = criterion(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = x.shape[0]
            with torch.no_grad():
                iou = _train_iou(logits, target)
                finite &= torch.isfinite(loss)
                tot_loss += loss.detach().double() * b
                tot_iou += iou * b
            n_seen += b
            step += 1
            if step % cfg.check_every == 0:  # one host synchronisation per check_every steps
                _check_finite(finite, stage, e, n_seen)
                if cfg.progress:
                    rate = n_seen / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{float(tot_loss) / n_seen:.4f}", iou=f"{float(tot_iou) / n_seen:.1f}",
                                    img_s=f"{rate:.1f}")
        _check_finite(finite, stage, e, n_seen)
        dt = time.perf_counter() - t0
        busy += dt
        n_images += n_seen
        lr = opt.param_groups[0]["lr"]
        sched.step()
        holdout = (score_of(evaluate(model, data.holdout, cfg.eval_batch_size, precision=cfg.precision))
                   if data.holdout is not None else None)
        raise_if_interrupted()
        rec = EpochRecord(stage, e + 1, epoch_offset + e + 1, float(tot_loss) / max(n_seen, 1),
                          float(tot_iou) / max(n_seen, 1), holdout, n_seen / dt if dt > 0 else 0.0, lr)
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)  # may raise (optuna.TrialPruned): nothing here catches it
        score = _selection_score(model, stage, e, epochs, holdout, data, cfg)
        if score is not None and score > best:
            best, best_epoch, best_state = score, epoch_offset + e + 1, copy.deepcopy(model.state_dict())
        resumer.snapshot({
            "stage": stage, "epoch": e + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "best": best, "best_epoch": best_epoch, "best_state": best_state,
            "n_images": n_images, "busy": busy, "history": [asdict(r) for r in history],
            "rng": get_rng_states(generator), **carry,
        }, global_epoch=epoch_offset + e + 1)
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    return (best if data.holdout is not None and best > -math.inf else None), best_epoch, best_state, busy, n_images


def _check_finite(finite: torch.Tensor, stage: int, e: int, n_seen: int) -> None:
    if not bool(finite):
        raise NonFiniteLossError(
            f"non-finite training loss at stage {stage}, epoch {e + 1}, within the first {n_seen} images"
        )


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
        return score_of(evaluate(model, data.val, cfg.eval_batch_size, precision=cfg.precision))
    return holdout if holdout is not None else float(e)


def train_genotype(
    genotype: Genotype | str,
    cfg: TrainConfig,
    data: DataBundle,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train one architecture with ``cfg`` on ``cfg.device`` and score it on the validation list.

    With ``cfg.resume_dir`` set and ``cfg.resume_every > 0`` the run is resumable
    (:mod:`nas.resume`): a resume checkpoint is written every ``resume_every`` epochs and on
    SIGTERM / Ctrl-C, and a call with the same settings continues from it (``on_epoch`` is first
    called again for the epochs already done, so trackers see the whole curve); the file is
    removed when the run ends.

    Args:
        genotype: a genotype or registered name; its ``num_classes`` and
            is set from ``cfg`` (the loss decides it); it is checked at ``cfg.input_size``.
        data: from :func:`load_data` at ``cfg.input_size``.
        on_epoch: called after every epoch with its :class:`EpochRecord`
            (for tracking and pruning); exceptions it raises propagate.

    Returns:
        A :class:`TrainResult` (``best_state`` on the CPU); the validation metrics are those of the
        checkpoint selected on the holdout slice; ``resumed_from_epoch`` the epoch it resumed after.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (checked every ``cfg.check_every`` steps).
        ValueError: ``data`` was loaded at another input size, an invalid genotype, an unavailable
            ``cfg.device``, or an unreadable resume checkpoint.
        KeyboardInterrupt (:class:`nas.resume.Interrupted` for SIGTERM): after the resume checkpoint is written.
    """
    if tuple(data.train.size) != tuple(cfg.input_size):
        raise ValueError(f"data loaded at {data.train.size}, but train.input_size={cfg.input_size}")
    if data.num_classes != cfg.data_classes:
        raise ValueError(f"the data set {data.dataset} has {data.num_classes} classes but train.data_classes="
                         f"{cfg.data_classes} (set it from the data set: nas.datasets.DataSource.train_config)")
    device = resolve_device(cfg.device)
    configure_backends(device)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resumer = Resumer(None)
    try:
        torch.manual_seed(cfg.seed)
        from search_spaces import get_genotype

        g = get_genotype(genotype, num_classes=cfg.num_classes, encoder_only=False)
        g.check_input_size(cfg.input_size)
        if cfg.resume_dir:
            resumer = Resumer(resume_file(cfg.resume_dir, g.archid(), cfg), cfg.resume_every)
        state = resumer.load()
        class_weights = None
        if cfg.loss == "ce":
            class_weights = class_weights_from_masks(data.train.masks, num_classes=cfg.num_classes,
                                                     c=cfg.class_weight_c)
        history: list[EpochRecord] = []
        busy, n_images = 0.0, 0
        s1 = cfg.stage1_epochs_resolved
        stage1_epoch = None
        resumed_from = None
        if state is not None:
            resumed_from = (0 if state["stage"] == 1 else s1) + state["epoch"]
            log.warning("resuming from %s after epoch %d", resumer.path, resumed_from)
            history = [EpochRecord(**r) for r in state["history"]]
            if on_epoch is not None:
                for rec in history:
                    on_epoch(rec)
        with sigterm_interrupts():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", GateWarning)  # warned once by the caller's create_model
                    model = create_model(g)
                    if cfg.init:
                        model.load_state_dict(init_state(cfg.init, g))
                    if s1 and (state is None or state["stage"] == 1):
                        encoder = create_model(g.replace(encoder_only=True))
                        encoder.load_state_dict(model.state_dict(), strict=False)  # init weights for both
                        _, stage1_epoch, s1_state, b, n = _run_stage(
                            encoder, 1, s1, 0, data, cfg, class_weights, on_epoch, history, device, resumer, state,
                            {"prev_busy": 0.0, "prev_images": 0, "stage1_epoch": None})
                        busy, n_images = busy + b, n_images + n
                        # stage_1 handoff: the best stage-1 epoch by the selection score (or the last one)
                        model.load_state_dict(s1_state, strict=False)
                        state = None
                if state is not None:  # a stage-2 snapshot: stage 1 is done
                    busy, n_images, stage1_epoch = state["prev_busy"], state["prev_images"], state["stage1_epoch"]
                holdout, best_epoch, best_state, b, n = _run_stage(
                    model, 2, cfg.epochs - s1, s1, data, cfg, class_weights, on_epoch, history, device, resumer,
                    state, {"prev_busy": busy, "prev_images": n_images, "stage1_epoch": stage1_epoch})
            except KeyboardInterrupt:
                if (path := resumer.flush()) is not None:
                    log.warning("interrupted: resume checkpoint written to %s; rerun to resume", path)
                raise
            except Exception:  # pruned, diverged, a bug: nothing to resume
                resumer.done()
                raise
        busy, n_images = busy + b, n_images + n
        model.load_state_dict(best_state)
        val = evaluate(model, data.val, cfg.eval_batch_size, class_names=data.class_names, precision=cfg.precision)
        best_state = {k: v.detach().cpu() for k, v in best_state.items()}
        resumer.done()
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(
        miou=val.get("miou"), miou_2class=val.get("miou_2class"), holdout_miou=holdout, best_epoch=best_epoch,
        epochs=cfg.epochs, train_images=len(data.train), holdout_images=len(data.holdout) if data.holdout else 0,
        val_images=len(data.val), skipped_ids=data.skipped_ids,
        dropped_duplicates=len(data.train.dropped_duplicate_ids), images_per_s=n_images / busy if busy else 0.0,
        train_seconds=busy, history=history, best_state=best_state, genotype=g, selection=cfg.selection,
        stage1_epoch=stage1_epoch, miou_cm=val["miou_cm"], class_iou=val["class_iou"], dataset=data.dataset,
        num_classes=data.num_classes, resized_masks=data.resized, resumed_from_epoch=resumed_from,
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


