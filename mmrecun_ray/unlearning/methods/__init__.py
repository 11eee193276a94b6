"""Unlearning methods, found by name through a registry (:data:`METHODS`).

==============  =========  ==================================================================
method          role       what it does
==============  =========  ==================================================================
original        reference  the trained model, untouched (original graph)
retain-graph    reference  trained weights over the retain graph, no update
hir             method     default: re-draw rows only D_f trained; influence removal on the
                           rest, damping calibrated on held-out pairs (mf, lightgcn, freedom)
mmrecun         method     MMRecUN as published (reverse BPR on D_f + BPR on D_r)
redraw          method     re-draw rows only D_f trained; refit users who keep data
finetune        method     BPR on D_r from the trained model
neggrad         method     gradient ascent on D_f + BPR on D_r
sisa            method     retrain the affected SISA shards
gold            gold       retrain from scratch on D_r (the reference)
==============  =========  ==================================================================

Every method runs the one loop (:mod:`mmrecun_ray.training.loop`) with an objective object,
or no loop at all (``hir``: a closed-form correction, :mod:`mmrecun_ray.unlearning.influence`);
the propagation graph is always the retain graph (forgotten edges gone before the first step), items that left the catalogue are masked everywhere, and modality
features the request drops are removed before the model is rebuilt.
"""

from mmrecun_ray.unlearning.methods.base import (METHODS, Job, Method, MethodResult, build_methods,
                                                 method_class, setting_names)
from mmrecun_ray.unlearning.methods import (finetune, gold, hir, mmrecun, redraw,  # noqa: F401
                                            reference, sisa)

#: what ``unlearn`` (and ``process``) run unless told otherwise
DEFAULT_METHOD = "hir"
#: what ``compare`` runs unless told otherwise (less the methods that refuse the model)
COMPARE_DEFAULT = "hir,hir-twin,original,retain-graph,mmrecun,redraw,finetune,neggrad,sisa,gold"

__all__ = ["COMPARE_DEFAULT", "DEFAULT_METHOD", "METHODS", "Job", "Method", "MethodResult", "build_methods", "method_class",
           "setting_names"]
