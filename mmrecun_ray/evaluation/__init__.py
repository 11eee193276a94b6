"""Full-ranking evaluation with MMRec's metric definitions.

- :mod:`mmrecun_ray.evaluation.metrics`  Recall/NDCG/Precision/MAP/Hit@K from a hit matrix.
- :mod:`mmrecun_ray.evaluation.ranking`  batched, masked, deterministic top-K retrieval over
  the whole catalogue, :func:`evaluate_split` and its per-user vectors
  (:func:`evaluate_split_per_user`).
- :mod:`mmrecun_ray.evaluation.membership`  membership-inference AUC (exact) with DeLong
  standard errors (per pair or clustered by user) and the score attack on a forget set.
"""

from mmrecun_ray.evaluation.membership import (
    auc_cluster_pseudo_values,
    auc_placements,
    auc_standard_error,
    mia_auc,
    mia_auc_from_scores,
)
from mmrecun_ray.evaluation.metrics import (
    DEFAULT_KS,
    METRIC_NAMES,
    metric_keys,
    paired_difference,
    per_user_metrics,
    standard_error,
    topk_metrics,
)
from mmrecun_ray.evaluation.ranking import (
    CSR,
    PAD_ITEM,
    UserMetrics,
    auto_batch_size,
    build_csr,
    evaluate_split,
    evaluate_split_per_user,
    full_ranking_topk,
    hit_matrix,
    popularity_embeddings,
)

__all__ = [
    "CSR",
    "DEFAULT_KS",
    "METRIC_NAMES",
    "PAD_ITEM",
    "UserMetrics",
    "auc_cluster_pseudo_values",
    "auc_placements",
    "auc_standard_error",
    "auto_batch_size",
    "build_csr",
    "evaluate_split",
    "evaluate_split_per_user",
    "full_ranking_topk",
    "hit_matrix",
    "metric_keys",
    "mia_auc",
    "mia_auc_from_scores",
    "paired_difference",
    "per_user_metrics",
    "popularity_embeddings",
    "standard_error",
    "topk_metrics",
]
