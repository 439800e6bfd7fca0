"""``nas-train``, ``nas-eval`` and ``nas-predict``."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from nas.cli._hydra import hydra_app, print_json_line


def run_training(cfg: DictConfig) -> dict:
    """Compose the job from ``cfg`` and run :func:`nas.train_job.train_and_save`; return its summary."""
    from nas.config import train_settings_from
    from nas.datasets import data_source
    from nas.tracking import Tracker
    from nas.train_job import train_and_save

    src = data_source(cfg.data)
    tcfg = src.train_config(train_settings_from(cfg.train))
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment) if cfg.tracking.enabled else None
    return train_and_save(str(cfg.model), tcfg, data_root=src.reader, cache_dir=src.cache_dir,
                          val_fraction=src.val_fraction, output_dir=cfg.output_dir, tracker=tracker)


def choose_recipe(args: list[str]) -> list[str]:
    """``recipe=NAME`` -> ``recipe@train=NAME``; without one, the recipe of ``model=``'s family.

    The recipe sits under the fidelity and the command line (``nas/conf/train.yaml``'s defaults), so
    ``train.lr=...`` and a fidelity's ``lr`` still win. An unknown model is left for
    ``run_training`` to report.
    """
    out, given, model = [], False, "sinet"
    for a in args:
        key, _, value = a.partition("=")
        if key in ("recipe", "recipe@train"):
            out.append(f"recipe@train={value}")
            given = True
            continue
        if key == "model":
            model = value
        out.append(a)
    if not given:
        from search_spaces import get_genotype

        try:
            out.append(f"recipe@train={get_genotype(model).family}")
        except (ValueError, FileNotFoundError):
            pass
    return out


@hydra_app("train", argv_hook=choose_recipe)
def main(cfg: DictConfig) -> None:
    from nas.train import NonFiniteLossError

    try:
        summary = run_training(cfg)
    except NonFiniteLossError as exc:
        print(f"nas-train: training stopped: {exc}", file=sys.stderr)
        print_json_line({"error": "non_finite_loss", "message": str(exc)})
        sys.exit(3)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the resume checkpoint is written
        print("nas-train: interrupted; rerun the same command to resume from the last finished epoch",
              file=sys.stderr)
        sys.exit(130)
    print_json_line(summary)


@hydra_app("eval")
def eval_main(cfg: DictConfig) -> None:
    from nas.datasets import data_source
    from nas.predict import evaluate_and_log

    m = evaluate_and_log(cfg.checkpoint, data_source(cfg.data), cfg.split, cfg.input_size, cfg.batch_size,
                         worst_k=int(cfg.worst_k), overlays_dir=cfg.overlays_dir, log_to_run=bool(cfg.log_to_run),
                         device=str(cfg.device))
    size = m["input_size"]
    head = (f"mIoU (foreground IoU per image) {m['miou']:.2f}, 2-class confusion mIoU {m['miou_2class']:.2f}"
            if "miou" in m else f"confusion-matrix mIoU over {m['num_classes']} classes {m['miou_cm']:.2f}")
    print(f"{cfg.checkpoint}: {m['dataset']} {m['split']} {m['images']} images at {size[0]}x{size[1]} "
          f"({m['preprocessing']['channel_order']}, resize {m['preprocessing']['resize']}): {head}; per-image IoU "
          f"mean {m['iou_mean']:.2f}, p10 {m['iou_p10']:.2f}, p50 {m['iou_p50']:.2f}, p90 {m['iou_p90']:.2f}")
    if m["skipped_ids"] or m["resized_masks"]:
        print(f"  {m['skipped_ids']} image(s) skipped, {m['resized_masks']} mask(s) resized to their image")
    for w in m["worst"]:
        print(f"  worst: {w['name']} IoU {w['iou']:.2f}")
    keys = ("miou", "miou_2class", "miou_cm", "class_iou", "images", "skipped_ids", "resized_masks", "input_size",
            "dataset", "split", "num_classes", "iou_mean", "iou_p10", "iou_p50", "iou_p90", "worst", "overlays",
            "mlflow_run_id")
    print_json_line({k: m[k] for k in keys if k in m})


@hydra_app("predict")
def predict_main(cfg: DictConfig) -> None:
    from nas.predict import predict_files

    inputs = cfg.inputs if OmegaConf.is_list(cfg.inputs) else [cfg.inputs]
    written = predict_files(cfg.checkpoint, [str(p) for p in inputs], cfg.out_dir, cfg.input_size,
                            device=str(cfg.device))
    for src, mask, overlay in written:
        print(f"{src} -> {mask}, {overlay}")
    print_json_line({"images": len(written), "out_dir": str(cfg.out_dir)})


if __name__ == "__main__":
    main()
