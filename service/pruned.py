"""Exact top-k without reading the whole item matrix: a bound on each item's score from a few leading dimensions.

``ServingIndex`` ranks a query by ``item_vectors @ query`` over (I, d+1) float32. Between a few thousand items
and the ANN threshold (:mod:`service.ann`) that scan is the request's largest memory read: 8 MB per request for
a 10,000-item vae (d = 200), more than a core's L2, so under load it also evicts everything else the request
touches. Trained item vectors are far from isotropic: most of their energy lies in a few directions (a vae on
MovieLens 100k: with 12 of its 200 rotated dimensions, 14 of 1,682 items are left to score exactly;
``scripts/benchmark_pruned.py``). :class:`PrunedScan` rotates the vectors onto those directions once, at load,
and per query

1. scores every item on the ``r`` leading rotated dimensions (and its bias): ``partial_i``;
2. bounds the rest by Cauchy-Schwarz: ``score_i <= partial_i + |q_rest| |V_i,rest| + tol`` (``tol`` covers
   float32 rounding);
3. scores a few items with good bounds exactly (the best of each of a few dozen blocks of items): the k-th best
   of those is a floor ``tau`` under the true k-th best score;
4. scores exactly every item whose bound reaches ``tau`` and returns their top-k.

No item left out in step 4 can beat ``tau``, so the answer is the full scan's: the same items in the same order
(score descending, then item index), with scores equal to the scan's up to float32 rounding. What
it saves depends on the vectors: :func:`build` measures it at load on the model's own users (their vectors and
fold-ins) and keeps it only when it reads at most half the memory of the full scan (an untrained, isotropic
model would not pass).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from model.topk import top_k

if TYPE_CHECKING:
    from service.index import ServingIndex

log = logging.getLogger(__name__)

SAMPLE_USERS = 64  # known users whose vectors and fold-ins measure the pruning at load (sample_queries)
TOLERANCE = 1e-4  # relative to |query| x the largest |item vector|: float32 rounding of the bound's parts
MAX_REST_SHARE = 0.9  # a query with more of its length outside the leading dimensions is scanned at once: its
# bound would leave most items (e.g. an mf fold-in of unrelated items, nearly orthogonal to the items' main axes)
MAX_GATHER_SHARE = 0.1  # a query whose bound leaves more items than this share to score exactly is scanned
MAX_READ_SHARE = 0.5  # keep the pruned scan when it reads at most this share of the full scan's floats
FIXED_READ = 100_000  # a pruned query's fixed cost (a dozen numpy calls, ~40 us) as floats streamed, for build()
BUILD_ROWS = 1 << 15  # items rotated at a time while building: temporaries stay a few MB at any catalogue size


class PrunedScan:
    """The rotated leading dimensions of ``item_vectors`` (I, d+1) ``[V_i, b_i]`` and the norms of the rest.

    ``rotation`` (d, d): orthonormal columns; ``lead`` (I, L+1): each item's first L rotated coordinates and its
    bias, kept transposed as ``lead_t`` (L+1, I) (a product with L+1 long rows runs 3-4x faster in BLAS than one
    with I rows of L+1); ``rest`` (I,): the norm of its other rotated coordinates; ``max_norm``: the largest
    ``|item_vectors[i]|`` (the tolerance's scale). Made by :func:`build`."""

    def __init__(self, item_vectors: np.ndarray, rotation: np.ndarray, lead: np.ndarray, rest: np.ndarray,
                 max_norm: float):  # fmt: skip
        self.items, self.rotation, self.rest, self.max_norm = item_vectors, rotation, rest, max_norm
        self.lead_t = np.ascontiguousarray(lead.T, np.float32)
        self.lead_dims = lead.shape[1] - 1

    def search(self, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(items, exact scores) of the top-k of ``item_vectors @ query`` without ``banned``, best first; None
        when pruning cannot help this query (k near the catalogue's size or under 1, too few items left, a
        non-finite query, one mostly outside the leading dimensions, a bound that leaves over
        ``MAX_GATHER_SHARE`` of the items): the caller scans."""
        found = self.search_counted(query, k, banned)
        return None if found is None else found[:2]

    def search_counted(
        self, query: np.ndarray, k: int, banned: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """:meth:`search`'s answer and how many items it scored exactly in step 4."""
        num_items, dim, lead = len(self.items), self.items.shape[1] - 1, self.lead_dims
        first = max(4 * k, 32)  # blocks whose best bound is scored exactly to find the floor tau
        if k < 1 or first * 4 > num_items or len(banned) * 2 > num_items:
            return None
        rotated = query[:dim] @ self.rotation
        rest_norm = math.sqrt(float(rotated[lead:] @ rotated[lead:]))
        query_norm = math.sqrt(float(query @ query))
        tol = TOLERANCE * query_norm * self.max_norm
        if not (math.isfinite(rest_norm) and math.isfinite(tol)) or rest_norm > MAX_REST_SHARE * query_norm:
            return None
        # The bounds fill ``first`` equal blocks (the last padded with -inf): each block's best bound is one
        # argmax over a (first, size) view, a fifth of what an argpartition for the ``first`` best costs.
        size = -(-num_items // first)
        padded = np.empty(first * size, np.float32)
        upper = padded[:num_items]
        partial = np.empty(lead + 1, np.float32)
        partial[:lead], partial[lead] = rotated[:lead], query[dim]
        np.matmul(partial, self.lead_t, out=upper)  # (I,) partial scores
        upper += self.rest * np.float32(rest_norm) + np.float32(tol)  # now bounds: score_i <= upper_i
        padded[num_items:] = -np.inf
        if len(banned):
            upper[banned] = -np.inf
        best = padded.reshape(first, size).argmax(axis=1) + np.arange(0, first * size, size)
        best = best[padded[best] != -np.inf]  # blocks with an item left
        if len(best) < k:
            return None
        exact = _scores(self.items[best], query)
        tau = np.partition(exact, len(best) - k)[len(best) - k]  # the k-th best exact score among them
        if not np.isfinite(tau):
            return None
        candidates = np.flatnonzero(upper >= tau)  # ascending: top_k's ties go to the lowest index
        # Fewer than k can only come from a bound broken by rounding: the scan then answers. Too many: gathering
        # them would cost more than the scan.
        if not k <= len(candidates) <= num_items * MAX_GATHER_SHARE:
            return None
        scores = _scores(self.items[candidates], query)
        top = top_k(scores, k)
        return candidates[top], scores[top], len(candidates)


def _scores(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` with each row's sum in one fixed order wherever the row sits: BLAS rounds the rows at the
    tail of a block differently, so identical items gathered at different places would not tie (their order
    would then depend on which others were gathered), where the full scan ties them and breaks the tie by index."""
    return np.einsum("ij,j->i", rows, query)


def build(item_vectors: np.ndarray, queries: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 10) -> PrunedScan | None:
    """A :class:`PrunedScan` over ``item_vectors`` (I, d+1) when it pays for these vectors, else None.

    The rotation is the eigenvectors of ``V^T V`` (principal directions through the origin, largest first),
    applied ``BUILD_ROWS`` items at a time. Leading sizes d/16, d/8 and d/4 are tried on ``queries``, pairs of
    (query (d+1,), banned item indices) such as the service will see (:func:`sample_queries`), at ``k``: the size
    reading the fewest floats per query (the leading block, the norms and the bound's temporaries for every
    item, plus the rows scored exactly, or the full scan for a query left to it, plus ``FIXED_READ`` for the
    calls themselves) is kept if that is at most ``MAX_READ_SHARE`` of the full scan's ``I x (d+1)``: a small
    matrix (5,000 x 65) stays a plain scan."""
    num_items, dim = item_vectors.shape[0], item_vectors.shape[1] - 1
    if num_items == 0 or dim < 16 or not len(queries):
        return None
    chunks = [slice(start, start + BUILD_ROWS) for start in range(0, num_items, BUILD_ROWS)]
    gram, max_norm = np.zeros((dim, dim)), 0.0
    for rows in chunks:
        part = item_vectors[rows]
        if not np.isfinite(part).all():
            return None
        gram += part[:, :dim].T @ part[:, :dim]  # float32 products, summed in float64
        max_norm = max(max_norm, float(np.sqrt(np.einsum("ij,ij->i", part, part).max())))
    rotation = np.ascontiguousarray(np.linalg.eigh(gram)[1][:, ::-1], np.float32)  # largest eigenvalue first
    leads = sorted({dim // 16, dim // 8, dim // 4})
    widest = np.empty((num_items, leads[-1] + 1), np.float32)  # the widest leading block, the bias last
    rests = np.empty((len(leads), num_items), np.float32)
    for rows in chunks:
        rotated = item_vectors[rows, :dim] @ rotation
        widest[rows, :-1], widest[rows, -1] = rotated[:, : leads[-1]], item_vectors[rows, dim]
        for j, lead in enumerate(leads):
            rests[j, rows] = np.sqrt(np.einsum("ij,ij->i", rotated[:, lead:], rotated[:, lead:]))
    full_read = num_items * (dim + 1)
    best: tuple[float, PrunedScan, float] | None = None
    for j, lead in enumerate(leads):
        block = np.hstack([widest[:, :lead], widest[:, -1:]])  # (I, lead+1), transposed by PrunedScan
        scan = PrunedScan(item_vectors, rotation, block, rests[j], max_norm)
        found = [scan.search_counted(np.asarray(q, np.float32), k, b) for q, b in queries]
        # Floats read per query: the bound's pass over every item, then the rows scored exactly (gathered rows
        # cost about twice streamed ones), or the full scan after all for a query the bound left to it.
        gathered = [2 * f[2] * (dim + 1) if f is not None else full_read for f in found]
        read = FIXED_READ + num_items * (lead + 1 + 4) + float(np.mean(gathered))
        if best is None or read < best[0]:
            best = (read, scan, float(np.mean([f[2] if f is not None else num_items for f in found])))
    assert best is not None
    read, scan, mean = best
    kept = read <= MAX_READ_SHARE * full_read
    log.info("pruned exact top-k %s: %d of %d dims lead, %.0f of %d items scored exactly on average, %.0f%% of the "
             "full scan's reads", "on" if kept else "off", scan.lead_dims, dim, mean, num_items,
             100 * read / full_read)  # fmt: skip
    return scan if kept else None


def sample_queries(index: ServingIndex) -> list[tuple[np.ndarray, np.ndarray]]:
    """What :func:`build` measures on: for up to ``SAMPLE_USERS`` known users spread over the index, their vector
    (``GET /recommend`` past the precomputed lists) and a fold-in of their history (``POST /recommend``), each
    with their seen items banned."""
    users = index.user_vectors.shape[0]
    out = []
    for user in np.unique(np.linspace(0, users - 1, min(SAMPLE_USERS, users)).astype(np.int64)):
        seen = index.seen(int(user))
        out.append((index.user_vectors[user], seen))
        if len(seen):
            out.append((index.fold_in(seen), seen))
    return out
