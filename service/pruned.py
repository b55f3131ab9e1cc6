"""Exact top-k without reading the whole item matrix: a bound on each item's score from a few leading dimensions.

``ServingIndex`` ranks a query by ``item_vectors @ query`` over (I, d+1) float32. Between a few thousand items
and the ANN threshold (:mod:`service.ann`) that scan is the request's largest memory read: 8 MB per request for
a 10,000-item vae (d = 200), more than a core's L2, so under load it also evicts everything else the request
touches. Trained item vectors are far from isotropic: most of their energy lies in a few directions (a vae on
MovieLens 100k: 79% in 16 of 200). :class:`PrunedScan` rotates the vectors onto those directions once, at load,
and per query

1. scores every item on the ``r`` leading rotated dimensions (and its bias): ``partial_i``;
2. bounds the rest by Cauchy-Schwarz: ``score_i <= partial_i + |q_rest| |V_i,rest| + tol`` (``tol`` covers
   float32 rounding);
3. scores a few items with the best bounds exactly: the k-th best of those is a floor ``tau`` under the true
   k-th best score;
4. scores exactly every item whose bound reaches ``tau`` and returns their top-k.

No item left out in step 4 can beat ``tau``, so the answer is the full scan's: the same items in the same order
(score descending, then item index), with scores from the same float32 products up to their rounding. What
it saves depends on the vectors: :func:`build` measures it on the model's own users at load and keeps the scan
only when it reads at most half the memory of the full one (an untrained, isotropic model would not pass).
"""

from __future__ import annotations

import logging

import numpy as np

from model.topk import top_k

log = logging.getLogger(__name__)

MIN_ITEMS = 4096  # RECSYS_PRUNE_MIN_ITEMS (AnnConfig): below this the full scan is cheap (it fits in L2)
SAMPLE_USERS = 128  # known users' vectors that measure the pruning at load
TOLERANCE = 1e-4  # relative to |query| x the largest |item vector|: float32 rounding of the bound's parts
MAX_REST_SHARE = 0.9  # a query with more of its length outside the leading dimensions is scanned at once: its
# bound would leave most items (e.g. an mf fold-in of unrelated items, nearly orthogonal to the items' main axes)
MAX_GATHER_SHARE = 0.1  # a query whose bound leaves more items than this share to score exactly is scanned
MAX_READ_SHARE = 0.5  # keep the pruned scan when it reads at most this share of the full scan's floats


class PrunedScan:
    """The rotated leading dimensions of ``item_vectors`` (I, d+1) ``[V_i, b_i]`` and the norms of the rest."""

    def __init__(self, item_vectors: np.ndarray, rotation: np.ndarray, lead_dims: int, rotated: np.ndarray):
        """``rotation`` (d, d) orthonormal columns, ``rotated`` = ``item_vectors[:, :d] @ rotation``."""
        dim = item_vectors.shape[1] - 1
        self.items, self.rotation, self.lead_dims = item_vectors, rotation, lead_dims
        # [leading rotated dims, bias]: one product scores the partial sums, bias included (query ends in 1).
        self.lead = np.ascontiguousarray(np.hstack([rotated[:, :lead_dims], item_vectors[:, dim:]]), np.float32)
        self.rest = np.linalg.norm(rotated[:, lead_dims:], axis=1).astype(np.float32)  # (I,)
        self.max_norm = float(np.linalg.norm(item_vectors, axis=1).max(initial=0.0))

    def search(self, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(items, exact scores) of the top-k of ``item_vectors @ query`` without ``banned``, best first; None
        when pruning cannot help this query (k near the catalogue's size, too few items left, a non-finite
        query, one mostly outside the leading dimensions, a bound that leaves over ``MAX_GATHER_SHARE`` of the
        items): the caller scans."""
        found = self._search(query, k, banned)
        return None if found is None else found[:2]

    def _search(self, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
        """:meth:`search`'s answer and how many items it scored exactly in step 4."""
        num_items, dim = len(self.items), self.items.shape[1] - 1
        first = max(4 * k, 32)  # items scored exactly to find the floor tau
        if first * 4 > num_items or len(banned) * 2 > num_items:
            return None
        rotated = query[:dim] @ self.rotation
        rest_norm, query_norm = float(np.linalg.norm(rotated[self.lead_dims :])), float(np.linalg.norm(query))
        tol = TOLERANCE * query_norm * self.max_norm
        if not (np.isfinite(rest_norm) and np.isfinite(tol)) or rest_norm > MAX_REST_SHARE * query_norm:
            return None
        upper = self.lead @ np.append(rotated[: self.lead_dims], query[dim:])  # (I,) partial scores
        upper += self.rest * np.float32(rest_norm) + np.float32(tol)  # now bounds: score_i <= upper_i
        if len(banned):
            upper[banned] = -np.inf
        best = np.argpartition(upper, num_items - first)[num_items - first :]
        exact = self.items[best] @ query
        exact[upper[best] == -np.inf] = -np.inf
        tau = np.partition(exact, first - k)[first - k]  # the k-th best exact score among them
        if not np.isfinite(tau):
            return None
        candidates = np.flatnonzero(upper >= tau)  # ascending: top_k's ties go to the lowest index
        if len(candidates) > num_items * MAX_GATHER_SHARE:  # a query the bound cannot narrow: gathering would
            return None  # cost more than the scan
        scores = self.items[candidates] @ query
        top = top_k(scores, k)
        return candidates[top], scores[top], len(candidates)


def build(item_vectors: np.ndarray, user_vectors: np.ndarray, k: int = 10) -> PrunedScan | None:
    """A :class:`PrunedScan` over ``item_vectors`` (I, d+1) when it pays for these vectors, else None.

    The rotation is the eigenvectors of ``V^T V`` (principal directions through the origin, largest first).
    Leading sizes d/16, d/8 and d/4 are tried on up to ``SAMPLE_USERS`` of the known users' vectors
    (``user_vectors`` (U, d+1)), at ``k``: the one reading the fewest floats per query (the leading block, the
    norms and the bound's temporaries for every item, plus the rows scored exactly) is kept if that is at most
    ``MAX_READ_SHARE`` of the full scan's ``I x (d+1)``."""
    num_items, dim = item_vectors.shape[0], item_vectors.shape[1] - 1
    if dim < 16 or not len(user_vectors) or not np.isfinite(item_vectors).all():
        return None
    factors = item_vectors[:, :dim]
    _, vectors = np.linalg.eigh((factors.T @ factors).astype(np.float64))  # (d, d): no float64 copy of the items
    rotation = np.ascontiguousarray(vectors[:, ::-1], np.float32)  # largest eigenvalue first
    rotated = factors @ rotation  # (I, d), while building only
    sample = user_vectors[np.linspace(0, len(user_vectors) - 1, min(SAMPLE_USERS, len(user_vectors))).astype(int)]
    full_read = num_items * (dim + 1)
    best: tuple[float, PrunedScan, float] | None = None
    for lead in sorted({dim // 16, dim // 8, dim // 4}):
        scan = PrunedScan(item_vectors, rotation, lead, rotated)
        found = [scan._search(np.asarray(q, np.float32), k, np.zeros(0, np.int64)) for q in sample]
        # Floats read per query: the bound's pass over every item, then the rows scored exactly (gathered rows
        # cost about twice streamed ones), or the full scan after all for a query the bound left to it.
        gathered = [2 * f[2] * (dim + 1) if f is not None else full_read for f in found]
        read = num_items * (lead + 1 + 4) + float(np.mean(gathered))
        if best is None or read < best[0]:
            best = (read, scan, float(np.mean([f[2] if f is not None else num_items for f in found])))
    assert best is not None
    read, scan, mean = best
    kept = read <= MAX_READ_SHARE * full_read
    log.info("pruned exact top-k %s: %d of %d dims lead, %.0f of %d items scored exactly on average, %.0f%% of the "
             "full scan's reads", "on" if kept else "off", scan.lead_dims, dim, mean, num_items,
             100 * read / full_read)  # fmt: skip
    return scan if kept else None
