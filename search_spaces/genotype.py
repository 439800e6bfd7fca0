"""Genotypes: frozen, typed, serialisable descriptions of an architecture.

One genotype describes one network of a family completely. Every network the
project builds (the two published ones, every point of a search space, every
ablation variant) is made from a genotype, so the genotype is the single source
of truth for building, counting, caching and naming.

A genotype is validated when it is made: a genotype that cannot run raises a
``ValueError`` that names the module, the field and the allowed values before
any tensor is built.

Example:
    >>> from search_spaces import get_genotype
    >>> g = get_genotype("sinet")
    >>> g.stages[1].modules[3].branches
    (BranchSpec(kernel=5, dilation=1, pool=2), BranchSpec(kernel=3, dilation=1, pool=4))
    >>> genotype_from_dict(g.to_dict()) == g
    True

The two families:

* :class:`SINetGenotype` -- SINet (Park et al., "SINet: Extreme Lightweight
  Portrait Segmentation Networks with Spatial Squeeze Modules and Information
  Blocking Decoder", WACV 2020).
* :class:`C3Genotype` -- ExtremeC3Net (Park et al., "ExtremeC3Net: Extreme
  Lightweight Portrait Segmentation Networks using Advanced C3-modules", 2019).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import yaml

__all__ = [
    "BranchSpec",
    "S2ModuleSpec",
    "C3ModuleSpec",
    "SINetStage",
    "C3Stage",
    "SINetGenotype",
    "C3Genotype",
    "Genotype",
    "GateWarning",
    "genotype_from_dict",
    "load_genotype",
    "SINET_DECODERS",
    "C3_DECODERS",
]

SINET_DECODERS = ("information_blocking", "skip", "none")
C3_DECODERS = ("coarse_fine", "none")
_MAX_KERNEL = 15
_MAX_DILATION = 32
_MAX_POOL = 16


class GateWarning(UserWarning):
    """The information-blocking gate is identically zero (1-class output).

    With one output class the softmax confidence is 1 everywhere, so the gate
    ``1 - confidence`` is 0 and the decoder's skip path gets no gradient: the
    release's 1-class Lovasz configuration silently disables information
    blocking (``../shared/REFERENCE.md``, "Pitfall").
    """


def _err(where: str, field_name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{where}: invalid {field_name}={value!r}; allowed: {allowed}")


def _check_int(where: str, name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise _err(where, name, value, rng)


@dataclass(frozen=True)
class BranchSpec:
    """One branch of an S2 module or advanced C3 module.

    Attributes:
        kernel: depthwise kernel size k (odd, 1..15). C3 blocks use the paper's 3.
        dilation: dilation d of the depthwise k x k conv (1 = none). In a C3
            block, d > 1 also sets the concentration kernel 2d-1.
        pool: average-pool (spatial squeeze) factor s of an S2 block; the
            feature map is pooled s x s, convolved, then upsampled x s. Must
            be 1 in C3 blocks.
    """

    kernel: int = 3
    dilation: int = 1
    pool: int = 1

    def check(self, where: str) -> None:
        _check_int(where, "kernel", self.kernel, 1, _MAX_KERNEL)
        if self.kernel % 2 == 0:
            raise _err(where, "kernel", self.kernel, f"odd integers in [1, {_MAX_KERNEL}]")
        _check_int(where, "dilation", self.dilation, 1, _MAX_DILATION)
        _check_int(where, "pool", self.pool, 1, _MAX_POOL)


@dataclass(frozen=True)
class S2ModuleSpec:
    """An S2 module (spatial squeeze module) of SINet.

    A grouped 1x1 conv (``groups = len(branches)``) reduces C_in to C_out/n,
    the channels are shuffled, each of the n S2 blocks takes that same tensor,
    their outputs are concatenated (C_out), an identity residual is added when
    ``residual`` and then BN + PReLU.
    """

    branches: tuple[BranchSpec, ...]
    residual: bool = True


@dataclass(frozen=True)
class C3ModuleSpec:
    """An advanced C3 module of ExtremeC3Net.

    A full 1x1 conv (3x3 stride 2 when ``stride == 2``) reduces C_in to
    C_out // n, n C3 blocks take that same tensor (the first one outputs the
    remainder channels too), concat, residual when ``residual``, BN + PReLU.

    Attributes:
        concentration: use the concentration stage (depthwise (2d-1)x1 and
            1x(2d-1) convs) in front of every dilated branch; ``False`` is the
            naive depthwise dilated conv the C3 paper compares against.
        stride: 1, or 2 for the downsampling variant (no residual allowed).
    """

    branches: tuple[BranchSpec, ...]
    residual: bool = True
    concentration: bool = True
    stride: int = 1


@dataclass(frozen=True)
class SINetStage:
    """One SINet stage: SE separable downsampling block then S2 modules.

    Attributes:
        down_channels: output channels of the stride-2 SE separable block.
        se_reduction: SE reduction r of that block (1 = a single Linear(C, C);
            0 = no squeeze-excite, the SE ablation).
        width: output channels of every S2 module of the stage.
        modules: the S2 modules; the first maps ``down_channels -> width``.
    """

    down_channels: int
    se_reduction: int
    width: int
    modules: tuple[S2ModuleSpec, ...]


@dataclass(frozen=True)
class C3Stage:
    """One ExtremeC3Net stage: an entry module then advanced C3 modules.

    The stage output is BN + PReLU over concat(entry output, last module
    output[, input image avg-pooled to this resolution]).

    Attributes:
        width: output channels of every module of the stage.
        modules: advanced C3 modules; ``modules[0]`` is the entry module
            (``stride == 2`` for a downsampling stage); at least 2 modules.
        inject_input: concatenate the input image pooled to this resolution.
    """

    width: int
    modules: tuple[C3ModuleSpec, ...]
    inject_input: bool = False


_CLASSES: dict[str, type] = {}


def _from_obj(tp: Any, value: Any, where: str) -> Any:
    """Rebuild a (possibly nested) dataclass field value from plain data."""
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where)
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names - {"family"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(names)}")
    hints = _FIELD_TYPES[cls]
    kwargs = {}
    for name, value in data.items():
        if name == "family":
            continue
        tp, is_seq = hints[name]
        sub = f"{where}.{name}"
        if is_seq:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{sub}: expected a list, got {value!r}")
            kwargs[name] = tuple(_from_obj(tp, v, f"{sub}[{i}]") for i, v in enumerate(value))
        else:
            kwargs[name] = _from_obj(tp, value, sub)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise ValueError(f"{where}: {exc}") from None


# field name -> (element type, is a tuple of it); explicit instead of parsing
# string annotations, so the schema is visible in one place.
_FIELD_TYPES: dict[type, dict[str, tuple[Any, bool]]] = {
    BranchSpec: {"kernel": (int, False), "dilation": (int, False), "pool": (int, False)},
    S2ModuleSpec: {"branches": (BranchSpec, True), "residual": (bool, False)},
    C3ModuleSpec: {
        "branches": (BranchSpec, True),
        "residual": (bool, False),
        "concentration": (bool, False),
        "stride": (int, False),
    },
    SINetStage: {
        "down_channels": (int, False),
        "se_reduction": (int, False),
        "width": (int, False),
        "modules": (S2ModuleSpec, True),
    },
    C3Stage: {"width": (int, False), "modules": (C3ModuleSpec, True), "inject_input": (bool, False)},
}


class _GenotypeMixin:
    """Serialisation, hashing and validation shared by both families."""

    family: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate()

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict/list data (YAML/JSON ready), with ``family`` first."""

        def conv(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, (tuple, list)):
                return [conv(v) for v in obj]
            return obj

        return {"family": self.family, **conv(self)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_yaml(self) -> str:
        """YAML text that :func:`load_genotype` reads back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> Path:
        """Write the genotype as YAML to ``path`` and return it."""
        path = Path(path)
        path.write_text(self.to_yaml())
        return path

    def archid(self) -> str:
        """Stable short id (12 hex chars) of the architecture.

        A SHA-1 of the canonical JSON of every field. The input size is a
        fidelity, not part of the genotype: the same network trained at 128
        and 224 has one archid (ids written before the field was removed
        from the genotype are the same).
        """
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def flat_params(self) -> dict[str, Any]:
        """The genotype flattened to ``a.b.0.c -> scalar`` (for MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
                for i, v in enumerate(obj):
                    walk(f"{prefix}.{i}", v)
            else:
                out[prefix] = obj if not isinstance(obj, list) else ",".join(map(str, obj))

        walk("", self.to_dict())
        return out

    # -- validation helpers ------------------------------------------------
    def _check_common(self) -> None:
        _check_int(type(self).__name__, "num_classes", self.num_classes, 1, 1000)  # type: ignore[attr-defined]

    def check_input_size(self, input_size: Sequence[int]) -> tuple[int, int]:
        """Check that the network runs at ``input_size`` = (H, W) pixels and return it as a tuple.

        The genotype describes the architecture only; the input size is a fidelity, passed where a
        network is validated, counted or trained (a search space checks its proposals at the
        fidelity's size, the trainer at ``train.input_size``).

        Raises:
            ValueError: not two integers >= 8, not a multiple of the output stride, a pooling factor
                that does not divide a feature map, or a dilation wider than its feature map; the
                message names ``input_size`` and the module.
        """
        name = type(self).__name__
        size = tuple(input_size) if not isinstance(input_size, (str, bytes)) and hasattr(input_size, "__len__") else ()
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 8 for s in size):
            raise _err(name, "input_size", input_size, "two integers (H, W), each >= 8")
        self._check_size(size)  # type: ignore[attr-defined]
        return size  # type: ignore[return-value]

    def _check_pool(self, where: str, branch: BranchSpec, stride: int, input_size: tuple[int, int]) -> None:
        h, w = input_size
        fh, fw = h // stride, w // stride
        if branch.pool > 1 and (fh % branch.pool or fw % branch.pool):
            ok = [s for s in range(1, _MAX_POOL + 1) if fh % s == 0 and fw % s == 0]
            raise _err(
                where,
                "pool",
                branch.pool,
                f"factors of the {fh}x{fw} feature map at input_size={h}x{w} (stride {stride}): {ok}",
            )


@dataclass(frozen=True)
class SINetGenotype(_GenotypeMixin):
    """A network of the SINet family.

    Layout (shapes for an N x 3 x H x W input): stem CBR 3x3 stride 2 ->
    ``stem_channels`` at H/2; then each stage halves the resolution (H/4,
    H/8) with an SE separable block and runs its S2 modules; BN+PReLU over
    concat(down output, stage output); a 1x1 conv gives the encoder logits
    at H/8. The decoder maps them to N x classes x H x W.

    Attributes:
        stages: exactly two stages (H/4 and H/8); the decoder's skip path
            reads the last module of the first stage.
        decoder: ``information_blocking`` (gated skip), ``skip`` (ungated
            skip, gate = 1) or ``none`` (bilinear x8 upsampling of the
            encoder logits).
        encoder_only: the stage-1 form: return the encoder logits at H/8.

    Raises:
        ValueError: on any field that cannot build a runnable network; the
            message names the module, the field and the allowed values.
    """

    family: ClassVar[str] = "sinet"
    stages: tuple[SINetStage, ...]
    stem_channels: int = 12
    decoder: str = "information_blocking"
    num_classes: int = 2
    encoder_only: bool = False

    def validate(self) -> None:
        """Check every field; see the class docstring for the errors."""
        self._check_common()
        _check_int("SINetGenotype", "stem_channels", self.stem_channels, 1, 4096)
        if self.decoder not in SINET_DECODERS:
            raise _err("SINetGenotype", "decoder", self.decoder, ", ".join(SINET_DECODERS))
        if len(self.stages) != 2:
            raise _err("SINetGenotype", "stages", f"<{len(self.stages)} stages>", "exactly 2 stages (1/4 and 1/8)")
        c_in = self.stem_channels
        for si, stage in enumerate(self.stages):
            where = f"stages[{si}]"
            _check_int(where, "down_channels", stage.down_channels, 1, 4096)
            _check_int(where, "width", stage.width, 1, 4096)
            _check_int(where, "se_reduction", stage.se_reduction, 0, c_in)
            if stage.se_reduction and c_in % stage.se_reduction:
                raise _err(where, "se_reduction", stage.se_reduction, f"divisors of its input channels {c_in}")
            if not stage.modules:
                raise _err(where, "modules", "()", "at least one S2 module")
            m_in = stage.down_channels
            for mi, mod in enumerate(stage.modules):
                mwhere = f"{where}.modules[{mi}]"
                n = len(mod.branches)
                if n < 1:
                    raise _err(mwhere, "branches", "()", "at least one branch")
                # grouped 1x1 reduce: groups = n, C_in -> C_out/n, then shuffle
                if stage.width % n or (stage.width // n) % n or m_in % n:
                    raise _err(
                        mwhere,
                        "width",
                        stage.width,
                        f"widths W with W % {n} == 0 and (W/{n}) % {n} == 0 and input channels {m_in} % {n} == 0 "
                        f"(grouped 1x1 conv with {n} groups)",
                    )
                if mod.residual and m_in != stage.width:
                    raise _err(mwhere, "residual", True, f"False (input {m_in} channels != output {stage.width})")
                for bi, br in enumerate(mod.branches):
                    br.check(f"{mwhere}.branches[{bi}]")
                m_in = stage.width
            c_in = stage.down_channels + stage.width

    def _check_size(self, size: tuple[int, int]) -> None:
        h, w = size
        if h % 8 or w % 8:
            raise _err("SINetGenotype", "input_size", size, "multiples of 8 (the encoder's output stride)")
        for si, stage in enumerate(self.stages):
            for mi, mod in enumerate(stage.modules):
                for bi, br in enumerate(mod.branches):
                    self._check_pool(f"stages[{si}].modules[{mi}].branches[{bi}]", br, 4 * 2**si, size)

    @property
    def warns_zero_gate(self) -> bool:
        """True when information blocking is requested with one class."""
        return self.decoder == "information_blocking" and self.num_classes == 1 and not self.encoder_only


@dataclass(frozen=True)
class C3Genotype(_GenotypeMixin):
    """A network of the ExtremeC3Net (advanced C3 module) family.

    Layout: stem CBR 3x3 stride 2 -> ``stem_channels``, concat with the input
    avg-pooled to H/2, BN+PReLU; then the stages (the published net: a
    stride-2 stage at H/4 with the pooled input injected, then a stride-1
    stage); BN+PReLU over each stage's concat. The ``coarse_fine`` decoder:
    coarse 1x1 conv -> ``head_channels``, BN, bilinear x2; plus, when
    ``detail_branch``, the fine branch from the raw image (3x3 conv stride 2
    -> ``head_channels`` then ``detail_module``); sum, BN+PReLU, bilinear x2,
    1x1 conv -> classes. ``none``: 1x1 classifier at H/4, bilinear x4.

    Raises:
        ValueError: on any field that cannot build a runnable network.
    """

    family: ClassVar[str] = "extremec3net"
    stages: tuple[C3Stage, ...]
    stem_channels: int = 24
    head_channels: int = 24
    detail_branch: bool = True
    detail_module: C3ModuleSpec = field(
        default_factory=lambda: C3ModuleSpec(
            branches=(BranchSpec(dilation=2), BranchSpec(dilation=4), BranchSpec(dilation=8))
        )
    )
    decoder: str = "coarse_fine"
    num_classes: int = 2
    encoder_only: bool = False

    @property
    def output_stride(self) -> int:
        """Encoder output stride: 2 times 2 per stride-2 stage."""
        return 2 * 2 ** sum(1 for s in self.stages if s.modules and s.modules[0].stride == 2)

    def validate(self) -> None:
        """Check every field; see the class docstring for the errors."""
        self._check_common()
        name = "C3Genotype"
        _check_int(name, "stem_channels", self.stem_channels, 1, 4096)
        _check_int(name, "head_channels", self.head_channels, 1, 4096)
        if self.decoder not in C3_DECODERS:
            raise _err(name, "decoder", self.decoder, ", ".join(C3_DECODERS))
        if not self.stages:
            raise _err(name, "stages", "()", "at least one stage")
        if self.detail_branch and self.decoder != "coarse_fine":
            raise _err(name, "detail_branch", True, "False unless decoder='coarse_fine'")
        os_ = self.output_stride
        if self.decoder == "coarse_fine" and os_ != 4:
            raise _err(
                name, "stages", f"<output stride {os_}>", "exactly one stride-2 stage for decoder='coarse_fine' (H/4)"
            )
        c_in = self.stem_channels + 3
        for si, stage in enumerate(self.stages):
            where = f"stages[{si}]"
            _check_int(where, "width", stage.width, 1, 4096)
            if len(stage.modules) < 2:
                raise _err(
                    where, "modules", f"<{len(stage.modules)} modules>", "an entry module plus at least one more"
                )
            m_in = c_in
            for mi, mod in enumerate(stage.modules):
                mwhere = f"{where}.modules[{mi}]"
                if mi > 0 and mod.stride != 1:
                    raise _err(mwhere, "stride", mod.stride, "1 (only the entry module may downsample)")
                self._check_c3_module(mwhere, mod, m_in, stage.width)
                m_in = stage.width
            c_in = 2 * stage.width + (3 if stage.inject_input else 0)
        if self.detail_branch:
            self._check_c3_module("detail_module", self.detail_module, self.head_channels, self.head_channels)
            if self.detail_module.stride != 1:
                raise _err("detail_module", "stride", self.detail_module.stride, "1")

    def _check_size(self, size: tuple[int, int]) -> None:
        h, w = size
        os_ = self.output_stride
        need = max(os_, 4 if self.detail_branch else 1)
        if h % need or w % need:
            raise _err("C3Genotype", "input_size", size, f"multiples of {need} (output stride {os_})")
        stride = 2
        modules = []
        for si, stage in enumerate(self.stages):
            for mi, mod in enumerate(stage.modules):
                stride *= mod.stride
                modules.append((f"stages[{si}].modules[{mi}]", mod, stride))
        if self.detail_branch:
            modules.append(("detail_module", self.detail_module, 2))
        for where, mod, stride in modules:
            fmap = min(size) // stride
            for bi, br in enumerate(mod.branches):
                if br.dilation * (br.kernel - 1) + 1 > 2 * fmap + 1:
                    raise _err(f"{where}.branches[{bi}]", "dilation", br.dilation,
                               f"a receptive field that fits the {fmap}-pixel feature map at input_size={h}x{w}")

    def _check_c3_module(self, where: str, mod: C3ModuleSpec, c_in: int, c_out: int) -> None:
        n = len(mod.branches)
        if n < 1:
            raise _err(where, "branches", "()", "at least one branch")
        if c_out < n:
            raise _err(where, "width", c_out, f"at least the branch count {n}")
        if mod.stride not in (1, 2):
            raise _err(where, "stride", mod.stride, "1 or 2")
        if mod.residual and (c_in != c_out or mod.stride != 1):
            raise _err(where, "residual", True, f"False (input {c_in} -> output {c_out}, stride {mod.stride})")
        for bi, br in enumerate(mod.branches):
            bwhere = f"{where}.branches[{bi}]"
            br.check(bwhere)
            if br.pool != 1:
                raise _err(bwhere, "pool", br.pool, "1 (C3 blocks widen the receptive field by dilation)")

    @property
    def warns_zero_gate(self) -> bool:
        return False


Genotype = Union[SINetGenotype, C3Genotype]
_CLASSES.update({"sinet": SINetGenotype, "extremec3net": C3Genotype})
_FIELD_TYPES[SINetGenotype] = {
    "stages": (SINetStage, True),
    "stem_channels": (int, False),
    "decoder": (str, False),
    "num_classes": (int, False),
    "encoder_only": (bool, False),
}
_FIELD_TYPES[C3Genotype] = {
    "stages": (C3Stage, True),
    "stem_channels": (int, False),
    "head_channels": (int, False),
    "detail_branch": (bool, False),
    "detail_module": (C3ModuleSpec, False),
    "decoder": (str, False),
    "num_classes": (int, False),
    "encoder_only": (bool, False),
}


def genotype_from_dict(data: dict[str, Any], where: str = "genotype") -> Genotype:
    """Build a genotype from plain data (the inverse of ``to_dict``).

    Args:
        data: a mapping with a ``family`` key (``sinet`` or ``extremec3net``). A top-level
            ``input_size`` (written by versions that kept the fidelity in the genotype) is ignored:
            the input size is passed where a network is trained, counted or validated.
        where: a label for error messages (a file name, say).

    Raises:
        ValueError: unknown family or key, wrong type, or an invalid genotype;
            the message names ``where`` and the offending key.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with a 'family' key, got {type(data).__name__}")
    fam = data.get("family")
    if fam not in _CLASSES:
        raise _err(where, "family", fam, ", ".join(_CLASSES))
    data = {k: v for k, v in data.items() if k != "input_size"}
    try:
        return _build(_CLASSES[fam], data, where)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def load_genotype(path: str | Path) -> Genotype:
    """Read a genotype from a YAML (or JSON) file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid YAML or not a valid genotype; the
            message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return genotype_from_dict(data, where=str(path))


def warn_if_zero_gate(genotype: Genotype) -> None:
    """Emit :class:`GateWarning` when the genotype's gate is identically zero."""
    if genotype.warns_zero_gate:
        warnings.warn(
            "information-blocking decoder with num_classes=1: softmax confidence is 1 everywhere, so the gate "
            "1 - confidence is identically 0 and the skip path gets no gradient (the release's 1-class Lovasz "
            "pitfall). Use num_classes=2 or decoder='skip'.",
            GateWarning,
            stacklevel=3,
        )
