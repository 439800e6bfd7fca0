"""ONNX export of a network and its ONNX Runtime latency.

* :func:`export_onnx` -- the network (N x 3 x H x W normalised RGB -> N x K x H x W logits) as an
  ONNX model with a dynamic batch axis, written atomically, with the input it expects recorded as
  metadata (input size, preprocessing, family, archid, class count, torch / onnx versions), and
  checked against PyTorch on real images (max absolute logit difference <= ``atol``).
* :func:`ort_latency_ms` -- median batch-1 latency of an ONNX model under ONNX Runtime's CPU
  execution provider at a fixed thread count, after warm-up; the runtime's version is recorded
  with the figure. This is the latency a phone-style deployment sees; FLOPs are a poor guide to
  it for depthwise-heavy networks (``benchmarks/bench_latency.py`` prints both).

The exporter is torch's dynamo-based ``torch.onnx.export(..., dynamo=True)`` (onnxscript); the
older TorchScript exporter cannot export the SE blocks' dynamic pooling. An export takes
seconds (about 17 s for SINet on one laptop-class core), so a study measures it only for
candidates within every other budget.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas._atomic import atomic_path
from nas.cost import timing_input

__all__ = ["ExportError", "MAX_OPSET", "MIN_OPSET", "check_against_torch", "export_checkpoint", "export_onnx",
           "onnx_metadata", "ort_latency_ms", "ort_session", "real_check_images", "written_opset"]

log = logging.getLogger(__name__)
#: opsets the dynamo exporter writes (torch 2.13 / onnxscript 0.7: 18 and later).
MIN_OPSET, MAX_OPSET = 18, 23


class ExportError(ValueError):
    """An export that cannot be done or does not match PyTorch (the message names the value or file)."""


@contextlib.contextmanager
def _quiet(*names: str):
    """Silence the loggers ``names`` below ERROR (the exporter and its optimiser log every skipped op and
    deduplicated initializer)."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


def written_opset(proto: Any) -> int | None:
    """The default-domain (``ai.onnx``) opset an ONNX ``ModelProto`` declares, or None."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opset(opset: Any) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset={opset!r} cannot be exported; allowed: an integer {MIN_OPSET}..{MAX_OPSET} "
                          "(torch's dynamo ONNX exporter)")
    return opset


def _check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot write ONNX model {path}: folder {parent}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise OSError(f"cannot write ONNX model {path}: it is a folder")
    if not os.access(parent, os.W_OK):
        raise OSError(f"cannot write ONNX model {path}: folder {parent} is not writable")


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int],
    *,
    opset: int = 18,
    metadata: Mapping[str, Any] | None = None,
    check_inputs: torch.Tensor | None = None,
    atol: float = 1e-4,
    max_batch: int = 1024,
) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` (atomically) and check it against PyTorch.

    Args:
        model: a network taking N x 3 x H x W float32 (already preprocessed) and returning
            logits N x K x H x W; exported in eval mode on the CPU.
        input_size: (H, W) pixels of the traced input; the batch axis (input ``image``, output
            ``logits``) is dynamic, 1..``max_batch``.
        opset: ONNX opset, ``MIN_OPSET``..``MAX_OPSET``.
        metadata: string-valued model properties to record (preprocessing, archid, ...); the input
            size, opset and torch / onnx versions are added.
        check_inputs: B x 3 x H x W real (preprocessed) images compared through ONNX Runtime and
            PyTorch; None: a seeded random batch of 2.
        atol: the largest allowed absolute logit difference.

    Returns:
        ``{"path", "opset", "input_size", "max_abs_diff", "check_images", "export_s", "bytes"}``.

    Raises:
        ExportError: an opset outside the exporter's range, an export the exporter refuses, or a
            model whose ONNX logits differ from PyTorch's by more than ``atol`` (the message gives
            the difference); nothing is left at ``path`` then.
        OSError: ``path`` cannot be written (the message names it).
    """
    import onnx

    path = Path(path)
    opset = _check_opset(opset)
    _check_writable(path)
    h, w = int(input_size[0]), int(input_size[1])
    was_training = model.training
    model = model.cpu().eval()
    example = torch.zeros(1, 3, h, w)
    props = {str(k): str(v) for k, v in (metadata or {}).items()}
    props.update(input_size=f"{h},{w}", opset=str(opset), torch_version=torch.__version__,
                 onnx_version=onnx.__version__, input_name="image", output_name="logits", batch="dynamic")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpd:
        raw = Path(tmpd) / "model.onnx"
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    _quiet("torch.onnx", "onnx_ir", "onnxscript"):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(raw), input_names=["image"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},),
                                  dynamo=True, opset_version=opset, external_data=False)
        except Exception as exc:  # the exporter's own error types vary by version
            raise ExportError(f"torch.onnx.export failed at opset={opset}, input {h}x{w}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}") from None
        finally:
            model.train(was_training)
        proto = onnx.load(str(raw))
        written = written_opset(proto)
        if written != opset:  # the exporter falls back to its own opset when a version conversion fails
            raise ExportError(f"opset={opset} requested for {path} but the exporter wrote opset {written} "
                              f"(its conversion to {opset} failed); ask for opset={written}")
        del proto.metadata_props[:]
        for k, v in sorted(props.items()):
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        export_s = time.perf_counter() - t0
        blob = proto.SerializeToString()
        checked = Path(tmpd) / "checked.onnx"
        checked.write_bytes(blob)
        x = check_inputs if check_inputs is not None else torch.randn(
            2, 3, h, w, generator=torch.Generator().manual_seed(0))
        diff = check_against_torch(model, checked, x)
        if not diff <= atol:
            raise ExportError(f"ONNX model for {path} differs from PyTorch by max |logit diff| {diff:.3g} > atol "
                              f"{atol:g} on {len(x)} image(s) at {h}x{w}; not written")
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(blob)
    return {"path": str(path), "opset": opset, "input_size": [h, w], "max_abs_diff": float(diff),
            "check_images": int(len(x)), "export_s": round(export_s, 2), "bytes": len(blob)}


def ort_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (1 inter-op thread).

    Raises:
        FileNotFoundError: no such file. ExportError: not a readable ONNX model (names the file).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{path}: not a model ONNX Runtime can load: {str(exc).splitlines()[0][:300]}") from None


@torch.no_grad()
def check_against_torch(model: nn.Module, onnx_path: str | Path, x: torch.Tensor) -> float:
    """Max absolute difference between ONNX Runtime's and PyTorch's logits for ``x`` (B x 3 x H x W)."""
    sess = ort_session(onnx_path, threads=1)
    was_training = model.training
    model.eval()
    try:
        ref = model(x.float()).numpy()
    finally:
        model.train(was_training)
    out = sess.run(["logits"], {"image": x.float().numpy()})[0]
    if out.shape != ref.shape:
        raise ExportError(f"{onnx_path}: ONNX logits {out.shape} != PyTorch {ref.shape}")
    return float(np.abs(out - ref).max())


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The model properties written by :func:`export_onnx` (``input_size``, ``preprocessing``, ...)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def ort_latency_ms(
    model_or_path: nn.Module | str | Path,
    input_size: tuple[int, int],
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    opset: int = 18,
    inputs: Any = None,
    sessions: int = 1,
) -> dict[str, Any]:
    """Median batch-1 latency (ms) under ONNX Runtime's CPU execution provider, timed on real
    images when given, else on :func:`nas.cost.timing_input` (never zeros: ORT's PReLU is about 4x
    faster on a zero input, so zeros under-report these networks' latency about 2x).

    Args:
        model_or_path: an ONNX file, or a network (exported to a temporary file first, checked
            against PyTorch on a random batch).
        input_size: (H, W) pixels of the timed input.
        threads: ONNX Runtime intra-op threads (recorded with the figure).
        warmup / repeats: untimed runs first, then timed runs (per input image); the median over
            all timed runs is returned.
        inputs: N x 3 x H x W images (array or tensor) to time on, each at batch 1 (None: the
            seeded standard-normal :func:`nas.cost.timing_input`).
        sessions: timed in this many fresh sessions; the median of their medians is returned (one
            session's speed can sit 25% off another's on a shared machine).

    Returns:
        ``{"ort_latency_ms", "ort_sessions_ms", "ort_threads", "ort_version", "ort_provider",
        "ort_repeats", "ort_input"}`` (plus ``export_s`` when a network was exported).

    Raises:
        ExportError, OSError, FileNotFoundError: see :func:`export_onnx` / :func:`ort_session`.
    """
    import onnxruntime as ort

    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpd:
        if isinstance(model_or_path, nn.Module):
            path = Path(tmpd) / "model.onnx"
            extra["export_s"] = export_onnx(model_or_path, path, input_size, opset=opset)["export_s"]
        else:
            path = Path(model_or_path)
        xs = (np.asarray(inputs, np.float32) if inputs is not None
              else timing_input((int(input_size[0]), int(input_size[1]))).numpy())
        per_session = []
        for _ in range(sessions):  # a fresh session each: their speeds differ (allocation, placement)
            sess = ort_session(path, threads)
            times = []
            for i in range(len(xs)):
                x = xs[i : i + 1]
                for _ in range(warmup):
                    sess.run(None, {"image": x})
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    sess.run(None, {"image": x})
                    times.append((time.perf_counter() - t0) * 1e3)
            per_session.append(statistics.median(times))
    return {"ort_latency_ms": statistics.median(per_session), "ort_threads": int(threads),
            "ort_version": ort.__version__, "ort_provider": "CPUExecutionProvider", "ort_repeats": int(repeats),
            "ort_sessions_ms": [round(v, 4) for v in per_session],
            "ort_input": "real images" if inputs is not None else "seeded standard normal", **extra}


def real_check_images(reader: Any, preprocessing: Any, input_size: tuple[int, int], n: int = 4,
                      split: str = "val") -> torch.Tensor:
    """The first ``n`` images of ``split`` of ``reader`` (a :class:`nas.datasets.DatasetReader`) at
    ``input_size``, preprocessed as the network expects: n x 3 x H x W float32.

    Raises:
        FileNotFoundError, ValueError: from the reader (naming the file); ValueError: an empty split.
    """
    ids = reader.split_ids(split)[:n]
    if not ids:
        raise ValueError(f"data set {reader.name}: split {split!r} has no images to check the export on")
    images = np.stack([preprocessing.resize_image(reader.load_image(i)[0], tuple(input_size)) for i in ids])
    return preprocessing.apply(images)


def export_checkpoint(
    checkpoint: str | Path,
    reader: Any,
    output: str | Path | None = None,
    *,
    opset: int = 18,
    input_size: tuple[int, int] | None = None,
    check_images: int = 4,
    atol: float = 1e-4,
    latency_threads: int | None = 1,
) -> dict[str, Any]:
    """Export a checkpoint of ``nas-train`` / ``nas-import`` to ONNX (what ``nas-export`` runs).

    The network's preprocessing (channel order, mean, std, scale, resize), its genotype's family,
    archid and class count and the checkpoint it came from are recorded as metadata. The export is
    checked against PyTorch on ``check_images`` real images of ``reader``'s validation split.

    Args:
        output: the ``.onnx`` path (None: next to the checkpoint, same stem).
        input_size: (H, W) of the traced input (None: the size the checkpoint was trained at);
            checked against the genotype.
        latency_threads: also measure :func:`ort_latency_ms` with this many threads (None: no).

    Returns:
        :func:`export_onnx`'s dict plus ``checkpoint``, ``archid``, ``family``, ``num_classes`` and the
        latency keys.

    Raises:
        FileNotFoundError / ValueError: a bad checkpoint or data file (named); ExportError, OSError:
        see :func:`export_onnx`.
    """
    import json

    from nas.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    g = meta["genotype"]
    size = g.check_input_size(tuple(int(v) for v in (input_size or meta["input_size"])))
    out = Path(output) if output else Path(checkpoint).with_suffix(".onnx")
    x = real_check_images(reader, meta["preprocessing"], size, n=check_images)
    md = {"preprocessing": json.dumps(meta["preprocessing"].to_dict(), sort_keys=True), "family": g.family,
          "archid": g.archid(), "num_classes": g.num_classes, "checkpoint": Path(checkpoint).name,
          "genotype": g.to_json()}
    res = export_onnx(model, out, size, opset=opset, metadata=md, check_inputs=x, atol=atol)
    res.update(checkpoint=str(checkpoint), archid=g.archid(), family=g.family, num_classes=g.num_classes)
    if latency_threads:
        res.update(ort_latency_ms(out, size, threads=latency_threads, inputs=x))
    return res
