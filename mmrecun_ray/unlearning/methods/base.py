"""What every unlearning method shares: the job it is given, the result it returns, the
registry it is found through, and the pieces several methods assemble runs from.

A method is a small class: ``name``, a ``Settings`` dataclass (its ``--set`` knobs, typed),
a ``role`` (``method``; ``gold`` for the retrained reference; ``reference`` for rows that
show a starting point, not a candidate) and :meth:`Method.run`. Methods that train build
an objective object (:mod:`mmrecun_ray.objectives`) and hand it to the one loop
(:func:`~mmrecun_ray.training.runner.run_loop`); none of them has a loop of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import ray.data

from mmrecun_ray.config import build, field_types
from mmrecun_ray.data.dataset import interactions_dataset
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.objectives import Fit
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.export import ModelInfo
from mmrecun_ray.training.runner import LoopResult, Scaling, ensure_ray
from mmrecun_ray.training.train import loop_inputs, recipe_of
from mmrecun_ray.unlearning.requests import ForgetSet

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One request applied, as every method of a run sees it.

    Attributes:
        model_uri: the trained model folder.
        info: its ``model.json``.
        state: its weights (numpy).
        optimizer: its Adam state (numpy), or None (older exports, SISA).
        fset: the resolved request (D_f, D_r, banned items, dropped features).
        retain_uri: the published retain version.
        retain_data: D_r's training pairs as a (materialised) Ray Dataset, or None until a
            method asks for it (:meth:`retain_dataset`): a run whose methods never train
            (``hir``, the reference rows) starts no Ray at all.
        scaling: how to run the loop (workers, GPUs, storage).
        reference_valid_recall: the trained model's validation Recall@20 on the retain
            graph (the level a never-seen positive of a known user reaches).
        callbacks: Ray Train callbacks for the runs (a Tune trial's reporter).
        honoured: the forget requests the methods' models honour (the trained model's, the
            retain view's and this request).
        retain_hash: content hash of the published retain version.
        twin_state: the standby twin's weights (numpy; ``train --twin``), or None.
    """

    model_uri: str
    info: ModelInfo
    state: dict[str, np.ndarray]
    optimizer: dict[str, Any] | None
    fset: ForgetSet
    retain_uri: str
    retain_data: ray.data.Dataset | None
    scaling: Scaling
    reference_valid_recall: float
    callbacks: list[Any] | None = None
    honoured: list[str] = field(default_factory=list)
    retain_hash: str = ""
    twin_state: dict[str, np.ndarray] | None = None

    def recipe(self) -> tuple[LoopConfig, Fit]:
        """The recipe the model was trained with."""
        return recipe_of(self.info)

    def retain_dataset(self) -> ray.data.Dataset:
        """D_r's training pairs (``user_id``, ``item_id``) as a materialised Ray Dataset,
        read from ``retain_uri`` on first use (local Ray started then) and kept."""
        if self.retain_data is None:
            ensure_ray()
            self.retain_data = interactions_dataset(self.retain_uri, "train").materialize()
        return self.retain_data


@dataclass
class MethodResult:
    """A method's output model (state + metadata) and its cost.

    ``graph`` names the graph the model is served (and audited) over: ``retain`` (every
    candidate) or ``original`` (the untouched trained model, a reference row).
    ``twin_state``: the standby twin published with the model (``info.twin`` describes it),
    or None."""

    method: str
    state: dict[str, Any]
    info: ModelInfo
    wall_seconds: float
    loop: LoopResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    graph: str = "retain"
    twin_state: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        return self.loop.steps if self.loop is not None else 0


@dataclass
class NoSettings:
    """A method without knobs."""


class Method:
    """Base class; subclasses set ``name``, ``Settings`` and :meth:`run` and register with
    :func:`register`."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = "method"
    Settings: ClassVar[type] = NoSettings
    summary: ClassVar[str] = ""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def check(self, info: ModelInfo) -> None:
        """Raise a ConfigError when this method cannot unlearn from the model ``info``
        describes (called before a run has any side effect). Default: every model."""

    def run(self, job: Job) -> MethodResult:  # pragma: no cover - abstract
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` findable by its name."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method {cls.__name__}: missing or duplicate name {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def setting_names(names: list[str]) -> set[str]:
    """Every ``--set`` key one of the methods ``names`` takes."""
    return {k for n in names for k in field_types(method_class(n).Settings)}


def build_methods(names: list[str], sets: dict[str, Any]) -> list[Method]:
    """The methods ``names`` with their settings from ``sets`` (``--set`` strings or JSON
    values, coerced to each field's type); a key is applied to every listed method that
    has it, and a key none of them has is a ConfigError naming it."""
    known = setting_names(names)
    unknown = sorted(set(sets) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} for method(s) {', '.join(names)}; "
                          f"known: {sorted(known)}")
    out = []
    for n in names:
        cls = method_class(n)
        mine = set(field_types(cls.Settings))
        out.append(cls(build(cls.Settings, {k: v for k, v in sets.items() if k in mine},
                             f"settings of {n}")))
    return out


# -- shared pieces --------------------------------------------------------------------------
def pairs_dataset(user: np.ndarray, item: np.ndarray,
                  ref: np.ndarray | None = None) -> ray.data.Dataset:
    """``(F,)`` pairs as a Ray Dataset (``user_id``, ``item_id`` and, when given, each pair's
    reference item ``ref_item``) in the object store."""
    ensure_ray()  # never Ray Data's implicit ray.init (it could join a stranger's cluster)
    cols = {"user_id": np.asarray(user, dtype=np.int64), "item_id": np.asarray(item, dtype=np.int64)}
    if ref is not None:
        cols["ref_item"] = np.asarray(ref, dtype=np.int64)
    return ray.data.from_arrow(pa.table(cols))


def active_mask(fset: ForgetSet, n_items: int) -> np.ndarray | None:
    """``(n_items,)`` bool, False for the items that left the catalogue; None if none did
    and no feature was dropped."""
    if fset.banned_items.size == 0 and not fset.dropped_features:
        return None
    mask = np.ones(n_items, dtype=bool)
    mask[fset.banned_items] = False
    return mask


def retain_inputs(job: Job, init_state: dict[str, Any] | None,
                  init_optimizer: dict[str, Any] | None = None) -> LoopInputs:
    """The loop's inputs over the retain graph, with the forget pairs (for the verdicts)."""
    fset = job.fset
    inputs = loop_inputs(fset.retain, active_mask(fset, fset.retain.n_items))
    inputs.forget_user = fset.forget.user.astype(np.int64)
    inputs.forget_item = fset.forget.item.astype(np.int64)
    inputs.init_state = init_state
    inputs.init_optimizer = init_optimizer
    return inputs


def method_info(job: Job, method: str, run: dict[str, Any] | None = None) -> ModelInfo:
    """``model.json`` of a method's model: the base model's (its training recipe stays, so
    a later Gold retrains as the model was trained), moved to the retain version, with the
    request and the method's run (``run``: loop config, objective, settings) appended to
    its lineage and the banned items / dropped features added."""
    base, fset = job.info, job.fset
    lineage = list(base.lineage) + [{"method": method, "request_id": fset.request_id,
                                     "kind": fset.request.kind, "forget_pairs": len(fset.forget),
                                     **({"run": run} if run else {})}]
    honoured = sorted(set(base.honoured) | set(job.honoured) | {fset.request_id})
    return replace(base, data_uri=job.retain_uri,
                   manifest_hash=job.retain_hash or fset.retain.manifest.content_hash(),
                   honoured=honoured, banned_items=sorted(set(base.banned_items) | set(fset.banned_items.tolist())),
                   dropped_features={**base.dropped_features,
                                     **{m: v.tolist() for m, v in fset.dropped_features.items()}},
                   modalities={m: d for m, d in base.modalities.items() if m in fset.retain.features},
                   metrics={}, lineage=lineage, twin={})


def steps_per_epoch(n_pairs: int, batch_size: int, workers: int) -> int:
    """Optimizer steps of one pass over ``n_pairs`` sharded over ``workers``."""
    return max(1, -(-int(n_pairs) // (max(1, workers) * int(batch_size))))


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a JSON-able dict."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)}
