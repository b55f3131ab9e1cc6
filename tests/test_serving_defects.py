"""Serving defects found by review, each pinned: implicit /predict, rated fold-in, popular duplicates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model import checkpoint
from model.data import RawRatings
from model.interactions import build_dataset
from model.topk import top_k
from model.train import fit
from service.index import ServingIndex
from tests.test_models import BLOCK, KINDS, block, checkerboard
from tests.test_uwsgi import call


@pytest.fixture(scope="module")
def default_mf(tmp_path_factory):
    """The default model kind: a rating MF with its implicit-ALS ranking head, on the checkerboard."""
    torch.manual_seed(0)
    dataset = build_dataset(checkerboard())
    result = fit(dataset.interactions, KINDS["mf"], progress=False)
    return checkpoint.save(checkpoint.from_training(result, dataset), tmp_path_factory.mktemp("d") / "m.ckpt")


@pytest.fixture(scope="module")
def implicit_mf(tmp_path_factory):
    raw = checkerboard()
    implicit = RawRatings(raw.user_ids, raw.item_ids, np.ones(len(raw), np.float32), raw.timestamps, "imp", "imp",
                          implicit=True)  # fmt: skip
    dataset = build_dataset(implicit)
    config = KINDS["mf-bpr"].__class__(dim=8, epochs=30, lr=0.05, reg=0.1, val_fraction=0)  # mf, softmax (auto)
    result = fit(dataset.interactions, config, progress=False, implicit=True)
    return checkpoint.save(checkpoint.from_training(result, dataset), tmp_path_factory.mktemp("i") / "m.ckpt")


def test_predict_on_implicit_data_is_a_preference_not_always_one(implicit_mf):
    """Before: every answer was 1.0 (the sigmoid squashed onto the scale [1, 1] of implicit data)."""
    index = ServingIndex(checkpoint.load(implicit_mf))
    users = [f"u{u}" for u in range(0, 48, 5)]
    own = index.predict(users, [f"i{(int(u[1:]) // 12) * BLOCK + 9}" for u in users]).ratings
    other = index.predict(users, [f"i{((int(u[1:]) // 12 + 2) % 4) * BLOCK + 9}" for u in users]).ratings
    assert all(0.0 < r < 1.0 for r in own + other)
    assert np.mean(own) > np.mean(other) + 0.1


def test_fold_in_uses_the_ratings_given(default_mf):
    """Before: the default model's fold-in ignored ratings, so a history of one loved block-2 item and four
    hated block-3 items was recommended block 3."""
    index = ServingIndex(checkpoint.load(default_mf))
    history = ["i20", "i30", "i31", "i32", "i33"]
    rated = index.recommend_for_history(history, 3, ratings=[5.0, 1.0, 1.0, 1.0, 1.0])
    assert [block(i) for i in rated.item_ids] == [2, 2, 2], rated.item_ids
    unrated = index.recommend_for_history(history, 3)
    assert [block(i) for i in unrated.item_ids] == [3, 3, 3], unrated.item_ids


def test_a_bottom_rated_item_does_not_attract_under_implicit_als(default_mf):
    """Implicit ALS weighs a history item by its liking ``(r - low) / (high - low)`` clipped to [0, 1]: an item
    rated at the bottom of the scale (or below it) counts as never interacted with, so a history of one loved item
    and hated ones folds in as the loved item alone, and a rating above the scale as the top of it. Before this
    test, a bottom-rated item still counted with confidence 1, and unclipped weights (negative, over 1) passed."""
    index = ServingIndex(checkpoint.load(default_mf))
    low, high = index.folding.low, index.folding.high
    loved = index.item_indices(["i20"])
    alone = index.fold_in(loved, np.array([high], np.float32))
    mixed = index.item_indices(["i20", "i30", "i31", "i32"])  # loved, then rated at the bottom and below it
    folded = index.fold_in(mixed, np.array([high, low, low, low - 1.0], np.float32))
    np.testing.assert_allclose(folded, alone, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(index.fold_in(loved, np.array([high + 1.0], np.float32)), alone, rtol=1e-4, atol=1e-6)
    # The answer: the loved item's neighbours (block 2), the history excluded
    scores = index.item_vectors @ alone
    scores[mixed] = -np.inf
    want = [index.item_ids[i] for i in top_k(scores, 5)]
    got = index.recommend_for_history(["i20", "i30", "i31", "i32"], 5, ratings=[high, low, low, low - 1.0]).item_ids
    assert got == want and [block(i) for i in got] == [2] * 5, got


def test_popular_fallback_never_repeats_an_item(client):
    """Before: items=i1,i1,i2 for an unknown user answered i1 twice."""
    body = client.get("/recommend?user_id=nobody&k=5&items=i1,i1,i2,i2,i1").get_json()
    ids = [i["item_id"] for i in body["items"]]
    assert body["fallback"] == "popular" and sorted(ids) == ["i1", "i2"], ids


def test_the_default_model_through_the_flask_client(default_mf):
    """The default kind (rating MF + ranking head) answers every route through the app with the known answer."""
    from service import create_app

    client = create_app({"CHECKPOINT": str(default_mf), "TESTING": True, "RELOAD_INTERVAL": 0}).test_client()
    info = client.get("/model").get_json()
    assert info["kind"] == "mf" and info["config"]["rank_loss"] == "ials" and info["config"]["loss"] == "mse"
    own = [block(i["item_id"]) == 1 for u in range(12, 24) for i in
           client.get(f"/recommend?user_id=u{u}&k=2").get_json()["items"]]  # fmt: skip
    assert np.mean(own) >= 0.8, own
    raw = checkerboard()  # the training rows: liked (4-5) and disliked (1-2) pairs, the rating model must tell
    pairs = [{"user_id": u, "item_id": i} for u, i in zip(raw.user_ids, raw.item_ids)]
    ratings = np.array([p["rating"] for p in client.post("/predict", json={"pairs": pairs}).get_json()["predictions"]])
    assert ratings.min() >= 1.0 and ratings.max() <= 5.0
    assert ratings[raw.ratings >= 4].mean() > ratings[raw.ratings <= 2].mean() + 0.05  # a tiny, heavily regularised fit
    history = [{"item_id": "i30", "rating": 5}, {"item_id": "i31", "rating": 5}]
    folded = client.post("/recommend", json={"history": history, "k": 3})
    assert folded.status_code == 200 and all(block(i["item_id"]) == 3 for i in folded.get_json()["items"])
    similar = client.get("/similar?item_id=i5&k=3").get_json()["items"]
    assert len(similar) == 3 and sum(block(i["item_id"]) == 0 for i in similar) >= 2
    assert client.get("/readyz").get_json()["ready"] is True


def test_ials_fold_in_solves_with_its_own_l2_over_uwsgi(default_mf, start_uwsgi, tmp_path):
    """A new user's implicit-ALS solve uses the fold-in's L2 (chosen for new users), a known user's explanation
    and a file written without that field keep training's; POST /recommend under uWSGI answers that solve."""
    trained_ckpt = checkpoint.load(default_mf)
    assert trained_ckpt.config.fold_in_reg is not None  # resolved and stored at training
    ckpt = replace(trained_ckpt, config=replace(trained_ckpt.config, fold_in_reg=0.5))
    path = checkpoint.save(ckpt, tmp_path / "fold.ckpt")
    index = ServingIndex(checkpoint.load(path))
    alpha, train_reg, fold_reg = ckpt.config.alpha, ckpt.config.rank_reg, 0.5
    assert fold_reg != train_reg
    history = ["i30", "i31", "i34"]
    hist = index.item_indices(history)
    items = index.item_vectors[:, :-1].astype(np.float64)

    def solve(reg: float) -> np.ndarray:
        y = items[hist]
        gram = items.T @ items + reg * np.eye(index.dim) + alpha * y.T @ y
        return np.linalg.solve(gram, (1.0 + alpha) * y.sum(axis=0))

    folded, trained = solve(fold_reg), solve(train_reg)
    assert not np.allclose(folded, trained, rtol=1e-2)  # the two L2s give different users
    np.testing.assert_allclose(index.fold_in(hist)[:-1], folded, rtol=1e-4, atol=1e-5)
    before = ServingIndex(replace(ckpt, config=replace(ckpt.config, fold_in_reg=None)))
    np.testing.assert_allclose(before.fold_in(hist)[:-1], trained, rtol=1e-4, atol=1e-5)
    _, gram, _ = index.explain_system(hist, known=True)
    known = items.T @ items + train_reg * np.eye(index.dim) + alpha * items[hist].T @ items[hist]
    np.testing.assert_allclose(gram, known)

    scores = index.item_vectors @ np.append(folded, 1.0)
    scores[hist] = -np.inf
    want = [index.item_ids[i] for i in top_k(scores, 4)]
    server = start_uwsgi(path, RECSYS_PROCESSES="1")
    status, _, answer = call(server.base, "/recommend", {"history": history, "k": 4})
    assert status == 200 and [it["item_id"] for it in answer["items"]] == want


def test_explanation_shares_keep_the_sign_of_their_contribution_and_repeats_merge():
    """Shares were contribution / the row's plain sum: where that sum was negative (a sum of similarities) the
    item that pushed the score up most was listed with a negative share, and near 0 shares of -7; a repeated
    history item took two of the five places."""
    from service.explain import per_item, top_contributors

    assert top_contributors(np.array([[3.0, -5.0, 1.0]])) == [[(0, 3 / 9), (2, 1 / 9), (1, -5 / 9)]]
    assert top_contributors(np.zeros((1, 2))) == [[(0, 0.0), (1, 0.0)]]
    items, merged = per_item(np.array([[1.0, 2.0, 4.0], [0.5, 0.0, -1.0]]), np.array([7, 3, 7]))
    assert items.tolist() == [3, 7] and merged.tolist() == [[2.0, 5.0], [0.0, -0.5]]
    items, merged = per_item(np.array([[1.0, 2.0]]), np.array([9, 4]))  # no repeat: columns in item order
    assert items.tolist() == [4, 9] and merged.tolist() == [[2.0, 1.0]]
