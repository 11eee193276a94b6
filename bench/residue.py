"""Where an unlearned model's residue sits among the forgotten pairs, by how well the trained
model fitted each pair (a diagnostic of one ``compare`` folder; nothing is retrained).

    python bench/residue.py --compare runs/compare --method hir

For every D_f pair (u, i) of the compare's request: its within-user percentile among
``--candidates`` uniform items (fixed draw, the same for every model) and whether it is in
u's full top-20 (retain training items masked, as forget Recall@20 ranks). Pairs are binned
by the trained model's percentile (over the original graph: how well it fitted the pair).
Per bin: the method's percentile minus the Gold seeds' mean (paired over pairs, ± s.e.), and
the top-20 rate of the trained model, the method and the Golds (mean, min-max). A method
whose correction matched a retrain pair by pair reads 0 in every bin.

A second table splits every bin at its median *retain support*: the pair's within-user
percentile, among the same candidates, of an item-kNN score computed on the retain train
pairs alone, ``sum_{j in R(u)} cos(i, j)`` (co-occurrence cosine, no D_f pair, no model). It
shows whether the residue sits in the pairs the rest of the data would predict (high support)
or in those only D_f taught the model (low support). The item-item matrix is dense:
``n_items^2`` floats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.data.schema import RecDataset  # noqa: E402
from mmrecun_ray.errors import ConfigError  # noqa: E402
from mmrecun_ray.evaluation.evaluate import embeddings, train_csr  # noqa: E402
from mmrecun_ray.evaluation.ranking import full_ranking_topk  # noqa: E402
from mmrecun_ray.training.export import load_model  # noqa: E402
from mmrecun_ray.unlearning.audit import K  # noqa: E402  (the audit's list length)
from mmrecun_ray.unlearning.lifecycle import concrete_request  # noqa: E402
from mmrecun_ray.unlearning.requests import ForgetSet, resolve_request  # noqa: E402


def pair_percentiles(user_emb: torch.Tensor, item_emb: torch.Tensor, pu: np.ndarray,
                     pi: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``(P,)`` share of each pair's ``cand`` row ``(P, C)`` scored below the pair
    (``pu``, ``pi`` ``(P,)``)."""
    u = user_emb.double()[torch.from_numpy(pu)]
    s = (u * item_emb.double()[torch.from_numpy(pi)]).sum(1)
    sc = torch.einsum("pd,pcd->pc", u, item_emb.double()[torch.from_numpy(cand)])
    return (sc < s[:, None]).double().mean(1).numpy()


def top_hits(user_emb: torch.Tensor, item_emb: torch.Tensor, fset: ForgetSet,
             retain_csr: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(P,)`` bool: D_f pair in its user's top-20 over the catalogue, retain training
    items masked (forget Recall@20's ranking). ``retain_csr``: ``train_csr(fset.retain)``
    when the caller already holds it."""
    pu, pi = fset.forget.user.astype(np.int64), fset.forget.item.astype(np.int64)
    users = np.unique(pu)
    csr = train_csr(fset.retain) if retain_csr is None else retain_csr
    top = full_ranking_topk(user_emb, item_emb, users, csr, K)
    row = np.searchsorted(users, pu)
    return (top[row] == pi[:, None]).any(1)


def support_percentiles(retain: RecDataset, pu: np.ndarray, pi: np.ndarray,
                        cand: np.ndarray, batch: int = 512) -> np.ndarray:
    """``(P,)`` within-user percentile (ties count 1/2) of each pair's item-kNN score among
    its ``cand`` row ``(P, C)``. Score ``k(u, i) = sum_{j in R(u)} cos(i, j)``: ``R(u)`` the
    user's retain train items, ``cos`` the co-occurrence cosine over retain train users
    (diagonal zeroed)."""
    n_u, n_i = retain.n_users, retain.n_items
    u_idx = torch.from_numpy(retain.train.user.astype(np.int64))
    i_idx = torch.from_numpy(retain.train.item.astype(np.int64))
    deg = torch.bincount(i_idx, minlength=n_i).clamp_min(1).float()
    norm = torch.sparse_coo_tensor(torch.stack([u_idx, i_idx]), deg[i_idx].rsqrt(), (n_u, n_i),
                                   check_invariants=True).coalesce()
    cols = [torch.arange(c, min(c + batch, n_i)) for c in range(0, n_i, batch)]
    sim = torch.cat([torch.sparse.mm(norm.t(), norm.index_select(1, c).to_dense()) for c in cols],
                    1)                                                   # (n_i, n_i) cosines
    sim.fill_diagonal_(0.0)
    indptr, items = train_csr(retain)
    out = np.empty(pu.size)
    order = np.argsort(pu, kind="stable")
    for s in range(0, pu.size, batch):
        rows = order[s:s + batch]
        users, inv = np.unique(pu[rows], return_inverse=True)
        x = torch.zeros(users.size, n_i)
        for r, u in enumerate(users):
            x[r, torch.from_numpy(items[indptr[u]:indptr[u + 1]].astype(np.int64))] = 1.0
        k = (x @ sim)[torch.from_numpy(inv)]                              # (B, n_i)
        own = k.gather(1, torch.from_numpy(pi[rows].astype(np.int64))[:, None])
        other = k.gather(1, torch.from_numpy(cand[rows].astype(np.int64)))
        out[rows] = ((other < own).double().mean(1) + 0.5 * (other == own).double().mean(1)).numpy()
    return out


def _models(compare: Path, method: str) -> tuple[dict, list[str], str]:
    """``(metrics.json, Gold model folders, the method's model folder)``."""
    path = compare / "metrics.json"
    if not path.exists():
        raise ConfigError(f"{path}: not found (a finished compare folder has one)")
    payload = json.loads(path.read_text())
    rows = {r["method"]: r for r in payload["methods"]}
    golds = [r["model_uri"] for r in payload["methods"] if r["role"] == "gold"]
    if method not in rows or not rows[method].get("model_uri"):
        raise ConfigError(f"{path}: no model of method {method!r}; methods with a model: "
                          f"{sorted(m for m, r in rows.items() if r.get('model_uri'))}")
    return payload, golds, rows[method]["model_uri"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", required=True, type=Path, help="a finished compare folder")
    p.add_argument("--method", default="hir", help="the method whose model is read (default: hir)")
    p.add_argument("--seed", type=int, default=0,
                   help="the compare's --seed (re-draws the same request; checked by its id)")
    p.add_argument("--bins", type=int, default=5, help="bins of equal pair count (default: 5)")
    p.add_argument("--candidates", type=int, default=300,
                   help="uniform items per pair for its percentile (default: 300)")
    args = p.parse_args()
    try:
        payload, golds, mdir = _models(args.compare, args.method)
        req = concrete_request(payload["request"]["spec"], args.seed, payload["data"])
        if req.request_id() != payload["request"]["id"]:
            raise ConfigError(f"{args.compare}/metrics.json: request {payload['request']['spec']!r} "
                              f"with --seed {args.seed} is not the compared one (id "
                              f"{req.request_id()} != {payload['request']['id']}); pass its --seed")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    original = load_dataset(payload["data"], exclude_requests={req.request_id()})
    fset = resolve_request(req, original)
    pu, pi = fset.forget.user.astype(np.int64), fset.forget.item.astype(np.int64)
    cand = np.random.default_rng(0).integers(0, fset.retain.n_items, size=(pu.size, args.candidates))
    views = {"trained": embeddings(load_model(payload["model_uri"], original)[0]),
             args.method: embeddings(load_model(mdir, fset.retain)[0])}
    gold_views = [embeddings(load_model(g, fset.retain)[0]) for g in golds]
    pct = {k: pair_percentiles(*v, pu, pi, cand) for k, v in views.items()}
    retain_csr = train_csr(fset.retain)
    hit = {k: top_hits(*v, fset, retain_csr) for k, v in views.items()}
    gold_pct = np.mean([pair_percentiles(*v, pu, pi, cand) for v in gold_views], 0)
    gold_hit = np.stack([top_hits(*v, fset, retain_csr) for v in gold_views]).astype(float)
    parts = np.array_split(np.argsort(pct["trained"], kind="stable"), args.bins)

    def gap(idx: np.ndarray) -> str:
        """The method's percentile minus the Golds' mean over pairs ``idx``, ``mean ± s.e.``"""
        d = pct[args.method][idx] - gold_pct[idx]
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
        return f"{d.mean():+.4f} ± {se:.4f}"
    print(f"{args.compare}: {payload['request']['spec']}, {pu.size} pairs, {len(golds)} Golds, "
          f"method {args.method}\n")
    print(f"| trained pct (bin) | pairs | {args.method} - Gold pct | top-20: trained | "
          f"{args.method} | Gold mean (min-max) |")
    print("|---|---|---|---|---|---|")
    for part in parts:
        g = gold_hit[:, part].mean(1)
        lo, hi = pct["trained"][part].min(), pct["trained"][part].max()
        print(f"| {lo:.3f}-{hi:.3f} | {part.size} | {gap(part)} "
              f"| {hit['trained'][part].mean():.3f} | {hit[args.method][part].mean():.3f} "
              f"| {g.mean():.3f} ({g.min():.3f}-{g.max():.3f}) |")
    support = support_percentiles(fset.retain, pu, pi, cand)
    gold_rate = gold_hit.mean(0)
    print("\nBy retain support (item-kNN on the retain train pairs), each bin split at its median:\n")
    print(f"| trained pct (bin) | support half | pairs | {args.method} - Gold pct | top-20: "
          f"{args.method} | Gold mean |")
    print("|---|---|---|---|---|---|")
    for part in parts:
        cut = np.median(support[part])
        lo, hi = pct["trained"][part].min(), pct["trained"][part].max()
        for name, half in (("low", part[support[part] < cut]), ("high", part[support[part] >= cut])):
            if half.size == 0:
                continue
            print(f"| {lo:.3f}-{hi:.3f} | {name} | {half.size} | {gap(half)} "
                  f"| {hit[args.method][half].mean():.3f} | {gold_rate[half].mean():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
