"""A search candidate's costs: counted (and, where a budget or objective needs it, measured)
before training and checked against the hard budgets; the further figures taken after training.

One job: genotype -> costs. The study worker (:mod:`nas.study`) records them; the objectives
table (:mod:`nas.objectives`) says which are budgets and which are on the front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.config import SearchSettings
from nas.cost import count_fvcore, genotype_cost, measure_latency
from search_spaces import Genotype, create_model

__all__ = ["CostCheck", "check_costs", "needs_latency", "ort_latency", "trained_costs"]


def needs_latency(s: SearchSettings) -> bool:
    """Whether the study measures ONNX Runtime latency (a budget or a front objective names it)."""
    return s.budgets.get("ort_latency_ms") is not None or "ort_latency_ms" in s.front_objectives


@dataclass(frozen=True)
class CostCheck:
    """A candidate's costs before training and its budget constraints.

    Attributes:
        costs: ``params`` (count), ``conv_macs`` (MACs at ``study.cost_input_size``) and, where
            measured, ``ort_latency_ms`` (ms).
        constraints: per budget, the excess over it (<= 0: within; Optuna's constraint value); an
            ``ort_latency_ms`` budget of a candidate over another budget is +1 (not measured).
    """

    costs: dict[str, float]
    constraints: dict[str, float]

    @property
    def feasible(self) -> bool:
        """Within every budget."""
        return all(v <= 0 for v in self.constraints.values())


def ort_latency(g: Genotype, input_size: tuple[int, int], threads: int, inputs: Any = None) -> float:
    """Median batch-1 ONNX Runtime CPU latency (ms) of ``g`` (weights initialised with seed 0) at
    ``input_size``, timed on ``inputs`` (N x 3 x H x W real images; None: a seeded standard-normal
    input) (:func:`nas.export.ort_latency_ms`)."""
    import torch

    from nas.export import ort_latency_ms

    with torch.random.fork_rng():  # seeded weights: PReLU's cost depends on the activations' signs
        torch.manual_seed(0)
        model = create_model(g)
    res = ort_latency_ms(model, input_size, threads=threads, warmup=3, repeats=10, inputs=inputs, sessions=3)
    return float(res["ort_latency_ms"])


def check_costs(g: Genotype, s: SearchSettings, timing_inputs: Any = None) -> CostCheck:
    """Count ``g``'s parameters and conv MACs (shapes only: milliseconds) and check them against
    ``s.budgets``; measure its ONNX Runtime latency (an export: seconds; on ``timing_inputs``, real
    images at ``s.cost_input_size``, when given) when an ``ort_latency_ms`` budget or objective needs
    it, and only if it is within the counted budgets.

    Raises:
        ValueError: ``g`` cannot be built at ``s.cost_input_size``.
    """
    cost = genotype_cost(g, s.cost_input_size)
    costs: dict[str, float] = {"params": cost.params, "conv_macs": cost.conv_macs}
    constraints = {k: float(v - s.budgets[k]) for k, v in costs.items() if s.budgets.get(k) is not None}
    ort_limit = s.budgets.get("ort_latency_ms")
    if needs_latency(s) and all(v <= 0 for v in constraints.values()):
        costs["ort_latency_ms"] = ort_latency(g, s.cost_input_size, s.latency_threads, timing_inputs)
    if ort_limit is not None:
        constraints["ort_latency_ms"] = costs["ort_latency_ms"] - ort_limit if "ort_latency_ms" in costs else 1.0
    return CostCheck(costs, constraints)


def trained_costs(g: Genotype, s: SearchSettings) -> dict[str, float]:
    """The figures taken after training when ``s.extra_costs``: ``fvcore_total`` (fvcore's MACs)
    and ``latency_ms`` (torch eager, batch 1, ``s.latency_threads`` threads); else ``{}``."""
    if not s.extra_costs:
        return {}
    model = create_model(g)
    latency, _ = measure_latency(model, s.cost_input_size, threads=s.latency_threads, warmup=2, repeats=5)
    return {"fvcore_total": count_fvcore(model, s.cost_input_size), "latency_ms": latency}
