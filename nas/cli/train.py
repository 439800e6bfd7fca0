"""``nas-train``, ``nas-eval`` and ``nas-predict``."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from nas.cli._hydra import hydra_app, print_json_line


def run_training(cfg: DictConfig) -> dict:
    """Compose the job from ``cfg`` and run :func:`nas.train_job.train_and_save`; return its summary."""
    from nas.config import train_settings_from
    from nas.tracking import Tracker
    from nas.train_job import train_and_save

    tcfg = train_settings_from(cfg.train)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment) if cfg.tracking.enabled else None
    return train_and_save(str(cfg.model), tcfg, data_root=cfg.data.root, cache_dir=cfg.data.cache_dir,
                          val_fraction=cfg.data.val_fraction, output_dir=cfg.output_dir, tracker=tracker)


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
    from nas.predict import evaluate_checkpoint

    m = evaluate_checkpoint(cfg.checkpoint, cfg.data.root, cfg.split, cfg.input_size, cfg.batch_size,
                            cache_dir=cfg.data.cache_dir, fraction=cfg.data.val_fraction, device=str(cfg.device))
    size = m["input_size"]
    print(f"{cfg.checkpoint}: {cfg.split} {m['images']} images at {size[0]}x{size[1]} "
          f"({m['preprocessing']['channel_order']}, resize {m['preprocessing']['resize']}): "
          f"mIoU (foreground IoU per image) {m['miou']:.2f}, 2-class confusion mIoU {m['miou_2class']:.2f}")
    print_json_line({"miou": m["miou"], "miou_2class": m["miou_2class"], "images": m["images"],
                     "skipped_ids": m["skipped_ids"], "input_size": size})


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
