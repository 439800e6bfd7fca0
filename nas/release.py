"""Import the authors' released SINet / ExtremeC3Net weights into our networks.

The release (GitHub clovaai/ext_portrait_segmentation, MIT; copies and their README in
``../shared/weights/ext_portrait_segmentation/``) ships two ``state_dict`` files in its own
module names: ``SINet.pth`` (2 classes, 393 entries) and ``ExtremeC3.pth`` (1 class, 405
entries, saved without ``num_batches_tracked``). :func:`release_key_map` is the explicit map
from those names to ours, written as module-prefix pairs (a tensor keeps its suffix, e.g.
``.running_var``); :func:`import_release` applies it with every tensor used exactly once and
every shape checked, and :func:`write_release_checkpoint` writes a project checkpoint that
carries the release's preprocessing (:data:`nas.preprocess.RELEASE`).

Example:
    >>> m = release_key_map("sinet")
    >>> m["encoder.stem.0"], m["decoder.classifier"]
    ('encoder.level1.conv', 'classifier.1')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas.preprocess import RELEASE
from search_spaces import create_model, get_genotype

__all__ = [
    "ReleaseImportError",
    "detect_release_model",
    "import_release",
    "load_release_state",
    "release_key_map",
    "write_release_checkpoint",
]

# A key only one of the two networks has: how a file tells which network it holds.
_SIGNATURE = {"sinet": "encoder.level2_0.conv.1.dense.0.weight", "extremec3net": "encoder.b1.bn.weight"}
# The classifier whose output channels are the number of classes.
_CLASSIFIER = {"sinet": "classifier.1.weight", "extremec3net": "classifier.2.weight"}
# BN step counters: not used by inference; ExtremeC3.pth was saved without them.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class ReleaseImportError(ValueError):
    """A release file that does not match the network it is loaded into.

    The message names the file and lists the offending keys (missing, unexpected, wrong shape).
    """


def _s2_module(ours: str, rel: str, n_branches: int) -> dict[str, str]:
    """SINet S2 module: grouped reduce ``c1``, S2 blocks ``d1, d2``, ``BR``."""
    m = {f"{ours}.reduce": f"{rel}.c1.conv", f"{ours}.br.0": f"{rel}.BR.bn", f"{ours}.br.1": f"{rel}.BR.act"}
    for b in range(n_branches):
        o, r = f"{ours}.branches.{b}", f"{rel}.d{b + 1}"
        m.update(
            {
                f"{o}.depthwise": f"{r}.conv.0",
                f"{o}.bn1": f"{r}.conv.1",
                f"{o}.act": f"{r}.act_conv1x1.0",
                f"{o}.pointwise": f"{r}.act_conv1x1.1",
                f"{o}.bn2": f"{r}.bn",
            }
        )
    return m


def _se_down(ours: str, rel: str, reduction: int) -> dict[str, str]:
    """SINet SE separable downsampling: ``conv.0`` depthwise, ``conv.1.dense`` SE, ``conv.2`` pointwise."""
    dense = 4 if reduction > 1 else 2
    m = {
        f"{ours}.depthwise": f"{rel}.conv.0",
        f"{ours}.pointwise": f"{rel}.conv.2",
        f"{ours}.br.0": f"{rel}.bn",
        f"{ours}.br.1": f"{rel}.act",
    }
    m.update({f"{ours}.se.dense.{i}": f"{rel}.conv.1.dense.{i}" for i in range(dense)})
    return m


def _c3_module(ours: str, rel: str, n_branches: int, br: str) -> dict[str, str]:
    """Advanced C3 module: reduce ``c1``, C3 blocks ``d1..dn`` (same Sequential layout as ours), BR ``br``."""
    m = {f"{ours}.reduce": f"{rel}.c1.conv", f"{ours}.br.0": f"{rel}.{br}bn", f"{ours}.br.1": f"{rel}.{br}act"}
    m.update({f"{ours}.branches.{b}.conv": f"{rel}.d{b + 1}.conv" for b in range(n_branches)})
    return m


def release_key_map(model: str = "sinet") -> dict[str, str]:
    """Our module prefix -> the release's module prefix, for the published network ``model``.

    Covers every parameter and buffer of ``create_model(model)`` (at 1 or 2 classes): a key
    ``<ours>.<suffix>`` is read from ``<release>.<suffix>``.

    Args:
        model: ``sinet`` or ``extremec3net`` (the published EG1800 genotypes).

    Raises:
        ValueError: another model name.
    """
    g = get_genotype(model)
    if model == "sinet":
        m = {
            "encoder.stem.0": "encoder.level1.conv",
            "encoder.stem.1": "encoder.level1.bn",
            "encoder.stem.2": "encoder.level1.act",
        }
        for si, (down, level) in enumerate((("level2_0", "level2"), ("level3_0", "level3"))):
            st = g.stages[si]
            m.update(_se_down(f"encoder.downs.{si}", f"encoder.{down}", st.se_reduction))
            for mi, mod in enumerate(st.modules):
                m.update(_s2_module(f"encoder.stages.{si}.{mi}", f"encoder.{level}.{mi}", len(mod.branches)))
            br = f"encoder.BR{si + 2}"
            m.update({f"encoder.merges.{si}.0": f"{br}.bn", f"encoder.merges.{si}.1": f"{br}.act"})
        m.update(
            {
                "classifier": "encoder.classifier.conv",
                "decoder.bn_low": "bn_3",
                "decoder.skip.0": "level2_C.conv",
                "decoder.skip.1": "level2_C.bn",
                "decoder.skip.2": "level2_C.act",
                "decoder.bn_mid": "bn_2",
                "decoder.classifier": "classifier.1",
            }
        )
        return m
    if model == "extremec3net":
        m = {
            "encoder.stem.0": "encoder.level1.conv",
            "encoder.stem.1": "encoder.level1.bn",
            "encoder.stem.2": "encoder.level1.act",
            "encoder.stem_merge.0": "encoder.b1.bn",
            "encoder.stem_merge.1": "encoder.b1.act",
        }
        # (ours stage, module) -> (release name, its BR prefix): level2_0 keeps a flat bn/act.
        names = {
            (0, 0): ("encoder.level2_0", ""),
            (0, 1): ("encoder.level2.0", "bn."),
            (1, 0): ("encoder.level3_0", "bn."),
        }
        names.update({(1, i + 1): (f"encoder.level3.{i}", "bn.") for i in range(len(g.stages[1].modules) - 1)})
        for si, st in enumerate(g.stages):
            for mi, mod in enumerate(st.modules):
                rel, br = names[(si, mi)]
                m.update(_c3_module(f"encoder.stages.{si}.{mi}", rel, len(mod.branches), br))
            b = f"encoder.b{si + 2}"
            m.update({f"encoder.merges.{si}.0": f"{b}.bn", f"encoder.merges.{si}.1": f"{b}.act"})
        m.update(
            {
                "coarse.0": "upsample.0",
                "coarse.1": "upsample.1",
                "fine.0": "Fine.0.conv",
                "fuse.0": "classifier.0.bn",
                "fuse.1": "classifier.0.act",
                "head": "classifier.2",
            }
        )
        m.update(_c3_module("fine.1", "Fine.1", len(g.detail_module.branches), "bn."))
        return m
    raise ValueError(f"no release key map for model={model!r}; allowed: sinet, extremec3net")


def _map_key(key: str, prefixes: dict[str, str]) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            return ".".join([prefixes[head], *parts[cut:]])
    raise KeyError(f"no release name for our key {key!r} (release_key_map is incomplete)")


def load_release_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a release ``.pth`` (a plain state_dict) with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ReleaseImportError: unreadable (truncated, not a torch file) or not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"release file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, ...: torch raises a zoo of types
        raise ReleaseImportError(f"{path}: not a readable torch file (truncated or corrupt?): {exc}") from None
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        kind = type(blob).__name__
        hint = " (a project checkpoint? use it directly)" if isinstance(blob, dict) and "format" in blob else ""
        raise ReleaseImportError(f"{path}: expected the release's state_dict (name -> tensor), got a {kind}{hint}")
    return dict(blob)


def detect_release_model(state: dict[str, torch.Tensor], where: str = "release file") -> str:
    """``sinet`` or ``extremec3net``, from the key only that network has.

    Raises:
        ReleaseImportError: neither (or both) signature keys present; the message lists some keys.
    """
    found = [m for m, k in _SIGNATURE.items() if k in state]
    if len(found) != 1:
        sample = ", ".join(list(state)[:6])
        raise ReleaseImportError(
            f"{where}: not a released SINet or ExtremeC3Net state_dict (looked for "
            f"{' / '.join(_SIGNATURE.values())}); its first keys: {sample or '<none>'}"
        )
    return found[0]


def _fmt(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def import_release(path: str | Path, model: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build our network and load a released state_dict into it through :func:`release_key_map`.

    Args:
        path: ``SINet.pth`` or ``ExtremeC3.pth`` of the release.
        model: ``sinet`` / ``extremec3net``; ``None`` = detected from the keys. Given, it must
            match the file.

    Returns:
        ``(model, info)``: the network in eval mode (input N x 3 x H x W with the release's
        preprocessing, logits N x K x H x W) and ``{"model", "num_classes", "params", "source"}``.

    Raises:
        FileNotFoundError: no such file.
        ReleaseImportError: unreadable file; a file of the other network; release keys missing,
            unexpected or of the wrong shape (each listed by name).
    """
    path = Path(path)
    state = load_release_state(path)
    found = detect_release_model(state, str(path))
    if model is not None and model != found:
        raise ReleaseImportError(
            f"{path}: this is a released {found} state_dict (key {_SIGNATURE[found]!r}), not {model!r}; "
            f"pass model={found} or the other release file"
        )
    cls_key = _CLASSIFIER[found]
    if cls_key not in state:
        raise ReleaseImportError(f"{path}: missing release key(s): {cls_key} (the classifier, which gives the classes)")
    num_classes = int(state[cls_key].shape[0])
    net = create_model(found, num_classes=num_classes)
    prefixes = release_key_map(found)
    ours = net.state_dict()
    mapping = {k: _map_key(k, prefixes) for k in ours}
    if len(set(mapping.values())) != len(mapping):  # a map that reads one tensor twice is a bug here
        raise AssertionError("release_key_map maps two of our keys onto one release key")
    missing = [r for k, r in mapping.items() if r not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = sorted(set(state) - set(mapping.values()))
    if missing or unexpected:
        parts = ([f"missing release key(s): {_fmt(missing)}"] if missing else []) + (
            [f"unexpected key(s): {_fmt(unexpected)}"] if unexpected else []
        )
        raise ReleaseImportError(
            f"{path}: does not match the released {found} ({num_classes} classes): " + "; ".join(parts)
        )
    bad = [
        f"{r} {tuple(state[r].shape)} (ours {k} {tuple(ours[k].shape)})"
        for k, r in mapping.items()
        if r in state and state[r].shape != ours[k].shape
    ]
    if bad:
        raise ReleaseImportError(f"{path}: tensor shapes do not match the released {found}: {_fmt(bad, 6)}")
    loaded = {k: (state[r] if r in state else torch.zeros_like(ours[k])) for k, r in mapping.items()}
    net.load_state_dict(loaded, strict=True)
    net.eval()
    params = sum(p.numel() for p in net.parameters())
    return net, {"model": found, "num_classes": num_classes, "params": params, "source": str(path)}


def write_release_checkpoint(path: str | Path, output: str | Path, model: str | None = None) -> dict[str, Any]:
    """Import a release file and write it as a project checkpoint (release preprocessing).

    Returns:
        ``{"checkpoint", "model", "num_classes", "params"}`` (the ``nas-import`` JSON line).

    Raises:
        see :func:`import_release`; OSError: ``output`` cannot be written.
    """
    from nas.checkpoint import save_checkpoint

    net, info = import_release(path, model)
    out = save_checkpoint(
        output,
        net.genotype,
        net.state_dict(),
        preprocessing=RELEASE,
        train={"source": "release", "release_file": str(Path(path).resolve())},
        metrics={},
    )
    return {
        "checkpoint": str(out),
        "model": info["model"],
        "num_classes": info["num_classes"],
        "params": info["params"],
    }


def _raw_input_consumers(
    model: torch.nn.Module,
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str, int, str]]]:
    """Layers that read the raw image: ``(conv, bn_after or None)`` and ``(bn, prelu, first slot, next conv)``."""
    g = model.genotype
    if g.family == "sinet":
        return [("encoder.stem.0", "encoder.stem.1")], []
    convs: list[tuple[str, str | None]] = [("encoder.stem.0", "encoder.stem.1")]
    if getattr(model, "fine", None) is not None:
        convs.append(("fine.0", None))
    slots = [("encoder.stem_merge.0", "encoder.stem_merge.1", g.stem_channels, "encoder.stages.0.0.reduce")]
    for si, st in enumerate(g.stages):
        if st.inject_input:
            if si + 1 >= len(g.stages):
                raise ValueError(f"adapt_input: stage {si} injects the input but is the last stage (not supported)")
            slots.append(
                (f"encoder.merges.{si}.0", f"encoder.merges.{si}.1", 2 * st.width, f"encoder.stages.{si + 1}.0.reduce")
            )
    return convs, slots


@torch.no_grad()
def adapt_input(model: torch.nn.Module, src, dst) -> torch.nn.Module:
    """Rewrite, in place, the layers that read the raw image so that ``model`` fed ``dst`` input
    computes what it computed fed ``src`` input (``src``, ``dst``: :class:`nas.preprocess.Preprocessing`).

    Both are per-channel affine maps of the same pixels, ``x_src[c] = a[c] x_dst[perm[c]] + b[c]``:
    a conv reading the image gets its input channels permuted and scaled, its constant offset moved
    into the BN after it (exact away from the zero-padded border; with no BN after it, as in
    ExtremeC3Net's fine branch, the offset is dropped: |b| < 1e-5 for ours vs the release's, whose
    means agree to 0.3 grey levels); a BN reading the pooled image (ExtremeC3Net's input pyramid)
    gets its slots permuted with their running statistics rescaled (exact in eval mode), and the
    conv after it its input channels permuted. Fine-tuning an imported release network with our
    data pipeline (``nas-train ... init=``) starts from this.

    Raises:
        ValueError: a genotype whose raw-image consumers are not known here.
    """
    if src == dst:
        return model
    perm, a, b = dst.affine_from(src)
    mods = dict(model.named_modules())
    for conv_name, bn_name in _raw_input_consumers(model)[0]:
        w = mods[conv_name].weight
        old = w.clone()
        for c in range(3):
            w[:, perm[c]] = old[:, c] * float(a[c])
        if bn_name is not None:
            offset = sum(old[:, c].sum(dim=(1, 2)) * float(b[c]) for c in range(3))
            mods[bn_name].running_mean -= offset
    for bn_name, act_name, start, next_conv in _raw_input_consumers(model)[1]:
        bn, act, nxt = mods[bn_name], mods[act_name], mods[next_conv].weight
        saved = {
            k: t[start : start + 3].clone()
            for k, t in (
                ("g", bn.weight),
                ("be", bn.bias),
                ("m", bn.running_mean),
                ("v", bn.running_var),
                ("p", act.weight),
            )
        }
        nxt_old = nxt[:, start : start + 3].clone()
        for c in range(3):
            j = start + perm[c]
            bn.weight[j], bn.bias[j], act.weight[j] = saved["g"][c], saved["be"][c], saved["p"][c]
            bn.running_mean[j] = (saved["m"][c] - float(b[c])) / float(a[c])
            bn.running_var[j] = (saved["v"][c] + bn.eps) / float(a[c]) ** 2 - bn.eps
            nxt[:, j] = nxt_old[:, c]
    return model
