"""Zero-cost proxies on tiny networks whose values can be worked out by hand; rank statistics against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from nas.fidelity_report import rank_agreement, recommend_rung, rung_rows, top_overlap
from nas.proxies import PROXIES, grad_norm, meco, naswot, score_proxies, snip, synflow, zico


def _conv1x1(weights: list[list[float]]) -> nn.Conv2d:
    w = torch.tensor(weights, dtype=torch.float32)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
    return conv


def test_synflow_of_a_linear_chain_is_depth_times_output() -> None:
    # R = 1^T W2 W1 1 with |W|; dR/dW1 = (|W2|^T 1) 1^T, so sum |W1 * dR/dW1| = R, and the same for W2: flow 2R.
    w1 = torch.tensor([[1.0, -2.0, 0.5, 1.0], [0.0, 3.0, -1.0, 2.0], [1.5, 1.0, 1.0, -1.0]])
    w2 = torch.tensor([[2.0, -1.0, 0.5], [1.0, 1.0, -3.0]])
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[1].weight.copy_(w2)
    r = float(torch.ones(2) @ w2.abs() @ w1.abs() @ torch.ones(4))
    assert synflow(net, torch.randn(5, 4)) == pytest.approx(math.log(2 * r), rel=1e-12)
    assert net[0].weight[0, 1] == -2.0  # the caller's model is not changed


def test_grad_norm_and_snip_of_a_1x1_conv_by_hand() -> None:
    # logits (a, b) at every pixel, all labels 1: dCE/dlogit = (p0, p1 - 1) = (1 - p1)(1, -1) per pixel,
    # the input is 1 everywhere, so dL/dW = (1 - p1) * (1, -1).
    a, b = 0.3, -0.4
    model = _conv1x1([[a], [b]])
    x, y = torch.ones(2, 1, 3, 3), torch.ones(2, 3, 3, dtype=torch.long)
    q = 1 - 1 / (1 + math.exp(-(b - a)))
    assert grad_norm(model, x, y) == pytest.approx(math.sqrt(2) * q, rel=1e-5)
    assert snip(model, x, y) == pytest.approx((abs(a) + abs(b)) * q, rel=1e-5)


def test_zico_by_hand() -> None:
    # W = 0: p = (0.5, 0.5). Sub-batch A all class 1: g_A = (0.5, -0.5); B all class 0: g_B = (-0.5, 0.5).
    # Per element mean|g| = 0.5, std (ddof 1) = 1 / sqrt(2): ratio 1/sqrt(2), two elements: log(sqrt(2)).
    model = _conv1x1([[0.0], [0.0]])
    x = torch.ones(4, 1, 2, 2)
    y = torch.cat([torch.ones(2, 2, 2), torch.zeros(2, 2, 2)]).long()
    assert zico(model, x, y) == pytest.approx(math.log(math.sqrt(2)), rel=1e-5)
    with pytest.raises(ValueError, match="zico needs >= 2 sub-batches"):
        zico(model, x[:1], y[:1])


def test_naswot_by_hand() -> None:
    # identity conv + ReLU: codes are the input signs. Image 0 all positive, image 1 all negative, image 2
    # half and half: K = [[4,0,2],[0,4,2],[2,2,4]] (4 units), log det = log 32.
    model = nn.Sequential(_conv1x1([[1.0]]), nn.ReLU())
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]).reshape(3, 1, 2, 2)
    k = np.array([[4, 0, 2], [0, 4, 2], [2, 2, 4]], dtype=float)
    assert naswot(model, x) == pytest.approx(math.log(abs(np.linalg.det(k))), rel=1e-9)
    assert naswot(model, x) == pytest.approx(math.log(32), rel=1e-9)


def test_meco_by_hand() -> None:
    # identity 2-channel conv: the correlation matrix of the first image's channels is [[1, r], [r, 1]],
    # eigenvalues 1 +- r: the score is 1 - |r|.
    c0, c1 = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    x = torch.tensor([c0, c1]).reshape(1, 2, 2, 2).repeat(2, 1, 1, 1)
    x[1] = torch.randn(2, 2, 2)  # only the first image counts
    r = np.corrcoef(c0, c1)[0, 1]
    assert meco(_conv1x1([[1.0, 0.0], [0.0, 1.0]]), x) == pytest.approx(1 - abs(r), abs=1e-9)


def test_every_proxy_scores_sinet_in_seconds() -> None:
    from search_spaces import create_model, get_genotype

    torch.manual_seed(0)
    model = create_model(get_genotype("sinet"))
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 64, 64) > 0.5).long()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = score_proxies(model, x, y)
    assert set(out) == set(PROXIES)
    assert all(math.isfinite(v["score"]) and v["cpu_s"] >= 0 for v in out.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched (BN stats too)
    with pytest.raises(ValueError, match=r"unknown proxy name\(s\) \['nope'\]"):
        score_proxies(model, x, y, ["nope"])


def test_rank_statistics_match_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.5, size=12)
    r = rank_agreement(list(x), list(y), n_resamples=500)
    assert r["kendall_tau"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert r["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert r["kendall_tau_lo"] < r["kendall_tau"] < r["kendall_tau_hi"]
    assert r["spearman_rho_lo"] < r["spearman_rho"] < r["spearman_rho_hi"]
    # the same data, reversed: the intervals flip sign
    r2 = rank_agreement(list(x), list(-y), n_resamples=500)
    assert r2["kendall_tau"] == pytest.approx(-r["kendall_tau"])
    assert rank_agreement([1, 2], [1, 2])["kendall_tau_lo"] is None  # no interval from 2 points
    assert top_overlap([4, 3, 2, 1], [1, 2, 3, 4]) == 0.0


def test_rung_rows_seed_noise_ceiling_and_recommendation() -> None:
    # 8 architectures; the top rung's truth is arch index; 'good' ranks them the same with noise 0.1,
    # 'bad' reverses them.
    cells = []
    for a in range(8):
        for s in (0, 1):
            cells += [{"arch": a, "rung": "top", "seed": s, "value": a + 0.01 * s, "cpu_s": 100.0},
                      {"arch": a, "rung": "good", "seed": s, "value": a + (0.1 if s else -0.1), "cpu_s": 10.0},
                      {"arch": a, "rung": "bad", "seed": s, "value": -a, "cpu_s": 1.0}]
    meta = [{"name": n, "kind": "trained"} for n in ("bad", "good", "top")]
    rows, means = rung_rows(cells, meta, "top", n_resamples=300)
    by = {r["rung"]: r for r in rows}
    assert by["good"]["kendall_tau"] == pytest.approx(1.0) and by["good"]["outside_noise"] is True
    assert by["bad"]["kendall_tau"] == pytest.approx(-1.0) and by["bad"]["outside_noise"] is False
    assert by["good"]["seed_std"] == pytest.approx(math.sqrt(0.02))  # std of (a - 0.1, a + 0.1)
    assert by["top"]["seed_tau"] == pytest.approx(1.0)
    assert by["good"]["top_quarter_overlap"] == 1.0 and by["bad"]["top_quarter_overlap"] == 0.0
    assert by["good"]["seconds_per_arch"] == 10.0
    assert means["top"][3] == pytest.approx(3.005)
    assert recommend_rung(rows, "top", max_seconds=60)["rung"] == "good"
    rec = recommend_rung(rows, "top", max_seconds=5)
    assert rec["rung"] == "bad" and rec["meets_target"] is False
