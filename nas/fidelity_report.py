"""How well does a cheap fidelity rank architectures like the top rung? Statistics, tables, plots.

Input: finished cells, each ``{"arch": int, "rung": str, "seed": int, "value": float,
"cpu_s": float}`` (``value`` is the validation mIoU x100 of a trained rung, or a proxy's
score). Output, for every rung against the top rung (the last trained rung):

* ``seed_std``: seed noise, the mean over architectures of the standard deviation across
  seeds (ddof=1), in the rung's own unit (mIoU points for trained rungs);
  ``noise_to_signal``: ``seed_std`` over the standard deviation of the architectures' means
  (unitless; near or above 1, the rung cannot tell these architectures apart);
* ``kendall_tau`` / ``spearman_rho`` of the rung's per-architecture mean against the top
  rung's, each with a paired bootstrap 95% interval over architectures
  (``scipy.stats.bootstrap``, percentile method); ``outside_noise`` says whether the interval
  excludes 0;
* ``seed_tau``: Kendall tau between two seeds' rankings at the same rung (mean over seed
  pairs) -- at the top rung this is the ceiling any cheaper rung can reach;
* ``top_quarter_overlap``: |top quarter at the rung ∩ top quarter at the top rung| / quarter;
* ``seconds_per_arch``: mean cost of one architecture at one seed, in ``seconds_unit``
  (CPU-seconds of the training process on CPU).

No torch import: this module only reads numbers (``nas-fidelity report_only=true``).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["rank_agreement", "top_overlap", "rung_rows", "recommend_rung", "write_fidelity_results"]


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    with warnings.catch_warnings():  # a bootstrap resample with one distinct value: NaN, handled by the caller
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(x, y).statistic)


def _rho(x: Sequence[float], y: Sequence[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def rank_agreement(x: Sequence[float], y: Sequence[float], *, n_resamples: int = 2000, seed: int = 0,
                   ) -> dict[str, float | None]:
    """Kendall tau-b and Spearman rho of ``x`` against ``y`` with paired bootstrap 95% intervals.

    Args:
        x, y: one value per architecture, same order (>= 3 architectures for an interval).

    Returns:
        ``kendall_tau``, ``kendall_tau_lo``, ``kendall_tau_hi``, ``spearman_rho``,
        ``spearman_rho_lo``, ``spearman_rho_hi`` (None where undefined: fewer than 2 points,
        or a constant ranking).

    Raises:
        ValueError: ``x`` and ``y`` of different lengths.

    Example:
        >>> r = rank_agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], n_resamples=200)
        >>> round(r["kendall_tau"], 3), round(r["spearman_rho"], 3)
        (0.8, 0.9)
    """
    if len(x) != len(y):
        raise ValueError(f"rank_agreement: {len(x)} values against {len(y)}")
    out: dict[str, float | None] = {k: None for k in ("kendall_tau", "kendall_tau_lo", "kendall_tau_hi",
                                                      "spearman_rho", "spearman_rho_lo", "spearman_rho_hi")}
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    out["kendall_tau"], out["spearman_rho"] = _tau(x, y), _rho(x, y)
    if len(x) < 3:
        return out
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    for key, fn in (("kendall_tau", _tau), ("spearman_rho", _rho)):

        def stat(a: np.ndarray, b: np.ndarray, fn=fn) -> float:
            v = fn(a, b)
            return 0.0 if math.isnan(v) else v  # a resample with a constant side carries no ranking

        ci = stats.bootstrap((xa, ya), stat, paired=True, vectorized=False, n_resamples=n_resamples,
                             method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
        out[f"{key}_lo"], out[f"{key}_hi"] = float(ci.low), float(ci.high)
    return out


def top_overlap(x: Sequence[float], y: Sequence[float], fraction: float = 0.25) -> float | None:
    """|top ``fraction`` by ``x`` ∩ top ``fraction`` by ``y``| / k, k = max(1, round(fraction * n)).

    Example:
        >>> top_overlap([8, 7, 6, 5, 4, 3, 2, 1], [7, 8, 1, 2, 3, 4, 5, 6])
        1.0
    """
    n = len(x)
    if n == 0 or n != len(y):
        return None
    k = max(1, round(fraction * n))
    tx = set(np.argsort(-np.asarray(x, dtype=float), kind="stable")[:k].tolist())
    ty = set(np.argsort(-np.asarray(y, dtype=float), kind="stable")[:k].tolist())
    return len(tx & ty) / k


def _seed_tau(by_arch: Mapping[int, Mapping[int, float]], archs: Sequence[int]) -> float | None:
    seeds = sorted({s for a in archs for s in by_arch[a]})
    taus = []
    for s0, s1 in combinations(seeds, 2):
        common = [a for a in archs if s0 in by_arch[a] and s1 in by_arch[a]]
        if len(common) >= 3:
            t = _tau([by_arch[a][s0] for a in common], [by_arch[a][s1] for a in common])
            if not math.isnan(t):
                taus.append(t)
    return statistics.fmean(taus) if taus else None


def rung_rows(cells: Sequence[Mapping[str, Any]], rungs: Sequence[Mapping[str, Any]], top: str, *,
              n_resamples: int = 2000, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per rung (proxies included) against rung ``top``; plus the per-architecture means.

    Args:
        cells: finished cells (see the module docstring).
        rungs: ``{"name", "kind" ("proxy" | "baseline" | "trained"), "fidelity" (str),
            "seconds_unit"}`` in table order.
        top: the top rung's name.

    Returns:
        ``(rows, means)``: ``means[rung][arch]`` = mean value over seeds.
    """
    vals: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    cost: dict[str, list[float]] = defaultdict(list)
    for c in cells:
        v = c.get("value")
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        vals[c["rung"]][int(c["arch"])][int(c["seed"])] = float(v)
        if c.get("cpu_s") is not None:
            cost[c["rung"]].append(float(c["cpu_s"]))
    means = {r: {a: statistics.fmean(s.values()) for a, s in by.items()} for r, by in vals.items()}
    top_means = means.get(top, {})
    rows = []
    for r in rungs:
        name = r["name"]
        by, m = vals.get(name, {}), means.get(name, {})
        common = sorted(set(m) & set(top_means))
        x, y = [m[a] for a in common], [top_means[a] for a in common]
        stds = [statistics.stdev(s.values()) for s in by.values() if len(s) >= 2]
        spread = statistics.stdev(m.values()) if len(m) >= 2 else None
        agree = rank_agreement(x, y, n_resamples=n_resamples, seed=seed)
        lo = agree["kendall_tau_lo"]
        rows.append({
            "rung": name, "kind": r["kind"], "fidelity": r.get("fidelity", ""),
            "archs": len(m), "seeds": max((len(s) for s in by.values()), default=0),
            "seed_std": statistics.fmean(stds) if stds else None,
            "noise_to_signal": statistics.fmean(stds) / spread if stds and spread else None,
            **agree,
            "outside_noise": None if lo is None else bool(lo > 0),
            "seed_tau": _seed_tau(by, sorted(by)),
            "top_quarter_overlap": top_overlap(x, y),
            "seconds_per_arch": statistics.fmean(cost[name]) if cost.get(name) else (0.0 if r["kind"] == "baseline"
                                                                                     else None),
            "seconds_unit": r.get("seconds_unit", "cpu_s"),
        })
    return rows, means


def recommend_rung(rows: Sequence[Mapping[str, Any]], top: str, *, min_tau: float = 0.6,
                   max_seconds: float = 60.0) -> dict[str, Any]:
    """The cheapest trained rung (not the top one) with tau >= ``min_tau``, its interval's lower
    bound above 0 and at most ``max_seconds`` per architecture; else the best tau within budget.

    Returns:
        ``{"rung": name or None, "meets_target": bool, "reason": str}``.
    """
    cands = [r for r in rows if r["kind"] == "trained" and r["rung"] != top and r["kendall_tau"] is not None
             and r["seconds_per_arch"] is not None]
    ok = [r for r in cands if r["kendall_tau"] >= min_tau and (r["kendall_tau_lo"] or -1) > 0
          and r["seconds_per_arch"] <= max_seconds]
    if ok:
        best = min(ok, key=lambda r: r["seconds_per_arch"])
        return {"rung": best["rung"], "meets_target": True,
                "reason": f"cheapest rung with tau >= {min_tau}, lower bound > 0, <= {max_seconds:.0f} s/arch"}
    affordable = [r for r in cands if r["seconds_per_arch"] <= max_seconds] or cands
    if not affordable:
        return {"rung": None, "meets_target": False, "reason": "no trained rung below the top has results yet"}
    best = max(affordable, key=lambda r: r["kendall_tau"])
    return {"rung": best["rung"], "meets_target": False,
            "reason": f"no rung reaches tau >= {min_tau} with lower bound > 0 within {max_seconds:.0f} s/arch; "
                      f"best tau within budget: {best['kendall_tau']:.2f}"}


_COLUMNS = ["rung", "kind", "fidelity", "archs", "seeds", "seed_std", "noise_to_signal", "kendall_tau",
            "kendall_tau_lo", "kendall_tau_hi", "outside_noise", "spearman_rho", "spearman_rho_lo", "spearman_rho_hi",
            "seed_tau", "top_quarter_overlap", "seconds_per_arch", "seconds_unit"]


def _plot(means: Mapping[str, Mapping[int, float]], cells: Sequence[Mapping[str, Any]], rows: Sequence[Mapping],
          top: str, archs: Sequence[Mapping[str, Any]], png: Path, html: Path, title: str) -> None:
    """One scatter per rung: rung mean (x) against top-rung mean mIoU (y), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from nas._atomic import atomic_path

    per: dict[tuple[str, int], list[float]] = defaultdict(list)
    for c in cells:
        if c.get("value") is not None:
            per[(c["rung"], int(c["arch"]))].append(float(c["value"]))
    names = [r["rung"] for r in rows if r["rung"] != top and means.get(r["rung"])]
    if not names or not means.get(top):
        return
    label = {int(a["arch"]): a.get("label", str(a["arch"])) for a in archs}
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.6 * nrow), squeeze=False)
    pfig = make_subplots(rows=nrow, cols=ncol, subplot_titles=names)
    by_name = {r["rung"]: r for r in rows}
    for k, name in enumerate(names):
        ax = axes[k // ncol][k % ncol]
        common = sorted(set(means[name]) & set(means[top]))
        xs = [means[name][a] for a in common]
        ys = [means[top][a] for a in common]
        xe = [statistics.stdev(per[(name, a)]) if len(per[(name, a)]) > 1 else 0.0 for a in common]
        ye = [statistics.stdev(per[(top, a)]) if len(per[(top, a)]) > 1 else 0.0 for a in common]
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="o", ms=4, capsize=2)
        for a, x, y in zip(common, xs, ys):
            if label.get(a, "").startswith("sinet") or label.get(a, "") in ("extremec3net",):
                ax.annotate(label[a], (x, y), fontsize=7)
        r = by_name[name]
        tau = "n/a" if r["kendall_tau"] is None else f"{r['kendall_tau']:.2f}"
        ci = "" if r["kendall_tau_lo"] is None else f" [{r['kendall_tau_lo']:.2f}, {r['kendall_tau_hi']:.2f}]"
        ax.set_title(f"{name}: tau {tau}{ci}", fontsize=9)
        ax.set_xlabel(f"{name} ({'score' if r['kind'] != 'trained' else 'mIoU'})", fontsize=8)
        ax.set_ylabel(f"{top} mIoU", fontsize=8)
        ax.tick_params(labelsize=7)
        pfig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name=name,
            error_x={"type": "data", "array": xe}, error_y={"type": "data", "array": ye},
            text=[f"arch {a} ({label.get(a, '')})" for a in common]), row=k // ncol + 1, col=k % ncol + 1)
    for k in range(len(names), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    pfig.update_layout(title=title, showlegend=False, height=360 * nrow, width=380 * ncol)
    with atomic_path(html) as tmp:
        pfig.write_html(str(tmp), include_plotlyjs="cdn")


def write_fidelity_results(summary: Mapping[str, Any], cells: Sequence[Mapping[str, Any]],
                           means: Mapping[str, Mapping[int, float]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.{md,csv,tex,json}``, ``<name>-archs.csv`` and the scatter plots
    ``<name>.png`` / ``.html``; every file atomically. Returns the paths by kind.

    Raises:
        OSError: ``out_dir`` cannot be created or written (named).
    """
    from nas._atomic import atomic_write_text
    from nas.report import write_table

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"results_dir={out} cannot be created: {exc.strerror or exc}") from None
    name, top = summary["name"], summary["top_rung"]
    rows = summary["table"]
    notes = [
        f"{summary['n_archs']} architectures of the {summary['space']} search space (sampled with seed "
        f"{summary['sample_seed']} within budgets {summary['budgets']}, spread over the parameter range; "
        f"published networks included: {summary['include']}); seeds {summary['seeds']}.",
        f"Each rung is compared with the top rung '{top}' ({summary['top_fidelity']}): Kendall tau-b and Spearman "
        f"rho of the per-architecture mean over seeds, paired bootstrap 95% intervals over architectures "
        f"({summary['bootstrap']} resamples, percentile); outside_noise: the tau interval excludes 0.",
        "seed_std: mean over architectures of the std across seeds (mIoU points for trained rungs, the score's "
        "own unit for proxies; synflow in log units); noise_to_signal: seed_std / std of the architectures' means; "
        "seed_tau: Kendall tau between two seeds' rankings at that rung (at the top rung: "
        "the ceiling a cheaper rung can reach).",
        "mIoU: foreground IoU per image averaged over the EG1800 validation images of this copy (x100); "
        "checkpoints chosen on a held-out slice of the training list.",
        f"seconds_per_arch: one architecture at one seed, {summary['seconds_note']}.",
        f"Recommended search rung: {summary['recommended']['rung']} ({summary['recommended']['reason']}).",
    ]
    files = write_table([{k: r.get(k) for k in _COLUMNS} for r in rows], out / name, columns=_COLUMNS,
                        title=f"Fidelity study {name}: rank agreement with '{top}'", notes=notes,
                        float_digits={"seed_std": 3, "noise_to_signal": 2, "kendall_tau": 3, "kendall_tau_lo": 3,
                                      "kendall_tau_hi": 3,
                                      "spearman_rho": 3, "spearman_rho_lo": 3, "spearman_rho_hi": 3,
                                      "seed_tau": 3, "top_quarter_overlap": 2, "seconds_per_arch": 2})
    # per-architecture means, one column per rung
    arch_rows = []
    for a in summary["archs"]:
        row = {"arch": a["arch"], "label": a["label"], "archid": a["archid"], "params": a["params"],
               "conv_macs": a["conv_macs"]}
        for r in rows:
            row[r["rung"]] = means.get(r["rung"], {}).get(int(a["arch"]))
        arch_rows.append(row)
    arch_csv = out / f"{name}-archs.csv"
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(arch_rows[0]) if arch_rows else ["arch"])
    w.writeheader()
    w.writerows(arch_rows)
    atomic_write_text(arch_csv, buf.getvalue())
    files["archs_csv"] = arch_csv
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["arch", "rung", "seed", "value", "cpu_s"], extrasaction="ignore")
    w.writeheader()
    w.writerows(sorted(cells, key=lambda c: (c["rung"], c["arch"], c["seed"])))
    files["cells_csv"] = atomic_write_text(out / f"{name}-cells.csv", buf.getvalue())
    files["json"] = atomic_write_text(out / f"{name}.json", json.dumps(summary["json"], indent=2, default=str) + "\n")
    png, html = out / f"{name}.png", out / f"{name}.html"
    _plot(means, cells, rows, top, summary["archs"], png, html,
          f"{name}: rung vs top rung '{top}' (mean over seeds, bars: std)")
    if png.exists():
        files["png"], files["html"] = png, html
    return files
