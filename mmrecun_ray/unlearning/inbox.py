"""Deletion requests as a daily operation: an inbox of request files, processed in batches.

Layout (``--inbox`` and ``--out`` are local folders or ``s3://`` prefixes)::

    <inbox>/pending/<name>.json|.parquet   request files dropped by clients (requests.py forms)
    <inbox>/done/<name>                    honoured (or already honoured) requests, moved here,
    <inbox>/done/<name>.result.json        with their outcome: request id, batch, model, reason
    <inbox>/failed/<name>[.result.json]    unreadable / invalid requests (one-line reason), and
                                           requests of a rejected batch awaiting the retrain
    <out>/CURRENT                          the pointer to the shipped model (pointer.py)
    <out>/RETRAIN_SCHEDULED, GOLD, INFLIGHT
    <out>/batches/<batch-id>/job.json      the batch journal
    <out>/batches/<batch-id>/model/        the unlearned model; gold/, gold-s1/, ...: its Golds
    <out>/batches/<batch-id>/metrics.json  audit of every model, bands, verdict, decision, timings

A **batch** is every pending request file at the start of the run, sorted by name, plus
the requests of a ``RETRAIN_SCHEDULED`` marker. Each request is resolved over the view that
hides everything forgotten but the batch (a bad one goes to ``failed/`` with its reason, the
others proceed; one the shipped model already honours goes to ``done/``); the forget set is
their union (overlaps once, :func:`merge_forget_sets`). The batch id hashes the member ids,
the model it starts from and its mode.

States of ``job.json`` (each journaled atomically, then the fault hook
``MMRECUN_FAULT_AT=<state>`` of :mod:`~mmrecun_ray.unlearning.lifecycle`):

1. ``planned``: members, options, policy, the pointer it starts from; ``<out>/INFLIGHT``
   names the batch from here on (a later run resumes it before anything else);
2. ``accepted``: each request appended to the lineage root's ledger under its own id
   (idempotent): from now on every load of the data hides it;
3. ``model_published`` / ``golds_published``: the method's model from the pointer's model,
   the Golds the policy asks for (retrained on the cumulative retain set), each journaled;
4. ``audited``: every model audited with one context; the policy's verdict;
5. ``published``: ``CURRENT`` moved (passed, observed, or the fallback retrain shipped) or
   ``RETRAIN_SCHEDULED`` written (rejected, fallback ``schedule``); ``metrics.json``;
6. ``settled``: request files moved out of ``pending/`` (only now: a crash never loses a
   request) and ``INFLIGHT`` removed.

A batch started from a ``RETRAIN_SCHEDULED`` marker runs no method: it ships a Gold
(retrained from scratch on the ledger-filtered data), which honours everything.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrecun_ray.data.dataset import interactions_dataset, load_dataset
from mmrecun_ray.data.lineage import ledger_uri_for, version_hashes
from mmrecun_ray.data.schema import Interactions, RecDataset
from mmrecun_ray.errors import ConfigError, DataError, MMRecUNError, StorageError
from mmrecun_ray.evaluation.evaluate import embeddings
from mmrecun_ray.storage import delete, exists, is_s3, join, list_files, read_bytes, read_json
from mmrecun_ray.storage import ledger, write_bytes_atomic, write_json_atomic
from mmrecun_ray.storage.uri import to_jsonable
from mmrecun_ray.training.export import (ModelInfo, build_from_state, export_model, load_model,
                                         read_model_info, read_optimizer, read_state,
                                         read_twin)
from mmrecun_ray.training.runner import Scaling, ensure_ray
from mmrecun_ray.unlearning import lifecycle
from mmrecun_ray.unlearning.audit import AuditContext, AuditResult, audit_model
from mmrecun_ray.unlearning.band import Band, gold_bands
from mmrecun_ray.unlearning.methods import Job, build_methods, method_class
from mmrecun_ray.unlearning.methods.base import settings_dict
from mmrecun_ray.unlearning.methods.gold import run_band
from mmrecun_ray.unlearning.pointer import (GOLD, INFLIGHT, POINTER, RETRAIN_MARKER, read_doc,
                                            read_pointer, remove_doc, write_doc)
from mmrecun_ray.unlearning.policy import Policy, Verdict, judge, policy_from_dict
from mmrecun_ray.unlearning.requests import ForgetRequest, ForgetSet, parse_request, resolve_request
from mmrecun_ray.unlearning.service import Prepared, reference_valid_recall

logger = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
REQUEST_SUFFIXES = (".json", ".parquet")
RESULT_SUFFIX = ".result.json"
BATCHES = "batches"
JOB_FILE = "job.json"
STATES = ("planned", "accepted", "model_published", "golds_published", "audited", "published",
          "settled")
#: kinds whose audit adds metrics of its own (an attack on the forgotten units)
_KIND_FIELDS = {"users": ("fold_users", "fold_controls"),
                "items": ("fold_items", "fold_item_controls"),
                "modality": ("probe", "probe_modality", "probe_features")}


@dataclass
class ProcessOptions:
    """What ``process`` is asked to do.

    Attributes:
        inbox: the inbox URI (``pending/``, ``done/``, ``failed/`` below it).
        data_uri: the dataset version the models serve (its lineage root's ledger records
            every accepted request).
        out_uri: where the pointer, the batches and their models go.
        model_uri: the model to start from before the first publish (afterwards the
            pointer's model; None is then fine).
        method: registry name of the unlearning method.
        sets: method settings (``--set`` / ``--config``).
        policy: the publishing policy.
        scaling: how every method and Gold runs.
    """

    inbox: str
    data_uri: str
    out_uri: str
    model_uri: str | None
    method: str
    policy: Policy
    scaling: Scaling
    sets: dict[str, Any] = field(default_factory=dict)


# -- request files ----------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    """An error as one line (our own errors as they are, others with their type)."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return text if isinstance(exc, MMRecUNError) else f"{type(exc).__name__}: {text}"


def list_pending(inbox: str) -> list[str]:
    """Names of the request files directly in ``<inbox>/pending``, sorted."""
    return [rel for rel in list_files(join(inbox, PENDING))
            if "/" not in rel and rel.endswith(REQUEST_SUFFIXES)]


def read_request_file(uri: str) -> ForgetRequest:
    """Parse one request file (``.json`` or ``.parquet``, local or on S3; see
    :mod:`mmrecun_ray.unlearning.requests`); ``source`` is its URI.

    Raises:
        ConfigError / DataError: unreadable or invalid (naming the file).
    """
    if not is_s3(uri):
        return parse_request(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="mmrecun-request-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(read_bytes(uri))
        try:
            req = parse_request(str(local))
        except MMRecUNError as e:
            raise type(e)(str(e).replace(str(local), uri)) from None
    return replace(req, source=uri)


def request_doc(req: ForgetRequest) -> dict[str, Any]:
    """A concrete request as JSON (its canonical form and source)."""
    return {**req.canonical(), "source": req.source}


def request_from_doc(doc: dict[str, Any]) -> ForgetRequest:
    """Inverse of :func:`request_doc` (the same request id)."""
    return ForgetRequest(kind=doc["kind"], users=[int(u) for u in doc.get("users", [])],
                         items=[int(i) for i in doc.get("items", [])],
                         pairs=[(int(u), int(i)) for u, i in doc.get("pairs", [])],
                         modality=doc.get("modality"), all_items=bool(doc.get("all_items")),
                         source=doc.get("source", ""))


def settle_file(inbox: str, src: str, name: str, dest: str, result: dict[str, Any]) -> None:
    """Move ``<inbox>/<src>/<name>`` to ``<inbox>/<dest>/`` with ``<name>.result.json``.

    Order: the result, the copy, then the source (and a result left beside it) removed; a
    crash in between leaves the file in both places, and a re-run finishes the move.
    """
    write_json_atomic(join(inbox, dest, name + RESULT_SUFFIX), to_jsonable(result))
    src_uri, dest_uri = join(inbox, src, name), join(inbox, dest, name)
    if src_uri == dest_uri:
        return
    if exists(src_uri):
        write_bytes_atomic(dest_uri, read_bytes(src_uri))
        delete(src_uri)
    delete(join(inbox, src, name + RESULT_SUFFIX))


# -- one forget set for the batch -------------------------------------------------------------
def union_request(reqs: list[ForgetRequest], source: str) -> ForgetRequest:
    """One request standing for several (what the audit context reads of a request: its
    kind, and the modality of a ``modality`` request). Mixed kinds read as
    ``interactions`` (the kind-specific attacks are then added per kind, see
    :func:`batch_context`)."""
    kinds = {r.kind for r in reqs}
    if len(kinds) != 1:
        return ForgetRequest(kind="interactions", source=source)
    kind = kinds.pop()
    if kind == "modality":
        modality = reqs[0].modality
        same = [r for r in reqs if r.modality == modality]
        return ForgetRequest(kind=kind, modality=modality, all_items=any(r.all_items for r in same),
                             items=sorted({i for r in same for i in r.items}), source=source)
    return ForgetRequest(kind=kind, users=sorted({u for r in reqs for u in r.users}),
                         items=sorted({i for r in reqs for i in r.items}),
                         pairs=sorted({tuple(p) for r in reqs for p in r.pairs}), source=source)


def _union_keys(parts: list[Interactions], n_items: int) -> np.ndarray:
    """Sorted unique pair keys of several interaction sets."""
    keys = [p.keys(n_items) for p in parts if len(p)]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def merge_forget_sets(fsets: list[ForgetSet], original: RecDataset,
                      request: ForgetRequest) -> ForgetSet:
    """The union of several requests resolved over the same ``original`` view: D_f is every
    training row any of them covers (each once), held-out rows likewise, banned items and
    dropped features are unions (a modality withdrawn by one is withdrawn), D_r is
    ``original`` less all of it.

    Args:
        fsets: :func:`~mmrecun_ray.unlearning.requests.resolve_request` of each request
            over ``original``.
        request: what the merged set's ``request`` is (:func:`union_request`).
    """
    n = original.n_items
    kept: dict[str, np.ndarray] = {}
    removed: dict[str, Interactions] = {}
    for split in ("train", "valid", "test"):
        inter = original.split(split)
        parts = [f.forget for f in fsets] if split == "train" else \
            [f.removed[split] for f in fsets if split in f.removed]
        hit = np.isin(inter.keys(n), _union_keys(parts, n))
        kept[split] = ~hit
        removed[split] = Interactions(inter.user[hit], inter.item[hit])
    gone = {m for f in fsets for m in f.dropped_features if m not in f.retain.features}
    dropped: dict[str, np.ndarray] = {}
    for f in fsets:
        for m, ids in f.dropped_features.items():
            dropped[m] = np.arange(n, dtype=np.int64) if m in gone else \
                np.union1d(dropped.get(m, np.zeros(0, np.int64)), np.asarray(ids, np.int64))
    features = {}
    for m, feat in original.features.items():
        if m in gone:
            continue
        if m in dropped:
            feat = feat.copy()
            feat[dropped[m]] = 0.0
        features[m] = feat
    banned = np.unique(np.concatenate([np.asarray(f.banned_items, np.int64) for f in fsets]))
    retain = replace(original, features=features,
                     **{s: Interactions(original.split(s).user[kept[s]], original.split(s).item[kept[s]])
                        for s in ("train", "valid", "test")})
    held = Interactions(np.concatenate([removed["valid"].user, removed["test"].user]),
                        np.concatenate([removed["valid"].item, removed["test"].item]))
    return ForgetSet(request=request, forget=removed["train"], retain=retain, banned_items=banned,
                     dropped_features=dropped, held_out_removed=held,
                     removed={"valid": removed["valid"], "test": removed["test"]})


def batch_context(merged: ForgetSet, fsets: list[ForgetSet], original: RecDataset,
                  seed: int = 0) -> AuditContext:
    """The audit context of a batch: the merged set's (retain and forget metrics, MIA,
    differencing), with, when the batch mixes kinds, each kind's own attack drawn on that
    kind's requests only (fold-in on the forgotten users, item fold-in on the withdrawn
    items, the probe on the first dropped modality) over the batch's retain set."""
    ctx = AuditContext.build(merged, original, seed=seed)
    kinds = {f.request.kind for f in fsets}
    if len(kinds) == 1:
        return ctx
    for kind, names in _KIND_FIELDS.items():
        group = [f for f in fsets if f.request.kind == kind]
        if not group:
            continue
        if kind == "modality":
            modality = group[0].request.modality
            group = [f for f in group if f.request.modality == modality]
        n = original.n_items
        train_keys = _union_keys([f.forget for f in group], n)
        hit = np.isin(merged.forget.keys(n), train_keys)
        sub = replace(merged, request=union_request([f.request for f in group], "kind group"),
                      forget=Interactions(merged.forget.user[hit], merged.forget.item[hit]),
                      dropped_features={m: v for f in group for m, v in f.dropped_features.items()})
        part = AuditContext.build(sub, original, seed=seed)
        ctx = replace(ctx, **{name: getattr(part, name) for name in names})
    return ctx


# -- model.json of a batch's models -----------------------------------------------------------
def batch_info(info: ModelInfo, base: ModelInfo, batch_id: str, fsets: list[ForgetSet],
               merged: ForgetSet) -> ModelInfo:
    """A batch model's ``model.json``: honours every member request (and everything the
    model it started from honours), its last lineage entry names the batch and lists its
    requests, dropped features are unions along the chain."""
    ids = sorted(f.request_id for f in fsets)
    stand_in = {merged.request_id} - set(ids)
    honoured = sorted((set(info.honoured) - stand_in) | set(base.honoured) | set(ids))
    lineage = list(info.lineage)
    if lineage:
        lineage[-1] = {**lineage[-1], "request_id": batch_id, "kind": "batch", "batch": batch_id,
                       "requests": ids, "kinds": {f.request_id: f.request.kind for f in fsets}}
    dropped = {m: sorted(set(base.dropped_features.get(m, [])) | set(info.dropped_features.get(m, [])))
               for m in set(base.dropped_features) | set(info.dropped_features)}
    return replace(info, honoured=honoured, lineage=lineage, dropped_features=dropped)


# -- the batch journal ------------------------------------------------------------------------
def batch_id(ids: list[str], base_model: str, mode: str) -> str:
    """16 hex digits: the member request ids (sorted), the model started from, the mode."""
    blob = "|".join([*sorted(ids), str(base_model), mode]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Batch:
    """A batch and its journal (``<out>/batches/<id>/job.json``)."""

    out_uri: str
    id: str
    journal: dict[str, Any]

    @property
    def dir(self) -> str:
        return join(self.out_uri, BATCHES, self.id)

    @property
    def state(self) -> str | None:
        return self.journal.get("state")

    def reached(self, state: str) -> bool:
        """Whether the journal records ``state`` (or a later one)."""
        s = self.state
        return s is not None and STATES.index(s) >= STATES.index(state)

    def record(self, state: str, **extra: Any) -> None:
        """Journal ``state`` (atomic rewrite), then the fault hook."""
        j = dict(self.journal)
        j["states"] = list(j.get("states", [])) + [{"state": state, "time": time.time()}]
        j["state"] = state
        j.update(extra)
        write_json_atomic(join(self.dir, JOB_FILE), to_jsonable(j))
        self.journal = j
        lifecycle.fault(state)

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return dict(self.journal.get("models") or {})


def load_batch(out_uri: str, bid: str) -> Batch:
    """The batch journaled at ``<out>/batches/<bid>``.

    Raises:
        DataError: no journal there (naming it).
    """
    uri = join(out_uri, BATCHES, bid, JOB_FILE)
    if not exists(uri):
        raise DataError(f"{uri}: {join(out_uri, INFLIGHT)} names batch {bid} but it has no journal")
    return Batch(out_uri, bid, read_json(uri))


def _band_plan(policy: Policy, out_uri: str, index: int) -> dict[str, Any]:
    """Where this batch's Gold band comes from: ``now`` / ``none`` / the stored band of
    ``<out>/GOLD`` (``scheduled``, when at most ``gold_max_age`` batches old; a stale band
    judges the retain metrics only, see :mod:`~mmrecun_ray.unlearning.policy`)."""
    if policy.gold != "scheduled":
        return {"source": policy.gold}
    g = read_doc(out_uri, GOLD)
    if g is not None and index - int(g["index"]) <= policy.gold_max_age:
        return {"source": f"scheduled:{g['batch']}", "age": index - int(g["index"]),
                "bands": g["bands"]}
    return {"source": "now"}


def _collect(o: ProcessOptions, members: dict[str, dict[str, Any]], honoured: set[str],
             base: str, pointer: dict[str, Any] | None) -> list[str]:
    """Add the pending request files to ``members`` (id -> member); settle an unreadable
    file (``failed/``) and one the shipped model honours (``done/``) at once. Returns the
    ids added."""
    fresh: list[str] = []
    for name in list_pending(o.inbox):
        uri = join(o.inbox, PENDING, name)
        try:
            req = read_request_file(uri)
        except StorageError:
            raise  # the store failed, not the request: it stays pending
        except Exception as e:  # noqa: BLE001 - any unreadable file is that file's failure
            logger.warning("%s: refused: %s", uri, _reason(e))
            settle_file(o.inbox, PENDING, name, FAILED, {"status": "failed", "reason": _reason(e)})
            continue
        rid = req.request_id()
        if rid in honoured:
            settle_file(o.inbox, PENDING, name, DONE, {
                "status": "already honoured", "id": rid, "model_uri": base,
                "batch": pointer.get("batch") if pointer else None,
                "reason": f"request {rid} is already honoured by the shipped model {base}"})
        elif rid in members:
            members[rid]["also"].append(name)  # the same request twice: honoured once
        else:
            members[rid] = {"id": rid, "name": name, "folder": PENDING, "also": [],
                            "kind": req.kind, "request": request_doc(req)}
            fresh.append(rid)
    return fresh


def _drop_unresolvable(o: ProcessOptions, members: dict[str, dict[str, Any]], fresh: list[str],
                       original: RecDataset) -> None:
    """Settle (``failed/``, with the reason) the new members that do not resolve over the
    batch's view: ids out of range, nothing to forget, an unknown modality."""
    for rid in fresh:
        try:
            resolve_request(request_from_doc(members[rid]["request"]), original)
        except (ConfigError, DataError) as e:
            m = members.pop(rid)
            for name in [m["name"], *m["also"]]:
                settle_file(o.inbox, PENDING, name, FAILED,
                            {"status": "failed", "id": rid, "reason": _reason(e)})


def _open_batch(o: ProcessOptions, members: dict[str, dict[str, Any]], base: str,
                pointer: dict[str, Any] | None, marker: dict[str, Any] | None) -> Batch:
    """Journal a new batch (or return the unfinished one of the same members), and name it
    in ``INFLIGHT``."""
    mode = "retrain" if marker else "method"
    ids = sorted(members)
    bid = batch_id(ids, base, mode)
    existing = join(o.out_uri, BATCHES, bid, JOB_FILE)
    if exists(existing):
        old = read_json(existing)
        if old.get("state") != "settled" and [m["id"] for m in old.get("members", [])] == ids:
            write_doc(o.out_uri, INFLIGHT, {"batch": bid})
            return Batch(o.out_uri, bid, old)
        k = 2  # the same members and start again, after a settled batch: a new attempt
        while exists(join(o.out_uri, BATCHES, f"{bid}-{k}", JOB_FILE)):
            k += 1
        bid = f"{bid}-{k}"
    index = len(pointer["batches"]) + 1 if pointer else 1
    kinds = {m["kind"] for m in members.values()}
    batch = Batch(o.out_uri, bid, {
        "batch": bid, "mode": mode, "index": index, "method": o.method if mode == "method" else "gold",
        "settings": dict(o.sets), "policy": o.policy.to_dict(), "base_model": base,
        "data": str(o.data_uri), "members": [members[r] for r in ids],
        "marker_batch": (marker or {}).get("batch"),
        "band_plan": _band_plan(o.policy, o.out_uri, index),
        "previous": {"batch": pointer.get("batch") if pointer else None,
                     "batches": list(pointer["batches"]) if pointer else [], "model_uri": base},
        "started": time.time(), "states": []})
    batch.record("planned")
    write_doc(o.out_uri, INFLIGHT, {"batch": bid})
    logger.info("batch %s: %d request(s) (%s), mode %s, from %s", bid, len(ids),
                ", ".join(sorted(kinds)), mode, base)
    return batch


def plan_batch(o: ProcessOptions) -> Batch | None:
    """Read the pending requests (and a retrain marker's), settle the bad and the already
    honoured ones, and journal the batch (state ``planned``; ``INFLIGHT`` names it).
    None when nothing is left to process.

    Raises:
        ConfigError: no pointer and no ``--model-uri``.
        DataError: the model does not belong to the data's lineage or does not honour what
            the ledger hides (before anything is journaled).
    """
    pointer = read_pointer(o.out_uri)
    base = pointer["model_uri"] if pointer else o.model_uri
    if not base:
        raise ConfigError(f"--model-uri: required for the first batch ({join(o.out_uri, POINTER)} "
                          "does not exist yet)")
    if pointer and o.model_uri and o.model_uri != base:
        logger.info("%s names %s: starting from it, not from --model-uri %s",
                    join(o.out_uri, POINTER), base, o.model_uri)
    base_info = read_model_info(base)
    marker = read_doc(o.out_uri, RETRAIN_MARKER)
    members = {m["id"]: {**m, "also": []} for m in (marker or {}).get("requests", [])}
    fresh = _collect(o, members, set(pointer["honoured"] if pointer else base_info.honoured),
                     base, pointer)
    if not members:
        return None
    original = load_dataset(o.data_uri, exclude_requests=set(members))
    lifecycle.check_lineage(base_info, original, base, "")
    _drop_unresolvable(o, members, fresh, original)
    if not members:
        return None
    return _open_batch(o, members, base, pointer, marker)


# -- running a batch --------------------------------------------------------------------------
@dataclass
class _Inputs:
    """What a batch's steps share (rebuilt identically on resume)."""

    fsets: list[ForgetSet]
    merged: ForgetSet
    original: RecDataset
    info: ModelInfo
    job: Job
    before: tuple[torch.Tensor, torch.Tensor]


def _inputs(batch: Batch, scaling: Scaling) -> _Inputs:
    j = batch.journal
    reqs = [request_from_doc(m["request"]) for m in j["members"]]
    ids = [r.request_id() for r in reqs]
    data_uri, base = j["data"], j["base_model"]
    original = load_dataset(data_uri, exclude_requests=set(ids))
    fsets = [resolve_request(r, original) for r in reqs]
    merged = merge_forget_sets(fsets, original, union_request(reqs, f"batch {batch.id}"))
    info = read_model_info(base)
    state = {k: v.numpy() for k, v in read_state(base).items()}
    lifecycle.check_lineage(info, original, base, "")
    before = embeddings(build_from_state(info, original, state, where=base))
    ref = reference_valid_recall(base, Prepared(fset=merged, retain_uri=data_uri, original=original))
    job = Job(model_uri=base, info=info, state=state, optimizer=read_optimizer(base), fset=merged,
              retain_uri=data_uri, retain_data=None, scaling=scaling, reference_valid_recall=ref,
              honoured=sorted(set(original.honoured) | set(ids)),
              retain_hash=original.manifest.content_hash(),
              twin_state=read_twin(base, info, as_numpy=True))
    return _Inputs(fsets=fsets, merged=merged, original=original, info=info, job=job, before=before)


def _retain_stream(inp: _Inputs, data_uri: str) -> Any:
    """D_r's training pairs as a materialised Ray Dataset: the data's ledger view with the
    batch accepted (entries someone else appended since are not applied), checked against
    the merged retain set."""
    wanted = set(inp.original.honoured) | {f.request_id for f in inp.fsets}
    others = {str(e.get("id")) for e in ledger.read_entries(ledger_uri_for(data_uri))} - wanted
    ds = interactions_dataset(data_uri, "train", exclude_requests=others).materialize()
    n = ds.count()
    if n != len(inp.merged.retain.train):
        raise DataError(f"{data_uri}: the ledger view holds {n} training rows, the batch's retain "
                        f"set {len(inp.merged.retain.train)}: was a request accepted meanwhile?")
    return ds


def _export(batch: Batch, inp: _Inputs, name: str, res: Any, role: str) -> dict[str, Any]:
    """Publish one model of the batch (``model.json`` of :func:`batch_info`); its journal row."""
    mdir = join(batch.dir, name, "model") if name != "candidate" else join(batch.dir, "model")
    info = batch_info(res.info, inp.info, batch.id, inp.fsets, inp.merged)
    export_model(mdir, info, res.state,
                 res.loop.optimizer if res.loop is not None and info.model != "sisa" else None,
                 twin=res.twin_state)
    return to_jsonable({"model_uri": mdir, "role": role, "method": res.method,
                        "wall_seconds": res.wall_seconds, "seed": res.extra.get("seed"),
                        "steps": res.loop.steps if res.loop else res.extra.get("steps"),
                        "epochs_run": res.loop.epochs_run if res.loop else res.extra.get("epochs_run"),
                        "concurrent": res.extra.get("concurrent")})


def _gold_names(n: int) -> list[str]:
    return ["gold" if k == 0 else f"gold-s{k}" for k in range(n)]


def _golds(batch: Batch, inp: _Inputs, n: int) -> None:
    """Retrain (and journal) the first ``n`` Golds of the batch not published yet."""
    base_seed = inp.job.recipe()[0].seed
    names = _gold_names(n)
    todo = [(base_seed + k, nm) for k, nm in enumerate(names) if nm not in batch.models]
    if not todo:
        return
    logger.info("batch %s: retraining %d Gold(s) on the cumulative retain set", batch.id, len(todo))
    dirs = {s: join(batch.dir, nm, "model") for s, nm in todo}
    results = run_band(inp.job, [s for s, _ in todo], lambda s: dirs[s])
    for (s, nm), res in zip(todo, results):
        batch.record("golds_published", models={**batch.models, nm: _export(batch, inp, nm, res, "gold")})


def _audit(inp: _Inputs, ctx: AuditContext, uri: str | None,
           gold_top: np.ndarray | None) -> AuditResult:
    """Audit a published model over the retain graph (``uri`` None: the model the batch
    started from, over the original graph)."""
    emb = inp.before if uri is None else embeddings(load_model(uri, inp.merged.retain)[0])
    return audit_model(*emb, ctx, before=inp.before, gold_top=gold_top)


def _decide(policy: Policy, mode: str, verdict: Verdict | None) -> str:
    """``retrain`` (a marker's batch), ``passed``, ``observed`` (failed, shipped anyway),
    ``fallback-retrain`` or ``rejected`` (fallback ``schedule``)."""
    if mode == "retrain":
        return "retrain"
    if verdict is not None and verdict.passed:
        return "passed"
    if policy.mode == "observe":
        return "observed"
    return "fallback-retrain" if policy.fallback == "retrain" else "rejected"


def run_batch(o: ProcessOptions, batch: Batch) -> dict[str, Any]:
    """Run (or resume) a planned batch to ``settled``; returns its summary."""
    j = batch.journal
    if batch.reached("settled"):
        remove_doc(o.out_uri, INFLIGHT)
        return j["summary"]
    t0 = time.perf_counter()
    policy = policy_from_dict(j["policy"], f"{join(batch.dir, JOB_FILE)} policy")
    mode, plan = j["mode"], j["band_plan"]
    if not batch.reached("published"):
        ensure_ray()
        inp = _inputs(batch, o.scaling)
        if not batch.reached("accepted"):
            seqs = {f.request_id: lifecycle.record_accepted(f, inp.original, j["data"]).get("seq")
                    for f in inp.fsets}
            batch.record("accepted", ledger=seqs)
        if not batch.reached("audited"):
            _run_models(batch, inp, policy, mode, plan)
            _audit_batch(batch, inp, policy, mode, plan)
        _publish(o, batch, inp)
    summary = _settle(o, batch)
    logger.info("batch %s: %s in %.1fs", batch.id, summary["decision"], time.perf_counter() - t0)
    return summary


def _run_models(batch: Batch, inp: _Inputs, policy: Policy, mode: str, plan: dict[str, Any]) -> None:
    """The method's model (``method`` batches) and the Golds the band plan asks for."""
    j = batch.journal
    inp.job.retain_data = _retain_stream(inp, j["data"])
    if mode == "method" and "candidate" not in batch.models:
        method = build_methods([j["method"]], j["settings"])[0]
        logger.info("batch %s: %s on %d forget pairs from %s", batch.id, method.name,
                    len(inp.merged.forget), j["base_model"])
        res = method.run(inp.job)
        row = {**_export(batch, inp, "candidate", res, method.role),
               "settings": to_jsonable(settings_dict(method.settings))}
        batch.record("model_published", models={**batch.models, "candidate": row})
    n = policy.gold_seeds if plan["source"] == "now" else (1 if mode == "retrain" else 0)
    _golds(batch, inp, n)


def _audit_batch(batch: Batch, inp: _Inputs, policy: Policy, mode: str, plan: dict[str, Any]) -> None:
    """Audit every model with one context, judge the candidate; journal ``audited``."""
    t = time.perf_counter()
    ctx = batch_context(inp.merged, inp.fsets, inp.original)
    models = batch.models
    golds = [_audit(inp, ctx, models[nm]["model_uri"], None)
             for nm in _gold_names(len(models)) if nm in models]
    gold_top = golds[0].top20 if golds else None
    shipped = _audit(inp, ctx, None, gold_top)
    cand = _audit(inp, ctx, models["candidate"]["model_uri"], gold_top) if "candidate" in models else None
    if plan["source"] == "now" and golds:
        bands, source = gold_bands(golds), "now"
    elif "bands" in plan:
        bands, source = {m: Band(**b) for m, b in plan["bands"].items()}, plan["source"]
    else:
        bands, source = None, "none"
    verdict = judge(policy, cand, bands, shipped, source) if cand is not None else None
    decision = _decide(policy, mode, verdict)
    audits = {"shipped": shipped.to_json(), **({"candidate": cand.to_json()} if cand else {}),
              **{nm: g.to_json() for nm, g in zip(_gold_names(len(golds)), golds)}}
    batch.record("audited", audits=to_jsonable(audits), verdict=verdict.to_dict() if verdict else None,
                 decision=decision, bands={m: b.to_dict() for m, b in (bands or {}).items()},
                 band_source=source, audit_seconds=time.perf_counter() - t,
                 forget_pairs=len(inp.merged.forget), kinds=sorted({f.request.kind for f in inp.fsets}))
    logger.info("batch %s: %s", batch.id, verdict.summary() if verdict else "retrain (not gated)")


def _shipped_model(batch: Batch, inp: _Inputs) -> str | None:
    """The model the decision ships (a fallback retrain trains its Gold now if the batch
    has none), or None (rejected, retrain scheduled)."""
    decision = batch.journal["decision"]
    if decision in ("passed", "observed"):
        return batch.models["candidate"]["model_uri"]
    if decision not in ("retrain", "fallback-retrain"):
        return None
    if "gold" not in batch.models:
        if inp.job.retain_data is None:
            inp.job.retain_data = _retain_stream(inp, batch.journal["data"])
        _golds(batch, inp, 1)
    return batch.models["gold"]["model_uri"]


def _pointer_doc(batch: Batch, inp: _Inputs, ship: str, at: float) -> dict[str, Any]:
    """``CURRENT`` naming ``ship``: the model, the data version (URI, content hashes, and the
    hash of the ledger view it serves), the requests it honours, the batch and its verdict."""
    j, prev = batch.journal, batch.journal["previous"]
    honoured = sorted(read_model_info(ship).honoured)
    hashes = version_hashes(inp.original.manifest)
    view = hashlib.sha256((hashes[-1] + "|" + ",".join(honoured)).encode()).hexdigest()
    return to_jsonable({
        "model_uri": ship, "batch": batch.id, "batches": [*prev["batches"], batch.id],
        "index": j["index"], "decision": j["decision"],
        "method": j["method"] if j["decision"] in ("passed", "observed") else "gold",
        "requests": [m["id"] for m in j["members"]], "honoured": honoured,
        "data": {"uri": j["data"], "version_hash": hashes[-1], "root_hash": hashes[0],
                 "view_hash": view},
        "verdict": j.get("verdict"), "time": at,
        "previous": {"batch": prev["batch"], "model_uri": prev["model_uri"]}})


def _publish(o: ProcessOptions, batch: Batch, inp: _Inputs) -> None:
    """Move the pointer (or schedule the retrain), record a fresh Gold band, write
    ``metrics.json``; journal ``published``. Every write is idempotent (a resume redoes them)."""
    j = batch.journal
    ship = _shipped_model(batch, inp)
    at = next(s["time"] for s in reversed(j["states"]) if s["state"] == "audited")
    if ship is not None:
        write_doc(o.out_uri, POINTER, _pointer_doc(batch, inp, ship, at))
        if j["mode"] == "retrain":
            remove_doc(o.out_uri, RETRAIN_MARKER)  # after the pointer: the backlog is honoured
    else:
        write_doc(o.out_uri, RETRAIN_MARKER, to_jsonable({
            "batch": batch.id, "time": at, "reasons": (j.get("verdict") or {}).get("reasons", []),
            "requests": [{**{k: v for k, v in m.items() if k != "also"}, "folder": FAILED}
                         for m in j["members"]]}))
    if j["band_source"] == "now" and j["bands"]:
        write_doc(o.out_uri, GOLD, {"batch": batch.id, "index": j["index"], "kinds": j["kinds"],
                                    "bands": j["bands"], "time": at,
                                    "models": [r["model_uri"] for r in batch.models.values()
                                               if r["role"] == "gold"]})
    write_json_atomic(join(batch.dir, "metrics.json"), to_jsonable({
        **{k: j.get(k) for k in ("batch", "index", "mode", "method", "settings", "policy",
                                 "base_model", "data", "audits", "verdict", "decision", "bands",
                                 "band_source", "forget_pairs", "kinds", "audit_seconds")},
        "requests": [{"id": m["id"], "kind": m["kind"], "name": m["name"]} for m in j["members"]],
        "models": batch.models, "shipped": ship,
        "wall_seconds": {k: r.get("wall_seconds") for k, r in batch.models.items()}}))
    batch.record("published", shipped=ship)


def _settle(o: ProcessOptions, batch: Batch) -> dict[str, Any]:
    """Move each member's files out of ``pending/`` (or ``failed/``), journal ``settled``,
    remove ``INFLIGHT``."""
    j = batch.journal
    decision, ship = j["decision"], j.get("shipped")
    seqs = j.get("ledger") or {}
    for m in j["members"]:
        result = {"status": "deferred" if ship is None else "honoured", "id": m["id"],
                  "batch": batch.id, "decision": decision, "model_uri": ship,
                  "ledger_seq": seqs.get(m["id"]),
                  "reason": ("; ".join((j.get("verdict") or {}).get("reasons", [])) + "; accepted, "
                             "retrain from scratch scheduled" if ship is None else
                             f"honoured by {ship} ({decision})")}
        dest = FAILED if ship is None else DONE
        for name, src in [(m["name"], m["folder"]), *[(n, PENDING) for n in m["also"]]]:
            settle_file(o.inbox, src, name, dest, result)
    started = j.get("started") or time.time()
    summary = {"batch": batch.id, "index": j["index"], "decision": decision, "model_uri": ship,
               "requests": [m["id"] for m in j["members"]], "kinds": j.get("kinds"),
               "verdict": j.get("verdict"), "seconds": time.time() - started}
    batch.record("settled", summary=to_jsonable(summary))
    remove_doc(o.out_uri, INFLIGHT)
    return summary


def process(o: ProcessOptions) -> list[dict[str, Any]]:
    """``process``: resume the batch ``INFLIGHT`` names (if any), then process every pending
    request as one batch (see the module docstring). Returns one summary per batch run.

    Raises:
        ConfigError: a bad method, settings or policy; no model to start from.
        DataError: the model does not belong to the data's lineage or does not honour what
            the ledger hides (nothing is accepted then, no file moves).
    """
    o.policy.validate()
    if method_class(o.method).role not in ("method", "gold"):
        raise ConfigError(f"--method {o.method}: a reference row, not an unlearning method")
    build_methods([o.method], o.sets)
    out = []
    inflight = read_doc(o.out_uri, INFLIGHT)
    if inflight is not None:
        logger.info("resuming batch %s", inflight.get("batch"))
        out.append(run_batch(o, load_batch(o.out_uri, str(inflight.get("batch")))))
    batch = plan_batch(o)
    if batch is not None:
        out.append(run_batch(o, batch))
    return out
