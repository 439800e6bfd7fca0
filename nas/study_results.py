"""The end of a study: its front, plot, CSV, exported genotypes, ``<name>.json`` and MLflow record.

:func:`write_study_results` reads the study and its ledger (:mod:`nas.points`), builds the front
at the highest rung each candidate reached (confirmed mean +/- std when seeds were added), and
writes, atomically, ``<output_dir>/<name>/pareto.{png,html,csv}``, ``<name>.json`` (the summary
that ``nas-search`` prints as its JSON line) and ``pareto/trial<N>-<archid>.yaml``; front members'
MLflow runs are tagged ``on_pareto_front``, ``front_rung``, ``front_miou``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas._atomic import atomic_write_text
from nas.config import SearchSettings
from nas.points import candidates, study_front
from nas.report import FrontPoint
from nas.rungs import RungLadder
from nas.storage import count_slots
from nas.tracking import FINISHED, Tracker
from search_spaces import Genotype, genotype_from_dict

__all__ = ["export_front", "point_json", "study_summary", "write_study_results"]


def write_study_results(s: SearchSettings, study: optuna.Study, ledger: optuna.Study, ladder: RungLadder, *,
                        tracker: Tracker | None = None, parent_run: str | None = None,
                        timing: dict[str, float] | None = None, stopped: str | None = None,
                        status: str = FINISHED) -> dict[str, Any]:
    """Tag the front in MLflow, write and log the Pareto artifacts and ``<name>.json``, export
    genotypes, close the worker's run ``parent_run`` as ``status``; return the summary.

    ``timing`` holds seconds per bucket (``infeasible_s``, ``trained_s``, ``failed_s``, ``wall_s``).
    """
    from nas.report import hypervolume

    trials = study.get_trials(deepcopy=False)
    led = ledger.get_trials(deepcopy=False)
    objectives = s.front_objectives
    everything, front = study_front(trials, led, ladder.names, ladder.n_sched, ladder.seed, ladder.confirm_index,
                                    objectives)
    ref = s.reference_point
    hv = hypervolume(front, tuple(ref[n] for n in objectives), objectives=objectives) if front else 0.0
    out = Path(s.output_dir) / s.name
    exported = export_front(trials, front, out / "pareto")
    if tracker:
        _tag_front_runs(tracker, trials, front)
    files = _plot_front(s, trials, everything, front, out, ladder.seed) if front else []
    summary = study_summary(s, trials, led, ladder, front, hv, timing or {}, stopped, out)
    files.append(atomic_write_text(out / f"{s.name}.json", json.dumps(summary, indent=2, default=str) + "\n"))
    if tracker and parent_run:
        for p in files:
            tracker.log_artifact(parent_run, p, "pareto")
        for p in exported:
            tracker.log_artifact(parent_run, p, "pareto/genotypes")
        tracker.log_metrics(parent_run, {"hypervolume": hv, "front_size": len(front),
                                         "n_infeasible": summary["n_infeasible"],
                                         "infeasible_time_fraction": summary["infeasible_time_fraction"]})
        tracker.log_dict(parent_run, summary, "summary.json")
        tracker.end_run(parent_run, status)
    return summary


def _tag_front_runs(tracker: Tracker, trials: Sequence[FrozenTrial], front: Sequence[FrontPoint]) -> None:
    """Tag every trained candidate's run ``on_pareto_front`` (members: ``front_rung``, ``front_miou``)."""
    on_front = {p.trial: p for p in front}
    for t in trials:
        rid = t.user_attrs.get("mlflow_run_id")
        if rid and t.state == TrialState.COMPLETE:
            p = on_front.get(t.number)
            tags: dict[str, Any] = {"on_pareto_front": p is not None}
            if p is not None:
                tags["front_rung"] = p.rung
                if p.miou_std is not None:
                    tags["front_miou"] = f"{p.miou:.3f} +/- {p.miou_std:.3f} ({len(p.seeds)} seeds)"
            with contextlib.suppress(Exception):
                tracker.set_tags(rid, tags)


def _plot_front(s: SearchSettings, trials: Sequence[FrozenTrial], everything: Sequence[FrontPoint],
                front: Sequence[FrontPoint], out: Path, seed: int) -> list[Path]:
    """``pareto.png``, ``pareto.html`` (the front over every trained point, references marked) and ``pareto.csv``."""
    from nas.report import plot_fronts, write_front_csv

    confirmed = any(p.seeds for p in front)
    refs = [p for p in everything if trials[p.trial].user_attrs.get("reference")]
    png, html = plot_fronts({s.name: front}, out / "pareto.png", out / "pareto.html", references=refs,
                            all_points={s.name: everything},
                            title=f"{s.name}: Pareto front ({s.scheduler}; "
                            + ("mean +/- std over seeds" if confirmed else f"seed {seed}") + ")")
    return [png, html, write_front_csv(front, out / "pareto.csv")]


def study_summary(s: SearchSettings, trials: Sequence[FrozenTrial], led: Sequence[FrozenTrial], ladder: RungLadder,
                  front: Sequence[FrontPoint], hv: float, timing: dict[str, float], stopped: str | None,
                  out: Path) -> dict[str, Any]:
    """The study's summary: counts (trained, over budget, failed, per rung, confirmations), the
    front (:func:`point_json`), its hypervolume and reference, why it stopped, timing (s) and fidelity."""
    c = count_slots(trials)
    seed = ladder.seed
    cands = candidates(trials, led, seed, s.front_objectives)
    per_rung = {n: sum(1 for cd in cands.values() if (k, seed) in cd.results)
                for k, n in enumerate(ladder.names[: ladder.n_sched])}
    return {
        "study": s.name,
        "scheduler": s.scheduler,
        "rungs": ladder.names[: ladder.n_sched],
        "eta": s.eta if s.scheduler == "mo_asha" else None,
        "seed": seed,
        "n_complete": sum(1 for t in trials if t.state == TrialState.COMPLETE) - c["infeasible"],
        "n_infeasible": c["infeasible"],
        "n_failed": c["fail"] - c["retried"],
        "n_pruned": c["pruned"],
        "n_retried": c["retried"],
        "trained_per_rung": per_rung,
        "n_confirmations": sum(1 for t in led if t.state == TrialState.COMPLETE and t.user_attrs.get("kind")
                               == "confirm"),
        "n_ledger_failed": sum(1 for t in led if t.state == TrialState.FAIL),
        "objectives": list(s.front_objectives),
        "pareto": [point_json(p) for p in front],
        "budgets": dict(s.budgets),
        "confirmed": any(p.seeds for p in front),
        "hypervolume": hv,
        "reference_point": {n: s.reference_point[n] for n in s.front_objectives},
        "stopped": stopped,
        "infeasible_time_fraction": timing.get("infeasible_s", 0.0) / max(timing.get("wall_s", 0.0), 1e-9),
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "fidelity": {n: cfg.fidelity() for n, cfg in zip(ladder.names, ladder.cfgs)},
        "output_dir": str(out),
    }


def point_json(p: FrontPoint) -> dict[str, Any]:
    """A front point as the JSON line gives it (``rung``; ``ort_latency_ms`` where measured; ``miou_std``,
    ``seeds``... once confirmed)."""
    d = {"trial": p.trial, "label": p.label, "miou": round(p.miou, 3), "params": p.params, "conv_macs": p.conv_macs,
         "rung": p.rung}
    if p.ort_latency_ms is not None:
        d["ort_latency_ms"] = round(p.ort_latency_ms, 3)
    if p.seeds:
        d |= {"miou_std": round(p.miou_std, 3), "seeds": list(p.seeds), "miou_seeds": [round(v, 3) for v in
                                                                                         p.miou_seeds],
              "within_noise": p.within_noise}
    return d


def export_front(trials: Sequence[FrozenTrial], front: Sequence[FrontPoint], folder: Path) -> list[Path]:
    """Write each Pareto-optimal genotype as YAML (``nas-train model=<file>`` accepts it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in front:
        g: Genotype = genotype_from_dict(json.loads(trials[p.trial].user_attrs["genotype"]))
        paths.append(g.save(folder / f"trial{p.trial:04d}-{g.archid()}.yaml"))
    return paths
