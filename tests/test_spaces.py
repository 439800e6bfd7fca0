"""Search spaces: the published networks are points; draws are valid; config builds them."""

from __future__ import annotations

import optuna
import pytest
from hydra.utils import instantiate

from search_spaces import get_genotype
from search_spaces.spaces import C3Space, JointSpace, SINetSpace
from tests.conftest import compose


@pytest.mark.parametrize("space_name,model", [("sinet", "sinet"), ("extremec3net", "extremec3net"),
                                              ("joint", "sinet"), ("joint", "extremec3net")])
def test_published_networks_are_points_of_the_configured_spaces(space_name: str, model: str) -> None:
    cfg = compose("search", [f"space={space_name}"])
    space = instantiate(cfg.space)
    published = get_genotype(model)
    params = space.params_for(published)
    rebuilt = space.suggest(optuna.trial.FixedTrial(params))
    assert rebuilt == published
    assert rebuilt.archid() == published.archid()


def test_point_outside_the_space_is_named() -> None:
    space = SINetSpace(kernels=(3, 7))
    with pytest.raises(ValueError, match=r"sinet\.s0\.m0\.b1\.kernel=5 is not in the space; candidates: \[3, 7\]"):
        space.params_for(get_genotype("sinet"))


@pytest.mark.parametrize("space", [SINetSpace(input_size=(96, 96)), C3Space(input_size=(96, 96)),
                                   JointSpace([SINetSpace(), C3Space()], input_size=(96, 96))])
def test_random_draws_are_valid_and_respect_candidate_sets(space) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        t = study.ask()
        g = space.suggest(t)  # validated on construction: raises if it could not run
        seen.add(g.archid())
        if g.family == "sinet":
            for st in g.stages:
                for m in st.modules:
                    assert all(b.kernel in (3, 5, 7) and b.pool in (1, 2, 4) and b.dilation in (1, 2, 4)
                               for b in m.branches)
        else:
            for st in g.stages:
                for m in st.modules:
                    assert 2 <= len(m.branches) <= 4
                    ds = [b.dilation for b in m.branches]
                    assert ds == sorted(ds)
        study.tell(t, 0.0)
    assert len(seen) == 40  # a real space, not a constant


def test_single_candidate_is_a_constant_not_a_parameter() -> None:
    space = SINetSpace(kernels=(3,), dilations=(1,), pools=(1,), modules_per_stage=((2,), (8,)),
                       widths=((48,), (96,)), decoders=("information_blocking",))
    trial = optuna.create_study().ask()
    g = space.suggest(trial)
    assert trial.params == {}
    assert g.stages[1].width == 96 and len(g.stages[1].modules) == 8
