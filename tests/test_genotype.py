"""Genotypes: round trips, stable ids, validation errors, random valid points."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import (
    BranchSpec,
    C3Genotype,
    C3ModuleSpec,
    C3Stage,
    GateWarning,
    S2ModuleSpec,
    SINetGenotype,
    SINetStage,
    create_model,
    genotype_from_dict,
    get_genotype,
    load_genotype,
)


@pytest.mark.parametrize("name", ["sinet", "extremec3net", "sinet_encoder", "extremec3net_encoder"])
def test_round_trip_yaml_json(name: str, tmp_path) -> None:
    g = get_genotype(name)
    assert genotype_from_dict(yaml.safe_load(g.to_yaml())) == g
    assert genotype_from_dict(json.loads(g.to_json())) == g
    assert load_genotype(g.save(tmp_path / "g.yaml")) == g
    assert load_genotype(g.save(tmp_path / "g.yaml")).archid() == g.archid()


def test_archid_is_stable_and_files_with_a_fidelity_still_load() -> None:
    # Literal values: a changed hash silently orphans every cached result and MLflow tag.
    assert get_genotype("sinet").archid() == "3a12cd809870"
    assert get_genotype("extremec3net").archid() == "9b3d4e3bfed1"
    assert get_genotype("sinet", num_classes=1).archid() != "3a12cd809870"
    # genotype files and checkpoints written when the genotype carried its input size
    legacy = {**get_genotype("sinet").to_dict(), "input_size": [128, 128]}
    assert genotype_from_dict(legacy) == get_genotype("sinet")
    assert genotype_from_dict(legacy).archid() == "3a12cd809870"
    assert "input_size" not in get_genotype("sinet").to_dict()


def test_input_size_is_checked_where_it_is_used_not_stored() -> None:
    g = get_genotype("sinet")
    assert g.check_input_size([96, 128]) == (96, 128)
    with pytest.raises(ValueError, match=r"invalid input_size=\(100, 100\); allowed: multiples of 8"):
        g.check_input_size((100, 100))
    with pytest.raises(ValueError, match=r"invalid input_size=.*two integers \(H, W\), each >= 8"):
        g.check_input_size("224")
    with pytest.raises(ValueError, match=r"invalid input_size=\(224,\)"):
        g.check_input_size((224,))
    # the published SINet's pool-4 branches need H/8 divisible by 4: 224 -> 28 yes, 96 -> 12 yes, 80 -> 10 no
    with pytest.raises(ValueError, match=r"branches\[1\]: invalid pool=4; allowed: factors of the 10x10"):
        g.check_input_size((80, 80))
    with pytest.raises(ValueError, match=r"input_size is a fidelity, not a genotype field"):
        get_genotype("sinet", input_size=(224, 224))
    c3 = get_genotype("extremec3net")
    assert c3.check_input_size((64, 64)) == (64, 64)
    with pytest.raises(ValueError, match=r"C3Genotype: invalid input_size=\(66, 66\); allowed: multiples of 4"):
        c3.check_input_size((66, 66))
    with pytest.raises(ValueError, match=r"input size 66x66 not allowed by this genotype"):
        create_model(c3)(torch.zeros(1, 3, 66, 66))


def test_flat_params_are_scalars() -> None:
    flat = get_genotype("sinet").flat_params()
    assert flat["stages.1.modules.3.branches.1.pool"] == 4
    assert flat["decoder"] == "information_blocking"
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


@pytest.mark.parametrize(
    "mutate,match",
    [
        (
            lambda d: d["stages"][1]["modules"][2]["branches"][1].update(pool=3),
            r"stages\[1\]\.modules\[2\]\.branches\[1\]: invalid pool=3; allowed: factors of the 28x28",
        ),
        (lambda d: d.update(decoder="unet"), r"invalid decoder='unet'; allowed: information_blocking, skip, none"),
        (
            lambda d: d["stages"][0].update(width=50),
            r"stages\[0\]\.modules\[0\]: invalid width=50; allowed: .*2 groups",
        ),
        (
            lambda d: d["stages"][0]["modules"][0].update(residual=True),
            r"stages\[0\]\.modules\[0\]: invalid residual=True",
        ),
        (lambda d: d["stages"][1]["modules"][0]["branches"][0].update(kernel=4), r"invalid kernel=4; allowed: odd"),
        (lambda d: d["stages"][0].update(colour=1), r"unknown key\(s\) \['colour'\] for SINetStage"),
        (lambda d: d.update(family="unet"), r"invalid family='unet'"),
        (lambda d: d.update(num_classes=0), r"invalid num_classes=0"),
    ],
)
def test_invalid_sinet_genotypes_name_module_field_and_allowed(mutate, match) -> None:
    d = get_genotype("sinet").to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):  # invalid at any size, or at the papers' 224 x 224
        genotype_from_dict(d).check_input_size((224, 224))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d["stages"][1]["modules"][1].update(stride=2), r"stages\[1\]\.modules\[1\]: invalid stride=2"),
        (lambda d: d["stages"][0]["modules"][1]["branches"][0].update(pool=2), r"invalid pool=2; allowed: 1"),
        (lambda d: d.update(decoder="none"), r"invalid detail_branch=True"),
        (lambda d: d["stages"][1].update(modules=d["stages"][1]["modules"][:1]), r"stages\[1\]: invalid modules"),
        (
            lambda d: d["stages"][1]["modules"][0].update(residual=True),
            r"invalid residual=True; allowed: False \(input 99",
        ),
    ],
)
def test_invalid_c3_genotypes(mutate, match) -> None:
    d = get_genotype("extremec3net").to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        genotype_from_dict(d)


def test_invalid_yaml_file_names_the_file(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("family: sinet\nstages: [\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_genotype(p)
    d = get_genotype("sinet").to_dict()
    d["decoder"] = "gated"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r"bad\.yaml.*decoder='gated'"):
        create_model(str(p))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_genotype(tmp_path / "missing.yaml")


# ---- property tests: random valid genotypes build, run and round-trip -------------------------

SIZES = st.sampled_from([(32, 32), (64, 32), (64, 96)])


@st.composite
def sinet_genotypes(draw) -> tuple[SINetGenotype, tuple[int, int]]:
    h, w = draw(SIZES)
    stages = []
    for si, stride in enumerate((4, 8)):
        n = draw(st.integers(1, 3))
        width = n * n * draw(st.integers(1, 3))
        pools = [p for p in (1, 2, 4) if (h // stride) % p == 0 and (w // stride) % p == 0]
        mods = []
        for mi in range(draw(st.integers(1, 3))):
            branches = tuple(
                BranchSpec(
                    kernel=draw(st.sampled_from([1, 3, 5, 7])),
                    dilation=draw(st.sampled_from([1, 2])),
                    pool=draw(st.sampled_from(pools)),
                )
                for _ in range(n)
            )
            down = n * draw(st.integers(1, 6))
            mods.append((branches, mi > 0 or down == width))
        down = n * draw(st.integers(1, 6))
        mods = tuple(S2ModuleSpec(b, residual=(mi > 0) or down == width) for mi, (b, _) in enumerate(mods))
        c_in = 8 if si == 0 else stages[-1].down_channels + stages[-1].width
        r = draw(st.sampled_from([d for d in (1, 2, 4) if c_in % d == 0]))
        stages.append(SINetStage(down_channels=down, se_reduction=r, width=width, modules=mods))
    return SINetGenotype(
        stages=tuple(stages),
        stem_channels=8,
        decoder=draw(st.sampled_from(["information_blocking", "skip", "none"])),
        num_classes=draw(st.sampled_from([1, 2, 3])),
        encoder_only=draw(st.booleans()),
    ), (h, w)


@st.composite
def c3_genotypes(draw) -> tuple[C3Genotype, tuple[int, int]]:
    h, w = draw(SIZES)

    def module(residual: bool, stride: int = 1) -> C3ModuleSpec:
        n = draw(st.integers(1, 4))
        return C3ModuleSpec(
            branches=tuple(BranchSpec(dilation=draw(st.integers(1, 4))) for _ in range(n)),
            residual=residual,
            concentration=draw(st.booleans()),
            stride=stride,
        )

    w1, w2 = draw(st.integers(4, 20)), draw(st.integers(4, 20))
    stages = [
        C3Stage(
            width=w1,
            inject_input=draw(st.booleans()),
            modules=(module(False, 2),) + tuple(module(True) for _ in range(draw(st.integers(1, 2)))),
        )
    ]
    if draw(st.booleans()):
        stages.append(
            C3Stage(width=w2, modules=(module(False),) + tuple(module(True) for _ in range(draw(st.integers(1, 2)))))
        )
    decoder = draw(st.sampled_from(["coarse_fine", "none"]))
    return C3Genotype(
        stages=tuple(stages),
        stem_channels=8,
        head_channels=8,
        decoder=decoder,
        detail_branch=decoder == "coarse_fine" and draw(st.booleans()),
        detail_module=module(True),
        num_classes=draw(st.sampled_from([1, 2])),
        encoder_only=draw(st.booleans()),
    ), (h, w)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gs=st.one_of(sinet_genotypes(), c3_genotypes()))
def test_random_valid_genotypes_build_run_and_round_trip(gs) -> None:
    g, (h, w) = gs
    assert genotype_from_dict(yaml.safe_load(g.to_yaml())) == g
    assert g.check_input_size((h, w)) == (h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GateWarning)
        model = create_model(g)
    y = model(torch.randn(2, 3, h, w))  # batch 2: BN needs >1 value per channel at 1x1 maps
    s = model.output_stride
    assert y.shape == (2, g.num_classes, h // s, w // s)
    assert torch.isfinite(y).all()


@settings(max_examples=40, deadline=None)
@given(gs=sinet_genotypes(), si=st.integers(0, 1), pool=st.integers(3, 16))
def test_random_bad_pool_factors_are_rejected_before_building(gs, si, pool) -> None:
    g, (h, w) = gs
    f = h // (4 * 2**si)
    if f % pool == 0 and (w // (4 * 2**si)) % pool == 0:
        return
    d = g.to_dict()
    d["stages"][si]["modules"][0]["branches"][0]["pool"] = pool
    with pytest.raises(ValueError, match=rf"stages\[{si}\]\.modules\[0\]\.branches\[0\]: invalid pool={pool}"):
        genotype_from_dict(d).check_input_size((h, w))
