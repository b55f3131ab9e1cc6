"""The one top-k: the ``k`` best items by score, with a defined tie rule.

Order: higher score first; among equal scores, the lower item index first. Items scored ``-inf`` (the
way callers exclude items) or NaN are never returned. Every ranked list in the project comes from here:
training validation, offline metrics, the serving index, the top-N lists and the ANN fallback, so "the
cached list equals the scan" holds with ties too. (The popularity fallback for unknown users walks one order
fixed at load, ``ServingIndex.popular_order``: a stable sort by count, the same tie rule.)

``argpartition`` alone picks among items tied at the k-th score by its internals; :func:`top_k_rows`
therefore takes every item strictly better than the k-th score and fills the rest with the tied items of
lowest index, then sorts the k by (score descending, index ascending). Cost: one ``argpartition`` and two
passes per row (NaN check, ties at the k-th score), the same order as the scan that produced the scores.
"""

from __future__ import annotations

import numpy as np


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best columns, best first (see the module docstring for the order).

    Args:
        scores: shape (n, I), float; ``-inf`` (or NaN) marks columns never to return.
        k: list length, >= 0.
    Returns:
        shape (n, k) int64 column indices; ``-1`` pads rows with fewer than ``k`` returnable columns.
    """
    scores = np.asarray(scores)
    n, num_items = scores.shape
    out = np.full((n, k), -1, dtype=np.int64)
    kk = min(k, num_items)
    if kk <= 0 or n == 0:
        return out
    nan = np.isnan(scores)
    clean = np.where(nan, -np.inf, scores) if nan.any() else scores  # no copy in the usual case
    if kk < num_items:
        # Ascending partition (the k best end the row): no negated copy of the scores.
        part = np.argpartition(clean, num_items - kk, axis=1)[:, num_items - kk :]
        kth = np.take_along_axis(clean, part, 1).min(axis=1)  # (n,) the k-th best score of each row
        # Rows with more items tied at the k-th score than slots left: argpartition chose among them freely.
        # (A row whose k-th score is -inf already holds all its returnable items.)
        ambiguous = np.flatnonzero(((clean >= kth[:, None]).sum(axis=1) > kk) & np.isfinite(kth))
        for row in ambiguous:
            better = np.flatnonzero(clean[row] > kth[row])
            tied = np.flatnonzero(clean[row] == kth[row])[: kk - len(better)]  # the lowest indices
            part[row] = np.concatenate([better, tied])
    else:
        part = np.broadcast_to(np.arange(num_items, dtype=np.int64), (n, num_items))
    part = np.sort(part, axis=1)  # ascending index, so the stable sort below breaks ties by index
    part_scores = np.take_along_axis(clean, part, 1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, 1)
    best[np.take_along_axis(part_scores, order, 1) == -np.inf] = -1
    out[:, :kk] = best
    return out


SMALL = 512  # top_k: up to this many scores, one sort is cheaper than a partition and its tie checks


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best positions of one score vector (I,), best first; fewer when fewer are returnable. int64.

    :func:`top_k_rows` for one row, without its 2-d indexing machinery (the request path calls this per request)."""
    scores = np.asarray(scores)
    num_items = len(scores)
    kk = min(k, num_items)
    if kk <= 0:
        return np.zeros(0, dtype=np.int64)
    # max() propagates NaN: one pass without a temporary finds out whether any needs replacing (rarely).
    clean = np.where(np.isnan(scores), -np.inf, scores) if np.isnan(scores.max()) else scores
    if num_items <= SMALL:  # one stable sort: ties keep index order
        best = np.argsort(-clean, kind="stable")[:kk]
        return best[clean[best] != -np.inf]
    if kk < num_items:
        part = np.argpartition(clean, num_items - kk)[num_items - kk :]  # ascending: no negated copy
        kth = clean[part].min()
        if np.isfinite(kth) and np.count_nonzero(clean >= kth) > kk:  # ties at the k-th score: the lowest indices
            better = np.flatnonzero(clean > kth)
            part = np.concatenate([better, np.flatnonzero(clean == kth)[: kk - len(better)]])
    else:
        part = np.arange(num_items, dtype=np.int64)
    part = np.sort(part)  # ascending index, so the stable sort below breaks ties by index
    part_scores = clean[part]
    order = np.argsort(-part_scores, kind="stable")
    best = part[order].astype(np.int64)
    return best[part_scores[order] != -np.inf]


def order_by_score(items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``items`` (n,) and their ``scores`` (n,) sorted by the same rule (score descending, then item index)."""
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, -np.asarray(scores)))
    return items[order], np.asarray(scores)[order]
