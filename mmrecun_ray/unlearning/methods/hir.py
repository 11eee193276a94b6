"""``hir``: held-out-calibrated influence removal (the product default).

No training loop, no Ray workers: seconds on a CPU for ``users``, ``items`` and
``interactions`` requests alike.

1. **Exact part** (as :mod:`redraw`): the ID rows only D_f trained (users left with no
   retain pair, items that left the catalogue) are re-drawn from the initial distribution
   and their Adam moments cleared; Gold never trains them either. The model is served over
   the retain graph, so the forgotten edges are out of the propagation.
2. **What D_f taught the other rows**: the other side of every forgotten pair (the items a
   forgotten user liked; the users of a withdrawn item; both ends of a forgotten
   interaction) still carries the pull of D_f. Its displacement is estimated per row by
   linear response in the space of the final embeddings ``F`` (``s(u,i) = F_u . F_i``):
   ``dF_r = (H_r + kappa c_r I)^-1 g_r``, ``g_r`` the D_f BPR gradient at the trained
   model over the original graph, ``H_r`` the retain BPR curvature of the row
   (:mod:`mmrecun_ray.unlearning.influence`).
3. **Damping from held-out data**: ``kappa`` is scanned over a log grid and set where D_f
   becomes exchangeable with held-out pairs of the same users / items (an attacker's
   fold-in statistic reaches ``target`` = 1/2, the value of a model that never saw D_f).
   Held-out pairs: those the request removes anyway (``ForgetSet.held_out_removed``) for
   ``users`` / ``items`` requests, the retain validation split for ``interactions``; no
   test pair of a retain user is read. The scan runs from the most damping down and stops
   at the first point at the target (the choice reads no further). When no point reaches
   it, the least correction within one standard error of the curve's minimum; the scan
   then stops once ``scan_patience`` points in a row lie above that floor (the curve has
   turned: more correction overshoots). When the uncorrected model's statistic lies fewer
   than :data:`WEAK_CALIBRATION_SE` standard errors above the target (a small request, few
   held-out pairs), the data barely constrain the damping: the diagnostics record that
   ``calibration_power`` and a warning says to check the result against a Gold band.
4. **Curvature mix from held-out data** (``interactions`` requests): the damping pins the
   centre of D_f's scores; their spread depends on the curvature. With the retain curvature
   alone, rows D_f pulled hardest are over-corrected and the lightly pulled ones under, so
   D_f's lower tail against never-seen pairs (what the score-MIA attacker reads) sits below a
   retrain's. ``H_r = H_r(D_r) + mix H_r(D_f)`` (a secant curvature between the two optima)
   with ``mix`` in ``[0, 1]`` set where D_f's score-MIA AUC equals that of the same users'
   validation pairs (both against one draw of non-members; equal for a model that never saw
   D_f), the damping re-calibrated at every mix tried (mix 0, a probe, ``mix_steps``
   secant steps).
5. **Realisation**: ``M dE = dF`` solved by conjugate gradients (BiCGSTAB when ``M`` is not
   symmetric), ``M`` the model's linear map ID tables -> final embeddings over the retain
   graph, so rows outside ``dF`` keep their final embeddings up to the CG tolerance.

Known limit (``interactions`` requests; README "Where the interactions residue sits",
``bench/residue.py``): each forgotten pair's pull is its BPR gradient weight
``mean_j sigmoid(s_uj - s_ui)``, which vanishes for the pairs the trained model ranks best.
So the best-fitted pairs stay in the top 20 more often than after a retrain, and the
loosely fitted ones sink below a retrain's level. The excess sits in the pairs the retain
data support little (an item-kNN score on the retain pairs; the script's second table). The
damping and the mix scale the whole allocation but do not change it; no ``interactions``
request measured so far passes a Gold band.

Models: ``mf`` (``M = I``), ``lightgcn`` (``(I + A + A^2)/3``), ``freedom`` (adds the frozen
item-item graph; its modality projections and 1e-4 modality losses are left as they are).
``vbpr`` (half of an item's final embedding comes from its features, not its ID row),
``mgcn`` (gated, non-linear map) and ``sisa`` ensembles are refused with a ConfigError.
Modality requests forget no training pair: the result is the retain-graph model with the
features dropped, no correction. An inbox batch of mixed kinds reads as ``interactions``
(users re-drawn where they have no retain pair left, every other D_f row corrected). Stated approximations: per-row (block-diagonal)
curvature; user and item rows corrected together (the calibrated damping absorbs the
double count on ``interactions``); gradient products, curvature blocks and their
eigendecomposition in float32 (relative error ~1e-7 against float64 on synthetic baby).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.objectives import RefitRows
from mmrecun_ray.training.export import ModelInfo, build_from_state
from mmrecun_ray.unlearning.influence import (MembershipShape, calibrate, calibrate_mix,
                                              final_embeddings, is_linear_map, make_calibrator,
                                              row_system, solve_ego)
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, register,
                                                 settings_dict)
from mmrecun_ray.unlearning.methods.redraw import redraw_inputs, redrawn_start

logger = logging.getLogger(__name__)

#: models whose final embeddings are a linear map of the ID tables
SUPPORTED_MODELS = ("mf", "lightgcn", "freedom")
#: the uncorrected model's calibration statistic must lie this many of its standard errors
#: above the target for the damping to be set by the data rather than by its noise
WEAK_CALIBRATION_SE = 2.0


def calibration_power(stat: float, se: float, target: float) -> float:
    """How many standard errors the uncorrected model's statistic lies above ``target``
    (``(stat - target) / se``; NaN without a finite, positive standard error)."""
    if not (math.isfinite(stat) and math.isfinite(se) and se > 0):
        return float("nan")
    return (stat - target) / se


def warn_if_weakly_calibrated(kind: str, diag: dict[str, Any], target: float) -> None:
    """Log a warning when the damping in ``diag`` (HIR's diagnostics) was calibrated but the
    data hardly constrained it: no calibration unit, a statistic without a standard error
    (one unit, or every unit alike), or the uncorrected model's statistic fewer than
    :data:`WEAK_CALIBRATION_SE` standard errors above ``target``."""
    if diag["kappa_how"] == "fixed":
        return
    power = diag["calibration_power"]
    if diag["calibration_units"] == 0:
        logger.warning("hir: %s request: nothing to calibrate on (no forgotten unit has held-out "
                       "pairs), so the damping is the grid's largest, not set by data; check "
                       "this result against a Gold band", kind)
    elif not math.isfinite(power):
        logger.warning("hir: %s request: the uncorrected model's calibration statistic %.3f has "
                       "no standard error (%d units), so its noise is unknown and the damping it "
                       "sets (kappa %.3g) may be noise; check this result against a Gold band "
                       "(compare, or process with gold: now)", kind, diag["stat_before"],
                       diag["calibration_units"], diag["kappa"])
    elif power <= 0:
        logger.warning("hir: %s request: the uncorrected model's calibration statistic is %.3f "
                       "+- %.3f (%d units), not above %.2f: the calibration sees nothing of the "
                       "forgotten data in it, so the damping (kappa %.3g) is not set by data; "
                       "check this result against a Gold band "
                       "(compare, or process with gold: now)", kind, diag["stat_before"],
                       diag["stat_before_se"], diag["calibration_units"], target, diag["kappa"])
    elif power < WEAK_CALIBRATION_SE:
        logger.warning("hir: %s request: the uncorrected model's calibration statistic is %.3f "
                       "+- %.3f (%d units), only %.1f standard errors above %.2f: the "
                       "calibration barely tells it from a model that never saw the forgotten "
                       "data, so the damping it sets (kappa %.3g) is mostly noise; check this "
                       "result against a Gold band (compare, or process with gold: now)", kind,
                       diag["stat_before"], diag["stat_before_se"], diag["calibration_units"],
                       power, target, diag["kappa"])


@dataclass
class HIRSettings:
    """Knobs (none is tuned per request: the damping comes from the calibration).

    Attributes:
        neg_per_user: uniform negatives drawn per retain user for the curvature ``H``.
        kappa_min, kappa_max, kappa_points: the log grid of damping scales scanned
            (``lam_r = kappa * c_r``).
        damping: ``c_r``: ``global`` (mean row curvature ``trace/d`` of the side), ``row``
            (the row's own) or ``sqrt`` (their geometric mean).
        curvature_mix: ``H_r = H_r(D_r) + mix H_r(D_f)``: 0 the retain curvature (the Newton
            step of the retain objective at the trained model), 1 the trained model's own.
            null (default): 0 for ``users`` / ``items`` requests; for ``interactions`` set
            from held-out data (:class:`~mmrecun_ray.unlearning.influence.MembershipShape`:
            D_f's score-MIA AUC against that of the same users' validation pairs), each mix
            tried with its own damping calibration.
        mix_steps: secant / regula-falsi steps of that search after mix 0 and a probe at
            0.25 (each one more eigendecomposition and damping scan).
        splits: random halvings averaged in the calibration statistic.
        foldin_ridge: ridge of the attacker's fresh vector, relative to mean ``|F|^2``.
        calibration_candidates: ``items`` requests: take each user's percentile in the
            statistic among this many uniform draws of the catalogue instead of every item
            (0, the default: every item). For catalogues too large to compare every pair
            with every item. Its noise pulls the statistic towards 1/2 and so moves the
            damping (synthetic baby, 1,024 draws: kappa 5.54 instead of 5.02, differencing
            AUC 0.9992 at the band's upper edge instead of 0.9991 inside it).
        target: the calibration statistic of a model that never saw D_f (1/2).
        tolerance_se: accept the largest damping whose statistic is within this many of its
            standard errors above ``target`` (0: the crossing itself).
        scan_patience: when no point has reached ``target``, stop the scan after this many
            consecutive points above the curve's minimum plus its standard error (the
            curve has turned: more correction overshoots); 0: scan the whole grid.
        fixed_kappa: skip the calibration and use this damping scale (null: calibrate).
        cg_iters: iteration cap of the ID-table solve.
        cg_tol: relative residual at which the ID-table solve stops.
        seed: seed of the re-draw, the curvature's negatives and the halvings.
    """

    neg_per_user: int = 64
    kappa_min: float = 0.02
    kappa_max: float = 20.0
    kappa_points: int = 16
    damping: Literal["global", "row", "sqrt"] = "global"
    curvature_mix: float | None = None
    mix_steps: int = 1
    splits: int = 4
    foldin_ridge: float = 1e-3
    calibration_candidates: int = 0
    target: float = 0.5
    tolerance_se: float = 0.0
    scan_patience: int = 2
    fixed_kappa: float | None = None
    cg_iters: int = 80
    cg_tol: float = 1e-4
    seed: int = 0

    def kappas(self) -> list[float]:
        """The damping grid, ascending."""
        if not 0 < self.kappa_min <= self.kappa_max or self.kappa_points < 1:
            raise ConfigError(f"hir: need 0 < kappa_min <= kappa_max and kappa_points >= 1, got "
                              f"{self.kappa_min}, {self.kappa_max}, {self.kappa_points}")
        return [float(k) for k in np.geomspace(self.kappa_min, self.kappa_max, self.kappa_points)]


@register
class HIR(Method):
    """Held-out-calibrated influence removal (see the module docstring)."""

    name = "hir"
    Settings = HIRSettings
    summary = ("re-draw rows only D_f trained; remove D_f's influence on the rest, damping "
               "calibrated on held-out pairs")

    def check(self, info: ModelInfo) -> None:
        """One-line ConfigError for a model HIR cannot unlearn from, or a bad damping grid."""
        if info.model not in SUPPORTED_MODELS:
            raise ConfigError(f"hir: model {info.model!r} is not supported (its final embeddings are "
                              f"not a linear map of its ID tables); supported: "
                              f"{', '.join(SUPPORTED_MODELS)}; use --method mmrecun or redraw")
        self.settings.kappas()
        if self.settings.scan_patience < 0:
            raise ConfigError(f"hir: scan_patience must be >= 0 (0: the whole grid), got "
                              f"{self.settings.scan_patience}")
        mix = self.settings.curvature_mix
        if mix is not None and not 0.0 <= mix <= 1.0:
            raise ConfigError(f"hir: curvature_mix must be in [0, 1] (null: set from held-out "
                              f"data), got {mix}")
        if self.settings.mix_steps < 0:
            raise ConfigError(f"hir: mix_steps must be >= 0, got {self.settings.mix_steps}")
        if self.settings.calibration_candidates < 0:
            raise ConfigError(f"hir: calibration_candidates must be >= 0 (0: every item), got "
                              f"{self.settings.calibration_candidates}")

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        s: HIRSettings = self.settings
        self.check(job.info)
        kappas = s.kappas()
        fset = job.fset
        base_cfg, fit = job.recipe()
        inputs = redraw_inputs(job)
        start = redrawn_start(replace(base_cfg, seed=s.seed), RefitRows(reg_weight=fit.reg_weight),
                              inputs, t0)
        info = method_info(job, self.name, {"settings": settings_dict(s)})
        extra: dict[str, Any] = {"reset_users": int(inputs.reset_users.size),
                                 "reset_items": int(inputs.reset_items.size)}
        if fset.request.kind not in ("users", "items", "interactions") or len(fset.forget) == 0:
            extra["hir"] = {"skipped": f"{fset.request.kind} request forgets no training pair"}
            return MethodResult(self.name, start.state, info, time.perf_counter() - t0, start, extra)
        model = build_from_state(info, fset.retain, job.state, where=job.model_uri)
        if not is_linear_map(model):
            raise ConfigError(f"hir: model {job.info.model!r}: final embeddings are not linear in "
                              "the ID tables")
        state, diag = self._remove(model, job, start.state, inputs.reset_users, kappas, t0)
        extra["hir"] = diag
        logger.info("hir: kappa %.4g (%s), statistic %.3f -> %.3f, %d item / %d user rows, "
                    "CG residual %.1e, %.2fs", diag["kappa"], diag["kappa_how"], diag["stat_before"],
                    diag["stat_after"], diag["item_rows"], diag["user_rows"],
                    diag["cg_rel_residual"], diag["seconds"]["total"])
        warn_if_weakly_calibrated(fset.request.kind, diag, s.target)
        return MethodResult(self.name, state, info, time.perf_counter() - t0, start, extra)

    def _remove(self, model: torch.nn.Module, job: Job, redrawn: dict[str, np.ndarray],
                redrawn_users: np.ndarray, kappas: list[float],
                t0: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Steps 2-4 on ``model`` (trained weights over the retain graph); returns the new
        state (numpy) and the diagnostics."""
        s: HIRSettings = self.settings
        fset, r = job.fset, job.fset.retain
        kind = fset.request.kind
        fu, fi = fset.forget.user.astype(np.int64), fset.forget.item.astype(np.int64)
        active = np.ones(r.n_items, dtype=bool)
        active[fset.banned_items] = False
        retain_edges = torch.from_numpy(np.stack([r.train.user, r.train.item]).astype(np.int64))
        model.set_graph(torch.cat([retain_edges, torch.from_numpy(np.stack([fu, fi]))], dim=1))
        fo_u, fo_i = final_embeddings(model)                    # the teachers, as they were
        model.set_graph(retain_edges)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in redrawn.items()}, strict=False)
        fr_u, fr_i = final_embeddings(model)
        t1 = time.perf_counter()
        auto_mix = s.curvature_mix is None and kind == "interactions" and s.fixed_kappa is None
        mix = 0.0 if s.curvature_mix is None else float(s.curvature_mix)
        system = row_system(fo_u, fo_i, r, fu, fi, kind, redrawn_users, active, s.neg_per_user,
                            s.damping, s.seed, forget_part=auto_mix or bool(mix))
        t2 = time.perf_counter()
        held = fset.held_out_removed
        cal = make_calibrator(r, fu, fi, kind, fset.banned_items,
                              None if held is None else (held.user, held.item),
                              s.splits, s.foldin_ridge, s.seed, s.calibration_candidates)
        before = cal(fr_u, fr_i)
        mix_curve: list[list[float]] = []
        if auto_mix:
            shape = MembershipShape(r, fu, fi, seed=s.seed)
            point, tried = calibrate_mix(system, fr_u, fr_i, cal, shape, kappas, s.target,
                                         s.tolerance_se, s.scan_patience, s.mix_steps)
            corr, kappa, how, curve, mix = point.correction, point.kappa, point.how, point.curve, point.mix
            mix_curve = [m.record() for m in tried]
        else:
            corr = system.correction(mix)
            if s.fixed_kappa is not None:
                kappa, how, curve = float(s.fixed_kappa), "fixed", []
            else:
                kappa, how, curve = calibrate(corr, fr_u, fr_i, cal, kappas, s.target,
                                              s.tolerance_se, s.scan_patience)
        del system
        scanned = {c[0]: (c[1], c[2]) for c in curve}
        chosen = scanned.get(kappa) or cal(*corr.apply(fr_u, fr_i, kappa))
        t3 = time.perf_counter()
        d_fu, d_fi = corr.dense(kappa, r.n_users, r.n_items)
        d_eu, d_ei, cg = solve_ego(model, d_fu, d_fi, s.cg_iters, s.cg_tol)
        with torch.no_grad():
            model.user_embedding.weight += d_eu
            model.item_embedding.weight += d_ei
        fa_u, fa_i = final_embeddings(model)
        after = cal(fa_u, fa_i)
        t4 = time.perf_counter()
        rows_i = torch.from_numpy(corr.item_rows)
        diag = {"kappa": kappa, "kappa_how": how, "target": s.target, "curvature_mix": mix,
                "mix_curve": mix_curve,
                "stat_before": before[0], "stat_before_se": before[1],
                "calibration_power": calibration_power(before[0], before[1], s.target),
                "stat_chosen": chosen[0], "stat_after": after[0], "stat_after_se": after[1],
                "calibration_units": cal.n_units, "curve": [list(c) for c in curve],
                "item_rows": int(corr.item_rows.size), "user_rows": int(corr.user_rows.size),
                "rel_change_items": (float(d_fi[rows_i].norm() / fo_i[rows_i].norm().clamp_min(1e-30))
                                     if rows_i.numel() else 0.0),
                **cg,
                "seconds": {"graphs": t1 - t0, "gradient_curvature": t2 - t1, "calibration": t3 - t2,
                            "realise": t4 - t3, "total": t4 - t0}}
        state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return state, diag


@register
class HIRTwin(Method):
    """``hir-twin``: HIR on a standby twin, served in the model's place.

    A model trained with ``train --twin`` carries a *twin*: the same recipe trained from
    another seed (the training seed +
    :data:`~mmrecun_ray.training.train.TWIN_SEED_OFFSET`, away from the Gold band's seeds)
    on the same data. Both hold what D_f taught them; both get the same HIR
    correction (:class:`HIR`, same settings, each calibrated on its own curve). The corrected
    twin is served, and the corrected served model becomes the new standby, so every request
    swaps the two.

    Why: an attacker holding the model before and after a request scores each pair by how
    much its score dropped (the differencing attack). A retrain re-draws every score the data
    does not pin down, so D_f's drop is hidden among seed-to-seed changes of the never-seen
    pairs; an in-place edit such as HIR leaves those still and D_f's drop stands out. Swapping
    in a twin shows the attacker a seed-to-seed change, as a retrain does. It costs a second
    training run once (``train --twin``), twice HIR's time per request, and a second copy of
    the weights; nothing the twin learned is left uncorrected (both are unlearned).
    """

    name = "hir-twin"
    Settings = HIRSettings
    summary = ("HIR on the model and on its standby twin (train --twin); serve the corrected "
               "twin, keep the corrected model as the next twin")

    def check(self, info: ModelInfo) -> None:
        """HIR's checks, and a one-line ConfigError for a model trained without a twin."""
        HIR(self.settings).check(info)
        if not info.twin:
            raise ConfigError(f"hir-twin: model {info.model!r} has no standby twin (train it with "
                              "`train --twin`); use --method hir")

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        self.check(job.info)
        if job.twin_state is None:
            raise ConfigError(f"hir-twin: {job.model_uri}: model.json describes a twin but the job "
                              "holds no twin weights")
        served = HIR(self.settings).run(replace(job, state=job.twin_state, optimizer=None))
        standby = HIR(self.settings).run(job)
        twin = job.info.twin
        served_seed = int(twin.get("served_seed", job.info.loop_config.get("seed", 0)))
        info = method_info(job, self.name, {"settings": settings_dict(self.settings)})
        info.twin = {"seed": served_seed, "served_seed": int(twin["seed"]),
                     "swaps": int(twin.get("swaps", 0)) + 1}
        extra = {"hir": served.extra.get("hir"), "twin_hir": standby.extra.get("hir"),
                 "reset_users": served.extra.get("reset_users"),
                 "reset_items": served.extra.get("reset_items"), "twin": info.twin}
        return MethodResult(self.name, served.state, info, time.perf_counter() - t0, served.loop,
                            extra, twin_state=standby.state)
