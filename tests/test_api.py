"""Every endpoint and error path through the Flask test client."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from model import checkpoint
from model.topk import top_k
from service import create_app
from service.index import ServingIndex
from service.schemas import (
    MAX_LIST,
    ErrorResponse,
    ModelInfo,
    PredictBatchResponse,
    PredictResponse,
    RecommendResponse,
)


def error_fields(resp) -> dict[str, str]:
    body = ErrorResponse.model_validate(resp.get_json())
    assert body.error.status == resp.status_code
    return {d.field: d.reason for d in body.error.details}


def test_healthz_and_model_info(client, small_ckpt):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    info = ModelInfo.model_validate(client.get("/model").get_json())
    assert info.model_version == small_ckpt.model_version
    assert (info.num_users, info.num_items, info.kind) == (small_ckpt.num_users, small_ckpt.num_items, "mf")
    assert "val_rmse" in info.metrics


def test_recommend_ranks_by_model_score_and_excludes_seen(client, small_ckpt):
    user = small_ckpt.user_ids[3]
    body = RecommendResponse.model_validate(client.get(f"/recommend?user_id={user}&k=5").get_json())
    assert body.user_id == user and body.fallback is None and len(body.items) == 5
    seen = {
        small_ckpt.item_ids[i] for i in small_ckpt.seen_indices[small_ckpt.seen_indptr[3] : small_ckpt.seen_indptr[4]]
    }
    assert not seen & {it.item_id for it in body.items}
    scores = [it.score for it in body.items]
    assert scores == sorted(scores, reverse=True)
    # The scores are the model's own predictions for those items.
    net = small_ckpt.network()
    import torch

    items = [small_ckpt.item_ids.index(it.item_id) for it in body.items]
    expected = net(torch.full((5,), 3), torch.tensor(items)).detach().numpy()
    assert np.allclose(scores, expected, atol=1e-4)


def test_exclude_seen_false_keeps_rated_items_and_k_is_clamped(client, small_ckpt):
    user, n_items = small_ckpt.user_ids[0], small_ckpt.num_items
    n_seen = int(small_ckpt.seen_indptr[1] - small_ckpt.seen_indptr[0])
    kept = client.get(f"/recommend?user_id={user}&k=1000&exclude_seen=false").get_json()
    assert len(kept["items"]) == n_items
    dropped = client.get(f"/recommend?user_id={user}&k=1000").get_json()
    assert len(dropped["items"]) == n_items - n_seen


def test_unknown_user_gets_popular_items(client, small_ckpt):
    body = client.get("/recommend?user_id=stranger&k=3").get_json()
    assert body["fallback"] == "popular"
    top = np.argsort(-small_ckpt.item_popularity, kind="stable")[:3]
    assert [it["item_id"] for it in body["items"]] == [small_ckpt.item_ids[i] for i in top]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("k=5", "user_id"),
        ("user_id=u1&k=0", "k"),
        ("user_id=u1&k=1001", "k"),
        ("user_id=u1&k=ten", "k"),
        ("user_id=u1&exclude_seen=maybe", "exclude_seen"),
        ("user_id=u1&K=5", "K"),
        ("user_id=" + "x" * 300, "user_id"),
        ("user_id=", "user_id"),
        ("user_id=u1&filter=:x", "filter.0"),  # a filter needs an attribute name before its colon
    ],
)
def test_recommend_bad_query_is_422_with_field(client, query, field):
    resp = client.get(f"/recommend?{query}")
    assert resp.status_code == 422 and resp.is_json
    assert field in error_fields(resp)


def test_predict_single_batch_agree_and_ids_may_be_integers(client, small_ckpt):
    user, item = small_ckpt.user_ids[1], small_ckpt.item_ids[2]
    single = PredictResponse.model_validate(client.post("/predict", json={"user_id": user, "item_id": item}).get_json())
    batch = PredictBatchResponse.model_validate(
        client.post(
            "/predict", json={"pairs": [{"user_id": user, "item_id": item}, {"user_id": 5, "item_id": 7}]}
        ).get_json()
    )
    assert single.fallback is None and batch.predictions[0].rating == single.rating
    assert batch.predictions[1].user_id == "5" and batch.predictions[1].fallback == "baseline"
    low, high = small_ckpt.rating_scale
    assert low <= single.rating <= high


def test_predict_fallbacks_use_known_biases(client, small_ckpt):
    state = small_ckpt.state_dict
    mu = float(state["global_bias"])
    item = small_ckpt.item_ids[4]
    b_i = float(state["item_bias.weight"][4, 0])
    body = client.post(
        "/predict", json={"pairs": [{"user_id": "new", "item_id": item}, {"user_id": "new", "item_id": "new"}]}
    ).get_json()
    got = [p["rating"] for p in body["predictions"]]
    assert got == pytest.approx([np.clip(mu + b_i, *small_ckpt.rating_scale), mu], abs=1e-5)
    assert all(p["fallback"] == "baseline" for p in body["predictions"])


def test_predictions_are_clipped_to_the_rating_scale(client, small_ckpt):
    pairs = [{"user_id": u, "item_id": i} for u in small_ckpt.user_ids[:40] for i in small_ckpt.item_ids]
    ratings = [p["rating"] for p in client.post("/predict", json={"pairs": pairs}).get_json()["predictions"]]
    low, high = small_ckpt.rating_scale
    assert min(ratings) >= low and max(ratings) <= high


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"user_id": "u1"}, 422, "item_id"),
        ({"user_id": True, "item_id": "i1"}, 422, "user_id"),
        ({"user_id": 1.5, "item_id": "i1"}, 422, "user_id"),
        ({"user_id": "u1", "item_id": "i1", "extra": 1}, 422, "extra"),
        ({"pairs": []}, 422, "pairs"),
        ({"pairs": [{"user_id": "u1"}]}, 422, "pairs.0.item_id"),
        ({"pairs": "nope"}, 422, "pairs"),
        ([1, 2], 422, "body"),
        ("just a string", 422, "body"),
    ],
)
def test_predict_bad_body(client, body, status, field):
    resp = client.post("/predict", json=body)
    assert resp.status_code == status
    assert field in error_fields(resp)


def test_batch_over_limit_is_422(client):
    pairs = [{"user_id": "u", "item_id": "i"}] * 10_001
    resp = client.post("/predict", json={"pairs": pairs})
    assert resp.status_code == 422 and "pairs" in error_fields(resp)


def test_invalid_or_empty_json_is_400(client):
    assert error_fields(client.post("/predict", data="{oops"))["body"] == "not valid JSON"
    assert error_fields(client.post("/predict", data=""))["body"] == "empty body"


def test_oversized_body_is_413_json(small_ckpt_path):
    app = create_app({"CHECKPOINT": str(small_ckpt_path), "MAX_BODY_BYTES": 1000})
    resp = app.test_client().post("/predict", data="x" * 2000, content_type="application/json")
    assert resp.status_code == 413 and "body" in error_fields(resp)


def test_unknown_route_and_wrong_method_are_json(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json
    resp = client.get("/predict")
    assert resp.status_code == 405 and resp.is_json


def test_no_model_is_503_but_healthz_answers(tmp_path):
    app = create_app({"CHECKPOINT": str(tmp_path / "missing.ckpt")})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    for resp in (
        client.get("/recommend?user_id=1"),
        client.post("/predict", json={"user_id": 1, "item_id": 2}),
        client.get("/model"),
    ):
        assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "model_unavailable"


def test_unexpected_error_is_json_500(app, monkeypatch):
    index = app.extensions["recsys"].state.index
    monkeypatch.setattr(index, "recommend", lambda *a, **k: 1 / 0)
    resp = app.test_client().get("/recommend?user_id=x")
    assert resp.status_code == 500 and resp.get_json()["error"]["code"] == "internal_error"


def test_json_writer_matches_the_standard_encoder_and_falls_back_for_what_orjson_cannot_write(app):
    import json

    doc = {"items": [{"item_id": "i\u00e9", "score": 3.852109909057617}], "fallback": None, "k": 5}
    assert json.loads(app.json.dumps(doc)) == doc
    assert app.json.dumps({"n": 2**70}) == '{"n": 1180591620717411303424}'  # beyond 64 bits: stdlib json
    # Non-finite floats are null on both paths, never the invalid NaN/Infinity.
    assert json.loads(app.json.dumps({"a": float("nan"), "b": [float("inf")]})) == {"a": None, "b": [None]}
    assert json.loads(app.json.dumps({"a": float("nan"), "n": 2**70})) == {"a": None, "n": 2**70}
    with pytest.raises(TypeError):
        app.json.dumps({"x": object()})
    # jsonify writes the same documents as bytes (compact, one newline), through the fallback too.
    with app.app_context():
        for obj in (doc, {"a": float("nan"), "n": 2**70}):
            body = app.json.response(obj).get_data()
            assert body.endswith(b"}\n") and b", " not in body and json.loads(body) == json.loads(app.json.dumps(obj))


def test_recommend_exclude_and_candidate_items(client, small_ckpt):
    user = small_ckpt.user_ids[2]
    full = [it["item_id"] for it in client.get(f"/recommend?user_id={user}&k=6").get_json()["items"]]
    cut = client.get(f"/recommend?user_id={user}&k=4&exclude={full[0]},{full[1]}&exclude=unknown-id").get_json()
    assert [it["item_id"] for it in cut["items"]] == full[2:6]
    pick = [full[5], full[3], "unknown-id", full[4]]
    only = client.get(f"/recommend?user_id={user}&k=2&items={','.join(pick)}").get_json()
    assert [it["item_id"] for it in only["items"]] == [full[3], full[4]]
    # Seen items stay excluded among candidates too.
    seen_item = small_ckpt.item_ids[small_ckpt.seen_indices[small_ckpt.seen_indptr[2]]]
    assert client.get(f"/recommend?user_id={user}&k=5&items={seen_item}").get_json()["items"] == []


def test_unknown_user_popular_respects_exclude_and_items(client, small_ckpt):
    top = [small_ckpt.item_ids[i] for i in np.argsort(-small_ckpt.item_popularity, kind="stable")[:4]]
    body = client.get(f"/recommend?user_id=stranger&k=2&exclude={top[0]}").get_json()
    assert [it["item_id"] for it in body["items"]] == top[1:3]
    body = client.get(f"/recommend?user_id=stranger&k=5&items={top[3]},{top[2]}").get_json()
    assert [it["item_id"] for it in body["items"]] == [top[2], top[3]]


def test_similar_items(client, small_ckpt):
    item = small_ckpt.item_ids[0]
    body = client.get(f"/similar?item_id={item}&k=5").get_json()
    scores = [it["score"] for it in body["items"]]
    assert len(scores) == 5 and item not in {it["item_id"] for it in body["items"]}
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    v = small_ckpt.state_dict["item_factors.weight"].numpy()
    cos = v @ v[0] / (np.linalg.norm(v, axis=1) * np.linalg.norm(v[0]))
    cos[0] = -np.inf
    assert body["items"][0]["item_id"] == small_ckpt.item_ids[int(np.argmax(cos))]
    resp = client.get("/similar?item_id=nope")
    assert resp.status_code == 404 and error_fields(resp) == {"item_id": "unknown item id"}


def test_fold_in_matches_the_trained_user(client, small_ckpt, small_dataset):
    """A known user's training history, folded in, ranks like that user (same items on top)."""
    idx = 5
    seen = small_ckpt.seen_indices[small_ckpt.seen_indptr[idx] : small_ckpt.seen_indptr[idx + 1]]
    inter = small_dataset.interactions
    rows = inter.user_idx == idx
    rated = {int(i): float(r) for i, r in zip(inter.item_idx[rows], inter.ratings[rows])}
    history = [{"item_id": small_ckpt.item_ids[i], "rating": rated[int(i)]} for i in seen]
    folded = client.post("/recommend", json={"history": history, "k": 10}).get_json()
    trained = client.get(f"/recommend?user_id={small_ckpt.user_ids[idx]}&k=10").get_json()
    assert folded["user_id"] is None and folded["fallback"] is None
    got, want = {it["item_id"] for it in folded["items"]}, {it["item_id"] for it in trained["items"]}
    assert len(got & want) >= 6
    assert not got & {h["item_id"] for h in history}


def test_fold_in_of_a_model_ranking_by_rating_is_its_ridge_solve(client, small_ckpt):
    """An MF without a ranking head ranks by predicted rating: a new user's vector is the MF objective solved with
    the items fixed, ``(V_h^T V_h + reg I) p = V_h^T (r_h - mu - b_h)``, unrated items at the top of the scale. The
    6-of-10 overlap above passed with the ratings ignored, unrated items fitted to the lowest rating, the item
    biases dropped from the target or the regulariser ignored."""
    state = {name: value.numpy().astype(np.float64) for name, value in small_ckpt.state_dict.items()}
    factors, bias = state["item_factors.weight"], state["item_bias.weight"].reshape(-1)
    mu, reg, (low, high) = float(state["global_bias"]), small_ckpt.config.reg, small_ckpt.rating_scale
    assert small_ckpt.config.rank_loss == "none" and reg >= 1.0  # a regulariser that matters with 3 items in 8 dims
    hist = [3, 17, 40]
    for ratings in ([high, low, 3.5], None):
        target = np.array(ratings if ratings else [high] * len(hist)) - mu - bias[hist]
        p = np.linalg.solve(factors[hist].T @ factors[hist] + reg * np.eye(factors.shape[1]), factors[hist].T @ target)
        predicted = mu + bias + factors @ p
        predicted[hist] = -np.inf
        want = top_k(predicted, 5)
        history = [small_ckpt.item_ids[i] for i in hist]
        if ratings:
            history = [{"item_id": item, "rating": r} for item, r in zip(history, ratings)]
        items = client.post("/recommend", json={"history": history, "k": 5}).get_json()["items"]
        assert [it["item_id"] for it in items] == [small_ckpt.item_ids[i] for i in want], ratings
        assert [it["score"] for it in items] == pytest.approx(predicted[want], rel=1e-4), ratings


def test_fold_in_bare_ids_exclude_history_and_unknown_history_is_popular(client, small_ckpt):
    history = small_ckpt.item_ids[:3]
    body = client.post("/recommend", json={"history": history, "k": 5, "exclude": [small_ckpt.item_ids[3]]}).get_json()
    assert len(body["items"]) == 5 and not {it["item_id"] for it in body["items"]} & set(small_ckpt.item_ids[:4])
    body = client.post("/recommend", json={"history": ["never-seen"], "k": 3}).get_json()
    assert body["fallback"] == "popular" and len(body["items"]) == 3
    # This MF ranks by predicted rating: a low rating is a target its fold-in fits (a dislike), not "nothing".
    low = small_ckpt.rating_scale[0]
    disliked = [{"item_id": i, "rating": low} for i in history]
    assert client.post("/recommend", json={"history": disliked, "k": 3}).get_json()["fallback"] is None


def test_a_history_that_likes_nothing_gets_the_popular_items(small_dataset):
    """The default's implicit-ALS fold-in weighs items by (rating - low) / (high - low): with every rating at
    the bottom of the scale (or below it) its query was zero, and it answered the first items by index as
    personal picks. Now the popular items, marked as such, as for a history of unknown items."""
    from model.train import TrainConfig, fit

    result = fit(small_dataset.interactions, TrainConfig(dim=8, epochs=3, rank_epochs=3, seed=0), progress=False)
    index = ServingIndex(checkpoint.from_training(result, small_dataset))
    assert index.folding.ials is not None  # the default's head
    low, high = index.folding.low, index.folding.high
    history = list(small_dataset.item_map.ids[:3])
    rec = index.recommend_for_history(history, 3, ratings=[low, low - 10, low])
    popular = [i for i in index.recommend("never-seen", 6).item_ids if i not in history][:3]
    assert rec.fallback == "popular" and rec.item_ids == popular
    assert index.recommend_for_history(history, 3, ratings=[high, low, low]).fallback is None


def test_a_history_reads_alike_as_bare_ids_integers_and_objects(client, small_ckpt):
    """Bare ids skip pydantic's per-entry models (the common request's fast path): they must mean what the
    same entries as objects mean, integers included, and a mixed list takes the general path."""
    from service.schemas import RecommendHistoryRequest

    def read(history):
        req = RecommendHistoryRequest.model_validate({"history": history})
        return req.item_ids(), req.ratings()

    bare = read(["7", 8])
    assert bare == read([{"item_id": "7"}, {"item_id": 8}]) == read(["7", {"item_id": 8}]) == (["7", "8"], None)
    assert read([{"item_id": 7, "rating": 4}]) == (["7"], [4.0])
    ids = small_ckpt.item_ids[:4]
    answers = [
        client.post("/recommend", json={"history": history, "k": 5}).get_json()["items"]
        for history in (ids, [{"item_id": i} for i in ids], [ids[0], *({"item_id": i} for i in ids[1:])])
    ]
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 5
    with warnings.catch_warnings():  # the strings serialise as they are, not as a HistoryItem that is not there
        warnings.simplefilter("error")
        assert RecommendHistoryRequest.model_validate({"history": ["7", 8]}).model_dump()["history"] == ["7", "8"]


@pytest.mark.parametrize(
    "history",
    [
        ["x" * 256], ["x" * 257], ["é" * 256], ["😀" * 257], [int("9" * 256)], [int("9" * 257)], [-5], [10**5000],
        ["a"] * 10_000, ["a"] * 10_001, [5, False], [1.0], [None], [""], [["a"]], [], "abc", ["a", {"item_id": "b"}],
    ],
)  # fmt: skip
def test_the_bare_id_fast_path_accepts_and_refuses_what_the_general_path_does(history):
    """_bare_ids restates the id rules (length in characters, integers not booleans, list sizes): on the limits, it
    must agree with the general path, each entry a HistoryItem, down to the field an error names."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    from service.schemas import HistoryEntries, RecommendHistoryRequest

    def outcome(validate):
        try:
            return "ok", validate()
        except ValidationError as exc:
            return "refused", sorted(tuple(str(part) for part in error["loc"]) for error in exc.errors())

    entries = TypeAdapter(HistoryEntries, config=ConfigDict(strict=True))
    general = outcome(lambda: [h.item_id for h in entries.validate_python(history)])
    general = general if general[0] == "ok" else ("refused", [("history", *loc) for loc in general[1]])
    assert outcome(lambda: RecommendHistoryRequest.model_validate({"history": history}).item_ids()) == general


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"history": []}, "history"),
        ({"history": [""]}, "history.0.item_id"),
        ({"history": [5, False]}, "history.1"),
        ({"history": ["a", {"item_id": "b", "rating": 3}]}, "history"),
        ({"history": [True]}, "history.0"),
        ({"history": ["a"], "k": 0}, "k"),
        ({"k": 3}, "history"),
        ({"history": [{"item_id": "a", "rating": "high"}]}, "history.0.rating"),
        # As many filter values as GET allows, in all: a million cost seconds of a worker (security review)
        ({"history": ["a"], "filter": {"secret": ["x"] * 1_000_000}}, "filter.secret"),
        # The documented limit of 10,000 ids (MAX_LIST) holds for exclude and items as for the history
        ({"history": ["a"], "exclude": ["b"] * (MAX_LIST + 1)}, "exclude"),
        ({"history": ["a"], "items": ["b"] * (MAX_LIST + 1)}, "items"),
        ({"history": ["a"], "k": 2.5}, "k"),  # 2.0 is the integer 2; 2.5 was once truncated to 2, not refused
        ({"history": ["a"], "filter": {"": "x"}}, "filter"),  # no attribute has an empty name
    ],
)
def test_fold_in_bad_body(client, body, field):
    resp = client.post("/recommend", json=body)
    assert resp.status_code == 422 and field in error_fields(resp)


def test_readyz_metrics_and_request_id(client):
    assert client.get("/readyz").get_json()["ready"] is True
    client.get("/recommend?user_id=stranger&k=2")
    resp = client.get("/recommend?user_id=x&k=0", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32
    text = client.get("/metrics").get_data(as_text=True)
    assert 'recsys_requests_total{endpoint="/recommend",method="GET",status="422"}' in text
    assert 'recsys_fallbacks_total{endpoint="recommend",kind="popular"}' in text
    assert "recsys_request_duration_seconds_bucket" in text and "recsys_model_info{" in text


def test_openapi_document_covers_every_route(client, app):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    routes = {(r.rule, m.lower()) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    # Not API operations: Flask's static files, and the browsable docs page and its assets (as FastAPI's /docs).
    pages = {("/static/<path:filename>", "get"), ("/docs/", "get"), ("/docs/<path:path>", "get")}
    assert routes - pages == documented
    params = {p["name"] for p in doc["paths"]["/recommend"]["get"]["parameters"]}
    assert params == {"user_id", "k", "exclude_seen", "exclude", "items", "filter", "explain"}
    assert "RecommendResponse" in doc["components"]["schemas"]


def test_readyz_is_503_without_a_model(tmp_path):
    app = create_app({"CHECKPOINT": str(tmp_path / "missing.ckpt"), "RELOAD_INTERVAL": 0})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["ready"] is False
