"""The unlearning comparison report: one row per method, pass/fail against Gold.

Rows are per-method dicts (any key may be missing; missing values render as "—")::

    {"method": "mmrecun", "wall_seconds": 12.3, "speedup_vs_gold": 8.1, "peak_rss_mb": 900,
     "mia_auc": 0.61, "overlap@20_vs_gold": 0.7,
     "metrics": {"test": {"recall@20": ..., "ndcg@20": ...},
                 "forget": {"recall@20": ..., "ndcg@20": ...}}}

Gold is the model retrained from scratch on the retain set: the row whose ``method`` equals
``meta["gold_method"]`` (default ``"gold"``) or that has ``"is_gold": True``. Criteria for
every other method (thresholds from ``meta``, see :class:`Criteria`):

- ``forget``:  forget Recall@K <= Gold's + ``forget_recall_tolerance``;
- ``retain``:  retain (test) Recall@K >= ``retain_ratio_min`` x Gold's;
- ``mia``:     |MIA AUC - Gold's MIA AUC| <= ``mia_tolerance``;
- ``speedup``: speed-up vs Gold >= ``speedup_min`` (``speedup_vs_gold``, or Gold's wall
  time / the method's when absent).

:func:`write_report` writes ``report.md`` (table + one paragraph per criterion),
``report.html`` (the same, plus inline SVG bar charts drawn here) and ``report.json`` (rows,
criteria and verdicts) under a local or ``s3://`` URI.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.storage import join, write_bytes_atomic

log = logging.getLogger(__name__)

MISSING = "—"
CRITERIA = ("forget", "retain", "mia", "speedup")
#: slack on threshold comparisons so that e.g. 0.1 + 0.05 vs 0.15 is not decided by rounding
_EPS = 1e-12
#: meta keys accepted as aliases of :class:`Criteria` fields
_ALIASES = {"mia_tol": "mia_tolerance", "forget_tol": "forget_recall_tolerance"}


@dataclass(frozen=True)
class Criteria:
    """Pass/fail thresholds against Gold (read from the report ``meta``).

    Attributes:
        k: the cut-off K of Recall@K / NDCG@K / overlap@K in the table and criteria.
        forget_recall_tolerance: forget Recall@K may exceed Gold's by at most this (absolute).
        retain_ratio_min: retain Recall@K must be at least this fraction of Gold's.
        mia_tolerance: MIA AUC may differ from Gold's by at most this (absolute).
        speedup_min: minimum speed-up over Gold's wall time.
        gold_method: the ``method`` name of the Gold row.
    """

    k: int = 20
    forget_recall_tolerance: float = 0.01
    retain_ratio_min: float = 0.95
    mia_tolerance: float = 0.05
    speedup_min: float = 5.0
    gold_method: str = "gold"

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Criteria":
        """Pick the threshold keys out of ``meta`` (other keys are ignored)."""
        kwargs: dict[str, Any] = {}
        for key, value in meta.items():
            name = _ALIASES.get(key, key)
            if name not in {f.name for f in fields(cls)}:
                continue
            if name == "gold_method":
                kwargs[name] = str(value)
                continue
            try:
                kwargs[name] = int(value) if name == "k" else float(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"report meta {key!r}: expected a number, got {value!r}") from e
        crit = cls(**kwargs)
        if crit.k <= 0:
            raise ConfigError(f"report meta 'k': must be > 0, got {crit.k}")
        return crit


# -- row access -------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _field(row: dict[str, Any], key: str) -> float | None:
    return _num(row.get(key))


def _metric(row: dict[str, Any], split: str, key: str) -> float | None:
    split_metrics = (row.get("metrics") or {}).get(split) or {}
    return _num(split_metrics.get(key))


def _speedup(row: dict[str, Any], gold: dict[str, Any] | None) -> float | None:
    """``speedup_vs_gold`` if given, else Gold wall / this wall (1.0 for Gold itself)."""
    given = _field(row, "speedup_vs_gold")
    if given is not None:
        return given
    if gold is None:
        return None
    if row is gold:
        return 1.0
    mine, ref = _field(row, "wall_seconds"), _field(gold, "wall_seconds")
    if mine is None or ref is None or mine <= 0:
        return None
    return ref / mine


def _check_rows(rows: Sequence[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str) or not row["method"]:
            raise ConfigError(f"report row #{n}: needs a non-empty string 'method', "
                              f"got {row!r:.80}")
        if row["method"] in seen:
            raise ConfigError(f"report row #{n}: method {row['method']!r} appears twice")
        seen.add(row["method"])


def find_gold(rows: Sequence[dict[str, Any]], crit: Criteria) -> dict[str, Any] | None:
    """The Gold row (``method == crit.gold_method`` or ``is_gold``), or None if absent."""
    golds = [r for r in rows if r.get("method") == crit.gold_method or r.get("is_gold") is True]
    if len(golds) > 1:
        raise ConfigError(f"report: several Gold rows {[g['method'] for g in golds]}; mark one")
    return golds[0] if golds else None


# -- verdicts ---------------------------------------------------------------------------------
def _verdict(ok: bool | None, value: float | None, gold: float | None, rule: str) -> dict[str, Any]:
    return {"pass": ok, "value": value, "gold": gold, "rule": rule}


def _cmp(ok: bool, when_pass: str, when_fail: str) -> str:
    """The sign that holds for the numbers: the rule's sign on a pass, its negation else."""
    return when_pass if ok else when_fail


def _judge(row: dict[str, Any], gold: dict[str, Any], c: Criteria) -> dict[str, dict[str, Any]]:
    k = c.k
    out: dict[str, dict[str, Any]] = {}

    v, g = _metric(row, "forget", f"recall@{k}"), _metric(gold, "forget", f"recall@{k}")
    if v is None or g is None:
        out["forget"] = _verdict(None, v, g, f"forget Recall@{k} missing")
    else:
        lim = g + c.forget_recall_tolerance
        ok = v <= lim + _EPS
        out["forget"] = _verdict(ok, v, g, f"forget Recall@{k} {v:.4f} {_cmp(ok, '<=', '>')} "
                                 f"Gold {g:.4f} + {c.forget_recall_tolerance:g} = {lim:.4f}")

    v, g = _metric(row, "test", f"recall@{k}"), _metric(gold, "test", f"recall@{k}")
    if v is None or g is None:
        out["retain"] = _verdict(None, v, g, f"retain Recall@{k} missing")
    else:
        lim = c.retain_ratio_min * g
        ok = v >= lim - _EPS
        out["retain"] = _verdict(ok, v, g, f"retain Recall@{k} {v:.4f} {_cmp(ok, '>=', '<')} "
                                 f"{c.retain_ratio_min:g} x Gold {g:.4f} = {lim:.4f}")

    v, g = _field(row, "mia_auc"), _field(gold, "mia_auc")
    if v is None or g is None:
        out["mia"] = _verdict(None, v, g, "MIA AUC missing")
    else:
        ok = abs(v - g) <= c.mia_tolerance + _EPS
        out["mia"] = _verdict(ok, v, g, f"|MIA AUC {v:.3f} - Gold {g:.3f}| = {abs(v - g):.3f} "
                              f"{_cmp(ok, '<=', '>')} {c.mia_tolerance:g}")

    v = _speedup(row, gold)
    if v is None:
        out["speedup"] = _verdict(None, None, None, "speed-up missing")
    else:
        ok = v >= c.speedup_min - _EPS
        out["speedup"] = _verdict(ok, v, None,
                                  f"speed-up {v:.1f}x {_cmp(ok, '>=', '<')} {c.speedup_min:g}x")
    return out


def verdicts(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pass/fail of every non-Gold method on each criterion vs the Gold row.

    Args:
        rows: per-method dicts (module doc).
        meta: thresholds (:class:`Criteria` fields; other keys ignored).

    Returns:
        ``{method: {criterion: {"pass": bool | None, "value": float | None,
        "gold": float | None, "rule": str}}}`` for criteria ``forget``, ``retain``, ``mia``,
        ``speedup``; ``pass`` is None when a number needed is missing.

    Raises:
        ConfigError: malformed rows, or no Gold row.
    """
    _check_rows(rows)
    crit = Criteria.from_meta(meta)
    gold = find_gold(rows, crit)
    if gold is None:
        raise ConfigError(f"report: no Gold row (method {crit.gold_method!r} or is_gold=True) "
                          f"among {[r['method'] for r in rows]}")
    return {r["method"]: _judge(r, gold, crit) for r in rows if r is not gold}


# -- table ------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return MISSING if v is None else f"{v:{spec}}{suffix}"


def _fmt_seconds(v: float | None) -> str:
    if v is None:
        return MISSING
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def table(rows: Sequence[dict[str, Any]], crit: Criteria,
          gold: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the comparison table (shared by Markdown and HTML)."""
    k = crit.k
    header = ["Method", f"Retain Recall@{k}", f"Retain NDCG@{k}", f"Forget Recall@{k}",
              f"Forget NDCG@{k}", "MIA AUC", f"Overlap@{k} vs Gold", "Wall (s)", "Speed-up",
              "Peak RSS (MB)", "Peak RSS, Ray tree (MB)"]
    body = []
    for r in rows:
        name = r["method"] + (" (Gold)" if r is gold else "")
        body.append([
            name,
            _fmt(_metric(r, "test", f"recall@{k}"), ".4f"),
            _fmt(_metric(r, "test", f"ndcg@{k}"), ".4f"),
            _fmt(_metric(r, "forget", f"recall@{k}"), ".4f"),
            _fmt(_metric(r, "forget", f"ndcg@{k}"), ".4f"),
            _fmt(_field(r, "mia_auc"), ".3f"),
            _fmt(1.0 if r is gold and _field(r, f"overlap@{k}_vs_gold") is None
                 else _field(r, f"overlap@{k}_vs_gold"), ".3f"),
            _fmt_seconds(_field(r, "wall_seconds")),
            _fmt(_speedup(r, gold), ".1f", "×"),
            _fmt(_field(r, "peak_rss_mb"), ".0f"),
            _fmt(_field(r, "peak_rss_tree_mb"), ".0f"),
        ])
    return header, body


def _criteria_text(crit: Criteria) -> dict[str, str]:
    k = crit.k
    return {
        "forget": f"Forgetting: forget Recall@{k} must be at most Gold's + "
                  f"{crit.forget_recall_tolerance:g}.",
        "retain": f"Retained utility: retain (test) Recall@{k} must be at least "
                  f"{crit.retain_ratio_min:g} × Gold's.",
        "mia": f"Membership inference: MIA AUC must be within {crit.mia_tolerance:g} of Gold's "
               "(0.5 = forgotten pairs look like never-seen ones).",
        "speedup": f"Efficiency: speed-up over Gold's wall time must be at least "
                   f"{crit.speedup_min:g}×.",
    }


def _criteria_paragraphs(verd: dict[str, dict[str, Any]], crit: Criteria) -> list[str]:
    """One plain-text paragraph per criterion: the rule, then each method's outcome."""
    paras = []
    for name, intro in _criteria_text(crit).items():
        parts = []
        for method, v in verd.items():
            res = v[name]
            word = "n/a" if res["pass"] is None else "PASS" if res["pass"] else "FAIL"
            parts.append(f"{method}: {word} ({res['rule']})")
        paras.append(intro + " " + ("; ".join(parts) + "." if parts else "No method to judge."))
    return paras


def _meta_lines(meta: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in sorted(meta.items(), key=lambda kv: str(kv[0]))
            if isinstance(v, (str, int, float, bool))]


def render_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``report.md``: setup, the comparison table and one paragraph per criterion."""
    _check_rows(rows)
    crit = Criteria.from_meta(meta)
    gold = find_gold(rows, crit)
    header, body = table(rows, crit, gold)

    def md_row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"# {meta.get('title', 'Unlearning comparison')}", ""]
    setup = _meta_lines({k: v for k, v in meta.items() if k != "title"})
    if setup:
        lines += [f"- **{k}**: {v}" for k, v in setup] + [""]
    lines += [md_row(header), "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += [md_row(r) for r in body] + ["", "## Criteria vs Gold", ""]
    if gold is None:
        lines += [f"No Gold row (method {crit.gold_method!r}): criteria not evaluated.", ""]
    else:
        verd = verdicts(rows, meta)
        for p in _criteria_paragraphs(verd, crit):
            lines += [p, ""]
        lines += [_summary(verd), ""]
    return "\n".join(lines)


def _summary(verd: dict[str, dict[str, Any]]) -> str:
    winners = [m for m, v in verd.items() if all(v[c]["pass"] is True for c in CRITERIA)]
    return ("Methods meeting every criterion: " + (", ".join(winners) if winners else "none") + ".")


# -- SVG charts -------------------------------------------------------------------------------
def svg_bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], *,
                  fmt: Callable[[float], str], log_scale: bool = False,
                  domain: tuple[float, float] | None = None, ref: float | None = None,
                  ref_label: str = "", highlight: int | None = None, width: int = 640) -> str:
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
        highlight: index of a bar drawn in the accent colour (Gold).
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
        colour = "#d95f02" if n == highlight else "#1b9e77"
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


def _charts(rows: Sequence[dict[str, Any]], crit: Criteria,
            gold: dict[str, Any] | None) -> list[str]:
    k = crit.k
    labels = [r["method"] for r in rows]
    hl = next((n for n, r in enumerate(rows) if r is gold), None)
    retain = [_metric(r, "test", f"recall@{k}") for r in rows]
    forget = [_metric(r, "forget", f"recall@{k}") for r in rows]
    wall = [_field(r, "wall_seconds") for r in rows]
    mia = [_field(r, "mia_auc") for r in rows]
    positive = [w for w in wall if w is not None and w > 0]
    log_wall = bool(positive) and max(positive) / min(positive) >= 10
    return [
        svg_bar_chart(f"Retain (test) Recall@{k}", labels, retain, fmt=lambda v: f"{v:.4f}",
                      highlight=hl),
        svg_bar_chart(f"Forget-set Recall@{k} (lower = more forgotten)", labels, forget,
                      fmt=lambda v: f"{v:.4f}", highlight=hl),
        svg_bar_chart("Wall time (s)", labels, wall, fmt=_fmt_seconds, log_scale=log_wall,
                      highlight=hl),
        svg_bar_chart("Membership-inference AUC", labels, mia, fmt=lambda v: f"{v:.3f}",
                      domain=(0.0, 1.0), ref=0.5, ref_label="0.5 = chance", highlight=hl),
    ]


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;"
        "padding:4px 8px}td{text-align:right}td:first-child{text-align:left}"
        "th{background:#f4f4f4}.pass{color:#1a7f37}.fail{color:#c62828}.na{color:#888}"
        "svg{display:block;margin:1em 0}")


def render_html(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``report.html``: the table, the criteria verdicts and four inline SVG bar charts."""
    _check_rows(rows)
    crit = Criteria.from_meta(meta)
    gold = find_gold(rows, crit)
    header, body = table(rows, crit, gold)
    esc = html.escape
    title = esc(str(meta.get("title", "Unlearning comparison")))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{title}</title><style>{_CSS}</style></head><body>", f"<h1>{title}</h1>"]
    setup = _meta_lines({k: v for k, v in meta.items() if k != "title"})
    if setup:
        out.append("<ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in setup)
                   + "</ul>")
    out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
               + "</tr></thead><tbody>")
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body]
    out.append("</tbody></table><h2>Criteria vs Gold</h2>")
    if gold is None:
        out.append(f"<p>No Gold row (method {esc(crit.gold_method)!s}): criteria not "
                   "evaluated.</p>")
    else:
        verd = verdicts(rows, meta)
        for name, intro in _criteria_text(crit).items():
            items = []
            for method, v in verd.items():
                res = v[name]
                cls, word = (("na", "n/a") if res["pass"] is None else
                             ("pass", "PASS") if res["pass"] else ("fail", "FAIL"))
                items.append(f'<li>{esc(method)}: <span class="{cls}">{word}</span> '
                             f"({esc(res['rule'])})</li>")
            out.append(f"<p>{esc(intro)}</p><ul>{''.join(items)}</ul>")
        out.append(f"<p><b>{esc(_summary(verd))}</b></p>")
    out.append("<h2>Charts</h2>")
    out += _charts(rows, crit, gold)
    out.append("</body></html>")
    return "\n".join(out)


def _json_default(obj: Any) -> Any:
    """numpy scalars / arrays and other odd values inside rows -> JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def write_report(out_uri: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and ``report.json`` under ``out_uri``.

    Args:
        out_uri: a local directory or ``s3://bucket/prefix``.
        rows: per-method dicts (module doc); one of them should be Gold.
        meta: setup facts shown at the top (scalars) and the thresholds of
            :class:`Criteria`.

    Returns:
        ``{"md": uri, "html": uri, "json": uri}`` of the files written (atomically).
    """
    _check_rows(rows)
    crit = Criteria.from_meta(meta)
    gold = find_gold(rows, crit)
    verd = verdicts(rows, meta) if gold is not None else None
    payload = {"meta": meta, "criteria": asdict(crit), "rows": rows, "verdicts": verd}
    docs = {
        "md": ("report.md", render_markdown(rows, meta).encode()),
        "html": ("report.html", render_html(rows, meta).encode()),
        "json": ("report.json", (json.dumps(payload, indent=2, default=_json_default)
                                 + "\n").encode()),
    }
    written = {}
    for key, (name, data) in docs.items():
        uri = join(out_uri, name)
        write_bytes_atomic(uri, data)
        written[key] = uri
    log.info("report: wrote %s", ", ".join(written.values()))
    return written
