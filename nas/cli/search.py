"""``nas-search`` (one worker of a study) and ``nas-pareto`` (compare studies' fronts)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from nas.cli._hydra import hydra_app, print_json_line


def build_worker(cfg: DictConfig):
    """Config -> space, recipe, data, tracker, sampler, pruner -> :class:`nas.study.StudyWorker`."""
    from hydra.utils import instantiate

    from nas.budgets import needs_latency
    from nas.config import study_settings_from, train_settings_from
    from nas.datasets import data_source
    from nas.study import StudyWorker, check_storage
    from nas.tracking import Tracker
    from nas.train import load_data

    s = study_settings_from(cfg.study)
    check_storage(s.storage)  # before the MLflow store and the data are touched
    src = data_source(cfg.data)
    src.require_two_classes("nas-search")
    tcfg = src.train_config(train_settings_from(cfg.train))
    from nas.device import resolve_device

    resolve_device(tcfg.device)  # an unavailable train.device fails before any trial starts
    space = instantiate(cfg.space).with_fidelity(tcfg.num_classes, tcfg.input_size)
    sampler = instantiate(cfg.sampler, seed=s.seed)
    pruner = instantiate(cfg.pruner) if s.mode == "constrained" else None
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment) if cfg.tracking.enabled else None

    def load(c):  # each rung's data, loaded when first trained (one bundle per input size, fraction and seed)
        return load_data(src.reader, c, cache_dir=src.cache_dir, val_fraction=src.val_fraction,
                         progress=bool(cfg.progress))

    data = load(tcfg) if s.scheduler == "none" else None
    timing = None
    if needs_latency(s):  # latency is timed on real training images, not zeros
        from nas.export import real_check_images
        from nas.preprocess import OURS

        timing = real_check_images(src.reader, OURS, s.cost_input_size, n=4, split="train")
    return StudyWorker(s, space, tcfg, data, tracker, sampler, pruner, progress=bool(cfg.progress),
                       fidelity_name=_fidelity_choice(), load_data_fn=load, timing_inputs=timing)


def _fidelity_choice() -> str:
    """The name of the composed ``fidelity`` rung (``base`` outside a Hydra app, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get("fidelity", "base"))
    except ValueError:  # HydraConfig not set
        return "base"


@hydra_app("search")
def main(cfg: DictConfig) -> None:
    if int(cfg.workers) != 1 or cfg.devices:  # K processes of this command, workers=1 each
        from nas.workers import run_parallel

        sys.exit(run_parallel("nas.cli.search", "nas-search", int(cfg.workers), [str(d) for d in cfg.devices]))
    worker = build_worker(cfg)
    try:
        summary = worker.run()
    except KeyboardInterrupt:
        print("nas-search: interrupted; the current trial is marked failed and will be retried on resume",
              file=sys.stderr)
        sys.exit(130)
    print(f"study {summary['study']} ({summary['scheduler']}): {summary['n_complete']} trained "
          f"{summary['trained_per_rung']}, {summary['n_infeasible']} over budget, {summary['n_failed']} failed; "
          f"front of {len(summary['pareto'])}, hypervolume {summary['hypervolume']:.4f}; "
          f"artifacts in {summary['output_dir']}")
    if summary["stopped"]:
        print(f"nas-search: stopped early: {summary['stopped']}", file=sys.stderr)
    keys = ("study", "scheduler", "n_complete", "n_infeasible", "n_failed", "trained_per_rung", "pareto", "confirmed",
            "hypervolume", "stopped", "infeasible_time_fraction")
    print_json_line({k: summary[k] for k in keys})


@hydra_app("pareto")
def pareto_main(cfg: DictConfig) -> None:
    from nas.pareto import compare_studies

    names = list(cfg.studies) if OmegaConf.is_list(cfg.studies) else [str(cfg.studies)]
    ref = OmegaConf.to_container(cfg.reference_point, resolve=True) if cfg.reference_point else None
    res = compare_studies(names, cfg.storage, ref, cfg.output_dir, name=cfg.name,
                          tracking=(cfg.tracking.uri, cfg.tracking.experiment) if cfg.tracking.enabled else None)
    for row in res["table"]:
        print(f"{row['study']:<32} front {row['front_size']:>3}  hypervolume {row['hypervolume']:.4f}")
    print_json_line(res)


if __name__ == "__main__":
    main()
