"""Configuration of the one training/unlearning loop and of its inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mmrecun_ray.errors import ConfigError

def dataclass_from_mapping(cls: type, d: dict[str, Any], what: str) -> Any:
    """``cls(**d)``, refusing unknown keys with a message that lists the known ones."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(names)}")
    return cls(**d)


@dataclass
class LoopConfig:
    """How the loop runs, whatever it optimises (that is the objective object's, see
    :mod:`mmrecun_ray.objectives`).

    Attributes:
        model / params: registered model name and its constructor parameters.
        epochs: cap on passes over the objective's epoch stream.
        batch_size: pairs of the epoch stream per step per worker.
        learning_rate: Adam's step size.
        seed: torch / numpy seed (model init, sampling, shuffling).
        eval_every: epochs between evaluations (validation + the objective's verdict).
        max_steps: optional budget in optimizer steps.
        shuffle_buffer: local shuffle buffer of the Ray Data streams.
        cache_rows: a worker keeps its shard of a stream in memory after the first full
            pass when the shard has at most this many rows (then every later pass is an
            in-memory permutation, no Ray Data execution); 0 streams every pass.
        eval_ks: cut-offs of the evaluation metrics.
        checkpoint_every / report_every: evaluations between checkpoints / reports to Ray
            Train (the last evaluation always checkpoints).
        log_every_s: seconds between progress log lines.
    """

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0
    eval_every: int = 1
    max_steps: int | None = None
    shuffle_buffer: int = 20_000
    cache_rows: int = 20_000_000
    eval_ks: tuple[int, ...] = (10, 20, 50)
    checkpoint_every: int = 10
    report_every: int = 5
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ConfigError("batch_size and epochs must be positive")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.eval_every <= 0:
            raise ConfigError("eval_every must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError("max_steps must be positive (or null)")
        if self.cache_rows < 0:
            raise ConfigError(f"cache_rows must be >= 0, got {self.cache_rows}")
        self.eval_ks = tuple(int(k) for k in self.eval_ks)

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
        forget_ref: ``(F,)`` int64 fixed reference item of each forget pair (the matched
            reverse term of :class:`~mmrecun_ray.objectives.RefitRows`), else None.
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
