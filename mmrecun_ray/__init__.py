"""mmrecun_ray: distributed training and machine unlearning of multi-modal recommenders on Ray.

Rooms (data flows one way: storage -> data -> training -> checkpoint -> evaluation):

- :mod:`mmrecun_ray.storage`     URIs (local folder or ``s3://``), atomic publish, ledger.
- :mod:`mmrecun_ray.data`        dataset schema, MMRec import, synthetic generator, loading.
- :mod:`mmrecun_ray.models`      plain ``torch.nn.Module`` recommenders behind a registry.
- :mod:`mmrecun_ray.objectives`  BPR, reverse BPR, L2.
- :mod:`mmrecun_ray.training`    the one training/unlearning loop and its Ray Train runner.
- :mod:`mmrecun_ray.evaluation`  full-ranking metrics and evaluation.
- :mod:`mmrecun_ray.unlearning`  forget requests, methods (MMRecUN, Gold, baselines), audit.
- :mod:`mmrecun_ray.tuning`      Ray Tune sweeps of the unlearning weights.
- :mod:`mmrecun_ray.cli`         ``python -m mmrecun_ray ...``.
"""

__version__ = "0.1.0"
