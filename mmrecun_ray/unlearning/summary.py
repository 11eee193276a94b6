"""The console table of a ``compare`` (or ``unlearn``) payload."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def format_table(p: dict[str, Any]) -> str:
    """Plain-text comparison table: one row per method (reference rows included)."""
    head = (f"{'method':<13} {'retainR@20':>10} {'forgetR@20':>10} {'MIA AUC':>8} {'ovl@20':>7} "
            f"{'wall s':>8} {'speedup':>8}")
    lines = [f"request {p['request']['spec']} ({p['request']['forget_pairs']} forget pairs), "
             f"model {p['model']}", head, "-" * len(head)]
    rows = p["methods"]
    if not any(r.get("method") == "original" for r in rows):
        rows = [dict(p["original"], method="original")] + rows
    for r in rows:
        m = r.get("metrics", {})
        lines.append(f"{r['method']:<13} {_fmt(m.get('test', {}).get('recall@20'), '.4f'):>10} "
                     f"{_fmt(m.get('forget', {}).get('recall@20'), '.4f'):>10} "
                     f"{_fmt(r.get('mia_auc'), '.3f'):>8} {_fmt(r.get('overlap@20_vs_gold'), '.2f'):>7} "
                     f"{_fmt(r.get('wall_seconds'), '.1f'):>8} {_fmt(r.get('speedup_vs_gold'), '.1f', 'x'):>8}")
    return "\n".join(lines)
