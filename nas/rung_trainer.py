"""Training a search candidate at a rung of the study's fidelity ladder, with the data of each
data fidelity loaded once per process.

One job: (genotype, rung, seed) -> training result. The study worker (:mod:`nas.study`) decides
what to train and records it; :mod:`nas.train` trains.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nas.rungs import RungLadder
from nas.train import DataBundle, TrainConfig, train_genotype
from search_spaces import Genotype

__all__ = ["DataCache", "RungTrainer"]


class DataCache:
    """Loaded data per data fidelity (input size, fraction, holdout, seed), loaded on first use.

    Args:
        load: ``TrainConfig -> DataBundle`` (None: only what :meth:`put` stored is returned).
    """

    KEYS = ("input_size", "train_fraction", "holdout_fraction", "selection", "seed", "drop_split_duplicates")

    def __init__(self, load: Callable[[TrainConfig], DataBundle] | None):
        self.load, self._data = load, {}

    def _key(self, cfg: TrainConfig) -> str:
        return json.dumps({k: getattr(cfg, k) for k in self.KEYS}, sort_keys=True, default=list)

    def put(self, cfg: TrainConfig, data: DataBundle) -> None:
        self._data[self._key(cfg)] = data

    def get(self, cfg: TrainConfig) -> DataBundle | None:
        key = self._key(cfg)
        if key not in self._data and self.load is not None:
            self._data[key] = self.load(cfg)
        return self._data.get(key)


class RungTrainer:
    """Trains genotypes at the rungs of ``ladder``.

    Args:
        ladder: the study's rungs (:class:`nas.rungs.RungLadder`).
        resume_dir: where a training without its own ``train.resume_dir`` keeps its resume
            checkpoint (a trial retried after a crash resumes from its last finished epoch).
        train_fn: the trainer (None: :func:`nas.train.train_genotype`, looked up at call time).
        load_data_fn: ``TrainConfig -> DataBundle`` for each data fidelity (:class:`DataCache`).
    """

    def __init__(self, ladder: RungLadder, resume_dir: str, train_fn: Callable[..., Any] | None = None,
                 load_data_fn: Callable[[TrainConfig], DataBundle] | None = None):
        self.ladder, self.resume_dir, self.train_fn = ladder, resume_dir, train_fn
        self.data = DataCache(load_data_fn)

    def config(self, rung: int, seed: int) -> TrainConfig:
        """The training config of rung ``rung`` (index into the ladder) with ``seed``."""
        cfg = self.ladder.cfgs[rung]
        if cfg.seed != seed:
            cfg = replace(cfg, seed=seed)
        if cfg.resume_dir is None:
            cfg = replace(cfg, resume_dir=self.resume_dir)
        return cfg

    def train(self, g: Genotype, rung: int, seed: int, on_epoch: Callable[[Any], None] | None = None) -> Any:
        """Train ``g`` at ``rung`` with ``seed``; ``on_epoch`` gets each epoch's record. Returns the
        trainer's result (:class:`nas.train.TrainResult`); its errors propagate."""
        cfg = self.config(rung, seed)
        return (self.train_fn or train_genotype)(g, cfg, self.data.get(cfg), on_epoch=on_epoch)
