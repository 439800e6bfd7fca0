"""The fidelity ladder: named rungs, each a plain config in ``nas/conf/fidelity/<name>.yaml``.

A rung is a set of training overrides (``epochs``, ``input_size``,
``train_fraction``, ``augment``, ``schedule``, ``lr``, ...) on top of the
recipe: a researcher adds a rung by adding a YAML file, no code. The same
files are Hydra's ``fidelity`` config group (``nas-train fidelity=session``),
the rungs of ``nas-fidelity`` and of multi-fidelity searches.

Example:
    >>> "search" in rung_names() and "session" in rung_names()
    True
    >>> load_rung("search")["epochs"]
    4
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RungLadder", "build_ladder", "load_rung", "rung_config", "rung_names"]


def _rung_dir() -> Path:
    return Path(str(resources.files("nas.conf") / "fidelity"))


def rung_names() -> list[str]:
    """The shipped rungs (the files of ``nas/conf/fidelity/``), sorted by name."""
    return sorted(p.stem for p in _rung_dir().glob("*.yaml"))


def load_rung(name: str) -> dict[str, Any]:
    """The training overrides of rung ``name`` (a shipped name or a path to a ``.yaml``).

    Raises:
        FileNotFoundError: no such rung (the message lists the shipped ones).
        ValueError: the file is not a YAML mapping (the message names it).
    """
    p = Path(name) if str(name).endswith((".yaml", ".yml")) else _rung_dir() / f"{name}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"fidelity rung {name!r} not found ({p}); shipped rungs: {rung_names()}")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a mapping of train keys, got {type(d).__name__}")
    return d


def rung_config(base: Any, name: str, **changes: Any) -> Any:
    """``base`` at rung ``name`` (then ``changes``, e.g. ``seed=1``).

    Raises:
        FileNotFoundError, ValueError: from :func:`load_rung` / :func:`nas.config.merge_layers`,
            naming the rung file.
    """
    from nas.config import merge_layers

    cfg = merge_layers(base, load_rung(name), where=f"fidelity/{name}")
    return replace(cfg, **changes) if changes else cfg


@dataclass(frozen=True)
class RungLadder:
    """The rungs one study trains at.

    Attributes:
        names: rung names; the first ``n_sched`` are the schedule (candidates are promoted
            through them, cheapest first), a confirmation rung outside it comes last.
        cfgs: the training config at each rung (the recipe with the rung's file applied).
        n_sched: how many of ``names`` the schedule promotes through.
        confirm_index: index of the confirmation rung in ``names`` (None: each member's own).
        seed: the study's training seed (confirmation seeds are ``seed + 1 ...``).
    """

    names: list[str]
    cfgs: list[Any]
    n_sched: int
    confirm_index: int | None
    seed: int

    def fidelity_json(self) -> str:
        """The training fidelity as canonical JSON: one rung's ``TrainConfig.fidelity()``, or
        ``{rung name: fidelity}`` for several (the study's ``fidelity`` attribute)."""
        import json

        if len(self.names) == 1:
            return json.dumps(self.cfgs[0].fidelity(), sort_keys=True)
        return json.dumps({n: c.fidelity() for n, c in zip(self.names, self.cfgs)}, sort_keys=True)

    def schedule(self) -> dict[str, Any]:
        """How to rebuild the schedule from storage (the study's ``schedule`` attribute, read by
        :func:`nas.points.stored_front` and ``nas-pareto``)."""
        return {"rung_names": self.names, "n_sched": self.n_sched, "seed": self.seed,
                "confirm_index": self.confirm_index}


def build_ladder(base: Any, rungs: list[str], confirm_rung: str | None = None, *, seed: int = 0,
                 base_is_rung0: bool = False) -> RungLadder:
    """The :class:`RungLadder` of ``rungs`` on top of ``base`` (a :class:`nas.config.TrainConfig`).

    ``base_is_rung0``: a single-fidelity study whose one rung is ``base`` itself (named
    ``rungs[0]``, the composed fidelity), not a rung file applied to it.

    Raises:
        FileNotFoundError, ValueError: an unknown rung or a bad rung file (:func:`rung_config`).
    """
    names = list(rungs)
    cfgs = [base] if base_is_rung0 else [rung_config(base, n) for n in names]
    n_sched = len(names)
    confirm_index = None
    if confirm_rung:
        if confirm_rung not in names:
            names.append(confirm_rung)
            cfgs.append(rung_config(base, confirm_rung))
        confirm_index = names.index(confirm_rung)
    return RungLadder(names, cfgs, n_sched, confirm_index, seed)
