"""Trials to points: the trained, complete trials of a study as Pareto points (no torch).

Used by the study worker (its front and plot), :mod:`nas.pareto` and the reports.

A multi-fidelity study keeps two Optuna studies in one storage: the main study ``<name>``
(one trial per candidate; its values are the candidate's first-rung result, which is what
the sampler learns from) and the ledger ``<name>.rungs`` (one trial per further training: a
promotion to a higher rung or a confirmation seed; user attributes ``candidate``, ``rung``,
``rung_name``, ``seed``, ``kind``; value the mIoU). :func:`rung_front` joins them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from optuna.trial import FrozenTrial, TrialState

from nas.moasha import Candidate, candidates_from_records, mark_within_noise
from nas.objectives import DEFAULT_OBJECTIVES
from nas.report import FrontPoint, pareto_front

__all__ = ["LEDGER_SUFFIX", "candidates", "confirm_front", "feasible", "front_of", "ledger_name", "rung_front",
           "stored_front", "stored_objectives", "study_front", "trained_points"]

LEDGER_SUFFIX = ".rungs"


def ledger_name(study_name: str) -> str:
    """The ledger study of ``study_name`` (its promotion and confirmation trainings)."""
    return study_name + LEDGER_SUFFIX


def feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def _latency(t: FrozenTrial) -> float | None:
    v = t.user_attrs.get("ort_latency_ms")
    return float(v) if v is not None else None


def trained_points(trials: Sequence[FrozenTrial], feasible_only: bool = False) -> list[FrontPoint]:
    """Every complete, trained trial as a point (labelled by its reference name, if enqueued as one)."""
    return [
        FrontPoint(label=t.user_attrs.get("reference") or f"trial {t.number}", miou=float(t.user_attrs["miou"]),
                   params=int(t.user_attrs["params"]), conv_macs=int(t.user_attrs["conv_macs"]), trial=t.number,
                   archid=t.user_attrs.get("archid"), rung=t.user_attrs.get("rung"), ort_latency_ms=_latency(t))
        for t in trials
        if t.state == TrialState.COMPLETE and "miou" in t.user_attrs and (feasible(t) or not feasible_only)
    ]


def front_of(trials: Sequence[FrozenTrial], objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[FrontPoint]:
    """The Pareto front (max mIoU, min each cost of ``objectives``) of trained, feasible, complete trials."""
    return pareto_front(trained_points(trials, feasible_only=True), objectives)


def candidates(main: Sequence[FrozenTrial], ledger: Sequence[FrozenTrial], seed: int,
               objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> dict[int, Candidate]:
    """The study's trained candidates (feasible main trials that are COMPLETE, RUNNING or WAITING with
    costs counted) with every rung result of the ledger; ``(0, seed)`` is the main trial's own result.
    Promotions rank them by mIoU and the costs of ``objectives``."""
    recs = [{"number": t.number, "params": t.user_attrs["params"], "conv_macs": t.user_attrs["conv_macs"],
             "costs": [t.user_attrs[n] for n in objectives[1:]], "state": t.state.name,
             "miou": t.user_attrs.get("miou")}
            for t in main if t.user_attrs.get("feasible") is True and t.state.name in ("COMPLETE", "RUNNING")]
    led = [{"candidate": t.user_attrs["candidate"], "rung": t.user_attrs["rung"], "seed": t.user_attrs["seed"],
            "state": t.state.name, "miou": t.value if t.state == TrialState.COMPLETE else None}
           for t in ledger if "candidate" in t.user_attrs]
    return candidates_from_records(recs, led, seed)


def rung_front(main: Sequence[FrozenTrial], ledger: Sequence[FrozenTrial], rung_names: Sequence[str],
               seed: int, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> tuple[list[FrontPoint], list[FrontPoint]]:
    """Every trained candidate at the highest rung it reached (at the base ``seed``), and their front
    under ``objectives``.

    Returns:
        ``(points, front)``; each point's ``rung`` names its rung, ``miou`` is its result there.
    """
    cands = candidates(main, ledger, seed, objectives)
    by_number = {t.number: t for t in main}
    points = []
    for n, c in sorted(cands.items()):
        top = c.top_rung(seed)
        if top is None or top >= len(rung_names):
            continue
        t = by_number[n]
        points.append(FrontPoint(label=t.user_attrs.get("reference") or f"trial {n}", miou=c.results[(top, seed)],
                                 params=c.params, conv_macs=c.conv_macs, trial=n, archid=t.user_attrs.get("archid"),
                                 rung=rung_names[top], ort_latency_ms=_latency(t)))
    return points, pareto_front(points, objectives)


def confirm_front(front: Sequence[FrontPoint], cands: dict[int, Candidate], rung_names: Sequence[str],
                  rung_of: dict[int, int], objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[FrontPoint]:
    """The front re-scored on every seed trained at each member's confirmation rung.

    Members with at least 2 seeds there get ``miou`` = the mean, ``miou_std`` (sample std),
    ``seeds`` and ``miou_seeds``; the front is recomputed on those means (a member whose
    advantage did not hold is dropped) and each point is marked ``within_noise`` against its
    neighbour with fewer parameters (Welch 95%, :func:`nas.moasha.mark_within_noise`).
    """
    out = []
    for p in front:
        by_seed = cands[p.trial].seeds_at(rung_of[p.trial]) if p.trial in cands else {}
        if len(by_seed) >= 2:
            vals = list(by_seed.values())
            p = replace(p, miou=statistics.fmean(vals), miou_std=statistics.stdev(vals), seeds=tuple(by_seed),
                        miou_seeds=tuple(vals), rung=rung_names[rung_of[p.trial]])
        out.append(p)
    out = pareto_front(out, objectives)
    marks = mark_within_noise([{"miou_seeds": p.miou_seeds or ()} for p in out])
    return [replace(p, within_noise=m) for p, m in zip(out, marks)]


def study_front(main: Sequence[FrozenTrial], ledger: Sequence[FrozenTrial], rung_names: Sequence[str], n_sched: int,
                seed: int, confirm_index: int | None = None,
                objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> tuple[list[FrontPoint], list[FrontPoint]]:
    """A study's points (each candidate at its highest rung) and its front, re-scored on the
    confirmation seeds where there are any (:func:`confirm_front`).

    Args:
        rung_names: every rung the study trains at (the scheduled rungs first, then the confirmation
            rung when it is another one); ``n_sched``: how many of them candidates are promoted through.
        seed: the study's base training seed; ``confirm_index``: the confirmation rung (None: each
            member's own rung). ``objectives``: the front's (``study.objectives``).
    """
    points, front = rung_front(main, ledger, rung_names[:n_sched], seed, objectives)
    cands = candidates(main, ledger, seed, objectives)
    rung_of = {p.trial: confirm_index if confirm_index is not None else cands[p.trial].top_rung(seed) for p in front}
    return points, confirm_front(front, cands, rung_names, rung_of, objectives)


def stored_objectives(study) -> tuple[str, ...]:
    """A stored Pareto study's front objectives: its metric names (set by the study worker), else
    the default ones (older studies)."""
    names = study.metric_names
    return tuple(names) if names and len(names) >= 2 else DEFAULT_OBJECTIVES


def stored_front(study, ledger=None) -> tuple[list[FrontPoint], list[FrontPoint]]:
    """:func:`study_front` of a stored ``optuna.Study`` (and its ledger study, or None), from the
    ``schedule`` user attribute the study worker records; studies without one (older ones) give
    their single-rung front, as before."""
    main = study.get_trials(deepcopy=False)
    objectives = stored_objectives(study)
    sched = study.user_attrs.get("schedule")
    if not sched:
        return trained_points(main), front_of(main, objectives)
    led = ledger.get_trials(deepcopy=False) if ledger is not None else []
    return study_front(main, led, sched["rung_names"], sched["n_sched"], sched["seed"], sched["confirm_index"],
                       objectives)
