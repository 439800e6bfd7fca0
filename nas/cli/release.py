"""``nas-import``: the authors' released weights as a project checkpoint (see :mod:`nas.release`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from nas.cli._hydra import hydra_app, print_json_line


@hydra_app("import")
def main(cfg: DictConfig) -> None:
    """Import ``cfg.release``; print a summary line, then one JSON line
    ``{checkpoint, model, num_classes, params}``. Exits 2 with the error on a file that does not match."""
    from nas.release import ReleaseImportError, detect_release_model, load_release_state, write_release_checkpoint

    output = cfg.output
    try:
        if output is None:
            model = cfg.model or detect_release_model(load_release_state(cfg.release), str(cfg.release))
            output = f"runs/import/{model}-release.pt"
        out = write_release_checkpoint(cfg.release, output, cfg.model)
    except (ReleaseImportError, FileNotFoundError) as exc:
        print(f"nas-import: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{cfg.release} -> {out['checkpoint']}: {out['model']}, {out['num_classes']} classes, "
          f"{out['params']:,} parameters, release preprocessing (BGR, mean/std, /255)")
    print_json_line(out)


if __name__ == "__main__":
    main()
