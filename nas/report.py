"""Pareto fronts, hypervolumes, figures and tables for the search and ablation reports.

Objectives (:mod:`nas.objectives`; the default front has the first three):

* ``miou``      -- paper mIoU x100 (see :mod:`nas.metrics`), **maximised**;
* ``params``    -- trainable parameters, **minimised**;
* ``conv_macs`` -- multiply-accumulates of the convolutions only (the papers' "FLOPs",
  see :mod:`nas.cost`), **minimised**;
* ``ort_latency_ms`` -- measured ONNX Runtime CPU latency (ms), **minimised**, on the front
  only when a study names it in ``study.objectives``.

Everything here is a pure function of the points given (no MLflow, no Optuna study); the only
third-party calls are numpy, matplotlib (Agg), plotly and -- for the hypervolume -- Optuna's
exact WFG/3-D routine, with an exact fallback of our own.
"""
from __future__ import annotations

import csv
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas._atomic import atomic_path
from nas.objectives import DEFAULT_OBJECTIVES

__all__ = ["FrontPoint", "as_front_point", "pareto_front", "hypervolume", "plot_fronts",
           "write_front_csv", "hypervolume_table", "write_table", "FRONT_CSV_COLUMNS"]

FRONT_CSV_COLUMNS = ("label", "trial", "archid", "miou", "params", "conv_macs", "rung", "miou_std", "seeds",
                     "miou_seeds", "within_noise", "ort_latency_ms")


@dataclass(frozen=True)
class FrontPoint:
    """One evaluated architecture: ``miou`` (x100, higher is better), ``params`` and
    ``conv_macs`` (lower is better); ``trial`` / ``archid`` identify it where known.

    Multi-fidelity and seed-aware fields (None where not known): ``rung`` names the fidelity
    rung ``miou`` was measured at; once confirmed over seeds, ``miou`` is the mean over
    ``seeds`` (``miou_seeds`` the per-seed values, ``miou_std`` their sample standard
    deviation) and ``within_noise`` says whether the advantage over the front neighbour with
    fewer parameters is inside seed noise (:func:`nas.moasha.mark_within_noise`).
    ``ort_latency_ms``: measured ONNX Runtime latency (ms) where the study measured it."""
    label: str
    miou: float
    params: int
    conv_macs: int
    trial: int | None = None
    archid: str | None = None
    rung: str | None = None
    miou_std: float | None = None
    seeds: tuple[int, ...] | None = None
    miou_seeds: tuple[float, ...] | None = None
    within_noise: bool | None = None
    ort_latency_ms: float | None = None


def as_front_point(p: FrontPoint | Mapping[str, Any]) -> FrontPoint:
    """Return ``p`` as a :class:`FrontPoint` (mappings with the same keys are accepted; extra
    keys are ignored). Raises ``KeyError`` if a mapping lacks label/miou/params/conv_macs."""
    if isinstance(p, FrontPoint):
        return p
    opt = {k: p.get(k) for k in ("rung", "miou_std", "within_noise")}
    if p.get("ort_latency_ms") not in (None, ""):
        opt["ort_latency_ms"] = float(p["ort_latency_ms"])
    for k in ("seeds", "miou_seeds"):
        opt[k] = tuple(p[k]) if p.get(k) is not None else None
    return FrontPoint(label=str(p["label"]), miou=float(p["miou"]), params=int(p["params"]),
                      conv_macs=int(p["conv_macs"]), trial=p.get("trial"), archid=p.get("archid"), **opt)


def _losses(points: Sequence[FrontPoint], objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> np.ndarray:
    """(N, M) float array of minimisation objectives ``(-miou, cost_1, ...)`` for ``objectives``
    (``miou`` first).

    Raises:
        ValueError: a point without a value for one of ``objectives`` (e.g. no measured latency).
    """
    rows = []
    for p in points:
        costs = [getattr(p, n) for n in objectives[1:]]
        if any(c is None for c in costs):
            raise ValueError(f"point {p.label!r} has no value for objective(s) "
                             f"{[n for n, c in zip(objectives[1:], costs) if c is None]}")
        rows.append((-p.miou, *costs))
    return np.array(rows, dtype=np.float64).reshape(-1, len(objectives))


def pareto_front(points: Sequence[FrontPoint | Mapping[str, Any]],
                 objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[FrontPoint]:
    """Non-dominated subset under max ``miou`` and min of each further name of ``objectives``
    (default: ``params``, ``conv_macs``).

    A point is dropped if another is at least as good in all objectives and strictly
    better in one. Points equal in all objectives are kept once (the first given).
    Returns the front sorted by ``params`` ascending (then ``conv_macs`` ascending, ``miou``
    descending); an empty input gives ``[]``.

    Raises:
        ValueError: a point without a value for one of ``objectives``.
    """
    pts = [as_front_point(p) for p in points]
    if not pts:
        return []
    y = _losses(pts, objectives)
    _, first = np.unique(y, axis=0, return_index=True)          # one of each duplicate
    keep = np.sort(first)
    u = y[keep]
    le = (u[:, None, :] <= u[None, :, :]).all(-1)                 # le[j, i]: u_j <= u_i everywhere
    lt = (u[:, None, :] < u[None, :, :]).any(-1)
    dominated = (le & lt).any(0)
    front = [pts[i] for i in keep[~dominated]]
    return sorted(front, key=lambda p: (p.params, p.conv_macs, -p.miou))


def _hv2d(yz: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume (minimisation) of points ``yz`` (M, 2) all strictly below ``ref``."""
    area, best_z = 0.0, ref[1]
    for y, z in yz[np.lexsort((yz[:, 1], yz[:, 0]))]:
        if z < best_z:
            area += (ref[0] - y) * (best_z - z)
            best_z = z
    return area


def _hv3d_slicing(losses: np.ndarray, ref: np.ndarray) -> float:
    """Exact 3-D hypervolume (minimisation) by slicing along axis 0: O(n^2 log n)."""
    if len(losses) == 0:
        return 0.0
    s = losses[np.argsort(losses[:, 0], kind="stable")]
    xs = np.append(s[:, 0], ref[0])
    vol = 0.0
    for i in range(len(s)):
        depth = xs[i + 1] - xs[i]
        if depth > 0:
            vol += depth * _hv2d(s[: i + 1, 1:], ref[1:])
    return vol


def hypervolume(points: Sequence[FrontPoint | Mapping[str, Any]],
                reference: Sequence[float], *, normalized: bool = True,
                objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> float:
    """Hypervolume dominated by ``points`` w.r.t. ``reference`` (one value per name of
    ``objectives``; default ``(miou_ref, params_ref, macs_ref)``).

    The volume of the union over points p of the boxes
    ``[miou_ref, miou_p] x [cost_p, cost_ref] x ...`` (mIoU up is better, every cost down is
    better). Points not strictly better than the reference in every objective contribute
    nothing. Dominated points may be included (no effect).

    Args:
        points: FrontPoints (or mappings with the same keys).
        reference: worst acceptable values, in the order of ``objectives`` (mIoU x100, then
            each cost); the costs' references must be > 0 when ``normalized``.
        normalized: divide the mIoU axis by 100 and each cost axis by its reference, i.e. return
            ``raw / (100 * prod(cost_refs))``; for ``0 <= miou_ref`` and mIoU <= 100 the result
            lies in [0, 1].
        objectives: ``miou`` first, then the costs (:mod:`nas.objectives`).

    Returns:
        The hypervolume, in mIoU-points x the costs' units when not ``normalized``.

    Raises:
        ValueError: if ``reference`` does not have one finite entry per objective, or
            ``normalized`` with a non-positive cost reference, or a point lacks an objective.

    Uses ``optuna._hypervolume.compute_hypervolume`` (exact: Optuna's 3-D algorithm, WFG beyond)
    and falls back to an exact slicing algorithm (3 objectives) if that private API is missing.
    """
    m = len(objectives)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (m,) or not np.isfinite(ref).all():
        raise ValueError(f"reference must be {m} finite numbers ({', '.join(objectives)}), got {reference!r}")
    if normalized and (ref[1:] <= 0).any():
        raise ValueError(f"normalized hypervolume needs every cost reference > 0 ({', '.join(objectives[1:])}), "
                         f"got {reference!r}")
    y = _losses([as_front_point(p) for p in points], objectives)
    r = np.concatenate([[-ref[0]], ref[1:]])
    y = y[(y < r).all(axis=1)]
    if len(y) == 0:
        return 0.0
    if normalized:                                   # scale before computing: better conditioned
        scale = np.concatenate([[100.0], ref[1:]])
        y, r = y / scale, r / scale
    try:
        from optuna._hypervolume import compute_hypervolume
        return float(compute_hypervolume(y, r))
    except (ImportError, TypeError, AttributeError):  # private API moved: exact fallback
        if m != 3:
            raise
        return float(_hv3d_slicing(y, r))


def _step_xy(pts: Sequence[FrontPoint], key: str) -> tuple[list[float], list[float]]:
    """Staircase (x, mIoU) of the 2-D front of ``pts`` projected on (``key``, miou)."""
    best, xs, ys = -np.inf, [], []
    for p in sorted(pts, key=lambda p: (getattr(p, key), -p.miou)):
        if p.miou > best:
            if xs:                                   # horizontal run, then vertical rise
                xs.append(getattr(p, key))
                ys.append(best)
            xs.append(getattr(p, key))
            ys.append(p.miou)
            best = p.miou
    return xs, ys


def _hover(p: FrontPoint, study: str = "") -> str:
    head = f"<b>{p.label}</b>" + (f" ({study})" if study else "")
    return (f"{head}<br>trial: {p.trial if p.trial is not None else '–'}"
            f"<br>archid: {p.archid or '–'}<br>mIoU: {p.miou:.2f}"
            f"{f' +/- {p.miou_std:.2f} ({len(p.seeds or ())} seeds)' if p.miou_std is not None else ''}"
            f"{f'<br>rung: {p.rung}' if p.rung else ''}"
            f"<br>params: {p.params:,}<br>conv MACs: {p.conv_macs:,}"
            f"{f'<br>ONNX Runtime: {p.ort_latency_ms:.2f} ms' if p.ort_latency_ms is not None else ''}")


_PANELS = (("params", "parameters"), ("conv_macs", "conv MACs (papers' FLOPs)"))
_LATENCY_PANEL = ("ort_latency_ms", "ONNX Runtime CPU latency (ms)")


def _with(points: Sequence[FrontPoint], key: str) -> list[FrontPoint]:
    """The points with a value for ``key`` (a latency panel skips points whose latency was not measured)."""
    return [p for p in points if getattr(p, key) is not None]


def plot_fronts(fronts: Mapping[str, Sequence[FrontPoint]], png_path: str | Path,
                html_path: str | Path, *, references: Sequence[FrontPoint] = (),
                all_points: Mapping[str, Sequence[FrontPoint]] | None = None,
                title: str = "") -> tuple[Path, Path]:
    """Two panels, mIoU (x100, up is better) vs parameters and vs conv MACs (log x, left is
    better) -- and a third vs ONNX Runtime latency when every front point has one -- as a PNG
    (matplotlib, Agg) and a self-contained interactive HTML (plotly, plotly.js embedded so it
    opens offline).

    Each study's front (``fronts[name]``) is drawn as markers in its own colour joined by the
    staircase of its 2-D front in that panel's projection (a 3-D front point may lie under the
    staircase in one panel); ``all_points[name]`` as faint dots of the same colour;
    ``references`` (hand-designed nets) as large labelled stars. Values must be > 0 on the
    x axes. Parent folders are created. Returns ``(png_path, html_path)``.
    """
    import matplotlib
    import plotly.graph_objects as go
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, global backend untouched
    from plotly.subplots import make_subplots

    png_path, html_path = Path(png_path), Path(html_path)
    fronts = {k: [as_front_point(p) for p in v] for k, v in fronts.items()}
    all_points = {k: [as_front_point(p) for p in v] for k, v in (all_points or {}).items()}
    refs = [as_front_point(p) for p in references]
    names = list(dict.fromkeys([*fronts, *all_points]))
    palette = matplotlib.colormaps["tab10"].colors
    colour = {n: to_hex(palette[i % len(palette)]) for i, n in enumerate(names)}

    front_pts = [p for v in fronts.values() for p in v]
    panels = _PANELS + ((_LATENCY_PANEL,) if front_pts and all(p.ort_latency_ms is not None for p in front_pts)
                        else ())
    fig = Figure(figsize=(6 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), sharey=True)
    pfig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=[t for _, t in panels])
    for col, (ax, (key, xlabel)) in enumerate(zip(axes, panels), start=1):
        fronts_k = {k: _with(v, key) for k, v in fronts.items()}  # the points this panel can place
        all_k = {k: _with(v, key) for k, v in all_points.items()}
        refs_k = _with(refs, key)
        for n, pts in all_k.items():
            if pts:
                ax.scatter([getattr(p, key) for p in pts], [p.miou for p in pts], s=10,
                           color=colour[n], alpha=0.3, linewidths=0)
                pfig.add_trace(go.Scatter(
                    x=[getattr(p, key) for p in pts], y=[p.miou for p in pts], mode="markers",
                    name=f"{n} (all)", legendgroup=f"{n} (all)", showlegend=col == 1,
                    marker=dict(size=5, color=colour[n], opacity=0.25),
                    hovertext=[_hover(p, n) for p in pts], hoverinfo="text"), row=1, col=col)
        for n, pts in fronts_k.items():
            if not pts:
                continue
            xs, ys = _step_xy(pts, key)
            ax.plot(xs, ys, color=colour[n], lw=1.5, label=n if col == 1 else None)
            ax.scatter([getattr(p, key) for p in pts], [p.miou for p in pts], s=28, color=colour[n],
                       edgecolors="k", linewidths=0.4, zorder=3)
            bars = [p for p in pts if p.miou_std is not None]
            if bars:  # confirmed over seeds: +/- one std
                ax.errorbar([getattr(p, key) for p in bars], [p.miou for p in bars], yerr=[p.miou_std for p in bars],
                            fmt="none", ecolor=colour[n], elinewidth=1, capsize=3, zorder=2)
            noisy = [p for p in pts if p.within_noise]
            if noisy:  # advantage over the neighbour with fewer parameters inside seed noise
                ax.scatter([getattr(p, key) for p in noisy], [p.miou for p in noisy], s=90, facecolors="none",
                           edgecolors="grey", linestyles="dashed", zorder=3,
                           label="within noise of its neighbour" if col == 1 and n == names[0] else None)
            pfig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour[n]),
                                      legendgroup=n, showlegend=False, hoverinfo="skip"), row=1, col=col)
            pfig.add_trace(go.Scatter(
                x=[getattr(p, key) for p in pts], y=[p.miou for p in pts], mode="markers", name=n,
                legendgroup=n, showlegend=col == 1, marker=dict(size=8, color=colour[n]),
                error_y=dict(type="data", array=[p.miou_std or 0.0 for p in pts],
                             visible=any(p.miou_std is not None for p in pts)),
                hovertext=[_hover(p, n) for p in pts], hoverinfo="text"), row=1, col=col)
        for p in refs_k:
            ax.scatter([getattr(p, key)], [p.miou], marker="*", s=260, color="gold",
                       edgecolors="k", linewidths=0.8, zorder=4)
            ax.annotate(p.label, (getattr(p, key), p.miou), xytext=(6, 6),
                        textcoords="offset points", fontsize=9, weight="bold")
        if refs_k:
            pfig.add_trace(go.Scatter(
                x=[getattr(p, key) for p in refs_k], y=[p.miou for p in refs_k], mode="markers+text",
                name="references", legendgroup="references", showlegend=col == 1,
                text=[p.label for p in refs_k], textposition="top right",
                marker=dict(symbol="star", size=18, color="gold", line=dict(width=1, color="black")),
                hovertext=[_hover(p) for p in refs_k], hoverinfo="text"), row=1, col=col)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)                   # room for the reference labels
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        pfig.update_xaxes(type="log", title_text=xlabel, row=1, col=col)
    axes[0].set_ylabel("mIoU (x100)")
    pfig.update_yaxes(title_text="mIoU (x100)", row=1, col=1)
    if fronts:
        axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png_path) as tmp:  # a crash mid-write leaves the previous figure in place
        fig.savefig(tmp, dpi=150)
    pfig.update_layout(title_text=title, template="plotly_white", hovermode="closest")
    with atomic_path(html_path) as tmp:
        pfig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return png_path, html_path


def write_front_csv(points: Sequence[FrontPoint | Mapping[str, Any]], path: str | Path) -> Path:
    """Write points, one row each, with the header :data:`FRONT_CSV_COLUMNS` (full precision;
    unknown fields empty; ``seeds`` and ``miou_seeds`` joined with ``;``). Parent folders are
    created; the file is replaced atomically (a crash mid-write leaves the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FRONT_CSV_COLUMNS)
        w.writeheader()
        for p in map(as_front_point, points):
            d = asdict(p)
            for k in ("seeds", "miou_seeds"):
                if d[k] is not None:
                    d[k] = ";".join(str(v) for v in d[k])
            w.writerow({k: "" if d[k] is None else d[k] for k in FRONT_CSV_COLUMNS})
    return path


def hypervolume_table(fronts: Mapping[str, Sequence[FrontPoint]], reference: Sequence[float],
                      *, normalized: bool = True, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[dict]:
    """One row per study: ``{study, front_size, hypervolume, reference}`` with ``front_size``
    the size of :func:`pareto_front` of the study's points (under ``objectives``) and ``reference``
    written as the string ``"(miou, params, macs[, ms])"``. See :func:`hypervolume` for the units."""
    ref = "(" + ", ".join(f"{v:g}" if n in ("miou", "ort_latency_ms") else f"{int(v):,}"
                          for n, v in zip(objectives, reference)) + ")"
    return [{"study": name, "front_size": len(pareto_front(pts, objectives)),
             "hypervolume": hypervolume(pts, reference, normalized=normalized, objectives=objectives),
             "reference": ref}
            for name, pts in fronts.items()]


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
                "$": r"\$", "{": r"\{", "}": r"\}"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in s)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _cell(v: Any, digits: int, fmt: str, show: Callable[[Any], str | None] | None = None) -> str:
    """Format one value for ``fmt`` in {"md", "tex"}; numbers are not TeX-escaped.

    ``show`` (optional) turns a value into display text first; it returning None falls back
    to the default formatting of ``v``.
    """
    if show is not None and (shown := show(v)) is not None:
        return shown.replace("|", r"\|") if fmt == "md" else _tex_escape(shown)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–" if fmt == "md" else "--"
    if _is_int(v):
        s = f"{int(v):,}"
    elif _is_num(v):
        s = f"{float(v):,.{digits}f}"
    else:
        s = str(v)
        return s.replace("|", r"\|") if fmt == "md" else _tex_escape(s)
    return s.replace(",", "{,}") if fmt == "tex" else s


def write_table(rows: list[dict], stem: str | Path, *, columns: Sequence[str], title: str = "",
                notes: Sequence[str] = (), float_digits: int | Mapping[str, int] = 2,
                display: Mapping[str, Callable[[Any], str | None]] | None = None) -> dict[str, Path]:
    """Write ``rows`` (dicts; missing keys read as None) as ``stem.md``, ``stem.csv``, ``stem.tex``.

    * md: GitHub table, ``# title`` heading, numeric columns right-aligned, ``notes`` as lines
      under the table;
    * csv: header = ``columns``, values raw (full precision), None as empty;
    * tex: ``table`` + ``caption{title}`` + booktabs ``tabular`` (``\\toprule``/``\\midrule``/
      ``\\bottomrule``), text escaped (``_ % & # $ { } \\``), notes as footnotesize lines.

    In md/tex, floats get ``float_digits`` decimals (an int, or a per-column mapping, default 2),
    ints thousands separators (``86,910``; tex ``86{,}910``), None ``–`` (tex ``--``).
    ``display`` (optional, per column) maps a value to the text shown in md/tex (``True`` ->
    ``"yes"``, say; returning None keeps the default); the csv keeps the raw value.
    Returns ``{"md": path, "csv": path, "tex": path}``. Parent folders are created.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns)
    digits = {c: (float_digits.get(c, 2) if isinstance(float_digits, Mapping) else float_digits) for c in cols}
    show = dict(display or {})
    numeric = {c: all(_is_num(r.get(c)) for r in rows if r.get(c) is not None)
               and any(r.get(c) is not None for r in rows) for c in cols}
    paths = {k: stem.with_name(stem.name + "." + k) for k in ("md", "csv", "tex")}

    md = [f"# {title}", ""] if title else []
    md.append("| " + " | ".join(c.replace("|", r"\|") for c in cols) + " |")
    md.append("|" + "|".join("---:" if numeric[c] else ":---" for c in cols) + "|")
    md += ["| " + " | ".join(_cell(r.get(c), digits[c], "md", show.get(c)) for c in cols) + " |" for r in rows]
    if notes:
        md += [""] + [str(n) for n in notes]
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")

    with atomic_path(paths["csv"]) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([["" if r.get(c) is None else r.get(c) for c in cols] for r in rows])

    tex = [r"\begin{table}[t]", r"\centering"]
    if title:
        tex.append(rf"\caption{{{_tex_escape(title)}}}")
    tex += [r"\begin{tabular}{" + "".join("r" if numeric[c] else "l" for c in cols) + "}",
            r"\toprule", " & ".join(_tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    tex += [" & ".join(_cell(r.get(c), digits[c], "tex", show.get(c)) for c in cols) + r" \\" for r in rows]
    tex += [r"\bottomrule", r"\end{tabular}"]
    tex += [rf"\par\smallskip{{\footnotesize {_tex_escape(str(n))}}}" for n in notes]
    tex.append(r"\end{table}")
    with atomic_path(paths["tex"]) as tmp:
        tmp.write_text("\n".join(tex) + "\n", encoding="utf-8")
    return paths
