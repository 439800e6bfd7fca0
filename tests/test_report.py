"""Tests for nas.report: Pareto fronts, exact hypervolumes, figures and table writers."""
import csv
import itertools

import numpy as np
import pytest

from nas import report
from nas.report import (
    FrontPoint,
    hypervolume,
    hypervolume_table,
    pareto_front,
    plot_fronts,
    write_front_csv,
    write_table,
)


def P(label, miou, params, macs, trial=None, archid=None):
    return FrontPoint(label, miou, params, macs, trial, archid)


# ------------------------------------------------------------------------------ pareto_front

def test_pareto_front_removes_dominated_keeps_one_duplicate_and_sorts():
    a = P("a", 70.0, 100, 100, trial=0)
    pts = [
        P("f", 60.0, 200, 50),        # fewest MACs -> on the front
        a,
        P("b", 70.0, 100, 100, 1),    # duplicate of a in all objectives -> kept once (the first)
        P("c", 65.0, 50, 200),        # fewest params -> on the front
        P("d", 65.0, 100, 100),       # dominated by a (lower mIoU)
        P("e", 70.0, 100, 150),       # dominated by a (more MACs)
        P("g", 60.0, 200, 60),        # dominated by f
    ]
    front = pareto_front(pts)
    assert [p.label for p in front] == ["c", "a", "f"]
    assert [p.params for p in front] == sorted(p.params for p in front)
    assert front[1] is a


def test_pareto_front_edge_cases_and_mappings():
    assert pareto_front([]) == []
    single = [{"label": "x", "miou": 50.0, "params": 10, "conv_macs": 20, "trial": 3}]
    assert pareto_front(single) == [FrontPoint("x", 50.0, 10, 20, trial=3)]
    # equal mIoU and params, MACs differ -> the cheaper one dominates
    assert [p.label for p in pareto_front([P("u", 50, 10, 30), P("v", 50, 10, 20)])] == ["v"]


# ------------------------------------------------------------------------------ hypervolume

REF = (50.0, 200, 3000)


def test_hypervolume_single_box():
    # [50, 60] x [100, 200] x [1000, 3000] = 10 * 100 * 2000
    assert hypervolume([P("a", 60.0, 100, 1000)], REF, normalized=False) == pytest.approx(2e6)
    assert hypervolume([P("a", 60.0, 100, 1000)], REF) == pytest.approx(2e6 / (100 * 200 * 3000))


def test_a_latency_objective_keeps_a_faster_point_and_adds_an_axis():
    lat = ("miou", "params", "conv_macs", "ort_latency_ms")
    a = FrontPoint("a", 60.0, 100, 1000, ort_latency_ms=5.0)
    b = FrontPoint("b", 60.0, 150, 2000, ort_latency_ms=2.0)  # more params and MACs, but faster
    assert [p.label for p in pareto_front([a, b])] == ["a"]
    assert [p.label for p in pareto_front([a, b], lat)] == ["a", "b"]
    # one point: the box [50, 60] x [100, 200] x [1000, 3000] x [5, 10], normalised by 100 x 200 x 3000 x 10
    ref = (*REF, 10.0)
    assert hypervolume([a], ref, objectives=lat, normalized=False) == pytest.approx(10 * 100 * 2000 * 5)
    assert hypervolume([a], ref, objectives=lat) == pytest.approx(10 * 100 * 2000 * 5 / (100 * 200 * 3000 * 10))
    # b adds [50, 60] x [150, 200] x [2000, 3000] x [2, 5]
    both = 10 * 100 * 2000 * 5 + 10 * 50 * 1000 * 3
    assert hypervolume([a, b], ref, objectives=lat, normalized=False) == pytest.approx(both)
    with pytest.raises(ValueError, match=r"reference must be 4 finite numbers \(miou, params, conv_macs, "
                                         r"ort_latency_ms\)"):
        hypervolume([a], REF, objectives=lat)
    with pytest.raises(ValueError, match=r"point 'c' has no value for objective\(s\) \['ort_latency_ms'\]"):
        pareto_front([a, FrontPoint("c", 70.0, 100, 1000)], lat)


def test_hypervolume_two_overlapping_boxes():
    a, b = P("a", 60.0, 100, 1000), P("b", 55.0, 50, 2000)
    box_a = 10 * 100 * 2000
    box_b = 5 * 150 * 1000
    overlap = 5 * 100 * 1000        # mIoU [50,55] x params [100,200] x MACs [2000,3000]
    assert hypervolume([a, b], REF, normalized=False) == pytest.approx(box_a + box_b - overlap)
    assert report._hv3d_slicing(report._losses([a, b]), np.array([-50.0, 200, 3000])) == \
        pytest.approx(box_a + box_b - overlap)


def test_points_not_better_than_reference_contribute_nothing():
    good = P("a", 60.0, 100, 1000)
    bad = [P("low", 40.0, 10, 10), P("eq_miou", 50.0, 10, 10), P("big", 99.0, 200, 10),
           P("slow", 99.0, 10, 5000)]
    assert hypervolume(bad, REF) == 0.0
    assert hypervolume([], REF) == 0.0
    assert hypervolume(bad + [good], REF, normalized=False) == pytest.approx(2e6)


def test_normalized_is_raw_over_axis_ranges():
    rng = np.random.default_rng(0)
    pts = [P(str(i), float(rng.uniform(50, 80)), int(rng.integers(10_000, 200_000)),
             int(rng.integers(1e6, 6e7))) for i in range(20)]
    ref = (40.0, 250_000, 80_000_000)
    raw = hypervolume(pts, ref, normalized=False)
    norm = hypervolume(pts, ref)
    assert 0 < norm <= 1
    assert norm == pytest.approx(raw / (100 * ref[1] * ref[2]), rel=1e-9)


def test_hypervolume_rejects_bad_reference():
    with pytest.raises(ValueError):
        hypervolume([P("a", 60.0, 100, 1000)], (50.0, 200))
    with pytest.raises(ValueError):
        hypervolume([P("a", 60.0, 100, 1000)], (50.0, 0, 3000))


def _grid_hypervolume(pts, ref):
    """Count unit cells [m, m+1] x [p, p+1] x [f, f+1] covered by some box (integer data)."""
    m0, p_ref, f_ref = ref
    count = 0
    for m, p, f in itertools.product(range(int(m0), 10), range(0, p_ref), range(0, f_ref)):
        if any(q.miou >= m + 1 and q.params <= p and q.conv_macs <= f for q in pts):
            count += 1
    return count


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_brute_force_grid(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    pts = [P(str(i), float(rng.integers(0, 10)), int(rng.integers(0, 8)), int(rng.integers(0, 8)))
           for i in range(6)]
    ref = (2, 7, 7)       # some points are worse than this reference on some axis
    expected = _grid_hypervolume(pts, ref)
    assert hypervolume(pts, ref, normalized=False) == pytest.approx(expected)
    # the exact fallback used when Optuna's private routine is unavailable
    import optuna._hypervolume as ohv
    monkeypatch.delattr(ohv, "compute_hypervolume")
    assert hypervolume(pts, ref, normalized=False) == pytest.approx(expected)


def test_hypervolume_table_rows():
    fronts = {"s1": [P("a", 60.0, 100, 1000), P("d", 55.0, 150, 2000)], "s2": []}
    rows = hypervolume_table(fronts, REF)
    assert [r["study"] for r in rows] == ["s1", "s2"]
    assert rows[0]["front_size"] == 1 and rows[1]["front_size"] == 0
    assert rows[0]["hypervolume"] == pytest.approx(2e6 / 6e7)
    assert rows[1]["hypervolume"] == 0.0
    assert rows[0]["reference"] == "(50, 200, 3,000)"


# ------------------------------------------------------------------------------ outputs

def test_plot_fronts_writes_png_and_offline_html(tmp_path):
    fronts = {"nsga2": [P("arch_a", 90.1, 60_000, 40_000_000, trial=3, archid="abc123"),
                        P("arch_b", 91.5, 90_000, 70_000_000, trial=7, archid="def456")],
              "random": [P("arch_r", 89.0, 70_000, 50_000_000, trial=1)]}
    every = {k: v + [P("bad", 80.0, 120_000, 90_000_000)] for k, v in fronts.items()}
    refs = [P("SINet", 92.0, 86_910, 63_740_000), P("ExtremeC3Net", 93.5, 37_900, 105_000_000)]
    png, html = plot_fronts(fronts, tmp_path / "f" / "front.png", tmp_path / "front.html",
                            references=refs, all_points=every, title="EG1800 fronts")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    text = html.read_text(encoding="utf-8")
    assert "plotly" in text and "arch_a" in text and "SINet" in text and "abc123" in text
    assert len(text) > 1_000_000 and 'src="https://cdn.plot.ly' not in text   # plotly.js embedded


def test_write_front_csv_round_trip(tmp_path):
    confirmed = FrontPoint("c", 87.5, 30_000, 9_000_000, trial=7, rung="search", miou_std=0.5,
                           seeds=(0, 1, 2), miou_seeds=(87.0, 87.5, 88.0), within_noise=True, ort_latency_ms=4.25)
    pts = [P("a", 90.123456789, 86_910, 63_740_000, trial=4, archid="x_1"), P("b", 88.5, 1, 2), confirmed]
    path = write_front_csv(pts, tmp_path / "front.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "trial", "archid", "miou", "params", "conv_macs", "rung", "miou_std",
                             "seeds", "miou_seeds", "within_noise", "ort_latency_ms"]
    assert rows[0] == {"label": "a", "trial": "4", "archid": "x_1", "miou": "90.123456789",
                       "params": "86910", "conv_macs": "63740000", "rung": "", "miou_std": "", "seeds": "",
                       "miou_seeds": "", "within_noise": "", "ort_latency_ms": ""}
    assert rows[1]["trial"] == "" and rows[1]["archid"] == ""
    assert rows[2]["rung"] == "search" and rows[2]["seeds"] == "0;1;2"
    assert rows[2]["miou_seeds"] == "87.0;87.5;88.0" and rows[2]["within_noise"] == "True"
    assert rows[2]["ort_latency_ms"] == "4.25" and report.as_front_point(rows[2]).ort_latency_ms == 4.25


def test_write_table_md_csv_tex(tmp_path):
    rows = [{"model": "SINet_base", "params": 86_910, "miou": 95.123456789, "hv": None},
            {"model": "ours 50% & #1", "params": 37_900, "miou": 94.5, "hv": 0.3125}]
    cols = ["model", "params", "miou", "hv"]
    paths = write_table(rows, tmp_path / "t" / "table", columns=cols, title="Main_results",
                        notes=["mIoU x100 on EG1800 val."])
    assert set(paths) == {"md", "csv", "tex"} and all(p.exists() for p in paths.values())

    with paths["csv"].open() as f:
        back = list(csv.DictReader(f))
    assert back[0] == {"model": "SINet_base", "params": "86910", "miou": "95.123456789", "hv": ""}
    assert float(back[0]["miou"]) == 95.123456789 and int(back[1]["params"]) == 37_900
    assert float(back[1]["hv"]) == 0.3125

    md = paths["md"].read_text()
    assert md.startswith("# Main_results")
    assert "| SINet_base | 86,910 | 95.12 | – |" in md
    assert "|:---|---:|---:|---:|" in md
    assert md.rstrip().endswith("mIoU x100 on EG1800 val.")

    tex = paths["tex"].read_text()
    for s in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrr}",
              r"\caption{Main\_results}", r"SINet\_base & 86{,}910 & 95.12 & --",
              r"ours 50\% \& \#1 & 37{,}900 & 94.50 & 0.31"):
        assert s in tex, s
    assert "SINet_base" not in tex


def test_write_table_per_column_digits(tmp_path):
    paths = write_table([{"study": "a", "hypervolume": 0.012345}], tmp_path / "hv",
                        columns=["study", "hypervolume"], float_digits={"hypervolume": 4})
    assert "0.0123" in paths["md"].read_text()
