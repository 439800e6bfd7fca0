"""Every registered network: shapes, gradients, no NaNs; the gate pitfall."""

from __future__ import annotations

import warnings

import pytest
import torch

from search_spaces import GateWarning, create_model, get_genotype, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("classes", [1, 2])
def test_forward_backward_shapes(name: str, classes: int) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GateWarning)
        model = create_model(name, num_classes=classes)
    x = torch.randn(2, 3, 64, 96)
    y = model(x)
    s = model.output_stride
    assert y.shape == (2, classes, 64 // s, 96 // s)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["sinet", "extremec3net"])
def test_full_resolution_logits_at_224(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2, 224, 224)


def test_input_size_not_allowed_raises() -> None:
    model = create_model("sinet")  # pool 4 at 1/8 needs multiples of 32
    with pytest.raises(ValueError, match="input size 72x72 not allowed.*pool"):
        model(torch.randn(1, 3, 72, 72))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.randn(1, 1, 64, 64))


def _gate_grad(classes: int) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GateWarning)
        model = create_model("sinet", num_classes=classes)
    x = torch.randn(2, 3, 64, 64)
    captured = {}
    dec = model.decoder
    orig = dec.gate

    def spy(a: torch.Tensor) -> torch.Tensor:
        captured["gate"] = orig(a)
        return captured["gate"]

    dec.gate = spy
    model(x).sum().backward()
    return captured["gate"], float(dec.skip[0].weight.grad.abs().sum())


def test_information_blocking_gate_nonzero_for_two_classes() -> None:
    gate, skip_grad = _gate_grad(2)
    assert gate.abs().max() > 0.01
    assert skip_grad > 0


def test_information_blocking_gate_identically_zero_for_one_class() -> None:
    gate, skip_grad = _gate_grad(1)
    assert torch.count_nonzero(gate) == 0
    assert skip_grad == 0.0  # the skip path learns nothing: the release's pitfall


def test_one_class_information_blocking_warns() -> None:
    with pytest.warns(GateWarning, match="identically 0"):
        create_model("sinet", num_classes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GateWarning)
        create_model("sinet", num_classes=1, decoder="skip")
        create_model("sinet", num_classes=2)


def test_stage1_weights_load_into_full_network() -> None:
    enc = create_model("sinet_encoder")
    full = create_model("sinet")
    missing, unexpected = full.load_state_dict(enc.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing)
    c3_enc, c3 = create_model("extremec3net_encoder"), create_model("extremec3net")
    missing, unexpected = c3.load_state_dict(c3_enc.state_dict(), strict=False)
    assert unexpected == ["classifier.weight"]  # the release drops the stage-1 head
    assert not any(k.startswith("encoder.") for k in missing)


def test_unknown_model_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'sinett'.*extremec3net.*sinet"):
        get_genotype("sinett")
    with pytest.raises(ValueError, match="unknown genotype override.*colour"):
        get_genotype("sinet", colour=3)
