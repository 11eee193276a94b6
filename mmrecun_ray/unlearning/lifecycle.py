"""The life of a forget request: one source of truth, crash-safe, idempotent.

A request is resolved against its dataset's lineage (:mod:`mmrecun_ray.data.lineage`):

1. **resolve** (no side effect): the spec is parsed; a sampled spec (``users:5%``) draws its
   ids from the lineage *root's* raw training data with a seed derived from the spec, the
   seed and the root's content hash, so every command on the same dataset draws the same
   ids whatever the ledger holds; ids are canonicalised and hashed into the request's
   stable id. The forget set D_f and the retain set D_r are resolved against the view that
   hides every forgotten thing but this request.
2. **check** (no side effect): the model must belong to this lineage and honour every
   request the view hides (a model that still holds accepted-forgotten data never seeds a
   new one); the ``--out`` folder must be empty, or hold this very job (then the run
   resumes), or be replaced with ``--overwrite``.
3. **accept**: the request is appended to the root's ledger (idempotent per id) — from then
   on every load and stream of every version of the lineage hides it; ``<out>/job.json``
   records the state ``accepted``.
4. **retain published**: ``<out>/retain_data``, a descendant version (manifest last).
5. **models published**: each method's ``<out>[/<method>]/model`` (``model.json`` last).
6. **done**: metrics and report written.

``job.json`` is rewritten (atomically) at every transition with the job's key (request,
methods, settings, model, dataset root): re-running the same command reads it and resumes
from the first state not reached — the same pairs, no second ledger entry — and a re-run of
a finished job does nothing. Fault injection for tests: ``MMRECUN_FAULT_AT=<state>`` kills
the process (SIGKILL) right after that state is journaled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.lineage import child_lineage, ledger_uri_for, version_hashes
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.data.writer import write_dataset
from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.storage import exists, join, list_files, read_json, write_json_atomic
from mmrecun_ray.storage import ledger
from mmrecun_ray.storage.uri import move_tree, remove_tree, to_jsonable
from mmrecun_ray.training.export import ModelInfo
from mmrecun_ray.unlearning.requests import ForgetRequest, ForgetSet, parse_request, resolve_request

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
STATES = ("accepted", "retain_published", "models_published", "done")
FAULT_ENV = "MMRECUN_FAULT_AT"


def fault(state: str) -> None:
    """Test hook: SIGKILL this process right after ``state`` (see the module docstring)."""
    if os.environ.get(FAULT_ENV) == state:
        logger.warning("fault injection: killing the process after %s", state)
        os.kill(os.getpid(), signal.SIGKILL)


def raw_view(uri: str) -> RecDataset:
    """The version's data with nothing hidden (what sampled requests draw from)."""
    led = ledger.read_entries(ledger_uri_for(uri))
    return load_dataset(uri, exclude_requests={str(e.get("id")) for e in led})


def derived_seed(spec: str, seed: int, base_hash: str) -> int:
    """A 63-bit seed from a sampled spec, its ``--seed`` and the base version's hash."""
    blob = f"{spec.strip()}|{seed}|{base_hash}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def concrete_request(spec: str, seed: int, data_uri: str) -> ForgetRequest:
    """Parse ``spec``; a sampled one is drawn from the lineage root's raw training data."""
    from mmrecun_ray.data.lineage import root_uri
    from mmrecun_ray.unlearning.requests import sample_request
    req = parse_request(spec, seed=seed)
    if req.fraction is None:
        return req
    root = root_uri(data_uri)
    raw = raw_view(root)
    return sample_request(replace(req, seed=derived_seed(spec, req.seed, raw.manifest.content_hash())), raw)


@dataclass
class Plan:
    """A request resolved and checked, before any side effect.

    Attributes:
        request: the concrete request (sampled ids drawn).
        fset: D_f and D_r over ``original``.
        original: the data with every forgotten thing hidden but this request (the graph
            the trained model is audited over).
        data_uri: the version the request is applied to.
        out_uri: where the job publishes.
        key: what identifies the job (a re-run with the same key resumes).
        journal: the existing ``job.json`` of this job (resume), or None.
        record: whether acceptance appends to the ledger (False: an experiment).
        overwrite: replace a different job found in ``out_uri``.
    """

    request: ForgetRequest
    fset: ForgetSet
    original: RecDataset
    data_uri: str
    out_uri: str
    key: dict[str, Any]
    journal: dict[str, Any] | None
    record: bool
    overwrite: bool
    entry: dict[str, Any] | None = None
    _replaced: str | None = field(default=None, repr=False)

    @property
    def request_id(self) -> str:
        return self.request.request_id()

    @property
    def retain_uri(self) -> str:
        return join(self.out_uri, "retain_data")

    def state(self) -> str | None:
        return None if self.journal is None else self.journal.get("state")

    def reached(self, state: str) -> bool:
        """Whether the journal already records ``state`` (or a later one)."""
        s = self.state()
        return s is not None and STATES.index(s) >= STATES.index(state)

    def method_done(self, name: str) -> dict[str, Any] | None:
        """The journaled row of a published method, or None."""
        return ((self.journal or {}).get("methods") or {}).get(name)


def check_lineage(info: ModelInfo, view: RecDataset, model_uri: str, request_id: str) -> None:
    """A model applies only to its own lineage, and only if it honours every request the
    view hides (but the one being processed).

    Raises:
        DataError: naming both content hashes (model's data version, dataset's lineage).
    """
    hashes = version_hashes(view.manifest)
    mine = info.manifest_hash
    same_root = info.root_hash == hashes[0] if info.root_hash else mine in hashes
    if not same_root:
        raise DataError(f"{model_uri}: model was trained on dataset version {mine[:12]} (root "
                        f"{(info.root_hash or '?')[:12]}); {view.uri} belongs to lineage root "
                        f"{hashes[0][:12]} (version {hashes[-1][:12]}): not this model's data")
    missing = sorted(set(view.honoured) - set(info.honoured) - {request_id})
    if missing:
        raise DataError(f"{model_uri}: model (data {mine[:12]}) does not honour forget request(s) "
                        f"{missing} that {view.uri} (version {hashes[-1][:12]}) hides: unlearn "
                        "them from it first, or use the model that honours them")


def _canonical(x: Any) -> str:
    return json.dumps(to_jsonable(x), sort_keys=True, default=str)


def job_key(command: str, request_id: str, methods: list[str], settings: dict[str, Any],
            model_uri: str, root_hash: str, gold_seeds: int) -> dict[str, Any]:
    """What identifies a job (the same key resumes; another one is a different job)."""
    return {"command": command, "request_id": request_id, "methods": list(methods),
            "settings": json.loads(_canonical(settings)), "model_uri": str(model_uri),
            "root_hash": root_hash, "gold_seeds": int(gold_seeds)}


def _out_state(out_uri: str, key: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The journal to resume from (same key), None for a fresh start; refuses an occupied
    ``out_uri`` without ``overwrite``."""
    job_uri = join(out_uri, JOB_FILE)
    if exists(job_uri):
        journal = read_json(job_uri)
        if isinstance(journal, dict) and journal.get("key") == key:
            return journal
        if not overwrite:
            other = journal.get("key", {}) if isinstance(journal, dict) else {}
            raise ConfigError(f"{out_uri}: holds another job ({other.get('command')} of request "
                              f"{other.get('request_id')}, methods {other.get('methods')}, state "
                              f"{journal.get('state') if isinstance(journal, dict) else '?'}); pass "
                              "--overwrite to replace it")
        return None
    if list_files(out_uri) and not overwrite:
        raise ConfigError(f"{out_uri}: not empty and holds no job.json; pass --overwrite to replace "
                          "its contents, or choose an empty --out")
    return None


def plan(data_uri: str, spec: str, seed: int, out_uri: str, *, info: ModelInfo, model_uri: str,
         command: str, methods: list[str], settings: dict[str, Any], gold_seeds: int = 1,
         record: bool = True, overwrite: bool = False) -> Plan:
    """Resolve and check a request (see the module docstring); no side effect.

    Raises:
        ConfigError / DataError: bad spec or ids, a request that covers nothing, a model of
            another lineage or one that does not honour the ledger, an occupied ``--out``.
    """
    req = concrete_request(spec, seed, data_uri)
    rid = req.request_id()
    original = load_dataset(data_uri, exclude_requests={rid})
    fset = resolve_request(req, original)
    check_lineage(info, original, model_uri, rid)
    key = job_key(command, rid, methods, settings, model_uri, version_hashes(original.manifest)[0],
                  gold_seeds)
    journal = _out_state(out_uri, key, overwrite)
    return Plan(request=req, fset=fset, original=original, data_uri=str(data_uri), out_uri=str(out_uri),
                key=key, journal=journal, record=record, overwrite=overwrite)


def _journal(p: Plan, state: str, **extra: Any) -> None:
    """Rewrite ``job.json`` with ``state`` (atomic), then the fault hook."""
    j = dict(p.journal or {"key": p.key, "request": _request_doc(p), "states": [], "methods": {}})
    j["states"] = list(j.get("states", [])) + [{"state": state, "time": time.time()}]
    j["state"] = state
    j.update(extra)
    write_json_atomic(join(p.out_uri, JOB_FILE), to_jsonable(j))
    p.journal = j
    fault(state)


def _request_doc(p: Plan) -> dict[str, Any]:
    f = p.fset
    return {"id": p.request_id, "kind": p.request.kind, "source": p.request.source,
            "forget_pairs": len(f.forget), "banned_items": int(f.banned_items.size),
            "retain_train": len(f.retain.train), "data": p.data_uri}


def begin(p: Plan) -> None:
    """Make room: with ``overwrite``, move a different job's outputs aside (kept until this
    job is done, then removed: a crash in between loses neither)."""
    if p.journal is not None or not p.overwrite or not list_files(p.out_uri):
        return
    aside = f"{str(p.out_uri).rstrip('/')}.replaced-{int(time.time())}"
    move_tree(p.out_uri, aside)
    p._replaced = aside
    logger.info("%s: previous contents moved to %s until this job is done", p.out_uri, aside)


def _ledger_pairs(f: ForgetSet) -> np.ndarray:
    """``(N, 3)`` int64 ``[user, item, split]`` of every row the request covers."""
    parts = [np.stack([f.forget.user, f.forget.item, np.zeros(len(f.forget), np.int64)], axis=1)]
    for code, inter in ((1, f.removed.get("valid")), (2, f.removed.get("test"))):
        if inter is not None and len(inter):
            parts.append(np.stack([inter.user, inter.item, np.full(len(inter), code, np.int64)], axis=1))
    return np.concatenate(parts).astype(np.int64)


def record_accepted(fset: ForgetSet, original: RecDataset, data_uri: str) -> dict[str, Any]:
    """Append ``fset``'s request (resolved over ``original``, the view of ``data_uri``) to the
    lineage root's ledger; idempotent per request id. Returns the committed entry."""
    f, req = fset, fset.request
    dropped = {m: ("all" if m not in f.retain.features else v.tolist())
               for m, v in f.dropped_features.items()}
    canonical = {k: v for k, v in req.canonical().items() if k != "pairs"}
    return ledger.record_request(
        ledger_uri_for(data_uri), request_id=req.request_id(), kind=req.kind, request=canonical,
        pairs=_ledger_pairs(f), users=req.users if req.kind == "users" else [],
        banned_items=f.banned_items.tolist(), dropped_features=dropped,
        n_users=f.retain.n_users, n_items=f.retain.n_items, data_uri=str(data_uri),
        data_hash=original.manifest.content_hash(), source=req.source)


def accept(p: Plan) -> None:
    """Append the request to the lineage root's ledger (idempotent) and journal it."""
    if p.reached("accepted"):
        return
    if p.record:
        p.entry = record_accepted(p.fset, p.original, p.data_uri)
    _journal(p, "accepted", ledger_seq=None if p.entry is None else p.entry.get("seq"),
             recorded=p.record)


def publish_retain(p: Plan) -> None:
    """Publish D_r at ``<out>/retain_data`` as a descendant version (skipped when it is
    already there for this request) and journal it."""
    if p.reached("retain_published"):
        return
    uri, f, orig = p.retain_uri, p.fset, p.original
    if exists(join(uri, "manifest.json")):
        from mmrecun_ray.data.dataset import read_manifest
        m = read_manifest(uri)
        if m.forget_request != p.request_id:
            raise ConfigError(f"{uri}: holds the retain data of request {m.forget_request}, not "
                              f"{p.request_id}; pass --overwrite")
    else:
        r = f.retain
        write_dataset(uri, name=f"{orig.manifest.name}-retain-{p.request_id}", n_users=r.n_users,
                      n_items=r.n_items, train=r.train, valid=r.valid, test=r.test,
                      features=r.features, source=f"forget:{p.data_uri}",
                      lineage=child_lineage(p.data_uri, orig.manifest, p.request_id),
                      extra={"banned_items": f.banned_items.tolist(),
                             "dropped_features": {m: v.tolist() for m, v in f.dropped_features.items()},
                             "forget_pairs": len(f.forget), "recorded": p.record})
    _journal(p, "retain_published")


def method_published(p: Plan, name: str, row: dict[str, Any]) -> None:
    """Journal a method's published model (its audit row, so a resume need not rerun it)."""
    methods = dict((p.journal or {}).get("methods") or {})
    methods[name] = row
    _journal(p, "models_published", methods=methods)


def done(p: Plan) -> None:
    """Journal the end; remove what ``--overwrite`` moved aside."""
    _journal(p, "done")
    if p._replaced:
        remove_tree(p._replaced)
        p._replaced = None

