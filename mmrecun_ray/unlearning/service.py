"""``unlearn`` and ``compare``: request -> lifecycle -> method(s) -> audit -> report.

Order of effects (see :mod:`mmrecun_ray.unlearning.lifecycle`; nothing half-done is ever
visible, and re-running the same command resumes where a crash left off):

  0. everything is validated first — model folder (weights load as tensors only), dataset,
     lineage, request ids, settings, the ``--out`` folder — before any side effect;
  1. the request is accepted: appended to the lineage root's ledger (``unlearn``, or
     ``compare --record``), so every later load of any version of the dataset hides it;
  2. the retain version D_r is published (``<out>/retain_data``, manifest last);
  3. each method's model is published (``<out>/<method>/model`` for ``compare``,
     ``<out>/model`` for ``unlearn``; ``model.json`` last), journaled with its audit row;
  4. ``<out>/metrics.json`` and the report are written; the job is ``done``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrecun_ray.data.dataset import interactions_dataset, read_manifest
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.evaluation.evaluate import KS, embeddings, evaluate_embeddings
from mmrecun_ray.evaluation.ranking import build_csr, full_ranking_topk
from mmrecun_ray.storage import join, read_json, write_json_atomic
from mmrecun_ray.storage.uri import to_jsonable
from mmrecun_ray.training.export import (ModelInfo, build_from_state, export_model,
                                         read_model_info, read_optimizer, read_state)
from mmrecun_ray.training.runner import Scaling, ensure_ray
from mmrecun_ray.unlearning import lifecycle
from mmrecun_ray.unlearning.methods import Job, Method, MethodResult, build_methods
from mmrecun_ray.unlearning.methods.base import settings_dict
from mmrecun_ray.unlearning.references import estimate_gold_forget_recall
from mmrecun_ray.unlearning.requests import ForgetSet

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request applied: the forget set, the published retain version, the original view
    (everything forgotten hidden but this request)."""

    fset: ForgetSet
    retain_uri: str
    original: RecDataset


def apply_request(data_uri: str, spec: str, out_uri: str, seed: int = 0,
                  record: bool = True) -> Prepared:
    """Resolve ``spec`` over ``data_uri`` and publish D_r at ``<out>/retain_data`` (for
    ``tune``, which shares one request among its trials; ``record=False`` leaves the ledger
    alone). The request lifecycle of ``unlearn``/``compare`` is :func:`run_methods`'s."""
    req = lifecycle.concrete_request(spec, seed, data_uri)
    from mmrecun_ray.data.dataset import load_dataset
    original = load_dataset(data_uri, exclude_requests={req.request_id()})
    from mmrecun_ray.unlearning.requests import resolve_request
    fset = resolve_request(req, original)
    p = lifecycle.Plan(request=req, fset=fset, original=original, data_uri=str(data_uri),
                       out_uri=str(out_uri), key={}, journal=None, record=record, overwrite=False)
    if record:
        lifecycle.accept(p)
    lifecycle.publish_retain(p)
    return Prepared(fset=fset, retain_uri=p.retain_uri, original=original)


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


def reference_valid_recall(model_uri: str, prep: Prepared) -> float:
    """The trained model's validation Recall@20 on retain users over the retain graph: the
    level a never-seen positive of a known user reaches (the ``auto`` forget target)."""
    from mmrecun_ray.training.export import load_model
    model, _ = load_model(model_uri, prep.fset.retain)
    u, i = embeddings(model)
    return float(evaluate_embeddings(u, i, prep.fset.retain, prep.fset.retain.valid, (20,))["recall@20"])


def _method_uri(out_uri: str, name: str, command: str) -> str:
    return join(out_uri, name) if command == "compare" else out_uri


def _run_one(method: Method, job: Job) -> tuple[MethodResult, Any, Any]:
    """Run a method, measuring the driver's peak RSS and the process tree's (a local Ray's
    raylet and workers; shared pages counted per process: an upper bound)."""
    from mmrecun_ray.unlearning.audit import track_peak_rss
    with track_peak_rss() as peak, track_peak_rss(0.1, include_children=True) as tree:
        res = method.run(job)
    return res, peak, tree


def run_methods(model_uri: str, data_uri: str, spec: str, methods: list[str], out_uri: str,
                scaling: Scaling, sets: dict[str, Any] | None = None, seed: int = 0,
                command: str = "compare", record: bool | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Apply the request through its lifecycle, run each method, audit, publish.

    ``record`` (default: True for ``unlearn``, False for ``compare``) makes the request an
    accepted deletion (ledger entry) rather than an experiment.
    """
    t_all = time.perf_counter()
    record = (command == "unlearn") if record is None else record
    sets = dict(sets or {})
    # -- 0. validate everything, no side effect ------------------------------------------------
    built = build_methods(methods, sets)
    info: ModelInfo = read_model_info(model_uri)
    state = {k: v.numpy() for k, v in read_state(model_uri).items()}
    optimizer = read_optimizer(model_uri)
    p = lifecycle.plan(data_uri, spec, seed, out_uri, info=info, model_uri=model_uri,
                       command=command, methods=methods, settings=sets, record=record,
                       overwrite=overwrite)
    # the trained model over the original graph: builds (so checks) params, shapes, modalities
    base_emb = embeddings(build_from_state(info, p.original, state, where=model_uri))
    if p.reached("done"):
        logger.info("%s: job already done (request %s); nothing to do", out_uri, p.request_id)
        return read_json(join(out_uri, "metrics.json"))
    # -- 1-2. accept, publish the retain version ----------------------------------------------
    ensure_ray()
    lifecycle.begin(p)
    lifecycle.accept(p)
    lifecycle.publish_retain(p)
    fset = p.fset
    prep = Prepared(fset=fset, retain_uri=p.retain_uri, original=p.original)
    retain_data = interactions_dataset(p.retain_uri, "train").materialize()
    ref = reference_valid_recall(model_uri, prep)
    job = Job(model_uri=model_uri, info=info, state=state, optimizer=optimizer, fset=fset,
              retain_uri=p.retain_uri, retain_data=retain_data, scaling=scaling,
              reference_valid_recall=ref, honoured=sorted(p.original.honoured),
              retain_hash=read_manifest(p.retain_uri).content_hash())
    # -- 3. methods, Gold first (speed-up and overlap are against it) -------------------------
    order = sorted(built, key=lambda m: m.role != "gold")
    rows: list[dict[str, Any]] = []
    original = audit(*base_emb, prep)
    original.pop("_top", None)
    gold_top, gold_wall = None, None
    for method in order:
        method_uri = _method_uri(out_uri, method.name, command)
        model_dir = join(method_uri, "model")
        done_row = p.method_done(method.name)
        if done_row is not None:  # published before a crash: re-audit the published model
            from mmrecun_ray.training.export import load_model
            graph = p.original if done_row.get("graph") == "original" else fset.retain
            model, _ = load_model(model_dir, graph) if done_row.get("graph") != "original" else \
                (build_from_state(info, graph, state), None)
            u, i = embeddings(model)
            row = {**done_row, **audit(u, i, prep, gold_top=gold_top)}
        else:
            logger.info("running %s on request %s (%d forget pairs)", method.name, fset.request_id,
                        len(fset.forget))
            res, peak, tree = _run_one(method, job)
            graph = p.original if res.graph == "original" else fset.retain
            if res.graph != "original":
                export_model(model_dir, res.info, res.state,
                             res.loop.optimizer if res.loop is not None and res.info.model != "sisa" else None)
            u, i = embeddings(build_from_state(res.info, graph, res.state))
            row = {"method": method.name, "role": method.role, "graph": res.graph,
                   "wall_seconds": res.wall_seconds, "peak_rss_mb": peak.peak_mb,
                   "peak_rss_tree_mb": tree.peak_mb, "model_uri": model_dir,
                   "epochs_run": res.loop.epochs_run if res.loop else None,
                   "steps": res.loop.steps if res.loop else None,
                   "settings": settings_dict(method.settings), **res.extra}
            lifecycle.method_published(p, method.name, to_jsonable(row))
            row.update(audit(u, i, prep, gold_top=gold_top))
        top = row.pop("_top")
        if method.role == "gold":
            gold_top, gold_wall = top, row["wall_seconds"]
        if gold_wall and row.get("wall_seconds") is not None:
            row["speedup_vs_gold"] = gold_wall / max(row["wall_seconds"], 1e-9)
        rows.append(row)
        if command == "compare":
            write_json_atomic(join(method_uri, "metrics.json"), to_jsonable({**row, "model": info.model}))
    # -- 4. metrics, report, done --------------------------------------------------------------
    payload = {"command": command, "model": info.model, "model_uri": model_uri, "data": data_uri,
               "request": {"spec": spec, **lifecycle._request_doc(p), "recorded": record},
               "retain_data": p.retain_uri,
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
    lifecycle.done(p)
    return payload
