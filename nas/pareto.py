"""Compare the Pareto fronts of several stored studies (``nas-pareto``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from nas.objectives import default_reference_point
from nas.points import ledger_name, stored_front, stored_objectives
from nas.report import hypervolume_table, plot_fronts, write_front_csv, write_table
from nas.storage import engine_url

__all__ = ["compare_studies"]


def _figure_fidelity(attrs: dict[str, Any], confirmed: bool) -> str | None:
    """The fidelity (JSON) the front's figures were measured at: a confirmed multi-rung study's
    confirmation rung, else the stored fidelity (one rung, or the rung ladder)."""
    fid, sched = attrs.get("fidelity"), attrs.get("schedule")
    if not (fid and sched and confirmed and sched.get("confirm_index") is not None):
        return fid
    parsed = json.loads(fid)
    name = sched["rung_names"][sched["confirm_index"]]
    if len(sched["rung_names"]) > 1 and name in parsed:
        parsed = parsed[name]
    return json.dumps(parsed, sort_keys=True)


def compare_studies(names: Sequence[str], storage: str, reference: dict[str, float] | None, output_dir: str,
                    name: str | None = None, tracking: tuple[str, str] | None = None) -> dict[str, Any]:
    """Overlay the fronts of ``names``, tabulate their hypervolumes, write and log the results.

    The hand-designed networks enqueued as references (``study.enqueue``) are
    drawn when every compared study trained them at the same fidelity. ``reference``: the
    hypervolume reference point; missing keys (or None) take :func:`nas.objectives.default_reference_point`.

    Returns:
        ``{"studies", "table", "files", "fidelities", "references"}``.

    Raises:
        KeyError: a study name not in ``storage`` (the message lists those that are).
        ValueError: the studies' fronts have different objectives (``study.objectives``).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reference = default_reference_point() | dict(reference or {})  # unset keys: nas.objectives' reference
    storage = engine_url(storage)
    known = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    missing = [n for n in names if n not in known]
    if missing:
        raise KeyError(f"studies {missing} not in {storage}; stored: {sorted(known)}")
    fronts, points, fidelities, refs, confirmed, studied = {}, {}, {}, {}, {}, {}
    for n in names:
        st = optuna.load_study(study_name=n, storage=storage)
        trials = st.get_trials(deepcopy=False)
        ledger = optuna.load_study(study_name=ledger_name(n), storage=storage) if ledger_name(n) in known else None
        studied[n] = stored_objectives(st)
        points[n], fronts[n] = stored_front(st, ledger)  # confirmed (mean over seeds) where the study confirmed
        confirmed[n] = any(p.seeds for p in fronts[n])
        fidelities[n] = _figure_fidelity(st.user_attrs, confirmed[n])
        for p in points[n]:
            if trials[p.trial].user_attrs.get("reference"):
                refs.setdefault((p.label, fidelities[n]), p)
    same_fidelity = len(set(fidelities.values())) == 1
    references = [p for (r, fid), p in refs.items()] if same_fidelity else []
    objectives = set(studied.values())
    if len(objectives) > 1:
        raise ValueError("the studies have different front objectives, their hypervolumes are not comparable: "
                         + "; ".join(f"{n}: {list(o)}" for n, o in studied.items()))
    (objectives,) = objectives
    ref = tuple(reference[k] for k in objectives)
    table = hypervolume_table(fronts, ref, objectives=objectives)
    out = Path(output_dir) / (name or "_vs_".join(names))
    out.mkdir(parents=True, exist_ok=True)
    png, html = plot_fronts(fronts, out / "fronts.png", out / "fronts.html", references=references, all_points=points,
                            title=" vs ".join(names))
    notes = [f"reference point: {table[0]['reference'] if table else ref} ({', '.join(objectives)}); hypervolume "
             "normalised by 100 x the product of the cost references",
             "fidelity: " + ("; ".join(f"{n}: {f}" for n, f in fidelities.items())),
             "figures: " + "; ".join(f"{n}: {'confirmed (mean over seeds)' if c else 'one seed'}"
                                     for n, c in confirmed.items())]
    if not same_fidelity:
        notes.append("the studies were trained at different fidelities: their fronts are not comparable, "
                     "and no hand-designed reference point is drawn")
    files = write_table(table, out / "hypervolume", columns=["study", "front_size", "hypervolume"],
                        title="Hypervolume of each study's Pareto front", notes=notes,
                        float_digits={"hypervolume": 4})
    csvs = [write_front_csv(fronts[n], out / f"front_{n}.csv") for n in names]
    all_files = [png, html, *files.values(), *csvs]
    if tracking:
        from nas.tracking import Tracker

        tr = Tracker(*tracking)
        rid = tr.start_run(name or "_vs_".join(names), tags={"studies": ",".join(names)})
        for p in all_files:
            tr.log_artifact(rid, p)
        for row in table:
            tr.log_metrics(rid, {f"hypervolume/{row['study']}": row["hypervolume"]})
        tr.end_run(rid)
    return {"studies": list(names), "table": table, "files": [str(p) for p in all_files],
            "fidelities": {n: json.loads(f) if f else None for n, f in fidelities.items()},
            "references": [p.label for p in references], "confirmed": confirmed}
