"""The unlearning audit report: methods judged against a band of Gold retrains.

Input is a *payload* (a plain dict, JSON-ready; :func:`build_payload` makes one from
:class:`~mmrecun_ray.unlearning.audit.AuditResult` objects)::

    {"request": {"spec": "users:5%", "id": ..., "kind": "users", "forget_pairs": 2344, ...},
     "model": "lightgcn", "dataset": "lfm2k",
     "bands": {metric: Band.to_dict()},                 # from the Gold rows
     "gold_overlap_ceiling": 0.74,                      # mean Gold-vs-Gold overlap@20
     "gold_pairs": {metric: [[diff, se], ...]},         # Gold i - Gold j, i < j
     "retain_ratio_min": 0.97,
     "rows": [{"method": "mmrecun", "role": "method" | "gold" | "reference", "seed": 0,
               "wall_seconds": 12.3, "speedup_vs_gold": 8.1, "peak_rss_mb": 900,
               "peak_rss_tree_mb": 1400, "audit": AuditResult.to_json(),
               "verdicts": {metric: "inside" | "above" | "below" | "n/a"},
               "paired": {metric: [[diff, se], ...]},  # vs each Gold, in Gold row order
               "overlap_vs_golds": [0.71, 0.72], "passes": False}, ...]}

A method *passes* when every audited number is inside the Gold band and its retain
Recall@20 is at least ``retain_ratio_min`` x the Gold mean
(:func:`~mmrecun_ray.unlearning.band.passes`).

:func:`write_report` writes ``report.md`` (tables and verdicts), ``report.html`` (the same,
self-contained: inline CSS and SVG, no script) and ``report.json`` (the payload) under a
local or ``s3://`` URI. The HTML shows the method table with every number marked inside /
above / below the band by a text marker (not only colour), the Gold band row, the attacks
with paired differences against each Gold, a forget-vs-retain scatter with the band as a
rectangle, the top-20 agreement with its Gold-vs-Gold ceiling, and the costs.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.storage import join, write_bytes_atomic
from mmrecun_ray.unlearning.audit import METRICS, AuditResult, topk_overlap
from mmrecun_ray.unlearning.band import (
    RETAIN_METRIC,
    RETAIN_RATIO_MIN,
    Band,
    gold_bands,
    gold_pairs,
    judge,
    overlap_ceiling,
    paired_vs_golds,
    passes,
)

log = logging.getLogger(__name__)

MISSING = "—"
ROLES = ("method", "gold", "reference")
#: text markers of the verdicts (shown next to every judged number)
MARKERS = {"inside": "✓", "above": "↑", "below": "↓", "n/a": ""}
LEGEND = "✓ inside the Gold band, ↑ above it, ↓ below it"
#: what each metric means, for the tables
LABELS = {
    "retain_recall@20": "Retain Recall@20", "retain_ndcg@20": "Retain NDCG@20",
    "forget_recall@20": "Forget Recall@20", "forget_ndcg@20": "Forget NDCG@20",
    "mia_auc": "MIA AUC", "fold_in_recall@20": "Fold-in Recall@20",
    "fold_in_control_recall@20": "Fold-in Recall@20, controls",
    "item_fold_in_hit@20": "Item fold-in Hit@20",
    "item_fold_in_control_hit@20": "Item fold-in Hit@20, controls",
    "diff_auc": "Differencing AUC", "probe_r2": "Probe R²",
    "overlap@20_vs_gold": "Overlap@20 vs Gold",
}
#: the attacks section: metric -> what it attacks
ATTACKS = {
    "fold_in_recall@20": "Fold-in (re-identification) on the forgotten users: item vectors "
                         "fixed, a fresh vector per user fitted on half of their former "
                         "items, Recall@20 of the other half.",
    "fold_in_control_recall@20": "The same fold-in on retain control users: every model "
                                 "should be equal here.",
    "item_fold_in_hit@20": "Item fold-in (re-listing) on the withdrawn items: user vectors "
                           "fixed, a fresh vector per item fitted on half of its former "
                           "users, share of the other half with the item in their top 20.",
    "item_fold_in_control_hit@20": "The same item fold-in on active control items.",
    "mia_auc": "Score membership inference: forgotten pairs against never-seen pairs of "
               "the same users (AUC; s.e. clustered by user).",
    "diff_auc": "Differencing: an attacker holding the model before and after scores each "
                "pair by how far its score dropped (AUC of forgotten vs never-seen pairs; "
                "Gold rows: original -> Gold).",
    "probe_r2": "Probe: held-out R² of a ridge regression from item representations to the "
                "dropped modality's features.",
}


def _fmt_value(v: float | None) -> str:
    """A metric value (every metric lies within [-1, 1]), to 4 decimals."""
    if v is None or not math.isfinite(v):
        return MISSING
    return f"{v:.4f}"


def _fmt_seconds(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return MISSING
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def _fmt_diff(diff: float, se: float) -> str:
    """``+0.0590 ± 0.0120 (+4.9 s.e.)``."""
    if not math.isfinite(diff):
        return MISSING
    if not math.isfinite(se) or se <= 0:
        return f"{diff:+.4f}"
    return f"{diff:+.4f} ± {se:.4f} ({diff / se:+.1f} s.e.)"


def _num(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# -- payload ----------------------------------------------------------------------------------
@dataclass
class AuditedRun:
    """One audited model for :func:`build_payload`.

    Attributes:
        method: row name (unique), e.g. ``"mmrecun"``, ``"gold"``, ``"gold-seed1"``,
            ``"original"``.
        role: ``"method"`` (judged), ``"gold"`` (makes the band) or ``"reference"``
            (shown and judged for context, e.g. the original model).
        result: its audit (same context as the others).
        seed, wall_seconds, peak_rss_mb, peak_rss_tree_mb: as measured (None = unknown).
        speedup_vs_gold: given, or None to compute mean Gold wall / this wall; always
            None for a ``reference`` row (it unlearns nothing).
    """

    method: str
    role: str
    result: AuditResult
    seed: int | None = None
    wall_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_tree_mb: float | None = None
    speedup_vs_gold: float | None = None


def build_payload(runs: Sequence[AuditedRun], request: dict[str, Any], model: str,
                  dataset: str, retain_ratio_min: float = RETAIN_RATIO_MIN) -> dict[str, Any]:
    """The report payload (module doc) from audited runs; at least one has role ``gold``.

    Bands come from the Gold rows (:func:`~mmrecun_ray.unlearning.band.gold_bands`); every
    row is judged against them and paired with each Gold (a Gold row with the other Golds);
    overlap@20 is computed here from the runs' top-20 lists, against every Gold.

    Raises:
        ConfigError: no Gold row, an unknown role or a repeated method name.
    """
    names = [r.method for r in runs]
    for r in runs:
        if r.role not in ROLES:
            raise ConfigError(f"report row {r.method!r}: role must be one of {ROLES}, "
                              f"got {r.role!r}")
        if names.count(r.method) > 1:
            raise ConfigError(f"report row {r.method!r}: method name appears twice")
    golds = [r for r in runs if r.role == "gold"]
    if not golds:
        raise ConfigError(f"report: no row with role 'gold' among {names}; the band needs "
                          "at least one Gold retrain")
    gres = [g.result for g in golds]
    bands = gold_bands(gres)
    walls = [g.wall_seconds for g in golds if _num(g.wall_seconds)]
    gold_wall = float(np.mean(walls)) if walls else None
    rows = []
    for r in runs:
        others = [g.result for g in golds if g is not r]
        paired = {m: [list(p) for p in paired_vs_golds(r.result, others, m)]
                  for m in bands if m in r.result.values}
        overlaps = [topk_overlap(r.result.top20, g.top20) for g in others
                    if r.result.top20 is not None and g.top20 is not None]
        # a reference row (the original model, the retain graph) runs no unlearning: its
        # "wall" is a graph swap, and a speed-up over Gold would read as a method's
        speedup = None
        if r.role != "reference":
            speedup = r.speedup_vs_gold
            if speedup is None and gold_wall and _num(r.wall_seconds):
                speedup = gold_wall / r.wall_seconds
        rows.append({
            "method": r.method, "role": r.role, "seed": r.seed,
            "wall_seconds": r.wall_seconds, "speedup_vs_gold": speedup,
            "peak_rss_mb": r.peak_rss_mb, "peak_rss_tree_mb": r.peak_rss_tree_mb,
            "audit": r.result.to_json(), "verdicts": judge(r.result, bands),
            "paired": paired, "overlap_vs_golds": overlaps,
            "passes": passes(r.result, bands, retain_ratio_min=retain_ratio_min),
        })
    return {"request": request, "model": model, "dataset": dataset,
            "bands": {m: b.to_dict() for m, b in bands.items()},
            "gold_overlap_ceiling": overlap_ceiling(gres),
            "gold_pairs": {m: [list(p) for p in gold_pairs(gres, m)] for m in bands},
            "retain_ratio_min": retain_ratio_min, "rows": rows}


# -- reading a payload ------------------------------------------------------------------------
def _check_payload(payload: dict[str, Any]) -> None:
    """ConfigError naming the first malformed part of a payload."""
    if not isinstance(payload, dict):
        raise ConfigError(f"report payload: expected a dict, got {type(payload).__name__}")
    rows = payload.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError("report payload: key 'rows' must be a non-empty list of rows")
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str) or \
                not row["method"]:
            raise ConfigError(f"report payload row #{n}: needs a non-empty string 'method'")
        if row["method"] in seen:
            raise ConfigError(f"report payload row #{n}: method {row['method']!r} appears "
                              "twice")
        if row.get("role", "method") not in ROLES:
            raise ConfigError(f"report payload row {row['method']!r}: role must be one of "
                              f"{ROLES}, got {row.get('role')!r}")
        seen.add(row["method"])
    if not isinstance(payload.get("bands", {}), dict):
        raise ConfigError("report payload: key 'bands' must map metric -> band")


def _bands(payload: dict[str, Any]) -> dict[str, Band]:
    out = {}
    for m, b in (payload.get("bands") or {}).items():
        try:
            out[m] = Band(**b)
        except TypeError as e:
            raise ConfigError(f"report payload band {m!r}: {e}") from e
    return out


def _value(row: dict[str, Any], metric: str) -> float | None:
    return _num(((row.get("audit") or {}).get("values") or {}).get(metric))


def _overlap(row: dict[str, Any]) -> float | None:
    ov = [v for v in (row.get("overlap_vs_golds") or []) if _num(v) is not None]
    if ov:
        return float(np.mean(ov))
    return _value(row, "overlap@20_vs_gold")


def _ordered_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Methods first, then references, then Golds (stable within a role)."""
    order = {"method": 0, "reference": 1, "gold": 2}
    return sorted(payload["rows"], key=lambda r: order[r.get("role", "method")])


def _metrics(payload: dict[str, Any]) -> list[str]:
    """Audited metrics any row reports, in :data:`METRICS` order (overlap aside)."""
    present = {m for r in payload["rows"] for m in ((r.get("audit") or {}).get("values") or {})}
    present |= set(payload.get("bands") or {})
    return [m for m in METRICS if m in present and m != "overlap@20_vs_gold"]


def _y_metric(payload: dict[str, Any]) -> str:
    """The scatter's y: fold-in recall for users requests, forget recall otherwise."""
    kind = (payload.get("request") or {}).get("kind")
    metrics = _metrics(payload)
    if kind == "users" and "fold_in_recall@20" in metrics:
        return "fold_in_recall@20"
    return "forget_recall@20"


def _verdict(row: dict[str, Any], bands: dict[str, Band], metric: str) -> str:
    v = (row.get("verdicts") or {}).get(metric)
    if v in MARKERS:
        return v
    band = bands.get(metric)
    return band.verdict(_value(row, metric)) if band is not None else "n/a"


def _reasons(row: dict[str, Any], bands: dict[str, Band], ratio: float) -> list[str]:
    """Why a row fails (empty when it passes)."""
    out = []
    for m, band in bands.items():
        v = _value(row, m)
        if v is None:
            continue
        verdict = _verdict(row, bands, m)
        if verdict in ("above", "below"):
            edge = band.hi if verdict == "above" else band.lo
            digits = next((d for d in range(4, 8) if f"{v:.{d}f}" != f"{edge:.{d}f}"), 8)
            out.append(f"{LABELS.get(m, m)} {v:.{digits}f} is {verdict} the Gold band "
                       f"[{band.lo:.{digits}f}, {band.hi:.{digits}f}]")
    band, v = bands.get(RETAIN_METRIC), _value(row, RETAIN_METRIC)
    if band is not None and v is not None and v < ratio * band.mean - 1e-12:
        out.append(f"{LABELS[RETAIN_METRIC]} {v:.4f} < {ratio:g} × Gold mean {band.mean:.4f}")
    return out


def _summary_lines(payload: dict[str, Any], bands: dict[str, Band]) -> list[str]:
    """One sentence per judged row: PASS / FAIL and the reasons."""
    ratio = float(payload.get("retain_ratio_min", RETAIN_RATIO_MIN))
    lines = []
    for row in _ordered_rows(payload):
        if row.get("role") == "gold":
            continue
        reasons = _reasons(row, bands, ratio)
        ok = row.get("passes")
        ok = (not reasons) if ok is None else bool(ok)
        tag = "PASS" if ok else "FAIL"
        what = " (reference)" if row.get("role") == "reference" else ""
        lines.append(f"{row['method']}{what}: {tag}" + (": " + "; ".join(reasons) + "."
                                                          if reasons else
                                                          ": every audited number inside "
                                                          "the Gold band."))
    return lines


def _table(payload: dict[str, Any], bands: dict[str, Band]) -> tuple[list[str], list[list[str]],
                                                                     list[list[str]]]:
    """Header, cells and per-cell verdicts of the method table (first body row: the band)."""
    metrics = _metrics(payload)
    header = (["Method", "Role", "Seed"] + [LABELS.get(m, m) for m in metrics]
              + ["Overlap@20 vs Gold"])
    ceiling = _num(payload.get("gold_overlap_ceiling"))
    k = max((b.n for b in bands.values()), default=0)
    band_row = [f"Gold band (K={k})", "band", MISSING]
    for m in metrics:
        b = bands.get(m)
        band_row.append(MISSING if b is None else
                        f"{_fmt_value(b.mean)} ± {_fmt_value(b.half_width)}")
    band_row.append(f"ceiling {_fmt_value(ceiling)}")
    body, marks = [band_row], [[""] * len(band_row)]
    for row in _ordered_rows(payload):
        cells = [row["method"], row.get("role", "method"),
                 MISSING if row.get("seed") is None else str(row["seed"])]
        vmarks = ["", "", ""]
        for m in metrics:
            v = _value(row, m)
            verdict = _verdict(row, bands, m) if v is not None else "n/a"
            marker = MARKERS[verdict]
            cells.append(_fmt_value(v) + (f" {marker}" if marker else ""))
            vmarks.append(verdict)
        cells.append(_fmt_value(_overlap(row)))
        vmarks.append("")
        body.append(cells)
        marks.append(vmarks)
    return header, body, marks


def _cost_table(payload: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the cost table: wall time, speed-up over Gold, peak memory."""
    header = ["Method", "Role", "Wall (s)", "Speed-up vs Gold", "Peak RSS (MB)",
              "Peak RSS, process tree (MB)"]
    body = []
    for row in _ordered_rows(payload):
        speed = _num(row.get("speedup_vs_gold"))
        rss, tree = _num(row.get("peak_rss_mb")), _num(row.get("peak_rss_tree_mb"))
        body.append([row["method"], row.get("role", "method"),
                     _fmt_seconds(_num(row.get("wall_seconds"))),
                     MISSING if speed is None else f"{speed:.1f}×",
                     MISSING if rss is None else f"{rss:.0f}",
                     MISSING if tree is None else f"{tree:.0f}"])
    return header, body


def _attack_tables(payload: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Per attack metric: ``(metric, caption, header, rows)`` of paired differences."""
    golds = [r["method"] for r in payload["rows"] if r.get("role") == "gold"]
    out = []
    for m in ATTACKS:
        if not any(_value(r, m) is not None for r in payload["rows"]):
            continue
        header = ["Model", LABELS.get(m, m)] + [f"− {g}" for g in golds]
        rows = []
        for row in _ordered_rows(payload):
            diffs = list(row.get("paired", {}).get(m) or [])
            cells = [row["method"], _fmt_value(_value(row, m))]
            if row.get("role") == "gold":   # its pairs skip itself: put a dash in its column
                it = iter(diffs)
                cells += [MISSING if g == row["method"] else _fmt_diff(*next(it, (math.nan,
                                                                                    math.nan)))
                          for g in golds]
            else:
                cells += [_fmt_diff(*d) for d in diffs] + \
                    [MISSING] * (len(golds) - len(diffs))
            rows.append(cells)
        out.append((m, ATTACKS[m], header, rows))
    return out


def _gold_pair_line(payload: dict[str, Any], metric: str) -> str:
    golds = [r["method"] for r in payload["rows"] if r.get("role") == "gold"]
    pairs = (payload.get("gold_pairs") or {}).get(metric) or []
    names = [(golds[i], golds[j]) for i in range(len(golds)) for j in range(i + 1, len(golds))]
    parts = [f"{a} − {b} = {_fmt_diff(*d)}" for (a, b), d in zip(names, pairs)]
    return ("Gold vs Gold: " + "; ".join(parts)) if parts else \
        "Gold vs Gold: one Gold only, no pair."


def _setup(payload: dict[str, Any]) -> list[tuple[str, str]]:
    req = payload.get("request") or {}
    out = [("dataset", str(payload.get("dataset", MISSING))),
           ("model", str(payload.get("model", MISSING)))]
    if isinstance(req, dict):
        out += [(f"request {k}", str(v)) for k, v in req.items()
                if isinstance(v, (str, int, float, bool))]
    golds = [r for r in payload["rows"] if r.get("role") == "gold"]
    out.append(("Gold retrains", f"{len(golds)} (seeds "
                + ", ".join(str(g.get("seed", MISSING)) for g in golds) + ")"))
    return out


def _title(payload: dict[str, Any]) -> str:
    req = payload.get("request") or {}
    spec = req.get("spec") if isinstance(req, dict) else None
    return (f"Unlearning audit: {payload.get('dataset', '?')}, {payload.get('model', '?')}, "
            f"request {spec or (req.get('kind') if isinstance(req, dict) else '?')}")


def _audit_seconds(payload: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    groups: list[str] = []
    for r in payload["rows"]:
        for g in ((r.get("audit") or {}).get("seconds") or {}):
            if g not in groups:
                groups.append(g)
    rows = [[r["method"]] + [_fmt_seconds(_num(((r.get("audit") or {}).get("seconds") or {})
                                                .get(g))) for g in groups]
            for r in _ordered_rows(payload)]
    return ["Model"] + groups, rows


# -- Markdown ---------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def md_row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return [md_row(header), "|" + "---|" + "---:|" * (len(header) - 1)] + \
        [md_row(r) for r in rows]


def render_markdown(payload: dict[str, Any]) -> str:
    """``report.md``: setup, verdicts, the method table with the band, the attacks, costs."""
    _check_payload(payload)
    bands = _bands(payload)
    lines = [f"# {_title(payload)}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _setup(payload)] + [""]
    lines += ["## Verdict", "",
              f"A method passes when every audited number is inside the Gold band (mean ± "
              f"max(2 sd, 2 s.e.) over the Gold retrains) and its retain Recall@20 is at "
              f"least {float(payload.get('retain_ratio_min', RETAIN_RATIO_MIN)):g} × the "
              "Gold mean.", ""]
    lines += [f"- {s}" for s in _summary_lines(payload, bands)] + [""]
    header, body, _ = _table(payload, bands)
    lines += ["## Methods against the Gold band", "", LEGEND + ".", ""]
    lines += _md_table(header, body) + [""]
    lines += ["## Attacks", "",
              "Differences are paired over the same users / items (s.e. of the per-unit "
              "differences; for AUCs per-user pseudo-values), against each Gold.", ""]
    for m, caption, h, rows in _attack_tables(payload):
        lines += [f"### {LABELS.get(m, m)}", "", caption, ""] + _md_table(h, rows)
        lines += ["", _gold_pair_line(payload, m), ""]
    lines += ["## Top-20 agreement with Gold", ""]
    ceiling = _num(payload.get("gold_overlap_ceiling"))
    lines.append(f"Gold-vs-Gold overlap@20 (the ceiling): {_fmt_value(ceiling)}.")
    lines.append("")
    for row in _ordered_rows(payload):
        lines.append(f"- {row['method']}: {_fmt_value(_overlap(row))}")
    lines += ["", "## Cost", ""] + _md_table(*_cost_table(payload))
    h, rows = _audit_seconds(payload)
    lines += ["", "### Audit time (s)", ""] + _md_table(h, rows) + [""]
    return "\n".join(lines)


# -- SVG charts -------------------------------------------------------------------------------
def svg_bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], *,
                  fmt: Callable[[float], str], log_scale: bool = False,
                  domain: tuple[float, float] | None = None, ref: float | None = None,
                  ref_label: str = "", highlight: Collection[int] = (), width: int = 640) -> str:
    """A horizontal bar chart as an inline ``<svg>`` element.

    Args:
        title: chart title.
        labels: ``(n,)`` bar labels (escaped here).
        values: ``(n,)`` values; None draws no bar and the label "—".
        fmt: formats a value for its bar.
        log_scale: log10 axis (needs positive values; non-positive ones draw no bar).
        domain: ``(lo, hi)`` axis range; default 0 (or the decade below the minimum in log
            scale) to just above the maximum.
        ref: draw a dashed vertical reference line at this value, captioned ``ref_label``.
        highlight: indices of bars drawn in the accent colour (the Golds).
        width: total width in pixels.
    """
    left, right, top, bar_h, gap, bottom = 170, 70, 44, 20, 8, 30
    plot_w = width - left - right
    height = top + len(labels) * (bar_h + gap) + bottom
    present = [v for v in values if v is not None and (v > 0 or not log_scale)]
    if domain is not None:
        lo, hi = domain
    elif log_scale and present:
        lo = 10 ** math.floor(math.log10(min(present)))
        hi = 10 ** math.ceil(math.log10(max(present)))
        hi = hi * 10 if hi <= lo else hi
    else:
        lo, hi = 0.0, (max(present) * 1.1 if present and max(present) > 0 else 1.0)

    def x(v: float) -> float:
        if log_scale:
            frac = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            frac = (v - lo) / (hi - lo) if hi > lo else 0.0
        return left + plot_w * min(max(frac, 0.0), 1.0)

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="18" font-size="14" font-weight="bold">{esc(title)}'
             f'{" (log scale)" if log_scale else ""}</text>']
    axis_y = top + len(labels) * (bar_h + gap)
    if log_scale:
        ticks = [10 ** e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    else:
        ticks = [lo + (hi - lo) * t / 4 for t in range(5)]
    for t in ticks:
        tx = x(t)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{axis_y}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text x="{tx:.1f}" y="{axis_y + 16}" font-size="11" '
                     f'text-anchor="middle">{t:.3g}</text>')
    for n, (label, v) in enumerate(zip(labels, values)):
        y = top + n * (bar_h + gap)
        parts.append(f'<text x="{left - 6}" y="{y + bar_h * 0.7:.1f}" font-size="12" '
                     f'text-anchor="end">{esc(label)}</text>')
        drawable = v is not None and (v > 0 or not log_scale)
        if not drawable:
            parts.append(f'<text x="{left + 4}" y="{y + bar_h * 0.7:.1f}" font-size="12">'
                         f'{MISSING}</text>')
            continue
        x0 = left if log_scale else x(max(lo, min(0.0, hi)))
        x1 = x(v)
        colour = "#d95f02" if n in highlight else "#1b9e77"
        parts.append(f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{abs(x1 - x0):.1f}" '
                     f'height="{bar_h}" fill="{colour}"/>')
        parts.append(f'<text x="{max(x0, x1) + 4:.1f}" y="{y + bar_h * 0.7:.1f}" '
                     f'font-size="11">{esc(fmt(v))}</text>')
    if ref is not None:
        rx = x(ref)
        parts.append(f'<line x1="{rx:.1f}" y1="{top - 6}" x2="{rx:.1f}" y2="{axis_y}" '
                     'stroke="#444" stroke-dasharray="4 3"/>')
        if ref_label:
            parts.append(f'<text x="{rx + 3:.1f}" y="{top - 8}" font-size="11">'
                         f'{esc(ref_label)}</text>')
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" '
                 'stroke="#666"/>')
    parts.append("</svg>")
    return "\n".join(parts)




def _label_offsets() -> list[float]:
    return [0.0] + [s * d for d in (13.0, 26.0, 39.0, 52.0) for s in (1, -1)]


def svg_scatter(title: str, points: Sequence[tuple[str, float, float, str]], *,
                x_label: str, y_label: str,
                x_band: tuple[float, float] | None = None,
                y_band: tuple[float, float] | None = None,
                width: int = 700, height: int = 460) -> str:
    """A labelled scatter plot as an inline ``<svg>`` element, with an optional band
    rectangle ``x_band x y_band``.

    Args:
        title: chart title.
        points: ``(label, x, y, role)``; role ``gold`` draws a hollow orange circle,
            ``reference`` a grey square, anything else a filled green circle.
        x_label, y_label: axis captions.
        x_band, y_band: ``(lo, hi)`` of the Gold band on each axis.
        width, height: pixels.
    """
    left, right, top, bottom = 70, 150, 40, 50
    pw, ph = width - left - right, height - top - bottom
    xs = [p[1] for p in points] + (list(x_band) if x_band else [])
    ys = [p[2] for p in points] + (list(y_band) if y_band else [])

    def domain(v: list[float]) -> tuple[float, float]:
        lo, hi = (min(v), max(v)) if v else (0.0, 1.0)
        pad = (hi - lo) * 0.12 or max(abs(hi) * 0.1, 0.01)
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = domain(xs), domain(ys)

    def px(v: float) -> float:
        return left + pw * (v - x0) / (x1 - x0)

    def py(v: float) -> float:
        return top + ph * (1.0 - (v - y0) / (y1 - y0))

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="20" font-size="14" font-weight="bold">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
             'stroke="#999"/>']
    for t in range(5):
        xv, yv = x0 + (x1 - x0) * t / 4, y0 + (y1 - y0) * t / 4
        parts.append(f'<line x1="{px(xv):.1f}" y1="{top}" x2="{px(xv):.1f}" '
                     f'y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{px(xv):.1f}" y="{top + ph + 16}" font-size="11" '
                     f'text-anchor="middle">{xv:.3f}</text>')
        parts.append(f'<line x1="{left}" y1="{py(yv):.1f}" x2="{left + pw}" '
                     f'y2="{py(yv):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{yv:.3f}</text>')
    if x_band and y_band:
        bx0, bx1, by0, by1 = px(x_band[0]), px(x_band[1]), py(y_band[1]), py(y_band[0])
        parts.append(f'<rect x="{bx0:.1f}" y="{by0:.1f}" width="{max(bx1 - bx0, 1):.1f}" '
                     f'height="{max(by1 - by0, 1):.1f}" fill="#fdd9b5" fill-opacity="0.6" '
                     'stroke="#d95f02" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{bx1 + 4:.1f}" y="{by0 + 12:.1f}" font-size="11" '
                     'fill="#a04000">Gold band</text>')
    placed: list[tuple[float, float, float, float]] = []
    for label, xv, yv, role in points:
        cx, cy = px(xv), py(yv)
        if role == "gold":
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="white" '
                         'stroke="#d95f02" stroke-width="2"/>')
        elif role == "reference":
            parts.append(f'<rect x="{cx - 4.5:.1f}" y="{cy - 4.5:.1f}" width="9" height="9" '
                         'fill="#777"/>')
        else:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#1b9e77"/>')
        w = 6.5 * len(label)
        for dy in _label_offsets():
            box = (cx + 8, cy + dy - 9, cx + 8 + w, cy + dy + 3)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)
        parts.append(f'<text x="{box[0]:.1f}" y="{box[3] - 1:.1f}" font-size="11">'
                     f'{esc(label)}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 10}" font-size="12" '
                 f'text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text x="16" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 16 {top + ph / 2:.1f})">{esc(y_label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# -- HTML -------------------------------------------------------------------------------------
_CSS = ("body{font-family:sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:12px}th,td{border:1px "
        "solid #ccc;padding:2px 5px}th{font-weight:600}td{text-align:right;white-space:nowrap}"
        "td:first-child{text-align:left}"
        ".methods td:nth-child(2),.methods td:nth-child(3){text-align:left}"
        "th{background:#f4f4f4}.inside{color:#1a7f37}.above,.below{color:#c62828;"
        "font-weight:bold}.band td{background:#fff3e6}.pass{color:#1a7f37;font-weight:bold}"
        ".fail{color:#c62828;font-weight:bold}svg{display:block;margin:1em 0}"
        ".caption{color:#555}")


def _html_table(header: list[str], rows: list[list[str]],
                marks: list[list[str]] | None = None, first_band: bool = False) -> str:
    esc = html.escape
    cls = ' class="methods"' if first_band else ""
    out = [f"<table{cls}><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    for n, row in enumerate(rows):
        cls = ' class="band"' if first_band and n == 0 else ""
        cells = []
        for c, cell in enumerate(row):
            mark = marks[n][c] if marks else ""
            attr = f' class="{mark}"' if mark in ("inside", "above", "below") else ""
            cells.append(f"<td{attr}>{esc(cell)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _scatter(payload: dict[str, Any], bands: dict[str, Band]) -> str:
    y_metric = _y_metric(payload)
    points = [(r["method"], _value(r, RETAIN_METRIC), _value(r, y_metric), r.get("role", ""))
              for r in _ordered_rows(payload)]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        return f"<p>No row has both {LABELS[RETAIN_METRIC]} and {LABELS[y_metric]}.</p>"
    xb, yb = bands.get(RETAIN_METRIC), bands.get(y_metric)
    return svg_scatter(f"{LABELS[y_metric]} against {LABELS[RETAIN_METRIC]}", points,
                       x_label=f"{LABELS[RETAIN_METRIC]} (higher = more utility kept)",
                       y_label=f"{LABELS[y_metric]} (Gold band = forgotten)",
                       x_band=(xb.lo, xb.hi) if xb else None,
                       y_band=(yb.lo, yb.hi) if yb else None)


def render_html(payload: dict[str, Any]) -> str:
    """``report.html``: everything of :func:`render_markdown`, plus an SVG forget-vs-retain
    scatter with the Gold band as a rectangle and a wall-time chart. Self-contained."""
    _check_payload(payload)
    bands = _bands(payload)
    esc = html.escape
    title = esc(_title(payload))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{title}</title><style>{_CSS}</style></head><body>", f"<h1>{title}</h1>",
           "<ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in _setup(payload))
           + "</ul>", '<h2 id="verdict">Verdict</h2>',
           f"<p>A method passes when every audited number is inside the Gold band (mean ± "
           f"max(2 sd, 2 s.e.) over the Gold retrains) and its retain Recall@20 is at least "
           f"{float(payload.get('retain_ratio_min', RETAIN_RATIO_MIN)):g} × the Gold mean.</p>"]
    items = []
    for line in _summary_lines(payload, bands):
        name, _, rest = line.partition(": ")
        tag, _, why = rest.partition(": ")
        cls = "pass" if tag == "PASS" else "fail"
        items.append(f'<li>{esc(name)}: <span class="{cls}">{esc(tag)}</span>: {esc(why)}</li>')
    out.append("<ul>" + "".join(items) + "</ul>")
    header, body, marks = _table(payload, bands)
    out += ['<h2 id="methods">Methods against the Gold band</h2>', f'<p class="caption">{esc(LEGEND)}. '
            "The first row is the band: Gold mean ± half-width.</p>",
            _html_table(header, body, marks, first_band=True)]
    out += ['<h2 id="scatter">Forget against retain</h2>', _scatter(payload, bands)]
    out += ['<h2 id="attacks">Attacks</h2>', '<p class="caption">Differences are paired over the same '
            "users / items (s.e. of the per-unit differences; for AUCs per-user "
            "pseudo-values), "
            "against each Gold.</p>"]
    for m, caption, h, rows in _attack_tables(payload):
        out += [f"<h3>{esc(LABELS.get(m, m))}</h3>", f'<p class="caption">{esc(caption)}</p>',
                _html_table(h, rows), f"<p>{esc(_gold_pair_line(payload, m))}</p>"]
    ceiling = _num(payload.get("gold_overlap_ceiling"))
    out += ['<h2 id="overlap">Top-20 agreement with Gold</h2>',
            f"<p>Gold-vs-Gold overlap@20 (the ceiling): {_fmt_value(ceiling)}.</p>",
            "<ul>" + "".join(f"<li>{esc(r['method'])}: {_fmt_value(_overlap(r))}"
                             "</li>" for r in _ordered_rows(payload)) + "</ul>"]
    rows = _ordered_rows(payload)
    walls = [_num(r.get("wall_seconds")) for r in rows]
    positive = [w for w in walls if w is not None and w > 0]
    out += ['<h2 id="cost">Cost</h2>', _html_table(*_cost_table(payload)), svg_bar_chart(
        "Wall time (s)", [r["method"] for r in rows], walls, fmt=_fmt_seconds,
        log_scale=bool(positive) and max(positive) / min(positive) >= 10,
        highlight=[n for n, r in enumerate(rows) if r.get("role") == "gold"])]
    h, t = _audit_seconds(payload)
    out += ["<h3>Audit time (s)</h3>", _html_table(h, t), "</body></html>"]
    return "\n".join(out)


def _json_ready(obj: Any) -> Any:
    """The payload with numpy values as Python ones and NaN / inf as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _json_ready(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_report(out_uri: str, payload: dict[str, Any]) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and ``report.json`` under ``out_uri``.

    Args:
        out_uri: a local directory or ``s3://bucket/prefix``.
        payload: see the module doc (:func:`build_payload` makes one).

    Returns:
        ``{"md": uri, "html": uri, "json": uri}`` of the files written (atomically).

    Raises:
        ConfigError: a malformed payload (the message names the part).
    """
    _check_payload(payload)
    docs = {
        "md": ("report.md", render_markdown(payload).encode()),
        "html": ("report.html", render_html(payload).encode()),
        "json": ("report.json", (json.dumps(_json_ready(payload), indent=2,
                                            allow_nan=False) + "\n").encode()),
    }
    written = {}
    for key, (name, data) in docs.items():
        uri = join(out_uri, name)
        write_bytes_atomic(uri, data)
        written[key] = uri
    log.info("report: wrote %s", ", ".join(written.values()))
    return written
