"""HTTP views: short functions that validate, ask the serving index, and shape the response."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from service.errors import ApiError
from service.index import ServingIndex
from service.schemas import PredictBatchRequest, PredictPair, RecommendQuery
from service.state import ModelState

bp = Blueprint("api", __name__)


def _model() -> ModelState:
    state: ModelState = current_app.extensions["recsys"]
    if state.index is None:
        raise ApiError(503, "model_unavailable", f"no model loaded: {state.error}")
    return state


def _json_body() -> object:
    body = request.get_json(force=True, silent=True)
    if body is None:
        reason = "empty body" if not request.get_data(cache=True) else "not valid JSON"
        raise ApiError(400, "invalid_json", "request body must be a JSON object", "body", reason)
    return body


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/model")
def model_info():
    return jsonify(_model().info)


@bp.get("/recommend")
def recommend():
    query = RecommendQuery.model_validate(request.args.to_dict())
    state = _model()
    index: ServingIndex = state.index
    rec = index.recommend(query.user_id, query.k, query.exclude_seen)
    items = [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)]
    return jsonify(user_id=query.user_id, items=items, model_version=index.model_version, fallback=rec.fallback)


@bp.post("/predict")
def predict():
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "request is invalid", "body", "must be a JSON object")
    index: ServingIndex = _model().index
    if "pairs" in body:
        batch = PredictBatchRequest.model_validate(body)
        users, items = [p.user_id for p in batch.pairs], [p.item_id for p in batch.pairs]
        out = index.predict(users, items)
        predictions = [
            {"user_id": u, "item_id": i, "rating": r, "fallback": f}
            for u, i, r, f in zip(users, items, out.ratings, out.fallbacks)
        ]
        return jsonify(predictions=predictions, model_version=index.model_version)
    pair = PredictPair.model_validate(body)
    out = index.predict([pair.user_id], [pair.item_id])
    return jsonify(
        user_id=pair.user_id,
        item_id=pair.item_id,
        rating=out.ratings[0],
        model_version=index.model_version,
        fallback=out.fallbacks[0],
    )
