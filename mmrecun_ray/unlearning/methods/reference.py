"""Reference rows of every comparison: where unlearning starts from.

- ``original``: the trained model, untouched, served over the original graph (D_f's edges
  still in it). What an auditor compares every method's residue against.
- ``retain-graph``: the trained weights served over the retain graph (forgotten edges
  dropped, withdrawn items masked, dropped features gone), no update: what a graph model
  "forgets" for free, and the floor any method must beat.
"""

from __future__ import annotations

import time

from mmrecun_ray.unlearning.methods.base import Job, Method, MethodResult, method_info, register


@register
class Original(Method):
    """The trained model before unlearning (a reference row)."""

    name = "original"
    role = "reference"
    summary = "the trained model, untouched, over the original graph"

    def run(self, job: Job) -> MethodResult:
        return MethodResult(self.name, dict(job.state), job.info, 0.0, graph="original")


@register
class RetainGraph(Method):
    """The trained weights over the retain graph: edges dropped, no update."""

    name = "retain-graph"
    role = "reference"
    summary = "trained weights, forgotten edges dropped from the graph, no update"

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        info = method_info(job, self.name)
        return MethodResult(self.name, dict(job.state), info, time.perf_counter() - t0)
