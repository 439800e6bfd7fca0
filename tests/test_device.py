"""train.device / train.precision / train.augment_backend: the device paths run with device=cpu; CUDA tests skip."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nas.config import TrainConfig
from nas.device import autocast, resolve_device
from nas.train import load_data, train_genotype
from tests.conftest import PROJECT, cli_env

FAST = dict(epochs=2, schedule="single_stage", input_size=(32, 32), train_fraction=0.05, holdout_fraction=0.2,
            batch_size=8, lr=3e-3, threads=1, progress=False, device="cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def tiny(eg1800_root, cache_dir):
    return load_data(str(eg1800_root), TrainConfig(**FAST), cache_dir=str(cache_dir), val_fraction=0.05,
                     progress=False)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="train.device='tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, cuda:N"):
        TrainConfig(device="cuda0")
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="train.augment_backend"):
        TrainConfig(augment_backend="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(workdir) -> None:
    with pytest.raises(ValueError, match=r"train.device=cuda:1: CUDA is not available"):
        resolve_device("cuda:1")
    out = subprocess.run([sys.executable, "-m", "nas.cli.train", "fidelity=tiny", "train.device=cuda",
                          "tracking.enabled=false"], capture_output=True, text=True,
                         env=cli_env({"PYTHONPATH": str(PROJECT)}))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("nas-train: error: train.device=cuda: CUDA is not available")


def test_tensor_backend_trains_on_cpu_deterministically(tiny) -> None:
    cfg = TrainConfig(**FAST, augment_backend="tensor")
    a, b = train_genotype("sinet", cfg, tiny), train_genotype("sinet", cfg, tiny)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert a.miou == b.miou and 0 <= a.miou <= 100 and a.history[0].images_per_s > 0
    n = train_genotype("sinet", TrainConfig(**FAST), tiny)  # the numpy backend: other augmentations, other loss
    assert n.history[0].train_loss != a.history[0].train_loss
    assert all(v.device.type == "cpu" for v in a.best_state.values())


def test_bf16_autocast_on_cpu_trains_with_a_finite_loss(tiny) -> None:
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    res = train_genotype("sinet", TrainConfig(**{**FAST, "epochs": 1}, precision="bf16"), tiny)
    assert torch.isfinite(torch.tensor(res.history[0].train_loss)) and 0 <= res.miou <= 100


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend,precision", [("tensor", "bf16"), ("numpy", "fp32")])
def test_cuda_training_runs_and_returns_cpu_weights(tiny, backend, precision) -> None:
    cfg = TrainConfig(**{**FAST, "device": "cuda"}, augment_backend=backend, precision=precision)
    res = train_genotype("sinet", cfg, tiny)
    assert 0 < res.miou <= 100 and all(v.device.type == "cpu" for v in res.best_state.values())
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@needs_cuda
def test_cuda_boundary_band_matches_opencv() -> None:
    from nas.losses import boundary_band

    t = (torch.rand(4, 64, 48) > 0.5).long()
    assert torch.equal(boundary_band(t.cuda(), 15).cpu(), boundary_band(t, 15))


def test_eval_and_predict_run_on_the_named_device(workdir, eg1800_root) -> None:
    from nas.checkpoint import save_checkpoint
    from nas.predict import evaluate_checkpoint, predict_files
    from search_spaces import create_model, get_genotype

    torch.manual_seed(0)
    g = get_genotype("sinet")
    ckpt = save_checkpoint(workdir / "m.pt", g, create_model(g).state_dict())
    m = evaluate_checkpoint(ckpt, eg1800_root, "val", (32, 32), fraction=0.03, device="cpu")
    assert m["images"] > 0 and 0 <= m["miou"] <= 100
    written = predict_files(str(ckpt), [str(eg1800_root / "images_data_crop" / "00010.jpg")], "pred", (32, 32),
                            device="cpu")
    assert written[0][1].stat().st_size > 0
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda: CUDA is not available"):
            evaluate_checkpoint(ckpt, eg1800_root, "val", (32, 32), fraction=0.03, device="cuda")
        with pytest.raises(ValueError, match="device=cuda:0: CUDA is not available"):
            predict_files(str(ckpt), [str(eg1800_root / "images_data_crop" / "00010.jpg")], "pred", device="cuda:0")


def test_new_keys_at_their_defaults_keep_finished_cells_identical() -> None:
    from nas.ablate import _cell_hash
    from nas.fidelity import cell_train_identity
    from search_spaces import get_genotype

    g, base = get_genotype("sinet"), TrainConfig(epochs=2, schedule="single_stage")
    old = {k: v for k, v in base.as_dict().items()
           if k not in ("device", "resume_every", "resume_dir", "check_every", "precision", "augment_backend")}
    assert cell_train_identity(base) == cell_train_identity(TrainConfig(epochs=2, schedule="single_stage"))
    assert set(cell_train_identity(base)) <= set(old)  # none of the new keys at its default is in the identity
    how = TrainConfig(epochs=2, schedule="single_stage", device="cpu", resume_every=3, resume_dir="x", check_every=1)
    assert _cell_hash(None, g, how) == _cell_hash(None, g, base)
    assert cell_train_identity(how) == cell_train_identity(base)
    other = TrainConfig(epochs=2, schedule="single_stage", augment_backend="tensor")
    assert _cell_hash(None, g, other) != _cell_hash(None, g, base)
    assert cell_train_identity(other) != cell_train_identity(base)


def test_every_training_command_takes_the_device_key() -> None:
    from nas.config import train_settings_from
    from tests.conftest import compose

    for name, node, extra in [("train", "train", []), ("search", "train", ["workers=2"]),
                              ("fidelity_study", "train", []), ("ablate", "recipe", ["experiment=x"])]:
        cfg = compose(name, [f"{node}.device=cpu", f"{node}.precision=bf16", *extra])
        t = train_settings_from(cfg[node])
        assert (t.device, t.precision, t.augment_backend, t.resume_every) == ("cpu", "bf16", "numpy", 1), name
    assert compose("eval", ["checkpoint=x", "device=cuda:1"]).device == "cuda:1"
    assert compose("predict", ["checkpoint=x", "inputs=y"]).device == "auto"


def test_the_accelerator_loss_paths_equal_the_cpu_ones_on_real_masks(tiny) -> None:
    from nas.losses import _weighted_ce, _weighted_ce_nosync, boundary_band, boundary_band_pooled

    torch.manual_seed(0)
    y = torch.from_numpy(tiny.train.masks[:6]).long()
    y[0, :4] = 255  # some ignored pixels
    logits = torch.randn(6, 2, *y.shape[1:])
    for w in (None, torch.tensor([0.7, 1.9]), torch.tensor([0.0, 1.0])):
        assert torch.allclose(_weighted_ce_nosync(logits, y, w, 255), _weighted_ce(logits, y, w, 255), atol=1e-6)
    all_ignored = torch.full_like(y, 255)
    assert _weighted_ce_nosync(logits, all_ignored, None, 255).item() == 0.0
    for window in (5, 15):
        assert torch.equal(boundary_band_pooled(y, window), boundary_band(y, window))
