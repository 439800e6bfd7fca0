"""The configuration schemas: every default written once, checked when Hydra composes a config.

Each dataclass here is the schema of one config node and is registered in Hydra's ConfigStore
by :func:`register_configs` (group ``schema``); the YAML files under ``nas/conf/`` inherit it
through their defaults list (``/schema/train@_here_`` in ``recipe/release.yaml``,
``schema/study@study`` in ``search.yaml``), so they only state what differs from these defaults,
and an unknown key or a value of the wrong type fails at composition, naming the key.

- :class:`AugmentConfig`: the ``train.augment`` node (the release's augmentation, see
  :mod:`nas.augment`).
- :class:`TrainConfig`: the ``train`` node (the release's recipe, REFERENCE.md "Training recipe
  of the release"; the fidelity knobs ``epochs``, ``input_size``, ``train_fraction``).
- :class:`SearchSettings`: the ``study`` node of ``nas-search``.
- :class:`FidelitySettings`: the ``study`` node of ``nas-fidelity``.
- :class:`SINetSpaceConfig`, :class:`C3SpaceConfig`: the ``space`` node (the search spaces' defaults).
- :class:`DataConfig`: the ``data`` node (``nas/conf/data/``: ``eg1800``, ``folder``, ``easyportrait``),
  turned into a reader by :func:`nas.datasets.reader_from_config`.

:func:`merge_layers` is the one path from nested overrides (a fidelity rung, an ablation
variant, a command line) to a validated dataclass: OmegaConf merges them onto the schema and
``OmegaConf.to_object`` builds the object (so ``__post_init__`` checks every value).

This module imports neither torch nor OpenCV.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from nas.objectives import (
    BUDGET_KEYS,
    COUNTED_BUDGET_KEYS,
    DEFAULT_OBJECTIVES,
    check_objectives,
    default_reference_point,
)

__all__ = [
    "AugmentConfig", "C3SpaceConfig", "DataConfig", "FidelitySettings", "MODES", "SCHEDULERS", "SELECTIONS",
    "SINetSpaceConfig", "SearchSettings", "TrainConfig", "fidelity_settings_from", "merge_layers",
    "register_configs", "study_settings_from", "train_settings_from",
]

T = TypeVar("T")


def _check_range(name: str, r: tuple[float, float], low: float = 0.0) -> None:
    if len(r) != 2 or not (low <= r[0] <= r[1]):
        raise ValueError(f"{name} must be a (lo, hi) pair with {low} <= lo <= hi, got {r!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and parameters of the augmentation pipeline (release defaults).

    Booleans ``affine, flip, color, blur, noise`` turn whole stages on/off.
    Angles are in degrees, shifts are fractions of the image size, pixel values
    and noise sigma are in 0..255 units, ``*_p`` are probabilities in [0, 1].

    Raises:
        ValueError: on an inverted/negative range, a probability outside [0, 1],
            or a blur kernel size that is not a positive odd integer.
    """

    affine: bool = True
    flip: bool = True
    color: bool = True
    blur: bool = True
    noise: bool = True

    rotation_deg: float = 45.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    shift_frac: float = 0.25
    pad_value: int = 128
    mask_pad_value: int = 0

    flip_p: float = 0.5

    color_p: float = 0.5
    # The reference text gives no saturation range; 0.4-1.6 (same as brightness)
    # is what PortraitNet's colour augmentation, which the release follows, uses.
    saturation_range: tuple[float, float] = (0.4, 1.6)
    brightness_range: tuple[float, float] = (0.4, 1.6)
    contrast_range: tuple[float, float] = (0.6, 1.4)
    sharpness_range: tuple[float, float] = (0.8, 1.2)

    blur_p: float = 0.5
    blur_kernels: tuple[int, ...] = (3, 5)

    noise_p: float = 0.5
    noise_sigma_max: float = 10.0

    def __post_init__(self) -> None:
        for name in ("scale_range", "saturation_range", "brightness_range", "contrast_range", "sharpness_range",
                     "blur_kernels"):  # lists from YAML / OmegaConf -> tuples (hashable, comparable)
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("flip_p", "color_p", "blur_p", "noise_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")
        _check_range("scale_range", self.scale_range, low=1e-6)
        for name in ("saturation_range", "brightness_range", "contrast_range", "sharpness_range"):
            _check_range(name, getattr(self, name))
        if self.rotation_deg < 0 or self.shift_frac < 0 or self.noise_sigma_max < 0:
            raise ValueError("rotation_deg, shift_frac and noise_sigma_max must be >= 0")
        if not self.blur_kernels or any(k < 1 or k % 2 == 0 for k in self.blur_kernels):
            raise ValueError(f"blur_kernels must be positive odd sizes, got {self.blur_kernels!r}")
        if not (0 <= self.pad_value <= 255 and 0 <= self.mask_pad_value <= 1):
            raise ValueError("pad_value must be in 0..255 and mask_pad_value in {0, 1}")

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """A config with every stage off (the identity transform)."""
        return cls(affine=False, flip=False, color=False, blur=False, noise=False)



@dataclass
class DataConfig:
    """The ``data`` config node: which data set, where, and how it is split (see :mod:`nas.datasets`).

    Attributes:
        kind: ``eg1800`` (the release layout), ``folder`` (images and masks paired by stem) or
            ``easyportrait`` (its published layout).
        root: the data set's folder (EG1800: default env ``EG1800_ROOT``).
        cache_dir: preprocessed arrays (null: env ``PORTRAIT_NAS_CACHE`` or ``~/.cache/portrait-nas``).
        val_fraction: fraction of the validation split scored (reports: 1.0).
        name: the data set's name in results (``folder``; null: the kind's).
        images_dir / masks_dir / mask_suffix: ``folder``: the sub-folders and what a mask's stem adds.
        num_classes: ``folder``: 2 (binary masks, 0/1 or 0/255) or K > 2 (PNG label maps 0..K-1).
        class_names: ``folder``: K names (null: background, person / class_<k>).
        train_list / val_list: ``folder``: list files of image names (null: a seeded split).
        val_split / split_seed: ``folder`` without lists: the fraction of images in ``val`` (1.0: an
            evaluation-only set) and its seed.
        two_class: ``easyportrait``: the 2-class portrait variant (person = every label but background).
    """

    kind: str = "eg1800"
    root: str | None = None
    cache_dir: str | None = None
    val_fraction: float = 1.0
    name: str | None = None
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    num_classes: int = 2
    class_names: list[str] | None = None
    train_list: str | None = None
    val_list: str | None = None
    val_split: float = 0.2
    split_seed: int = 0
    two_class: bool = False


SELECTIONS = ("holdout", "last", "val_best")
PRECISIONS = ("fp32", "bf16")
AUGMENT_BACKENDS = ("numpy", "tensor")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting (the Hydra ``train`` node maps onto it).

    Attributes:
        epochs: total epochs (both stages together) -- the main fidelity knob.
        schedule: ``two_stage`` (the release's) or ``single_stage``.
        stage1_epochs: encoder epochs of ``two_stage``; ``None`` = half.
        input_size: (H, W) pixels for training and evaluation.
        train_fraction: fraction of the training list used (seeded subset).
        holdout_fraction: fraction of the training ids held out for
            checkpoint selection (0 = keep the last epoch).
        batch_size / stage1_batch_size: images per step in stage 2 / stage 1.
        lr: Adam learning rate (release: 5e-4 SINet, 1e-3 ExtremeC3Net).
        loss: ``ce`` (2-class weighted cross-entropy) or ``lovasz`` (1-class).
        boundary / boundary_window / boundary_window_stage1 / boundary_weight:
            the boundary term (release: on, 15 px, 5 px, 0.5).
        augment: the augmentation parts that are on.
        seed: one seed for weights, data order and augmentation.
        threads: torch intra-op threads (results are bit-identical only at a
            fixed thread count).
        channels_last: NHWC memory format (oneDNN's fast path on CPU: ~15%
            faster training steps here).
        compile: ``torch.compile`` the training forward pass. Roughly 1.7x
            faster steps on CPU, but a new architecture takes minutes to
            compile: worth it for long runs, not for low-fidelity search trials.
        recipe: the name of the per-model recipe these values came from
            (``nas/conf/recipe/``: ``sinet``, ``extremec3net``, ``release``).
        lovasz_per_image: the Lovasz hinge per image and averaged (True), or
            over the whole batch flattened (False, the release's ExtremeC3Net).
        stage1_handoff: ``best`` (the release: stage 2 starts from the best
            stage-1 epoch by the selection score) or ``last``.
        selection: ``holdout`` | ``last`` | ``val_best`` (see the module doc);
            ``val_best`` results are ``optimistic``.
        val_best_after: the fraction of a stage's epochs after which
            ``val_best`` considers an epoch (the release: 0.6).
        init: a checkpoint (``nas-train`` or ``nas-import``) whose weights
            start the training; its network must be the one trained. A
            checkpoint with other preprocessing (the release's) is adapted
            to ours first (:func:`nas.release.adapt_input`).
        data_classes: K, the label classes of the data set (set from the
            ``data`` node by :meth:`nas.datasets.DataSource.train_config`; 2
            for EG1800). ``loss=ce`` trains K output channels, ``lovasz`` 1
            (binary data sets only).
        resume_every: write the resume checkpoint every this many epochs
            (and on SIGTERM / Ctrl-C); 0 turns resuming off.
        resume_dir: folder of resume checkpoints (``None``: ``nas-train`` uses
            ``<output_dir>/resume``, a search ``<study output>/resume``; no
            folder at all: no resuming). A rerun with the same settings
            resumes from the file there (:mod:`nas.resume`).
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or
            ``cuda:N`` (:func:`nas.device.resolve_device`).
        precision: ``fp32`` (TF32 allowed for matmuls and convolutions on
            CUDA) or ``bf16`` (autocast of the forward pass and the loss).
        augment_backend: ``numpy`` (per image, OpenCV, in the DataLoader:
            :mod:`nas.augment`) or ``tensor`` (per batch on ``device``, from
            uint8 tensors held there: :mod:`nas.tensor_augment`).
        check_every: steps between the checks that the training loss is
            finite (one host synchronisation each; 1 = every step).
    """

    epochs: int = 600
    schedule: str = "two_stage"
    stage1_epochs: int | None = None
    input_size: tuple[int, int] = (224, 224)
    train_fraction: float = 1.0
    holdout_fraction: float = 0.1
    drop_split_duplicates: bool = True
    batch_size: int = 24
    stage1_batch_size: int = 36
    eval_batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay_conv: float = 2e-4
    weight_decay_depthwise: float = 0.0
    weight_decay_other: float = 2e-6
    milestones: tuple[float, ...] = (0.5, 5 / 6)
    gamma: float = 0.5
    loss: str = "ce"
    class_weight_c: float = 1.10
    boundary: bool = True
    boundary_window: int = 15
    boundary_window_stage1: int = 5
    boundary_weight: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    threads: int | None = None
    num_workers: int = 0
    progress: bool = True
    channels_last: bool = True
    compile: bool = False
    recipe: str = "release"
    lovasz_per_image: bool = True
    stage1_handoff: str = "best"
    selection: str = "holdout"
    val_best_after: float = 0.6
    init: str | None = None
    data_classes: int = 2
    resume_every: int = 1
    resume_dir: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    augment_backend: str = "numpy"
    check_every: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.schedule not in ("two_stage", "single_stage"):
            raise ValueError(f"train.schedule={self.schedule!r}; allowed: two_stage, single_stage")
        if self.loss not in ("ce", "lovasz"):
            raise ValueError(f"train.loss={self.loss!r}; allowed: ce, lovasz")
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs}; allowed: an integer >= 1")
        if self.schedule == "two_stage":
            s1 = self.stage1_epochs_resolved
            if not 1 <= s1 < self.epochs:
                raise ValueError(
                    f"train.stage1_epochs={self.stage1_epochs} with epochs={self.epochs}: two_stage needs "
                    "1 <= stage1_epochs < epochs (and epochs >= 2)"
                )
        if self.stage1_handoff not in ("best", "last"):
            raise ValueError(f"train.stage1_handoff={self.stage1_handoff!r}; allowed: best, last")
        if self.selection not in SELECTIONS:
            raise ValueError(f"train.selection={self.selection!r}; allowed: {', '.join(SELECTIONS)}")
        if not 0.0 <= self.val_best_after < 1.0:
            raise ValueError(f"train.val_best_after={self.val_best_after}; allowed: [0, 1)")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"train.holdout_fraction={self.holdout_fraction}; allowed: [0, 1)")
        if isinstance(self.data_classes, bool) or not isinstance(self.data_classes, int) or self.data_classes < 2:
            raise ValueError(f"train.data_classes={self.data_classes!r}; allowed: an integer >= 2")
        if self.loss == "lovasz" and self.data_classes != 2:
            raise ValueError(f"train.loss=lovasz is a binary loss but the data set has {self.data_classes} classes; "
                             "use train.loss=ce (recipe=sinet)")
        if self.resume_every < 0:
            raise ValueError(f"train.resume_every={self.resume_every}; allowed: an integer >= 0 (0: off)")
        if not _DEVICE_RE.match(str(self.device)):
            raise ValueError(f"train.device={self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.augment_backend not in AUGMENT_BACKENDS:
            raise ValueError(f"train.augment_backend={self.augment_backend!r}; allowed: {', '.join(AUGMENT_BACKENDS)}")
        if self.check_every < 1:
            raise ValueError(f"train.check_every={self.check_every}; allowed: an integer >= 1")

    @property
    def stage1_epochs_resolved(self) -> int:
        if self.schedule == "single_stage":
            return 0
        return self.stage1_epochs if self.stage1_epochs is not None else self.epochs // 2

    @property
    def optimistic(self) -> bool:
        """True when the reported validation list also picked the checkpoint (``selection=val_best``)."""
        return self.selection == "val_best"

    @property
    def num_classes(self) -> int:
        """Output channels of the network: 1 for the Lovasz hinge, ``data_classes`` (2 for EG1800) for
        cross-entropy."""
        return 1 if self.loss == "lovasz" else self.data_classes

    def fidelity(self) -> dict[str, Any]:
        """The knobs that make results comparable (logged and tabulated with every result)."""
        return {
            "epochs": self.epochs,
            "schedule": self.schedule,
            "stage1_epochs": self.stage1_epochs_resolved,
            "input_size": list(self.input_size),
            "train_fraction": self.train_fraction,
        }

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d



MODES = ("pareto", "constrained")


SCHEDULERS = ("none", "mo_asha")


@dataclass
class SearchSettings:
    """The ``study`` config node.

    Attributes:
        name: study name (also the MLflow experiment name).
        mode: ``pareto`` or ``constrained``.
        objectives: the Pareto front's objectives (``pareto``): ``miou`` first, then costs of
            :data:`nas.objectives.OBJECTIVES` (default mIoU, parameters, conv MACs; add
            ``ort_latency_ms`` to optimise measured ONNX Runtime latency).
        n_trials: the study's total number of trained candidates (not an increment); candidates
            over a hard budget are recorded but take no slot.
        storage: ``sqlite:///file.db`` (default, embedded) or ``postgresql://...``.
        seed: sampler seed (same seed, one worker, fixed thread count: same genotypes).
        budgets: hard limits ``{"params": P, "conv_macs": F}`` (None = no limit).
        cost_input_size: (H, W) at which parameters/MACs are counted for budgets.
        enqueue: registered names trained first as references at the same fidelity.
        heartbeat_interval / grace_period: seconds; a RUNNING trial whose
            heartbeat is older than ``grace_period`` is failed and retried.
        max_retry: retries of one interrupted trial (or rung training).
        extra_costs: also count fvcore MACs and latency for trained candidates.
        latency_threads: torch threads of the latency measurement (recorded with it).
        reference_point: hypervolume reference ``{"miou": %, "params": count, "conv_macs": MACs,
            "ort_latency_ms": ms}`` (mIoU maximised, the others minimised; the front's objectives are used).
        output_dir: Pareto artifacts and exported genotypes go to
            ``<output_dir>/<name>/``.
        scheduler: ``none`` (every candidate trained at the ``fidelity`` rung) or ``mo_asha``
            (multi-objective asynchronous successive halving over ``rungs``).
        rungs: fidelity rung names (files of ``nas/conf/fidelity/``), cheapest first (``mo_asha``).
        eta: reduction factor: the top ``1/eta`` of a rung is promoted (``mo_asha``).
        max_infeasible: over-budget proposals allowed before the study stops with a message
            (None: 10 x ``n_trials``).
        confirm_seeds: at the end, every front member is retrained with this many further seeds.
        confirm_rung: the rung of those retrainings (None: each member's own rung).
        time_budget_s: wall-clock seconds from the study's start after which no new candidate or
            promotion is started (None: no limit); confirmations run after it.
        storage_retry_s: seconds a worker retries an unreachable storage (with backoff) before it fails.
    """

    name: Any = MISSING  # Any: a YAML number or boolean reaches the check below, not a silent str
    mode: str = "pareto"
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    n_trials: int = 40
    storage: str = "sqlite:///nas_studies.db"
    seed: int = 0
    budgets: dict[str, float | None] = field(default_factory=dict)
    cost_input_size: tuple[int, int] = (224, 224)
    enqueue: list[str] = field(default_factory=list)
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    extra_costs: bool = True
    latency_threads: int = 1
    output_dir: str = "runs/search"
    reference_point: dict[str, float] = field(default_factory=default_reference_point)
    scheduler: str = "none"
    rungs: tuple[str, ...] = ("search_half", "search")
    eta: int = 3
    max_infeasible: int | None = None
    confirm_seeds: int = 0
    confirm_rung: str | None = None
    time_budget_s: float | None = None
    storage_retry_s: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            # study.name=nan / true / 1e3 reach us as a float or bool (YAML typing): say so, not MLflow later
            raise ValueError(
                f"study.name={self.name!r} ({type(self.name).__name__}); allowed: a non-empty string "
                f"(quote a name that YAML reads as a number or boolean: study.name=\"'{self.name}'\")"
            )
        if self.mode not in MODES:
            raise ValueError(f"study.mode={self.mode!r}; allowed: {', '.join(MODES)}")
        self.objectives = check_objectives(self.objectives)
        bad = sorted(set(self.reference_point) - set(default_reference_point()))
        if bad:
            raise ValueError(f"study.reference_point has unknown key(s) {bad}; allowed: "
                             f"{', '.join(default_reference_point())}")
        self.reference_point = default_reference_point() | dict(self.reference_point)
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ValueError(f"study.n_trials={self.n_trials!r}; allowed: an integer >= 1")
        bad = sorted(set(self.budgets) - set(BUDGET_KEYS))
        if bad:
            raise ValueError(f"study.budgets has unknown key(s) {bad}; allowed: {', '.join(BUDGET_KEYS)}")
        if self.mode == "constrained" and not any(v is not None for v in self.budgets.values()):
            raise ValueError("study.mode=constrained needs study.budgets.params, conv_macs and/or ort_latency_ms")
        scheme = self.storage.split(":", 1)[0]
        if not (scheme == "sqlite" or scheme.startswith("postgresql")):
            raise ValueError(f"study.storage={self.storage!r}; allowed: sqlite:///path.db or postgresql://user@host/db")
        self.cost_input_size = (int(self.cost_input_size[0]), int(self.cost_input_size[1]))
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"study.scheduler={self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
        if self.scheduler == "mo_asha":
            if self.mode != "pareto":
                raise ValueError("study.scheduler=mo_asha needs study.mode=pareto (constrained studies prune instead)")
            if len(self.rungs) < 2:
                raise ValueError(f"study.rungs={list(self.rungs)!r}; mo_asha needs at least 2 rungs, cheapest first")
        if not isinstance(self.eta, int) or self.eta < 2:
            raise ValueError(f"study.eta={self.eta!r}; allowed: an integer >= 2")
        if self.max_infeasible is None:
            self.max_infeasible = 10 * self.n_trials
        if not isinstance(self.max_infeasible, int) or self.max_infeasible < 0:
            raise ValueError(f"study.max_infeasible={self.max_infeasible!r}; allowed: an integer >= 0 or null")
        if not isinstance(self.confirm_seeds, int) or self.confirm_seeds < 0:
            raise ValueError(f"study.confirm_seeds={self.confirm_seeds!r}; allowed: an integer >= 0")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"study.time_budget_s={self.time_budget_s!r}; allowed: seconds > 0 or null")
        self.rungs = tuple(self.rungs)

    @property
    def front_objectives(self) -> tuple[str, ...]:
        """The objectives of the study's front: ``objectives`` (a constrained study: the default ones)."""
        return self.objectives if self.mode == "pareto" else DEFAULT_OBJECTIVES


@dataclass
class FidelitySettings:
    """The ``study`` config node of ``nas-fidelity`` (schema ``schema/fidelity_study``).

    Attributes:
        name: study name: results file stem, Optuna study ``fidelity-<name>``.
        n_archs: architectures in the study (published ones included).
        include: registered networks added when they are points of the space.
        sample_seed / candidates: random genotypes drawn (seeded) before picking
            ``n_archs`` spread evenly over the parameter range.
        rungs: trained rungs, cheapest first; the last is the top rung.
        seeds: training (and initialisation) seeds of every cell.
        proxies: zero-cost proxies (:data:`nas.proxies.PROXIES`); [] for none.
        proxy_batch / proxy_input_size: the fixed batch of real training images.
        budgets: hard limits (``params``, ``conv_macs`` at ``cost_input_size``).
        storage: Optuna storage shared by the workers.
        results_dir: where ``<name>.{md,csv,tex,json,png,html}`` go.
    """

    name: str = "sinet-fidelity"
    n_archs: int = 12
    include: tuple[str, ...] = ("sinet",)
    sample_seed: int = 0
    candidates: int = 150
    rungs: tuple[str, ...] = ("search_half", "search", "session")
    seeds: tuple[int, ...] = (0, 1)
    proxies: tuple[str, ...] = ("synflow", "naswot", "snip", "grad_norm", "zico", "meco")
    proxy_batch: int = 16
    proxy_input_size: tuple[int, int] = (96, 96)
    budgets: dict[str, float | None] = field(default_factory=lambda: {"params": 100_000, "conv_macs": 100_000_000})
    cost_input_size: tuple[int, int] = (224, 224)
    storage: str = "sqlite:///nas_studies.db"
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2
    bootstrap: int = 2000
    max_seconds_per_arch: float = 60.0
    min_tau: float = 0.6
    results_dir: str = "experiments/results/fidelity"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"fidelity.name={self.name!r}; allowed: a non-empty string")
        if not isinstance(self.n_archs, int) or self.n_archs < 2:
            raise ValueError(f"fidelity.n_archs={self.n_archs!r}; allowed: an integer >= 2")
        if not self.rungs or len(set(self.rungs)) != len(self.rungs):
            raise ValueError(f"fidelity.rungs={list(self.rungs)}; allowed: distinct names of nas/conf/fidelity/ files, "
                             "cheapest first")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"fidelity.seeds={list(self.seeds)}; allowed: distinct integers, at least one")
        from nas.proxies import PROXIES  # torch: imported when settings are built, not when the schema is
        from nas.rungs import load_rung

        for r in self.rungs:
            load_rung(r)  # FileNotFoundError naming the rung and the shipped ones

        bad = sorted(set(self.proxies) - set(PROXIES))
        if bad:
            raise ValueError(f"fidelity.proxies has unknown name(s) {bad}; known: {sorted(PROXIES)}")
        if self.proxies and self.proxy_batch < 2:
            raise ValueError(f"fidelity.proxy_batch={self.proxy_batch}; allowed: >= 2 (ZiCo needs two sub-batches)")
        bad = sorted(set(self.budgets) - set(COUNTED_BUDGET_KEYS))
        if bad:
            raise ValueError(f"fidelity.budgets has unknown key(s) {bad}; allowed: {', '.join(COUNTED_BUDGET_KEYS)}")
        self.rungs, self.seeds, self.proxies = tuple(self.rungs), tuple(int(s) for s in self.seeds), tuple(self.proxies)
        self.include = tuple(self.include)
        self.proxy_input_size = (int(self.proxy_input_size[0]), int(self.proxy_input_size[1]))
        self.cost_input_size = (int(self.cost_input_size[0]), int(self.cost_input_size[1]))

    @property
    def top(self) -> str:
        return self.rungs[-1]


@dataclass(frozen=True)
class SINetSpaceConfig:
    """The ``space=sinet`` node: the defaults of :class:`search_spaces.spaces.SINetSpace` (written here
    only; the class's signature reads them). Per S2-block branch kernel x dilation x pool, module
    counts, widths and decoder gating; the published SINet is one point (tests/test_spaces.py)."""

    _target_: str = "search_spaces.spaces.SINetSpace"
    base: str = "sinet"                          # genotype for everything not searched (stem, down channels, SE)
    kernels: tuple[int, ...] = (3, 5, 7)         # depthwise kernel of every S2 block branch
    dilations: tuple[int, ...] = (1, 2, 4)       # receptive-field widening by dilation ...
    pools: tuple[int, ...] = (1, 2, 4)           # ... and/or by average pooling (spatial squeeze)
    branches: int = 2                            # S2 blocks per S2 module (the paper: 2)
    modules_per_stage: Any = ((1, 2, 3), (4, 6, 8))     # stage 1/4, stage 1/8 (published: 2, 8)
    widths: Any = ((32, 48, 64), (64, 96, 128))         # published: 48, 96
    decoders: tuple[str, ...] = ("information_blocking", "skip", "none")


@dataclass(frozen=True)
class C3SpaceConfig:
    """The ``space=extremec3net`` node: the defaults of :class:`search_spaces.spaces.C3Space` (written
    here only). Branch count and dilations of every advanced C3 module, the concentration stage and
    the detail branch; the published ExtremeC3Net is one point."""

    _target_: str = "search_spaces.spaces.C3Space"
    base: str = "extremec3net"
    branches: tuple[int, ...] = (2, 3, 4)                # C3 blocks per advanced C3 module (published: 3)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 5, 8)      # per branch, sorted within a module
    modules_per_stage: Any = ((2, 3), (4, 6))            # entry module included (published: 2, 6)
    widths: Any = ((48,), (56,))
    concentration: tuple[bool, ...] = (True, False)      # False = the naive depthwise dilated conv
    detail_branch: tuple[bool, ...] = (True, False)


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` without its ``None`` values, recursively (an unset override changes nothing)."""
    return {k: _drop_none(v) if isinstance(v, Mapping) else v for k, v in d.items() if v is not None}


def merge_layers(base: T | type[T], *layers: Mapping[str, Any] | DictConfig | None, where: str = "train") -> T:
    """``base`` (a schema dataclass instance, or the class for its defaults) with each layer of
    overrides merged on, in order.

    Nested nodes (``augment``) merge key by key; ``None`` values are skipped, so an unset
    override changes nothing. The result is built by ``OmegaConf.to_object``, so the class's
    ``__post_init__`` validates it.

    Raises:
        ValueError: an unknown key (``unknown <where> key 'k'; allowed: [...]``) or a value of
            the wrong type (the message names the key and ``where``), or what ``__post_init__`` raises.
    """
    node = _writable(base)
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, DictConfig):
            layer = OmegaConf.to_container(layer, resolve=True)
        if not isinstance(layer, Mapping):
            raise ValueError(f"{where}: expected a mapping of keys, got {type(layer).__name__}")
        try:
            node = OmegaConf.merge(node, _drop_none(layer))
        except ConfigKeyError as exc:
            parent, _, key = str(exc.full_key).rpartition(".")
            scope = f"{where}.{parent}" if parent else where
            sub = OmegaConf.select(node, parent) if parent else node
            raise ValueError(f"unknown {scope} key {key!r}; allowed: {sorted(sub.keys())}") from None
        except ValidationError as exc:
            raise ValueError(f"{where}.{exc.full_key}: {str(exc.msg).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        raise ValueError(f"{where}.{exc.full_key} is required (no default)") from None


def train_settings_from(node: Mapping[str, Any] | DictConfig) -> TrainConfig:
    """The ``train`` node as a :class:`TrainConfig` (:func:`merge_layers`; raises ``ValueError``)."""
    return merge_layers(TrainConfig(), node, where="train")


def fidelity_settings_from(node: Mapping[str, Any] | DictConfig) -> FidelitySettings:
    """The ``study`` node of ``nas-fidelity`` as :class:`FidelitySettings` (raises ``ValueError``)."""
    return merge_layers(FidelitySettings, node, where="study")


def study_settings_from(node: Mapping[str, Any] | DictConfig) -> SearchSettings:
    """The ``study`` node of ``nas-search`` as :class:`SearchSettings` (raises ``ValueError``)."""
    return merge_layers(SearchSettings, node, where="study")


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (group ``schema``: ``train``, ``study``, ``data``,
    ``fidelity_study``, ``space/sinet``, ``space/extremec3net``).

    Idempotent; called by every console script and by the tests before composing."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=_writable(TrainConfig))
    cs.store(group="schema", name="study", node=_writable(SearchSettings))
    cs.store(group="schema", name="data", node=_writable(DataConfig))
    cs.store(group="schema", name="fidelity_study", node=_writable(FidelitySettings))
    cs.store(group="schema/space", name="sinet", node=_writable(SINetSpaceConfig))
    cs.store(group="schema/space", name="extremec3net", node=_writable(C3SpaceConfig))


def _writable(obj: Any) -> DictConfig:
    """The schema of ``obj`` (a dataclass or an instance) as a node that config files and
    overrides may set (a frozen dataclass gives a read-only node); its type, and so its key and
    type checks, stay."""
    node = OmegaConf.structured(obj)

    def clear(n: DictConfig) -> None:
        OmegaConf.set_readonly(n, None)  # None: inherit, not read-only
        for k in n:
            if not OmegaConf.is_missing(n, k) and OmegaConf.is_dict(n[k]):
                clear(n[k])

    clear(node)
    return node
