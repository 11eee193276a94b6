"""Full-ranking evaluation with MMRec's metric definitions.

- :mod:`mmrecun_ray.evaluation.metrics`  Recall/NDCG/Precision/MAP/Hit@K from a hit matrix.
- :mod:`mmrecun_ray.evaluation.ranking`  batched, masked, deterministic top-K retrieval over
  the whole catalogue and :func:`evaluate_split`.
"""

from mmrecun_ray.evaluation.metrics import DEFAULT_KS, METRIC_NAMES, metric_keys, topk_metrics
from mmrecun_ray.evaluation.ranking import (
    CSR,
    PAD_ITEM,
    auto_batch_size,
    build_csr,
    evaluate_split,
    full_ranking_topk,
    hit_matrix,
    popularity_embeddings,
)

__all__ = [
    "CSR",
    "DEFAULT_KS",
    "METRIC_NAMES",
    "PAD_ITEM",
    "auto_batch_size",
    "build_csr",
    "evaluate_split",
    "full_ranking_topk",
    "hit_matrix",
    "metric_keys",
    "popularity_embeddings",
    "topk_metrics",
]
