"""The contract every recommender implements.

Models are plain ``torch.nn.Module`` objects that know nothing of Ray. The score of a
(user, item) pair is always the dot product of the final user and item embeddings, so
training objectives, evaluation and unlearning work on :class:`ModelOutput` alone.

Hyper-parameters are typed keyword arguments of each model's constructor, in PyG's style
(``LightGCN(n_users, n_items, embedding_dim=64, n_layers=2)``); feature models take the
item features as a third argument. :meth:`Recommender.from_params` builds a model from a
JSON-able mapping (``model.json``, ``--set``) and refuses unknown keys;
:attr:`Recommender.params` gives that mapping back, so a model rebuilds from it.
Training settings (learning rate, L2 weight, epoch cap, patience) are not model
parameters: they live in :mod:`mmrecun_ray.training.defaults`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Self

import torch
from torch import nn

from mmrecun_ray.errors import ConfigError

log = logging.getLogger(__name__)

#: keys that model.json files written before the typed constructors carried in ``params``
#: (training settings, now in ``training/defaults.py``): accepted and dropped
LEGACY_PARAM_KEYS = ("learning_rate", "reg_weight")
#: constructor arguments that are data, not hyper-parameters
DATA_ARGS = ("self", "n_users", "n_items", "features")


@dataclass
class ModelOutput:
    """Final embeddings for the current training graph.

    Attributes:
        user: ``(n_users, d)`` float tensor.
        item: ``(n_items, d)`` float tensor.
        extras: model-specific intermediate tensors needed by :meth:`Recommender.auxiliary_loss`
            (e.g. per-modality embeddings); empty for models without auxiliary losses.
    """

    user: torch.Tensor
    item: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class BatchRows:
    """The final-embedding rows of one batch of ``(user, pos, neg)`` triples, gathered once
    and shared by the scores, the L2 penalty and the auxiliary losses.

    Attributes:
        user: ``(B, d)`` rows ``out.user[users]``.
        pos: ``(B, d)`` rows ``out.item[pos]``.
        neg: ``(B, d)`` rows ``out.item[neg]``.
    """

    user: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    @classmethod
    def gather(cls, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
               neg: torch.Tensor) -> "BatchRows":
        """Index ``out`` once with ``(B,)`` int64 ``users`` / ``pos`` / ``neg``."""
        return cls(out.user[users], out.item[pos], out.item[neg])

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s(u, pos), s(u, neg))``, each ``(B,)``."""
        return (self.user * self.pos).sum(-1), (self.user * self.neg).sum(-1)

    def squared_norm(self) -> torch.Tensor:
        """``(||u||^2 + ||pos||^2 + ||neg||^2) / (2B)`` summed over the batch (scalar)."""
        b = max(int(self.user.shape[0]), 1)
        return (self.user.pow(2).sum() + self.pos.pow(2).sum() + self.neg.pow(2).sum()) / (2 * b)


def _optional_inner(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def check_param_value(model: str, name: str, value: Any, annotation: Any) -> None:
    """Raise a one-line :class:`ConfigError` when ``value`` does not fit ``annotation``
    (``int``, ``float``, ``bool``, ``str``, ``dict[...]``, each optionally ``| None``)."""
    inner, optional = _optional_inner(annotation)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{model} parameter {name!r} must not be null")
    base = typing.get_origin(inner) or inner
    ok = True
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is str:
        ok = isinstance(value, str)
    elif base in (dict, Mapping):
        ok = isinstance(value, Mapping)
    if not ok:
        want = getattr(inner, "__name__", str(inner))
        raise ConfigError(f"{model} parameter {name!r} must be {want}"
                          f"{' or null' if optional else ''}, got {value!r}")


class Recommender(nn.Module):
    """Base class.

    Args:
        n_users: number of users (ids ``0..n_users-1``).
        n_items: number of items (ids ``0..n_items-1``).

    Subclasses add their hyper-parameters as typed keyword arguments with defaults and
    store each under an attribute of the same name (that is what :attr:`params` reads);
    feature models take ``features`` (modality -> ``(n_items, d_m)`` float tensor) as
    their third argument.

    Life cycle: ``model = build_model(name, ...)`` (or ``Cls.from_params``);
    ``model.set_graph(train_edges)`` before the first forward (graph models build their
    normalised user-item propagation graph from it; other models ignore it); in training,
    ``model.on_epoch_start(epoch, seed)`` at the start of every epoch; then ``out = model()``
    gives :class:`ModelOutput`.
    """

    #: whether the model propagates over the user-item graph (needs ``set_graph``)
    uses_graph: bool = False
    #: whether the model reads item features
    uses_features: bool = False

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        if int(n_users) <= 0 or int(n_items) <= 0:
            raise ConfigError(f"{type(self).__name__.lower()} needs n_users > 0 and n_items > 0, "
                              f"got {n_users} and {n_items}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)

    # -- hyper-parameters ---------------------------------------------------------------
    @classmethod
    def param_signature(cls) -> dict[str, inspect.Parameter]:
        """Hyper-parameter name -> constructor parameter (data arguments left out)."""
        sig = inspect.signature(cls.__init__)
        return {n: p for n, p in sig.parameters.items()
                if n not in DATA_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @classmethod
    def param_types(cls) -> dict[str, Any]:
        """Hyper-parameter name -> its resolved type annotation (e.g. ``int``,
        ``float | None``, ``dict[str, float] | None``)."""
        hints = typing.get_type_hints(cls.__init__)
        return {n: hints.get(n, Any) for n in cls.param_signature()}

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Hyper-parameter name -> default value (a deep copy)."""
        return {n: copy.deepcopy(p.default) for n, p in cls.param_signature().items()}

    @classmethod
    def model_name(cls) -> str:
        """Lower-case class name used in messages (``lightgcn``)."""
        return cls.__name__.lower()

    @classmethod
    def check_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validated copy of ``params``: legacy training keys (:data:`LEGACY_PARAM_KEYS`)
        dropped with a debug log, values type-checked.

        Raises:
            ConfigError: an unknown key (the message lists the known ones) or a value of
                the wrong type.
        """
        known = cls.param_types()
        out: dict[str, Any] = {}
        for key, value in dict(params or {}).items():
            if key in LEGACY_PARAM_KEYS:
                log.debug("%s: dropping legacy parameter %s=%r (a training setting now)",
                          cls.model_name(), key, value)
                continue
            if key not in known:
                raise ConfigError(f"unknown {cls.model_name()} parameter {key!r}; known: "
                                  f"{', '.join(known) or 'none'}")
            check_param_value(cls.model_name(), key, value, known[key])
            out[key] = value
        return out

    @classmethod
    def from_params(cls, n_users: int, n_items: int,
                    features: Mapping[str, torch.Tensor] | None = None,
                    params: Mapping[str, Any] | None = None) -> Self:
        """Build from a JSON-able mapping of hyper-parameters (missing keys take the
        constructor defaults). ``features`` is ignored by models that take none."""
        kwargs = cls.check_params(params)
        if "features" in inspect.signature(cls.__init__).parameters:
            return cls(n_users, n_items, dict(features or {}), **kwargs)
        return cls(n_users, n_items, **kwargs)

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able hyper-parameters this model was built with (``from_params`` of the
        same class rebuilds it)."""
        return {n: copy.deepcopy(getattr(self, n)) for n in self.param_signature()}

    # -- id embeddings ------------------------------------------------------------------
    def init_id_embeddings(self, user_dim: int, item_dim: int | None = None) -> None:
        """Create ``user_embedding`` ``(n_users, user_dim)`` and ``item_embedding``
        ``(n_items, item_dim or user_dim)``, Xavier-uniform initialised (MMRec's init)."""
        self.user_embedding = nn.Embedding(self.n_users, int(user_dim))
        self.item_embedding = nn.Embedding(self.n_items, int(item_dim or user_dim))
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    @torch.no_grad()
    def reinit_id_rows(self, users: torch.Tensor | None = None, items: torch.Tensor | None = None,
                       seed: int = 0) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Re-draw the ID-embedding rows of ``users`` / ``items`` (``(k,)`` int64) from the
        initial distribution (Xavier-uniform bound of the whole table), as a model trained
        without them would hold them: rows no training pair ever reaches keep their init.

        Returns ``(parameter, rows)`` pairs so that a caller can clear the optimizer's
        per-row state too. Same ``seed`` -> same draw on every worker.
        """
        gen = torch.Generator().manual_seed(int(seed))
        touched = []
        for table, rows in ((getattr(self, "user_embedding", None), users),
                            (getattr(self, "item_embedding", None), items)):
            if table is None or rows is None or rows.numel() == 0:
                continue
            w = table.weight
            bound = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
            fresh = (torch.rand((rows.numel(), w.shape[1]), generator=gen) * 2 - 1) * bound
            w[rows.to(w.device)] = fresh.to(w.device, w.dtype)
            touched.append((w, rows))
        return touched

    # -- graph, features, epochs ---------------------------------------------------------
    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Install the user-item training graph.

        Args:
            train_edges: ``(2, E)`` int64 tensor, row 0 user ids, row 1 item ids (each
                interaction once; the model adds the reverse direction itself).
        Unlearning calls this again with the retain edges, so forgotten edges leave the
        propagation graph. Must be cheap enough to call once per run; stored as buffers
        (not parameters), on the model's device.
        """

    def set_item_features(self, features: dict[str, torch.Tensor],
                          active_items: torch.Tensor | None = None) -> None:
        """Replace item features (modality unlearning, item removal) and rebuild any
        feature-derived structure such as modality kNN item-item graphs.

        Args:
            features: modality -> ``(n_items, d_m)``; rows of forgotten features are zero.
                A modality absent from the dict is dropped entirely.
            active_items: optional ``(n_items,)`` bool mask; inactive items (left the
                catalogue) get no kNN neighbours and are no one's neighbour.
        """

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        """Per-epoch hook, called by the training loop before the first step of every
        epoch (on every DDP rank with the same arguments). Default: nothing.

        Models that re-sample structure once per epoch do it here, deterministically from
        ``(seed, epoch)`` so that all ranks hold the same structure (FREEDOM draws its
        degree-pruned user-item graph). A model must still work when the hook is never
        called (tests, evaluation).
        """

    # -- forward and losses -------------------------------------------------------------
    def forward(self) -> ModelOutput:  # pragma: no cover - abstract
        """Compute final user and item embeddings over the installed graph."""
        raise NotImplementedError

    def auxiliary_loss(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """Model-specific extra loss on a batch of retain triples (scalar).

        ``users``, ``pos``, ``neg``: ``(B,)`` int64; ``rows``: the batch's rows of ``out``
        when the caller already gathered them (:meth:`BatchRows.gather`). Default: zero.
        """
        return out.user.new_zeros(())

    def regularization(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """L2 penalty of the batch's embeddings, ``/ (2B)`` (scalar).

        The training loss adds ``reg_weight * regularization(...)``. Default: squared norm of
        the final embeddings used by the batch (``rows`` when given, so the rows the scores
        used are not gathered again).
        """
        return (rows or BatchRows.gather(out, users, pos, neg)).squared_norm()

    def ego_regularization(self, users: torch.Tensor, pos: torch.Tensor,
                           neg: torch.Tensor) -> torch.Tensor:
        """Squared L2 of the batch's layer-0 (ID) embeddings, ``/ (2B)`` (scalar): the
        penalty of LightGCN and FREEDOM."""
        b = max(int(users.numel()), 1)
        return (self.user_embedding(users).pow(2).sum() + self.item_embedding(pos).pow(2).sum()
                + self.item_embedding(neg).pow(2).sum()) / (2 * b)
