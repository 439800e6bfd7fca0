"""Checkpoints: the genotype, the weights, their preprocessing and how they were trained, in one file.

Format 2 (written now): ``{format: 2, genotype, state_dict, preprocessing, train, metrics}``;
``preprocessing`` is a :class:`nas.preprocess.Preprocessing` as a dict. Optional entries: ``data`` (the
data set trained on, :meth:`nas.datasets.DatasetReader.describe`) and ``tracking`` (``{uri, experiment,
run_id}`` of the MLflow run that wrote it; ``nas-eval`` logs there). Format 1 (before
preprocessing was recorded) is still read, as :data:`nas.preprocess.OURS`, the only input
``nas-train`` ever fed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas._atomic import atomic_path
from nas.preprocess import OURS, Preprocessing
from search_spaces import create_model, genotype_from_dict
from search_spaces.genotype import Genotype

__all__ = ["save_checkpoint", "load_checkpoint", "FORMATS"]

_FORMAT = 2
_RELEASE_SIZE = (224, 224)  # the authors' training size (REFERENCE.md), for checkpoints that do not say theirs
FORMATS = (1, 2)


def save_checkpoint(
    path: str | Path, genotype: Genotype, state_dict: dict[str, torch.Tensor], *, train: dict | None = None,
    metrics: dict | None = None, preprocessing: Preprocessing = OURS, data: dict | None = None,
    tracking: dict | None = None,
) -> Path:
    """Write ``{format, genotype, state_dict, preprocessing, train, metrics}`` with ``torch.save``, atomically.

    Args:
        preprocessing: the input the weights expect (default :data:`~nas.preprocess.OURS`).
        data: the data set trained on (``{name, root, num_classes, class_names}``), optional.
        tracking: ``{uri, experiment, run_id}`` of the MLflow run of the training, optional.

    Raises:
        OSError: the folder cannot be created or written (the message names it).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"format": _FORMAT, "genotype": genotype.to_dict(), "state_dict": dict(state_dict),
                        "preprocessing": preprocessing.to_dict(), "train": train or {}, "metrics": metrics or {},
                        **({"data": data} if data else {}), **({"tracking": tracking} if tracking else {})},
                       tmp)
    except OSError as exc:
        raise OSError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, checked: ``{format, genotype, state_dict, preprocessing, train, metrics, data,
    tracking, input_size}`` (``data`` and ``tracking`` are ``{}`` when absent).

    ``genotype`` is a genotype object and ``preprocessing`` a :class:`Preprocessing`. ``input_size`` is the
    (H, W) the weights were trained at: ``train.input_size``, else the ``input_size`` that checkpoints
    written before the genotype lost its fidelity kept in the genotype, else 224 x 224 (the release's).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, a release state_dict (use ``nas-import``), an unknown format
            or a malformed field; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if isinstance(blob, dict) and "format" not in blob and blob and all(isinstance(v, torch.Tensor)
                                                                          for v in blob.values()):
        raise ValueError(f"{path}: a bare state_dict, not a checkpoint of this tool; for the authors' released "
                         "SINet.pth / ExtremeC3.pth run `nas-import release=<file>` first")
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt not in FORMATS:
        keys = sorted(blob)[:8] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: unknown checkpoint format {fmt!r} (keys {keys}); this tool reads formats "
                         f"{list(FORMATS)} written by nas-train / nas-import")
    missing = [k for k in ("genotype", "state_dict") if k not in blob]
    if missing:
        raise ValueError(f"{path}: checkpoint format {fmt} without {missing}")
    pre = OURS if fmt == 1 else Preprocessing.from_dict(blob.get("preprocessing"), where=f"{path}: preprocessing")
    train = blob.get("train") or {}
    size = train.get("input_size") or (blob["genotype"] or {}).get("input_size") or _RELEASE_SIZE
    return {"format": fmt, "genotype": genotype_from_dict(blob["genotype"], where=str(path)),
            "state_dict": blob["state_dict"], "preprocessing": pre, "train": train,
            "metrics": blob.get("metrics", {}), "data": blob.get("data", {}), "tracking": blob.get("tracking", {}),
            "input_size": (int(size[0]), int(size[1]))}


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint with its weights, in eval mode.

    Returns:
        ``(model, meta)`` where ``meta`` has ``genotype``, ``preprocessing``
        (a :class:`~nas.preprocess.Preprocessing`), ``train``, ``metrics``, ``format``, ``data``, ``tracking``,
        ``input_size``.

    Raises:
        FileNotFoundError: no such file. ValueError: see :func:`read_checkpoint`.
    """
    ck = read_checkpoint(path)
    model = create_model(ck["genotype"])
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit its genotype: {exc}") from None
    model.eval()
    return model, {k: ck[k] for k in ("genotype", "preprocessing", "train", "metrics", "format", "data", "tracking",
                                      "input_size")}
