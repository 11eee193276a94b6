"""Ray Tune sweeps of the unlearning weights (``python -m mmrecun_ray tune``).

The heavy module (:mod:`mmrecun_ray.tuning.sweep`, which imports Ray Tune) is imported on
first use of one of the names below.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OBJECTIVES", "SearchSpace", "TuneOptions", "choose_best", "dominates", "gold_target",
           "objectives", "pareto_front", "run_sweep", "trial_settings", "unlearn_trial"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mmrecun_ray.tuning import sweep
        return getattr(sweep, name)
    raise AttributeError(f"module 'mmrecun_ray.tuning' has no attribute {name!r}")
