"""Train/test splits of :class:`Interactions`: random, per-user stratified, whole users, a new user's fold-in.

Leave-last-out by time (the sequence models' split, ties to the later row in the file) lives with the timelines,
:func:`model.sequence_data.last_out`.

Every split returns ``(train, test)`` in the same id space as its input (rows keep their original
order within each part), is a partition of the rows (disjoint, together all of them) and is
deterministic for a given ``seed``. Splits draw (user, item) pairs, not rows: every row of a repeated
pair falls on the same side (:func:`model.interactions.pairs_of`).
"""

from __future__ import annotations

import numpy as np

from model.interactions import Interactions, pairs_of

__all__ = ["random_split", "stratified_split", "holdout_users", "fold_in_split"]


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


def random_split(inter: Interactions, test_fraction: float, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Shuffle the (user, item) pairs and hold out ``test_fraction`` of them, with all their rows. Both parts
    keep the id space."""
    _check_fraction(test_fraction)
    pairs, pair_of_row = pairs_of(inter)
    order = np.random.default_rng(seed).permutation(len(pairs))
    test_pair = np.zeros(len(pairs), dtype=bool)
    test_pair[order[: max(1, int(round(len(pairs) * test_fraction)))]] = True
    return _partition(inter, pair_of_row, test_pair)


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
