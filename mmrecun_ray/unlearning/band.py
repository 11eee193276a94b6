"""The Gold band: what "as if never trained on D_f" looks like, with its noise.

One Gold retrain is one draw: another seed gives other numbers. K Gold retrains (different
seeds, same retain set, audited with the same :class:`~mmrecun_ray.unlearning.audit.AuditContext`)
give, per metric, a mean and a spread; a method's number is judged *inside* the band
``mean +- max(2 sd, 2 se)`` or *above* / *below* it, never against one run.

- ``sd``: the sample standard deviation of the K Gold values (ddof=1; 0 for K=1): the
  seed-to-seed spread, from K values.
- ``se``: the measurement noise of the comparison a verdict makes — a model against the
  Golds, on the same units. For a metric with per-unit vectors and K >= 2 it is the mean
  over Gold pairs of the *paired* standard error of the Gold-vs-Gold difference: exactly
  the noise of "one model minus another" when both are audited on the same units (every
  model is, with one :class:`~mmrecun_ray.unlearning.audit.AuditContext`). Paired, it
  leaves out how much the units differ from each other (some users are simply easier),
  which all models share and which would make the band about 2.5 times too wide
  (Last.fm-2K users:5%, LightGCN, fold-in Recall@20: per-run unpaired s.e. 0.019 and 0.021,
  Gold-vs-Gold paired s.e. 0.011); and it rests on n units rather than K runs, so it is
  stable where ``sd`` from 2 or 3 runs is not. For AUC metrics the units are users
  (pseudo-values, clustered DeLong). Without per-unit vectors, or for K = 1 (no pair),
  ``se`` is the mean of the runs' own s.e.: the band of one Gold is 2 s.e. wide.

Calibration: with ``s`` the per-run noise, the paired s.e. is ``s * sqrt(2)``, and another
Gold draw lies at a distance from the K-run mean whose variance is ``(1 + 1/K) s^2``: it
falls outside ``mean +- 2 sqrt(2) s`` for about 2% of metrics when K = 2 and 1.4% when
K = 3, so a method that is as good as Gold passes a dozen metrics at once most of the time,
while a residue of 3 paired s.e. or more is flagged.

Overlap@20 has no band of this kind (a Gold's overlap with itself is 1): the report shows
each method's overlap with the Golds next to the Gold-vs-Gold ceiling
(:func:`overlap_ceiling`).

Pure numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation.metrics import paired_difference
from mmrecun_ray.unlearning.audit import AuditResult, topk_overlap

#: metrics compared with Gold in another way (see the module doc)
UNBANDED = ("overlap@20_vs_gold",)
#: the retain metric and the share of Gold's mean a passing method must keep
RETAIN_METRIC = "retain_recall@20"
RETAIN_RATIO_MIN = 0.97
#: relative slack of the band edges, so a value computed exactly at an edge is inside
_EDGE_EPS = 1e-12
#: the verdicts of :meth:`Band.verdict`
VERDICTS = ("inside", "above", "below", "n/a")


@dataclass(frozen=True)
class Band:
    """One metric's Gold band.

    Attributes:
        metric: metric name.
        mean: mean over the K Gold runs.
        sd: sample standard deviation over the runs (ddof=1; 0 for K=1).
        se: the standard error of a model-vs-Gold comparison (module doc).
        n: K, the number of Gold runs.
        half_width: ``max(2 sd, 2 se)`` (NaN terms ignored; 0 when both are NaN).
        lo, hi: ``mean - half_width``, ``mean + half_width``.
    """

    metric: str
    mean: float
    sd: float
    se: float
    n: int
    half_width: float
    lo: float
    hi: float

    @classmethod
    def from_stats(cls, metric: str, values: Sequence[float], se: float) -> "Band":
        """A band from the K Gold ``values`` of a metric and its per-run ``se``."""
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            raise DataError(f"Gold band of {metric}: no Gold value")
        mean = float(np.mean(v))
        sd = float(np.std(v, ddof=1)) if v.size >= 2 else 0.0
        terms = [2.0 * x for x in (sd, se) if x is not None and math.isfinite(x)]
        half = max(terms) if terms else 0.0
        return cls(metric=metric, mean=mean, sd=sd, se=float(se), n=int(v.size),
                   half_width=half, lo=mean - half, hi=mean + half)

    def verdict(self, x: float | None) -> str:
        """``"inside"`` when ``lo <= x <= hi`` (edges included), ``"above"`` / ``"below"``
        otherwise, ``"n/a"`` for a missing or NaN value."""
        if x is None or not math.isfinite(float(x)):
            return "n/a"
        slack = _EDGE_EPS * max(1.0, abs(self.lo), abs(self.hi))
        if x > self.hi + slack:
            return "above"
        if x < self.lo - slack:
            return "below"
        return "inside"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (every field)."""
        return asdict(self)


# -- paired comparisons -----------------------------------------------------------------------
def paired(a: AuditResult, b: AuditResult, metric: str) -> tuple[float, float]:
    """``a - b`` on ``metric`` and its standard error, paired over units when possible.

    With aligned per-unit vectors (per user, per item, or per-user AUC pseudo-values): the
    mean and s.e. of the per-unit differences; otherwise the difference of the values and
    the unpaired ``sqrt(se_a^2 + se_b^2)``.

    Raises:
        DataError: ``metric`` is missing from either result.
    """
    for name, r in (("first", a), ("second", b)):
        if metric not in r.values:
            raise DataError(f"paired comparison: metric {metric!r} missing from the {name} "
                            f"audit (has {sorted(r.values)})")
    pa, pb = a.per_unit.get(metric), b.per_unit.get(metric)
    if pa is not None and pb is not None and pa.shape == pb.shape:
        return paired_difference(pa, pb)
    se = math.sqrt(a.se.get(metric, float("nan")) ** 2 + b.se.get(metric, float("nan")) ** 2)
    return a.values[metric] - b.values[metric], se


def paired_vs_golds(result: AuditResult, golds: Sequence[AuditResult],
                    metric: str) -> list[tuple[float, float]]:
    """``[(result - gold_k, se_k) for each Gold]`` on ``metric`` (:func:`paired`)."""
    return [paired(result, g, metric) for g in golds]


def gold_pairs(golds: Sequence[AuditResult], metric: str) -> list[tuple[float, float]]:
    """Gold-vs-Gold ``[(gold_i - gold_j, se)]`` for every pair ``i < j``: the differences a
    method's :func:`paired_vs_golds` should look like."""
    return [paired(golds[i], golds[j], metric)
            for i, j in itertools.combinations(range(len(golds)), 2)]


def _band_se(golds: Sequence[AuditResult], metric: str) -> float:
    """The s.e. of a model-vs-Gold comparison on a metric (module doc: the paired
    Gold-vs-Gold s.e., or the mean of the runs' own s.e.)."""
    aligned = all(metric in g.per_unit for g in golds) and \
        len({g.per_unit[metric].shape for g in golds}) == 1
    if len(golds) >= 2 and aligned:
        ses = [se for _, se in gold_pairs(golds, metric) if math.isfinite(se)]
        if ses:
            return float(np.mean(ses))
    own = [g.se.get(metric, float("nan")) for g in golds]
    own = [x for x in own if math.isfinite(x)]
    return float(np.mean(own)) if own else float("nan")


def gold_bands(golds: Sequence[AuditResult]) -> dict[str, Band]:
    """One :class:`Band` per metric every Gold reports (except :data:`UNBANDED`).

    Args:
        golds: K >= 1 audits of Gold retrains with different seeds (same context).

    Raises:
        DataError: no Gold.
    """
    if not golds:
        raise DataError("gold_bands: need at least one Gold audit")
    metrics = [m for m in golds[0].values
               if m not in UNBANDED and all(m in g.values for g in golds)]
    return {m: Band.from_stats(m, [g.values[m] for g in golds], _band_se(golds, m))
            for m in metrics}


def overlap_ceiling(golds: Sequence[AuditResult]) -> float:
    """Mean top-20 overlap over Gold pairs: how much two Golds agree (NaN for K < 2)."""
    tops = [g.top20 for g in golds if g.top20 is not None]
    pairs = list(itertools.combinations(tops, 2))
    if not pairs:
        return float("nan")
    return float(np.mean([topk_overlap(a, b) for a, b in pairs]))


# -- verdicts ---------------------------------------------------------------------------------
def judge(result: AuditResult, bands: dict[str, Band]) -> dict[str, str]:
    """``{metric: "inside" | "above" | "below" | "n/a"}`` for every banded metric the
    result reports."""
    return {m: b.verdict(result.values[m]) for m, b in bands.items() if m in result.values}


def passes(result: AuditResult, bands: dict[str, Band], metrics: Iterable[str] | None = None,
           retain_ratio_min: float = RETAIN_RATIO_MIN) -> bool:
    """A method passes when every judged number is inside its Gold band and its retain
    Recall@20 is at least ``retain_ratio_min`` x the Gold mean.

    Args:
        result: the method's audit.
        bands: :func:`gold_bands`.
        metrics: the metrics to judge (default: every banded metric the result reports);
            a metric named here but missing from the result or the bands fails.
        retain_ratio_min: see above (skipped when no retain band exists).
    """
    names = list(metrics) if metrics is not None else [m for m in bands if m in result.values]
    verdicts = {m: (bands[m].verdict(result.values[m])
                    if m in bands and m in result.values else "n/a") for m in names}
    if any(v != "inside" for v in verdicts.values()):
        return False
    band = bands.get(RETAIN_METRIC)
    if band is not None and RETAIN_METRIC in result.values:
        return result.values[RETAIN_METRIC] >= retain_ratio_min * band.mean - _EDGE_EPS
    return True
