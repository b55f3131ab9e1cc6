"""The precomputed top-N lists answer exactly what a full scan answers."""

from __future__ import annotations

import numpy as np

from service.index import top_k
from service.topn import TopNCache


def _scan(user_vectors, item_vectors, seen, user, k, banned):
    scores = item_vectors @ user_vectors[user]
    scores[np.concatenate([seen[user], banned]).astype(np.int64)] = -np.inf
    top = top_k(scores, k)
    return top, scores[top]


def test_lookup_equals_scan_with_and_without_bans():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(50, 9)).astype(np.float32), rng.normal(size=(300, 9)).astype(np.float32)
    seen = [rng.choice(300, rng.integers(0, 40), replace=False) for _ in range(50)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    cache = TopNCache.scan(users, items, indptr, np.concatenate(seen).astype(np.int64), n=20, block=7)
    for user in range(50):
        for k, banned in [(10, np.empty(0, np.int64)), (20, np.empty(0, np.int64)), (5, cache.items[user, :3])]:
            got = cache.lookup(user, k, banned.astype(np.int64))
            want = _scan(users, items, seen, user, k, banned)
            assert got is not None
            assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1])
        assert cache.lookup(user, 21, np.empty(0, np.int64)) is None  # beyond the list: caller scans
        assert cache.lookup(user, 15, cache.items[user, :10].astype(np.int64)) is None


def test_small_catalogue_lists_every_unseen_item():
    users, items = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    cache = TopNCache.scan(users, items, np.array([0, 1, 1, 4]), np.array([0, 0, 1, 2]), n=100)
    assert cache.n == 4
    got = cache.lookup(0, 10, np.empty(0, np.int64))
    assert got[0].tolist() == [3, 1, 2]  # item 0 seen; item 3 equals user 0's vector
    assert cache.lookup(2, 10, np.empty(0, np.int64))[0].tolist() == [3]  # only item 3 left unseen


def test_served_answers_identical_with_and_without_lists(small_ckpt_path):
    """The index answers from the lists when it can and scans otherwise; both give the same items."""
    from service.state import load_state
    from service.topn import TopNConfig

    cached = load_state(small_ckpt_path, topn=TopNConfig(n=8)).index
    scanned = load_state(small_ckpt_path, topn=TopNConfig(max_cells=0)).index
    assert cached.topn is not None and scanned.topn is None
    users = list(cached.user_index)[:40]
    some_items = list(cached.item_index)[:15]
    for user in users:
        for kwargs in ({"k": 5}, {"k": 8}, {"k": 20}, {"k": 5, "exclude": some_items}, {"k": 3, "exclude_seen": False}):
            a, b = cached.recommend(user, **kwargs), scanned.recommend(user, **kwargs)
            assert a.item_ids == b.item_ids
            assert np.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_scan_on_threads_equals_one_thread_and_reports_progress(rng):
    users, items = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    indptr = np.arange(0, 101, 2, dtype=np.int64)
    seen = rng.integers(0, 30, size=100).astype(np.int64)
    one = TopNCache.scan(users, items, indptr, seen, n=6, block=7)
    calls = []
    many = TopNCache.scan(users, items, indptr, seen, n=6, block=7, threads=3, progress=lambda *a: calls.append(a))
    assert np.array_equal(one.items, many.items)
    assert calls == [(min(stop, 50), 50) for stop in range(7, 57, 7)]  # every block, in order
