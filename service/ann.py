"""Approximate top-k for large catalogues: a faiss HNSW index over the ranking vectors.

``ServingIndex`` ranks a user by ``item_vectors @ query`` (maximum inner product over (I, d+1) float32).
Past ``RECSYS_ANN_MIN_ITEMS`` items (default 100,000) that full scan costs milliseconds per request, so
an :class:`AnnIndex` answers instead: HNSW with ``METRIC_INNER_PRODUCT`` (M=32, efSearch=128 by
default), one faiss thread per worker (uWSGI scales by processes), banned items excluded inside the
search by an ``IDSelector``, and the returned items re-scored exactly with numpy, so scores match the
exact path and only the membership of the top-k is approximate.

This module owns the index itself (build and search). Building over 1M items takes minutes, so the
index is cached on disk next to the checkpoint (:mod:`service.ann_cache`, which also decides when an
index is wanted); every known user's top-N list is searched from it once (:mod:`service.topn`);
``scripts/prebuild_ann.py`` builds both before the service starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cpus import available_cpus
from model.topk import order_by_score, top_k
from service.config import DEFAULTS

faiss: Any = None  # the module, once imported by import_faiss


def import_faiss() -> Any | None:
    """faiss (the optional ``ann`` extra), imported on first use: importing it costs ~60 MB per worker,
    which a worker serving a small catalogue should not pay. None when it is not installed."""
    global faiss
    if faiss is None:
        try:
            import faiss as module
        except ImportError:
            return None
        faiss = module
    return faiss


@dataclass(frozen=True)
class AnnConfig:
    """When and how to build the index. ``min_items <= 0`` disables it. Defaults: the settings table's
    (:data:`service.config.DEFAULTS`, the one home of each ``RECSYS_*`` default)."""

    min_items: int = DEFAULTS["ANN_MIN_ITEMS"]
    m: int = DEFAULTS["ANN_M"]  # graph degree (2*M links per node on level 0)
    ef_search: int = DEFAULTS["ANN_EF_SEARCH"]  # candidate list size per query (recall vs latency)
    ef_construction: int = DEFAULTS["ANN_EF_CONSTRUCTION"]  # faiss's default 40; higher = slower build
    build_threads: int = DEFAULTS["ANN_BUILD_THREADS"]  # threads while building; 0 = every usable core
    # Without an ANN index, the exact pruned scan (service.pruned) from this many items (when the model's vectors
    # allow it); 0 = always the full scan.
    prune_min_items: int = DEFAULTS["PRUNE_MIN_ITEMS"]

    def applies(self, num_items: int) -> bool:
        """Whether a catalogue of ``num_items`` gets the index (from ``min_items``; never when that is 0)."""
        return 0 < self.min_items <= num_items

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> AnnConfig:
        return cls(
            min_items=int(settings["ANN_MIN_ITEMS"]),
            m=int(settings["ANN_M"]),
            ef_search=int(settings["ANN_EF_SEARCH"]),
            ef_construction=int(settings["ANN_EF_CONSTRUCTION"]),
            build_threads=int(settings["ANN_BUILD_THREADS"]),
            prune_min_items=int(settings["PRUNE_MIN_ITEMS"]),
        )


def exact_top(vectors: np.ndarray, query: np.ndarray, banned: np.ndarray, k: int) -> np.ndarray:
    """The best ``k`` rows of ``vectors`` for ``query`` by exact inner product, never ``banned``, best first."""
    scores = vectors @ query
    scores[banned] = -np.inf
    return top_k(scores, k)


class AnnIndex:
    """Top-k by inner product over ``vectors`` (I, d+1) float32, approximately, via faiss HNSW."""

    def __init__(self, index: Any, vectors: np.ndarray, ef_search: int = 128):
        self.index = index
        self.vectors = vectors
        self.ef_search = ef_search

    @staticmethod
    def build(vectors: np.ndarray, m: int = 32, ef_construction: int = 40, threads: int = 0) -> Any:
        """A new faiss ``IndexHNSWFlat`` (inner product) holding ``vectors`` (I, d+1)."""
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        faiss.omp_set_num_threads(threads or available_cpus())
        try:
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        finally:
            faiss.omp_set_num_threads(1)  # serving: one thread per worker, processes give the parallelism
        return index

    def search(self, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items for ``query`` (d+1,) never in ``banned`` (int64 indices), best first.

        Returns item indices (n,) int64 and their exact scores ``vectors[idx] @ query`` (n,) float32,
        ``n = min(k, items not banned)``.
        """
        banned = np.unique(np.asarray(banned, dtype=np.int64))
        k = min(k, len(self.vectors) - len(banned))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)  # HNSW cannot return more than efSearch results
        if len(banned):
            # Filtered inside the graph walk, so exactly k allowed items come back however many are banned.
            # Both selectors must outlive the search: SWIG does not keep them alive through params.
            batch = faiss.IDSelectorBatch(banned)
            allowed = faiss.IDSelectorNot(batch)
            params.sel = allowed
        _, labels = self.index.search(np.ascontiguousarray(query, dtype=np.float32)[None, :], k, params=params)
        idx = labels[0][labels[0] >= 0].astype(np.int64)
        if len(idx) < k:
            # The walk ran out of reachable allowed items (a huge banned set): answer exactly instead.
            idx = exact_top(self.vectors, query, banned, k)
        return order_by_score(idx, self.vectors[idx] @ query)  # exact scores, the numpy path's numbers and order
