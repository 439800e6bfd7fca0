"""``nas-train``, ``nas-eval`` and ``nas-predict``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nas.cli._hydra import hydra_app, print_json_line


def run_training(cfg: DictConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.train`` on ``cfg.data``, tracked in MLflow; return the summary."""
    from nas.checkpoint import save_checkpoint
    from nas.config import train_settings_from
    from nas.cost import cheap_cost
    from nas.tracking import FAILED, Tracker
    from nas.train import load_data, train_genotype
    from search_spaces import create_model, get_genotype

    tcfg = train_settings_from(cfg.train)
    g = get_genotype(str(cfg.model), num_classes=tcfg.num_classes, input_size=tcfg.input_size)
    cost = cheap_cost(create_model(g), tcfg.input_size)  # warns here, once, about a zero gate
    out_dir = Path(cfg.output_dir)
    ckpt = out_dir / f"{Path(str(cfg.model)).stem}-{g.archid()}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output_dir={out_dir} is not writable: {exc.strerror or exc}") from None
    data = load_data(cfg.data.root, tcfg, cache_dir=cfg.data.cache_dir, val_fraction=cfg.data.val_fraction,
                     progress=tcfg.progress)
    tracker = run_id = None
    if cfg.tracking.enabled:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
        tags = {"model": cfg.model, "archid": g.archid(), "recipe": tcfg.recipe, "selection": tcfg.selection,
                "optimistic": str(tcfg.optimistic).lower()}
        run_id = tracker.start_run(f"{cfg.model}-{g.archid()}", tags=tags)
        tracker.log_params(run_id, {f"train.{k}": v for k, v in tcfg.as_dict().items()})
        tracker.log_params(run_id, {f"genotype.{k}": v for k, v in g.flat_params().items()})
        tracker.log_metrics(run_id, {"params": cost.params, "conv_macs": cost.conv_macs})
        tracker.log_text(run_id, g.to_yaml(), "genotype.yaml")

    def on_epoch(rec) -> None:
        if tracker:
            tracker.log_metrics(run_id, {"train/loss": rec.train_loss, "train/iou": rec.train_iou,
                                         "holdout/miou": rec.holdout_miou, "train/images_per_s": rec.images_per_s,
                                         "lr": rec.lr, "stage": rec.stage}, step=rec.global_epoch)

    try:
        res = train_genotype(g, tcfg, data, on_epoch=on_epoch)
    except BaseException:  # a non-finite loss, Ctrl-C, ...: the run is closed, not left RUNNING
        if tracker:
            tracker.end_run(run_id, FAILED)
        raise
    summary = res.summary()
    save_checkpoint(ckpt, g, res.best_state, train=tcfg.as_dict(), metrics=summary)
    if tracker:
        tracker.log_metrics(run_id, {"val/miou": res.miou, "val/miou_2class": res.miou_2class,
                                     "train/images_per_s_mean": res.images_per_s}, step=tcfg.epochs)
        tracker.log_artifact(run_id, ckpt)
        tracker.end_run(run_id)
    summary.update(params=cost.params, conv_macs=cost.conv_macs, checkpoint=str(ckpt), mlflow_run_id=run_id,
                   recipe=tcfg.recipe, init=tcfg.init)
    return summary


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
    print_json_line(summary)


@hydra_app("eval")
def eval_main(cfg: DictConfig) -> None:
    from nas.predict import evaluate_checkpoint

    m = evaluate_checkpoint(cfg.checkpoint, cfg.data.root, cfg.split, cfg.input_size, cfg.batch_size,
                            cache_dir=cfg.data.cache_dir, fraction=cfg.data.val_fraction)
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
    written = predict_files(cfg.checkpoint, [str(p) for p in inputs], cfg.out_dir, cfg.input_size)
    for src, mask, overlay in written:
        print(f"{src} -> {mask}, {overlay}")
    print_json_line({"images": len(written), "out_dir": str(cfg.out_dir)})


if __name__ == "__main__":
    main()
