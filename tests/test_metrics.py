"""Ranking metrics against hand-computed examples and a plain-loop reference; top-k exclusion and batching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluate import mae, rmse
from model.metrics import (
    METRIC_NAMES,
    coverage,
    evaluate_fold_in,
    evaluate_ranking,
    hit_matrix,
    per_user_metrics,
    relevant_items,
    top_k_items,
)


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return indptr, np.array([i for r in rows for i in sorted(r)], dtype=np.int64)


# 5 users x 6 items, k = 3. Scores per user (higher is better):
SCORES = np.array(
    [
        [9, 5, 8, 1, 7, 0],  # u0: item 0 is training -> ranked 2 (8), 4 (7), 1 (5)
        [4, 3, 10, 2, 1, 9],  # u1: items 2, 5 are training -> ranked 0 (4), 1 (3), 3 (2)
        [1, 2, 3, 4, 5, 6],  # u2: no held-out items -> not evaluated
        [1, 2, 3, 4, 5, 6],  # u3: its only held-out item is also a training item -> skipped
        [6, 5, 4, 3, 2, 1],  # u4: nothing in training -> ranked 0, 1, 2
    ],
    dtype=np.float32,
)
TRAIN = csr([[0], [2, 5], [1], [0], []])
TEST = csr([[1, 3], [0, 1, 3, 4], [], [0], [5]])


def score(users: np.ndarray) -> np.ndarray:
    return SCORES[users]


def test_top_k_excludes_training_items_and_orders_best_first():
    top = top_k_items(score, np.array([0, 1, 4]), 3, 6, exclude=TRAIN)
    assert top.tolist() == [[2, 4, 1], [0, 1, 3], [0, 1, 2]]


def test_top_k_pads_with_minus_one_when_too_few_items_remain():
    top = top_k_items(score, np.array([1]), 5, 6, exclude=csr([[], [0, 1, 2, 3, 4, 5]]))
    assert top.tolist() == [[-1] * 5]
    top = top_k_items(score, np.array([0]), 8, 6, exclude=csr([[0, 2]]))  # k > catalogue
    assert top.tolist() == [[4, 1, 3, 5, -1, -1, -1, -1]]


def test_every_metric_on_a_hand_computed_example():
    metrics, per_user = evaluate_ranking(score, TRAIN, TEST, num_items=6, k=3)
    # Evaluated users: u0, u1, u4 (u2 has no held-out item; u3's only one is in training -> skipped).
    assert per_user["user_idx"].tolist() == [0, 1, 4]
    assert (metrics.users, metrics.skipped_users, metrics.k) == (3, 1, 3)
    # hits: u0 [2,4,1] vs {1,3} -> [0,0,1], R=2; u1 [0,1,3] vs {0,1,3,4} -> [1,1,1], R=4;
    #       u4 [0,1,2] vs {5} -> [0,0,0], R=1.
    # precision = hits / k: (1/3 + 3/3 + 0) / 3 = 4/9
    assert metrics.precision == pytest.approx(4 / 9)
    # recall = hits / R: (1/2 + 3/4 + 0) / 3 = 5/12
    assert metrics.recall == pytest.approx(5 / 12)
    # nDCG: u0 DCG = 1/log2(4) = 0.5, IDCG over min(3, 2) = 2 positions = 1 + 1/log2(3) = 1.6309298 -> 0.3065736;
    # u1 DCG = IDCG (3 hits in 3 positions) -> 1; u4 -> 0. Mean (0.3065736 + 1 + 0) / 3 = 0.4355245
    assert per_user["ndcg"].tolist() == pytest.approx([0.5 / (1 + 1 / math.log2(3)), 1.0, 0.0])
    assert metrics.ndcg == pytest.approx(0.4355245, abs=1e-7)
    # standard error: sample std of (0.3065736, 1, 0) = sqrt(((-.1289509)^2 + .5644755^2 + (-.4355245)^2) / 2)
    #   = sqrt((0.0166283 + 0.3186326 + 0.1896816) / 2) = sqrt(0.2624713) = 0.5123195; / sqrt(3) = 0.2957878
    assert metrics.ndcg_se == pytest.approx(0.2957878, abs=1e-6)
    # AP: u0 = (precision@3 = 1/3) / min(3, 2) = 1/6; u1 = (1/1 + 2/2 + 3/3) / min(3, 4) = 1; u4 = 0.
    # MAP = (1/6 + 1 + 0) / 3 = 7/18
    assert metrics.map == pytest.approx(7 / 18)
    # hit rate: u0 and u1 have a hit, u4 none -> 2/3
    assert metrics.hit_rate == pytest.approx(2 / 3)
    # coverage: {2,4,1} | {0,1,3} | {0,1,2} = {0,1,2,3,4}: 5 of 6 items
    assert metrics.coverage == pytest.approx(5 / 6)


def test_short_lists_keep_k_as_precision_denominator():
    # 3 items, user saw 0 and 1 -> the list is [2, -1, -1]; item 2 is the one relevant item.
    metrics, _ = evaluate_ranking(lambda u: np.ones((len(u), 3)), csr([[0, 1]]), csr([[2]]), 3, k=3)
    # precision 1/3 (k stays 3); recall 1/1; nDCG 1 (IDCG over min(3, 1) = 1 position); AP 1/1; hit 1; coverage 1/3
    assert (metrics.precision, metrics.recall, metrics.ndcg, metrics.map, metrics.hit_rate) == pytest.approx(
        (1 / 3, 1, 1, 1, 1)
    )
    assert metrics.coverage == pytest.approx(1 / 3)


def test_rmse_and_mae_by_hand():
    # errors: +1, -2, 0, +1 -> RMSE = sqrt((1 + 4 + 0 + 1) / 4) = sqrt(1.5); MAE = (1 + 2 + 0 + 1) / 4 = 1
    pred, truth = np.array([4.0, 1.0, 3.0, 5.0]), np.array([3.0, 3.0, 3.0, 4.0])
    assert rmse(pred, truth) == pytest.approx(math.sqrt(1.5))
    assert mae(pred, truth) == pytest.approx(1.0)


def reference_metrics(top: list[list[int]], relevant: list[set[int]], k: int) -> dict[str, list[float]]:
    """Plain per-user loops, written from the definitions (as implicit's ranking_metrics_at_k does)."""
    out: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for items, rel in zip(top, relevant):
        hits = [1.0 if i in rel else 0.0 for i in items]
        found, ap, dcg = 0, 0.0, 0.0
        for j, h in enumerate(hits):
            if h:
                found += 1
                ap += found / (j + 1)
                dcg += 1 / math.log2(j + 2)
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
        out["precision"].append(found / k)
        out["recall"].append(found / len(rel))
        out["ndcg"].append(dcg / idcg)
        out["map"].append(ap / min(k, len(rel)))
        out["hit_rate"].append(float(found > 0))
    return out


def test_vectorised_metrics_match_a_plain_loop_on_random_data(rng):
    num_users, num_items, k = 40, 30, 7
    scores = rng.normal(size=(num_users, num_items))
    train = csr([list(rng.choice(num_items, rng.integers(0, 10), replace=False)) for _ in range(num_users)])
    test = csr([list(rng.choice(num_items, rng.integers(0, 12), replace=False)) for _ in range(num_users)])
    metrics, per_user = evaluate_ranking(lambda u: scores[u], train, test, num_items, k=k)
    rel_ptr, rel_idx = relevant_items(test, train, num_items)
    users = per_user["user_idx"]
    relevant = [set(rel_idx[rel_ptr[u] : rel_ptr[u + 1]].tolist()) for u in users]
    top = []
    for u in users:  # brute force: sort every unseen item
        seen = set(train[1][train[0][u] : train[0][u + 1]].tolist())
        top.append([i for i in np.argsort(-scores[u], kind="stable") if i not in seen][:k])
    expected = reference_metrics(top, relevant, k)
    for name in METRIC_NAMES:
        assert per_user[name] == pytest.approx(expected[name]), name
        assert getattr(metrics, name) == pytest.approx(np.mean(expected[name])), name
    assert metrics.coverage == pytest.approx(len({i for t in top for i in t}) / num_items)


def test_batching_does_not_change_the_lists(rng):
    scores = rng.normal(size=(25, 40)).astype(np.float32)
    train = csr([list(rng.choice(40, 5, replace=False)) for _ in range(25)])
    users = np.arange(25)
    whole = top_k_items(lambda u: scores[u], users, 10, 40, train)
    assert np.array_equal(whole, top_k_items(lambda u: scores[u], users, 10, 40, train, batch_size=1))
    assert np.array_equal(whole, top_k_items(lambda u: scores[u], users, 10, 40, train, batch_size=7))


def test_bad_scores_and_k_are_refused():
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_items(score, np.array([0]), 0, 6)
    with pytest.raises(ValueError, match="shape"):
        top_k_items(lambda u: np.zeros((len(u), 5)), np.array([0]), 3, 6)
    with pytest.raises(ValueError, match="NaN"):
        top_k_items(lambda u: np.full((len(u), 6), np.nan), np.array([0]), 3, 6)


def test_no_evaluable_user_gives_nan_not_an_error():
    metrics, _ = evaluate_ranking(score, TRAIN, csr([[0], [], [], [], []]), 6, k=3)  # u0's held-out item is training
    assert metrics.users == 0 and metrics.skipped_users == 1 and math.isnan(metrics.ndcg)


def test_hit_matrix_and_coverage_ignore_padding():
    top = np.array([[3, -1], [0, 1]])
    hits = hit_matrix(top, csr([[3], [1, 2]]), np.array([0, 1]), num_items=4)
    assert hits.tolist() == [[True, False], [False, True]]
    assert coverage(top, 4) == pytest.approx(3 / 4)
    assert per_user_metrics(hits, np.array([1, 2]))["recall"].tolist() == [1.0, 0.5]


def test_padding_in_a_later_row_is_not_the_previous_row_s_last_item():
    """Row r's -1 pad has the key r * num_items - 1, the key of (row r - 1, item num_items - 1): without the
    ``top >= 0`` mask it counted as a hit whenever the row above had the catalogue's last item relevant."""
    top = np.array([[0, 1], [2, -1]])
    hits = hit_matrix(top, csr([[3], [2]]), np.array([0, 1]), num_items=4)  # row 0's relevant item is item 3
    assert hits.tolist() == [[False, False], [True, False]]


def test_evaluate_ranking_scores_only_the_users_asked_for():
    """The validation sample (``users=``) was once ignored: every user was ranked, slower and another figure."""
    metrics, per_user = evaluate_ranking(score, TRAIN, TEST, num_items=6, k=3, users=np.array([0, 3, 4]))
    # u1 (not asked for) is left out; u3 is asked for but skipped (its only held-out item is in training).
    assert per_user["user_idx"].tolist() == [0, 4]
    assert (metrics.users, metrics.skipped_users) == (2, 1)
    # as in the hand-computed example above: u0 precision 1/3, nDCG 0.3065736; u4 nothing
    assert metrics.precision == pytest.approx(1 / 6)
    assert metrics.ndcg == pytest.approx(0.5 / (1 + 1 / math.log2(3)) / 2)
    assert metrics.coverage == pytest.approx(4 / 6)  # {2, 4, 1} | {0, 1, 2}


def test_fold_in_metrics_on_a_hand_computed_example():
    """evaluate.py --fold-in's figures, each by hand: recall@k divides by min(k, R_u) (Mult-VAE), not R_u; each
    nDCG stops at its own cutoff and the list is ranked 100 deep; the history, scored highest, is not in the list.
    Before this test, dividing by R_u, nDCG@10 cut at 100, a depth of 50 or a list with the history in it all
    passed."""
    num_items = 120
    # Every user scores item i as num_items - i: item 0 (everyone's history) is the best, then 1, 2, ... With the
    # history excluded, item i is at rank i.
    ranked = lambda users: np.tile(np.arange(num_items, 0, -1, dtype=np.float32), (len(users), 1))  # noqa: E731
    history = csr([[0], [0], [0]])
    # u0: 25 relevant items, ranks 1..25 (more than 20); u1: ranks 3 and 60; u2: its one held-out item is in its
    # history, so it has nothing relevant and is not averaged.
    heldout = csr([list(range(1, 26)), [3, 60], [0]])
    out = evaluate_fold_in(ranked, history, heldout, num_items)
    assert out["users"] == 2
    idcg2 = 1 + 1 / math.log2(3)  # u1's ideal: two hits at ranks 1 and 2
    # recall@20: u0 20 hits / min(20, 25) = 1 (not 20 / 25); u1 1 hit (rank 3) / min(20, 2) = 1/2
    assert out["recall@20"] == pytest.approx((1 + 1 / 2) / 2)
    # recall@50: u0 25 / 25; u1 still 1 / 2 (rank 60 is past 50)
    assert out["recall@50"] == pytest.approx((1 + 1 / 2) / 2)
    # nDCG@10: u0 10 hits in 10 = 1; u1 only the hit at rank 3: (1 / log2(4)) / idcg2 = 0.5 / 1.6309298
    assert out["ndcg@10"] == pytest.approx((1 + 0.5 / idcg2) / 2)
    # nDCG@100: u0 a perfect list = 1; u1 ranks 3 and 60: (1/2 + 1/log2(61)) / idcg2
    assert out["ndcg@100"] == pytest.approx((1 + (0.5 + 1 / math.log2(61)) / idcg2) / 2)
