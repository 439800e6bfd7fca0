"""The authors' released weights: import, score as published, predict, fine-tune; bad files fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import PROJECT, cli_env, compose

WEIGHTS = PROJECT.parent / "shared" / "weights" / "ext_portrait_segmentation"
ENV = {"PYTHONPATH": str(PROJECT)}  # the console scripts of this checkout, whatever is installed


def _release(name: str) -> Path:
    p = WEIGHTS / name
    if not p.is_file():
        pytest.skip(f"released weights not found: {p}")
    return p


def _run(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=cli_env(ENV),
                         check=False)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


IMPORT = "from nas.cli.release import main; main()"
EVAL = "from nas.cli.train import eval_main; eval_main()"
PREDICT = "from nas.cli.train import predict_main; predict_main()"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, dict]:
    """Both release files through ``nas-import`` (auto-detected model, explicit output)."""
    d = tmp_path_factory.mktemp("imported")
    out = {}
    for name, model in (("SINet.pth", "sinet"), ("ExtremeC3.pth", "extremec3net")):
        res = _run(IMPORT, f"release={_release(name)}", f"output={d / model}.pt")
        out[model] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_import_writes_a_checkpoint_with_the_release_preprocessing(imported) -> None:
    from nas.checkpoint import load_checkpoint
    from nas.preprocess import RELEASE

    assert imported["sinet"] == {"checkpoint": imported["sinet"]["checkpoint"], "model": "sinet", "num_classes": 2,
                                 "params": 86_910}
    assert imported["extremec3net"]["num_classes"] == 1 and imported["extremec3net"]["params"] == 37_738
    model, meta = load_checkpoint(imported["extremec3net"]["checkpoint"])
    assert meta["preprocessing"] == RELEASE and meta["format"] == 2
    ref = torch.load(_release("ExtremeC3.pth"), map_location="cpu", weights_only=True)
    # every released tensor arrives unchanged somewhere (spot checks through the explicit map)
    assert torch.equal(model.state_dict()["head.weight"], ref["classifier.2.weight"])
    assert torch.equal(model.state_dict()["encoder.stages.1.5.branches.2.conv.6.weight"],
                       ref["encoder.level3.4.d3.conv.6.weight"])


@pytest.mark.parametrize("model, target", [("sinet", 94.96), ("extremec3net", 94.87)])
def test_imported_release_scores_as_published(imported, workdir, model, target) -> None:
    """264 validation images at 224x224, per-image foreground IoU: the release's own figures."""
    res = _run(EVAL, f"checkpoint={imported[model]['checkpoint']}", "input_size=[224,224]")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["images"] == 264 and m["input_size"] == [224, 224]
    assert m["miou"] == pytest.approx(target, abs=0.05)


def test_predict_with_imported_sinet_agrees_with_eval(imported, workdir, eg1800_root) -> None:
    import cv2
    from PIL import Image

    from nas.data import read_split
    from nas.predict import evaluate_checkpoint

    ckpt = imported["sinet"]["checkpoint"]
    ev = evaluate_checkpoint(ckpt, eg1800_root, "val", (224, 224), fraction=0.03, return_predictions=True)
    ids = ev["ids"]
    assert 5 <= len(ids) <= 10 and set(ids) <= set(read_split(eg1800_root, "val").ids)
    files = [str(eg1800_root / "images_data_crop" / f"{i}.jpg") for i in ids]
    _run(PREDICT, f"checkpoint={ckpt}", f"inputs=[{','.join(files)}]", "out_dir=pred")
    for k, i in enumerate(ids):
        mask = np.asarray(Image.open(workdir / "pred" / f"{i}_mask.png")) // 255
        expect = cv2.resize(ev["predictions"][k], (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
        assert mask.shape == (800, 600) and 0.05 < mask.mean() < 0.95
        np.testing.assert_array_equal(mask, expect, err_msg=f"image {i}")


def test_release_file_of_the_other_network_is_refused(tmp_path) -> None:
    res = _run(IMPORT, f"release={_release('SINet.pth')}", "model=extremec3net", f"output={tmp_path}/x.pt",
               check=False)
    assert res.returncode == 2
    assert "released sinet state_dict" in res.stderr and "not 'extremec3net'" in res.stderr
    assert not (tmp_path / "x.pt").exists()


def test_truncated_release_file_is_refused(tmp_path) -> None:
    from nas.release import ReleaseImportError, import_release

    data = _release("SINet.pth").read_bytes()
    bad = tmp_path / "SINet.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReleaseImportError, match=r"SINet\.pth: not a readable torch file \(truncated"):
        import_release(bad)


def test_state_dict_with_a_key_missing_or_extra_lists_the_keys(tmp_path) -> None:
    from nas.release import ReleaseImportError, import_release

    sd = torch.load(_release("ExtremeC3.pth"), map_location="cpu", weights_only=True)
    del sd["encoder.level3.2.d2.conv.4.running_var"]
    sd["encoder.level9.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(ReleaseImportError) as err:
        import_release(tmp_path / "edited.pth")
    msg = str(err.value)
    assert "edited.pth" in msg and "missing release key(s): encoder.level3.2.d2.conv.4.running_var" in msg
    assert "unexpected key(s): encoder.level9.weight" in msg
    sd = torch.load(_release("SINet.pth"), map_location="cpu", weights_only=True)
    sd["bn_2.weight"] = torch.ones(3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ReleaseImportError, match=r"bn_2\.weight \(3,\) \(ours decoder\.bn_mid\.weight \(2,\)\)"):
        import_release(tmp_path / "shape.pth")


def test_unknown_checkpoint_formats_are_refused(tmp_path) -> None:
    from nas.checkpoint import load_checkpoint

    torch.save({"format": 99, "genotype": {}, "state_dict": {}}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future\.pt: unknown checkpoint format 99 .* formats \[1, 2\]"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"SINet\.pth: a bare state_dict.*nas-import"):
        load_checkpoint(_release("SINet.pth"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_format_1_checkpoints_still_load_with_our_preprocessing(tmp_path) -> None:
    from nas.checkpoint import load_checkpoint
    from nas.preprocess import OURS
    from search_spaces import create_model

    m = create_model("sinet")
    torch.save({"format": 1, "genotype": m.genotype.to_dict(), "state_dict": m.state_dict(), "train": {},
                "metrics": {}}, tmp_path / "old.pt")
    _, meta = load_checkpoint(tmp_path / "old.pt")
    assert meta["preprocessing"] == OURS and meta["format"] == 1


def test_key_map_uses_every_release_tensor_exactly_once() -> None:
    from nas.release import _map_key, release_key_map
    from search_spaces import create_model

    for name, model, k in (("SINet.pth", "sinet", 2), ("ExtremeC3.pth", "extremec3net", 1)):
        ref = torch.load(_release(name), map_location="cpu", weights_only=True)
        ours = create_model(model, num_classes=k).state_dict()
        mapped = [_map_key(key, release_key_map(model)) for key in ours]
        assert len(set(mapped)) == len(mapped)
        present = [r for r in mapped if r in ref]
        assert sorted(present) == sorted(ref)  # ExtremeC3.pth lacks only num_batches_tracked
        assert all(r.endswith("num_batches_tracked") for r in set(mapped) - set(ref))


def test_adapt_input_lets_our_preprocessing_feed_an_imported_network(eg1800_root, cache_dir) -> None:
    from nas.data import load_split_arrays
    from nas.preprocess import OURS, RELEASE
    from nas.release import adapt_input, import_release

    imgs = load_split_arrays(eg1800_root, "val", (224, 224), cache_dir=cache_dir, fraction=0.03,
                             progress=False).images
    for name in ("SINet.pth", "ExtremeC3.pth"):
        net, _ = import_release(_release(name))
        with torch.no_grad():
            before = net.predict(RELEASE.apply(imgs))
            assert (net.predict(OURS.apply(imgs)) == before).float().mean() < 0.99  # the input matters ...
            adapt_input(net, RELEASE, OURS)
            after = net.predict(OURS.apply(imgs))
        assert (after == before).float().mean() > 0.9995, name  # ... and adapting recovers it (borders aside)


def test_recipe_follows_the_model_family_unless_given() -> None:
    from nas.cli.train import choose_recipe

    assert choose_recipe(["model=extremec3net"])[-1] == "recipe@train=extremec3net"
    assert choose_recipe([])[-1] == "recipe@train=sinet"
    assert choose_recipe(["model=extremec3net", "recipe=sinet"]) == ["model=extremec3net", "recipe@train=sinet"]
    c3 = compose("train", ["recipe@train=extremec3net", "model=extremec3net"]).train
    assert (c3.recipe, c3.lr, c3.batch_size, c3.stage1_batch_size, c3.loss, c3.lovasz_per_image) == (
        "extremec3net", 1e-3, 40, 60, "lovasz", False)
    si = compose("train", ["recipe@train=sinet", "train.lr=1e-4"]).train
    assert (si.recipe, si.lr, si.batch_size, si.stage1_batch_size, si.loss, si.boundary) == (
        "sinet", 1e-4, 24, 36, "ce", True)


def test_lovasz_over_the_whole_batch_is_one_flattened_image() -> None:
    from nas.losses import lovasz_hinge

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 8, 8, generator=g), (torch.rand(3, 8, 8, generator=g) > 0.5).long()
    whole = lovasz_hinge(logits, target, per_image=False)
    assert whole == pytest.approx(float(lovasz_hinge(logits.reshape(1, 24, 8), target.reshape(1, 24, 8))))
    assert whole != pytest.approx(float(lovasz_hinge(logits, target)))


@pytest.mark.parametrize("bad, match", [({"stage1_handoff": "first"}, "stage1_handoff='first'; allowed: best, last"),
                                        ({"selection": "val"}, "selection='val'; allowed: holdout, last, val_best")])
def test_bad_handoff_or_selection_names_the_key(bad, match) -> None:
    from nas.train import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def _tiny(**kw):
    from nas.train import TrainConfig

    base = dict(epochs=4, schedule="two_stage", stage1_epochs=2, input_size=(64, 64), train_fraction=0.05,
                holdout_fraction=0.2, batch_size=8, stage1_batch_size=8, lr=3e-3, threads=1, progress=False,
                channels_last=False)
    base.update(kw)
    return TrainConfig(**base)


def test_stage1_handoff_and_selection(eg1800_root, cache_dir) -> None:
    from nas.train import load_data, train_genotype

    cfg = _tiny()
    data = load_data(eg1800_root, cfg, cache_dir=cache_dir, val_fraction=0.05, progress=False)
    best = train_genotype("sinet", cfg, data)
    s1 = [r.holdout_miou for r in best.history if r.stage == 1]
    assert best.stage1_epoch == 1 + int(np.argmax(s1))  # the best stage-1 epoch on the holdout starts stage 2
    assert best.summary()["optimistic"] is False and best.summary()["selection"] == "holdout"
    last = train_genotype("sinet", _tiny(stage1_handoff="last"), data)
    assert last.stage1_epoch == 2
    cfg_vb = _tiny(selection="val_best")
    data_vb = load_data(eg1800_root, cfg_vb, cache_dir=cache_dir, val_fraction=0.05, progress=False)
    assert data_vb.holdout is None and len(data_vb.train) > len(data.train)  # trains on every image
    vb = train_genotype("sinet", cfg_vb, data_vb)
    assert vb.summary()["optimistic"] is True and vb.best_epoch in (4,)  # only stage-2 epoch 2 of 2 is > 60%
    assert vb.stage1_epoch == 2


def test_init_from_the_imported_release(imported, eg1800_root, cache_dir) -> None:
    """Fine-tuning starts from the imported SINet (adapted to our input), not from scratch."""
    from nas.train import load_data, train_genotype

    cfg = _tiny(epochs=1, schedule="single_stage", stage1_epochs=None, input_size=(128, 128), lr=1e-5,
                init=imported["sinet"]["checkpoint"])
    data = load_data(eg1800_root, cfg, cache_dir=cache_dir, val_fraction=0.05, progress=False)
    res = train_genotype("sinet", cfg, data)
    assert res.miou > 85  # one tiny epoch from scratch lands near the 61 of all-foreground
    with pytest.raises(ValueError, match="is not the one trained"):
        train_genotype("extremec3net", _tiny(epochs=1, schedule="single_stage", stage1_epochs=None, loss="lovasz",
                                             input_size=(128, 128),
                                             init=imported["sinet"]["checkpoint"]), data)
