"""Training objectives: BPR, reverse BPR (MMRecUN), negated BPR (NegGrad baseline)."""

from mmrecun_ray.objectives.bpr import bpr_loss, negated_bpr_loss, pair_scores, reverse_bpr_loss

__all__ = ["bpr_loss", "negated_bpr_loss", "pair_scores", "reverse_bpr_loss"]
