"""Training on real EG1800 subsets: it learns, it is deterministic, it stops cleanly on a non-finite loss."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas.augment import AugmentConfig
from nas.train import NonFiniteLossError, TrainConfig, load_data, param_groups, train_genotype
from search_spaces import create_model

FAST = dict(
    schedule="single_stage",
    input_size=(64, 64),
    holdout_fraction=0.15,
    batch_size=16,
    lr=3e-3,
    threads=1,
    progress=False,
)


@pytest.fixture(scope="module")
def subset(eg1800_root, cache_dir):
    cfg = TrainConfig(epochs=1, train_fraction=0.3, **FAST)
    return load_data(str(eg1800_root), cfg, cache_dir=str(cache_dir), val_fraction=0.5, progress=False)


@pytest.mark.slow
def test_iou_rises_above_the_all_foreground_baseline(subset) -> None:
    # predicting "person" everywhere: the trivial baseline any learned model must beat
    fg = subset.val.masks.reshape(len(subset.val), -1).astype(bool)
    baseline = 100 * float(np.mean(fg.sum(1) / fg.shape[1]))
    cfg = TrainConfig(epochs=4, train_fraction=0.3, boundary=False, augment=AugmentConfig.disabled(), **FAST)
    res = train_genotype("sinet", cfg, subset)
    assert res.train_images + res.holdout_images == 401 and res.val_images == 132
    assert res.skipped_ids == 131  # 106 training + 25 validation ids listed without files
    assert res.miou > baseline + 5, (res.miou, baseline)
    assert res.history[-1].train_loss < res.history[0].train_loss


@pytest.mark.slow
def test_same_seed_same_metrics_to_the_last_digit(subset) -> None:
    cfg = TrainConfig(epochs=1, train_fraction=0.3, **FAST)
    a = train_genotype("sinet", cfg, subset)
    b = train_genotype("sinet", cfg, subset)
    assert (a.miou, a.miou_2class, a.history[0].train_loss) == (b.miou, b.miou_2class, b.history[0].train_loss)
    c = train_genotype("sinet", TrainConfig(epochs=1, train_fraction=0.3, seed=1, **FAST), subset)
    assert c.history[0].train_loss != a.history[0].train_loss


@pytest.mark.slow
def test_two_stage_schedule_trains_the_encoder_then_the_whole_net(subset) -> None:
    cfg = TrainConfig(epochs=2, stage1_epochs=1, **{**FAST, "schedule": "two_stage"}, train_fraction=0.3)
    res = train_genotype("extremec3net", cfg, subset)
    assert [(r.stage, r.global_epoch) for r in res.history] == [(1, 1), (2, 2)]
    assert res.best_epoch == 2


def test_non_finite_loss_stops_with_a_clear_error(subset) -> None:
    cfg = TrainConfig(epochs=1, train_fraction=0.3, **{**FAST, "lr": 1e30})
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train_genotype("sinet", cfg, subset)


def test_param_groups_follow_the_release() -> None:
    model = create_model("sinet")
    groups = {g["name"]: g for g in param_groups(model, TrainConfig())}
    assert groups["conv"]["weight_decay"] == 2e-4 and groups["depthwise"]["weight_decay"] == 0.0
    assert groups["other"]["weight_decay"] == 2e-6
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == 86_910  # every parameter in exactly one group
    dw = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1}
    assert {id(p) for p in groups["depthwise"]["params"]} == dw


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"schedule": "three_stage"}, "train.schedule"),
        ({"loss": "dice"}, "train.loss"),
        ({"epochs": 0}, "train.epochs"),
        ({"epochs": 2, "stage1_epochs": 2}, "stage1"),
    ],
)
def test_bad_train_config_names_the_key(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


@pytest.mark.slow
def test_nas_train_eval_predict_cli(workdir, eg1800_root) -> None:
    common = ["fidelity=tiny", "train.threads=1", "train.progress=false", "data.val_fraction=0.1"]
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli.train", *common, "model=extremec3net"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res) >= {"miou", "miou_2class", "epochs", "train_images", "val_images", "skipped_ids", "images_per_s"}
    # model=extremec3net picks its family's recipe: 1-class Lovasz hinge, so 37,738 parameters
    assert res["val_images"] == 26 and res["skipped_ids"] == 131 and res["params"] == 37_738
    assert res["recipe"] == "extremec3net" and res["optimistic"] is False
    ev = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nas.cli.train import eval_main; eval_main()",
            f"checkpoint={res['checkpoint']}",
            "data.val_fraction=0.1",
        ],
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout.strip().splitlines()[-1])["miou"] == pytest.approx(res["miou"], abs=1e-9)
    img = eg1800_root / "images_data_crop" / "00010.jpg"
    pr = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nas.cli.train import predict_main; predict_main()",
            f"checkpoint={res['checkpoint']}",
            f"inputs=[{img}]",
            "out_dir=pred",
        ],
        capture_output=True,
        text=True,
    )
    assert pr.returncode == 0, pr.stderr[-2000:]
    from PIL import Image

    mask = np.asarray(Image.open(workdir / "pred" / "00010_mask.png"))
    assert mask.shape == (800, 600) and set(np.unique(mask)) <= {0, 255}
    assert (workdir / "pred" / "00010_overlay.png").stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "nas.cli.train", *common, "train.lr=1e30"], capture_output=True, text=True
    )
    assert bad.returncode == 3
    assert json.loads(bad.stdout.strip().splitlines()[-1])["error"] == "non_finite_loss"
    assert "non-finite training loss" in bad.stderr
