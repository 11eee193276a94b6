"""Objective objects: what one run of the loop optimises and when it stops.

The loop (:mod:`mmrecun_ray.training.loop`) is a plain torch loop. Everything that
differs between training, Gold, fine-tuning and the unlearning methods is an
:class:`Objective`:

- ``epoch_stream``: the dataset one epoch passes over (``"train"``: the training / retain
  pairs; ``"forget"``: the forget set D_f);
- :meth:`Objective.loss`: the loss of one step;
- :meth:`Objective.prepare` and ``continue_optimizer``: which parameters train, and whether
  Adam continues from the trained model's moment estimates;
- :meth:`Objective.start` and :meth:`Objective.judge`: what is measured before the first
  step and at each evaluation, which state the run keeps and when it stops.

Objectives are plain dataclasses: they travel to the Ray Train workers inside the loop's
configuration (pickled). What they accumulate during a run (best score, starting recall)
is in :meth:`Objective.state_dict` for checkpoints, so a resumed run judges as the
interrupted one would have.

An objective sees the loop through a :class:`LoopView`: the negative sampler, the
datasets as streams, and exact full-ranking metrics of any pairs (sharded over the
workers and all-reduced by the loop; the objective knows nothing of Ray or
``torch.distributed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator, Protocol

import numpy as np
import torch

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
from mmrecun_ray.objectives.bpr import bpr_loss, pair_scores
from mmrecun_ray.objectives.sampling import NegativeSampler


@dataclass
class ForgetPairs:
    """The forget set as the loop holds it: ``(F,)`` int64 users and items, and for the
    matched reverse term ``(F,)`` int64 reference items (else None)."""

    user: np.ndarray
    item: np.ndarray
    ref: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.user.size)


class LoopView(Protocol):
    """What an objective sees of the loop (built by the loop, one per run and worker)."""

    device: torch.device
    sampler: NegativeSampler
    forget: ForgetPairs | None
    eval_ks: tuple[int, ...]

    def stream(self, name: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """An endless stream of ``batch_size`` batches of the worker's shard of dataset
        ``name`` (columns ``user_id``, ``item_id`` and, for the forget set with matched
        references, ``ref_item``; int64 tensors on :attr:`device`). The same stream is
        returned for the same arguments."""
        ...

    def rank(self, out: ModelOutput, users: np.ndarray, items: np.ndarray,
             ks: tuple[int, ...], mask_banned: bool = True) -> dict[str, float]:
        """Exact full-ranking metrics (``recall@K``, ``ndcg@K``, ..., ``n_users``) of the
        ``(P,)`` target pairs, training pairs masked, items that left the catalogue masked
        when ``mask_banned`` (identical on every worker)."""
        ...


@dataclass
class Verdict:
    """An evaluation's outcome.

    Attributes:
        metrics: what the objective measured (merged into the run's history).
        keep: this state becomes the run's result (the best so far, or the latest).
        stop: end the run after this evaluation.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    keep: bool = False
    stop: bool = False


def retain_bpr(core: Recommender, out: ModelOutput, users: torch.Tensor, items: torch.Tensor,
               sampler: NegativeSampler, reg_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR of ``(B,)`` positive pairs against one sampled negative each, plus the model's
    auxiliary losses, and the L2 term. Returns ``(bpr + aux, l2)`` (scalars)."""
    neg = sampler.sample_torch(users)
    rows = BatchRows.gather(out, users, items, neg)  # gathered once for scores, aux and L2
    ps, ns = rows.scores()
    fit = bpr_loss(ps, ns) + core.auxiliary_loss(out, users, items, neg, rows=rows)
    reg = (core.regularization(out, users, items, neg, rows=rows) if reg_weight
           else out.user.new_zeros(()))
    return fit, reg


@dataclass
class Objective:
    """Base class; see the module docstring. Subclasses register under ``name``."""

    name: ClassVar[str] = ""
    epoch_stream: ClassVar[str] = "train"
    continue_optimizer: ClassVar[bool] = True
    #: dataset names the loop must be given (``epoch_stream`` first)
    streams: ClassVar[tuple[str, ...]] = ("train",)

    reg_weight: float = 0.0

    def prepare(self, model: Recommender,
                reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        """Before DDP wraps the model: freeze what must not train (default: nothing).
        ``reset`` holds the ``(parameter, rows)`` re-drawn before the first step."""

    def start(self, view: LoopView, out: ModelOutput, valid: dict[str, float]) -> Verdict:
        """The starting model's verdict (``valid``: its validation metrics). ``stop`` means
        no step is needed; ``keep`` makes the starting state the fallback result."""
        return Verdict()

    def loss(self, core: Recommender, out: ModelOutput, batch: dict[str, torch.Tensor],
             view: LoopView) -> torch.Tensor:
        """Scalar loss of one step; ``batch`` is a batch of :attr:`epoch_stream`."""
        raise NotImplementedError

    def judge(self, view: LoopView, out: ModelOutput, valid: dict[str, float],
              epoch: int) -> Verdict:
        """Verdict of an evaluation after ``epoch`` (0-based)."""
        raise NotImplementedError

    # -- checkpoints and transport ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the objective accumulated during the run (JSON-able)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (resume)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., <settings>}`` (``model.json`` records the training objective);
        run state (fields named ``_*``) is left out."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)
                                      if not f.name.startswith("_")}}


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` buildable by name (:func:`objective_from_dict`)."""
    if not cls.name or cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.__name__}: missing or duplicate name {cls.name!r}")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_from_dict(d: dict[str, Any]) -> Objective:
    """Inverse of :meth:`Objective.to_dict`; unknown names or settings are a ConfigError."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    known = {f.name for f in fields(cls) if not f.name.startswith("_")}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"objective {name!r}: unknown settings {unknown}; known: {sorted(known)}")
    return cls(**d)
