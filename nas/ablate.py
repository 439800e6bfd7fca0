"""Ablations as data: ``experiments/<name>.yaml`` -> trained cells -> a table.

An experiment file holds a base (model + training recipe + fidelity), a list
of variants given as overrides of that base, the seeds, and optionally
published reference figures per variant with their source::

    name: sinet_decoder
    title: SINet decoder ablation
    base:
      model: sinet                 # registered name or genotype .yaml (relative to the file)
      train: {epochs: 8, schedule: single_stage, input_size: [128, 128], lr: 2.0e-3}
    seeds: [0, 1]
    baseline: information_blocking # the row differences are taken against (default: the first)
    variants:
      - name: information_blocking
        genotype: {decoder: information_blocking}
        reference: {miou: 95.2, source: "SINet release README"}
      - name: no_decoder
        genotype: {decoder: none}
      - name: pool_as_dilation
        edits:                     # path edits of the genotype; '*' matches every index
          - {path: stages.*.modules.*.branches.*.dilation, from: pool}
          - {path: stages.*.modules.*.branches.*.pool, value: 1}
      - name: no_boundary_loss
        train: {boundary: false}

Each (variant, seed) cell is one MLflow run tagged ``ablation``, ``variant``,
``seed`` and ``cell`` (a hash of the cell's genotype and full training
config). A FINISHED run with the same ``cell`` tag is read back instead of
retrained; a cell whose run crashed is trained again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from nas.config import merge_layers
from nas.cost import genotype_cost
from nas.moasha import welch_interval as delta_interval
from nas.report import write_table
from nas.train import DataBundle, TrainConfig, load_data, train_genotype
from search_spaces import Genotype, genotype_from_dict, get_genotype

__all__ = [
    "Variant",
    "Experiment",
    "load_experiment",
    "apply_edits",
    "variant_genotype",
    "variant_train_config",
    "Cell",
    "run_ablation",
    "write_results",
    "delta_interval",
    "CI_METHOD",
]

_TOP_KEYS = {"name", "title", "description", "citation", "base", "seeds", "baseline", "variants"}
_VARIANT_KEYS = {"name", "description", "genotype", "edits", "train", "reference"}


@dataclass(frozen=True)
class Variant:
    """One row: top-level genotype overrides, path edits, training overrides, reference figure."""

    name: str
    genotype: dict[str, Any] = field(default_factory=dict)
    edits: tuple[dict[str, Any], ...] = ()
    train: dict[str, Any] = field(default_factory=dict)
    reference_miou: float | None = None
    reference_source: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    """A parsed ``experiments/<name>.yaml`` (see the module docstring)."""

    name: str
    path: Path
    model: str
    train: dict[str, Any]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    baseline: str
    title: str = ""
    description: str = ""
    citation: str = ""


def _fail(path: Path, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


SHIPPED_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def experiments_folder(experiments_dir: str | Path | None = None) -> Path:
    """Where experiment names are looked up: ``experiments_dir`` when given, else ``./experiments``
    when the working directory has one, else the experiments shipped beside the package
    (:data:`SHIPPED_EXPERIMENTS`), so ``nas-ablate experiment=<name>`` works from any folder."""
    if experiments_dir is not None:
        return Path(experiments_dir)
    here = Path("experiments")
    return here if here.is_dir() else SHIPPED_EXPERIMENTS


def load_experiment(name_or_path: str, experiments_dir: str | Path | None = None) -> Experiment:
    """Read and check an experiment file.

    Args:
        name_or_path: ``<name>`` (read ``<experiments_dir>/<name>.yaml``) or a path.
        experiments_dir: the folder of named experiments (None: :func:`experiments_folder`).

    Raises:
        FileNotFoundError: no such experiment (the message lists those available).
        ValueError: an unknown key, a missing field, duplicate variant names, a
            variant whose genotype or training config is invalid -- the message
            names the file, the variant and the key.
    """
    experiments_dir = experiments_folder(experiments_dir)
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = Path(experiments_dir) / f"{name_or_path}.yaml"
    if not p.is_file():
        avail = sorted(q.stem for q in Path(experiments_dir).glob("*.yaml"))
        raise FileNotFoundError(f"experiment not found: {p}; available in {experiments_dir}: {avail}")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise _fail(p, f"not valid YAML: {exc}") from None
    if not isinstance(d, dict):
        raise _fail(p, "expected a mapping at the top level")
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise _fail(p, f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for k in ("name", "base", "variants"):
        if k not in d:
            raise _fail(p, f"missing key {k!r}")
    base = d["base"]
    if not isinstance(base, dict) or "model" not in base or set(base) - {"model", "train"}:
        raise _fail(p, "base must be a mapping with 'model' and optionally 'train'")
    model = str(base["model"])
    if model.endswith((".yaml", ".yml")) and not Path(model).is_absolute():
        model = str((p.parent / model).resolve())
    variants = []
    for i, v in enumerate(d["variants"] or []):
        if not isinstance(v, dict) or "name" not in v:
            raise _fail(p, f"variants[{i}] must be a mapping with a 'name'")
        bad = sorted(set(v) - _VARIANT_KEYS)
        if bad:
            raise _fail(p, f"variant {v['name']!r}: unknown key(s) {bad}; allowed: {sorted(_VARIANT_KEYS)}")
        ref = v.get("reference") or {}
        variants.append(
            Variant(
                name=str(v["name"]),
                genotype=dict(v.get("genotype") or {}),
                edits=tuple(v.get("edits") or ()),
                train=dict(v.get("train") or {}),
                reference_miou=ref.get("miou"),
                reference_source=ref.get("source"),
                description=str(v.get("description", "")),
            )
        )
    if not variants:
        raise _fail(p, "no variants")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise _fail(p, f"duplicate variant names in {names}")
    baseline = str(d.get("baseline") or names[0])
    if baseline not in names:
        raise _fail(p, f"baseline={baseline!r} is not a variant; variants: {names}")
    exp = Experiment(
        name=str(d["name"]),
        path=p,
        model=model,
        train=dict(base.get("train") or {}),
        seeds=tuple(int(s) for s in d.get("seeds") or (0,)),
        variants=tuple(variants),
        baseline=baseline,
        title=str(d.get("title", "")),
        description=str(d.get("description", "")),
        citation=str(d.get("citation", "")),
    )
    for v in exp.variants:  # fail now, not hours into the run
        try:
            variant_genotype(exp, v, variant_train_config(TrainConfig(), exp, v))
        except (ValueError, TypeError, KeyError) as exc:
            raise _fail(p, f"variant {v.name!r}: {exc}") from None
    return exp


def apply_edits(data: dict[str, Any], edits: Sequence[dict[str, Any]], where: str = "edits") -> dict[str, Any]:
    """Apply path edits to a genotype dict (a copy is returned).

    Each edit is ``{path, value}`` or ``{path, from}``: the path is dotted keys
    and list indices, ``*`` matching every index or key; ``from`` copies a
    sibling field of the same object (``dilation`` from ``pool``, say).
    Edits apply in order.

    Raises:
        ValueError: a path that matches nothing, or an edit without exactly
            one of ``value`` / ``from``.
    """
    out = copy.deepcopy(data)
    for i, e in enumerate(edits):
        if "path" not in e or (("value" in e) == ("from" in e)):
            raise ValueError(f"{where}[{i}]: needs 'path' and exactly one of 'value' or 'from', got {e}")
        parts = str(e["path"]).split(".")
        hits = 0

        def walk(node: Any, k: int) -> None:
            nonlocal hits
            key = parts[k]
            if isinstance(node, list):
                idx = range(len(node)) if key == "*" else [int(key)] if key.lstrip("-").isdigit() else []
                items = [(j, node[j]) for j in idx if -len(node) <= j < len(node)]
            elif isinstance(node, dict):
                items = list(node.items()) if key == "*" else [(key, node[key])] if key in node else []
            else:
                items = []
            for j, child in items:
                if k == len(parts) - 1:
                    node[j] = copy.deepcopy(e["value"]) if "value" in e else node[e["from"]]
                    hits += 1
                else:
                    walk(child, k + 1)

        walk(out, 0)
        if not hits:
            raise ValueError(f"{where}[{i}]: path {e['path']!r} matches nothing in the genotype")
    return out


def variant_train_config(base: TrainConfig, exp: Experiment, v: Variant, fidelity: dict | None = None) -> TrainConfig:
    """``base`` <- experiment base.train <- variant.train <- fidelity overrides (non-null only)."""
    return merge_layers(base, exp.train, v.train, fidelity)


def variant_genotype(exp: Experiment, v: Variant, tcfg: TrainConfig) -> Genotype:
    """The variant's genotype at ``tcfg``'s class count, checked at its input size.

    Raises:
        ValueError: an unknown genotype key, or a genotype that cannot run at ``tcfg.input_size``
            (the message names the variant).
    """
    g = get_genotype(exp.model)
    d = g.to_dict()
    unknown = sorted(set(v.genotype) - set(d))
    if unknown:
        raise ValueError(f"unknown genotype key(s) {unknown}; allowed: {sorted(set(d) - {'family'})}")
    d.update(v.genotype)
    d = apply_edits(d, v.edits)
    d.update(num_classes=tcfg.num_classes)
    g = genotype_from_dict(d, where=f"variant {v.name}")
    try:
        g.check_input_size(tcfg.input_size)
    except ValueError as exc:
        raise ValueError(f"variant {v.name}: {exc}") from None
    return g


@dataclass
class Cell:
    """One (variant, seed) result."""

    variant: str
    seed: int
    miou: float
    miou_2class: float
    run_id: str | None
    reused: bool


# How a cell is run, not what it is: changing these does not make a new cell.
_EXECUTION_KEYS = ("threads", "progress", "num_workers", "eval_batch_size", "channels_last", "compile",
                   "device", "resume_every", "resume_dir", "check_every")
# Keys added later, at the value that reproduces the earlier cells: at that value they stay out of the identity.
_NEUTRAL = {"precision": "fp32", "augment_backend": "numpy", "data_classes": 2}


def _cell_hash(exp: Experiment, g: Genotype, tcfg: TrainConfig, data: dict | None = None) -> str:
    """Identity of a cell: its genotype, every training setting that can change its result and the data set
    (``data``: a reader's :meth:`~nas.datasets.DatasetReader.describe`; None for EG1800, as before)."""
    train = {k: v for k, v in tcfg.as_dict().items()
             if k not in _EXECUTION_KEYS and not (k in _NEUTRAL and v == _NEUTRAL[k])}
    # the input size sits beside the genotype, where it stood when the genotype carried it: same hashes
    genotype = {**g.to_dict(), "input_size": list(tcfg.input_size)}
    ident = {"genotype": genotype, "train": train} | ({"data": data} if data else {})
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_ablation(
    exp: Experiment,
    base_train: TrainConfig,
    *,
    data_root: str | None,
    cache_dir: str | None = None,
    tracker: Any = None,
    train: bool = True,
    seeds: Sequence[int] | None = None,
    fidelity: dict | None = None,
    cost_input_size: tuple[int, int] = (224, 224),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Cost every variant; with ``train``, train every variant x seed (resumably).

    Returns:
        ``{"rows": [...], "cells": [...], "fidelity": {...}, "seeds": [...]}``;
        a row per variant with ``params``, ``conv_macs`` (at ``cost_input_size``)
        and, when trained, ``miou_mean``, ``miou_std``, ``delta_miou``,
        ``delta_ci_lo`` / ``delta_ci_hi`` / ``outside_noise`` (the Welch 95%
        interval of the delta over seeds and whether it excludes 0; see
        :func:`delta_interval`), ``miou_2class_mean`` and ``seeds`` (the number
        of finished seeds of that variant).

    Raises:
        ValueError / FileNotFoundError: bad experiment values or data (named).
    """
    from nas.tracking import FAILED, RUNNING, result_metrics, training_run

    seeds = tuple(seeds) if seeds else exp.seeds
    configs = {v.name: variant_train_config(base_train, exp, v, fidelity) for v in exp.variants}
    genotypes = {v.name: variant_genotype(exp, v, configs[v.name]) for v in exp.variants}
    costs = {
        n: genotype_cost(g, cost_input_size) for n, g in genotypes.items()
    }
    cells: list[Cell] = []
    from nas.datasets import EG1800Reader

    data_ident = None if data_root is None or isinstance(data_root, (str, os.PathLike, EG1800Reader)) \
        else data_root.describe()
    if train:
        data_cache: dict[tuple, DataBundle] = {}
        for v in exp.variants:
            for seed in seeds:
                tcfg = replace(configs[v.name], seed=seed)
                g = genotypes[v.name]
                h = _cell_hash(exp, g, tcfg, data_ident)
                done = tracker.runs(f"tags.ablation = '{exp.name}' and tags.cell = '{h}'") if tracker else []
                finished = [r for r in done if r.info.status == "FINISHED" and "val/miou" in r.data.metrics]
                if finished:
                    r = finished[0]
                    cells.append(
                        Cell(
                            v.name,
                            seed,
                            r.data.metrics["val/miou"],
                            r.data.metrics.get("val/miou_2class", float("nan")),
                            r.info.run_id,
                            True,
                        )
                    )
                    log(
                        f"[{exp.name}] {v.name} seed {seed}: read back from MLflow run {r.info.run_id[:8]} "
                        f"(mIoU {r.data.metrics['val/miou']:.2f})"
                    )
                    continue
                for r in done:  # a crashed earlier attempt: closed as FAILED, then retried
                    if r.info.status == RUNNING:
                        tracker.end_run(r.info.run_id, FAILED)
                key = (tcfg.input_size, tcfg.train_fraction, tcfg.holdout_fraction, tcfg.drop_split_duplicates, seed)
                if key not in data_cache:
                    data_cache[key] = load_data(data_root, tcfg, cache_dir=cache_dir, progress=False)
                log(
                    f"[{exp.name}] training {v.name} seed {seed} ({tcfg.epochs} epochs at "
                    f"{tcfg.input_size[0]}x{tcfg.input_size[1]})"
                )
                tags = {"ablation": exp.name, "variant": v.name, "seed": seed, "cell": h, "archid": g.archid(),
                        "host": socket.gethostname(), "pid": os.getpid()}
                with training_run(tracker, f"{exp.name}/{v.name}/seed{seed}", tags=tags, train_cfg=tcfg, genotype=g,
                                  costs={"params": costs[v.name].params, "conv_macs": costs[v.name].conv_macs}) as run:
                    res = train_genotype(g, tcfg, data_cache[key], on_epoch=run.on_epoch)
                    run.log_metrics(result_metrics(res), step=tcfg.epochs)
                rid = run.run_id
                cells.append(Cell(v.name, seed, res.miou, res.miou_2class, rid, False))
                log(f"[{exp.name}] {v.name} seed {seed}: mIoU {res.miou:.2f}")
    rows = _rows(exp, costs, cells, trained=train)
    any_cfg = configs[exp.baseline]
    return {"rows": rows, "cells": [c.__dict__ for c in cells], "fidelity": any_cfg.fidelity(), "seeds": list(seeds)}


CI_METHOD = "Welch's t 95% interval over seeds, unequal variances (Welch 1947)"



def _rows(exp: Experiment, costs: dict, cells: list[Cell], trained: bool) -> list[dict[str, Any]]:
    """One row per variant, in the experiment's order.

    Trained rows carry ``miou_mean``, ``miou_std`` (None for one seed), ``delta_miou``
    (mean minus the baseline's mean), ``delta_ci_lo`` / ``delta_ci_hi`` (see
    :func:`delta_interval`; None on the baseline row and where no interval exists),
    ``outside_noise`` (True when the interval excludes 0, False when it contains 0, None
    without an interval), ``miou_2class_mean`` and ``seeds`` (number of finished cells).
    """
    by: dict[str, list[Cell]] = {}
    for c in cells:
        by.setdefault(c.variant, []).append(c)
    means = {n: statistics.fmean(c.miou for c in cs) for n, cs in by.items()}
    base_mious = [c.miou for c in by.get(exp.baseline, [])]
    rows = []
    for v in exp.variants:
        cs = by.get(v.name, [])
        row = {"variant": v.name, "params": costs[v.name].params, "conv_macs": costs[v.name].conv_macs}
        if trained:
            ci = None if v.name == exp.baseline else delta_interval([c.miou for c in cs], base_mious)
            row.update(
                miou_mean=means.get(v.name),
                miou_std=statistics.stdev([c.miou for c in cs]) if len(cs) > 1 else None,  # undefined for 1 seed
                delta_miou=(means[v.name] - means[exp.baseline]) if v.name in means and exp.baseline in means else None,
                delta_ci_lo=ci[0] if ci else None,
                delta_ci_hi=ci[1] if ci else None,
                outside_noise=(ci[0] > 0.0 or ci[1] < 0.0) if ci else None,
                miou_2class_mean=statistics.fmean(c.miou_2class for c in cs) if cs else None,
                seeds=len(cs),
            )
        row.update(reference_miou=v.reference_miou, reference_source=v.reference_source)
        rows.append(row)
    return rows


def write_results(exp: Experiment, result: dict[str, Any], results_dir: str | Path, trained: bool) -> dict[str, Path]:
    """Write ``<results_dir>/<name>.md``, ``.csv`` and ``.tex``.

    Trained tables carry, beside ``delta_miou``, its interval over seeds (``delta_ci_lo``,
    ``delta_ci_hi``: :data:`CI_METHOD`, see :func:`delta_interval`) and ``outside_noise``
    (md/tex: ``yes`` / ``no`` / ``–``; csv: ``True`` / ``False`` / empty); the notes name the
    method and the seeds each row has.

    Raises:
        OSError: ``results_dir`` cannot be created or written (named).
    """
    out = Path(results_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"results_dir={out} cannot be created: {exc.strerror or exc}") from None
    cols = ["variant", "params", "conv_macs"]
    if trained:
        cols += [
            "miou_mean",
            "miou_std",
            "delta_miou",
            "delta_ci_lo",
            "delta_ci_hi",
            "outside_noise",
            "miou_2class_mean",
            "seeds",
        ]
    cols += ["reference_miou", "reference_source"]
    f = result["fidelity"]
    notes = [
        "params: trainable parameters; conv_macs: convolution multiply-accumulates at 224x224 (the papers' "
        '"FLOPs"; per nn.Conv2d: outputs x C_in/groups x kH x kW).',
    ]
    if trained:
        notes += [
            f"miou: foreground IoU per image averaged over the EG1800 validation images present in this copy (x100), "
            f"mean +/- std over seeds {result['seeds']} (seeds: the number of finished seeds of each row); "
            f"delta_miou: mean minus the mean of '{exp.baseline}'; "
            "miou_2class: confusion-matrix mean over both classes. Checkpoint chosen on a held-out slice of the "
            "training list.",
            f"delta_ci_lo, delta_ci_hi: {CI_METHOD}, of delta_miou. outside_noise: yes when that interval "
            "excludes 0 (a difference outside the seed noise), no when it contains 0, – when it cannot be "
            "computed (fewer than 2 seeds in either row, or zero variance in both).",
            f"fidelity: {f['epochs']} epochs ({f['schedule']}, stage 1: {f['stage1_epochs']}), "
            f"{f['input_size'][0]}x{f['input_size'][1]} input, {f['train_fraction']:.0%} of the training list. "
            "Not the papers' fidelity: compare rows, not absolute figures.",
        ]
    else:
        notes.append("train=false: costs only, no training.")
    if exp.citation:
        notes.append(f"reference figures: {exp.citation}")
    digits = {
        "miou_mean": 2,
        "miou_std": 2,
        "delta_miou": 2,
        "delta_ci_lo": 2,
        "delta_ci_hi": 2,
        "miou_2class_mean": 2,
        "reference_miou": 2,
    }
    yes_no = {"outside_noise": lambda b: None if b is None else ("yes" if b else "no")}
    return write_table(
        result["rows"],
        out / exp.name,
        columns=cols,
        title=exp.title or exp.name,
        notes=notes,
        float_digits=digits,
        display=yes_no,
    )
