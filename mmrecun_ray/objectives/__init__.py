"""Training objectives: BPR, reverse BPR (MMRecUN, sampled or matched reference), negated
BPR (NegGrad baseline)."""

from mmrecun_ray.objectives.bpr import (bpr_loss, matched_reverse_bpr_loss, negated_bpr_loss,
                                        pair_scores, reverse_bpr_loss)

__all__ = ["bpr_loss", "matched_reverse_bpr_loss", "negated_bpr_loss", "pair_scores",
           "reverse_bpr_loss"]
