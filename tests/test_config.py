"""Every shipped config composes against its schema; an unknown key fails at composition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nas.ablate import SHIPPED_EXPERIMENTS, load_experiment, variant_genotype, variant_train_config
from nas.config import SearchSettings, TrainConfig, register_configs, study_settings_from, train_settings_from
from nas.rungs import rung_config, rung_names
from tests.conftest import compose

CONF = Path(__file__).resolve().parents[1] / "nas" / "conf"
# Values a primary config leaves mandatory (???), so that it composes.
REQUIRED = {"ablate": ["experiment=sinet_decoder"], "eval": ["checkpoint=x.pt"],
            "export": ["checkpoint=x.pt"], "import": ["release=x.pth"],
            "pareto": ["studies=[a]"], "predict": ["checkpoint=x.pt", "inputs=x.png"]}
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes_and_converts(name: str) -> None:
    cfg = compose(name, REQUIRED.get(name, []))
    assert "???" not in OmegaConf.to_yaml(cfg)
    for node in ("train", "recipe"):
        if node in cfg and OmegaConf.is_dict(cfg[node]):
            assert OmegaConf.get_type(cfg[node]) is TrainConfig, f"{name}.{node} is not typed by the schema"
            assert isinstance(train_settings_from(cfg[node]), TrainConfig)
    if name == "search":
        assert OmegaConf.get_type(cfg.study) is SearchSettings
        s = study_settings_from(cfg.study)
        assert (s.name, s.n_trials, s.enqueue, s.rungs) == ("sinet-pareto", 32, ["sinet"], ("search_half", "search"))
    if name == "fidelity_study":
        from nas.config import FidelitySettings, fidelity_settings_from

        assert OmegaConf.get_type(cfg.study) is FidelitySettings
        assert fidelity_settings_from(cfg.study) == FidelitySettings()


@pytest.mark.parametrize("group, override", [
    *[("fidelity", f"fidelity={o}") for o in _options("fidelity")],
    *[("recipe", f"recipe@train={o}") for o in _options("recipe")],
    *[("space", f"space={o}") for o in _options("space")],
    *[("sampler", f"sampler={o}") for o in _options("sampler")],
    *[("pruner", f"pruner={o}") for o in _options("pruner")],
])
def test_every_group_option_composes_into_the_search(group: str, override: str) -> None:
    from hydra.utils import instantiate

    cfg = compose("search", [override])
    tcfg = train_settings_from(cfg.train)
    if group == "space":  # the space proposes a valid genotype through a real (random) Optuna trial
        import optuna

        space = instantiate(cfg.space)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        assert space.suggest(trial).archid()
    if group in ("sampler", "pruner"):
        assert instantiate(cfg[group]) is not None
    if group == "recipe":
        assert tcfg.recipe == override.split("=")[1]


def test_every_fidelity_rung_applies_to_the_recipe() -> None:
    for name in rung_names():
        cfg = rung_config(TrainConfig(), name)
        assert cfg.epochs >= 1 and len(cfg.input_size) == 2, name


@pytest.mark.parametrize("path", sorted(SHIPPED_EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_file_builds_every_variant(path: Path) -> None:
    exp = load_experiment(str(path))
    base = train_settings_from(compose("ablate", [f"experiment={path}"]).recipe)
    for v in exp.variants:
        tcfg = variant_train_config(base, exp, v)
        assert isinstance(tcfg, TrainConfig)
        assert variant_genotype(exp, v, tcfg).archid(), v.name


def test_experiments_are_found_from_any_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_experiment("sinet_decoder").name == "sinet_decoder"
    with pytest.raises(FileNotFoundError, match=r"available in .*experiments: \[.*'sinet_decoder'"):
        load_experiment("nope")


@pytest.mark.parametrize("override, key", [
    ("train.colour=1", "train.colour"),
    ("train.augment.colr=1", "train.augment.colr"),
    ("study.budget=1", "study.budget"),
    ("train.epochs=four", "train.epochs"),
    ("space.kernal=[3]", "space.kernal"),
    ("fidelity_study:study.n_arch=3", "study.n_arch"),
    ("fidelity_study:study.seeds=one", "study.seeds"),
])
def test_an_unknown_key_or_bad_type_fails_at_composition(override: str, key: str) -> None:
    config, _, override = override.rpartition(":")
    with pytest.raises(ConfigCompositionException) as e:
        compose(config or "search", [override])
    assert key.split(".")[-1] in str(e.value) + str(e.value.__cause__)


def test_an_unknown_key_in_a_config_file_fails_at_composition(tmp_path: Path) -> None:
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    (tmp_path / "job.yaml").write_text("defaults:\n  - /schema/train@train\n  - _self_\ntrain:\n  epochz: 4\n")
    register_configs()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="epochz"):
            _compose(config_name="job")


def test_defaults_are_written_once() -> None:
    """The recipe file holds no value of its own: every default comes from the schema."""
    release = OmegaConf.load(CONF / "recipe" / "release.yaml")
    assert set(release) == {"defaults"}
    assert OmegaConf.to_object(compose("train", ["recipe@train=release"]).train) == \
        TrainConfig(epochs=600, input_size=(224, 224), train_fraction=1.0)


def test_space_and_fidelity_study_defaults_are_written_once() -> None:
    """The space files and the fidelity study's node set no value: the schema (nas/config.py) does,
    and the spaces' Python defaults are the same objects."""
    from hydra.utils import instantiate

    from search_spaces.spaces import C3Space, SINetSpace

    for name, cls in (("sinet", SINetSpace), ("extremec3net", C3Space)):
        assert set(OmegaConf.load(CONF / "space" / f"{name}.yaml")) == {"defaults"}
        composed, default = instantiate(compose("search", [f"space={name}"]).space), cls()
        assert vars(composed).keys() == vars(default).keys()
        assert all(getattr(composed, k) == getattr(default, k) for k in vars(default) if k != "base")
    assert "study" not in OmegaConf.load(CONF / "fidelity_study.yaml")


def test_the_objectives_table_is_the_one_source_of_directions_budgets_and_reference() -> None:
    from nas.objectives import BUDGET_KEYS, default_reference_point, directions

    assert directions("pareto") == ["maximize", "minimize", "minimize"] and directions("constrained") == ["maximize"]
    assert SearchSettings(name="x").reference_point == default_reference_point()
    assert compose("pareto", REQUIRED["pareto"]).reference_point is None  # nas-pareto falls back to the table
    with pytest.raises(ValueError, match=f"allowed: {', '.join(BUDGET_KEYS)}"):
        SearchSettings(name="x", budgets={"latency": 3})
    # the front's objectives: mIoU first, then known costs, each once; a latency objective goes to Optuna
    lat = ["miou", "params", "conv_macs", "ort_latency_ms"]
    assert directions("pareto", lat) == ["maximize", "minimize", "minimize", "minimize"]
    assert compose("search", ["study.objectives=[miou,params,ort_latency_ms]"]).study.objectives == [
        "miou", "params", "ort_latency_ms"]
    for bad in (["params", "miou"], ["miou"], ["miou", "params", "params"], ["miou", "latency"]):
        with pytest.raises(ValueError, match=r"study\.objectives=.*allowed: 'miou' first, then one or more of "
                                             r"\['params', 'conv_macs', 'ort_latency_ms'\]"):
            SearchSettings(name="x", objectives=bad)
    with pytest.raises(ValueError, match=r"study\.reference_point has unknown key\(s\) \['mIoU'\]"):
        SearchSettings(name="x", reference_point={"mIoU": 40})
    assert SearchSettings(name="x", reference_point={"miou": 40}).reference_point == default_reference_point() | {
        "miou": 40}


def test_cli_config_error_is_one_line_and_status_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "nas.cli.search", "train.augment.colr=1"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-search: error: ") and "colr" in lines[0], out.stderr
