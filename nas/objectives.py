"""The objectives table: each objective of a search with its direction, counter, unit,
hypervolume reference value, whether it can be a hard budget and whether it is on the default front.

A Pareto study's objectives are ``study.objectives`` (default :data:`DEFAULT_OBJECTIVES`:
mIoU, parameters, conv MACs); ``ort_latency_ms`` may be added (measured before training).

One table, read by the study (Optuna directions and metric names), the budgets check
(:class:`nas.config.SearchSettings`, the fidelity study), the hypervolume reference point
(:func:`default_reference_point`, used by ``nas-search`` and ``nas-pareto``) and the reports.
No torch import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BUDGET_KEYS", "COUNTED_BUDGET_KEYS", "DEFAULT_OBJECTIVES", "OBJECTIVES", "Objective", "check_objectives",
           "default_reference_point", "directions", "objective_names", "told_values"]


@dataclass(frozen=True)
class Objective:
    """One objective.

    Attributes:
        name: the key in results, budgets and reference points.
        direction: ``maximize`` or ``minimize`` (Optuna's words).
        counter: what measures it (every count names its counter).
        unit: the unit of its values.
        reference: the default hypervolume reference value (worse than any point of interest).
        budget: whether ``study.budgets.<name>`` may bound it before training.
        front: whether it is an objective of the default Pareto front (and hypervolume); the others
            are measured and recorded, and optimised only when named in ``study.objectives``.
    """

    name: str
    direction: str
    counter: str
    unit: str
    reference: float
    budget: bool
    front: bool = True


OBJECTIVES: tuple[Objective, ...] = (
    Objective("miou", "maximize", "foreground IoU per image averaged over the validation list (nas.metrics)",
              "% (x100)", 50.0, budget=False),
    Objective("params", "minimize", "trainable parameters (nas.cost.genotype_cost)", "parameters", 200_000,
              budget=True),
    Objective("conv_macs", "minimize", "convolution MACs at cost_input_size, the papers' 'FLOPs': per nn.Conv2d, "
              "outputs x C_in/groups x kH x kW (nas.cost.genotype_cost)", "MACs", 300_000_000, budget=True),
    Objective("ort_latency_ms", "minimize", "median batch-1 ONNX Runtime CPU latency at cost_input_size, "
              "study.latency_threads threads (nas.export.ort_latency_ms); measured before training, only for "
              "candidates within the other budgets", "ms", 100.0, budget=True, front=False),
)
BUDGET_KEYS: tuple[str, ...] = tuple(o.name for o in OBJECTIVES if o.budget)
#: the front of a Pareto study unless ``study.objectives`` says otherwise.
DEFAULT_OBJECTIVES: tuple[str, ...] = tuple(o.name for o in OBJECTIVES if o.front)
#: budgets counted from the genotype's shapes alone (milliseconds, no export): what the fidelity study accepts.
COUNTED_BUDGET_KEYS: tuple[str, ...] = ("params", "conv_macs")


def check_objectives(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple after checking it is a front: ``miou`` first, then at least one
    cost, each a name of :data:`OBJECTIVES`, none twice.

    Raises:
        ValueError: naming the value and what is allowed.
    """
    names = tuple(names)
    known = [o.name for o in OBJECTIVES]
    bad = [n for n in names if n not in known]
    if bad or len(names) < 2 or names[0] != "miou" or len(set(names)) != len(names):
        raise ValueError(f"study.objectives={list(names)!r}; allowed: 'miou' first, then one or more of "
                         f"{known[1:]} (each once)")
    return names


def objective_names(mode: str = "pareto", objectives: Sequence[str] | None = None) -> list[str]:
    """The study's objective names: ``objectives`` (default :data:`DEFAULT_OBJECTIVES`) for
    ``pareto``, ``["miou"]`` for ``constrained``."""
    return list(check_objectives(objectives or DEFAULT_OBJECTIVES)) if mode == "pareto" else [OBJECTIVES[0].name]


def directions(mode: str = "pareto", objectives: Sequence[str] | None = None) -> list[str]:
    """Optuna directions of :func:`objective_names` (``mode``, ``objectives``)."""
    by_name = {o.name: o.direction for o in OBJECTIVES}
    return [by_name[n] for n in objective_names(mode, objectives)]


def default_reference_point() -> dict[str, float]:
    """``{name: reference}`` of every objective (the hypervolume reference of ``nas-search`` and
    ``nas-pareto``; a front uses the entries of its own objectives)."""
    return {o.name: o.reference for o in OBJECTIVES}


def told_values(mode: str, objectives: Sequence[str], miou: float, costs: Mapping[str, float],
                reference: Mapping[str, float]) -> float | list[float]:
    """The values told to Optuna: ``[miou, cost, ...]`` in ``objectives`` order (``pareto``; a cost
    not measured, for a candidate over another budget, takes its ``reference`` value), or ``miou``
    (``constrained``)."""
    if mode != "pareto":
        return miou
    return [miou, *(float(costs.get(n, reference[n])) for n in objectives[1:])]
