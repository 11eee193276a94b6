"""``unlearn`` and ``compare``: request -> D_f / D_r (published) -> method(s) -> audit.

Order of effects (nothing half-done is ever visible):
  1. the retain version D_r is published (``<out>/retain_data``, manifest last);
  2. the request is appended to the dataset's ledger (``<data>/ledger``), so every later
     load of ``<data>`` hides D_f;
  3. each method's model is published (``<out>/<method>/model``), then its metrics;
  4. ``<out>/metrics.json`` and the report are written last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrecun_ray.data.dataset import interactions_dataset, load_dataset
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.data.writer import write_dataset
from mmrecun_ray.evaluation.evaluate import KS, embeddings, evaluate_embeddings
from mmrecun_ray.evaluation.ranking import build_csr, full_ranking_topk
from mmrecun_ray.storage import exists, join, write_json_atomic
from mmrecun_ray.storage.uri import to_jsonable
from mmrecun_ray.training.export import (build_from_state, export_model, load_model, read_model_info,
                                         read_optimizer, read_state)
from mmrecun_ray.training.runner import Scaling, ensure_ray
from mmrecun_ray.unlearning.methods import Job, build_methods
from mmrecun_ray.unlearning.methods.base import settings_dict
from mmrecun_ray.unlearning.references import estimate_gold_forget_recall
from mmrecun_ray.unlearning.requests import ForgetSet, parse_request, resolve_request

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request applied: the forget set, the published retain version, the original data."""

    fset: ForgetSet
    retain_uri: str
    original: RecDataset
    ledger_entry: dict[str, Any] | None


def apply_request(data_uri: str, spec: str, out_uri: str, seed: int = 0,
                  record: bool = True) -> Prepared:
    """Resolve ``spec`` over ``data_uri``, publish D_r at ``<out>/retain_data`` and append
    the request to ``<data>/ledger`` (when ``record``)."""
    original = load_dataset(data_uri)
    fset = resolve_request(parse_request(spec, seed=seed), original)
    retain_uri = join(out_uri, "retain_data")
    r = fset.retain
    if not exists(join(retain_uri, "manifest.json")):
        write_dataset(retain_uri, name=f"{original.manifest.name}-retain-{fset.request_id}",
                      n_users=r.n_users, n_items=r.n_items, train=r.train, valid=r.valid,
                      test=r.test, features=r.features, source=f"forget:{data_uri}",
                      parent=str(data_uri), forget_request=fset.request_id,
                      extra={"banned_items": fset.banned_items.tolist(),
                             "dropped_features": {m: v.tolist() for m, v in fset.dropped_features.items()},
                             "forget_pairs": len(fset.forget)})
    entry = _record(data_uri, fset) if record else None
    return Prepared(fset=fset, retain_uri=retain_uri, original=original, ledger_entry=entry)


def _record(data_uri: str, fset: ForgetSet) -> dict[str, Any] | None:
    try:
        from mmrecun_ray.storage import ledger
    except ImportError:  # pragma: no cover - storage room without ledger
        logger.warning("no ledger module: request %s not recorded", fset.request_id)
        return None
    return ledger.record_request(join(data_uri, "ledger"), fset)


def audit(user_emb: torch.Tensor, item_emb: torch.Tensor, prep: Prepared,
          gold_top: np.ndarray | None = None, k: int = 20) -> dict[str, Any]:
    """Retain utility, forgetting, MIA and top-K lists of one model's embeddings."""
    from mmrecun_ray.unlearning.audit import mia_auc, topk_overlap
    fset, r, orig = prep.fset, prep.fset.retain, prep.original
    banned = fset.banned_items if fset.banned_items.size else None
    out: dict[str, Any] = {"metrics": {
        "valid": evaluate_embeddings(user_emb, item_emb, r, r.valid, KS, banned),
        "test": evaluate_embeddings(user_emb, item_emb, r, r.test, KS, banned)}}
    if len(fset.forget):
        # do the forgotten items still rank in the user's top K (retain items masked)?
        out["metrics"]["forget"] = evaluate_embeddings(user_emb, item_emb, r, fset.forget, KS,
                                                       banned_items=None)
        known = np.concatenate([orig.split(s).keys(orig.n_items) for s in ("train", "valid", "test")])
        out["mia_auc"] = mia_auc(user_emb, item_emb, fset.forget.user, fset.forget.item, known,
                                 orig.n_items, seed=0)
    users = np.unique(r.test.user)
    top = full_ranking_topk(user_emb, item_emb, users, build_csr(r.train.user, r.train.item, r.n_users),
                            k, banned_items=banned)
    out["_top"] = top
    if gold_top is not None:
        out[f"overlap@{k}_vs_gold"] = topk_overlap(top, gold_top)
    return out


def _audit_original(model_uri: str, prep: Prepared) -> dict[str, Any]:
    """The trained model before unlearning, evaluated on the same retain/forget sets."""
    model, _ = load_model(model_uri, prep.original)
    u, i = embeddings(model)
    res = audit(u, i, prep)
    res["method"] = "original"
    return res


def reference_valid_recall(model_uri: str, prep: Prepared) -> float:
    """The trained model's validation Recall@20 on retain users over the retain graph."""
    model, _ = load_model(model_uri, prep.fset.retain)
    u, i = embeddings(model)
    return float(evaluate_embeddings(u, i, prep.fset.retain, prep.fset.retain.valid, (20,))["recall@20"])


def run_methods(model_uri: str, data_uri: str, spec: str, methods: list[str], out_uri: str,
                scaling: Scaling, sets: dict[str, Any] | None = None, seed: int = 0,
                command: str = "compare", record: bool = True) -> dict[str, Any]:
    """Apply the request once, run each method on it, audit and publish everything."""
    from mmrecun_ray.unlearning.audit import track_peak_rss
    t_all = time.perf_counter()
    built = build_methods(methods, dict(sets or {}))
    info = read_model_info(model_uri)
    state = {k: v.numpy() for k, v in read_state(model_uri).items()}
    optimizer = read_optimizer(model_uri)
    ensure_ray()
    prep = apply_request(data_uri, spec, out_uri, seed=seed, record=record)
    fset = prep.fset
    retain_data = interactions_dataset(prep.retain_uri, "train").materialize()
    ref = reference_valid_recall(model_uri, prep)
    job = Job(model_uri=model_uri, info=info, state=state, optimizer=optimizer, fset=fset,
              retain_uri=prep.retain_uri, retain_data=retain_data, scaling=scaling,
              reference_valid_recall=ref)
    order = sorted(built, key=lambda m: m.role != "gold")
    rows: list[dict[str, Any]] = []
    original = _audit_original(model_uri, prep)
    gold_top, gold_wall = None, None
    for method in order:
        with track_peak_rss() as peak, track_peak_rss(0.1, include_children=True) as tree:
            res = method.run(job)
        method_uri = join(out_uri, method.name) if command == "compare" else out_uri
        graph = prep.original if res.graph == "original" else fset.retain
        if res.graph != "original":
            export_model(join(method_uri, "model"), res.info, res.state,
                         res.loop.optimizer if res.loop is not None and res.info.model != "sisa" else None)
        u, i = embeddings(build_from_state(res.info, graph, res.state))
        row = audit(u, i, prep, gold_top=gold_top)
        top = row.pop("_top")
        if method.role == "gold":
            gold_top, gold_wall = top, res.wall_seconds
        row.update({"method": method.name, "role": method.role, "wall_seconds": res.wall_seconds,
                    "peak_rss_mb": peak.peak_mb, "peak_rss_tree_mb": tree.peak_mb,
                    "model_uri": join(method_uri, "model"),
                    "epochs_run": res.loop.epochs_run if res.loop else None,
                    "steps": res.loop.steps if res.loop else None,
                    "settings": settings_dict(method.settings), **res.extra})
        if gold_wall:
            row["speedup_vs_gold"] = gold_wall / max(res.wall_seconds, 1e-9)
        rows.append(row)
        if command == "compare":
            write_json_atomic(join(method_uri, "metrics.json"), to_jsonable({**row, "model": res.info.model}))
    original.pop("_top", None)
    payload = {"command": command, "model": info.model, "model_uri": model_uri, "data": data_uri,
               "request": {"spec": spec, "id": fset.request_id, "kind": fset.request.kind,
                           "forget_pairs": len(fset.forget), "banned_items": int(fset.banned_items.size),
                           "retain_train": len(fset.retain.train)},
               "retain_data": prep.retain_uri,
               "estimated_gold_forget_recall@20": estimate_gold_forget_recall(fset, ref),
               "original": original, "methods": rows,
               "wall_seconds_total": time.perf_counter() - t_all}
    if command == "unlearn":
        payload.update({k: v for k, v in rows[0].items() if k != "method"})
        payload["method"] = rows[0]["method"]
    payload = to_jsonable(payload)
    write_json_atomic(join(out_uri, "metrics.json"), payload)
    if command == "compare":
        from mmrecun_ray.unlearning.report import write_report
        write_report(out_uri, [r for r in payload["methods"] if r.get("role") != "reference"],
                     {"model": info.model, "request": payload["request"],
                      "original": payload["original"], "forget_recall_tolerance": 0.01,
                      "retain_ratio_min": 0.95, "speedup_min": 5.0, "mia_tolerance": 0.05})
    return payload
