"""``nas-ablate experiment=<name>``: regenerate an ablation table from one command."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from nas.cli._hydra import hydra_app, print_json_line


@hydra_app("ablate")
def main(cfg: DictConfig) -> None:
    from nas.ablate import load_experiment, run_ablation, write_results
    from nas.config import train_settings_from
    from nas.datasets import data_source
    from nas.tracking import Tracker

    exp = load_experiment(str(cfg.experiment), cfg.experiments_dir)
    src = data_source(cfg.data)
    src.require_two_classes("nas-ablate")
    base = src.train_config(train_settings_from(cfg.recipe))
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment) if (cfg.tracking.enabled and cfg.train) else None
    result = run_ablation(
        exp, base, data_root=src.reader, cache_dir=src.cache_dir, tracker=tracker, train=bool(cfg.train),
        seeds=list(cfg.seeds) if cfg.seeds else None,
        fidelity=OmegaConf.to_container(cfg.fidelity, resolve=True),
        cost_input_size=tuple(cfg.cost_input_size),
    )
    files = write_results(exp, result, cfg.results_dir, trained=bool(cfg.train))
    print(files["md"].read_text())
    print_json_line({"experiment": exp.name, "rows": result["rows"], "fidelity": result["fidelity"],
                     "seeds": result["seeds"], "cells_trained": sum(not c["reused"] for c in result["cells"]),
                     "cells_reused": sum(c["reused"] for c in result["cells"]),
                     "files": {k: str(v) for k, v in files.items()}})


if __name__ == "__main__":
    main()
