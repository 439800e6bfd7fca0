"""One training job (``nas-train``): a network, trained, checkpointed and tracked.

Config -> :func:`train_and_save` -> a checkpoint (genotype + weights + metrics) under
``output_dir`` and an MLflow run (through :func:`nas.tracking.training_run`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nas.config import TrainConfig
from nas.tracking import Tracker, result_metrics, training_run

__all__ = ["checkpoint_path", "train_and_save"]


def checkpoint_path(output_dir: str | Path, model: str, archid: str) -> Path:
    """``<output_dir>/<model stem>-<archid>-<YYYYmmdd-HHMMSS>.pt``, after checking the folder is writable.

    Raises:
        OSError: ``output_dir`` cannot be created or written (the message names it).
    """
    out_dir = Path(output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output_dir={out_dir} is not writable: {exc.strerror or exc}") from None
    return out_dir / f"{Path(str(model)).stem}-{archid}-{time.strftime('%Y%m%d-%H%M%S')}.pt"


def train_and_save(model: str, tcfg: TrainConfig, *, data_root, cache_dir: str | None = None,
                   val_fraction: float = 1.0, output_dir: str | Path = "runs/train",
                   tracker: Tracker | None = None) -> dict[str, Any]:
    """Train ``model`` (a registered name or a genotype ``.yaml``) with ``tcfg`` and save its checkpoint.

    ``data_root``: an EG1800 root (``None``: env ``EG1800_ROOT``) or a :class:`nas.datasets.DatasetReader`;
    ``tcfg.data_classes`` must be its class count (:meth:`nas.datasets.DataSource.train_config`).

    Returns:
        the training summary (:meth:`nas.train.TrainResult.summary`) with ``params``,
        ``conv_macs`` (at ``tcfg.input_size``), ``checkpoint``, ``mlflow_run_id``, ``recipe``, ``init``,
        ``resumed_from_epoch`` (None: a fresh run). The run resumes from ``tcfg.resume_dir``
        (default ``<output_dir>/resume``) when an interrupted run with the same settings left a
        resume checkpoint there.

    Raises:
        ValueError / FileNotFoundError: an unknown model or a bad genotype file; OSError: an
        unwritable ``output_dir``; :class:`nas.train.NonFiniteLossError`: the loss diverged
        (the MLflow run is closed FAILED in every case); ValueError: ``tcfg.device`` not available.
    """
    from nas.checkpoint import save_checkpoint
    from nas.cost import cheap_cost
    from nas.device import resolve_device
    from nas.train import load_data, train_genotype
    from search_spaces import create_model, get_genotype

    resolve_device(tcfg.device)  # an unavailable device fails before the data is loaded
    if tcfg.resume_dir is None:  # the same command, rerun, resumes from here
        tcfg = replace(tcfg, resume_dir=str(Path(output_dir) / "resume"))
    g = get_genotype(str(model), num_classes=tcfg.num_classes)
    try:
        g.check_input_size(tcfg.input_size)
    except ValueError as exc:
        raise ValueError(f"model={model} at train.input_size={tuple(tcfg.input_size)}: {exc}") from None
    cost = cheap_cost(create_model(g), tcfg.input_size)  # warns here, once, about a zero gate
    ckpt = checkpoint_path(output_dir, str(model), g.archid())
    from nas.datasets import as_reader

    reader = as_reader(data_root)
    data = load_data(reader, tcfg, cache_dir=cache_dir, val_fraction=val_fraction, progress=tcfg.progress)
    tags = {"model": model, "archid": g.archid(), "recipe": tcfg.recipe, "selection": tcfg.selection,
            "optimistic": str(tcfg.optimistic).lower(), "dataset": reader.name}
    with training_run(tracker, f"{model}-{g.archid()}", tags=tags, train_cfg=tcfg, genotype=g,
                      costs={"params": cost.params, "conv_macs": cost.conv_macs}) as run:
        res = train_genotype(g, tcfg, data, on_epoch=run.on_epoch)
        summary = res.summary()
        tracking = {"uri": tracker.uri, "experiment": tracker.experiment, "run_id": run.run_id} if run else None
        save_checkpoint(ckpt, g, res.best_state, train=tcfg.as_dict(), metrics=summary, data=reader.describe(),
                        tracking=tracking)
        run.log_metrics(result_metrics(res), step=tcfg.epochs)
        run.log_artifact(ckpt)
    summary.update(params=cost.params, conv_macs=cost.conv_macs, checkpoint=str(ckpt), mlflow_run_id=run.run_id,
                   recipe=tcfg.recipe, init=tcfg.init)
    return summary
