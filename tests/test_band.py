"""The Gold band: means, spreads, standard errors, half-widths and verdicts, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmrecun_ray.errors import DataError
from mmrecun_ray.unlearning.audit import AuditResult
from mmrecun_ray.unlearning.band import (
    Band,
    gold_bands,
    gold_pairs,
    judge,
    overlap_ceiling,
    paired,
    paired_vs_golds,
    passes,
)


def result(values: dict[str, float], se: dict[str, float] | None = None,
           per_unit: dict[str, list[float]] | None = None,
           top20: np.ndarray | None = None) -> AuditResult:
    r = AuditResult()
    for m, v in values.items():
        r.put(m, v, (se or {}).get(m, float("nan")),
              None if per_unit is None or m not in per_unit else np.asarray(per_unit[m]))
    r.top20 = top20
    return r


# -- bands without per-unit vectors: sd against the mean of the runs' s.e. ------------------------
def test_band_hand_computed_from_three_golds() -> None:
    golds = [result({"mia_auc": v}, {"mia_auc": s})
             for v, s in ((0.50, 0.005), (0.52, 0.007), (0.54, 0.006))]
    band = gold_bands(golds)["mia_auc"]
    # mean 0.52; sd (ddof=1) = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02; se = mean(s) = 0.006
    # half-width = max(2 * 0.02, 2 * 0.006) = 0.04 -> [0.48, 0.56]
    assert band.mean == pytest.approx(0.52)
    assert band.sd == pytest.approx(0.02)
    assert band.se == pytest.approx(0.006)
    assert band.n == 3
    assert band.half_width == pytest.approx(0.04)
    assert (band.lo, band.hi) == (pytest.approx(0.48), pytest.approx(0.56))
    assert band.verdict(0.53) == "inside"
    assert band.verdict(0.5601) == "above"
    assert band.verdict(0.4799) == "below"
    assert band.verdict(float("nan")) == "n/a" and band.verdict(None) == "n/a"


def test_band_edges_count_as_inside() -> None:
    band = Band.from_stats("m", [0.1, 0.3], se=0.0)
    # mean 0.2, sd = sqrt(0.02) = 0.141421..., half 0.282842...
    assert band.half_width == pytest.approx(2 * math.sqrt(0.02))
    assert band.verdict(band.hi) == "inside" and band.verdict(band.lo) == "inside"
    # values written out by hand land on the edges up to rounding: still inside
    assert band.verdict(0.2 + 2 * math.sqrt(0.02)) == "inside"
    assert band.verdict(band.hi + 1e-9) == "above"
    assert band.verdict(band.lo - 1e-9) == "below"


def test_se_dominates_when_the_golds_agree() -> None:
    golds = [result({"retain_recall@20": 0.40}, {"retain_recall@20": 0.01}),
             result({"retain_recall@20": 0.40}, {"retain_recall@20": 0.03})]
    band = gold_bands(golds)["retain_recall@20"]
    # sd 0 -> half-width = 2 * mean(0.01, 0.03) = 0.04
    assert band.sd == 0.0 and band.se == pytest.approx(0.02)
    assert band.half_width == pytest.approx(0.04)


def test_one_gold_gives_a_two_se_band() -> None:
    per_unit = {"fold_in_recall@20": [0.2, 0.4, 0.3, 0.3]}
    g = result({"fold_in_recall@20": 0.3}, {"fold_in_recall@20": 0.01}, per_unit)
    band = gold_bands([g])["fold_in_recall@20"]
    # K = 1: no sd, no Gold pair -> the run's own s.e.
    assert band.n == 1 and band.sd == 0.0 and band.se == pytest.approx(0.01)
    assert (band.lo, band.hi) == (pytest.approx(0.28), pytest.approx(0.32))
    assert gold_pairs([g], "fold_in_recall@20") == []
    assert math.isnan(overlap_ceiling([g]))


# -- per-unit metrics: paired Gold-vs-Gold s.e. -------------------------------------------------------
def test_band_se_from_the_paired_gold_difference() -> None:
    a = result({"fold_in_recall@20": 0.75}, {"fold_in_recall@20": 0.25},
               {"fold_in_recall@20": [1, 0, 1, 1]})
    b = result({"fold_in_recall@20": 0.75}, {"fold_in_recall@20": 0.25},
               {"fold_in_recall@20": [1, 1, 0, 1]})
    # per-unit a - b = [0, -1, 1, 0]: mean 0, var (ddof=1) 2/3, paired se sqrt(2/3) / 2
    assert gold_pairs([a, b], "fold_in_recall@20") == [(0.0, pytest.approx(math.sqrt(1 / 6)))]
    band = gold_bands([a, b])["fold_in_recall@20"]
    # se = the paired s.e. sqrt(1/6); sd = 0 -> half-width 2 sqrt(1/6)
    assert band.se == pytest.approx(math.sqrt(1 / 6))
    assert band.half_width == pytest.approx(2 * math.sqrt(1 / 6))
    # the method ranks every held-out half: diffs vs a [0, 1, 0, 0], vs b [0, 0, 1, 0]
    # each mean 0.25, var (ddof=1) = (3 * 0.0625 + 0.5625) / 3 = 0.25 -> se 0.5 / 2 = 0.25
    m = result({"fold_in_recall@20": 1.0}, {"fold_in_recall@20": 0.0},
               {"fold_in_recall@20": [1, 1, 1, 1]})
    assert paired_vs_golds(m, [a, b], "fold_in_recall@20") == [
        (pytest.approx(0.25), pytest.approx(0.25)), (pytest.approx(0.25), pytest.approx(0.25))]


def test_unaligned_vectors_fall_back_to_unpaired() -> None:
    a = result({"m": 0.5}, {"m": 0.03}, {"m": [0.5, 0.5]})
    b = result({"m": 0.4}, {"m": 0.04}, {"m": [0.4, 0.4, 0.4]})
    d, se = paired(a, b, "m")
    assert d == pytest.approx(0.1) and se == pytest.approx(0.05)
    with pytest.raises(DataError, match="metric 'x' missing"):
        paired(a, b, "x")


# -- verdicts --------------------------------------------------------------------------------------
def test_judge_and_passes() -> None:
    golds = [result({"retain_recall@20": r, "fold_in_recall@20": f, "overlap@20_vs_gold": 1.0},
                    {"retain_recall@20": 0.001, "fold_in_recall@20": 0.005})
             for r, f in ((0.40, 0.30), (0.42, 0.32))]
    bands = gold_bands(golds)
    assert set(bands) == {"retain_recall@20", "fold_in_recall@20"}   # overlap is not banded
    # retain band: mean 0.41, sd sqrt(2e-4) = 0.01414 -> [0.38172, 0.43828]
    # fold-in band: mean 0.31, same sd -> [0.28172, 0.33828]
    good = result({"retain_recall@20": 0.41, "fold_in_recall@20": 0.33})
    leaky = result({"retain_recall@20": 0.41, "fold_in_recall@20": 0.373})
    assert judge(good, bands) == {"retain_recall@20": "inside", "fold_in_recall@20": "inside"}
    assert judge(leaky, bands)["fold_in_recall@20"] == "above"
    assert passes(good, bands) and not passes(leaky, bands)
    # judged on fewer metrics, the leak is not looked at
    assert passes(leaky, bands, metrics=["retain_recall@20"])
    # a metric asked for but missing fails
    assert not passes(good, bands, metrics=["retain_recall@20", "mia_auc"])
    # inside the retain band (>= 0.38172) but under 0.97 x 0.41 = 0.3977: fails
    low = result({"retain_recall@20": 0.39, "fold_in_recall@20": 0.31})
    assert judge(low, bands)["retain_recall@20"] == "inside"
    assert not passes(low, bands)
    assert passes(low, bands, retain_ratio_min=0.95)       # 0.39 >= 0.3895


def test_overlap_ceiling_is_the_mean_over_gold_pairs() -> None:
    t1 = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    t2 = np.array([[1, 2, 9, 10], [5, 6, 7, 8]])      # overlaps 2/4, 4/4 -> 0.75
    t3 = np.array([[11, 12, 13, 14], [5, 6, 7, 8]])   # vs t1: 0, 1 -> 0.5; vs t2: 0, 1 -> 0.5
    golds = [result({"m": 0.0}, top20=t) for t in (t1, t2, t3)]
    assert overlap_ceiling(golds) == pytest.approx((0.75 + 0.5 + 0.5) / 3)


def test_band_needs_a_gold() -> None:
    with pytest.raises(DataError, match="at least one Gold"):
        gold_bands([])
