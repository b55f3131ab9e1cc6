"""Train/test splits of :class:`Interactions`: random, per-user stratified, per-user leave-last-out, whole users.

Every split returns ``(train, test)`` in the same id space as its input (rows keep their original
order within each part), is a partition of the rows (disjoint, together all of them) and is
deterministic for a given ``seed``. Splits draw (user, item) pairs, not rows: every row of a repeated
pair falls on the same side (:func:`model.interactions.pairs_of`).
"""

from __future__ import annotations

import numpy as np

from model.interactions import Interactions, pairs_of, random_split

__all__ = ["random_split", "stratified_split", "leave_last_out", "holdout_users", "fold_in_split"]


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def _rank_within_user(inter: Interactions, sort_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's 0-based position among its user's rows ordered by ``sort_key`` (ascending), and the
    number of rows of its user; both shape (n,), int64."""
    order = np.lexsort((sort_key, inter.user_idx))  # by user, then by key
    counts = np.bincount(inter.user_idx, minlength=inter.num_users)
    first = np.cumsum(counts) - counts  # row offset of each user's block in ``order``
    rank = np.empty(len(inter), dtype=np.int64)
    rank[order] = np.arange(len(inter), dtype=np.int64) - first[inter.user_idx[order]]
    return rank, counts[inter.user_idx]


def _partition(
    inter: Interactions, pair_of_row: np.ndarray, test_pair: np.ndarray
) -> tuple[Interactions, Interactions]:
    is_test = test_pair[pair_of_row]
    return inter.subset(~is_test), inter.subset(is_test)


def stratified_split(
    inter: Interactions, test_fraction: float = 0.25, seed: int = 0
) -> tuple[Interactions, Interactions]:
    """Hold out ``test_fraction`` of each user's rows, chosen at random.

    A user with ``n`` rows gets ``round(n * test_fraction)`` test rows (halves round up), but at least
    one and at most ``n - 1`` when ``n >= 2``: every user with two or more rows is both in train and in
    test. A user with a single row keeps it in train.
    """
    _check_fraction(test_fraction)
    pairs, pair_of_row = pairs_of(inter)
    rng = np.random.default_rng(seed)
    rank, counts = _rank_within_user(pairs, rng.random(len(pairs)))
    n_test = np.floor(counts * test_fraction + 0.5).astype(np.int64)
    n_test = np.where(counts >= 2, np.clip(n_test, 1, counts - 1), 0)
    return _partition(inter, pair_of_row, rank < n_test)


def leave_last_out(inter: Interactions, num_last: int = 1, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Hold out each user's ``num_last`` latest rows by timestamp (at most ``n - 1`` of a user's ``n``).

    Rows with equal timestamps are ordered at random (``seed``). A user with one row keeps it in train.

    Raises:
        ValueError: every timestamp is the same (e.g. the file had no timestamp column: they are all 0),
            so "latest" means nothing; or ``num_last < 1``.
    """
    if num_last < 1:
        raise ValueError(f"num_last must be >= 1, got {num_last}")
    if len(inter) and inter.timestamps.min() == inter.timestamps.max():
        raise ValueError(
            "leave-last-out needs timestamps, but every row has the same one "
            f"({int(inter.timestamps[0])}); does the data have a timestamp column?"
        )
    pairs, pair_of_row = pairs_of(inter)  # a pair's time is its latest row's
    tie_break = np.random.default_rng(seed).random(len(pairs))
    # Latest first: rank 0 is the newest pair (descending time, then the random tie-break).
    order_key = np.lexsort((tie_break, -pairs.timestamps))
    position = np.empty(len(pairs), dtype=np.int64)
    position[order_key] = np.arange(len(pairs), dtype=np.int64)
    rank, counts = _rank_within_user(pairs, position)
    return _partition(inter, pair_of_row, rank < np.minimum(num_last, counts - 1))


def holdout_users(inter: Interactions, test_fraction: float = 0.2, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Hold out every row of ``round(users * test_fraction)`` users drawn at random (among users with rows):
    the strong-generalisation protocol (Liang et al. 2018), where test users are never seen in training."""
    _check_fraction(test_fraction)
    users = np.unique(inter.user_idx)
    chosen = np.random.default_rng(seed).choice(users, int(round(len(users) * test_fraction)), replace=False)
    is_test = np.zeros(inter.num_users, dtype=bool)
    is_test[chosen] = True
    return inter.subset(~is_test[inter.user_idx]), inter.subset(is_test[inter.user_idx])


def fold_in_split(new_users: Interactions, fraction: float = 0.8, seed: int = 0) -> tuple[Interactions, Interactions]:
    """(history, held out) of held-out users: a random ``fraction`` of each one's items to fold in, the rest to
    score (the per-user split of :func:`stratified_split`)."""
    return stratified_split(new_users, 1.0 - fraction, seed=seed)
