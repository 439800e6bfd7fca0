"""Bad input gets a clear message that names the bad file, key or value.

Data defects go through :func:`nas.train.load_data` (what ``nas-train`` and
``nas-search`` call) on a small copy of EG1800; config mistakes through Hydra
composition and the functions the console scripts call; a few through the
console scripts themselves (their stderr and exit status).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.io
from hydra.errors import ConfigCompositionException, MissingConfigException

from nas import data as D
from nas.config import study_settings_from, train_settings_from
from nas.train import TrainConfig, load_data
from tests.conftest import cli_env, compose

TINY_TRAIN = ["fidelity=tiny", "data.val_fraction=0.1", "train.threads=1", "train.progress=false",
              "tracking.enabled=false"]


# -- data ------------------------------------------------------------------------------------------


@pytest.fixture()
def fake_root(eg1800_root: Path, tmp_path: Path) -> Path:
    """Six training and three validation pairs of the real EG1800, in the release layout, writable."""
    train = [f"{int(n.strip()[:-4]):05d}" for n in (eg1800_root / "eg1800_train.txt").read_text().split()][:6]
    val = [f"{int(n.strip()[:-4]):05d}" for n in (eg1800_root / "eg1800_test.txt").read_text().split()][:3]
    root = tmp_path / "EG1800"
    (root / D.IMAGE_DIR).mkdir(parents=True)
    (root / D.MASK_DIR).mkdir()
    for i in train + val:
        for src, dst in ((D.image_path(eg1800_root, i), D.image_path(root, i)),
                         (D.mask_path(eg1800_root, i), D.mask_path(root, i))):
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
    (root / "eg1800_train.txt").write_text("".join(f"{i}.png\n" for i in train))
    (root / "eg1800_test.txt").write_text("".join(f"{i}.png\n" for i in val))
    return root


def _ids(root: Path, split: str = "train") -> list[str]:
    return [f"{int(n[:-4]):05d}" for n in (root / D.SPLIT_FILES[split]).read_text().split()]


def _load(root: Path | None, tmp_path: Path):
    cfg = TrainConfig(epochs=1, schedule="single_stage", input_size=(32, 32), train_fraction=1.0,
                      holdout_fraction=0.0, progress=False)
    return load_data(None if root is None else str(root), cfg, cache_dir=str(tmp_path / "cache"), progress=False)


def test_good_fake_root_loads(fake_root: Path, tmp_path: Path) -> None:
    data = _load(fake_root, tmp_path)
    assert len(data.val) == 3 and data.skipped_ids == 0 and len(data.train) >= 1


def test_truncated_jpeg_names_the_file(fake_root: Path, tmp_path: Path) -> None:
    bad = D.image_path(fake_root, _ids(fake_root)[1])
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 5])
    with pytest.raises(ValueError, match=rf"cannot decode image {re.escape(str(bad))}.*truncated"):
        _load(fake_root, tmp_path)


def test_mask_of_the_wrong_size_names_both_files(fake_root: Path, tmp_path: Path) -> None:
    i = _ids(fake_root, "val")[0]
    scipy.io.savemat(D.mask_path(fake_root, i), {"mask": np.zeros((400, 300), np.uint8)})
    with pytest.raises(ValueError, match=rf"mask {re.escape(str(D.mask_path(fake_root, i)))} has shape \(400, 300\) "
                                         rf"but image {re.escape(str(D.image_path(fake_root, i)))} is \(800, 600\)"):
        _load(fake_root, tmp_path)


def test_missing_mask_is_skipped_and_reported_and_named_when_requested(fake_root: Path, tmp_path: Path) -> None:
    i = _ids(fake_root, "val")[1]
    D.mask_path(fake_root, i).unlink()
    data = _load(fake_root, tmp_path)  # the release's own copy lists ids without files: skipped, counted
    assert data.skipped_ids == 1 and data.val.skipped_ids == [i] and len(data.val) == 2
    with pytest.raises(FileNotFoundError, match=re.escape(str(D.mask_path(fake_root, i)))):
        D.load_split_arrays(fake_root, "val", (32, 32), cache_dir=tmp_path / "cache", ids=[i], progress=False)


def test_search_and_train_name_the_missing_files(fake_root: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    from nas.cli.search import build_worker

    i = _ids(fake_root, "val")[1]
    D.mask_path(fake_root, i).unlink()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="nas.train"):
        build_worker(compose("search", ["fidelity=tiny", "progress=false", "tracking.enabled=false",
                                        f"data.root={fake_root}", f"data.cache_dir={tmp_path / 'cache'}"]))
    assert f"1 listed id(s) skipped, their image or mask file is missing: val {i} (e.g. {D.mask_path(fake_root, i)})" \
        in caplog.text


def test_empty_and_missing_split_lists(fake_root: Path, tmp_path: Path) -> None:
    val_list = fake_root / "eg1800_test.txt"
    val_list.write_text("\n")
    with pytest.raises(ValueError, match=rf"split list is empty: {re.escape(str(val_list))}"):
        _load(fake_root, tmp_path)
    val_list.unlink()
    with pytest.raises(FileNotFoundError, match=rf"split list not found: {re.escape(str(val_list))}"):
        _load(fake_root, tmp_path)


def test_data_root_missing_or_not_set(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=rf"does not exist.*{re.escape(str(tmp_path / 'nope'))}"):
        _load(tmp_path / "nope", tmp_path)
    monkeypatch.delenv("EG1800_ROOT", raising=False)
    with pytest.raises(ValueError, match=r"data root is not set: pass data\.root=.* or set the EG1800_ROOT"):
        _load(None, tmp_path)


# -- configuration ---------------------------------------------------------------------------------


def test_unknown_key_and_unknown_group_option_name_them() -> None:
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'foo'"):
        compose("train", ["foo=1"])
    with pytest.raises(MissingConfigException, match=r"Could not find 'space/nope'") as e:
        compose("search", ["space=nope"])
    assert "sinet" in str(e.value.options or "") or "sinet" in str(e.value)


@pytest.mark.parametrize("override, pattern", [
    ("train.loss=dice", r"train\.loss='dice'; allowed: ce, lovasz"),
    ("+train.colour=1", r"unknown train key 'colour'; allowed: \[.*'augment'"),  # forced in with +: refused later
    ("+train.augment.colr=1", r"unknown train\.augment key 'colr'; allowed: \[.*'affine'"),
    ("train.schedule=three_stage", r"train\.schedule='three_stage'; allowed"),
])
def test_bad_train_values(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        train_settings_from(compose("train", [override]).train)


@pytest.mark.parametrize("override, pattern", [
    ("study.mode=best", r"study\.mode='best'; allowed: pareto, constrained"),
    ("study.n_trials=0", r"study\.n_trials=0; allowed: an integer >= 1"),
    ("study.name=nan", r"study\.name=nan \(float\); allowed: a non-empty string"),
    ("study.storage=mysql://x/y", r"study\.storage='mysql://x/y'; allowed"),
    ("+study.budgets.latency=3", r"study\.budgets has unknown key\(s\) \['latency'\]"),
])
def test_bad_study_values(override: str, pattern: str) -> None:


    cfg = compose("search", [override])
    with pytest.raises(ValueError, match=pattern):
        study_settings_from(cfg.study)


def test_unknown_model_lists_the_registered_ones() -> None:
    from search_spaces import get_genotype

    with pytest.raises(ValueError, match=r"unknown model 'nonet'; registered: .*sinet"):
        get_genotype(compose("train", ["model=nonet"]).model)


def test_invalid_genotype_yaml_names_file_and_field(tmp_path: Path) -> None:
    from search_spaces import get_genotype

    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("family: sinet\n  stages: [\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(malformed))}: not valid YAML"):
        get_genotype(str(malformed))
    bad_pool = tmp_path / "bad_pool.yaml"
    bad_pool.write_text(get_genotype("sinet").to_yaml().replace("pool: 4", "pool: 3", 1))
    g = get_genotype(str(bad_pool))  # pool 3 fits some sizes (192 x 192: a 24 x 24 map), so the file loads
    with pytest.raises(ValueError, match=r"stages\[1\]\.modules\[\d+\]\.branches\[\d+\]: invalid pool=3; allowed: "
                                         r"factors of the 28x28 feature map at input_size=224x224"):
        g.check_input_size((224, 224))
    from nas.cli.train import run_training

    with pytest.raises(ValueError, match=rf"model={re.escape(str(bad_pool))} at train.input_size=\(64, 64\): "
                                         r"stages\[1\].*invalid pool=3"):
        run_training(compose("train", [*TINY_TRAIN, f"model={bad_pool}", "train.input_size=[64,64]"]))


# -- unwritable places -----------------------------------------------------------------------------


def test_unwritable_output_dir_names_the_folder(tmp_path: Path, monkeypatch) -> None:
    from nas.cli.train import run_training

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file, not a folder")  # root ignores chmod: a file stops it
    for out, why in ((tmp_path / "afile" / "sub", "Not a directory"), ("/proc/forbidden", "")):
        cfg = compose("train", [*TINY_TRAIN, f"output_dir={out}"])
        with pytest.raises(OSError, match=rf"output_dir={re.escape(str(out))} is not writable: .*{why}"):
            run_training(cfg)


def test_unwritable_study_storage_names_the_folder(tmp_path: Path) -> None:
    from nas.study import SearchSettings, open_study

    (tmp_path / "afile").write_text("")
    for folder in (tmp_path / "afile", Path("/proc/forbidden")):
        url = f"sqlite:///{folder}/x.db"
        with pytest.raises(OSError, match=rf"study\.storage='{re.escape(url)}': folder {re.escape(str(folder))} "
                                          r"does not exist or is not writable"):
            open_study(SearchSettings(name="s", storage=url), optuna.samplers.RandomSampler())


# -- through the console scripts -------------------------------------------------------------------


def _cli(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env=env or cli_env(), timeout=300)


def test_cli_unknown_key(tmp_path: Path) -> None:
    out = _cli("nas.cli.train", ["foo=1"], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-train: error: Could not override 'foo'"), out.stderr
    assert "+foo=1" in lines[0]


def test_cli_no_data_root_and_bad_genotype_file(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env().items() if k != "EG1800_ROOT"}
    out = _cli("nas.cli.train", [*TINY_TRAIN], tmp_path, env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ("nas-train: error: EG1800 data root is not set: pass data.root=/path/to/EG1800 or set the "
            "EG1800_ROOT") in out.stderr

    from search_spaces import get_genotype

    (tmp_path / "bad.yaml").write_text(get_genotype("sinet").to_yaml().replace("pool: 4", "pool: 3", 1))
    out = _cli("nas.cli.train", [*TINY_TRAIN, "model=bad.yaml"], tmp_path, env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(r"nas-train: error: model=bad\.yaml at train\.input_size=\(64, 64\): "
                     r"stages\[1\]\.modules\[\d+\]\.branches\[\d+\]: invalid pool=3; allowed: factors of the 8x8",
                     out.stderr), out.stderr[-2000:]


def test_cli_search_unwritable_storage(tmp_path: Path, eg1800_root: Path, cache_dir: Path) -> None:
    (tmp_path / "afile").write_text("")
    env = cli_env({"EG1800_ROOT": str(eg1800_root), "PORTRAIT_NAS_CACHE": str(cache_dir),
                   "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    url = f"sqlite:///{tmp_path}/afile/x.db"
    out = _cli("nas.cli.search", ["fidelity=tiny", "data.val_fraction=0.1", "progress=false", "study.name=s",
                                  f"study.storage={url}"], tmp_path, env)
    assert out.returncode == 2
    assert (f"nas-search: error: study.storage='{url}': folder {tmp_path}/afile does not exist or is not "
            "writable") in out.stderr
    assert not os.path.exists(tmp_path / "mlflow.db")  # stopped before anything was written


def test_cli_full_error_shows_traceback(tmp_path: Path) -> None:
    """HYDRA_FULL_ERROR=1 turns the one-line error back into the traceback (for bug reports)."""
    env = {k: v for k, v in cli_env({"HYDRA_FULL_ERROR": "1"}).items() if k != "EG1800_ROOT"}
    out = _cli("nas.cli.train", [*TINY_TRAIN], tmp_path, env)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "EG1800 data root is not set" in out.stderr
