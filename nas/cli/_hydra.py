"""Shared glue for the Hydra console scripts."""

from __future__ import annotations

import functools
import json
import re
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

# Keys whose value is a pair; ``input_size=224,224`` on the command line would
# otherwise be read by Hydra as a sweep over two values.
_LIST_KEYS = re.compile(r"^(\+{0,2}(?:[\w.]+\.)?(?:input_size|cost_input_size|studies))=([^\[\]'\"]*,[^\[\]'\"]*)$")


def _rewrite_pairs(argv: list[str]) -> list[str]:
    """``input_size=224,224`` -> ``input_size=[224,224]`` (also ``studies=a,b``)."""
    return [_LIST_KEYS.sub(r"\1=[\2]", a) for a in argv]


def hydra_app(config_name: str, argv_hook: Callable[[list[str]], list[str]] | None = None
              ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Wrap ``fn(cfg)`` as a console script reading ``conf/<config_name>.yaml``.

    ``input_size=H,W`` is accepted as well as ``input_size=[H,W]``. ``argv_hook`` may rewrite
    the overrides before Hydra reads them (``nas-train`` picks the model family's recipe).
    """

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        app = hydra.main(config_path="pkg://conf", config_name=config_name, version_base="1.3")(fn)

        @functools.wraps(fn)
        def main() -> Any:
            args = _rewrite_pairs(sys.argv[1:])
            sys.argv = [sys.argv[0], *(argv_hook(args) if argv_hook else args)]
            return app()

        return main

    return wrap


def print_json_line(obj: dict[str, Any]) -> None:
    """The machine-readable last line of every command: one JSON object."""
    print(json.dumps(obj, sort_keys=False, default=str), flush=True)
