"""Unlearning audit beyond recall: membership inference, agreement with Gold, memory.

- :func:`mia_auc` / :func:`mia_auc_from_scores`: a score-based membership-inference attack.
  The attacker sees the model's score ``<user_emb[u], item_emb[i]>`` and guesses "member"
  when it is high. Members are the forgotten training pairs D_f; non-members are, for each
  forgotten pair, items the same user never interacted with in any split of the original
  data. The attack's AUC is exact (Mann-Whitney U, ties count 1/2): 0.5 means the attacker
  cannot tell forgotten pairs from never-seen ones, 1.0 means it always can. A model
  retrained without D_f (Gold) is the reference, not 0.5: the pairs' users may still like
  similar items.
- :func:`topk_overlap` / :func:`topk_jaccard`: how much two methods' top-K lists agree.
- :func:`peak_memory_mb` / :func:`track_peak_rss`: memory cost of a method.

Pure numpy / torch; nothing here starts Ray.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation.membership import mia_auc_from_scores  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

#: rejection-sampling rounds before the remaining non-members are drawn from the exact
#: complement of the user's known items (only users who know most of the catalogue get there)
_REJECTION_ROUNDS = 32
#: pairs scored per torch batch in :func:`pair_scores_np`
_SCORE_BATCH = 1 << 16


# -- membership inference --------------------------------------------------------------------
def sample_nonmembers(users: np.ndarray, all_known_keys: np.ndarray, n_items: int,
                      n_neg: int = 1, seed: int = 0) -> np.ndarray:
    """For each user, ``n_neg`` items drawn uniformly among those they never interacted with.

    Args:
        users: ``(F,)`` user ids (one per forgotten pair; repeats are fine).
        all_known_keys: ``(N,)`` int64 keys ``u * n_items + i`` of every known interaction of
            the original data (train, valid and test; duplicates are fine).
        n_items: catalogue size.
        n_neg: non-members per entry of ``users``.
        seed: seed of the generator.

    Returns:
        ``(F, n_neg)`` int64 item ids; ``u * n_items + item`` is never in ``all_known_keys``.
        Draws are with replacement, independently per entry.

    Raises:
        DataError: a user who interacted with every item (no non-member exists), or bad ids.
    """
    users = np.asarray(users, dtype=np.int64).ravel()
    if n_items <= 0 or n_neg <= 0:
        raise DataError(f"sample_nonmembers: n_items={n_items} and n_neg={n_neg} must be > 0")
    if users.size and users.min() < 0:
        raise DataError(f"sample_nonmembers: user id {int(users.min())} is negative")
    known = np.unique(np.asarray(all_known_keys, dtype=np.int64).ravel())
    rng = np.random.default_rng(seed)
    out = rng.integers(0, n_items, size=(users.size, n_neg), dtype=np.int64)
    todo = np.flatnonzero(_is_known(users[:, None] * int(n_items) + out, known).ravel())
    for _ in range(_REJECTION_ROUNDS):
        if todo.size == 0:
            break
        out.flat[todo] = rng.integers(0, n_items, size=todo.size, dtype=np.int64)
        redraw = _is_known(users[todo // n_neg] * int(n_items) + out.flat[todo], known)
        todo = todo[redraw]
    if todo.size:
        _fill_from_complement(out, todo, users, known, n_items, n_neg, rng)
    return out


def _is_known(keys: np.ndarray, known_sorted: np.ndarray) -> np.ndarray:
    """Boolean mask of ``keys`` (any shape) present in the sorted unique ``known_sorted``."""
    if known_sorted.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(known_sorted, keys)
    pos = np.minimum(pos, known_sorted.size - 1)
    return known_sorted[pos] == keys


def _fill_from_complement(out: np.ndarray, todo: np.ndarray, users: np.ndarray,
                          known: np.ndarray, n_items: int, n_neg: int,
                          rng: np.random.Generator) -> None:
    """Draw the flat positions ``todo`` of ``out`` ``(F, n_neg)`` from each user's exact
    complement of known items (for users who know almost the whole catalogue)."""
    rows = todo // n_neg
    for u in np.unique(users[rows]):
        lo, hi = np.searchsorted(known, [u * n_items, (u + 1) * n_items])
        free = np.setdiff1d(np.arange(n_items, dtype=np.int64), known[lo:hi] - u * n_items,
                            assume_unique=True)
        if free.size == 0:
            raise DataError(f"mia_auc: user {int(u)} interacted with all {n_items} items; "
                            "no non-member item exists for the attack")
        sel = todo[users[rows] == u]
        out.flat[sel] = rng.choice(free, size=sel.size, replace=True)


def pair_scores_np(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray,
                   items: np.ndarray) -> np.ndarray:
    """Scores ``<user_emb[u], item_emb[i]>`` of ``(P,)`` pairs, batched, as float64 numpy.

    Args:
        user_emb: ``(n_users, d)`` tensor (any device / float dtype).
        item_emb: ``(n_items, d)`` tensor on the same device.
        users, items: ``(P,)`` int ids.

    Returns:
        ``(P,)`` float64 scores.
    """
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.asarray(items, dtype=np.int64).ravel()
    if users.shape != items.shape:
        raise DataError(f"pair scores: {users.size} users but {items.size} items")
    for name, ids, n in (("user", users, user_emb.shape[0]), ("item", items, item_emb.shape[0])):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise DataError(f"pair scores: {name} id {bad} out of range [0, {n})")
    out = np.empty(users.size, dtype=np.float64)
    dev = user_emb.device
    with torch.no_grad():
        for s in range(0, users.size, _SCORE_BATCH):
            u = torch.tensor(users[s:s + _SCORE_BATCH], device=dev)     # copies: input may
            i = torch.tensor(items[s:s + _SCORE_BATCH], device=dev)     # be read-only
            sc = (user_emb[u].double() * item_emb[i].double()).sum(-1)
            out[s:s + u.numel()] = sc.cpu().numpy()
    return out


def mia_auc(user_emb: torch.Tensor, item_emb: torch.Tensor, forget_user: np.ndarray,
            forget_item: np.ndarray, all_known_keys: np.ndarray, n_items: int, seed: int = 0,
            n_neg: int = 1) -> float:
    """AUC of the score-based membership-inference attack on the forget set.

    Members: the ``(F,)`` forgotten pairs ``(forget_user, forget_item)``. Non-members: for
    each forgotten pair, ``n_neg`` items drawn uniformly among those the same user never
    interacted with in any split of the original data (see :func:`sample_nonmembers`), so
    both sides have the same user distribution and only membership differs.

    Args:
        user_emb: ``(n_users, d)`` final user embeddings.
        item_emb: ``(n_items, d)`` final item embeddings.
        forget_user, forget_item: ``(F,)`` int ids of D_f.
        all_known_keys: int64 keys ``u * n_items + i`` of every original interaction.
        n_items: catalogue size (the key base; must equal ``item_emb.shape[0]``).
        seed: seed of the non-member draw.
        n_neg: non-members per member.

    Returns:
        AUC in ``[0, 1]`` (0.5: members indistinguishable from non-members).
    """
    if item_emb.shape[0] != n_items:
        raise DataError(f"mia_auc: item_emb has {item_emb.shape[0]} rows but n_items={n_items}")
    fu = np.asarray(forget_user, dtype=np.int64).ravel()
    fi = np.asarray(forget_item, dtype=np.int64).ravel()
    if fu.size == 0:
        raise DataError("mia_auc: the forget set is empty")
    member = pair_scores_np(user_emb, item_emb, fu, fi)
    neg_items = sample_nonmembers(fu, all_known_keys, n_items, n_neg=n_neg, seed=seed)
    nonmember = pair_scores_np(user_emb, item_emb, np.repeat(fu, n_neg), neg_items.ravel())
    auc = mia_auc_from_scores(member, nonmember)
    log.debug("mia_auc: %d members, %d non-members -> %.4f", member.size, nonmember.size, auc)
    return auc


# -- top-K agreement --------------------------------------------------------------------------
def _intersection_sizes(lists_a: np.ndarray, lists_b: np.ndarray,
                        k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-row ``|A ∩ B|``, ``|A|``, ``|B|`` of two ``(U, K)`` id arrays (negative ids = padding,
    ignored; duplicates within a row counted once), and the list length K used."""
    a = np.asarray(lists_a, dtype=np.int64)
    b = np.asarray(lists_b, dtype=np.int64)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"top-K overlap: lists must be two (U, K) arrays of one shape, got "
                        f"{a.shape} and {b.shape}")
    if k is not None:
        if not 0 < k <= a.shape[1]:
            raise DataError(f"top-K overlap: k={k} outside [1, {a.shape[1]}]")
        a, b = a[:, :k], b[:, :k]
    n_rows, width = a.shape
    base = int(max(a.max(initial=0), b.max(initial=0))) + 1
    rows = np.arange(n_rows, dtype=np.int64)[:, None]

    def row_keys(x: np.ndarray) -> np.ndarray:
        keys = (rows * base + x)[x >= 0]
        return np.unique(keys)

    ka, kb = row_keys(a), row_keys(b)
    common = np.intersect1d(ka, kb, assume_unique=True)
    inter = np.bincount(common // base, minlength=n_rows)
    size_a = np.bincount(ka // base, minlength=n_rows)
    size_b = np.bincount(kb // base, minlength=n_rows)
    return inter, size_a, size_b, width


def topk_overlap(lists_a: np.ndarray, lists_b: np.ndarray, k: int | None = None) -> float:
    """Mean over users of ``|A_u ∩ B_u| / K``.

    Args:
        lists_a, lists_b: ``(U, K)`` int item ids, row ``u`` = one user's top-K from each
            method (same user order). Negative ids (``PAD_ITEM``) are padding and never match.
        k: compare only the first ``k`` columns (default: all K).

    Returns:
        Overlap in ``[0, 1]``; 1.0 = same item sets (order ignored).
    """
    inter, _, _, width = _intersection_sizes(lists_a, lists_b, k)
    if inter.size == 0:
        raise DataError("top-K overlap: no users")
    return float(np.mean(inter / width))


def topk_jaccard(lists_a: np.ndarray, lists_b: np.ndarray, k: int | None = None) -> float:
    """Mean over users of ``|A_u ∩ B_u| / |A_u ∪ B_u|`` (padding ignored; two empty lists
    count as identical, 1.0). Same arguments as :func:`topk_overlap`."""
    inter, size_a, size_b, _ = _intersection_sizes(lists_a, lists_b, k)
    if inter.size == 0:
        raise DataError("top-K jaccard: no users")
    union = size_a + size_b - inter
    per_user = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(np.mean(per_user))


# -- memory -----------------------------------------------------------------------------------
def peak_memory_mb() -> float:
    """Peak resident set size of THIS process since it started, in MiB.

    From ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS). It never goes
    down and does not include child processes (e.g. Ray workers); to measure one block, or a
    process tree, use :func:`track_peak_rss`.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 ** 2) if sys.platform == "darwin" else rss / 1024.0


@dataclass
class PeakRSS:
    """Result of :func:`track_peak_rss` (filled when the block exits), all in MiB.

    Attributes:
        start_mb: RSS when the block started.
        peak_abs_mb: highest sampled RSS during the block.
        peak_mb: ``peak_abs_mb - start_mb`` (>= 0): memory the block added at its peak.
        samples: number of RSS samples taken.
        include_children: whether child processes' RSS was summed in.
    """

    start_mb: float = 0.0
    peak_abs_mb: float = 0.0
    peak_mb: float = 0.0
    samples: int = 0
    include_children: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _rss_bytes(proc: psutil.Process, include_children: bool) -> int:
    """RSS of ``proc`` (plus its live descendants when asked); vanished children skipped."""
    total = proc.memory_info().rss
    if include_children:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return total


@contextmanager
def track_peak_rss(interval_s: float = 0.01, include_children: bool = False) -> Iterator[PeakRSS]:
    """Measure the peak RSS reached while a block runs, above the RSS at its start.

    A daemon thread samples the resident set size (``psutil``) every ``interval_s`` seconds;
    one sample is also taken at entry and at exit, so memory still held when the block ends
    is always seen. What it measures: resident (in-RAM) pages, so swapped-out memory is not
    counted and short spikes between two samples can be missed. With
    ``include_children=True`` the RSS of all descendant processes (e.g. a local Ray cluster
    started by this process: raylet, workers) is summed in; pages shared between processes
    (Ray's object store, shared libraries) are then counted once per process, so the figure
    is an upper bound.

    Usage::

        with track_peak_rss() as mem:
            run_method()
        mem.peak_mb   # MiB above the start

    Yields:
        A :class:`PeakRSS` whose fields are final once the block exits.
    """
    proc = psutil.Process()
    result = PeakRSS(include_children=include_children)
    start = _rss_bytes(proc, include_children)
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        try:
            value = _rss_bytes(proc, include_children)
        except psutil.Error:
            return
        with result._lock:
            peak[0] = max(peak[0], value)
            result.samples += 1

    def loop() -> None:
        while not stop.wait(interval_s):
            sample()

    thread = threading.Thread(target=loop, name="track_peak_rss", daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield result
    finally:
        sample()
        stop.set()
        thread.join()
        mib = 1024.0 ** 2
        result.start_mb = start / mib
        result.peak_abs_mb = peak[0] / mib
        result.peak_mb = max(0.0, (peak[0] - start) / mib)
        log.debug("track_peak_rss: +%.1f MiB peak over %.2f s (%d samples)", result.peak_mb,
                  time.perf_counter() - t0, result.samples)
