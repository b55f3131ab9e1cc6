from __future__ import annotations

import numpy as np
import pytest

from model.data import RawRatings
from model.idmap import IdMap
from model.interactions import Interactions, build_dataset, encode_with
from model.splits import random_split


def test_fit_maps_to_contiguous_sorted_indices():
    id_map, idx = IdMap.fit(np.array(["b", "a", "c", "a"], dtype=object))
    assert id_map.ids == ["a", "b", "c"]
    assert idx.tolist() == [1, 0, 2, 0]
    assert id_map.decode(idx) == ["b", "a", "c", "a"]


def test_encode_unknown_is_minus_one_and_ints_are_strings():
    id_map = IdMap(["1", "2"])
    assert id_map.encode([2, "1", "zz"]).tolist() == [1, 0, -1]
    assert id_map.get(1) == 0 and id_map.get("nope") is None and 2 in id_map


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="unique"):
        IdMap(["a", "a"])


def _raw(users, items, ratings):
    n = len(users)
    return RawRatings(
        np.array(users, dtype=object),
        np.array(items, dtype=object),
        np.array(ratings, dtype=np.float32),
        np.zeros(n, dtype=np.int64),
        "fp",
        "test",
    )


def test_interactions_validate_on_construction():
    with pytest.raises(ValueError, match="user_idx out of range"):
        Interactions([0, 3], [0, 0], [1, 1], [0, 0], num_users=3, num_items=1)
    with pytest.raises(ValueError, match="ratings has 1 entries"):
        Interactions([0, 1], [0, 0], [1], [0, 0], num_users=3, num_items=1)
    with pytest.raises(ValueError, match="NaN"):
        Interactions([0], [0], [np.nan], [0], num_users=1, num_items=1)


def test_seen_csr_lists_distinct_items_per_user():
    ds = build_dataset(_raw(["u1", "u1", "u2", "u1"], ["b", "a", "a", "b"], [1, 2, 3, 4]))
    indptr, indices = ds.interactions.seen_csr()
    assert indptr.tolist() == [0, 2, 3] and indices.tolist() == [0, 1, 0]
    assert ds.interactions.item_counts().tolist() == [2, 2]


def test_random_split_keeps_id_space_and_partitions_rows():
    ds = build_dataset(_raw([str(i % 7) for i in range(100)], [str(i % 5) for i in range(100)], [3] * 100))
    train, test = random_split(ds.interactions, 0.2, seed=3)
    # 35 distinct (user, item) pairs, each on 2-3 rows: 7 pairs are held out, with all their rows.
    pairs = lambda part: set(zip(part.user_idx.tolist(), part.item_idx.tolist()))  # noqa: E731
    assert len(pairs(test)) == 7 and not pairs(train) & pairs(test) and len(train) + len(test) == 100
    assert (train.num_users, train.num_items) == (7, 5) == (test.num_users, test.num_items)
    again = random_split(ds.interactions, 0.2, seed=3)[1]
    assert np.array_equal(again.user_idx, test.user_idx)


def test_encode_with_drops_unknown_rows():
    ds = build_dataset(_raw(["a", "b"], ["x", "y"], [1, 2]))
    inter, known = encode_with(_raw(["a", "zz", "b"], ["y", "x", "q"], [5, 5, 5]), ds.user_map, ds.item_map)
    assert known.tolist() == [True, False, False]
    assert inter.user_idx.tolist() == [0] and inter.item_idx.tolist() == [1]
