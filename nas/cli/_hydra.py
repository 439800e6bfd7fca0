"""Shared glue for the Hydra console scripts.

Errors: a known error (a bad value, a missing file, an unknown name or config key) prints one
line, ``nas-<tool>: error: ...``, on stderr and exits with status 2; ``HYDRA_FULL_ERROR=1``
shows the traceback instead. Other exit statuses: 3 a non-finite training loss (``nas-train``),
130 Ctrl-C.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from nas.config import register_configs

# Keys whose value is a pair; ``input_size=224,224`` on the command line would
# otherwise be read by Hydra as a sweep over two values.
_LIST_KEYS = re.compile(r"^(\+{0,2}(?:[\w.]+\.)?(?:input_size|cost_input_size|studies))=([^\[\]'\"]*,[^\[\]'\"]*)$")


def _rewrite_pairs(argv: list[str]) -> list[str]:
    """``input_size=224,224`` -> ``input_size=[224,224]`` (also ``studies=a,b``)."""
    return [_LIST_KEYS.sub(r"\1=[\2]", a) for a in argv]


TOOLS = {"train": "nas-train", "eval": "nas-eval", "predict": "nas-predict", "search": "nas-search",
         "pareto": "nas-pareto", "ablate": "nas-ablate", "fidelity_study": "nas-fidelity", "import": "nas-import",
         "cost": "nas-cost", "export": "nas-export"}
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ImportError)


def error_message(exc: BaseException) -> str:
    """One line for ``exc`` (a KeyError's message unquoted; OmegaConf's ``full_key``/``object_type`` lines dropped)."""
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.strip().startswith(
        ("full_key:", "object_type=", "reference_type="))]
    return " ".join(lines) or type(exc).__name__


def fail(tool: str, exc: BaseException) -> None:
    """Print ``<tool>: error: <message>`` and exit 2 (re-raise under ``HYDRA_FULL_ERROR=1``)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"{tool}: error: {error_message(exc)}", file=sys.stderr)
    sys.exit(2)


def _check_composes(config_name: str, overrides: list[str], tool: str) -> None:
    """Compose the config once up front, so that an unknown key or option is one line and status 2
    (Hydra itself would print a block and exit 1). Skipped when Hydra flags (``--cfg``, ``-m``) are given."""
    if any(a.startswith("-") for a in overrides):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_module(config_module="nas.conf", version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        fail(tool, exc)


def hydra_app(config_name: str, argv_hook: Callable[[list[str]], list[str]] | None = None
              ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Wrap ``fn(cfg)`` as a console script reading ``nas/conf/<config_name>.yaml``.

    ``input_size=H,W`` is accepted as well as ``input_size=[H,W]``. ``argv_hook`` may rewrite
    the overrides before Hydra reads them (``nas-train`` picks the model family's recipe).
    Known errors (:data:`KNOWN_ERRORS`, and config composition errors) end the command with one
    line and status 2 (see the module docstring).
    """
    tool = TOOLS.get(config_name, f"nas-{config_name}")

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                return fn(cfg)
            except KNOWN_ERRORS as exc:
                fail(tool, exc)

        register_configs()
        app = hydra.main(config_path="pkg://nas.conf", config_name=config_name, version_base="1.3")(task)

        @functools.wraps(fn)
        def main() -> Any:
            args = _rewrite_pairs(sys.argv[1:])
            args = argv_hook(args) if argv_hook else args
            _check_composes(config_name, args, tool)
            sys.argv = [sys.argv[0], *args]
            return app()

        return main

    return wrap


def print_json_line(obj: dict[str, Any]) -> None:
    """The machine-readable last line of every command: one JSON object."""
    print(json.dumps(obj, sort_keys=False, default=str), flush=True)
