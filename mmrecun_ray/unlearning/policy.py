"""Audit-gated publishing: what an unlearned model must meet to ship, and the verdict.

A :class:`Policy` (a JSON file, ``--policy``, and/or flags) says

- ``gate``: the audit metrics (names of :data:`~mmrecun_ray.unlearning.audit.METRICS`) that
  must lie *inside* the Gold band (:mod:`mmrecun_ray.unlearning.band`); ``null`` (default)
  = every banded number the audit of the batch reports (its request kinds decide which:
  fold-in for ``users``, item fold-in for ``items``, the probe for ``modality``), ``[]`` =
  no band gate. A named metric the batch's kinds do not produce is not applicable (n/a),
  not a failure;
- ``retain_ratio_min``: retain Recall@20 >= this x the Gold band's mean (0: off);
- ``retain_ratio_min_shipped``: retain Recall@20 >= this x that of the model shipped now
  (the pointer's), measured in the same audit (0: off);
- ``gold``: how the band is obtained: ``now`` (``gold_seeds`` Golds retrained on the
  batch's cumulative retain set), ``scheduled`` (reuse the last band if it is at most
  ``gold_max_age`` batches old, else retrain now),
  ``none`` (no band: only the retain-vs-shipped floor can gate). A reused (stale) band
  judges only :data:`POPULATION_METRICS`: every other metric is measured on the batch's
  own forgotten units (D_f, its users' fold-in halves, control units, MIA draws), and its
  Gold level moves with them (Last.fm-2K, users+items+interactions at 0.25% per batch:
  Gold's forget Recall@20 was 0.197 at batch 1 and 0.076 at batch 4), so a band from
  another batch says nothing about it;
- ``fallback`` when a model fails: ``retrain`` (ship a Gold retrained from scratch on the
  ledger-filtered data) or ``schedule`` (ship nothing; ``<out>/RETRAIN_SCHEDULED`` names the
  requests, and the next run retrains and ships);
- ``mode``: ``enforce``, or ``observe`` (judge and record, but ship whatever the verdict:
  for rolling a policy out, and for drift studies).

Pure Python; nothing here runs a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.unlearning.audit import METRICS, AuditResult
from mmrecun_ray.unlearning.band import RETAIN_METRIC, RETAIN_RATIO_MIN, UNBANDED, Band, passes

GOLD_MODES = ("now", "scheduled", "none")
FALLBACKS = ("retrain", "schedule")
MODES = ("enforce", "observe")
#: metrics on the retain test users: the ones a band from an earlier batch still describes
POPULATION_METRICS = ("retain_recall@20", "retain_ndcg@20")
#: Gold retrains of a band when the policy does not say (band.py: with K = 2 a Gold-equivalent
#: model leaves the band on about 2% of metrics)
GOLD_SEEDS = 2


@dataclass
class Policy:
    """What a model must meet to ship (see the module docstring)."""

    gate: list[str] | None = None
    retain_ratio_min: float = RETAIN_RATIO_MIN
    retain_ratio_min_shipped: float = 0.95
    gold: str = "now"
    gold_seeds: int = GOLD_SEEDS
    gold_max_age: int = 4
    fallback: str = "retrain"
    mode: str = "enforce"

    def validate(self, where: str = "policy") -> "Policy":
        """Raise :class:`ConfigError` naming ``where`` and the key at fault; returns self."""
        if self.gate is not None:
            if not isinstance(self.gate, list) or not all(isinstance(m, str) for m in self.gate):
                raise ConfigError(f"{where}: key 'gate' must be a list of metric names or null")
            bad = [m for m in self.gate if m not in METRICS or m in UNBANDED]
            if bad:
                raise ConfigError(f"{where}: key 'gate': {bad} cannot be judged against a Gold "
                                  f"band; known: {[m for m in METRICS if m not in UNBANDED]}")
            if self.gate and self.gold == "none":
                raise ConfigError(f"{where}: key 'gate' names metrics but 'gold' is 'none': "
                                  "the band they are judged against needs a Gold")
        for key, options in (("gold", GOLD_MODES), ("fallback", FALLBACKS), ("mode", MODES)):
            if getattr(self, key) not in options:
                raise ConfigError(f"{where}: key {key!r} must be one of {list(options)}, got "
                                  f"{getattr(self, key)!r}")
        for key in ("retain_ratio_min", "retain_ratio_min_shipped"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{where}: key {key!r} must be a number >= 0, got {v!r}")
        if not isinstance(self.gold_seeds, int) or self.gold_seeds < 1:
            raise ConfigError(f"{where}: key 'gold_seeds' must be an integer >= 1, got "
                              f"{self.gold_seeds!r}")
        if not isinstance(self.gold_max_age, int) or self.gold_max_age < 0:
            raise ConfigError(f"{where}: key 'gold_max_age' must be an integer >= 0, got "
                              f"{self.gold_max_age!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_from_dict(d: Any, where: str = "policy") -> Policy:
    """A :class:`Policy` from a JSON object (unknown keys refused, naming ``where``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return Policy(**d).validate(where)


def load_policy(uri: str | None, overrides: dict[str, Any] | None = None) -> Policy:
    """The policy of a JSON file (local path or ``s3://``; None: the defaults) with
    ``overrides`` (flags that were given) on top.

    Raises:
        ConfigError: unreadable file, invalid JSON, unknown key or bad value (naming the file).
    """
    base: dict[str, Any] = {}
    where = "policy flags"
    if uri:
        from mmrecun_ray.errors import StorageError
        from mmrecun_ray.storage import read_bytes
        where = f"--policy {uri}"
        try:
            base = json.loads(read_bytes(uri).decode())
        except StorageError as e:
            raise ConfigError(f"{where}: cannot be read ({e})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(base).__name__}")
    return policy_from_dict({**base, **(overrides or {})}, where)


@dataclass
class Verdict:
    """A model judged by a policy.

    Attributes:
        passed: every check held.
        reasons: one line per failed check (empty when passed).
        verdicts: metric -> ``inside`` / ``above`` / ``below`` / ``n/a`` for each gated one.
        not_applicable: gated metrics the audit of this batch does not produce.
        stale_skipped: gated metrics not judged because the band is stale (module doc).
        retain: the retain Recall@20 figures (model, Gold mean, shipped, ratios).
        band: where the band came from (``now``, ``scheduled:<batch>``, ``none``).
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    not_applicable: list[str] = field(default_factory=list)
    stale_skipped: list[str] = field(default_factory=list)
    retain: dict[str, float | None] = field(default_factory=dict)
    band: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: ``passed`` or the first reasons."""
        if self.passed:
            return f"passed ({len(self.verdicts)} metric(s) inside the Gold band [{self.band}])"
        return "rejected: " + "; ".join(self.reasons[:3]) + (" ..." if len(self.reasons) > 3 else "")


def gated_metrics(policy: Policy, result: AuditResult, bands: dict[str, Band] | None) -> list[str]:
    """The metrics the policy judges for ``result``: ``policy.gate``, or (default) every
    banded metric the result reports."""
    if policy.gate is not None:
        return list(policy.gate)
    return [m for m in (bands or {}) if m in result.values and m not in UNBANDED]


def judge(policy: Policy, result: AuditResult, bands: dict[str, Band] | None,
          shipped: AuditResult | None, band_source: str = "none") -> Verdict:
    """Judge an unlearned model's audit against the policy.

    Args:
        result: the candidate's audit.
        bands: the Gold bands (:func:`~mmrecun_ray.unlearning.band.gold_bands`), or None.
        shipped: the audit of the model shipped now, with the same context (its retain
            Recall@20 is the ``retain_ratio_min_shipped`` reference), or None (first batch).
        band_source: recorded in the verdict; ``scheduled:...`` marks the band stale (only
            :data:`POPULATION_METRICS` are judged against it).
    """
    names = gated_metrics(policy, result, bands)
    stale = band_source.startswith("scheduled")
    skipped = [m for m in names if stale and m not in POPULATION_METRICS]
    applicable = [m for m in names if m in result.values and m not in skipped]
    reasons: list[str] = []
    verdicts: dict[str, str] = {}
    for m in applicable:
        band = (bands or {}).get(m)
        verdicts[m] = band.verdict(result.values[m]) if band is not None else "n/a"
        if verdicts[m] != "inside":
            where = (f"the Gold band [{band.lo:.4f}, {band.hi:.4f}] (mean {band.mean:.4f})"
                     if band is not None else "the Gold band (none for this metric)")
            reasons.append(f"{m} {result.values[m]:.4f} {verdicts[m]} {where}")
    value = result.values.get(RETAIN_METRIC, float("nan"))
    gold_band = (bands or {}).get(RETAIN_METRIC)
    retain: dict[str, float | None] = {"value": value, "gold_mean": None, "shipped": None,
                                       "vs_gold": None, "vs_shipped": None}
    if gold_band is not None:
        retain["gold_mean"] = gold_band.mean
        retain["vs_gold"] = value / gold_band.mean if gold_band.mean > 0 else None
        if policy.retain_ratio_min > 0 and not value >= policy.retain_ratio_min * gold_band.mean:
            reasons.append(f"{RETAIN_METRIC} {value:.4f} < {policy.retain_ratio_min:g} x Gold "
                           f"mean {gold_band.mean:.4f}")
    if shipped is not None and RETAIN_METRIC in shipped.values:
        ref = shipped.values[RETAIN_METRIC]
        retain["shipped"] = ref
        retain["vs_shipped"] = value / ref if ref > 0 else None
        if policy.retain_ratio_min_shipped > 0 and not value >= policy.retain_ratio_min_shipped * ref:
            reasons.append(f"{RETAIN_METRIC} {value:.4f} < {policy.retain_ratio_min_shipped:g} x "
                           f"the shipped model's {ref:.4f}")
    if bands and applicable and not passes(result, bands, applicable,
                                           retain_ratio_min=policy.retain_ratio_min) and not reasons:
        reasons.append("band.passes rejects the model")  # a check above and band.py disagree
    return Verdict(passed=not reasons, reasons=reasons, verdicts=verdicts,
                   not_applicable=[m for m in names if m not in result.values],
                   stale_skipped=[m for m in skipped if m in result.values],
                   retain=retain, band=band_source)
