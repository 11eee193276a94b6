"""``unlearn`` and ``compare``: request -> lifecycle -> method(s) -> audit -> report.

Order of effects (see :mod:`mmrecun_ray.unlearning.lifecycle`; nothing half-done is ever
visible, and re-running the same command resumes where a crash left off):

  0. everything is validated first — model folder (weights load as tensors only), dataset,
     lineage, request ids, settings, the ``--out`` folder — before any side effect;
  1. the request is accepted: appended to the lineage root's ledger (``unlearn``, or
     ``compare --record``), so every later load of any version of the dataset hides it;
  2. the retain version D_r is published (``<out>/retain_data``, manifest last);
  3. each method's model is published (``<out>/<method>/model`` for ``compare``,
     ``<out>/model`` for ``unlearn``; ``model.json`` last) and journaled; ``compare`` first
     retrains the Gold band (``--gold-seeds`` Golds: ``gold``, ``gold-s1``, ...);
  4. every model is audited with one :class:`~mmrecun_ray.unlearning.audit.AuditContext`
     (same draws for all: paired comparisons), ``compare`` judges each against the Gold
     band (:mod:`mmrecun_ray.unlearning.band`) and writes the report; ``metrics.json`` last;
     the job is ``done``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrecun_ray.data.dataset import read_manifest
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.evaluation.evaluate import KS, embeddings, evaluate_embeddings
from mmrecun_ray.storage import join, read_json, write_json_atomic
from mmrecun_ray.storage.uri import to_jsonable
from mmrecun_ray.training.export import (ModelInfo, build_from_state, export_model, load_model,
                                         read_model_info, read_optimizer, read_state,
                                         read_twin)
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.unlearning import lifecycle
from mmrecun_ray.unlearning.audit import AuditContext, AuditResult, audit_model, track_peak_rss
from mmrecun_ray.unlearning.methods import Job, Method, MethodResult, build_methods
from mmrecun_ray.unlearning.methods.base import settings_dict
from mmrecun_ray.unlearning.methods.gold import run_band
from mmrecun_ray.unlearning.references import estimate_gold_forget_recall
from mmrecun_ray.unlearning.requests import ForgetSet, resolve_request

logger = logging.getLogger(__name__)

#: Gold retrains of a ``compare``'s band by default
GOLD_SEEDS = 3


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
    alone). The full lifecycle of ``unlearn``/``compare`` is :func:`run_methods`'s."""
    from mmrecun_ray.data.dataset import load_dataset
    req = lifecycle.concrete_request(spec, seed, data_uri)
    original = load_dataset(data_uri, exclude_requests={req.request_id()})
    fset = resolve_request(req, original)
    p = lifecycle.Plan(request=req, fset=fset, original=original, data_uri=str(data_uri),
                       out_uri=str(out_uri), key={}, journal=None, record=record, overwrite=False)
    lifecycle.accept(p)
    lifecycle.publish_retain(p)
    return Prepared(fset=fset, retain_uri=p.retain_uri, original=original)


def reference_valid_recall(model_uri: str, prep: Prepared) -> float:
    """The trained model's validation Recall@20 on retain users over the retain graph: the
    level a never-seen positive of a known user reaches (the ``auto`` forget target)."""
    model, _ = load_model(model_uri, prep.fset.retain)
    u, i = embeddings(model)
    return float(evaluate_embeddings(u, i, prep.fset.retain, prep.fset.retain.valid, (20,))["recall@20"])


def _metrics(u: torch.Tensor, i: torch.Tensor, fset: ForgetSet) -> dict[str, dict[str, float]]:
    """Full-ranking metrics at every K: retain test (banned items masked) and the forget set
    (D_f ranked for its users, retain training items masked)."""
    r = fset.retain
    banned = fset.banned_items if fset.banned_items.size else None
    out = {"test": evaluate_embeddings(u, i, r, r.test, KS, banned)}
    if len(fset.forget):
        out["forget"] = evaluate_embeddings(u, i, r, fset.forget, KS, banned_items=None)
    return out


@dataclass
class _Row:
    """One audited model of a run."""

    name: str
    role: str
    info: dict[str, Any]
    result: AuditResult
    metrics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"method": self.name, "role": self.role, **self.info, "metrics": self.metrics,
                "audit": self.result.to_json(),
                "mia_auc": self.result.values.get("mia_auc")}


def _run_one(method: Method, job: Job) -> tuple[MethodResult, float, float]:
    """Run a method; its peak RSS above the start, driver alone and driver plus its
    descendant processes (a local Ray's raylet and workers; shared pages counted per
    process: an upper bound)."""
    with track_peak_rss() as peak, track_peak_rss(0.1, include_children=True) as tree:
        res = method.run(job)
    return res, peak.peak_mb, tree.peak_mb


def _published_row(res: MethodResult, name: str, role: str, model_dir: str | None,
                   peak: float | None, tree: float | None) -> dict[str, Any]:
    """What the journal keeps of a published method (enough to report it after a resume)."""
    return {"method": name, "role": role, "graph": res.graph, "model_uri": model_dir,
            "wall_seconds": res.wall_seconds, "peak_rss_mb": peak, "peak_rss_tree_mb": tree,
            "steps": res.loop.steps if res.loop else res.extra.get("steps"),
            "epochs_run": res.loop.epochs_run if res.loop else res.extra.get("epochs_run"),
            **{k: v for k, v in res.extra.items() if k not in ("steps", "epochs_run")}}


def run_methods(model_uri: str, data_uri: str, spec: str, methods: list[str], out_uri: str,
                scaling: Scaling, sets: dict[str, Any] | None = None, seed: int = 0,
                command: str = "compare", record: bool | None = None, overwrite: bool = False,
                gold_seeds: int | None = None) -> dict[str, Any]:
    """Apply the request through its lifecycle, run each method, audit, publish.

    Args:
        record: accept the request (a ledger entry); default True for ``unlearn``, False
            for ``compare`` (an experiment).
        gold_seeds: ``compare``: Gold retrains of the band (default :data:`GOLD_SEEDS`; at
            least 1: a comparison is judged against Gold). ``unlearn`` runs no band.
    """
    t_all = time.perf_counter()
    record = (command == "unlearn") if record is None else record
    sets = dict(sets or {})
    k_gold = (GOLD_SEEDS if gold_seeds is None else int(gold_seeds)) if command == "compare" else 0
    if command == "compare" and k_gold < 1:
        raise ConfigError(f"--gold-seeds {k_gold}: a comparison is judged against at least one "
                          "Gold retrain")
    names = [m for m in methods if not (command == "compare" and m == "gold")]
    # -- 0. validate everything, no side effect ------------------------------------------------
    built = build_methods(names, sets)
    info: ModelInfo = read_model_info(model_uri)
    for method in built:
        method.check(info)
    state = {k: v.numpy() for k, v in read_state(model_uri).items()}
    optimizer = read_optimizer(model_uri)
    p = lifecycle.plan(data_uri, spec, seed, out_uri, info=info, model_uri=model_uri,
                       command=command, methods=methods, settings=sets, record=record,
                       overwrite=overwrite, gold_seeds=k_gold)
    # the trained model over the original graph: builds (so checks) params, shapes, modalities
    before = embeddings(build_from_state(info, p.original, state, where=model_uri))
    if p.reached("done"):
        logger.info("%s: job already done (request %s); nothing to do", out_uri, p.request_id)
        return read_json(join(out_uri, "metrics.json"))
    # -- 1-2. accept, publish the retain version (Ray starts when a method first trains) -------
    lifecycle.begin(p)
    lifecycle.accept(p)
    lifecycle.publish_retain(p)
    fset = p.fset
    prep = Prepared(fset=fset, retain_uri=p.retain_uri, original=p.original)
    ref = reference_valid_recall(model_uri, prep)
    job = Job(model_uri=model_uri, info=info, state=state, optimizer=optimizer, fset=fset,
              retain_uri=p.retain_uri,
              retain_data=None,
              scaling=scaling, reference_valid_recall=ref, honoured=sorted(p.original.honoured),
              retain_hash=read_manifest(p.retain_uri).content_hash(),
              twin_state=read_twin(model_uri, info, as_numpy=True))
    if k_gold:  # a comparison trains Gold anyway: read D_r now, outside every method's wall time
        job.retain_dataset()
    ctx = AuditContext.build(fset, p.original, seed=0)

    def model_dir(name: str) -> str:
        return join(join(out_uri, name) if command == "compare" else out_uri, "model")

    def audited(name: str, role: str, row: dict[str, Any], u: torch.Tensor, i: torch.Tensor,
                gold_top: np.ndarray | None) -> _Row:
        result = audit_model(u, i, ctx, before=before, gold_top=gold_top)
        return _Row(name, role, row, result, _metrics(u, i, fset))

    def reload(row: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if row.get("graph") == "original":
            return before
        return embeddings(load_model(row["model_uri"], fset.retain)[0])

    rows: list[_Row] = []
    # -- 3a. the Gold band (compare) ------------------------------------------------------------
    if k_gold:
        base_seed = job.recipe()[0].seed
        seeds = [base_seed + k for k in range(k_gold)]
        gname = {s: "gold" if k == 0 else f"gold-s{k}" for k, s in enumerate(seeds)}
        todo = [s for s in seeds if p.method_done(gname[s]) is None]
        if todo:
            logger.info("Gold band: retraining %d of %d seeds on D_r", len(todo), len(seeds))
            with track_peak_rss() as peak, track_peak_rss(0.1, include_children=True) as tree:
                results = run_band(job, todo, lambda s: model_dir(gname[s]))
            for s, res in zip(todo, results):
                if not res.extra.get("concurrent"):
                    export_model(model_dir(gname[s]), res.info, res.state,
                                 res.loop.optimizer if res.loop else None)
                lifecycle.method_published(p, gname[s], to_jsonable(_published_row(
                    res, gname[s], "gold", model_dir(gname[s]),
                    peak.peak_mb if len(todo) == 1 else None,
                    tree.peak_mb if len(todo) == 1 else None)))
        for s in seeds:
            row = p.method_done(gname[s])
            rows.append(audited(gname[s], "gold", row, *reload(row), None))
    gold_top = rows[0].result.top20 if rows else None
    # -- 3b. the methods ------------------------------------------------------------------------
    for method in built:
        row = p.method_done(method.name)
        if row is None:
            logger.info("running %s on request %s (%d forget pairs)", method.name,
                        fset.request_id, len(fset.forget))
            res, peak, tree = _run_one(method, job)
            mdir = None if res.graph == "original" else model_dir(method.name)
            if mdir is not None:
                export_model(mdir, res.info, res.state,
                             res.loop.optimizer if res.loop is not None and res.info.model != "sisa" else None,
                             twin=res.twin_state)
            row = to_jsonable({**_published_row(res, method.name, method.role, mdir, peak, tree),
                               "settings": settings_dict(method.settings)})
            lifecycle.method_published(p, method.name, row)
        rows.append(audited(method.name, method.role, row, *reload(row), gold_top))
    # -- 4. report, metrics, done ---------------------------------------------------------------
    request = {"spec": spec, **lifecycle._request_doc(p), "recorded": record}
    payload: dict[str, Any] = {
        "command": command, "model": info.model, "model_uri": model_uri, "data": data_uri,
        "request": request, "retain_data": p.retain_uri,
        "estimated_gold_forget_recall@20": estimate_gold_forget_recall(fset, ref),
        "methods": [r.to_json() for r in rows], "wall_seconds_total": time.perf_counter() - t_all}
    original = audited("original", "reference", {}, *before, gold_top)
    payload["original"] = original.to_json()
    if command == "compare":
        from mmrecun_ray.unlearning.report import AuditedRun, build_payload, write_report
        gold_walls = [r.info["wall_seconds"] for r in rows if r.role == "gold" and r.info.get("wall_seconds")]
        report = build_payload(
            [AuditedRun(method=r.name, role=r.role, result=r.result,
                        seed=r.info.get("seed"), wall_seconds=r.info.get("wall_seconds"),
                        peak_rss_mb=r.info.get("peak_rss_mb"),
                        peak_rss_tree_mb=r.info.get("peak_rss_tree_mb"),
                        speedup_vs_gold=(gold_walls[0] / max(r.info["wall_seconds"], 1e-9)
                                         if gold_walls and r.info.get("wall_seconds") else None))
             for r in rows],
            request=request, model=info.model, dataset=str(data_uri))
        for row, rep in zip(payload["methods"], report["rows"]):
            row.update({k: rep[k] for k in ("verdicts", "paired", "overlap_vs_golds", "passes",
                                            "speedup_vs_gold")})
        payload.update({k: report[k] for k in ("bands", "gold_overlap_ceiling", "gold_pairs",
                                               "retain_ratio_min")})
        write_report(out_uri, report)
    else:
        payload.update({k: v for k, v in payload["methods"][0].items() if k != "method"})
        payload["method"] = payload["methods"][0]["method"]
    payload = to_jsonable(payload)
    write_json_atomic(join(out_uri, "metrics.json"), payload)
    lifecycle.done(p)
    return payload
