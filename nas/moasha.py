"""Multi-objective asynchronous successive halving (MOASHA) over the fidelity rungs, and
seed-aware fronts. Pure functions of trial records: no torch, no storage access.

Sources:
    R. Schmucker, M. Donini, M. B. Zafar, D. Salinas, C. Archambeau, "Multi-objective
    Asynchronous Successive Halving", arXiv:2106.12639, 2021 (the promotion rule);
    L. Li et al., "A System for Massively Parallel Hyperparameter Tuning" (ASHA), MLSys 2020
    (asynchronous promotions); K. Deb et al., "A fast and elitist multiobjective genetic
    algorithm: NSGA-II", IEEE TEVC 2002 (non-dominated sorting, crowding distance);
    B. L. Welch, "The generalization of Student's problem when several different population
    variances are involved", Biometrika 1947 (the noise test between front neighbours).

The promotion rule (:func:`next_promotion`). Rungs are numbered 0 (cheapest) to R-1 (top).
At rung k, n_k candidates have a result. Their objectives (mIoU at rung k, maximised;
parameters and conv MACs, minimised) are sorted into non-dominated fronts; inside a front,
larger crowding distance ranks first; remaining ties go to the earlier candidate. The first
``n_k // eta`` candidates of that order are the rung's top 1/eta; those not yet promoted are
promotable, best first. A free worker looks for a promotion from rung R-2 down to rung 0
and only starts a new candidate when there is none (ASHA's asynchronous rule: no waiting
for a rung to fill).

Example (the hand-computed schedule of ``tests/test_moasha.py`` in miniature):
    >>> results = {0: (80.0, 50_000, 30e6), 1: (81.0, 60_000, 40e6), 2: (79.0, 70_000, 50e6)}
    >>> promotable(results, promoted=set(), eta=3)      # 3 // 3 = 1 slot; 2 is dominated
    [0]
    >>> promotable(results, promoted={0}, eta=3)
    []
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["nondominated_ranks", "crowding_distance", "rank_order", "promotable", "next_promotion", "Candidate",
           "candidates_from_records", "schedule_promotion", "next_confirmation", "welch_interval",
           "mark_within_noise"]

Objectives = tuple[float, ...]  # (mIoU x100, cost, ...): by default (mIoU, parameters, conv MACs)


def _losses(values: Sequence[Objectives]) -> np.ndarray:
    """(N, M) minimisation objectives (-mIoU, cost, ...)."""
    rows = [(-float(v[0]), *map(float, v[1:])) for v in values]
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def nondominated_ranks(losses: np.ndarray) -> np.ndarray:
    """Front index of each row of ``losses`` (N, M), all objectives minimised: 0 for the
    non-dominated rows, 1 for those dominated only by rank-0 rows, and so on (NSGA-II).

    Example:
        >>> nondominated_ranks(np.array([[1, 1], [2, 2], [0, 3], [3, 3]])).tolist()
        [0, 1, 0, 2]
    """
    y = np.asarray(losses, dtype=np.float64)
    n = len(y)
    if n == 0:
        return np.zeros(0, dtype=int)
    le = (y[:, None, :] <= y[None, :, :]).all(-1)
    lt = (y[:, None, :] < y[None, :, :]).any(-1)
    dom = le & lt                                   # dom[i, j]: i dominates j
    ranks = np.full(n, -1, dtype=int)
    left = np.ones(n, dtype=bool)
    r = 0
    while left.any():
        current = left & ~(dom[left][:, :].any(0))   # not dominated by any remaining row
        ranks[current] = r
        left &= ~current
        r += 1
    return ranks


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of ``losses`` (N, M) within that set: the sum over
    objectives of the normalised gap between a row's two neighbours; ``inf`` for the extremes
    (and for every row when N <= 2). Objectives with zero range add nothing.

    Example:
        >>> crowding_distance(np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])).tolist()
        [inf, 2.0, inf]
    """
    y = np.asarray(losses, dtype=np.float64)
    n, m = y.shape if y.ndim == 2 else (len(y), 0)
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(y[:, j], kind="stable")
        lo, hi = y[order[0], j], y[order[-1], j]
        d[order[0]] = d[order[-1]] = np.inf
        if hi == lo:
            continue
        gaps = (y[order[2:], j] - y[order[:-2], j]) / (hi - lo)
        d[order[1:-1]] += gaps
    return d


def rank_order(values: Sequence[Objectives]) -> list[int]:
    """Positions of ``values`` best first: by non-dominated front, then by crowding distance
    within the front (larger first), then by position (earlier first)."""
    y = _losses(values)
    ranks = nondominated_ranks(y)
    crowd = np.zeros(len(y))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(y[idx])
    return sorted(range(len(y)), key=lambda i: (ranks[i], -crowd[i], i))


def promotable(results: Mapping[int, Objectives], promoted: Collection[int], eta: int) -> list[int]:
    """Candidates of one rung in its top ``len(results) // eta`` (see the module docstring)
    that are not in ``promoted``, best first.

    Args:
        results: candidate id -> (mIoU at this rung, parameters, conv MACs).
        promoted: ids already promoted (or given up on) from this rung.
        eta: reduction factor (>= 2).

    Raises:
        ValueError: ``eta`` < 2.
    """
    if eta < 2:
        raise ValueError(f"study.eta={eta!r}; allowed: an integer >= 2")
    ids = list(results)
    k = len(ids) // eta
    if k == 0:
        return []
    order = rank_order([results[i] for i in ids])
    return [ids[i] for i in order[:k] if ids[i] not in promoted]


def next_promotion(rung_results: Sequence[Mapping[int, Objectives]], promoted: Sequence[Collection[int]],
                   eta: int) -> tuple[int, int] | None:
    """The next promotion ``(candidate, to_rung)``, looked for from the second-highest rung
    down, or None. ``rung_results[k]`` and ``promoted[k]`` are rung k's results and the ids
    already promoted from rung k (to rung k + 1)."""
    for k in range(len(rung_results) - 2, -1, -1):
        ok = promotable(rung_results[k], promoted[k], eta)
        if ok:
            return ok[0], k + 1
    return None


@dataclass
class Candidate:
    """One architecture of a study: its costs and every result it has.

    Attributes:
        number: the main study's trial number.
        params / conv_macs: counted at the study's cost input size.
        costs: the study's minimised objectives in its order (``study.objectives[1:]``, e.g. with
            the measured ``ort_latency_ms``); None: ``(params, conv_macs)``.
        results: ``{(rung_index, seed): mIoU}`` of finished trainings.
        active: ``{(rung_index, seed)}`` being trained now (RUNNING or WAITING).
        failures: ``{(rung_index, seed): n}`` failed attempts.
    """
    number: int
    params: int
    conv_macs: int
    results: dict[tuple[int, int], float] = field(default_factory=dict)
    active: set[tuple[int, int]] = field(default_factory=set)
    failures: dict[tuple[int, int], int] = field(default_factory=dict)
    costs: tuple[float, ...] | None = None

    def objective_costs(self) -> tuple[float, ...]:
        """The costs promotions rank by (:attr:`costs`, else parameters and conv MACs)."""
        return self.costs if self.costs is not None else (self.params, self.conv_macs)

    def top_rung(self, seed: int) -> int | None:
        """The highest rung with a result at ``seed``, or None."""
        ks = [k for (k, s) in self.results if s == seed]
        return max(ks) if ks else None

    def seeds_at(self, rung: int) -> dict[int, float]:
        """``{seed: mIoU}`` at ``rung``."""
        return {s: v for (k, s), v in sorted(self.results.items()) if k == rung}

    def settled(self, key: tuple[int, int], max_retry: int) -> bool:
        """Done, running, or failed more than ``max_retry`` times: not to be started again."""
        return key in self.results or key in self.active or self.failures.get(key, 0) > max_retry


def candidates_from_records(main: Sequence[Mapping], ledger: Sequence[Mapping], seed: int) -> dict[int, Candidate]:
    """Candidates from plain records (the study module turns Optuna trials into these).

    Args:
        main: one record per trained candidate: ``number``, ``params``, ``conv_macs``,
            optional ``costs`` (:attr:`Candidate.costs`), ``state`` (COMPLETE, RUNNING, WAITING,
            FAIL, ...), ``miou`` when COMPLETE (its rung-0 result at ``seed``).
        ledger: one record per training at a higher rung or a further seed: ``candidate``,
            ``rung`` (index), ``seed``, ``state``, ``miou`` when COMPLETE.
        seed: the study's base training seed.
    """
    out: dict[int, Candidate] = {}
    for r in main:
        costs = tuple(map(float, r["costs"])) if r.get("costs") is not None else None
        c = out.setdefault(r["number"], Candidate(r["number"], int(r["params"]), int(r["conv_macs"]), costs=costs))
        _add(c, (0, seed), r)
    for r in ledger:
        c = out.get(r["candidate"])
        if c is not None:
            _add(c, (int(r["rung"]), int(r["seed"])), r)
    return out


def _add(c: Candidate, key: tuple[int, int], r: Mapping) -> None:
    if r["state"] == "COMPLETE" and r.get("miou") is not None:
        c.results[key] = float(r["miou"])
    elif r["state"] in ("RUNNING", "WAITING"):
        c.active.add(key)
    elif r["state"] == "FAIL":
        c.failures[key] = c.failures.get(key, 0) + 1


def schedule_promotion(cands: Mapping[int, Candidate], n_rungs: int, seed: int, eta: int,
                       max_retry: int) -> tuple[int, int] | None:
    """The next promotion ``(candidate number, to_rung)`` of a study's candidates, or None.

    Rung k's results are the candidates' mIoU at ``(k, seed)``; a candidate counts as
    promoted from rung k once its ``(k + 1, seed)`` training is settled (done, running, or
    failed more than ``max_retry`` times), so a failed promotion is tried again.
    """
    results = [{c.number: (c.results[(k, seed)], *c.objective_costs()) for c in cands.values()
                if (k, seed) in c.results} for k in range(n_rungs)]
    promoted = [{c.number for c in cands.values() if c.settled((k + 1, seed), max_retry)} for k in range(n_rungs)]
    return next_promotion(results, promoted, eta)


def next_confirmation(members: Sequence[int], cands: Mapping[int, Candidate], rung_of: Mapping[int, int],
                      seeds: Sequence[int], max_retry: int) -> tuple[int, int, int] | None:
    """The next confirmation training ``(candidate, rung, seed)`` of the front ``members``
    (each at rung ``rung_of[member]``, every seed of ``seeds``), or None when all are settled."""
    for n in members:
        for s in seeds:
            if not cands[n].settled((rung_of[n], s), max_retry):
                return n, rung_of[n], s
    return None


def welch_interval(
    variant: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """Welch 95% interval for mean(``variant``) - mean(``baseline``) over seeds, or None where undefined.

    Method: Welch's unequal-variances t interval (B. L. Welch, "The generalization of
    'Student's' problem when several different population variances are involved",
    Biometrika 34, 1947), computed by
    ``scipy.stats.ttest_ind(variant, baseline, equal_var=False).confidence_interval(confidence)``:
    ``diff +/- t_{(1+confidence)/2, df} * sqrt(s_v^2/n_v + s_b^2/n_b)`` with the
    Welch-Satterthwaite ``df``. The seeds of the two cells are independent runs (not paired).

    Example:
        >>> lo, hi = welch_interval([83.1, 82.4, 82.9], [82.0, 81.5, 81.9])
        >>> round(lo, 3), round(hi, 3)
        (0.257, 1.743)

    Returns None (no interval) when either cell has fewer than 2 seeds, when both cells have
    zero variance (scipy would give a zero-width interval), or when a value is not finite.

    Raises:
        ValueError: ``confidence`` not strictly between 0 and 1.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    a, b = [float(x) for x in variant], [float(x) for x in baseline]
    if len(a) < 2 or len(b) < 2 or not all(math.isfinite(x) for x in a + b):
        return None
    if statistics.variance(a) == 0.0 and statistics.variance(b) == 0.0:
        return None
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # one cell of identical values: exact, but scipy warns of cancellation
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    lo, hi = float(ci.low), float(ci.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo, hi


def mark_within_noise(points: Sequence[Mapping], level: float = 0.95) -> list[bool | None]:
    """For a front sorted by parameters (fewest first), whether each point's mIoU advantage
    over its neighbour with fewer parameters is inside seed noise: True when the Welch
    interval of the difference includes 0, False when it excludes it, None when it is not
    defined (the first point, or fewer than 2 seeds on either side).

    Args:
        points: mappings with ``miou_seeds`` (the per-seed mIoU values).
    """
    out: list[bool | None] = [None]
    for prev, cur in zip(points, points[1:]):
        ci = welch_interval(cur["miou_seeds"], prev["miou_seeds"], level)
        out.append(None if ci is None else bool(ci[0] <= 0.0 <= ci[1]))
    return out[: len(points)]
