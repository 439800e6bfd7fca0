"""``nas-cost``: print every cost figure of a network, then one JSON line."""

from __future__ import annotations

from omegaconf import DictConfig

from nas.cli._hydra import hydra_app, print_json_line


def format_cost_table(name: str, report: dict, counters: dict[str, str]) -> str:
    """A plain-text table: figure, value, counter that made it."""
    rows = [(k, report[k], counters[k]) for k in counters if report.get(k) is not None]
    width = max(len(k) for k, _, _ in rows)
    lines = [f"cost of {name} at 1x3x{report['input_size'][0]}x{report['input_size'][1]}"]
    for k, v, c in rows:
        val = f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"
        lines.append(f"  {k:<{width}}  {val:>15}  {c}")
    if report.get("latency_threads"):
        lines.append(f"  (latency with {report['latency_threads']} torch thread(s))")
    if report.get("ort_version"):
        lines.append(f"  (ONNX Runtime {report['ort_version']}, {report['ort_threads']} thread(s))")
    return "\n".join(lines)


@hydra_app("cost")
def main(cfg: DictConfig) -> None:
    from nas.cost import COUNTERS, cost_report
    from search_spaces import create_model, list_models, model_info

    if cfg.model == "list":
        for n in list_models():
            print(f"{n:<24} {model_info(n)['doc']}")
        return
    model = create_model(str(cfg.model), num_classes=cfg.num_classes)
    size = model.genotype.check_input_size(tuple(cfg.input_size))
    rep = cost_report(
        model, size, fvcore=cfg.fvcore, ptflops=cfg.ptflops, latency=cfg.latency, threads=cfg.latency_threads,
        ort=cfg.ort_latency,
    ).as_dict()
    print(format_cost_table(str(cfg.model), rep, COUNTERS))
    keys = ["params", "conv_macs", "fvcore_total", "ptflops_pytorch", "ptflops_aten", "latency_ms", "ort_latency_ms",
            "ort_version"]
    out = {k: rep[k] for k in keys}
    out.update(model=str(cfg.model), archid=model.genotype.archid(), input_size=list(size),
               num_classes=model.genotype.num_classes, latency_threads=rep["latency_threads"])
    print_json_line(out)


if __name__ == "__main__":
    main()
