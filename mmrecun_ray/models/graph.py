"""Graph and feature utilities shared by the recommenders.

Everything here is device-agnostic: results live on the device of the inputs. Sparse
matrices are stored as coalesced ``torch.sparse_coo`` tensors; products with dense
embeddings that need gradients go through :class:`SparseOperator`, PyG's ``EdgeIndex``
matmul (a CSR forward and, for the backward, its cached CSC transpose: about 3x faster on
CPU than ``torch.sparse.mm``'s COO backward, which transposes and coalesces the matrix at
every step). Normalisation uses torch-geometric's ``gcn_norm`` (see :func:`gcn_norm`),
which falls back to native torch scatter when torch-scatter is absent.

Conventions:
    - user-item graph: ``train_edges`` is ``(2, E)`` int64, row 0 users, row 1 items. The
      bipartite graph has ``N = n_users + n_items`` nodes; item ``i`` is node
      ``n_users + i``.
    - item-item kNN graph: row ``i`` holds the ``k`` most cosine-similar items of ``i``
      (itself included, as in MMRec), normalised by the row degree on both sides
      (``w_ij / sqrt(d_i d_j)``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from mmrecun_ray.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def gcn_norm(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
             flow: str = "source_to_target") -> tuple[torch.Tensor, torch.Tensor]:
    """PyG's ``gcn_norm`` without self-loops: ``w_ij / sqrt(d_i d_j)``, degrees summed over
    the target (``source_to_target``) or source (``target_to_source``) index.

    torch-geometric is imported on first use (its import takes seconds and emits
    ``torch.jit`` deprecation warnings, which are silenced here).
    """
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm
    index, weight = pyg_gcn_norm(edge_index, edge_weight, num_nodes=num_nodes,
                                 add_self_loops=False, flow=flow)
    return index, weight


class SparseOperator:
    """A fixed sparse ``(n, m)`` matrix ``A`` for ``A @ X`` with dense ``(m, d)`` ``X`` that
    needs gradients: PyG's ``EdgeIndex.matmul`` (CSR forward, cached CSC for ``A^T @ G``).

    Args:
        mat: coalesced sparse COO ``(n, m)`` tensor (its values get no gradient).
    Attributes:
        source: ``mat`` itself (the cache key of :meth:`DerivedTensorsMixin.operator`).
    """

    def __init__(self, mat: torch.Tensor) -> None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch_geometric import EdgeIndex
        # EdgeIndex.matmul builds CSR views at every product; torch warns about them once
        for message in ("Sparse CSR tensor support is in beta",
                        "Sparse invariant checks are implicitly disabled"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        mat = mat.coalesce()
        self.source = mat
        self.shape = (int(mat.shape[0]), int(mat.shape[1]))
        self.value = mat.values().detach()
        # a coalesced COO index is sorted by row, as EdgeIndex's CSR needs
        self.index = EdgeIndex(mat.indices(), sparse_size=self.shape, sort_order="row")

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` product with ``(m, d)`` ``x``."""
        return self.index.matmul(x, input_value=self.value)


def spmm(a: torch.Tensor | SparseOperator, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a :class:`SparseOperator` or a sparse COO tensor ``a``."""
    return a @ x if isinstance(a, SparseOperator) else torch.sparse.mm(a, x)


_MODALITY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- module plumbing ---------------------------------------------------------------------
class DerivedTensorsMixin:
    """Keeps derived, non-trainable tensors (graphs, raw features) that move with the
    module on ``.to()/.cuda()/.double()`` but are neither parameters nor buffers.

    They are deliberately not buffers: DDP would broadcast every buffer from rank 0 at
    each step (a 7,050 x 4,096 feature matrix, or a graph), and ``state_dict`` would carry
    data that :meth:`set_graph` / :meth:`set_item_features` rebuild anyway. Checkpoints
    therefore hold only parameters; the caller re-installs graph and features on load.

    Mix in before :class:`torch.nn.Module` subclasses (``class M(DerivedTensorsMixin,
    Recommender)``).
    """

    def derived(self) -> dict[str, torch.Tensor]:
        """The name -> tensor store (created on first use)."""
        store = self.__dict__.get("_derived_tensors")
        if store is None:
            store = {}
            self.__dict__["_derived_tensors"] = store
        return store

    def _apply(self, fn: Any, recurse: bool = True) -> Any:  # type: ignore[override]
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        store = self.derived()
        for key, value in list(store.items()):
            store[key] = fn(value)
        return out

    def operator(self, key: str) -> SparseOperator:
        """:class:`SparseOperator` of the sparse matrix ``derived()[key]``, built on first
        use and rebuilt whenever that entry is replaced (a new graph, a device move)."""
        mat = self.derived()[key]
        cache = self.__dict__.setdefault("_sparse_operators", {})
        op = cache.get(key)
        if op is None or op.source is not mat:
            op = cache[key] = SparseOperator(mat)
        return op

    def model_device(self) -> torch.device:
        """Device of the first parameter (CPU for a parameter-free module)."""
        for p in self.parameters():  # type: ignore[attr-defined]
            return p.device
        return torch.device("cpu")

    def model_dtype(self) -> torch.dtype:
        """Floating dtype of the first parameter (float32 for a parameter-free module)."""
        for p in self.parameters():  # type: ignore[attr-defined]
            return p.dtype
        return torch.float32

    def place(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the model's device; floating tensors also in the model's dtype."""
        if t.is_floating_point():
            return t.to(device=self.model_device(), dtype=self.model_dtype())
        return t.to(device=self.model_device())


class UserItemGraphMixin(DerivedTensorsMixin):
    """``set_graph`` for models that propagate over the user-item graph.

    Stores (as derived tensors, see :class:`DerivedTensorsMixin`) ``edges`` ``(2, E)``
    (unique retained interactions) and ``adj`` ``(N, N)`` sparse normalised adjacency.
    Requires ``self.n_users`` / ``self.n_items`` (set by :class:`Recommender`).
    """

    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Build ``D^-1/2 A D^-1/2`` from ``(2, E)`` user-item edges (reverse direction
        added here), replacing any previous graph: removed edges leave propagation."""
        n_users, n_items = self.n_users, self.n_items  # type: ignore[attr-defined]
        edges = self.place(check_edges(train_edges, n_users, n_items))
        store = self.derived()
        store["edges"] = edges
        store["adj"] = self.place(normalized_adjacency(edges, n_users, n_items))
        log.debug("%s: user-item graph with %d edges", type(self).__name__, edges.shape[1])

    @property
    def adjacency(self) -> torch.Tensor:
        """``(N, N)`` sparse normalised user-item adjacency used in evaluation mode."""
        store = self.derived()
        if "adj" not in store:
            raise ConfigError(f"{type(self).__name__}: call set_graph(train_edges) before "
                              "forward()")
        return store["adj"]

    @property
    def propagator(self) -> SparseOperator:
        """:attr:`adjacency` as a :class:`SparseOperator` (what forward multiplies by)."""
        self.adjacency  # noqa: B018 - raises a clear error before set_graph
        return self.operator("adj")  # type: ignore[attr-defined]


class ItemFeaturesMixin(DerivedTensorsMixin):
    """Item features per modality, plus lazily built kNN graphs.

    Features are fixed inputs by default. With ``train_features=True`` (MMRec's FREEDOM and
    MGCN: ``nn.Embedding.from_pretrained(feat, freeze=False)``) each modality's feature
    matrix is also a trained parameter ``raw_features[m]`` ``(n_items, d_m)``, initialised
    from the construction-time features; the kNN graphs are still built from the
    installed (fixed) features, as MMRec builds them once from the initial ones.

    Attributes:
        modality_dims: modality -> feature dimension, fixed at construction (one set of
            layers per modality is created from it).
        active_modalities: modalities currently installed (a dropped modality is absent).
        train_features: whether the raw features are trained parameters.
    Derived tensors: ``feat.<m>`` ``(n_items, d_m)``, ``featmask.<m>`` ``(n_items, 1)``
    (1 where the installed row is non-zero; trained features are multiplied by it, so a
    row forgotten by :meth:`set_item_features` stays zero whatever a loaded state holds),
    optional ``active_items`` ``(n_items,)`` bool, and ``knn.<m>`` ``(n_items, n_items)``
    sparse graphs built on first use, on the model's current device, and cleared (with any
    ``item_graph*`` entry a model caches) by every feature change.
    """

    modality_dims: dict[str, int]
    active_modalities: list[str]
    train_features: bool = False

    def _init_features(self, features: dict[str, Any] | None,
                       train_features: bool = False) -> dict[str, torch.Tensor]:
        """Validate construction-time features (at least one modality), record dims and,
        with ``train_features``, create the ``raw_features`` parameters."""
        name = type(self).__name__.lower()
        feats = check_features(name, features, self.n_items, required=True)  # type: ignore[attr-defined]
        self.modality_dims = {m: int(t.shape[1]) for m, t in feats.items()}
        self.active_modalities = []
        self.train_features = bool(train_features)
        if self.train_features:
            self.raw_features = nn.ParameterDict(
                {m: nn.Parameter(t.clone()) for m, t in feats.items()})
        return feats

    def set_item_features(self, features: dict[str, torch.Tensor],
                          active_items: torch.Tensor | None = None) -> None:
        """Replace features (absent modality = dropped) and the active-item mask; kNN
        graphs are rebuilt from them on next use (inactive items and all-zero feature rows
        get no neighbours and are nobody's neighbour). Trained raw features keep their
        values; rows that are zero here are masked out of them."""
        name = type(self).__name__.lower()
        n_items = self.n_items  # type: ignore[attr-defined]
        feats = check_replacement_features(name, self.modality_dims, features, n_items)
        mask = check_active_items(active_items, n_items)
        store = self.derived()
        for key in [k for k in store if k.startswith(("feat.", "featmask.", "knn.",
                                                      "active_items", "item_graph"))]:
            del store[key]
        for m, t in feats.items():
            store[f"feat.{m}"] = self.place(t)
            if self.train_features:
                store[f"featmask.{m}"] = self.place((t.abs().sum(1, keepdim=True) > 0).float())
        if mask is not None:
            store["active_items"] = self.place(mask)
        self.active_modalities = list(feats)

    def item_features(self, modality: str) -> torch.Tensor:
        """``(n_items, d_m)`` features of ``modality``: the installed ones, or the trained
        ones (masked) with ``train_features``."""
        store = self.derived()
        if self.train_features:
            return self.raw_features[modality] * store[f"featmask.{modality}"]
        return store[f"feat.{modality}"]

    def dropped_feature_params(self) -> list[nn.Parameter]:
        """Trained raw-feature parameters of modalities that are not installed (to keep
        in the autograd graph with :func:`zero_touch`)."""
        if not self.train_features:
            return []
        return [p for m, p in self.raw_features.items() if m not in self.active_modalities]

    def knn_graph(self, modality: str, k: int, weighted: bool) -> torch.Tensor:
        """``(n_items, n_items)`` sparse normalised kNN graph of ``modality`` (cached),
        from the installed features."""
        store = self.derived()
        key = f"knn.{modality}"
        if key not in store:
            with torch.no_grad():
                store[key] = knn_normalized(store[f"feat.{modality}"], k,
                                            store.get("active_items"), weighted=weighted)
            log.debug("%s: built %s kNN graph (k=%d, %d edges)", type(self).__name__,
                      modality, k, store[key]._nnz())
        return store[key]


def zero_touch(reference: torch.Tensor, params: Iterable[nn.Parameter]) -> torch.Tensor:
    """``reference + 0 * sum(p.sum() for p in params)``: same values as ``reference``
    but every parameter in ``params`` joins the autograd graph with a zero gradient.

    Used for layers of a modality that :meth:`set_item_features` dropped, so DDP (with
    ``find_unused_parameters=False``) still sees a gradient for every parameter.
    """
    plist = list(params)
    if not plist:
        return reference
    dead = torch.stack([p.sum() for p in plist]).sum()
    return reference + 0.0 * dead


# -- validation ---------------------------------------------------------------------------
def check_edges(train_edges: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """Validate and de-duplicate a ``(2, E)`` user-item edge tensor.

    Returns:
        ``(2, E')`` int64 on the input's device, unique ``(user, item)`` pairs sorted by
        ``user * n_items + item``.
    Raises:
        DataError: wrong shape, or a user/item id out of range (the first bad id is named).
    """
    edges = torch.as_tensor(train_edges)
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise DataError(f"train_edges must have shape (2, E), got {tuple(edges.shape)}")
    edges = edges.long()
    if edges.numel() == 0:
        return edges.reshape(2, 0)
    users, items = edges[0], edges[1]
    bad_u = (users < 0) | (users >= n_users)
    if bool(bad_u.any()):
        raise DataError(f"train_edges: user id {int(users[bad_u][0])} outside 0..{n_users - 1}")
    bad_i = (items < 0) | (items >= n_items)
    if bool(bad_i.any()):
        raise DataError(f"train_edges: item id {int(items[bad_i][0])} outside 0..{n_items - 1}")
    keys = torch.unique(users * n_items + items)
    return torch.stack([keys // n_items, keys % n_items])


#: feature entries smaller in magnitude are stored as 0 (see :func:`check_features`)
FEATURE_FLUSH = 1e-30


def check_features(model_name: str, features: dict[str, Any] | None, n_items: int,
                   *, required: bool) -> dict[str, torch.Tensor]:
    """Validate a modality -> ``(n_items, d_m)`` dict and convert to float32 tensors.

    Entries with ``|x| < FEATURE_FLUSH`` (1e-30) become 0. No float32 sum or dot product
    with a feature of ordinary scale can see them, but as GEMM operands next to small
    gradients they produce subnormal products, which drive CPU matrix products onto their
    slow path: Last.fm-2K's text embeddings hold such entries (down to 1e-36), and the
    gradient of FREEDOM's text projection took 30-80x longer than the audio one.

    Raises:
        ConfigError: ``required`` and no modality given; a bad modality name; wrong shape;
            non-finite values.
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in (features or {}).items():
        if not _MODALITY_NAME.match(str(name)):
            raise ConfigError(f"{model_name}: modality name {name!r} must be an identifier "
                              "(letters, digits, underscore)")
        t = torch.as_tensor(value).to(torch.float32)
        if t.dim() != 2 or t.shape[0] != n_items:
            raise ConfigError(f"{model_name}: feature {name!r} has shape {tuple(t.shape)}, "
                              f"expected ({n_items}, d)")
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{model_name}: feature {name!r} contains NaN or inf")
        out[str(name)] = t.masked_fill(t.abs() < FEATURE_FLUSH, 0.0)
    if required and not out:
        raise ConfigError(f"model {model_name!r} uses item features, but the dataset has no "
                          "modality features (features/<modality>.parquet); pick a model "
                          "without features (mf, lightgcn) or add features")
    return out


# -- user-item graph ----------------------------------------------------------------------
def sparse_matrix(index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Coalesced sparse COO ``shape`` matrix from ``(2, M)`` index and ``(M,)`` values."""
    return torch.sparse_coo_tensor(index, values, shape, check_invariants=False).coalesce()


def bipartite_normalized(edges: torch.Tensor, n_users: int, n_items: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric normalisation of the bipartite graph built from unique user-item edges.

    Args:
        edges: ``(2, E)`` int64 unique (user, item) pairs (see :func:`check_edges`).
    Returns:
        ``(index, weight)``: ``(2, 2E)`` int64 node ids over ``n_users + n_items`` nodes
        (both directions) and ``(2E,)`` float32 ``1 / sqrt(deg(u) deg(i))``.
    """
    users, items = edges[0], edges[1] + n_users
    index = torch.cat([torch.stack([users, items]), torch.stack([items, users])], dim=1)
    ones = torch.ones(index.shape[1], dtype=torch.float32, device=index.device)
    index, weight = gcn_norm(index, ones, num_nodes=n_users + n_items)
    return index, weight


def normalized_adjacency(edges: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """``(N, N)`` sparse ``D^-1/2 A D^-1/2`` of the user-item graph, ``N = n_users + n_items``."""
    index, weight = bipartite_normalized(edges, n_users, n_items)
    n = n_users + n_items
    return sparse_matrix(index, weight, (n, n))


def user_item_block(edges: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """``(n_users, n_items)`` sparse block ``R[u, i] = 1 / sqrt(deg(u) deg(i))`` of the
    normalised adjacency (MGCN aggregates item-view embeddings to users with it)."""
    e = edges.shape[1]
    index, weight = bipartite_normalized(edges, n_users, n_items)
    # the first E entries are the user -> item direction
    ui = torch.stack([index[0, :e], index[1, :e] - n_users])
    return sparse_matrix(ui, weight[:e], (n_users, n_items))


def edge_norm_values(edges: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """``(E,)`` float32 ``1 / sqrt(deg(u) deg(i))`` for each user-item edge (FREEDOM's
    degree-sensitive sampling probabilities, up to a constant)."""
    _, weight = bipartite_normalized(edges, n_users, n_items)
    return weight[: edges.shape[1]]


def degree_sensitive_prune(edges: torch.Tensor, probs: torch.Tensor, keep_ratio: float,
                           n_users: int, n_items: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """FREEDOM's denoising: keep ``int(E * keep_ratio)`` edges drawn without replacement
    with probability proportional to ``probs`` (``1/sqrt(d_u d_i)``: edges between
    high-degree nodes are dropped more often), then re-normalise the kept graph.

    Args:
        edges: ``(2, E)`` int64 unique user-item edges.
        probs: ``(E,)`` non-negative sampling weights.
        generator: optional CPU ``torch.Generator``; with it the draw is made on the CPU,
            so the same generator state gives the same kept edges on every device.
    Returns:
        ``(N, N)`` sparse normalised adjacency of the kept edges only.
    """
    e = edges.shape[1]
    n_keep = int(e * keep_ratio)
    n = n_users + n_items
    if n_keep <= 0:
        empty = torch.zeros((2, 0), dtype=torch.long, device=edges.device)
        return sparse_matrix(empty, probs.new_zeros(0), (n, n))
    if n_keep >= e:
        return normalized_adjacency(edges, n_users, n_items)
    if generator is not None:  # a CPU generator: draw on the CPU, identical on any device
        keep = torch.multinomial(probs.detach().cpu(), n_keep, replacement=False,
                                 generator=generator).to(edges.device)
    else:
        keep = torch.multinomial(probs, n_keep, replacement=False)
    return normalized_adjacency(edges[:, keep], n_users, n_items)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer ``keys`` (e.g. ``(seed, epoch)``) with numpy's
    ``SeedSequence``: distinct keys give unrelated streams, equal keys the same one."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def light_propagate(adj: torch.Tensor | SparseOperator, ego: torch.Tensor,
                    n_layers: int) -> torch.Tensor:
    """LightGCN propagation: mean of ``[E, A E, A^2 E, ..., A^L E]``.

    Args:
        adj: ``(N, N)`` sparse normalised adjacency (COO tensor or :class:`SparseOperator`).
        ego: ``(N, d)`` layer-0 embeddings.
    Returns:
        ``(N, d)``.
    """
    total, h = ego, ego
    for _ in range(int(n_layers)):
        h = spmm(adj, h)
        total = total + h
    return total / (int(n_layers) + 1)


# -- item-item kNN graphs -----------------------------------------------------------------
def knn_edges(features: torch.Tensor, k: int, valid: torch.Tensor | None = None,
              chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine kNN over item feature rows, in row chunks (memory ``chunk_rows x n``).

    Each valid item gets its ``k`` most similar valid items (itself included: its own
    similarity is 1). Invalid items (inactive, or an all-zero feature row, i.e. a
    forgotten feature) have no neighbours and are nobody's neighbour.

    Args:
        features: ``(n, d)`` float.
        k: neighbours per item (fewer when fewer valid items exist).
        valid: optional ``(n,)`` bool mask.
    Returns:
        ``(index, sim)``: ``(2, M)`` int64 (row = item, col = neighbour) and ``(M,)``
        cosine similarities, ``M <= n * k``.
    """
    device = features.device
    feats = features if features.is_floating_point() else features.float()
    norms = feats.norm(dim=1)
    ok = norms > 0
    if valid is not None:
        ok = ok & valid.to(device=device, dtype=torch.bool)
    unit = feats / norms.clamp_min(1e-12).unsqueeze(1)
    k_eff = min(int(k), int(ok.sum()))
    if k_eff <= 0:
        return (torch.zeros((2, 0), dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.float32, device=device))
    col_block = torch.where(ok, 0.0, float("-inf")).to(unit.dtype)
    rows_all, cols_all, sims_all = [], [], []
    ok_idx = torch.nonzero(ok).flatten()
    for start in range(0, ok_idx.numel(), chunk_rows):
        rows = ok_idx[start:start + chunk_rows]
        sim = unit[rows] @ unit.T + col_block  # (b, n)
        val, col = torch.topk(sim, k_eff, dim=1)
        rows_all.append(rows.unsqueeze(1).expand(-1, k_eff).reshape(-1))
        cols_all.append(col.reshape(-1))
        sims_all.append(val.reshape(-1))
    index = torch.stack([torch.cat(rows_all), torch.cat(cols_all)])
    return index, torch.cat(sims_all)


def knn_normalized(features: torch.Tensor, k: int, valid: torch.Tensor | None = None,
                   weighted: bool = False, chunk_rows: int = 1024) -> torch.Tensor:
    """``(n, n)`` sparse normalised kNN item-item graph of one modality.

    Args:
        weighted: ``False`` (FREEDOM): every kNN edge weighs 1. ``True`` (MGCN): the edge
            weighs its cosine similarity; non-positive similarities are dropped so the
            degree stays positive.
    Returns:
        Entry ``(i, j) = w_ij / sqrt(d_i d_j)`` with ``d`` the row sums of ``w``.
    """
    n = features.shape[0]
    index, sim = knn_edges(features, k, valid, chunk_rows)
    if weighted:
        keep = sim > 0
        index, w = index[:, keep], sim[keep]
    else:
        w = torch.ones_like(sim)
    index, w = gcn_norm(index, w, num_nodes=n, flow="target_to_source")
    return sparse_matrix(index, w, (n, n))


def vision_slot_modality(names: Iterable[str]) -> str | None:
    """The modality MMRec would load into its ``v_feat`` (vision) slot.

    MMRec's multimodal models read two feature files, ``vision_feature_file`` -> ``v_feat``
    and ``text_feature_file`` -> ``t_feat``; FREEDOM weighs the ``v_feat`` kNN graph by
    ``mm_image_weight`` and the ``t_feat`` one by ``1 - mm_image_weight``. A modality named
    ``text`` takes the text slot, so the vision slot holds ``image`` when present, else the
    first other modality by name (Last.fm-2K: ``audio``). ``None`` when only ``text`` (or
    nothing) is given.
    """
    others = sorted(m for m in names if m != "text")
    if "image" in others:
        return "image"
    return others[0] if others else None


def modality_weights(names: list[str], image_weight: float,
                     explicit: dict[str, float] | None = None,
                     image_modality: str | None = None) -> dict[str, float]:
    """Weights (summing to 1) for combining per-modality item graphs.

    ``explicit`` (modality -> weight) wins when given (restricted to ``names`` and
    re-normalised). Otherwise FREEDOM's rule: ``image_modality`` (the modality in MMRec's
    vision slot, see :func:`vision_slot_modality`) gets ``image_weight`` and the other
    modalities share ``1 - image_weight`` equally (with two modalities: exactly MMRec's
    ``w * S_v + (1 - w) * S_t``). When ``image_modality`` is ``None`` or not among
    ``names`` (dropped), or only one modality is left, all weigh the same.
    """
    if not names:
        return {}
    if explicit:
        raw = {m: float(explicit.get(m, 0.0)) for m in names}
        total = sum(raw.values())
        if total <= 0:
            raise ConfigError(f"modality_weights {explicit} give no positive weight to "
                              f"the active modalities {names}")
        return {m: v / total for m, v in raw.items()}
    if image_modality in names and len(names) > 1:
        rest = (1.0 - float(image_weight)) / (len(names) - 1)
        return {m: (float(image_weight) if m == image_modality else rest) for m in names}
    return {m: 1.0 / len(names) for m in names}


def combine_sparse(mats: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum_m weights[m] * mats[m]`` for same-shape sparse matrices (coalesced)."""
    out = None
    for name, mat in mats.items():
        term = mat * weights[name]
        out = term if out is None else out + term
    assert out is not None
    return out.coalesce()


def check_replacement_features(model_name: str, known_dims: dict[str, int],
                               features: dict[str, Any], n_items: int) -> dict[str, torch.Tensor]:
    """Validate features passed to ``set_item_features``: a subset of the modalities the
    model was built with, each with its original dimension.

    Raises:
        ConfigError: unknown modality (no projection layer exists for it) or a changed
            dimension.
    """
    feats = check_features(model_name, features, n_items, required=False)
    for name, t in feats.items():
        if name not in known_dims:
            raise ConfigError(f"{model_name}: modality {name!r} was not present when the model "
                              f"was built (known: {sorted(known_dims)})")
        if t.shape[1] != known_dims[name]:
            raise ConfigError(f"{model_name}: modality {name!r} has dimension {t.shape[1]}, "
                              f"the model was built with {known_dims[name]}")
    return feats


def check_active_items(active_items: torch.Tensor | None, n_items: int) -> torch.Tensor | None:
    """Validate an optional ``(n_items,)`` bool mask (returned as bool, or ``None``)."""
    if active_items is None:
        return None
    mask = torch.as_tensor(active_items).to(torch.bool)
    if mask.shape != (n_items,):
        raise ConfigError(f"active_items must have shape ({n_items},), got {tuple(mask.shape)}")
    return mask
