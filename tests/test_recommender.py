"""The notebook API answers what the HTTP views answer: same index methods, same items, lists or DataFrames."""

from __future__ import annotations

import pytest

from model.checkpoint import CheckpointError
from service.config import ConfigError
from service.index import UnknownItem
from service.recommender import BATCH_COLUMNS, Recommender


@pytest.fixture(scope="module")
def rec(small_ckpt_path):
    return Recommender.load(small_ckpt_path)


def test_answers_equal_the_views(rec, client, small_ckpt):
    users, items = small_ckpt.user_ids, small_ckpt.item_ids
    assert rec.user_ids == users and rec.item_ids == items and rec.model_version == small_ckpt.model_version
    for user in [*users[:10], "nobody"]:
        served = client.get(f"/recommend?user_id={user}&k=6").json
        assert rec.recommend(user, k=6) == served["items"]
        assert rec.knows_user(user) == (served["fallback"] is None)  # what the list alone does not say
    options = {"exclude": items[:3], "candidates": items[:20], "exclude_seen": False}
    query = f"/recommend?user_id={users[1]}&k=4&exclude={','.join(items[:3])}&items={','.join(items[:20])}"
    assert rec.recommend(users[1], k=4, **options) == client.get(query + "&exclude_seen=false").json["items"]
    body = {"history": [{"item_id": items[0], "rating": 5.0}, {"item_id": items[4], "rating": 2.0}], "k": 5}
    assert rec.recommend_history({items[0]: 5, items[4]: 2}, k=5) == client.post("/recommend", json=body).json["items"]
    body = {"history": items[:3], "k": 5, "exclude": items[5:7]}
    got = rec.recommend_history(items[:3], k=5, exclude=items[5:7])
    assert got == client.post("/recommend", json=body).json["items"]
    assert rec.similar(items[2], k=4) == client.get(f"/similar?item_id={items[2]}&k=4").json["items"]
    pairs = [{"user_id": users[0], "item_id": items[1]}, {"user_id": "nobody", "item_id": items[1]}]
    served = client.post("/predict", json={"pairs": pairs}).json["predictions"]
    assert rec.predict([users[0], "nobody"], [items[1], items[1]]) == served
    assert rec.predict(users[0], items[1]) == served[0]


def test_frames_and_batches(rec, small_ckpt):
    frame = rec.recommend(small_ckpt.user_ids[0], k=5, frame=True)
    assert list(frame.columns) == ["item_id", "score", "attributes"] and len(frame) == 5
    assert frame.to_dict("records") == rec.recommend(small_ckpt.user_ids[0], k=5)
    users = small_ckpt.user_ids[:7]
    batch = rec.recommend_users(users, k=3, frame=True)
    assert list(batch.columns) == list(BATCH_COLUMNS) and len(batch) == 21
    for user in users:
        rows = batch[batch["user_id"] == user]
        assert rows["rank"].tolist() == [1, 2, 3]
        want = [{"item_id": r["item_id"], "score": r["score"]} for r in rec.recommend(user, k=3)]
        assert rows[["item_id", "score"]].to_dict("records") == want
    blocks = list(rec.recommend_blocks(users, k=3, block=3))
    assert len(blocks) == 3 and sum(len(b["user_id"]) for b in blocks) == 21
    assert len(rec.recommend_users(k=2)) == 2 * small_ckpt.num_users  # default: every known user


def test_refusals(rec, small_ckpt_path, tmp_path):
    with pytest.raises(CheckpointError):
        Recommender.load(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="RECSYS_TOPN_N"):
        Recommender.load(small_ckpt_path, topn_n=-1)
    with pytest.raises(UnknownItem):
        rec.similar("no-such-item")
    with pytest.raises(ValueError, match="2 user ids but 1 item ids"):
        rec.predict(["a", "b"], ["c"])
