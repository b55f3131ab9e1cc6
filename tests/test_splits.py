"""Splits: partition of the rows, per-user proportions, latest rows held out, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from model.interactions import Interactions
from model.sequence_data import last_out
from model.splits import fold_in_split, random_split, stratified_split


def make_inter(rng, num_users: int = 30, num_items: int = 50, max_rows: int = 15, with_time: bool = True,
               repeats: bool = False):  # fmt: skip
    """Users with 1..max_rows rows each; ``ratings`` holds a unique row id so parts can be matched back.
    Each row is its own (user, item) pair unless ``repeats``."""
    counts = rng.integers(1, max_rows + 1, num_users)
    counts[:3] = [1, 2, 3]  # the edge cases are always there
    users = np.repeat(np.arange(num_users), counts)
    if repeats:
        items = rng.integers(0, num_items, len(users))
    else:
        items = np.concatenate([rng.choice(num_items, c, replace=False) for c in counts])
    stamps = rng.integers(1, 20, len(users)) if with_time else np.zeros(len(users), dtype=np.int64)
    return Interactions(users, items, np.arange(len(users)), stamps, num_users, num_items)


def row_ids(part: Interactions) -> np.ndarray:
    return part.ratings.astype(np.int64)


def assert_partition(inter: Interactions, train: Interactions, test: Interactions) -> None:
    a, b = row_ids(train), row_ids(test)
    assert not np.intersect1d(a, b).size, "train and test share rows"
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(len(inter))), "rows lost or duplicated"
    assert (train.num_users, train.num_items) == (test.num_users, test.num_items) == (inter.num_users, inter.num_items)
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0), "rows keep their order"


@pytest.mark.parametrize(
    "split",
    [lambda i, s: random_split(i, 0.25, s), lambda i, s: stratified_split(i, 0.25, s), lambda i, s: last_out(i)],
)
def test_every_split_is_a_deterministic_partition(rng, split):
    inter = make_inter(rng)
    train, test = split(inter, 3)
    assert_partition(inter, train, test)
    again = split(inter, 3)
    assert np.array_equal(row_ids(again[1]), row_ids(test))


def test_stratified_holds_out_the_fraction_of_each_user(rng):
    inter = make_inter(rng, num_users=60, max_rows=40)
    train, test = stratified_split(inter, 0.25, seed=0)
    assert_partition(inter, train, test)
    n = np.bincount(inter.user_idx, minlength=60)
    n_test = np.bincount(test.user_idx, minlength=60)
    # e.g. 40 rows -> 10 test; 3 rows -> round(0.75) = 1; 2 rows -> round half up (0.5) = 1; 1 row -> 0 (kept in train)
    expected = np.where(n >= 2, np.clip(np.floor(n * 0.25 + 0.5), 1, n - 1), 0)
    assert np.array_equal(n_test, expected)
    assert n_test[0] == 0 and n_test[1] == 1 and n_test[2] == 1
    assert np.all(np.bincount(train.user_idx, minlength=60) >= 1)
    other = stratified_split(inter, 0.25, seed=1)[1]
    assert not np.array_equal(row_ids(other), row_ids(test)), "the seed changes which rows are held out"


def test_fold_in_split_puts_the_fraction_in_the_history():
    """``fold_in_split(x, 0.8)``: 80% of each new user's items are folded in (history, the first part) and the rest
    scored. Passing the fraction to ``stratified_split`` uninverted folded in 20%, and returning the parts swapped
    scored the 80%; neither failed a test."""
    counts = np.array([10, 5, 2, 1, 20, 7])
    users = np.repeat(np.arange(len(counts)), counts)
    items = np.concatenate([np.arange(c) for c in counts])
    inter = Interactions(users, items, np.arange(len(users)), np.zeros(len(users), dtype=np.int64), len(counts), 20)
    history, heldout = fold_in_split(inter, 0.8, seed=0)
    assert_partition(inter, history, heldout)
    # held out: round(n * 0.2), at least 1 and at most n - 1 (n >= 2); a single item stays in the history
    assert np.bincount(heldout.user_idx, minlength=len(counts)).tolist() == [2, 1, 1, 0, 4, 1]
    assert np.bincount(history.user_idx, minlength=len(counts)).tolist() == [8, 4, 1, 1, 16, 6]


def test_bad_fractions_are_refused(rng):
    inter = make_inter(rng)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            stratified_split(inter, fraction)


@pytest.mark.parametrize("split", [lambda i, s: random_split(i, 0.25, s), lambda i, s: stratified_split(i, 0.25, s)])
def test_a_repeated_pair_is_never_on_both_sides(rng, split):
    """Before: splits drew rows, so the rows of a pair rated twice could land in train and in test."""
    inter = make_inter(rng, num_items=6, repeats=True)  # few items: many users rate an item more than once
    train, test = split(inter, 1)
    assert_partition(inter, train, test)
    keys = lambda part: set(zip(part.user_idx.tolist(), part.item_idx.tolist()))  # noqa: E731
    assert len(keys(inter)) < len(inter) and not keys(train) & keys(test)


def test_pairs_are_told_apart_past_two_billion_cells():
    """int32 indices: user 65536 x 65536 items wraps to 0 in int32, the key of (user 0, item 0)."""
    from model.interactions import pairs_of

    inter = Interactions(np.array([0, 65536]), np.array([0, 0]), np.ones(2), np.zeros(2), 65537, 65536)
    pairs, pair_of_row = pairs_of(inter)
    assert len(pairs) == 2 and pair_of_row.tolist() == [0, 1]
    assert len(inter.seen_csr()[1]) == 2


def test_a_large_test_fraction_still_leaves_every_user_a_training_row(rng):
    """The docstring's "at most n - 1": at 0.99 every user of two or more rows keeps exactly one row in training
    and a single-row user keeps its row there (a mutation review let the split take all n rows unnoticed; then
    ``fold_in_split`` below a half would leave new users with an empty history)."""
    inter = make_inter(rng)
    train, test = stratified_split(inter, 0.99, seed=1)
    counts = np.bincount(inter.user_idx, minlength=inter.num_users)
    kept = np.bincount(train.user_idx, minlength=inter.num_users)
    assert np.array_equal(kept, np.ones(inter.num_users, dtype=np.int64)) and counts.min() == 1
    assert np.array_equal(np.bincount(test.user_idx, minlength=inter.num_users), counts - 1)
