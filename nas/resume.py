"""Resume checkpoints: a training run interrupted (SIGKILL, SIGTERM, Ctrl-C) goes on where it stopped.

At the end of every epoch the trainer takes a :func:`snapshot` in memory (model, optimiser, scheduler,
stage, epoch, the best state so far, the history, and every RNG state: Python, numpy, torch CPU and
CUDA, and the DataLoader's shuffle generator; the augmentation streams are functions of (seed, epoch,
index) and need no state). Every ``train.resume_every`` epochs, and when SIGTERM or Ctrl-C arrives, the
latest snapshot is written atomically (:mod:`nas._atomic`) to :func:`resume_file`. A rerun with the same
settings finds it and continues from that epoch boundary, so it ends with the same metrics as an
uninterrupted run (bit-identical on CPU at a fixed thread count). The file is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from nas._atomic import atomic_path
from nas.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["Interrupted", "Resumer", "get_rng_states", "raise_if_interrupted", "resume_file", "set_rng_states",
           "sigterm_interrupts"]

FORMAT = 1
# Settings that change neither the result nor its meaning: a rerun may differ in them and still resume.
_NOT_KEYED = ("progress", "resume_every", "resume_dir", "num_workers", "threads", "device", "check_every")


class Interrupted(KeyboardInterrupt):
    """SIGTERM arrived during training (a KeyboardInterrupt, so every Ctrl-C handler also handles it)."""


_pending: list[str] = []  # signals received in the block, so one swallowed by Python is raised again


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread (elsewhere: no
    change), and :func:`raise_if_interrupted` raises it again.

    Python drops an exception raised while a weakref callback or ``__del__`` runs ("Exception ignored
    in ..."), so a Ctrl-C landing there would be lost and training would go on; the trainer calls
    :func:`raise_if_interrupted` every step, so the signal takes effect at the next step at the latest.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        _pending.append(signal.Signals(signum).name)
        raise Interrupted(f"signal {_pending[-1]}")

    _pending.clear()
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _pending.clear()


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived in a :func:`sigterm_interrupts` block (one that an
    ignored-exception context may have swallowed)."""
    if _pending:
        raise Interrupted(f"signal {_pending[-1]}")


def resume_file(resume_dir: str | Path, archid: str, cfg: TrainConfig) -> Path:
    """``<resume_dir>/<archid>-<key>.resume.pt``; ``key`` hashes every setting of ``cfg`` that shapes the
    result (not ``progress``, ``threads``, ``device``, ``num_workers``, ``resume_*``, ``check_every``)."""
    d = {k: v for k, v in cfg.as_dict().items() if k not in _NOT_KEYED}
    key = hashlib.sha1(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]
    return Path(resume_dir) / f"{archid}-{key}.resume.pt"


def get_rng_states(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy and torch (CPU, every CUDA device) RNG states, and ``generator``'s if given."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_states(states: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`get_rng_states` returned (CUDA states only where CUDA is available)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and states["loader"] is not None:
        generator.set_state(states["loader"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Resumer:
    """The resume checkpoint of one training run.

    Args:
        path: the file (:func:`resume_file`); ``None``: resuming off (every method is a no-op).
        every: write every this many epochs (0: never, not even on a signal).

    Raises:
        ValueError (from :meth:`load`): the file exists but is not a resume checkpoint of this format.
    """

    def __init__(self, path: str | Path | None, every: int = 1) -> None:
        self.path = Path(path) if path is not None and every > 0 else None
        self.every = every
        self._latest: dict[str, Any] | None = None
        self._written: tuple[int, int] | None = None

    def load(self) -> dict[str, Any] | None:
        """The saved state (tensors on the CPU), or None when there is no file."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a torn file cannot exist (atomic writes), but a foreign one can
            raise ValueError(f"resume checkpoint {self.path} is unreadable ({exc}); "
                             "delete it to start afresh") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a resume checkpoint of format {FORMAT}; delete it to start afresh")
        self._written = (state["stage"], state["epoch"])
        return state

    def snapshot(self, state: dict[str, Any], global_epoch: int) -> None:
        """Keep a copy of ``state`` (an epoch boundary: ``stage``, ``epoch`` and the rest); write it when
        ``global_epoch`` is a multiple of ``every``."""
        if self.path is None:
            return
        self._latest = {"format": FORMAT, **_to_cpu(state)}
        if global_epoch % self.every == 0:
            self.flush()

    def flush(self) -> Path | None:
        """Write the latest snapshot if it is not on disk yet; return the file (None: nothing to write)."""
        if self.path is None or self._latest is None:
            return None
        at = (self._latest["stage"], self._latest["epoch"])
        if self._written != at:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                torch.save(self._latest, tmp)
            self._written = at
        return self.path

    def done(self) -> None:
        """The run finished: remove the file."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
