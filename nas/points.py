"""Trials to points: the trained, complete trials of a study as Pareto points (no torch).

Used by the study worker (its front and plot), :mod:`nas.pareto` and the reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from nas.report import FrontPoint, pareto_front

__all__ = ["feasible", "front_of", "trained_points"]


def feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def trained_points(trials: Sequence[FrozenTrial], feasible_only: bool = False) -> list[FrontPoint]:
    """Every complete, trained trial as a point (labelled by its reference name, if enqueued as one)."""
    return [
        FrontPoint(label=t.user_attrs.get("reference") or f"trial {t.number}", miou=float(t.user_attrs["miou"]),
                   params=int(t.user_attrs["params"]), conv_macs=int(t.user_attrs["conv_macs"]), trial=t.number,
                   archid=t.user_attrs.get("archid"))
        for t in trials
        if t.state == TrialState.COMPLETE and "miou" in t.user_attrs and (feasible(t) or not feasible_only)
    ]


def front_of(trials: Sequence[FrozenTrial]) -> list[FrontPoint]:
    """The Pareto front (max mIoU, min params, min MACs) of trained, feasible, complete trials."""
    return pareto_front(trained_points(trials, feasible_only=True))
