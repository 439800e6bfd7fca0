"""Checkpoints: the genotype, the weights and how they were trained, in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from search_spaces import create_model, genotype_from_dict
from search_spaces.genotype import Genotype

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = 1


def save_checkpoint(
    path: str | Path, genotype: Genotype, state_dict: dict[str, torch.Tensor], *, train: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``{format, genotype, state_dict, train, metrics}`` with ``torch.save``.

    Raises:
        OSError: the folder cannot be created or written (the message names it).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": _FORMAT, "genotype": genotype.to_dict(), "state_dict": dict(state_dict),
                    "train": train or {}, "metrics": metrics or {}}, path)
    except OSError as exc:
        raise OSError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint with its weights, in eval mode.

    Returns:
        ``(model, meta)`` where ``meta`` has ``genotype``, ``train``, ``metrics``.

    Raises:
        FileNotFoundError: no such file. ValueError: not a checkpoint of this tool.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a checkpoint written by nas-train (format {_FORMAT})")
    g = genotype_from_dict(blob["genotype"], where=str(path))
    model = create_model(g)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, {"genotype": g, "train": blob["train"], "metrics": blob["metrics"]}
