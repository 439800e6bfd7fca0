"""``nas-fidelity``: measure whether cheap rungs and zero-cost proxies rank architectures like the top rung."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from nas.cli._hydra import hydra_app, print_json_line


def run_fidelity(cfg: DictConfig) -> dict:
    """Config -> worker -> cells -> report files (+ MLflow); returns the JSON summary."""
    from hydra.utils import instantiate

    from nas.config import fidelity_settings_from, train_settings_from
    from nas.datasets import data_source
    from nas.fidelity import FidelityWorker
    from nas.fidelity_report import write_fidelity_results
    from nas.tracking import Tracker

    s = fidelity_settings_from(cfg.study)
    src = data_source(cfg.data)
    src.require_two_classes("nas-fidelity")
    base = src.train_config(train_settings_from(cfg.train))
    space = instantiate(cfg.space).with_fidelity(base.num_classes, s.cost_input_size)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment) if cfg.tracking.enabled else None
    worker = FidelityWorker(s, space, base, data_root=src.reader, cache_dir=src.cache_dir, tracker=tracker,
                            progress=bool(cfg.progress))
    counts = {"trained": 0, "reused": 0, "failed": 0}
    if not cfg.report_only:
        counts = worker.run()
    res = worker.results(type(space).__name__)
    files = write_fidelity_results(res, res["cells"], res["means"], s.results_dir)
    if tracker:
        rid = tracker.start_run(f"{s.name}/report", tags={"kind": "fidelity_report", "fidelity_study": s.name})
        for k, p in files.items():
            tracker.log_artifact(rid, p, "fidelity")
        top = next(r for r in res["table"] if r["rung"] == s.top)
        tracker.log_metrics(rid, {"cells_done": res["json"]["cells_done"], "n_archs": res["n_archs"]}
                            | ({"top_rung_seed_tau": top["seed_tau"]} if top["seed_tau"] is not None else {}))
        for r in res["table"]:
            if r["kendall_tau"] is not None:
                tracker.log_metrics(rid, {f"kendall_tau/{Path(r['rung']).stem}": r["kendall_tau"]})
        tracker.end_run(rid)
    print(files["md"].read_text())
    return res["json"] | {"cells_trained": counts["trained"], "cells_reused": counts["reused"],
                          "cells_failed": counts["failed"], "files": {k: str(v) for k, v in files.items()}}


@hydra_app("fidelity_study")
def main(cfg: DictConfig) -> None:
    if int(cfg.workers) != 1 or cfg.devices:  # K processes of this command, workers=1 each
        from nas.workers import run_parallel

        sys.exit(run_parallel("nas.cli.fidelity", "nas-fidelity", int(cfg.workers), [str(d) for d in cfg.devices]))
    try:
        out = run_fidelity(cfg)
    except KeyboardInterrupt:
        print("nas-fidelity: interrupted; finished cells are kept, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    keep = ("n_archs", "rungs", "output_dir", "top_rung", "top_rung_seed_tau", "recommended_search_rung",
            "cells_done", "cells_planned", "complete", "cells_trained", "cells_reused", "cells_failed")
    rungs = [{k: r[k] for k in ("name", "kind", "kendall_tau", "kendall_tau_ci95", "spearman_rho", "seed_std",
                                "top_quarter_overlap", "seconds_per_arch", "seconds_unit")} for r in out["rungs"]]
    print_json_line({k: out[k] for k in keep} | {"rungs": rungs})


if __name__ == "__main__":
    main()
