"""Shared fixtures: the real EG1800 copy, a per-session preprocessed cache, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
EG1800 = PROJECT.parent / "shared" / "data" / "EG1800"


@pytest.fixture(scope="session")
def eg1800_root() -> Path:
    """The real EG1800 copy next to the project (``../shared/data/EG1800``)."""
    if not (EG1800 / "eg1800_train.txt").is_file():
        pytest.skip(f"EG1800 not found at {EG1800}")
    return EG1800


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One preprocessed-array cache for the whole session (each image decoded once)."""
    return tmp_path_factory.mktemp("pnas-cache")


@pytest.fixture()
def workdir(tmp_path, monkeypatch, eg1800_root, cache_dir) -> Path:
    """Run in ``tmp_path`` with data and cache from the fixtures and a private MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EG1800_ROOT", str(eg1800_root))
    monkeypatch.setenv("PORTRAIT_NAS_CACHE", str(cache_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def compose(config_name: str, overrides: list[str] | None = None):
    """Compose ``nas/conf/<config_name>.yaml`` as the console script would."""
    from hydra import compose as _compose
    from hydra import initialize_config_module

    from nas.config import register_configs

    register_configs()
    with initialize_config_module(config_module="nas.conf", version_base="1.3"):
        return _compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocess runs of the console scripts."""
    env = dict(os.environ)
    env.update(extra or {})
    return env
