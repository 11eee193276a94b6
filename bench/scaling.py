"""Scaling curve of the one-node design: synthetic presets from tiny to clothing and
2x / 4x clothing, per model, measured in one run.

    python bench/scaling.py --out /work/scratch/scaling
    python bench/scaling.py --presets tiny,baby --models mf,lightgcn --max-steps 5 --ddp ''
    python bench/scaling.py --report /work/scratch/scaling/scaling.json

Per preset, one fresh process (one torch thread by default) loads the dataset and
measures each model in turn; the process is the worker, as in Ray Train's local mode
(``--workers 0``), which runs the same per-step work in-process:

- **s/epoch**: the loop's own per-step work (a forward over the full graph, the model's
  :class:`~mmrecun_ray.objectives.Fit` loss: BPR + auxiliary + L2, backward, Adam), wall
  and process-CPU seconds. Every step costs the same (each one propagates the whole
  graph), so an epoch is timed as ``--max-steps`` steps (batch = the model's training
  default) and scaled by the steps of one full pass: ``s/epoch = median s/step x
  ceil(train pairs / batch)``. The first epoch (also capped) is a warm-up; the table
  gives the median over ``--epochs`` timed epochs. ``on_epoch_start`` runs before every
  epoch (FREEDOM draws its pruned graph there). Building the model and its first forward
  (FREEDOM's kNN item-item graph, O(items^2 x feature dim)) is timed apart as *build s*.
- **peak RSS**: the process's peak resident set while the model is built and trained
  (``psutil`` every 50 ms, :func:`~mmrecun_ray.unlearning.audit.track_peak_rss`), the
  loaded dataset included, and the process's lifetime ``ru_maxrss``; beside them the
  analytic size of the ID-embedding tables with their gradient and Adam's two moments
  (4 x 4 bytes x (users + items) x dim). The growth tables split it per user/item node
  into the per-rank replica (what the model's phase added: every DDP rank holds it) and
  the shared dataset above the bare interpreter (Ray's object store holds it once per
  node).
- **eval s**: validation Recall@20, full ranking with training items masked
  (``evaluate_embeddings``: what ``train`` reports), one forward included, for
  ``--eval-users`` random validation users with the ranking time scaled to all of them.
  Ranking is model-independent once the embeddings exist, so it runs once per preset
  (the first model of ``--models``).
- **unlearn s**: the default unlearning method (``hir`` when registered, else ``redraw``)
  on a ``users:5%`` request, started from the timed model's weights and Adam state (this
  times the method, not its quality): resolving the request into D_f / D_r, then the
  method's ``run``. For users requests ``redraw`` re-draws the rows only D_f trained and
  starts no worker group, so no Ray is started.

``--ddp PRESET:MODEL:WORKERS`` then runs one model through Ray Train itself, local mode
and DDP, full epochs, with the peak RSS of the largest worker process.

Last, the fitted growth (log-log least squares over the presets with at least
``--fit-min-nodes`` users+items): CPU s/epoch and s/step against train pairs, per-rank
and shared memory against users+items, evaluation against users x items; and where one
node of each ``--node-gib`` stops (with one rank and with ``--ranks``), with the fitted
single-core hours per epoch there.

Datasets are generated once with ``prepare_synthetic`` (seed ``--seed``) under
``<out>/data`` and reused. Timings on a shared machine measure the load too; CPU seconds
are the steadier figure. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.data.synthetic import PRESETS, SyntheticSpec  # noqa: E402

DEFAULT_PRESETS = "tiny,baby,sports,clothing,clothing-2x,clothing-4x"
GIB = 1024 ** 3


def preset_spec(name: str) -> SyntheticSpec:
    """A package preset, or ``<preset>-<k>x``: users, items and interactions times ``k``
    (everything else, feature dimensions included, as the preset's)."""
    if "-" not in name:
        return PRESETS[name]
    base, factor = name.rsplit("-", 1)
    k = int(factor.rstrip("x"))
    b = PRESETS[base]
    return dataclasses.replace(b, name=name, n_users=b.n_users * k, n_items=b.n_items * k,
                               n_interactions=b.n_interactions * k)


def dataset_uri(out: Path, preset: str, seed: int) -> Path:
    return out / "data" / f"{preset}-s{seed}"


def ensure_dataset(out: Path, preset: str, seed: int) -> tuple[Path, float | None]:
    """The prepared dataset's folder and the seconds spent preparing it (None: reused)."""
    from mmrecun_ray.data.synthetic import prepare_synthetic
    uri = dataset_uri(out, preset, seed)
    if (uri / "manifest.json").exists():
        return uri, None
    t0 = time.perf_counter()
    prepare_synthetic(preset_spec(preset), seed, uri, overwrite=True)
    return uri, time.perf_counter() - t0


class Clock:
    """Wall and process-CPU seconds of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


# -- one (preset, model), run in its own process ------------------------------------------
def measure_preset(data: Path, models: list[str], epochs: int, max_steps: int, seed: int,
                   do_unlearn: bool, eval_users: int) -> list[dict[str, Any]]:
    """Every figure of each model on one dataset, loaded once (evaluation with the first)."""
    import gc

    import torch_geometric  # noqa: F401 - imported now, so the baseline below counts it

    import mmrecun_ray.evaluation.evaluate  # noqa: F401
    import mmrecun_ray.training.loop  # noqa: F401
    import mmrecun_ray.unlearning.methods  # noqa: F401
    from mmrecun_ray.data.dataset import load_dataset
    rss_import = _rss_mb()
    with Clock() as load_t:
        ds = load_dataset(str(data))
    rss_data = _rss_mb()
    out = []
    for k, name in enumerate(models):
        rec = measure_one(ds, data, name, epochs, max_steps, seed, k == 0, do_unlearn, eval_users)
        rec.update({"load_s": load_t.wall, "rss_import_mb": rss_import, "rss_data_mb": rss_data,
                    "train_peak_rss_mb": rec["train_peak_abs_mb"]})
        out.append(rec)
        gc.collect()
    return out


def measure_one(ds: Any, data: Path, model_name: str, epochs: int, max_steps: int, seed: int,
                do_eval: bool, do_unlearn: bool, eval_users: int) -> dict[str, Any]:
    """Every figure of one (dataset, model); see the module docstring."""
    from mmrecun_ray.training.loop import View, build_start, make_sampler
    from mmrecun_ray.training.train import loop_inputs, recipe
    from mmrecun_ray.unlearning.audit import track_peak_rss

    cfg, fit = recipe(model_name, {"seed": seed})
    inputs = loop_inputs(ds)
    n_train = len(ds.train)
    steps_per_epoch = -(-n_train // cfg.batch_size)
    dim = int(cfg.params.get("embedding_dim", 64))
    rec: dict[str, Any] = {
        "model": model_name, "n_users": ds.n_users, "n_items": ds.n_items, "train_pairs": n_train,
        "batch": cfg.batch_size, "steps_per_epoch": steps_per_epoch, "dim": dim,
        "features_mb": sum(f.nbytes for f in ds.features.values()) / 2 ** 20,
        "id_tables_adam_mb": 4 * 4 * (ds.n_users + ds.n_items) * dim / 2 ** 20}
    device = torch.device("cpu")
    users = inputs.graph_edges[0]
    items = inputs.graph_edges[1]
    rng = np.random.default_rng(seed)
    with track_peak_rss(0.05) as peak:
        with Clock() as build_t:
            model, reset = build_start(cfg, fit, inputs, device)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
            view = View(inputs, cfg, 0, 1, device, make_sampler(inputs, seed * 1000))
            model.train()
            model.on_epoch_start(0, seed)
            with torch.no_grad():
                model()  # lazily built graphs (FREEDOM's kNN item graph) land here
        rec["build_s"] = build_t.wall
        walls, cpus = [], []
        for epoch in range(epochs + 1):
            model.on_epoch_start(epoch, seed)
            idx = rng.permutation(n_train)
            step_w, step_c = [], []
            for s in range(max_steps):
                sel = idx[(s * cfg.batch_size) % n_train:][:cfg.batch_size]
                batch = {"user_id": torch.from_numpy(users[sel]), "item_id": torch.from_numpy(items[sel])}
                with Clock() as st:
                    out = model()
                    loss = fit.loss(model, out, batch, view)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                step_w.append(st.wall)
                step_c.append(st.cpu)
            if epoch:  # epoch 0 is the warm-up
                walls.append(statistics.median(step_w) * steps_per_epoch)
                cpus.append(statistics.median(step_c) * steps_per_epoch)
    rec.update({"epoch_wall_s": statistics.median(walls), "epoch_cpu_s": statistics.median(cpus),
                "step_wall_s": statistics.median(walls) / steps_per_epoch,
                "train_peak_abs_mb": peak.peak_abs_mb, "loss": float(loss.detach())})
    if do_eval:
        rec.update(time_evaluation(model, ds, eval_users, seed))
    if do_unlearn:
        rec.update(time_unlearning(model, opt, cfg, fit, ds, data, seed))
    rec["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rec


def time_evaluation(model: torch.nn.Module, ds: Any, max_users: int, seed: int) -> dict[str, Any]:
    """Validation Recall@20, full ranking over all items with training items masked, for
    ``max_users`` validation users drawn at random (all of them when fewer); the ranking
    time is scaled to every validation user (its cost is the same per user: one row of
    ``n_items`` scores, masked, top-k), the forward is counted once."""
    from mmrecun_ray.data.schema import Interactions
    from mmrecun_ray.evaluation.evaluate import embeddings, evaluate_embeddings
    with Clock() as fwd:
        u, i = embeddings(model)
    everyone = np.unique(ds.valid.user)
    chosen = everyone
    if everyone.size > max_users:
        chosen = np.sort(np.random.default_rng(seed).choice(everyone, max_users, replace=False))
    sel = np.isin(ds.valid.user, chosen)
    with Clock() as rank:
        m = evaluate_embeddings(u, i, ds, Interactions(ds.valid.user[sel], ds.valid.item[sel]), (20,))
    scale = everyone.size / chosen.size
    return {"eval_wall_s": fwd.wall + rank.wall * scale, "eval_cpu_s": fwd.cpu + rank.cpu * scale,
            "eval_forward_s": fwd.wall, "eval_users": int(chosen.size),
            "eval_users_all": int(everyone.size), "eval_extrapolated": bool(scale > 1),
            "valid_recall@20": m["recall@20"]}


def default_method() -> str:
    """``hir`` where this checkout registers it, else ``redraw``."""
    from mmrecun_ray.unlearning.methods import METHODS
    return "hir" if "hir" in METHODS else "redraw"


def time_unlearning(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: Any, fit: Any,
                    ds: Any, data: Path, seed: int, spec: str = "users:5%") -> dict[str, Any]:
    """Resolve ``spec`` and run the default method on it, in this process (local mode)."""
    import tempfile

    from mmrecun_ray.training.arrays import to_numpy
    from mmrecun_ray.training.export import ModelInfo
    from mmrecun_ray.training.runner import Scaling
    from mmrecun_ray.unlearning.methods import Job, build_methods
    from mmrecun_ray.unlearning.requests import parse_request, resolve_request

    name = default_method()
    info = ModelInfo(model=cfg.model, params=cfg.params, n_users=ds.n_users, n_items=ds.n_items,
                     modalities={m: int(f.shape[1]) for m, f in ds.features.items()},
                     data_uri=str(data), manifest_hash=ds.manifest.content_hash(),
                     loop_config=cfg.to_dict(), objective=fit.to_dict())
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    with Clock() as resolve_t:
        fset = resolve_request(parse_request(spec, seed=seed), ds)
    scratch = tempfile.mkdtemp(prefix="scaling-unlearn-")
    job = Job(model_uri=str(data), info=info, state=state, optimizer=to_numpy(opt.state_dict()),
              fset=fset, retain_uri=os.path.join(scratch, "retain"), retain_data=None,
              scaling=Scaling(workers=0, storage_uri=scratch), reference_valid_recall=math.nan)
    method = build_methods([name], {})[0]
    with Clock() as run_t:
        res = method.run(job)
    return {"unlearn_method": name, "unlearn_request": spec, "forget_pairs": len(fset.forget),
            "unlearn_resolve_s": resolve_t.wall, "unlearn_run_s": run_t.wall,
            "unlearn_wall_s": resolve_t.wall + run_t.wall, "unlearn_cpu_s": resolve_t.cpu + run_t.cpu,
            "unlearn_steps": res.steps}


def measure_ddp(data: Path, model_name: str, workers: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    """The same model through Ray Train: local mode, then ``workers`` DDP ranks (one CPU,
    one torch thread each), full epochs; ``epoch_seconds`` as the loop reports it (steps
    only, median after the first epoch) and the peak RSS of the largest Ray Train worker
    process (sampled every 0.1 s; its RSS counts the object-store pages it touched)."""
    import tempfile
    import threading

    import psutil
    import ray

    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.training.runner import Scaling, ensure_ray, run_loop
    from mmrecun_ray.training.train import loop_inputs, recipe, train_datasets

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(address="local", _temp_dir="/tmp/ray_scaling", object_store_memory=400_000_000,
             include_dashboard=False)
    ensure_ray()
    ds = load_dataset(str(data))
    cfg, fit = recipe(model_name, {"seed": seed, "epochs": epochs + 1, "patience": 10 ** 6,
                                   "checkpoint_every": 10 ** 6, "report_every": 10 ** 6})
    inputs = loop_inputs(ds)
    datasets = train_datasets(str(data))
    out = []
    for w in (0, workers):
        peak = {"mb": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for c in psutil.Process().children(recursive=True):
                    try:
                        if "RayTrainWorker" in " ".join(c.cmdline()):
                            peak["mb"] = max(peak["mb"], c.memory_info().rss / 2 ** 20)
                    except psutil.Error:
                        pass
                stop.wait(0.1)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        with Clock() as run_t:
            res = run_loop(cfg, fit, inputs, datasets,
                           Scaling(workers=w, cpus_per_worker=1, storage_uri=tempfile.mkdtemp(prefix="scaling-ddp-")),
                           name="bench-scaling")
        stop.set()
        th.join()
        ep = [h["epoch_seconds"] for h in res.history]
        ev = [h["eval_seconds"] for h in res.history if "eval_seconds" in h]
        out.append({"model": model_name, "workers": w, "epoch_s": statistics.median(ep[1:] or ep),
                    "eval_s": statistics.median(ev) if ev else None, "run_wall_s": run_t.wall,
                    "worker_peak_rss_mb": peak["mb"] or None, "steps": res.steps,
                    "epochs": res.epochs_run})
    ray.shutdown()
    return out


# -- driver -------------------------------------------------------------------------------
def fit_slope(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``log y = a + b log x``; returns ``(b, a)``."""
    b, a = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(b), float(a)


def _f(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| preset | users | items | train pairs | model | steps/epoch | s/epoch wall | "
          "s/epoch CPU | build s | peak RSS MB (train) | ru_maxrss MB | tables+Adam MB | "
          "eval s wall / CPU (R@20) | unlearn s wall / CPU |")
    print("|---" * 14 + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | — | — | — | {r['model']} | skipped: {r['error']} |"
                  + " |" * 8)
            continue
        ev = (f"{r['eval_wall_s']:.1f} / {r['eval_cpu_s']:.1f}{'*' if r['eval_extrapolated'] else ''} "
              f"({r['valid_recall@20']:.3f})" if "eval_wall_s" in r else "—")
        un = (f"{r['unlearn_wall_s']:.2f} / {r['unlearn_cpu_s']:.2f}" if "unlearn_wall_s" in r else "—")
        print(f"| {r['preset']} | {r['n_users']:,} | {r['n_items']:,} | {r['train_pairs']:,} | "
              f"{r['model']} | {r['steps_per_epoch']} | {r['epoch_wall_s']:.2f} | "
              f"{r['epoch_cpu_s']:.2f} | {r['build_s']:.1f} | {r['train_peak_rss_mb']:,.0f} | "
              f"{r['ru_maxrss_mb']:,.0f} | {r['id_tables_adam_mb']:,.1f} | {ev} | {un} |")


def _per_node(r: dict[str, Any]) -> tuple[float, float]:
    """Bytes per user/item node: ``(replicated, shared)``. Replicated: what the model's
    phase added to the process (model, gradients, Adam, graph operators, activations,
    sampler), held by every DDP rank. Shared: the loaded dataset above the bare
    interpreter (features, pairs), which Ray's object store holds once per node."""
    n = r["n_users"] + r["n_items"]
    return ((r["train_peak_rss_mb"] - r["rss_data_mb"]) * 2 ** 20 / n,
            (r["rss_data_mb"] - r["rss_import_mb"]) * 2 ** 20 / n)


def growth_laws(ok: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Model -> ``(b, a)`` of ``CPU s/epoch = exp(a) x train_pairs^b``."""
    laws = {}
    for model in dict.fromkeys(r["model"] for r in ok):
        mine = [r for r in ok if r["model"] == model]
        if len(mine) >= 2:
            laws[model] = fit_slope([r["train_pairs"] for r in mine], [r["epoch_cpu_s"] for r in mine])
    return laws


def print_growth(rows: list[dict[str, Any]], node_gib: list[float], min_nodes: int,
                 ranks: int) -> None:
    ok = [r for r in rows if "error" not in r and r["n_users"] + r["n_items"] >= min_nodes]
    print(f"\nFitted growth (log-log least squares over the presets measured with at least "
          f"{min_nodes:,} users+items):\n")
    print("| model | presets | CPU s/epoch ~ pairs^b | CPU s/step ~ pairs^b | "
          "per-rank RSS ~ (users+items)^b | shared data RSS ~ (users+items)^b |")
    print("|---|---|---|---|---|---|")
    laws = growth_laws(ok)
    for model, (b_ep, _) in laws.items():
        mine = [r for r in ok if r["model"] == model]
        e = [r["train_pairs"] for r in mine]
        n = [r["n_users"] + r["n_items"] for r in mine]
        b_st, _ = fit_slope(e, [r["epoch_cpu_s"] / r["steps_per_epoch"] for r in mine])
        b_m, _ = fit_slope(n, [max(_per_node(r)[0], 1.0) * x for r, x in zip(mine, n)])
        b_d, _ = fit_slope(n, [max(_per_node(r)[1], 1.0) * x for r, x in zip(mine, n)])
        print(f"| {model} | {len(mine)} | {b_ep:.2f} | {b_st:.2f} | {b_m:.2f} | {b_d:.2f} |")
    ev = [r for r in ok if "eval_wall_s" in r]
    if len(ev) >= 2:
        b, _ = fit_slope([r["n_users"] * r["n_items"] for r in ev], [r["eval_cpu_s"] for r in ev])
        print(f"\nEvaluation CPU s ~ (users x items)^{b:.2f} over {len(ev)} presets.")
    print(f"\nWhere one node stops, per model from its largest preset measured, extrapolated "
          f"linearly in users+items at the same density and feature dims: node memory = shared "
          f"data + ranks x per-rank replica (KiB per user/item node); the 1-core hours per "
          f"epoch of one rank there from the fitted law; last column: the ID tables with "
          f"gradient and Adam moments alone (16 bytes x dim per node) in that memory:\n")
    print(f"| model | from preset | per-rank KiB/node | shared KiB/node | node GiB | "
          f"users+items, 1 rank | 1-core h/epoch there | users+items, {ranks} ranks | "
          f"tables+Adam only, 1 rank |")
    print("|---" * 9 + "|")
    for model in dict.fromkeys(r["model"] for r in ok):
        big = max((r for r in ok if r["model"] == model), key=lambda r: r["n_users"] + r["n_items"])
        rank_b, shared_b = _per_node(big)
        density = big["train_pairs"] / (big["n_users"] + big["n_items"])
        for g in node_gib:
            n1 = g * GIB / (shared_b + rank_b)
            nr = g * GIB / (shared_b + ranks * rank_b)
            hours = "—"
            if model in laws:
                b, a = laws[model]
                hours = f"{math.exp(a) * (n1 * density) ** b / 3600:,.1f}"
            print(f"| {model} | {big['preset']} | {rank_b / 1024:.1f} | {shared_b / 1024:.1f} | "
                  f"{g:g} | {n1 / 1e6:,.1f} M | {hours} | {nr / 1e6:,.1f} M | "
                  f"{g * GIB / (16 * big['dim']) / 1e6:,.0f} M |")


def run_child(flags: list[str], args: argparse.Namespace, models: list[str]
              ) -> tuple[list[dict[str, Any]], float]:
    """Run this script as a measuring child; its ``RESULT`` records (or one error record
    per model) and the CPU seconds it used."""
    cmd = [sys.executable, __file__, *flags, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        got = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not got:
            got = [{"model": m, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
                   for m in models]
    except subprocess.TimeoutExpired:
        got = [{"model": m, "error": f"over --timeout {args.timeout} s"} for m in models]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{flags[0]} {flags[1]}: {time.perf_counter() - t0:.0f} s", flush=True)
    return got, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def print_ddp(recs: list[dict[str, Any]]) -> None:
    if not recs:
        return
    print("\nThrough Ray Train (full epochs, steps only; 1 CPU and 1 torch thread per rank):\n")
    print("| preset | model | mode | s/epoch | eval s | largest worker peak RSS MB | run wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in recs:
        if "error" in r:
            print(f"| {r.get('preset')} | {r['model']} | failed: {r['error']} | | | | |")
            continue
        mode = "local mode" if r["workers"] == 0 else f"DDP x{r['workers']}"
        print(f"| {r['preset']} | {r['model']} | {mode} | {r['epoch_s']:.2f} | {_f(r['eval_s'], '.2f')} | "
              f"{_f(r['worker_peak_rss_mb'], ',.0f')} | {r['run_wall_s']:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=DEFAULT_PRESETS,
                   help=f"comma-separated presets, '<preset>-<k>x' scales one (default: {DEFAULT_PRESETS})")
    p.add_argument("--models", default="mf,lightgcn,freedom",
                   help="comma-separated models, smallest first (each one's peak RSS includes what "
                        "the one before left in the heap); the first also times evaluation "
                        "(default: mf,lightgcn,freedom)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up (default: 3)")
    p.add_argument("--max-steps", type=int, default=4,
                   help="steps timed per epoch; s/epoch = median s/step x steps of a full pass (default: 4)")
    p.add_argument("--eval-users", type=int, default=5_000,
                   help="validation users ranked (random, all when fewer); the ranking time is "
                        "scaled to all of them, marked * in the table (default: 5000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per measuring process (default: 1: CPU seconds "
                        "then count one core's work, steadier on a shared machine)")
    p.add_argument("--skip", default="freedom@clothing-4x",
                   help="comma-separated MODEL@PRESET pairs not run (default: FREEDOM on 4x "
                        "clothing: its O(items^2 x feature dim) kNN build; '' runs all)")
    p.add_argument("--no-unlearn", default="",
                   help="comma-separated presets where unlearning is not timed (default: none)")
    p.add_argument("--node-gib", default="24,128,512",
                   help="memory per rank (GiB) to extrapolate the stopping size to (default: 24,128,512)")
    p.add_argument("--ranks", type=int, default=8,
                   help="DDP ranks per node of the second stopping column (default: 8)")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the tables of a finished run's scaling.json and exit (measures nothing)")
    p.add_argument("--fit-min-nodes", type=int, default=10_000,
                   help="presets with fewer users+items stay out of the fits (their times and "
                        "memory are start-up noise; default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="dataset / model / request seed (default: 0)")
    p.add_argument("--out", default="runs/bench-scaling",
                   help="output folder: data/ (generated once, reused) and scaling.json")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per preset process (default: 1200)")
    p.add_argument("--ddp", default="baby:lightgcn:2", metavar="PRESET:MODEL:WORKERS",
                   help="also run MODEL on PRESET through Ray Train, local mode and WORKERS DDP "
                        "ranks, full epochs ('' skips; default: baby:lightgcn:2)")
    p.add_argument("--ddp-one", default=None, help=argparse.SUPPRESS)  # DATA:MODEL:WORKERS (child)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # DATA:MODELS:UNLEARN (child)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.ddp_one:
        data, model, workers = args.ddp_one.rsplit(":", 2)
        for rec in measure_ddp(Path(data), model, int(workers), args.epochs, args.seed):
            print("RESULT " + json.dumps(rec), flush=True)
        return 0
    if args.one:
        data, names, do_unlearn = args.one.rsplit(":", 2)
        for rec in measure_preset(Path(data), names.split(","), args.epochs, args.max_steps,
                                  args.seed, do_unlearn == "1", args.eval_users):
            print("RESULT " + json.dumps(rec), flush=True)
        return 0
    if args.report:
        rows = json.loads(Path(args.report).read_text())
        print_table(rows)
        ddp_json = Path(args.report).with_name("ddp.json")
        print_ddp(json.loads(ddp_json.read_text()) if ddp_json.exists() else [])
        print_growth(rows, [float(g) for g in args.node_gib.split(",")], args.fit_min_nodes, args.ranks)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    skip = {s for s in args.skip.split(",") if s}
    no_unlearn = {s for s in args.no_unlearn.split(",") if s}
    load0, t_all, c_all = os.getloadavg()[0], time.perf_counter(), 0.0
    print(f"measured under load: {os.cpu_count()} CPUs, load average {load0:.1f}, torch "
          f"{torch.__version__} {torch.get_num_threads()} threads, {args.epochs} timed epochs x "
          f"{args.max_steps} steps after 1 warm-up, unlearning method {default_method()} on users:5%",
          flush=True)
    rows: list[dict[str, Any]] = []
    for preset in filter(None, args.presets.split(",")):
        uri, prep_s = ensure_dataset(out, preset, args.seed)
        if prep_s is not None:
            print(f"{preset}: dataset prepared in {prep_s:.1f} s", flush=True)
        mine = [m for m in models if f"{m}@{preset}" not in skip]
        rows += [{"preset": preset, "model": m, "error": "--skip"} for m in models if m not in mine]
        if not mine:
            continue
        got, cpu = run_child(["--one", f"{uri}:{','.join(mine)}:{int(preset not in no_unlearn)}",
                              "--max-steps", str(args.max_steps), "--eval-users", str(args.eval_users),
                              "--threads", str(args.threads)], args, mine)
        c_all += cpu
        for rec in got:
            rec["preset"] = preset
            rows.append(rec)
            msg = rec.get("error") or (f"{rec['epoch_wall_s']:.2f} s/epoch wall, "
                                       f"{rec['epoch_cpu_s']:.2f} CPU, peak {rec['train_peak_rss_mb']:,.0f} MB")
            print(f"{preset} {rec['model']}: {msg}", flush=True)
        (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    ddp: list[dict[str, Any]] = []
    if args.ddp:
        preset, model, workers = args.ddp.split(":")
        uri, _ = ensure_dataset(out, preset, args.seed)
        ddp, cpu = run_child(["--ddp-one", f"{uri}:{model}:{workers}"], args, [model])
        c_all += cpu
        for rec in ddp:
            rec["preset"] = preset
        (out / "ddp.json").write_text(json.dumps(ddp, indent=1))
    print(f"\nmeasured under load (load average {load0:.1f} -> {os.getloadavg()[0]:.1f}); bench "
          f"{time.perf_counter() - t_all:.0f} s wall, {c_all:.0f} s CPU in the measuring processes\n")
    print_table(rows)
    print_ddp(ddp)
    print_growth(rows, [float(g) for g in args.node_gib.split(",")], args.fit_min_nodes, args.ranks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
