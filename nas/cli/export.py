"""``nas-export``: a checkpoint as an ONNX model, checked against PyTorch, with its ONNX Runtime latency."""

from __future__ import annotations

from omegaconf import DictConfig

from nas.cli._hydra import hydra_app, print_json_line


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    """Export ``cfg.checkpoint`` (:func:`nas.export.export_checkpoint`); print a summary, then one JSON line."""
    from nas.datasets import data_source
    from nas.export import export_checkpoint

    size = tuple(cfg.input_size) if cfg.input_size else None
    out = export_checkpoint(cfg.checkpoint, data_source(cfg.data).reader, cfg.output, opset=int(cfg.opset),
                            input_size=size, check_images=int(cfg.check_images), atol=float(cfg.atol),
                            latency_threads=int(cfg.latency_threads) or None)
    h, w = out["input_size"]
    lat = (f"; ONNX Runtime {out['ort_version']} latency {out['ort_latency_ms']:.2f} ms (batch 1, "
           f"{out['ort_threads']} thread(s))" if "ort_latency_ms" in out else "")
    print(f"{cfg.checkpoint} -> {out['path']}: opset {out['opset']}, {h}x{w}, dynamic batch; max |logit diff| vs "
          f"PyTorch {out['max_abs_diff']:.2e} on {out['check_images']} real image(s){lat}")
    print_json_line(out)


if __name__ == "__main__":
    main()
