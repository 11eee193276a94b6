"""The audit report: payload from audits, every section rendered with the right numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.unlearning.audit import AuditResult
from mmrecun_ray.unlearning.report import AuditedRun, build_payload, render_markdown, write_report

REQUEST = {"spec": "users:5%", "id": "4191b03187c7a67e", "kind": "users", "forget_pairs": 2344}


def audit(retain: float, mia: float, fold: list[float], top: np.ndarray) -> AuditResult:
    r = AuditResult()
    r.put("retain_recall@20", retain, 0.001)
    r.put("mia_auc", mia, 0.01)
    r.put("fold_in_recall@20", float(np.mean(fold)), 0.05, np.asarray(fold))
    r.top20 = top
    r.seconds = {"ranking": 0.4, "fold_in": 0.05}
    return r


def tops(shared: int, seed: int) -> np.ndarray:
    """(2, 20) top-20 lists: the first ``shared`` items of each row common to every call."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(2):
        own = 1000 * (seed + 1) + 100 * u + rng.permutation(20)[:20 - shared]
        rows.append(np.concatenate([np.arange(shared) + 50 * u, own]))
    return np.asarray(rows)


def runs() -> list[AuditedRun]:
    gold_a = audit(0.40, 0.50, [0.25, 0.5, 0.25, 0.25], tops(10, 0))
    gold_b = audit(0.42, 0.52, [0.25, 0.25, 0.5, 0.25], tops(10, 1))
    leaky = audit(0.41, 0.55, [0.75, 0.75, 0.75, 0.5], tops(10, 2))
    good = audit(0.405, 0.515, [0.25, 0.5, 0.5, 0.25], tops(10, 3))
    orig = audit(0.415, 0.98, [1.0, 1.0, 1.0, 1.0], tops(10, 4))
    return [AuditedRun("mmrecun", "method", leaky, seed=0, wall_seconds=10.5, peak_rss_mb=900.4,
                       peak_rss_tree_mb=1400.0),
            AuditedRun("good", "method", good, seed=0, wall_seconds=21.0),
            AuditedRun("original", "reference", orig, wall_seconds=0.0005, speedup_vs_gold=2e5),
            AuditedRun("gold", "gold", gold_a, seed=0, wall_seconds=100.0),
            AuditedRun("gold-s1", "gold", gold_b, seed=1, wall_seconds=110.0)]


def test_payload_bands_pairs_and_verdicts() -> None:
    p = build_payload(runs(), REQUEST, "lightgcn", "lfm2k")
    bands = p["bands"]
    # retain: mean 0.41, sd 0.01414 -> half 0.02828; MIA: mean 0.51, half max(0.0283, 0.02)
    assert bands["retain_recall@20"]["mean"] == pytest.approx(0.41)
    assert bands["retain_recall@20"]["half_width"] == pytest.approx(0.0282843, abs=1e-6)
    assert bands["mia_auc"]["half_width"] == pytest.approx(0.0282843, abs=1e-6)
    # fold-in: Gold means equal (sd 0); Gold a - b per unit [0, .25, -.25, 0]: paired
    # se = sqrt(0.125 / 3) / 2 = 0.10206 = the band's se, half 0.20412
    assert bands["fold_in_recall@20"]["sd"] == 0.0
    assert bands["fold_in_recall@20"]["se"] == pytest.approx(0.1020621, abs=1e-6)
    assert bands["fold_in_recall@20"]["half_width"] == pytest.approx(0.2041241, abs=1e-6)
    assert p["gold_pairs"]["fold_in_recall@20"] == [[0.0, pytest.approx(0.1020621, abs=1e-6)]]
    rows = {r["method"]: r for r in p["rows"]}
    assert rows["mmrecun"]["verdicts"] == {"retain_recall@20": "inside", "mia_auc": "above",
                                           "fold_in_recall@20": "above"}
    assert rows["mmrecun"]["passes"] is False and rows["good"]["passes"] is True
    # mmrecun - gold per unit [.5, .25, .5, .25]: mean .375, se sqrt(0.0625 / 3) / 2 = 0.0722
    assert rows["mmrecun"]["paired"]["fold_in_recall@20"] == [
        [pytest.approx(0.375), pytest.approx(0.0721688, abs=1e-6)]] * 2
    # a Gold row is paired with the other Gold only
    assert len(rows["gold"]["paired"]["fold_in_recall@20"]) == 1
    # speed-up from the mean Gold wall (105 s); overlap from the top-20 lists (10 of 20 shared)
    assert rows["mmrecun"]["speedup_vs_gold"] == pytest.approx(10.0)
    # a reference row unlearns nothing: no speed-up, even when one was handed in
    assert rows["original"]["speedup_vs_gold"] is None
    assert rows["mmrecun"]["overlap_vs_golds"] == [0.5, 0.5]
    assert p["gold_overlap_ceiling"] == 0.5


def test_report_renders_every_section(tmp_path: Path) -> None:
    out = write_report(str(tmp_path / "rep"), build_payload(runs(), REQUEST, "lightgcn", "lfm2k"))
    md = Path(out["md"]).read_text()
    assert md.startswith("# Unlearning audit: lfm2k, lightgcn, request users:5%")
    expected = [
        "- **Gold retrains**: 2 (seeds 0, 1)",
        # verdicts with their reasons
        "- mmrecun: FAIL: MIA AUC 0.5500 is above the Gold band [0.4817, 0.5383]; "
        "Fold-in Recall@20 0.6875 is above the Gold band [0.1084, 0.5166].",
        "- good: PASS: every audited number inside the Gold band.",
        "- original (reference): FAIL:",
        # the band row and markers in the method table (text, not only colour)
        "| Gold band (K=2) | band | — | 0.4100 ± 0.0283 | 0.5100 ± 0.0283 | 0.3125 ± 0.2041 "
        "| ceiling 0.5000 |",
        "| mmrecun | method | 0 | 0.4100 ✓ | 0.5500 ↑ | 0.6875 ↑ | 0.5000 |",
        "| gold-s1 | gold | 1 | 0.4200 ✓ | 0.5200 ✓ | 0.3125 ✓ | 0.5000 |",
        "✓ inside the Gold band, ↑ above it, ↓ below it",
        # the cost table: wall time, speed-up over the mean Gold wall (105 s), memory
        "| mmrecun | method | 10.5 | 10.0× | 900 | 1400 |",
        "| gold-s1 | gold | 110 | 1.0× | — | — |",
        # attacks: paired differences against each Gold, and the Gold-vs-Gold line
        "| mmrecun | 0.6875 | +0.3750 ± 0.0722 (+5.2 s.e.) | +0.3750 ± 0.0722 (+5.2 s.e.) |",
        "| mmrecun | 0.5500 | +0.0500 ± 0.0141 (+3.5 s.e.) | +0.0300 ± 0.0141 (+2.1 s.e.) |",
        "| gold | 0.3125 | — | +0.0000 ± 0.1021 (+0.0 s.e.) |",
        "Gold vs Gold: gold − gold-s1 = +0.0000 ± 0.1021 (+0.0 s.e.)",
        "Gold-vs-Gold overlap@20 (the ceiling): 0.5000.",
        "| Model | ranking | fold_in |",
    ]
    for line in expected:
        assert line in md, line

    page = Path(out["html"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2                               # scatter + wall time
    for svg in svgs:
        ElementTree.fromstring(svg)                     # well-formed XML
    scatter = svgs[0]
    assert "Fold-in Recall@20 against Retain Recall@20" in scatter
    assert ">Gold band</text>" in scatter
    for name in ("mmrecun", "good", "original", "gold", "gold-s1"):
        assert f">{name}</text>" in scatter
    # the marked cells carry a class as well as the marker
    assert '<td class="above">0.6875 ↑</td>' in page
    assert '<td class="inside">0.4100 ✓</td>' in page
    assert '<span class="fail">FAIL</span>' in page and '<span class="pass">PASS</span>' in page

    data = json.loads(Path(out["json"]).read_text())
    assert data["rows"][0]["audit"]["values"]["fold_in_recall@20"] == pytest.approx(0.6875)
    assert data["bands"]["mia_auc"]["n"] == 2


def test_scatter_band_rectangle_sits_on_the_band(tmp_path: Path) -> None:
    p = build_payload(runs(), REQUEST, "lightgcn", "lfm2k")
    page = Path(write_report(str(tmp_path), p)["html"]).read_text()
    scatter = re.findall(r"<svg.*?</svg>", page, flags=re.S)[0]
    root = ElementTree.fromstring(scatter)
    ns = "{http://www.w3.org/2000/svg}"
    band = [r for r in root.iter(f"{ns}rect") if r.get("stroke") == "#d95f02"]
    assert len(band) == 1
    # every Gold point lies inside the band rectangle, the leaky method above it
    x0, y0 = float(band[0].get("x")), float(band[0].get("y"))
    x1, y1 = x0 + float(band[0].get("width")), y0 + float(band[0].get("height"))
    labels = {t.text: (float(t.get("x")), float(t.get("y"))) for t in root.iter(f"{ns}text")}
    circles = [(float(c.get("cx")), float(c.get("cy")), c.get("fill")) for c in
               root.iter(f"{ns}circle")]
    golds = [c for c in circles if c[2] == "white"]
    assert len(golds) == 2
    assert all(x0 <= cx <= x1 and y0 <= cy <= y1 for cx, cy, _ in golds)
    leaky = min(circles, key=lambda c: abs(c[0] + 8 - labels["mmrecun"][0]))
    assert leaky[1] < y0                                # above the band (SVG y grows down)


def test_one_gold_and_bad_payloads(tmp_path: Path) -> None:
    one = [r for r in runs() if r.method != "gold-s1"]
    p = build_payload(one, REQUEST, "lightgcn", "lfm2k")
    assert np.isnan(p["gold_overlap_ceiling"])
    # K = 1: the band is the run's own 2 s.e.: fold-in 0.3125 +- 0.1
    assert p["bands"]["fold_in_recall@20"]["half_width"] == pytest.approx(0.1)
    out = write_report(str(tmp_path), p)
    md = Path(out["md"]).read_text()
    assert "Gold vs Gold: one Gold only, no pair." in md
    assert "| Gold band (K=1) |" in md
    assert json.loads(Path(out["json"]).read_text())["gold_overlap_ceiling"] is None
    with pytest.raises(ConfigError, match="no row with role 'gold'"):
        build_payload([r for r in runs() if r.role != "gold"], REQUEST, "m", "d")
    with pytest.raises(ConfigError, match="appears twice"):
        build_payload(runs() + runs()[:1], REQUEST, "m", "d")
    with pytest.raises(ConfigError, match="role must be one of"):
        build_payload([AuditedRun("x", "oracle", runs()[0].result)], REQUEST, "m", "d")
    with pytest.raises(ConfigError, match="'rows' must be a non-empty list"):
        render_markdown({"rows": []})
