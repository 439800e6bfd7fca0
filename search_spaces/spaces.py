"""Search spaces: map an Optuna trial to a genotype.

A :class:`SearchSpace` has one job, ``suggest(trial) -> Genotype``, and its
inverse, ``params_for(genotype) -> dict``, which proves that a genotype (the
published SINet or ExtremeC3Net, say) is a point of the space and lets a study
enqueue it. Candidate sets come from Hydra config (``nas/conf/space/*.yaml``), so
a researcher changes them without touching code.

Parameter names are ``<family>.s<stage>.m<module>.b<branch>.<field>`` (and a
few global ones such as ``sinet.decoder``), so the spaces of both families can
live in one study (:class:`JointSpace`).

Example:
    >>> import optuna
    >>> from search_spaces import get_genotype
    >>> space = SINetSpace()
    >>> fixed = optuna.trial.FixedTrial(space.params_for(get_genotype("sinet")))
    >>> space.suggest(fixed) == get_genotype("sinet")
    True
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

from nas.config import C3SpaceConfig, SINetSpaceConfig

from .genotype import BranchSpec, C3Genotype, C3ModuleSpec, C3Stage, Genotype, S2ModuleSpec, SINetGenotype, SINetStage
from .registry import get_genotype

__all__ = ["SearchSpace", "SINetSpace", "C3Space", "JointSpace"]


def _choice(trial: Any, name: str, choices: Sequence[Any]) -> Any:
    """``suggest_categorical``; a single candidate is a constant, not a parameter."""
    choices = list(choices)
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def _put(out: dict[str, Any], name: str, value: Any, choices: Sequence[Any]) -> None:
    """Inverse of :func:`_choice`: record ``value`` or raise if it is not a candidate."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not in the space; candidates: {choices}")
    if len(choices) > 1:
        out[name] = value


# The defaults of the spaces' arguments are written once, in nas/config.py (also the YAML schema).
_SINET, _C3 = SINetSpaceConfig(), C3SpaceConfig()


class SearchSpace(abc.ABC):
    """A parameterised family of genotypes.

    Args:
        num_classes: output classes of every genotype (1 for the Lovasz loss).
        input_size: (H, W) at which genotypes are validated (the fidelity's).
    """

    family: str
    prefix: str

    def __init__(self, num_classes: int = 2, input_size: Sequence[int] = (224, 224)):
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))

    @abc.abstractmethod
    def suggest(self, trial: Any) -> Genotype:
        """Draw a genotype with ``trial.suggest_categorical`` (Optuna trial or FixedTrial).

        Raises:
            ValueError: the drawn genotype cannot run (see the genotype's validation).
        """

    @abc.abstractmethod
    def params_for(self, genotype: Genotype) -> dict[str, Any]:
        """The trial parameters that give ``genotype``.

        Raises:
            ValueError: the genotype is not a point of this space (names the parameter).
        """

    def _base(self, base: str | Genotype) -> Genotype:
        g = get_genotype(base)
        if g.family != self.family:
            raise ValueError(
                f"{type(self).__name__}.base={base!r} is a {g.family} genotype; "
                f"allowed: a genotype of family {self.family}"
            )
        return g

    def _per_stage(self, **lists: Sequence[Sequence[Any]]) -> list[list[list[Any]]]:
        """One candidate list per stage of the base genotype, or ``ValueError`` naming the key."""
        n = len(self.base.stages)
        for name, v in lists.items():
            if len(v) != n:
                raise ValueError(
                    f"{type(self).__name__}.{name} has {len(v)} entries; allowed: one list per stage ({n})"
                )
        return [[list(x) for x in v] for v in lists.values()]

    def _at_fidelity(self, genotype: Genotype) -> Genotype:
        """``genotype`` once checked at ``self.input_size`` (ValueError naming input_size if it cannot run)."""
        genotype.check_input_size(self.input_size)
        return genotype

    def with_fidelity(self, num_classes: int, input_size: Sequence[int]) -> "SearchSpace":
        """This space at another class count / input size (a shallow copy)."""
        import copy

        other = copy.copy(self)
        other.num_classes, other.input_size = int(num_classes), (int(input_size[0]), int(input_size[1]))
        return other


class SINetSpace(SearchSpace):
    """The SINet family: S2 modules' kernels, dilations, pools; module counts; widths; decoder.

    Args:
        base: genotype providing everything not searched (stem, down
            channels, SE reductions); default the published ``sinet``.
        kernels: candidate depthwise kernel sizes of every S2 block branch.
        dilations / pools: candidates for widening each branch's receptive
            field by dilation and/or average pooling (spatial squeeze).
        branches: S2 blocks per module (the paper: 2).
        modules_per_stage: per stage, candidate module counts.
        widths: per stage, candidate output widths.
        decoders: candidate decoders (gating): information_blocking, skip, none.
    """

    family = "sinet"
    prefix = "sinet"

    def __init__(
        self,
        base: str | Genotype = _SINET.base,
        kernels: Sequence[int] = _SINET.kernels,
        dilations: Sequence[int] = _SINET.dilations,
        pools: Sequence[int] = _SINET.pools,
        branches: int = _SINET.branches,
        modules_per_stage: Sequence[Sequence[int]] = _SINET.modules_per_stage,
        widths: Sequence[Sequence[int]] = _SINET.widths,
        decoders: Sequence[str] = _SINET.decoders,
        num_classes: int = 2,
        input_size: Sequence[int] = (224, 224),
    ):
        super().__init__(num_classes, input_size)
        self.base = self._base(base)
        self.kernels, self.dilations, self.pools = list(kernels), list(dilations), list(pools)
        self.branches = int(branches)
        self.modules_per_stage, self.widths = self._per_stage(modules_per_stage=modules_per_stage, widths=widths)
        self.decoders = list(decoders)

    def suggest(self, trial: Any) -> SINetGenotype:
        p = self.prefix
        stages = []
        for si, base in enumerate(self.base.stages):
            n_mod = _choice(trial, f"{p}.s{si}.modules", self.modules_per_stage[si])
            width = _choice(trial, f"{p}.s{si}.width", self.widths[si])
            mods, m_in = [], base.down_channels
            for mi in range(n_mod):
                brs = tuple(
                    BranchSpec(
                        kernel=_choice(trial, f"{p}.s{si}.m{mi}.b{bi}.kernel", self.kernels),
                        dilation=_choice(trial, f"{p}.s{si}.m{mi}.b{bi}.dilation", self.dilations),
                        pool=_choice(trial, f"{p}.s{si}.m{mi}.b{bi}.pool", self.pools),
                    )
                    for bi in range(self.branches)
                )
                mods.append(S2ModuleSpec(branches=brs, residual=m_in == width))
                m_in = width
            stages.append(SINetStage(base.down_channels, base.se_reduction, width, tuple(mods)))
        decoder = _choice(trial, f"{p}.decoder", self.decoders)
        return self._at_fidelity(SINetGenotype(
            stages=tuple(stages),
            stem_channels=self.base.stem_channels,
            decoder=decoder,
            num_classes=self.num_classes,
        ))

    def params_for(self, genotype: Genotype) -> dict[str, Any]:
        if not isinstance(genotype, SINetGenotype):
            raise ValueError(f"not a sinet genotype: family={genotype.family}")
        p, out = self.prefix, {}
        for si, st in enumerate(genotype.stages):
            _put(out, f"{p}.s{si}.modules", len(st.modules), self.modules_per_stage[si])
            _put(out, f"{p}.s{si}.width", st.width, self.widths[si])
            for mi, m in enumerate(st.modules):
                if len(m.branches) != self.branches:
                    raise ValueError(f"{p}.s{si}.m{mi}: {len(m.branches)} branches; the space has {self.branches}")
                for bi, b in enumerate(m.branches):
                    _put(out, f"{p}.s{si}.m{mi}.b{bi}.kernel", b.kernel, self.kernels)
                    _put(out, f"{p}.s{si}.m{mi}.b{bi}.dilation", b.dilation, self.dilations)
                    _put(out, f"{p}.s{si}.m{mi}.b{bi}.pool", b.pool, self.pools)
        _put(out, f"{p}.decoder", genotype.decoder, self.decoders)
        return out


class C3Space(SearchSpace):
    """The ExtremeC3Net family: branch counts and dilations of every advanced C3 module.

    Args:
        base: genotype providing what is not searched (stem, widths' layout,
            strides, input injection); default the published ``extremec3net``.
        branches: candidate branch counts per advanced C3 module.
        dilations: candidate dilation rates per branch (sorted within a module,
            so permutations of one module are one point).
        modules_per_stage: per stage, candidate module counts (entry included).
        widths: per stage, candidate widths.
        concentration: candidates for the concentration stage (all modules).
        detail_branch: candidates for the fine (detail) branch.
    """

    family = "extremec3net"
    prefix = "c3"

    def __init__(
        self,
        base: str | Genotype = _C3.base,
        branches: Sequence[int] = _C3.branches,
        dilations: Sequence[int] = _C3.dilations,
        modules_per_stage: Sequence[Sequence[int]] = _C3.modules_per_stage,
        widths: Sequence[Sequence[int]] = _C3.widths,
        concentration: Sequence[bool] = _C3.concentration,
        detail_branch: Sequence[bool] = _C3.detail_branch,
        num_classes: int = 2,
        input_size: Sequence[int] = (224, 224),
    ):
        super().__init__(num_classes, input_size)
        self.base = self._base(base)
        self.branches, self.dilations = list(branches), sorted(dilations)
        self.modules_per_stage, self.widths = self._per_stage(modules_per_stage=modules_per_stage, widths=widths)
        self.concentration, self.detail_branch = list(concentration), list(detail_branch)

    def _module(self, trial: Any, name: str, residual: bool, stride: int, concentration: bool) -> C3ModuleSpec:
        n = _choice(trial, f"{name}.branches", self.branches)
        ds = sorted(_choice(trial, f"{name}.b{bi}.dilation", self.dilations) for bi in range(n))
        return C3ModuleSpec(tuple(BranchSpec(dilation=d) for d in ds), residual, concentration, stride)

    def suggest(self, trial: Any) -> C3Genotype:
        p = self.prefix
        conc = _choice(trial, f"{p}.concentration", self.concentration)
        stages, c_in = [], self.base.stem_channels + 3
        for si, base in enumerate(self.base.stages):
            n_mod = _choice(trial, f"{p}.s{si}.modules", self.modules_per_stage[si])
            width = _choice(trial, f"{p}.s{si}.width", self.widths[si])
            entry = base.modules[0]
            mods = [self._module(trial, f"{p}.s{si}.m0", entry.stride == 1 and c_in == width, entry.stride, conc)]
            mods += [self._module(trial, f"{p}.s{si}.m{mi}", True, 1, conc) for mi in range(1, n_mod)]
            stages.append(C3Stage(width=width, modules=tuple(mods), inject_input=base.inject_input))
            c_in = 2 * width + (3 if base.inject_input else 0)
        detail = _choice(trial, f"{p}.detail_branch", self.detail_branch)
        detail_module = self._module(trial, f"{p}.detail", True, 1, conc) if detail else self.base.detail_module
        return self._at_fidelity(C3Genotype(
            stages=tuple(stages),
            stem_channels=self.base.stem_channels,
            head_channels=self.base.head_channels,
            detail_branch=detail,
            detail_module=detail_module,
            decoder=self.base.decoder,
            num_classes=self.num_classes,
        ))

    def params_for(self, genotype: Genotype) -> dict[str, Any]:
        if not isinstance(genotype, C3Genotype):
            raise ValueError(f"not an extremec3net genotype: family={genotype.family}")
        p, out = self.prefix, {}
        concs = {m.concentration for st in genotype.stages for m in st.modules}
        if len(concs) != 1:
            raise ValueError(f"{p}.concentration: mixed per-module values; the space sets one for all modules")
        _put(out, f"{p}.concentration", concs.pop(), self.concentration)

        def module(name: str, m: C3ModuleSpec) -> None:
            _put(out, f"{name}.branches", len(m.branches), self.branches)
            ds = [b.dilation for b in m.branches]
            if ds != sorted(ds):
                raise ValueError(f"{name}: dilations {ds} are not ascending; the space sorts them")
            for bi, d in enumerate(ds):
                _put(out, f"{name}.b{bi}.dilation", d, self.dilations)

        for si, st in enumerate(genotype.stages):
            _put(out, f"{p}.s{si}.modules", len(st.modules), self.modules_per_stage[si])
            _put(out, f"{p}.s{si}.width", st.width, self.widths[si])
            for mi, m in enumerate(st.modules):
                module(f"{p}.s{si}.m{mi}", m)
        _put(out, f"{p}.detail_branch", genotype.detail_branch, self.detail_branch)
        if genotype.detail_branch:
            module(f"{p}.detail", genotype.detail_module)
        return out


class JointSpace(SearchSpace):
    """Both families in one study: ``family`` is a parameter, then that family's space."""

    family = "joint"
    prefix = ""

    def __init__(self, spaces: Sequence[SearchSpace], num_classes: int = 2, input_size: Sequence[int] = (224, 224)):
        super().__init__(num_classes, input_size)
        self.spaces = {s.family: s.with_fidelity(num_classes, input_size) for s in spaces}

    def with_fidelity(self, num_classes: int, input_size: Sequence[int]) -> "JointSpace":
        return JointSpace(list(self.spaces.values()), num_classes, input_size)

    def suggest(self, trial: Any) -> Genotype:
        fam = _choice(trial, "family", list(self.spaces))
        return self.spaces[fam].suggest(trial)

    def params_for(self, genotype: Genotype) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "family", genotype.family, list(self.spaces))
        out.update(self.spaces[genotype.family].params_for(genotype))
        return out
