"""Model registry: one name, one genotype, one constructor (in the spirit of timm).

A registered name maps to a function returning a frozen genotype; a family
name maps to the network class that builds that genotype. Hydra configs, the
study, the ablation engine and the tests all build networks through
:func:`create_model`.

Example:
    >>> from search_spaces import create_model, list_models
    >>> list_models("sinet*")
    ['sinet', 'sinet_encoder']
    >>> model = create_model("sinet", num_classes=1)  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path
from typing import Any, Callable

from .genotype import Genotype, load_genotype

__all__ = ["register_model", "register_family", "list_models", "get_genotype", "create_model", "model_info"]

_MODELS: dict[str, Callable[[], Genotype]] = {}
_MODEL_FAMILY: dict[str, str] = {}
_FAMILIES: dict[str, type] = {}


def register_model(family: str) -> Callable[[Callable[[], Genotype]], Callable[[], Genotype]]:
    """Decorator: register ``fn`` (returning a genotype) under ``fn.__name__``.

    Re-registering a name warns and replaces the entry (as timm does).
    """

    def wrap(fn: Callable[[], Genotype]) -> Callable[[], Genotype]:
        name = fn.__name__
        if name in _MODELS:
            warnings.warn(f"model {name!r} registered twice; the later definition wins", stacklevel=2)
        _MODELS[name] = fn
        _MODEL_FAMILY[name] = family
        return fn

    return wrap


def register_family(family: str) -> Callable[[type], type]:
    """Class decorator: the network class that builds genotypes of ``family``."""

    def wrap(cls: type) -> type:
        _FAMILIES[family] = cls
        return cls

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict[str, str]:
    """``{"name", "family", "doc"}`` of a registered name (KeyError if unknown)."""
    return {"name": name, "family": _MODEL_FAMILY[name], "doc": (_MODELS[name].__doc__ or "").strip()}


def get_genotype(model: str | Path | Genotype, **overrides: Any) -> Genotype:
    """Resolve a registered name, a YAML/JSON genotype file or a genotype.

    Args:
        model: a name from :func:`list_models`, a path to a genotype file, or
            a genotype.
        **overrides: top-level genotype fields to replace (``num_classes``,
            ``decoder``, ``encoder_only``...); ``None`` values are ignored.
            The input size is not one: check it with ``genotype.check_input_size``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones),
            an unknown override key (``input_size`` included), or an invalid resulting genotype.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(model, (str, Path)):
        s = str(model)
        if s in _MODELS:
            g = _MODELS[s]()
        elif s.endswith((".yaml", ".yml", ".json")) or Path(s).exists():
            g = load_genotype(s)
        else:
            raise ValueError(
                f"unknown model {s!r}; registered: {', '.join(list_models())} (or a path to a .yaml genotype)"
            )
    else:
        g = model
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "input_size" in overrides:
        raise ValueError("input_size is a fidelity, not a genotype field: pass it where the network is trained, "
                         "counted or validated (genotype.check_input_size(size), train.input_size)")
    if overrides:
        allowed = set(g.to_dict()) - {"family"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise ValueError(f"unknown genotype override(s) {bad}; allowed: {sorted(allowed)}")
        g = g.replace(**overrides)
    return g


def create_model(model: str | Path | Genotype, **overrides: Any):
    """Build the network for a name, genotype file or genotype.

    Returns:
        A :class:`~search_spaces.base.PortraitSegModel` (N x 3 x H x W ->
        N x K x H x W logits; H/stride for ``encoder_only``).

    Raises:
        ValueError: see :func:`get_genotype`.
    """
    g = get_genotype(model, **overrides)
    return _FAMILIES[g.family](g)
