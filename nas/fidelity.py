"""The fidelity study (``nas-fidelity``): does a cheap rung rank architectures like long training?

Sample N architectures from a search space (seeded, all within the study's budgets, spread
over the parameter range, the published networks included where they are points of the
space), score each with the zero-cost proxies (:mod:`nas.proxies`) and train it at every rung
of the fidelity ladder (:mod:`nas.rungs`) with k seeds; :mod:`nas.fidelity_report` then ranks
every rung against the top rung.

Work distribution and resume live in the study's own storage: every (architecture, rung,
seed) cell is one trial of an Optuna study ``fidelity-<name>`` in ``storage``, enqueued once
(under the study's slot lock), popped by any number of workers (``study.ask()`` hands out the
oldest waiting trial), kept alive by a heartbeat and, if its worker dies, failed as stale and
re-queued. Every cell is also an MLflow run tagged ``fidelity_study``, ``cell`` (a hash of the
genotype, the full training config minus execution settings, and the seed) and ``rung``: a
cell with a FINISHED run is read back instead of retrained, so a rerun after a crash or
Ctrl-C retrains nothing finished, even from a fresh study storage.

Cells are queued seed-major (every rung at seed 0, then every rung at seed 1, ...), proxies
first, so a study cut short still has one complete seed.

Data flow: config -> genotypes -> trainer / proxies -> cells (storage + MLflow) -> report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nas.config import FidelitySettings
from nas.cost import genotype_cost
from nas.rungs import rung_config
from nas.storage import Heartbeat as _Heartbeat
from nas.storage import ask_claimed, check_storage, engine_url, fail_dead_trials, slot_lock
from nas.tracking import FINISHED, Tracker, TrainingRun, close_runs_of_failed_trials, training_run
from nas.train import DataBundle, TrainConfig, load_data, train_genotype
from search_spaces import Genotype, create_model, get_genotype
from search_spaces.spaces import SearchSpace

__all__ = [
    "BASELINES",
    "PROXY_RUNG",
    "Arch",
    "Cell",
    "FidelitySettings",
    "FidelityWorker",
    "collect_results",
    "plan_cells",
    "sample_architectures",
]

log = logging.getLogger(__name__)
PROXY_RUNG = "proxy"
BASELINES = ("params", "conv_macs")
# How a cell is run, not what it is: these never change a cell's identity.
_EXECUTION_KEYS = ("threads", "progress", "num_workers", "eval_batch_size", "channels_last", "compile",
                   "device", "resume_every", "resume_dir", "check_every",
                   "recipe")  # recipe: the name its values came from; the values themselves are in the identity
# Training keys added after the first studies ran, at the value that reproduces the earlier behaviour: at that
# value they stay out of the identity, so finished cells keep being read back (any other value makes a new cell).
_NEUTRAL: dict[str, Any] = {"lovasz_per_image": True, "selection": "holdout", "val_best_after": 0.6, "init": None,
                            "data_classes": 2, "precision": "fp32", "augment_backend": "numpy"}


def cell_train_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings that define a cell: every key but the execution ones and neutral new ones
    (``stage1_handoff`` only counts for a two-stage schedule)."""
    d = cfg.as_dict()
    if d.get("schedule") == "single_stage":
        d.pop("stage1_handoff", None)
    return {k: v for k, v in d.items() if k not in _EXECUTION_KEYS and not (k in _NEUTRAL and v == _NEUTRAL[k])}


@dataclass(frozen=True)
class Arch:
    """One sampled architecture: index in the study, label, genotype, counts at ``cost_input_size``."""

    arch: int
    label: str
    genotype: Genotype
    params: int
    conv_macs: int

    def as_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "label": self.label, "archid": self.genotype.archid(), "params": self.params,
                "conv_macs": self.conv_macs}


@dataclass(frozen=True)
class Cell:
    """One unit of work: architecture ``arch`` at ``rung`` (a trained rung or :data:`PROXY_RUNG`) with ``seed``."""

    arch: int
    rung: str
    seed: int
    key: str  # identity hash (see the module docstring)

    def attrs(self) -> dict[str, Any]:
        return {"arch": self.arch, "rung": self.rung, "seed": self.seed, "cell": self.key}


def _within(budgets: dict[str, float | None], params: int, macs: int) -> bool:
    lim_p, lim_m = budgets.get("params"), budgets.get("conv_macs")
    return (lim_p is None or params <= lim_p) and (lim_m is None or macs <= lim_m)


def sample_architectures(space: SearchSpace, s: FidelitySettings) -> list[Arch]:
    """``s.n_archs`` architectures of ``space``, deterministic for ``s.sample_seed``.

    The published networks of ``s.include`` come first (when they are points of the space
    and within budget); the rest are picked from ``s.candidates`` random genotypes within
    budget, evenly spaced in parameter count (sorted, quantile positions), no duplicates.

    Raises:
        ValueError: fewer distinct in-budget genotypes than needed (the message says how many).
    """
    archs: list[Arch] = []
    seen: set[str] = set()
    for name in s.include:
        g = get_genotype(name, num_classes=space.num_classes)
        try:
            space.params_for(g)
        except ValueError as exc:
            log.warning("fidelity.include: %s is not a point of %s (%s); left out", name, type(space).__name__, exc)
            continue
        c = genotype_cost(g, s.cost_input_size)
        if not _within(s.budgets, c.params, c.conv_macs):
            log.warning("fidelity.include: %s is over the budgets %s; left out", name, s.budgets)
            continue
        archs.append(Arch(len(archs), name, g, c.params, c.conv_macs))
        seen.add(g.archid())
    sampler = optuna.samplers.RandomSampler(seed=s.sample_seed)
    study = optuna.create_study(sampler=sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pool: list[tuple[int, Genotype, int]] = []
    for _ in range(s.candidates):
        trial = study.ask()
        try:
            g = get_genotype(space.suggest(trial), num_classes=space.num_classes)
        except ValueError:
            continue
        if g.archid() in seen:
            continue
        c = genotype_cost(g, s.cost_input_size)
        if _within(s.budgets, c.params, c.conv_macs):
            seen.add(g.archid())
            pool.append((c.params, g, c.conv_macs))
    need = s.n_archs - len(archs)
    if len(pool) < need:
        raise ValueError(f"fidelity: only {len(pool)} distinct in-budget genotypes among {s.candidates} candidates; "
                         f"need {need}: raise fidelity.candidates or the budgets")
    pool.sort(key=lambda t: (t[0], t[1].archid()))
    picks = sorted({round(i * (len(pool) - 1) / max(need - 1, 1)) for i in range(need)})
    k = 0
    while len(picks) < need:  # rounding collisions (tiny pools): fill with the nearest unused
        if k not in picks:
            picks.append(k)
        k += 1
    for i in sorted(picks):
        p, g, m = pool[i]
        archs.append(Arch(len(archs), f"sample-{g.archid()[:8]}", g, p, m))
    return archs


def train_config_at(base: TrainConfig, rung: str, seed: int) -> TrainConfig:
    """The recipe at ``rung`` with ``seed``."""
    return rung_config(base, rung, seed=int(seed))


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _identity(g: Genotype, input_size: Sequence[int]) -> dict[str, Any]:
    """The genotype with the cell's input size beside it, as cells were keyed when the genotype carried it."""
    return {**g.to_dict(), "input_size": list(input_size)}


def plan_cells(archs: Sequence[Arch], s: FidelitySettings, base: TrainConfig) -> list[Cell]:
    """Every cell of the study in queue order: proxies, then seed-major over rungs and architectures."""
    cells = []
    for seed in s.seeds:
        for a in archs:
            if s.proxies:
                cells.append(Cell(a.arch, PROXY_RUNG, seed, _hash({
                    "kind": "proxy", "version": 2, "genotype": _identity(a.genotype, s.proxy_input_size), "seed": seed,
                    "proxies": sorted(s.proxies),
                    "batch": s.proxy_batch, "input_size": list(s.proxy_input_size)})))
    for seed in s.seeds:
        for rung in s.rungs:
            cfg = train_config_at(base, rung, seed)
            train = cell_train_identity(cfg)
            for a in archs:
                g = get_genotype(a.genotype, num_classes=cfg.num_classes)
                key = _hash({"kind": "train", "genotype": _identity(g, cfg.input_size), "train": train})
                cells.append(Cell(a.arch, rung, seed, key))
    return cells


def _fidelity_text(cfg: TrainConfig) -> str:
    aug = "aug" if any(v is True for v in cfg.augment.__dict__.values()) else "no aug"
    f = cfg.fidelity()
    sched = "" if f["schedule"] == "single_stage" else f", {f['schedule']} ({f['stage1_epochs']} stage-1)"
    return (f"{f['epochs']} ep at {f['input_size'][0]}x{f['input_size'][1]}, {f['train_fraction']:.0%} of the "
            f"training list, {aug}, lr {cfg.lr:g}{sched}")


class FidelityWorker:
    """One ``nas-fidelity`` process: enqueue missing cells, work through the queue, report.

    Args:
        settings: the study settings.
        space: the search space architectures are sampled from.
        base: the training recipe the rungs override.
        data_root / cache_dir: EG1800 root and preprocessed cache.
        tracker: MLflow experiment (None: no tracking and no read-back).
        threads: torch threads while training (fixed: bit-identical cells).
    """

    def __init__(self, settings: FidelitySettings, space: SearchSpace, base: TrainConfig, *, data_root: str | None,
                 cache_dir: str | None = None, tracker: Tracker | None = None, progress: bool = True,
                 log_fn: Callable[[str], None] = print):
        self.s, self.space, self.base = settings, space, base
        self.data_root, self.cache_dir, self.tracker = data_root, cache_dir, tracker
        self.progress, self.log = progress, log_fn
        self.archs = sample_architectures(space, settings)
        self.cells = plan_cells(self.archs, settings, base)
        self.study_name = f"fidelity-{settings.name}"
        check_storage(settings.storage)
        kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}
                                  if settings.storage.startswith("sqlite") else {"pool_pre_ping": True}}
        with slot_lock(settings.storage, "portrait-nas/create-tables"):
            self.storage = RDBStorage(
                engine_url(settings.storage), heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry), **kwargs)
            self.study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction="maximize",
                                             load_if_exists=True)
        self._data: dict[tuple, DataBundle] = {}
        self._proxy_batch: Any = None
        self.trained, self.reused, self.failed = 0, 0, 0
        self._closed: set[str] = set()

    # -- the queue ---------------------------------------------------------------------------------
    def enqueue_missing(self) -> int:
        """Queue every planned cell that is neither done, running, waiting, nor out of retries."""
        with slot_lock(self.s.storage, self.study_name):
            trials = self.study.get_trials(deepcopy=False)
            state: dict[str, list[TrialState]] = {}
            fails: dict[str, int] = {}
            for t in trials:
                k = t.user_attrs.get("cell")
                if k is None:
                    continue
                state.setdefault(k, []).append(t.state)
                if t.state == TrialState.FAIL and not str(t.user_attrs.get("error", "")).startswith("interrupted"):
                    fails[k] = fails.get(k, 0) + 1
            n = 0
            for c in self.cells:
                st = state.get(c.key, [])
                if any(x in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for x in st):
                    continue
                if fails.get(c.key, 0) > self.s.max_retry:
                    continue
                self.study.enqueue_trial({}, user_attrs=c.attrs(), skip_if_exists=False)
                n += 1
            if not self.study.user_attrs.get("archs"):
                self.study.set_user_attr("archs", [a.as_dict() for a in self.archs])
        return n

    def _close_orphan_runs(self) -> int:
        """Close (FAILED) the MLflow runs of cells whose trial failed while its run stayed RUNNING."""
        return close_runs_of_failed_trials(self.tracker, self.study.get_trials(deepcopy=False,
                                           states=(TrialState.FAIL,)), self._closed)

    def _next(self) -> optuna.Trial | None:
        wait = object()
        while True:
            fail_dead_trials(self.study, self.storage)
            self._close_orphan_runs()
            with slot_lock(self.s.storage, self.study_name):
                trials = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
                waiting = [t for t in trials if t.state == TrialState.WAITING]
                if waiting:
                    trial = ask_claimed(self.study, self.storage)
                else:
                    trial = wait if trials else None
            if trial is not wait:
                return trial
            time.sleep(min(self.s.heartbeat_interval, 5))

    # -- running cells -----------------------------------------------------------------------------
    def _readback(self, cell: Cell) -> dict[str, Any] | None:
        if not self.tracker:
            return None
        for r in self.tracker.runs(f"tags.cell = '{cell.key}' and tags.kind = 'fidelity'"):
            if r.info.status == FINISHED:
                m = r.data.metrics
                return {k: m[k] for k in m if k == "value" or k.startswith(("proxy/", "val/", "cost/"))} | {
                    "mlflow_run_id": r.info.run_id}
        return None

    def _data_for(self, cfg: TrainConfig) -> DataBundle:
        key = (cfg.input_size, cfg.train_fraction, cfg.holdout_fraction, cfg.drop_split_duplicates, cfg.seed)
        if key not in self._data:
            self._data[key] = load_data(self.data_root, cfg, cache_dir=self.cache_dir, progress=False)
        return self._data[key]

    def proxy_batch(self) -> tuple[Any, Any]:
        """The fixed batch: the first ``proxy_batch`` training images (seeded order), (B,3,H,W) and (B,H,W)."""
        if self._proxy_batch is None:
            import torch

            from nas.data import SegmentationDataset, load_split_arrays, subset_ids

            arrays = load_split_arrays(self.data_root, "train", self.s.proxy_input_size, cache_dir=self.cache_dir,
                                       progress=False)
            ids = subset_ids(arrays.ids, min(1.0, self.s.proxy_batch / len(arrays.ids)), seed=0)[: self.s.proxy_batch]
            ds = SegmentationDataset.from_arrays(arrays.select(ids))
            xs, ys = zip(*(ds[i] for i in range(len(ds))))
            self._proxy_batch = (torch.stack(xs), torch.stack(ys))
        return self._proxy_batch

    def _run_proxies(self, a: Arch, seed: int) -> dict[str, float]:
        import torch

        from nas.proxies import score_proxies

        x, y = self.proxy_batch()
        old = torch.get_num_threads()
        if self.base.threads:
            torch.set_num_threads(self.base.threads)
        try:
            torch.manual_seed(seed)
            a.genotype.check_input_size(self.s.proxy_input_size)
            model = create_model(a.genotype)
            res = score_proxies(model, x, y, list(self.s.proxies))
        finally:
            torch.set_num_threads(old)
        out = {f"proxy/{k}": v["score"] for k, v in res.items()}
        out |= {f"cost/{k}_cpu_s": v["cpu_s"] for k, v in res.items()}
        out["value"] = 0.0
        return out

    def _run_training(self, a: Arch, rung: str, seed: int, run: TrainingRun) -> dict[str, float]:
        cfg = train_config_at(self.base, rung, seed)
        data = self._data_for(cfg)
        c0, t0 = time.process_time(), time.perf_counter()
        res = train_genotype(a.genotype, cfg, data, on_epoch=run.on_epoch)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        return {"value": res.miou, "val/miou": res.miou, "val/miou_2class": res.miou_2class,
                "val/holdout_miou": res.holdout_miou if res.holdout_miou is not None else math.nan,
                "cost/cpu_s": cpu, "cost/wall_s": wall}

    def _run_cell(self, trial: optuna.Trial) -> None:
        attrs = trial.user_attrs
        cell = Cell(int(attrs["arch"]), str(attrs["rung"]), int(attrs["seed"]), str(attrs["cell"]))
        a = self.archs[cell.arch]
        what = f"arch {cell.arch} ({a.label}) {cell.rung} seed {cell.seed}"
        back = self._readback(cell)
        if back is not None:
            for k, v in back.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("reused", True)
            self.study.tell(trial, float(back.get("value", 0.0)), skip_if_finished=True)
            self.reused += 1
            self.log(f"[{self.s.name}] {what}: read back from MLflow run {back['mlflow_run_id'][:8]}")
            return
        tags = {"kind": "fidelity", "fidelity_study": self.s.name, "cell": cell.key, "arch": cell.arch,
                "label": a.label, "archid": a.genotype.archid(), "rung": cell.rung, "seed": cell.seed,
                "host": socket.gethostname(), "pid": os.getpid()}
        cfg = train_config_at(self.base, cell.rung, cell.seed) if cell.rung != PROXY_RUNG else None
        run = None
        try:
            with _Heartbeat(self.storage, trial._trial_id, self.s.heartbeat_interval):
                trial.set_user_attr("mlflow_run_id", None)  # a retried cell's copy carries the dead run's id
                with training_run(self.tracker, f"{self.s.name}/a{cell.arch}/{cell.rung}/s{cell.seed}", tags=tags,
                                  train_cfg=cfg, genotype=a.genotype,
                                  costs={"params": a.params, "conv_macs": a.conv_macs}) as run:
                    if run:
                        trial.set_user_attr("mlflow_run_id", run.run_id)
                    self.log(f"[{self.s.name}] {what}: running")
                    if cell.rung == PROXY_RUNG:
                        out = self._run_proxies(a, cell.seed)
                    else:
                        out = self._run_training(a, cell.rung, cell.seed, run)
                    run.log_metrics(out)
            for k, v in out.items():
                trial.set_user_attr(k, v)
            self.study.tell(trial, float(out["value"]), skip_if_finished=True)
            self.trained += 1
            self.log(f"[{self.s.name}] {what}: " + (f"mIoU {out['value']:.2f} ({out['cost/cpu_s']:.0f} CPU-s)"
                                                    if cell.rung != PROXY_RUNG else "proxies scored"))
        except KeyboardInterrupt:  # the run is closed KILLED by training_run
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", "interrupted (Ctrl-C)")
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:  # a failed cell is recorded and the study goes on (its run closed FAILED)
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("fidelity cell %s failed: %s", what, msg)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", msg[:2000])
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if run:
                with contextlib.suppress(Exception):
                    run.set_tags({"error": msg[:5000]})
            self.failed += 1

    def run(self) -> dict[str, Any]:
        """Work until no cell is waiting; return the worker's counts."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        queued = self.enqueue_missing()
        self.log(f"[{self.s.name}] {len(self.archs)} architectures, {len(self.cells)} cells; {queued} queued now")
        while (trial := self._next()) is not None:
            self._run_cell(trial)
        return {"trained": self.trained, "reused": self.reused, "failed": self.failed}

    # -- results -----------------------------------------------------------------------------------
    def results(self, space_name: str) -> dict[str, Any]:
        """Aggregate the finished cells of this study's plan (see :func:`collect_results`)."""
        return collect_results(self.study, self.archs, self.cells, self.s, self.base, space_name)


def collect_results(study: optuna.Study, archs: Sequence[Arch], cells: Sequence[Cell], s: FidelitySettings,
                    base: TrainConfig, space_name: str) -> dict[str, Any]:
    """Rows, JSON summary and per-architecture means from the study's finished cells.

    Only cells of the current plan count (a changed config leaves old cells unused, not mixed in).
    """
    from nas.fidelity_report import recommend_rung, rung_rows

    planned = {c.key: c for c in cells}
    done: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        k = t.user_attrs.get("cell")
        if k in planned and k not in done:
            done[k] = t.user_attrs
    flat: list[dict[str, Any]] = []
    for k, ua in done.items():
        c = planned[k]
        if c.rung == PROXY_RUNG:
            for p in s.proxies:
                if f"proxy/{p}" in ua:
                    flat.append({"arch": c.arch, "rung": p, "seed": c.seed, "value": ua[f"proxy/{p}"],
                                 "cpu_s": ua.get(f"cost/{p}_cpu_s")})
        else:
            flat.append({"arch": c.arch, "rung": c.rung, "seed": c.seed, "value": ua.get("val/miou"),
                         "cpu_s": ua.get("cost/cpu_s")})
    for a in archs:  # the baselines: exact, seed-free
        flat += [{"arch": a.arch, "rung": "params", "seed": 0, "value": float(a.params), "cpu_s": None},
                 {"arch": a.arch, "rung": "conv_macs", "seed": 0, "value": float(a.conv_macs), "cpu_s": None}]
    rung_meta = [{"name": n, "kind": "baseline", "fidelity": f"counted at {s.cost_input_size[0]}x"
                  f"{s.cost_input_size[1]}, no training"} for n in BASELINES]
    rung_meta += [{"name": p, "kind": "proxy", "fidelity": f"untrained, one batch of {s.proxy_batch} training "
                   f"images at {s.proxy_input_size[0]}x{s.proxy_input_size[1]}"} for p in s.proxies]
    rung_meta += [{"name": r, "kind": "trained", "fidelity": _fidelity_text(train_config_at(base, r, 0))}
                  for r in s.rungs]
    rows, means = rung_rows(flat, rung_meta, s.top, n_resamples=s.bootstrap, seed=s.sample_seed)
    rec = recommend_rung(rows, s.top, min_tau=s.min_tau, max_seconds=s.max_seconds_per_arch)
    top_row = next(r for r in rows if r["rung"] == s.top)
    n_done = sum(1 for k in planned if k in done)
    seconds_note = (f"CPU-seconds of the training process (all its threads; torch threads = "
                    f"{base.threads or 'default'}), validation included; proxies: CPU-seconds of that proxy")
    json_obj = {
        "name": s.name, "n_archs": len(archs), "space": space_name, "top_rung": s.top,
        "top_rung_seed_tau": top_row["seed_tau"], "seeds": list(s.seeds), "cells_done": n_done,
        "cells_planned": len(planned), "complete": n_done == len(planned), "recommended_search_rung": rec,
        "rungs": [{"name": r["rung"], "kind": r["kind"], "fidelity": r["fidelity"],
                   "kendall_tau": r["kendall_tau"], "kendall_tau_ci95": [r["kendall_tau_lo"], r["kendall_tau_hi"]],
                   "spearman_rho": r["spearman_rho"], "spearman_rho_ci95": [r["spearman_rho_lo"], r["spearman_rho_hi"]],
                   "outside_noise": r["outside_noise"], "seed_std": r["seed_std"],
                   "noise_to_signal": r["noise_to_signal"], "seed_tau": r["seed_tau"],
                   "top_quarter_overlap": r["top_quarter_overlap"], "seconds_per_arch": r["seconds_per_arch"],
                   "seconds_unit": r["seconds_unit"], "archs": r["archs"], "seeds": r["seeds"]} for r in rows],
        "archs": [a.as_dict() for a in archs],
        "output_dir": s.results_dir,
    }
    return {"name": s.name, "top_rung": s.top, "top_fidelity": _fidelity_text(train_config_at(base, s.top, 0)),
            "n_archs": len(archs), "space": space_name, "sample_seed": s.sample_seed, "budgets": dict(s.budgets),
            "include": list(s.include), "seeds": list(s.seeds), "bootstrap": s.bootstrap, "table": rows,
            "recommended": rec, "seconds_note": seconds_note, "archs": [a.as_dict() for a in archs],
            "json": json_obj, "cells": flat, "means": means}
