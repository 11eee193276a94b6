"""Ray Tune sweeps of the MMRecUN unlearning knobs (``alpha``, ``beta``, learning rate,
budget in passes over D_f, forget:retain batch ratio).

Every trial is a real unlearning run: a Tune function trainable that builds and fits the
one loop's ``TorchTrainer`` (the ``--method``'s :meth:`Method.run`, MMRecUN by default) with a
``TuneReportCallback`` subclass, so each epoch's worker metrics reach Tune. The request is
applied once before the sweep (one retain version, one forget set, *not* recorded in the
dataset's ledger: a sweep explores, it does not forget); its parts reach the trials through
the object store (``tune.with_parameters``).

Objectives (both from the last epoch of a trial, i.e. the state the run ends with):

* ``valid_recall@20`` on retain users -- maximised;
* ``forget_gap = |forget_recall@20 - target|`` -- minimised, where ``target`` is the Gold
  level of forget-set Recall@20: an explicit value, a Gold model's measured value
  (``gold_uri``), or else the service's estimate without running Gold
  (:func:`~mmrecun_ray.unlearning.service.estimate_gold_forget_recall` over
  :func:`~mmrecun_ray.unlearning.service.reference_valid_recall`: forgotten pairs of users
  who keep data rank like never-seen positives, users with no data left rank at random, as
  ``unlearn``'s ``forget_target="auto"``). The gap is two-sided on purpose: a model
  that ranks the forgotten items *below* a retrained model's level over-forgets, which is
  itself detectable (and usually costs retain utility).

Each trial also stops once forget Recall@20 reaches the target (``forget_target`` = target),
so ``epochs`` is a budget cap; the chosen configuration keeps that stopping rule and
therefore reproduces its trial under ``unlearn --config`` (same request, ``--seed`` and
``--workers``).

``pareto`` mode: multi-objective Optuna (TPE) search over both objectives; the report is the
non-dominated set. ``asha`` mode: scalarised ``score = valid_recall@20 - lam * forget_gap``
with ASHA early stopping on per-epoch scores, for larger sweeps.

Chosen configuration (``best_config.json``): among the Pareto-front trials whose forget
Recall@20 is at most ``target + tolerance``, the one with the highest validation Recall@20
(ties: smaller gap, then shorter wall time); when no front trial meets the forget level,
the front trial with the smallest gap.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray.data
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.storage import exists, is_s3, join, read_json, resolve, write_bytes_atomic, write_json_atomic
from mmrecun_ray.storage.uri import to_jsonable
from mmrecun_ray.config import field_types
from mmrecun_ray.training.runner import Scaling, ensure_ray
from mmrecun_ray.unlearning.methods import Job, build_methods, method_class
from mmrecun_ray.unlearning.methods.base import settings_dict
from mmrecun_ray.unlearning.requests import ForgetSet

logger = logging.getLogger(__name__)

VALID = "valid_recall@20"
FORGET = "forget_recall@20"
GAP = "forget_gap"
SCORE = "score"
#: the Pareto objectives and their directions
OBJECTIVES: tuple[tuple[str, str], ...] = ((VALID, "max"), (GAP, "min"))
#: the method settings a sweep searches
SEARCHED = ("alpha", "beta", "learning_rate", "epochs", "forget_ratio")
MODES = ("pareto", "asha")


@dataclass
class SearchSpace:
    """Ranges of the searched knobs.

    Attributes:
        alpha: log-uniform range of the reverse-BPR weight on D_f.
        beta: uniform range of the BPR weight on D_r.
        lr_factor: log-uniform range of the learning rate as a multiple of the trained
            model's learning rate (the default unlearning rate is ``lr_scale=5`` times it,
            the geometric centre of the default range).
        max_epochs: budget drawn uniformly from ``1..max_epochs`` passes over D_f.
        forget_ratios: forget:retain batch ratios to choose from.
    """

    alpha: tuple[float, float] = (0.1, 10.0)
    beta: tuple[float, float] = (0.1, 2.0)
    lr_factor: tuple[float, float] = (0.5, 50.0)
    max_epochs: int = 10
    forget_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "lr_factor"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ConfigError(f"search range {name}={lo},{hi}: need 0 < low < high")
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs={self.max_epochs}: need at least 1")
        if not self.forget_ratios or min(self.forget_ratios) <= 0:
            raise ConfigError(f"forget_ratios={self.forget_ratios}: need positive values")

    def param_space(self, base_lr: float) -> dict[str, Any]:
        """Ray Tune search space (``base_lr``: the trained model's learning rate)."""
        from ray import tune
        return {"alpha": tune.loguniform(*self.alpha), "beta": tune.uniform(*self.beta),
                "learning_rate": tune.loguniform(base_lr * self.lr_factor[0], base_lr * self.lr_factor[1]),
                "epochs": tune.randint(1, self.max_epochs + 1),
                "forget_ratio": tune.choice([float(r) for r in self.forget_ratios])}

    def describe(self, base_lr: float) -> dict[str, Any]:
        """JSON description of :meth:`param_space`."""
        return {"alpha": {"loguniform": list(self.alpha)}, "beta": {"uniform": list(self.beta)},
                "learning_rate": {"loguniform": [base_lr * self.lr_factor[0], base_lr * self.lr_factor[1]]},
                "epochs": {"randint_inclusive": [1, self.max_epochs]},
                "forget_ratio": {"choice": [float(r) for r in self.forget_ratios]}}


@dataclass
class TuneOptions:
    """How to sweep.

    Attributes:
        samples: number of trials.
        method: the method whose settings are searched (its loss's weights).
        mode: ``pareto`` (multi-objective Optuna) or ``asha`` (scalarised + ASHA).
        max_concurrent: trials at once (1 on a 2-CPU machine).
        seed: seed of the request sample, of the searcher and of every trial's loop.
        tolerance: forget Recall@20 may exceed the target by this much for a trial to be
            chosen.
        lam: weight of ``forget_gap`` in the ``asha`` score.
        grace_period, reduction_factor: ASHA's, in reported results (one per epoch).
        trial_cpus: CPU reserved by each Tune trial's driver function (its Ray Train
            workers reserve ``cpus_per_worker`` each).
        fixed: method settings not searched (``batch_size``, ``max_steps``, ...), applied to
            every trial and to the default run.
        run_default: also run the default settings once, for comparison.
        verbose: Tune's console verbosity (0-3).
    """

    samples: int = 8
    method: str = "mmrecun"
    mode: str = "pareto"
    max_concurrent: int = 1
    seed: int = 0
    tolerance: float = 0.01
    lam: float = 1.0
    grace_period: int = 2
    reduction_factor: int = 2
    trial_cpus: float = 0.1
    space: SearchSpace = field(default_factory=SearchSpace)
    fixed: dict[str, Any] = field(default_factory=dict)
    run_default: bool = True
    verbose: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.samples < 1 or self.max_concurrent < 1:
            raise ConfigError(f"--samples {self.samples} / --max-concurrent {self.max_concurrent}: "
                              "need at least 1")
        if self.tolerance < 0 or self.lam < 0:
            raise ConfigError("tolerance and lam must be >= 0")
        known = set(field_types(method_class(self.method).Settings))
        missing = sorted(set(SEARCHED) - known)
        if missing:
            raise ConfigError(f"tune --method {self.method}: the method has no {missing} to search; "
                              "tunable methods: mmrecun, neggrad")
        unknown = sorted(set(self.fixed) - known)
        if unknown:
            raise ConfigError(f"unknown settings {unknown} for {self.method}; known: {sorted(known)}")
        searched = sorted(set(self.fixed) & set(SEARCHED))
        if searched:
            raise ConfigError(f"--set {searched}: these are searched by `tune`; narrow the search "
                              "space instead")


# --- objectives, front, choice (pure) ------------------------------------------------------

def objectives(valid_recall: float, forget_recall: float, target: float, lam: float) -> dict[str, float]:
    """``forget_gap = |forget - target|``, ``forget_excess = max(0, forget - target)`` and the
    scalarised ``score = valid - lam * forget_gap``."""
    gap = abs(forget_recall - target)
    return {GAP: gap, "forget_excess": max(0.0, forget_recall - target), SCORE: valid_recall - lam * gap}


def with_objectives(metrics: dict[str, Any], target: float, lam: float) -> dict[str, Any]:
    """A copy of an epoch's metrics with :func:`objectives` added (when both recalls are
    present)."""
    out = dict(metrics)
    if VALID in out and FORGET in out:
        out.update(objectives(float(out[VALID]), float(out[FORGET]), target, lam))
    return out


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether objective vector ``a`` dominates ``b``: at least as good everywhere, strictly
    better somewhere (``modes``: ``"max"`` / ``"min"`` per objective)."""
    sa = [x if m == "max" else -x for x, m in zip(a, modes)]
    sb = [x if m == "max" else -x for x, m in zip(b, modes)]
    return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated rows of ``points``.

    Args:
        points: ``(N, M)`` objective values.
        modes: ``M`` directions, ``"max"`` or ``"min"``.

    A row dominates another when it is at least as good in every objective and strictly
    better in one; identical rows do not dominate each other, so duplicates are all kept.
    Rows with a NaN are never on the front.
    """
    if not len(points):
        return []
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(modes):
        raise ConfigError(f"pareto_front: points of shape {p.shape} for {len(modes)} objectives")
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise ConfigError(f"pareto_front: modes {bad}; expected 'max' or 'min'")
    p = p * np.array([1.0 if m == "max" else -1.0 for m in modes])  # all maximised
    ok = ~np.isnan(p).any(axis=1)
    front = []
    for i in np.flatnonzero(ok):
        others = p[ok]
        dominated = np.any(np.all(others >= p[i], axis=1) & np.any(others > p[i], axis=1))
        if not dominated:
            front.append(int(i))
    return front


def choose_best(front: Sequence[dict[str, Any]], target: float, tolerance: float) -> dict[str, Any] | None:
    """The chosen trial among ``front`` rows (keys ``valid_recall@20``, ``forget_recall@20``,
    ``forget_gap``, optional ``wall_seconds``): highest valid recall among rows with forget
    recall <= ``target + tolerance`` (ties: smaller gap, then faster); else the smallest
    gap (ties: higher valid recall). None for an empty front."""
    if not front:
        return None
    eligible = [r for r in front if r[FORGET] <= target + tolerance]
    if eligible:
        return max(eligible, key=lambda r: (r[VALID], -r[GAP], -r.get("wall_seconds", 0.0)))
    return min(front, key=lambda r: (r[GAP], -r[VALID], r.get("wall_seconds", 0.0)))


# --- trials ----------------------------------------------------------------------------------

@dataclass
class TrialContext:
    """What every trial shares; put once in the object store by ``tune.with_parameters``."""

    method: str
    job: Job
    target: float
    lam: float
    fixed: dict[str, Any]
    seed: int


def trial_settings(method: str, config: dict[str, Any], fixed: dict[str, Any], target: float,
                   seed: int = 0) -> Any:
    """Settings of ``method`` for one trial: the sampled knobs over ``fixed``; stop at
    ``target``."""
    sets: dict[str, Any] = {"forget_target": float(target), "seed": seed, **fixed}
    sets.update({k: config[k] for k in SEARCHED})
    sets["epochs"] = int(sets["epochs"])
    return build_methods([method], sets)[0].settings


class ObjectiveReportCallback(TuneReportCallback):
    """Ray Train -> Tune: each epoch's rank-0 metrics with the objectives added (ASHA and
    the searcher read them from every result). Build it inside a Tune trial."""

    def __init__(self, target: float, lam: float) -> None:
        super().__init__()
        self.target, self.lam = target, lam

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        super().after_report(run_context, [with_objectives(m, self.target, self.lam) for m in metrics],
                             checkpoint)


def unlearn_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: one MMRecUN run (a ``TorchTrainer`` with at least one
    worker) with the sampled settings.

    Each evaluated epoch's metrics reach Tune through :class:`ObjectiveReportCallback`; a
    last result with ``final=1`` repeats the final epoch's and adds the trial's wall time
    and the budget used.
    """
    from dataclasses import replace
    t0 = time.perf_counter()
    settings = trial_settings(ctx.method, config, ctx.fixed, ctx.target, ctx.seed)
    job = replace(ctx.job, callbacks=[ObjectiveReportCallback(ctx.target, ctx.lam)])
    res = method_class(ctx.method)(settings).run(job)
    history = res.loop.history if res.loop else []
    if not history:
        raise DataError(f"trial {config}: the unlearning loop reported no evaluation")
    tune.report({**with_objectives(history[-1], ctx.target, ctx.lam), "final": 1,
                 "epochs_run": res.loop.epochs_run, "steps": res.loop.steps,
                 "trial_wall_seconds": time.perf_counter() - t0})


# --- the sweep -------------------------------------------------------------------------------

def _absolute(uri: str) -> str:
    """Local paths made absolute: Tune runs trials in their own working directories."""
    if is_s3(uri) or str(uri).startswith("file://"):
        return str(uri)
    return str(Path(uri).expanduser().resolve())


def _forget_recall_of(model_uri: str, fset: ForgetSet) -> tuple[float, float]:
    """``(valid, forget)`` Recall@20 of an exported model over the retain graph (retain
    train pairs masked, forgotten pairs ranked)."""
    from mmrecun_ray.training.export import load_model
    return _valid_forget_recall(load_model(model_uri, fset.retain)[0], fset)


def _valid_forget_recall(model: Any, fset: ForgetSet) -> tuple[float, float]:
    """``(valid, forget)`` Recall@20 of a model built over ``fset.retain``."""
    from mmrecun_ray.evaluation.evaluate import embeddings, evaluate_embeddings
    r = fset.retain
    u, i = embeddings(model)
    valid = evaluate_embeddings(u, i, r, r.valid, (20,))["recall@20"]
    forget = evaluate_embeddings(u, i, r, fset.forget, (20,), banned_items=None)["recall@20"]
    return float(valid), float(forget)


def _gold_from_metrics(uri: str, request_id: str) -> float:
    """Gold's forget Recall@20 from an ``unlearn --method gold`` or ``compare`` metrics.json
    (which must be for ``request_id`` when it names its request)."""
    d = read_json(uri)
    if not isinstance(d, dict):
        raise DataError(f"{uri}: expected a JSON object (a metrics.json), got {type(d).__name__}")
    rows = d.get("methods")
    if rows is not None:
        gold = [r for r in rows if r.get("method") == "gold"]
        if not gold:
            raise DataError(f"{uri}: no 'gold' entry among methods "
                            f"{[r.get('method') for r in rows]}")
        row = gold[0]
    else:
        row = d
    rid = d["request"].get("id") if isinstance(d.get("request"), dict) else None
    if rid is not None and rid != request_id:
        raise DataError(f"{uri}: Gold metrics are for request {rid}, the sweep's request is {request_id}")
    try:
        return float(row["metrics"]["forget"]["recall@20"])
    except (KeyError, TypeError) as e:
        raise DataError(f"{uri}: no metrics.forget.recall@20 (expected the metrics.json of "
                        "`unlearn --method gold` or `compare`)") from e


def gold_target(model_uri: str, prep: Any, gold_uri: str | None = None,
                target: float | None = None) -> tuple[float, str]:
    """The forget-set Recall@20 a Gold (retrained) model reaches, and where it came from.

    ``target`` wins; else ``gold_uri``: a Gold ``metrics.json`` (``unlearn --method gold``
    or ``compare``), a folder holding one, or an exported Gold model folder (evaluated
    here); else the estimate ``unlearn`` uses for ``forget_target="auto"``. ``prep``: the
    applied request (:class:`~mmrecun_ray.unlearning.service.Prepared`).
    """
    fset = prep.fset
    if target is not None:
        return float(target), "given"
    if gold_uri:
        from mmrecun_ray.training.export import MODEL_META
        if str(gold_uri).endswith(".json"):
            return _gold_from_metrics(gold_uri, fset.request_id), f"gold metrics {gold_uri}"
        if exists(join(gold_uri, MODEL_META)):
            return _forget_recall_of(gold_uri, fset)[1], f"gold model {gold_uri}"
        if exists(join(gold_uri, "metrics.json")):
            return _gold_from_metrics(join(gold_uri, "metrics.json"), fset.request_id), \
                f"gold metrics {join(gold_uri, 'metrics.json')}"
        raise DataError(f"--gold-uri {gold_uri}: neither a metrics.json nor a folder with "
                        f"{MODEL_META} or metrics.json")
    from mmrecun_ray.unlearning.references import estimate_gold_forget_recall
    from mmrecun_ray.unlearning.service import reference_valid_recall
    return (estimate_gold_forget_recall(fset, reference_valid_recall(model_uri, prep)),
            "estimate_gold_forget_recall")


class TrialRecorder(tune.Callback):
    """Driver-side Tune callback: each trial's config, last result, ``final`` result and
    whether it errored (in trial start order)."""

    def __init__(self) -> None:
        self.config: dict[str, dict[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.final: dict[str, dict[str, Any]] = {}
        self.errored: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.config.setdefault(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.config.setdefault(trial.trial_id, dict(trial.config))
        self.last[trial.trial_id] = dict(result)
        if result.get("final"):
            self.final[trial.trial_id] = dict(result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.config.setdefault(trial.trial_id, dict(trial.config))
        self.errored.add(trial.trial_id)

    def rows(self, target: float, lam: float) -> list[dict[str, Any]]:
        """One row per trial: ``completed`` (ran its budget or reached the target),
        ``stopped`` (by ASHA; metrics of its last epoch) or ``error``."""
        out = []
        for tid, cfg in self.config.items():
            final = self.final.get(tid)
            status = "completed" if final else ("error" if tid in self.errored else "stopped")
            out.append(_row(tid, cfg, final or self.last.get(tid), status, target, lam))
        return out


def _row(trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, status: str,
         target: float, lam: float) -> dict[str, Any]:
    row: dict[str, Any] = {"trial_id": trial_id, "status": status}
    row.update({k: config.get(k) for k in SEARCHED})
    r = result or {}
    valid, forget = float(r.get(VALID, math.nan)), float(r.get(FORGET, math.nan))
    row.update({VALID: valid, FORGET: forget, **objectives(valid, forget, target, lam),
                "epochs_run": r.get("epochs_run", (r.get("epoch", -1) + 1) if r else None),
                "steps": r.get("steps"),
                "wall_seconds": float(r.get("trial_wall_seconds", r.get("time_total_s", math.nan)))})
    return row


def _fit(ctx: TrialContext, opts: TuneOptions, base_lr: float, storage_uri: str) -> list[dict[str, Any]]:
    """Run the Tune experiment; one row per trial."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    trainable = tune.with_resources(tune.with_parameters(unlearn_trial, ctx=ctx), {"CPU": opts.trial_cpus})
    if opts.mode == "pareto":
        tune_cfg = tune.TuneConfig(
            search_alg=OptunaSearch(metric=[m for m, _ in OBJECTIVES], mode=[d for _, d in OBJECTIVES],
                                    seed=opts.seed),
            num_samples=opts.samples, max_concurrent_trials=opts.max_concurrent)
    else:
        tune_cfg = tune.TuneConfig(
            metric=SCORE, mode="max", search_alg=OptunaSearch(seed=opts.seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=opts.space.max_epochs + 1,
                                    grace_period=opts.grace_period, reduction_factor=opts.reduction_factor),
            num_samples=opts.samples, max_concurrent_trials=opts.max_concurrent)
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)  # one line per '@' metric name
    fs, path = resolve(storage_uri)
    recorder = TrialRecorder()
    run_cfg = tune.RunConfig(name=f"tune-{uuid.uuid4().hex[:8]}", storage_path=path,
                             storage_filesystem=fs if is_s3(storage_uri) else None,
                             verbose=opts.verbose, callbacks=[recorder],
                             failure_config=tune.FailureConfig(max_failures=0))
    tuner = tune.Tuner(trainable, param_space=opts.space.param_space(base_lr), tune_config=tune_cfg,
                       run_config=run_cfg)
    grid = tuner.fit()
    for res in grid:
        if res.error:
            logger.warning("trial %s failed: %s", res.path, res.error)
    return recorder.rows(ctx.target, ctx.lam)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in cols})
    return buf.getvalue().encode()


def _run_default(ctx: TrialContext, settings: Any, base_lr: float) -> dict[str, Any]:
    """The method's default settings run once (outside Tune), as a trial-like row."""
    t0 = time.perf_counter()
    res = method_class(ctx.method)(settings).run(ctx.job)
    last = res.loop.history[-1] if res.loop and res.loop.history else {}
    if not last:  # no step was needed: evaluate the result
        from mmrecun_ray.training.export import build_from_state
        valid, forget = _valid_forget_recall(build_from_state(res.info, ctx.job.fset.retain, res.state),
                                             ctx.job.fset)
        last = {VALID: valid, FORGET: forget}
    cfg = {k: getattr(settings, k) for k in SEARCHED}
    cfg["learning_rate"] = settings.lr(base_lr)
    row = _row("default", cfg, {**last, "epochs_run": res.loop.epochs_run if res.loop else 0,
                                "steps": res.loop.steps if res.loop else 0,
                                "trial_wall_seconds": time.perf_counter() - t0},
               "completed", ctx.target, ctx.lam)
    row["settings"] = settings_dict(settings)
    return row


def run_sweep(model_uri: str, data_uri: str, spec: str, out_uri: str, scaling: Scaling,
              opts: TuneOptions, gold_uri: str | None = None, target: float | None = None) -> dict[str, Any]:
    """Apply ``spec`` once, sweep the unlearning knobs with Ray Tune, write the results.

    Writes ``<out>/retain_data`` (the request's retain version), ``trials.csv`` /
    ``trials.json`` (every trial), ``pareto.json`` (the non-dominated completed trials),
    ``best_config.json`` (``{"settings": {...}}`` for ``unlearn --config``) and
    ``metrics.json`` (last). Returns the ``metrics.json`` payload.
    """
    from mmrecun_ray.data.dataset import interactions_dataset
    from mmrecun_ray.training.export import read_model_info
    from mmrecun_ray.unlearning.service import apply_request
    t_all = time.perf_counter()
    if scaling.workers < 1:
        raise ConfigError("tune needs --workers >= 1: Ray Train's local mode (--workers 0) runs the "
                          "loop in the calling process, and inside a Tune trial Ray disables the "
                          "ray.train.* calls the loop makes")
    model_uri, data_uri, out_uri = _absolute(model_uri), _absolute(data_uri), _absolute(out_uri)
    storage = _absolute(scaling.storage_uri or join(out_uri, "ray"))
    scaling = Scaling(**{**asdict(scaling), "storage_uri": storage})
    ensure_ray()
    info = read_model_info(model_uri)
    prep = apply_request(data_uri, spec, out_uri, seed=opts.seed, record=False)
    fset = prep.fset
    if len(fset.forget) == 0:
        raise ConfigError(f"request {spec!r} has no forget pairs (a modality request?): there is "
                          "nothing for alpha/forget_ratio to act on; use `unlearn` directly")
    retain_data = interactions_dataset(prep.retain_uri, "train").materialize()
    ref_valid, orig_forget = _forget_recall_of(model_uri, fset)
    tgt, source = gold_target(model_uri, prep, gold_uri, target)
    from mmrecun_ray.training.export import read_optimizer, read_state, read_twin
    job = Job(model_uri=model_uri, info=info, state={k: v.numpy() for k, v in read_state(model_uri).items()},
              optimizer=read_optimizer(model_uri), fset=fset, retain_uri=prep.retain_uri,
              retain_data=retain_data, scaling=scaling, reference_valid_recall=ref_valid,
              twin_state=read_twin(model_uri, info, as_numpy=True))
    logger.info("request %s: %d forget pairs; target forget recall@20 %.4f (%s); original model "
                "valid %.4f forget %.4f", fset.request_id, len(fset.forget), tgt, source, ref_valid,
                orig_forget)
    base_lr = float(info.loop_config.get("learning_rate", 1e-3))
    ctx = TrialContext(method=opts.method, job=job, target=tgt, lam=opts.lam, fixed=dict(opts.fixed),
                       seed=opts.seed)
    t_sweep = time.perf_counter()
    rows = _fit(ctx, opts, base_lr, storage)
    sweep_seconds = time.perf_counter() - t_sweep
    done = [r for r in rows
            if r["status"] == "completed" and math.isfinite(r[VALID]) and math.isfinite(r[FORGET])]
    front_idx = pareto_front([[r[m] for m, _ in OBJECTIVES] for r in done], [d for _, d in OBJECTIVES])
    front = sorted((done[i] for i in front_idx), key=lambda r: -r[VALID])
    front_ids = {r["trial_id"] for r in front}
    for r in rows:
        r["on_front"] = r["trial_id"] in front_ids
    best = choose_best(front, tgt, opts.tolerance)
    default = None
    if opts.run_default:  # after the sweep, alone on the machine: its wall time compares
        default = _run_default(ctx, build_methods([opts.method], {"seed": opts.seed, **opts.fixed})[0].settings,
                               base_lr)
        modes = [d for _, d in OBJECTIVES]
        default["dominated_by"] = [r["trial_id"] for r in front
                                   if dominates([r[m] for m, _ in OBJECTIVES],
                                                [default[m] for m, _ in OBJECTIVES], modes)]
    best_settings = (settings_dict(trial_settings(opts.method, best, opts.fixed, tgt, opts.seed))
                     if best else None)

    write_bytes_atomic(join(out_uri, "trials.csv"), _csv(rows))
    write_json_atomic(join(out_uri, "trials.json"), to_jsonable(rows))
    write_json_atomic(join(out_uri, "pareto.json"), to_jsonable(
        {"objectives": dict(OBJECTIVES), "target": tgt, "trials": front}))
    if best is not None:
        write_json_atomic(join(out_uri, "best_config.json"), to_jsonable(
            {"method": opts.method, "settings": best_settings, "trial_id": best["trial_id"], "request": spec, "seed": opts.seed,
             "model_uri": model_uri, "target": tgt, "tolerance": opts.tolerance,
             "objectives": {k: best[k] for k in (VALID, FORGET, GAP)}}))
    else:
        logger.warning("no trial completed: best_config.json not written")
    payload = to_jsonable({
        "command": "tune", "model": info.model, "model_uri": model_uri, "data": data_uri,
        "request": {"spec": spec, "id": fset.request_id, "kind": fset.request.kind,
                    "forget_pairs": len(fset.forget), "retain_train": len(fset.retain.train)},
        "retain_data": prep.retain_uri, "method": opts.method, "mode": opts.mode,
        "objectives": {VALID: "max", GAP: f"min |{FORGET} - target|"} if opts.mode == "pareto"
        else {SCORE: f"max {VALID} - {opts.lam} * |{FORGET} - target| (ASHA)"},
        "target": tgt, "target_source": source, "tolerance": opts.tolerance, "lambda": opts.lam,
        "reference_valid_recall@20": ref_valid,
        "original": {VALID: ref_valid, FORGET: orig_forget},
        "search_space": opts.space.describe(base_lr), "fixed_settings": opts.fixed,
        "scaling": {"workers": scaling.workers, "cpus_per_worker": scaling.cpus_per_worker,
                    "max_concurrent": opts.max_concurrent, "trial_cpus": opts.trial_cpus},
        "n_trials": len(rows), "n_completed": len(done),
        "sweep_seconds": sweep_seconds, "wall_seconds": time.perf_counter() - t_all,
        "best": {**best, "settings": best_settings} if best else None,
        "pareto": front, "default": default})
    write_json_atomic(join(out_uri, "metrics.json"), payload)
    return payload
