"""The console table of a ``compare`` (or ``unlearn``) payload: one row per model, each
audited number marked against the Gold band (✓ inside, ↑ above, ↓ below) when there is one."""

from __future__ import annotations

from typing import Any

from mmrecun_ray.unlearning.report import MARKERS

#: (column title, metric) shown when the payload has the metric
COLUMNS = (("retainR@20", "retain_recall@20"), ("forgetR@20", "forget_recall@20"),
           ("MIA", "mia_auc"), ("fold-in", "fold_in_recall@20"),
           ("itemFold", "item_fold_in_hit@20"), ("probeR2", "probe_r2"), ("diffAUC", "diff_auc"))


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def format_table(p: dict[str, Any]) -> str:
    """Plain-text comparison table (reference rows, Gold rows and methods)."""
    rows = p["methods"]
    present = [(t, m) for t, m in COLUMNS if any(m in r.get("audit", {}).get("values", {}) for r in rows)]
    head = f"{'method':<13}" + "".join(f" {t:>11}" for t, _ in present) + \
        f" {'wall s':>8} {'speedup':>9} {'verdict':>8}"
    req = p["request"]
    lines = [f"request {req['spec']} ({req['forget_pairs']} forget pairs), model {p['model']}"
             + (f", Gold band of {sum(r['role'] == 'gold' for r in rows)}" if "bands" in p else ""),
             head, "-" * len(head)]
    for r in rows:
        values = r.get("audit", {}).get("values", {})
        verdicts = r.get("verdicts", {})
        cells = "".join(f" {_fmt(values.get(m), '.4f') + MARKERS.get(verdicts.get(m, 'n/a'), ''):>11}"
                        for _, m in present)
        verdict = {True: "pass", False: "fail"}.get(r.get("passes")) if r.get("role") != "gold" else "band"
        lines.append(f"{r['method']:<13}{cells} {_fmt(r.get('wall_seconds'), '.1f'):>8} "
                     f"{_fmt(r.get('speedup_vs_gold'), '.1f', 'x'):>9} {verdict or '':>8}")
    if "bands" in p:
        lines.append("✓ inside the Gold band (mean ± max(2 sd, 2 s.e.)), ↑ above it, ↓ below it; "
                     "pass = every number inside and retain >= "
                     f"{p.get('retain_ratio_min', 0.97):g} x Gold")
    return "\n".join(lines)
