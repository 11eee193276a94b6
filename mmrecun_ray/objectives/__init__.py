"""Objectives: the losses (BPR, reverse BPR, matched reverse BPR, negated BPR), negative
sampling, and the objective objects the one loop is parametrised by (loss + stop rule):
:class:`Fit` (training, Gold, fine-tuning), :class:`ReverseBPR` (MMRecUN as published),
:class:`NegGrad` and :class:`RefitRows`."""

from mmrecun_ray.objectives.base import (OBJECTIVES, ForgetPairs, LoopView, Objective, Verdict,
                                         objective_from_dict, retain_bpr)
from mmrecun_ray.objectives.bpr import (bpr_loss, matched_reverse_bpr_loss, negated_bpr_loss,
                                        pair_scores, reverse_bpr_loss)
from mmrecun_ray.objectives.fit import Fit
from mmrecun_ray.objectives.forget import (NegGrad, RefitRows, ReverseBPR, forget_metrics,
                                           train_only_rows)
from mmrecun_ray.objectives.sampling import NegativeSampler

__all__ = ["OBJECTIVES", "Fit", "ForgetPairs", "LoopView", "NegGrad", "NegativeSampler", "Objective",
           "RefitRows", "ReverseBPR", "Verdict", "bpr_loss", "forget_metrics",
           "matched_reverse_bpr_loss", "negated_bpr_loss", "objective_from_dict", "pair_scores",
           "retain_bpr", "reverse_bpr_loss", "train_only_rows"]
