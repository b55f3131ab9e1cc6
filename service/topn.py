"""Precomputed top-N lists for every known user, so a plain ``/recommend`` is a slice, not a scan.

Built once per loaded model (in blocks of users: one matrix product, seen items masked, the block's rows
ranked by :func:`model.topk.top_k_rows`) when ``users x items`` is small enough (``RECSYS_TOPN_MAX_CELLS``); with an
ANN index the lists are searched from it instead (:func:`build_lists`) and cached on disk beside it
(:func:`load_or_build_lists`, files named and written by ``service.ann_cache``); otherwise the index scans
per request. A request that the list cannot answer exactly (``k`` above N, ``exclude_seen=false``,
candidate ``items=``, or so many ``exclude=`` hits that fewer than ``k`` remain) falls through to the scan
(or the ANN search), so answers are the same. A filter (``filter=genres:Comedy``) walks the list keeping what it
passes, and falls through the same way when fewer than ``k`` pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.cpus import available_cpus
from model.files import atomic_write
from model.topk import order_by_score, top_k_rows
from service.ann import AnnConfig, AnnIndex, exact_top, import_faiss
from service.ann_cache import cache_path, lists_path, load_or_build_file, remove_stale_lists
from service.attributes import ItemFilter
from service.config import DEFAULTS

log = logging.getLogger(__name__)


AUTO_BUDGET = 64 * 2**20  # bytes per worker that an automatic list length may fill (items and scores)
# Up to 1,000: long enough that a filter keeping ~1% of the items (MovieLens' rarest genres: 1.3-1.6%) still
# fills a top-10 from the list. From 8,389 users the budget, not this cap, sets the length.
AUTO_MIN_N, AUTO_MAX_N = 100, 1000


@dataclass(frozen=True)
class TopNConfig:
    """When to precompute: ``users * items <= max_cells`` (the build is that many scores); 0 disables it."""

    max_cells: int = DEFAULTS["TOPN_MAX_CELLS"]  # defaults: the settings table's (service.config)
    n: int = DEFAULTS["TOPN_N"]  # 0 = automatic (:meth:`length`)
    with_ann: bool = DEFAULTS["TOPN_WITH_ANN"]  # with an ANN index, lists searched from it and cached on disk
    threads: int = 1  # blocks ranked at once by the scan: 1 in a worker (one core each), every core in the batch
    at_least: int = 0  # lists at least this long (the batch's k), whatever ``n`` says

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TopNConfig:
        return cls(
            max_cells=int(settings["TOPN_MAX_CELLS"]),
            n=int(settings["TOPN_N"]),
            with_ann=bool(settings["TOPN_WITH_ANN"]),
        )

    def wants(self, num_users: int, num_items: int) -> bool:
        """Scan for the lists at load (no ANN index)."""
        return self.max_cells > 0 and num_users * num_items <= self.max_cells

    def wants_from_ann(self) -> bool:
        """Search the lists from an ANN index (:func:`load_or_build_lists`) once per model."""
        return self.with_ann and self.max_cells > 0

    def length(self, num_users: int, scanned: bool = True) -> int:
        """Items per list: ``n``, or automatically as many as ``num_users`` lists of items and scores (8 bytes
        each) fit in ``AUTO_BUDGET``, between ``AUTO_MIN_N`` and ``AUTO_MAX_N`` (lists searched from an ANN
        index, ``scanned=False``: ``AUTO_MIN_N``). A longer list answers more filtered requests from the walk:
        a filter keeping a share p of the catalogue fills k from a list of n when about n x p >= k."""
        if self.n > 0:
            n = self.n
        elif not scanned:
            n = AUTO_MIN_N
        else:
            n = max(AUTO_MIN_N, min(AUTO_MAX_N, AUTO_BUDGET // max(8 * num_users, 1)))
        return max(n, self.at_least)


class TopNCache:
    """Best ``n`` unseen items per user: ``items`` (U, n) int32, best first, ``-1`` past the end of a short
    list (which then holds every unseen item), and optionally their ``scores`` (U, n) float32, the
    ``item_vectors[i] . user_vectors[u]`` they were ranked by. With scores (the scan stores them: 8 bytes x n
    per user) a hit is two slices; without (lists searched from an ANN index, memory-mapped from its cache
    file, :func:`load_or_build_lists`) :meth:`lookup` computes the k returned items' scores: a gather of k
    scattered item rows, the costliest step of a hit on the request path.

    The lists come from a scan at load (:meth:`scan`, small models) or from an ANN index, searched once
    and memory-mapped from a cache file (:func:`load_or_build_lists`)."""

    def __init__(
        self, items: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray, scores: np.ndarray | None = None
    ):
        self.n = items.shape[1]
        # A plain ndarray view of a memory-mapped file: same shared pages, without np.memmap's per-slice cost.
        self.items = items.view(np.ndarray)
        self.scores = scores
        self.valid = (items >= 0).sum(axis=1).astype(np.int32)  # entries that are real items
        self.user_vectors, self.item_vectors = user_vectors, item_vectors

    @classmethod
    def scan(
        cls,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        seen_indptr: np.ndarray,
        seen_indices: np.ndarray,
        n: int = 100,
        block: int = 512,
        progress: Callable[[int, int], None] | None = None,
        threads: int = 1,
    ) -> TopNCache:
        """Every user's list by exact scores, in blocks of users: one matrix product, seen items masked, then
        the shared top-k (``model.topk``: ties by lower item index, as the per-request scan). ``progress`` is
        called after each block with (users done, users) (``scripts/recommend_batch.py``'s bar).

        ``threads`` > 1 ranks that many blocks at a time (numpy releases the GIL in the product and the
        partition; the top-k, single-threaded, is most of the time). A service worker keeps 1: each worker
        already has its core (``TopNConfig.threads``)."""
        num_users, num_items = len(user_vectors), len(item_vectors)
        n = min(n, num_items)
        items = np.empty((num_users, n), dtype=np.int32)
        kept = np.empty((num_users, n), dtype=np.float32)

        def rank(start: int) -> int:
            stop = min(start + block, num_users)
            scores = user_vectors[start:stop] @ item_vectors.T  # (b, I)
            rows = np.repeat(np.arange(stop - start), np.diff(seen_indptr[start : stop + 1]))
            scores[rows, seen_indices[seen_indptr[start] : seen_indptr[stop]]] = -np.inf
            best = top_k_rows(scores, n)
            items[start:stop] = best
            kept[start:stop] = np.take_along_axis(scores, np.maximum(best, 0), 1)  # padding (-1): never read
            return stop - start

        starts = range(0, num_users, block)
        with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
            done = 0
            for count in pool.map(rank, starts) if pool else map(rank, starts):  # in order, whole blocks
                done += count
                if progress is not None:
                    progress(done, num_users)
        return cls(items, user_vectors, item_vectors, kept)

    def lookup(
        self, user_idx: int, k: int, banned: np.ndarray, keep: ItemFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k without ``banned`` (and among the items ``keep`` keeps) from the list, walked in order: (item
        indices (int32), their scores); None when the list runs out before k and may not hold every candidate
        (then the caller scans). The plain request (nothing banned, no filter) is two slices: on the request path
        every numpy call counts (each costs microseconds with the caches cold between requests)."""
        valid = int(self.valid[user_idx])
        if not len(banned) and keep is None:
            if valid < k and valid == self.n:
                return None
            end = min(k, valid)
            scores = self.scores[user_idx, :end] if self.scores is not None else None
            items = self.items[user_idx, :end]
        else:
            items = self.items[user_idx, :valid]
            passed = np.ones(len(items), dtype=bool) if keep is None else keep.allows(items)
            if len(banned):
                passed &= ~np.isin(items, banned)
            items = items[passed]
            # Fewer than k left: exact only if the list already held every unseen item.
            if len(items) < k and valid == self.n:
                return None
            items = items[:k]
            scores = self.scores[user_idx, :valid][passed][:k] if self.scores is not None else None
        if scores is None:
            return items, self.item_vectors[items] @ self.user_vectors[user_idx]
        return items, scores


LONG_HISTORY = 2000  # build_lists: users with more seen items than this are ranked exactly


def build_lists(
    ann: AnnIndex, user_vectors: np.ndarray, seen_indptr: np.ndarray, seen_indices: np.ndarray, n: int, threads: int = 0
) -> np.ndarray:
    """Every user's best ``n`` unseen items, (U, n) int32, best first, ``-1`` past a short list's end.

    One batched HNSW search per block of users (users sorted by history length, each block asking for
    ``n`` + its longest history, so ``n`` unseen items survive removing the seen ones), the candidates
    re-scored exactly and sorted. A user the graph walk leaves short of ``n`` unseen items is ranked
    exactly, so a list shorter than ``n`` always holds every unseen item.
    """
    faiss = import_faiss()
    num_users, num_items = len(user_vectors), len(ann.vectors)
    n = min(n, num_items)
    out = np.full((num_users, n), -1, dtype=np.int32)
    counts = np.diff(seen_indptr)
    order = np.argsort(counts, kind="stable")
    # Users with a very long history would make a block's search ask for n + that many results (memory
    # blocks x k, and slow walks): past LONG_HISTORY they are ranked exactly, one scan each.
    order = order[counts[order] <= LONG_HISTORY]
    faiss.omp_set_num_threads(threads or available_cpus())
    try:
        for user in np.flatnonzero(counts > LONG_HISTORY):
            seen = seen_indices[seen_indptr[user] : seen_indptr[user + 1]]
            best = exact_top(ann.vectors, user_vectors[user], seen, n)
            out[user, : len(best)] = best
        for start in range(0, len(order), 1024):
            users = order[start : start + 1024]
            k = min(num_items, n + int(counts[users].max()))
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ann.ef_search, k)
            queries = np.ascontiguousarray(user_vectors[users], dtype=np.float32)
            _, labels = ann.index.search(queries, k, params=params)
            for row, user in enumerate(users):
                query, seen = user_vectors[user], seen_indices[seen_indptr[user] : seen_indptr[user + 1]]
                cand = labels[row][labels[row] >= 0]
                cand = cand[~np.isin(cand, seen)]
                want = min(n, num_items - len(np.unique(seen)))
                if len(cand) < want:
                    cand = exact_top(ann.vectors, query, seen, want)
                best = order_by_score(cand, ann.vectors[cand] @ query)[0][:n]
                out[user, : len(best)] = best
    finally:
        faiss.omp_set_num_threads(1)
    return out


def load_or_build_lists(
    checkpoint: str | Path,
    model_version: str,
    ann: AnnIndex,
    user_vectors: np.ndarray,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    n: int,
    config: AnnConfig,
) -> np.ndarray:
    """The cached top-``n`` lists for this model (memory-mapped, shared by every worker), built once under
    a lock like the index itself (``service.ann_cache.load_or_build_file``)."""
    path = lists_path(cache_path(checkpoint, model_version, config), n, ann.ef_search)
    shape = (len(user_vectors), min(n, len(ann.vectors)))

    def read() -> np.ndarray | None:
        try:
            items = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # noqa: BLE001 - missing, empty (EOFError), truncated or not .npy: rebuild
            return None
        # Right shape and type, and every entry an item or the -1 padding (one pass over the mapped file).
        if items.shape == shape and items.dtype == np.int32 and (not items.size or (
            int(items.min()) >= -1 and int(items.max()) < len(ann.vectors)
        )):  # fmt: skip
            return items
        log.warning("top-N list cache %s does not match the model, rebuilding", path)
        return None

    def build() -> np.ndarray:
        started = time.perf_counter()
        built = build_lists(ann, user_vectors, seen_indptr, seen_indices, n, config.build_threads)
        log.info("built top-%d lists for %d users in %.1fs", shape[1], shape[0], time.perf_counter() - started)
        return built

    def write(built: np.ndarray, path: Path) -> None:
        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, built, allow_pickle=False)

        atomic_write(path, save)

    return load_or_build_file(
        path, read, build, write, remove_stale=lambda: remove_stale_lists(path),
        not_cached="top-N lists not cached (%s); kept in memory for this worker only",
    )  # fmt: skip
