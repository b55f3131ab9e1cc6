"""Precomputed top-N lists for every known user, so a plain ``/recommend`` is a slice, not a scan.

Built once per loaded model (in blocks of users: one matrix product, seen items masked, one
``argpartition`` per block) when ``users x items`` is small enough (``RECSYS_TOPN_MAX_CELLS``); with an
ANN index the lists are searched from it instead (``service.ann``); otherwise the index scans per
request. A request that the list cannot answer exactly (``k`` above N, ``exclude_seen=false``, candidate
``items=``, or so many ``exclude=`` hits that fewer than ``k`` remain) falls through to the scan (or the
ANN search), so answers are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.topk import top_k_rows


@dataclass(frozen=True)
class TopNConfig:
    """When to precompute: ``users * items <= max_cells`` (the build is that many scores); 0 disables it."""

    max_cells: int = 100_000_000  # RECSYS_TOPN_MAX_CELLS
    n: int = 100  # RECSYS_TOPN_N
    with_ann: bool = True  # RECSYS_TOPN_WITH_ANN: with an ANN index, lists searched from it and cached on disk

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TopNConfig:
        return cls(
            max_cells=int(settings.get("TOPN_MAX_CELLS", cls.max_cells)),
            n=int(settings.get("TOPN_N", cls.n)),
            with_ann=bool(settings.get("TOPN_WITH_ANN", cls.with_ann)),
        )

    def wants(self, num_users: int, num_items: int) -> bool:
        """Scan for the lists at load (no ANN index)."""
        return self.max_cells > 0 and self.n > 0 and num_users * num_items <= self.max_cells

    def wants_from_ann(self) -> bool:
        """Search the lists from an ANN index (``service.ann.load_or_build_lists``) once per model."""
        return self.with_ann and self.n > 0 and self.max_cells > 0


class TopNCache:
    """Best ``n`` unseen items per user: ``items`` (U, n) int32, best first, ``-1`` past the end of a short
    list (which then holds every unseen item). Scores are not stored: :meth:`lookup` computes the exact
    ``item_vectors[i] . user_vectors[u]`` of the k items it returns (4 bytes x n per user).

    The lists come from a scan at load (:meth:`scan`, small models) or from an ANN index, searched once
    and memory-mapped from a cache file (``service.ann.load_or_build_lists``)."""

    def __init__(self, items: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray):
        self.n = items.shape[1]
        # A plain ndarray view of a memory-mapped file: same shared pages, without np.memmap's per-slice cost.
        self.items = items.view(np.ndarray)
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
    ) -> TopNCache:
        """Every user's list by exact scores, in blocks of users: one matrix product, seen items masked, then
        the shared top-k (``model.topk``: ties by lower item index, as the per-request scan)."""
        num_users, num_items = len(user_vectors), len(item_vectors)
        n = min(n, num_items)
        items = np.empty((num_users, n), dtype=np.int32)
        for start in range(0, num_users, block):
            stop = min(start + block, num_users)
            scores = user_vectors[start:stop] @ item_vectors.T  # (b, I)
            rows = np.repeat(np.arange(stop - start), np.diff(seen_indptr[start : stop + 1]))
            scores[rows, seen_indices[seen_indptr[start] : seen_indptr[stop]]] = -np.inf
            items[start:stop] = top_k_rows(scores, n)
        return cls(items, user_vectors, item_vectors)

    def lookup(self, user_idx: int, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k without ``banned`` from the list, or None when the list cannot answer exactly."""
        valid = int(self.valid[user_idx])
        items = self.items[user_idx, :valid]
        if len(banned):
            items = items[~np.isin(items, banned)]
        items = items[:k].astype(np.int64)
        # Fewer than k left: exact only if the list already held every unseen item.
        if len(items) < k and valid == self.n:
            return None
        return items, self.item_vectors[items] @ self.user_vectors[user_idx]
