"""Configuration of the one training/unlearning loop and of its inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mmrecun_ray.errors import ConfigError

OBJECTIVES = ("bpr", "mmrecun", "neggrad")


def dataclass_from_mapping(cls: type, d: dict[str, Any], what: str) -> Any:
    """``cls(**d)``, refusing unknown keys with a message that lists the known ones."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(names)}")
    return cls(**d)


@dataclass
class LoopConfig:
    """What the loop optimises and when it stops.

    ``objective``:
      - ``bpr``: ``BPR(D) + reg * L2 + aux`` over the training set (training, Gold,
        fine-tuning). One epoch = one pass over the (sharded) training pairs.
      - ``mmrecun``: ``alpha * RBPR(D_f) + beta * (BPR(D_r) + aux) + reg * L2``. One epoch =
        one pass over the (sharded) forget pairs; each forget batch is paired with a retain
        batch of ``batch_size / forget_ratio`` pairs streamed from the retain set.
      - ``neggrad``: as ``mmrecun`` with ``-BPR`` on the forget set (unbounded baseline).

    ``reverse_side`` routes the reverse term's gradient: ``both`` (the plain loss), ``user``
    (item embeddings held fixed in that term: forgotten users move, the catalogue they
    share with retain users does not) or ``item`` (users held fixed). The loss value is the
    same; only which side of D_f's pairs it moves differs.

    ``reverse_reference`` picks the ``j`` of the reverse term ``-ln sigmoid(s(u,j) - s(u,i))``:
    ``sampled`` (the paper: a fresh uniform negative every step) or ``matched`` (a fixed
    per-pair reference from the ``forget`` dataset's ``ref_item`` column, its score held
    fixed, the term applied only while ``s(u,i) > s(u,j)``; see
    :mod:`mmrecun_ray.unlearning.references`). With ``matched``, the run stops once at most
    ``matched_tolerance`` of D_f still scores above its reference.

    ``refit_only``: only the rows re-drawn from ``LoopInputs.reset_users`` /
    ``reset_items`` train (every other parameter frozen, a fresh Adam); the forgetting stop
    rule and the utility floor are off, and the run is the ``max_steps`` budget.
    """

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    objective: str = "bpr"
    epochs: int = 200
    batch_size: int = 2048
    learning_rate: float = 1e-3
    reg_weight: float = 1e-4
    patience: int = 20
    eval_every: int = 1
    alpha: float = 1.0
    beta: float = 1.0
    forget_ratio: float = 1.0
    max_steps: int | None = None
    forget_target_recall: float | None = None
    min_valid_ratio: float | None = None
    seed: int = 0
    shuffle_buffer: int = 20_000
    eval_ks: tuple[int, ...] = (10, 20, 50)
    reverse_side: str = "both"
    stop_on_auc: bool = False
    reverse_reference: str = "sampled"
    matched_tolerance: float = 0.5
    refit_only: bool = False
    checkpoint_every: int = 10
    report_every: int = 5
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r}: expected one of {OBJECTIVES}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ConfigError("batch_size and epochs must be positive")
        if self.reverse_side not in ("both", "user", "item"):
            raise ConfigError(f"reverse_side {self.reverse_side!r}: expected both, user or item")
        if self.reverse_reference not in ("sampled", "matched"):
            raise ConfigError(f"reverse_reference {self.reverse_reference!r}: expected sampled or matched")
        if not 0.0 <= self.matched_tolerance < 1.0:
            raise ConfigError("matched_tolerance must be in [0, 1)")
        if self.forget_ratio <= 0:
            raise ConfigError("forget_ratio must be positive")
        self.eval_ks = tuple(int(k) for k in self.eval_ks)

    @property
    def matched_reverse(self) -> bool:
        """Whether the reverse term uses fixed per-pair references (MMRecUN only)."""
        return self.objective == "mmrecun" and self.reverse_reference == "matched"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopConfig":
        return dataclass_from_mapping(cls, d, "loop settings")


@dataclass
class LoopInputs:
    """Read-only arrays every worker needs whole; put once in the object store and shared
    (zero-copy) by all workers on a node.

    Attributes:
        graph_edges: ``(2, E)`` int64 propagation graph (train, or retain when unlearning).
        known_keys: ``(E,)`` int64 pair keys ``u * n_items + i`` of the training pairs:
            never sampled as negatives, masked at evaluation.
        features: modality -> ``(n_items, d)`` float32.
        valid_user / valid_item: ``(V,)`` int64 validation pairs.
        forget_user / forget_item: ``(F,)`` int64 forget pairs (unlearning only).
        forget_ref: ``(F,)`` int64 reference item of each forget pair (``matched`` reverse
            term only).
        init_state: model state dict (numpy) to start from (unlearning, fine-tuning).
        reset_users / reset_items: ``(k,)`` int64 ids whose ID-embedding rows (and their
            optimizer state) are re-drawn from the initial distribution before the first
            step: parameters only D_f ever trained, unlearned exactly.
        init_optimizer: the trained model's Adam state: continuing with its moment
            estimates keeps steps on converged parameters at the training scale (a fresh
            Adam moves every touched parameter by ~lr per step and wrecks a converged model).
        active_items: ``(n_items,)`` bool; False = left the catalogue (never ranked).
        manifest_hash: content hash of the dataset version trained on.
    """

    n_users: int
    n_items: int
    graph_edges: np.ndarray
    known_keys: np.ndarray
    features: dict[str, np.ndarray]
    valid_user: np.ndarray
    valid_item: np.ndarray
    forget_user: np.ndarray | None = None
    forget_item: np.ndarray | None = None
    forget_ref: np.ndarray | None = None
    reset_users: np.ndarray | None = None
    reset_items: np.ndarray | None = None
    init_state: dict[str, np.ndarray] | None = None
    init_optimizer: dict[str, Any] | None = None
    active_items: np.ndarray | None = None
    manifest_hash: str = ""
