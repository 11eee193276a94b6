"""Synthetic multi-modal recommendation data with planted, recoverable structure.

Generative story (all deterministic given the seed):

1. ``n_clusters`` latent taste centres in ``R^latent_dim``; each user and item belongs to
   one cluster and gets the centre plus Gaussian noise (``cluster_spread``).
2. Items get a long-tail popularity prior ``-popularity_exponent * log(1 + rank)`` over a
   random ranking.
3. Each user draws ``min_per_user + extra`` distinct items (``extra`` log-normal, shared so
   the total is exactly ``n_interactions``) without replacement from
   ``softmax(affinity_scale * <u, v> / latent_dim + popularity)``, via Gumbel top-k.
4. Every modality is a noisy random projection of the item factors, so item features carry
   real (but imperfect) signal about who will like the item.
5. Per user, a random 8:1:1 split with at least one valid and one test interaction.

A factor model can therefore beat popularity by a wide margin, and a content model can
beat random, which is what the training and unlearning tests rely on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrecun_ray.data.schema import Interactions, Manifest
from mmrecun_ray.errors import ConfigError

log = logging.getLogger(__name__)

#: elements of the (users x items) score block sampled at once (float32: 32 MB)
_BLOCK_ELEMS = 8 * 1024 * 1024
_AMAZON_MODALITIES = {"image": 4096, "text": 384}


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator (see module docstring).

    Attributes:
        name: dataset name written to the manifest.
        n_users, n_items, n_interactions: exact sizes of the result.
        modalities: modality -> feature dimension.
        feature_noise: modality -> noise std relative to the signal std (missing: 1.0).
        n_clusters, latent_dim, cluster_spread: latent taste structure.
        affinity_scale: inverse temperature on ``<u, v> / latent_dim``.
        popularity_exponent: Zipf-like exponent of the popularity prior (0 = none).
        user_activity_sigma: log-normal sigma of per-user activity beyond the minimum.
        min_per_user: interactions every user has (MMRec's 5-core filter).
        valid_frac, test_frac: per-user split fractions (rest is train).
    """

    name: str
    n_users: int
    n_items: int
    n_interactions: int
    modalities: dict[str, int] = field(default_factory=lambda: dict(_AMAZON_MODALITIES))
    feature_noise: dict[str, float] = field(default_factory=lambda: {"image": 1.5, "text": 1.0})
    n_clusters: int = 10
    latent_dim: int = 16
    cluster_spread: float = 0.6
    affinity_scale: float = 6.0
    popularity_exponent: float = 0.7
    user_activity_sigma: float = 1.0
    min_per_user: int = 5
    valid_frac: float = 0.1
    test_frac: float = 0.1

    def validate(self) -> None:
        """Raise :class:`ConfigError` on impossible sizes."""
        if self.n_users <= 0 or self.n_items <= 0:
            raise ConfigError(f"synthetic '{self.name}': n_users and n_items must be positive")
        if self.min_per_user < 3:
            raise ConfigError(f"synthetic '{self.name}': min_per_user must be >= 3 (train/valid/test)")
        if self.n_interactions < self.min_per_user * self.n_users:
            raise ConfigError(f"synthetic '{self.name}': n_interactions={self.n_interactions} < "
                              f"min_per_user * n_users = {self.min_per_user * self.n_users}")
        if self.n_interactions > _user_cap(self) * self.n_users:
            raise ConfigError(f"synthetic '{self.name}': n_interactions={self.n_interactions} too "
                              f"large for {self.n_users} users x {self.n_items} items")
        if any(d <= 0 for d in self.modalities.values()):
            raise ConfigError(f"synthetic '{self.name}': modality dimensions must be positive")


PRESETS: dict[str, SyntheticSpec] = {
    "tiny": SyntheticSpec("tiny", n_users=300, n_items=200, n_interactions=6000,
                          modalities={"image": 64, "text": 32}, n_clusters=6),
    # sizes of MMRec's Amazon benchmark sets (5-core), image 4096-d VGG + text 384-d SBERT
    "baby": SyntheticSpec("baby", n_users=19_445, n_items=7_050, n_interactions=160_792),
    "sports": SyntheticSpec("sports", n_users=35_598, n_items=18_357, n_interactions=296_337),
    "clothing": SyntheticSpec("clothing", n_users=39_387, n_items=23_033, n_interactions=278_677),
}


def get_spec(preset: str | SyntheticSpec) -> SyntheticSpec:
    """Look up a preset by name (or pass a spec through), validated."""
    if isinstance(preset, SyntheticSpec):
        spec = preset
    else:
        try:
            spec = PRESETS[preset]
        except KeyError:
            raise ConfigError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}") from None
    spec.validate()
    return spec


def _user_cap(spec: SyntheticSpec) -> int:
    """Most interactions one user may have (keeps the sampling far from exhaustive)."""
    return max(spec.min_per_user, spec.n_items // 4)


def _user_counts(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """``(n_users,)`` int64 interactions per user: >= min, <= cap, summing to n_interactions."""
    cap = _user_cap(spec)
    counts = np.full(spec.n_users, spec.min_per_user, dtype=np.int64)
    weights = rng.lognormal(0.0, spec.user_activity_sigma, size=spec.n_users)
    remaining = spec.n_interactions - int(counts.sum())
    while remaining > 0:
        room = cap - counts
        w = np.where(room > 0, weights, 0.0)
        add = rng.multinomial(remaining, w / w.sum())
        counts += np.minimum(add, room)
        remaining = spec.n_interactions - int(counts.sum())
    return counts


def _latent(spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cluster memberships, ``(n, latent_dim)`` float32 factors and popularity logits."""
    r = spec.latent_dim
    centres = rng.standard_normal((spec.n_clusters, r)).astype(np.float32)
    user_cluster = rng.integers(spec.n_clusters, size=spec.n_users)
    item_cluster = rng.integers(spec.n_clusters, size=spec.n_items)
    users = centres[user_cluster] + spec.cluster_spread * rng.standard_normal(
        (spec.n_users, r), dtype=np.float32)
    items = centres[item_cluster] + spec.cluster_spread * rng.standard_normal(
        (spec.n_items, r), dtype=np.float32)
    rank = rng.permutation(spec.n_items)
    pop = (-spec.popularity_exponent * np.log1p(rank)).astype(np.float32)
    pop -= pop.mean()
    return {"user_factors": users, "item_factors": items, "user_cluster": user_cluster,
            "item_cluster": item_cluster, "popularity_logit": pop}


def true_scores(truth: dict[str, Any], users: np.ndarray) -> np.ndarray:
    """Ground-truth logits ``(B, n_items)`` float32 for ``users`` ``(B,)`` (the sampler's)."""
    u = truth["user_factors"][np.asarray(users)]
    v = truth["item_factors"]
    scale = truth["affinity_scale"] / u.shape[1]
    return (scale * (u @ v.T) + truth["popularity_logit"][None, :]).astype(np.float32)


def _sample_items(truth: dict[str, Any], counts: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per user, ``counts[u]`` distinct items from the softmax of :func:`true_scores`.

    Gumbel top-k: the top ``k`` of ``logit + Gumbel noise`` is a sample of ``k`` items
    without replacement. Processed in user blocks of ~``_BLOCK_ELEMS`` scores.
    Returns ``(N,)`` user and item int64 arrays (users ascending).
    """
    import torch

    n_users, n_items = counts.shape[0], truth["item_factors"].shape[0]
    block = max(1, _BLOCK_ELEMS // n_items)
    out_u: list[np.ndarray] = []
    out_i: list[np.ndarray] = []
    for start in range(0, n_users, block):
        users = np.arange(start, min(n_users, start + block))
        g = true_scores(truth, users)
        noise = rng.random(g.shape, dtype=np.float32)
        np.maximum(noise, np.float32(1e-30), out=noise)
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        np.log(noise, out=noise)
        g -= noise  # logit + Gumbel(0, 1)
        c = counts[users]
        k = int(c.max())
        # top-k per row, largest first (torch.topk is several times faster than argpartition)
        top = torch.topk(torch.from_numpy(g), k, dim=1, sorted=True).indices.numpy()
        keep = np.arange(k)[None, :] < c[:, None]
        out_u.append(np.broadcast_to(users[:, None], top.shape)[keep])
        out_i.append(top[keep])
    return np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64)


def _split_per_user(user: np.ndarray, item: np.ndarray, spec: SyntheticSpec,
                    rng: np.random.Generator) -> dict[str, Interactions]:
    """Random per-user train/valid/test split; >= 1 valid and 1 test for users with >= 3.

    ``n_valid = max(1, round(valid_frac * n))``, ``n_test`` likewise, rest train.
    Each split is sorted by (user, item).
    """
    order = np.lexsort((rng.random(user.shape[0]), user))
    user, item = user[order], item[order]
    n = np.bincount(user, minlength=spec.n_users)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(user.shape[0]) - start[user]
    n_valid = np.where(n >= 3, np.maximum(1, np.floor(spec.valid_frac * n + 0.5)), 0).astype(np.int64)
    n_test = np.where(n >= 2, np.maximum(1, np.floor(spec.test_frac * n + 0.5)), 0).astype(np.int64)
    n_train = n - n_valid - n_test
    code = np.where(pos < n_train[user], 0, np.where(pos < (n_train + n_valid)[user], 1, 2))
    out = {}
    for k, s in enumerate(("train", "valid", "test")):
        u, i = user[code == k], item[code == k]
        o = np.lexsort((i, u))
        out[s] = Interactions(u[o], i[o])
    return out


def _features(spec: SyntheticSpec, item_factors: np.ndarray, rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
    """Modality -> ``(n_items, d)`` float32: ``V @ P_m + noise``, built in row blocks."""
    r = spec.latent_dim
    signal_std = math.sqrt(float(np.mean(np.sum(item_factors ** 2, axis=1))) / r)
    out = {}
    for m, d in spec.modalities.items():
        proj = (rng.standard_normal((r, d), dtype=np.float32) / np.float32(math.sqrt(r)))
        sigma = np.float32(spec.feature_noise.get(m, 1.0) * signal_std)
        feats = np.empty((spec.n_items, d), dtype=np.float32)
        rows = max(1, _BLOCK_ELEMS // d)
        for s in range(0, spec.n_items, rows):
            block = item_factors[s:s + rows] @ proj
            block += sigma * rng.standard_normal(block.shape, dtype=np.float32)
            feats[s:s + rows] = block
        out[m] = feats
    return out


def generate_synthetic(preset: str | SyntheticSpec, seed: int) -> dict[str, Any]:
    """Generate a dataset in memory.

    Returns:
        dict with ``name``, ``n_users``, ``n_items``, ``train``/``valid``/``test``
        (:class:`Interactions`), ``features`` (modality -> ``(n_items, d)`` float32),
        ``truth`` (``user_factors (n_users, r)``, ``item_factors (n_items, r)``,
        ``user_cluster``, ``item_cluster``, ``popularity_logit (n_items,)``,
        ``affinity_scale``) and ``spec``.
    """
    spec = get_spec(preset)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    truth: dict[str, Any] = _latent(spec, rng)
    truth["affinity_scale"] = float(spec.affinity_scale)
    counts = _user_counts(spec, rng)
    user, item = _sample_items(truth, counts, rng)
    splits = _split_per_user(user, item, spec, rng)
    features = _features(spec, truth["item_factors"], rng)
    return {"name": spec.name, "n_users": spec.n_users, "n_items": spec.n_items, **splits,
            "features": features, "truth": truth, "spec": spec}


def prepare_synthetic(preset: str | SyntheticSpec, seed: int, out_uri: str | Path, *,
                      overwrite: bool = False) -> Manifest:
    """Generate ``preset`` with ``seed`` and publish it at ``out_uri``; returns the manifest."""
    from mmrecun_ray.data.writer import write_dataset

    data = generate_synthetic(preset, seed)
    spec: SyntheticSpec = data["spec"]
    return write_dataset(
        out_uri, name=spec.name, n_users=spec.n_users, n_items=spec.n_items,
        train=data["train"], valid=data["valid"], test=data["test"], features=data["features"],
        source=f"synthetic:{spec.name}:seed={int(seed)}",
        extra={"generator": dataclasses.asdict(spec), "seed": int(seed)}, overwrite=overwrite)
