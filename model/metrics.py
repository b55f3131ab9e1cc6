"""Top-k ranking metrics, vectorised in numpy (no torch): precision, recall, nDCG, MAP, hit rate, coverage.

Protocol (the one implicit's ``ranking_metrics_at_k`` uses, and the one the benchmark applies to every
model alike): each user's training items are excluded from their top-k list; every held-out item is
relevant (binary relevance); held-out items the user also has in training are dropped from the relevant
set, since they can never be recommended; users left with no relevant item are skipped. Each metric is
computed per evaluated user and averaged over those users (macro average). With ``hits[u, j]`` = 1 when
the j-th recommended item (j = 1..k) is relevant and ``R_u`` the number of relevant items:

- precision@k = ``sum_j hits[u, j] / k`` (k even when fewer than k items could be recommended);
- recall@k = ``sum_j hits[u, j] / R_u`` (the usual definition; implicit's "precision" divides the hits by
  ``min(k, R_u)`` instead, and micro-averages);
- nDCG@k = ``DCG / IDCG`` with ``DCG = sum_j hits[u, j] / log2(j + 1)`` and the ideal
  ``IDCG = sum_{j=1..min(k, R_u)} 1 / log2(j + 1)`` (identical to implicit's);
- MAP@k: mean of ``AP@k = sum_j hits[u, j] * precision@j / min(k, R_u)`` (identical to implicit's);
- hit rate@k = 1 if any of the k items is relevant, else 0;
- coverage@k = distinct items in all evaluated users' top-k lists / catalogue size (one number, not
  averaged over users).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from model.keys import member_of, sorted_unique
from model.topk import top_k_rows

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""``score(user_idx (n,) int64) -> (n, num_items) float``: higher ranks first."""

CSR = tuple[np.ndarray, np.ndarray]
"""Each user's items as ``(indptr (num_users + 1,), indices (nnz,))``, int64, as ``Interactions.seen_csr``."""

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")

# Scores of one batch stay under this many bytes (float32 and a float64 copy at most).
_BATCH_BYTES = 64 * 2**20


@dataclass(frozen=True)
class RankingMetrics:
    """Means over ``users`` evaluated users; ``coverage`` over the catalogue."""

    k: int
    precision: float
    recall: float
    ndcg: float
    map: float
    hit_rate: float
    coverage: float
    users: int  # users with at least one relevant held-out item, i.e. evaluated
    skipped_users: int  # users with held-out rows but no relevant item left (all of them in training)
    ndcg_se: float = float("nan")  # standard error of the mean nDCG over users: std (ddof=1) / sqrt(users)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def csr_rows(csr: CSR, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of rows ``users`` of a CSR, flattened: ``(row position in users (m,), column (m,))``."""
    indptr, indices = csr
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
    # Position of each entry inside its row, then offset by the row's start: a vectorised gather.
    within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, indices[np.repeat(starts, counts) + within]


def top_k_items(
    score: ScoreFn,
    user_idx: np.ndarray,
    k: int,
    num_items: int,
    exclude: CSR | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Each user's ``k`` best items, best first, skipping the user's ``exclude`` items.

    Args:
        score: see :data:`ScoreFn`; called once per batch of users.
        user_idx: shape (n,), int64, the users to rank for.
        exclude: items never to recommend to each user (normally their training items).
        batch_size: users per call of ``score``; default keeps a batch's scores under 64 MiB.
    Returns:
        shape (n, k), int64 item indices; ``-1`` pads rows with fewer than ``k`` recommendable items.
    Raises:
        ValueError: ``k < 1``, or ``score`` returned a wrong shape or NaN.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    user_idx = np.asarray(user_idx, dtype=np.int64)
    batch_size = batch_size or max(1, _BATCH_BYTES // (8 * max(num_items, 1)))
    out = np.full((len(user_idx), k), -1, dtype=np.int64)
    for start in range(0, len(user_idx), batch_size):
        users = user_idx[start : start + batch_size]
        scores = np.array(score(users), dtype=np.float64)  # a private copy: excluded items are overwritten
        if scores.shape != (len(users), num_items):
            raise ValueError(f"score returned shape {scores.shape}, expected {(len(users), num_items)}")
        if np.isnan(scores).any():
            raise ValueError("score returned NaN")
        if exclude is not None:
            scores[csr_rows(exclude, users)] = -np.inf
        out[start : start + len(users)] = top_k_rows(scores, k)  # excluded (-inf): -1, nothing left to offer
    return out


def hit_matrix(top: np.ndarray, relevant: CSR, user_idx: np.ndarray, num_items: int) -> np.ndarray:
    """``hits[r, j]`` = whether item ``top[r, j]`` is among user ``user_idx[r]``'s relevant items; (n, k) bool."""
    rows, items = csr_rows(relevant, np.asarray(user_idx, dtype=np.int64))
    relevant_keys = np.sort(rows * num_items + items)  # one int64 key per (row, item) pair
    keys = np.arange(len(top), dtype=np.int64)[:, None] * num_items + top
    return member_of(keys, relevant_keys) & (top >= 0)


def per_user_metrics(hits: np.ndarray, num_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of :data:`METRIC_NAMES` per user, shape (n,) float64, from hits (n, k) and R_u (n,) >= 1."""
    hits = np.asarray(hits, dtype=np.float64)
    n_rel = np.asarray(num_relevant, dtype=np.float64)
    k = hits.shape[1]
    rank = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(rank + 1.0)  # (k,)
    capped = np.minimum(n_rel, k)  # min(k, R_u)
    ideal = np.cumsum(discount)[capped.astype(np.int64) - 1]
    precision_at_j = np.cumsum(hits, axis=1) / rank  # (n, k)
    n_hits = hits.sum(axis=1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / n_rel,
        "ndcg": (hits @ discount) / ideal,
        "map": (precision_at_j * hits).sum(axis=1) / capped,
        "hit_rate": (n_hits > 0).astype(np.float64),
    }


def coverage(top: np.ndarray, num_items: int) -> float:
    """Distinct items recommended across all lists / ``num_items`` (``-1`` padding ignored)."""
    return float(len(np.unique(top[top >= 0])) / num_items) if num_items else 0.0


def relevant_items(test: CSR, train: CSR | None, num_items: int) -> CSR:
    """``test`` deduplicated and without the (user, item) pairs also in ``train`` (never recommendable)."""
    indptr, indices = test
    num_users = len(indptr) - 1
    keys = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(indptr)) * num_items + indices
    if train is not None and len(train[1]):
        train_users = np.repeat(np.arange(len(train[0]) - 1, dtype=np.int64), np.diff(train[0]))
        keys = keys[~member_of(keys, train_users * num_items + train[1])]  # CSR order: already sorted
    keys = sorted_unique(keys)
    new_ptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // num_items, minlength=num_users), out=new_ptr[1:])
    return new_ptr, keys % num_items


def evaluate_ranking(
    score: ScoreFn,
    train: CSR | None,
    test: CSR,
    num_items: int,
    k: int = 10,
    batch_size: int | None = None,
    users: np.ndarray | None = None,
) -> tuple[RankingMetrics, dict[str, np.ndarray]]:
    """Rank for every user with held-out items and compute all metrics (see the module docstring).

    Args:
        score: see :data:`ScoreFn`.
        train: each user's training items, excluded from their lists (``None``: nothing excluded).
        test: each user's held-out items (distinct per user, as ``Interactions.seen_csr`` gives them).
        users: evaluate only these users (a sample); default every user with a relevant item.
    Returns:
        (the means, per-user arrays of shape (users,) plus ``"user_idx"``, for confidence intervals).
    """
    relevant = relevant_items(test, train, num_items)
    n_test, n_rel = np.diff(test[0]), np.diff(relevant[0])
    candidates = np.zeros(len(n_rel), dtype=bool)
    candidates[np.arange(len(n_rel)) if users is None else np.asarray(users, dtype=np.int64)] = True
    users = np.flatnonzero(candidates & (n_rel > 0)).astype(np.int64)
    skipped = int(np.count_nonzero(candidates & (n_test > 0) & (n_rel == 0)))
    if not len(users):
        nan = float("nan")
        return RankingMetrics(k, nan, nan, nan, nan, nan, nan, 0, skipped), {"user_idx": users}
    top = top_k_items(score, users, k, num_items, train, batch_size)
    per_user = per_user_metrics(hit_matrix(top, relevant, users, num_items), n_rel[users])
    means = {name: float(per_user[name].mean()) for name in METRIC_NAMES}
    se = float(per_user["ndcg"].std(ddof=1) / np.sqrt(len(users))) if len(users) > 1 else float("nan")
    metrics = RankingMetrics(
        k=k, **means, coverage=coverage(top, num_items), users=len(users), skipped_users=skipped, ndcg_se=se
    )
    return metrics, {"user_idx": users, **per_user}


# The strong-generalisation figures (Liang et al. 2018's table, plus nDCG@10): name -> (metric, cutoff).
FOLD_IN_METRICS = {"ndcg@100": ("ndcg", 100), "recall@20": ("recall", 20), "recall@50": ("recall", 50),
                   "ndcg@10": ("ndcg", 10)}  # fmt: skip


def evaluate_fold_in(score: ScoreFn, history: CSR, heldout: CSR, num_items: int) -> dict[str, float]:
    """:data:`FOLD_IN_METRICS` over users never trained on: ``score`` ranks from each user's ``history`` (excluded
    from their list) and their ``heldout`` items are relevant. nDCG as :func:`per_user_metrics`; recall as in
    the Mult-VAE paper, ``hits@k / min(k, R_u)`` (so a perfect list scores 1). Means over users with a relevant
    item; ``users`` counts them."""
    relevant = relevant_items(heldout, history, num_items)
    n_rel = np.diff(relevant[0])
    users = np.flatnonzero(n_rel > 0).astype(np.int64)
    depth = max(cutoff for _, cutoff in FOLD_IN_METRICS.values())
    top = top_k_items(score, users, depth, num_items, history)
    hits = hit_matrix(top, relevant, users, num_items)
    out: dict[str, float] = {"users": float(len(users))}
    for name, (metric, k) in FOLD_IN_METRICS.items():
        if metric == "ndcg":
            out[name] = float(per_user_metrics(hits[:, :k], n_rel[users])["ndcg"].mean())
        else:
            out[name] = float((hits[:, :k].sum(axis=1) / np.minimum(k, n_rel[users])).mean())
    return out
