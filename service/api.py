"""HTTP views: short functions that validate, ask the serving index, and shape the response."""

from __future__ import annotations

from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, g, jsonify, request

from service import metrics
from service.errors import ApiError
from service.index import Recommendation, ServingIndex
from service.openapi import build_document, documented, with_filters
from service.schemas import (
    ErrorResponse,
    Health,
    ModelInfo,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictPair,
    PredictResponse,
    Readiness,
    RecommendHistoryRequest,
    RecommendQuery,
    RecommendResponse,
    SimilarQuery,
    SimilarResponse,
)
from service.state import ModelHolder, ModelState

bp = Blueprint("api", __name__)
LIST_PARAMS = ("exclude", "items")
REPEATED_PARAMS = ("filter",)  # may repeat, never comma-split (a value may hold commas: "Birdcage, The (1996)")


def _holder() -> ModelHolder:
    return current_app.extensions["recsys"]


def _model() -> ModelState:
    state = _holder().state  # one snapshot per request: a reload mid-request cannot mix two models
    if state.index is None:
        raise ApiError(503, "model_unavailable", f"no model loaded: {state.error}")
    g.model_version = state.index.model_version  # the access log names the model that answered, not the newest
    return state


def _query_args() -> dict:
    """Query parameters as a dict; list parameters may repeat and/or be comma-separated, others may not repeat.

    Parsed as werkzeug parses ``request.args`` (the same call: blank values kept, invalid bytes left
    percent-encoded), minus its MultiDict, which this runs on every GET only to take apart again. Raw bytes
    that are not UTF-8 (a client that did not percent-encode them) stay percent-encoded too: werkzeug's own
    ``.decode()`` raised there, a 500."""
    parsed: dict[str, list[str]] = {}
    if not request.query_string:  # uWSGI drops a query over ~33,000 bytes (its buffer carries it twice): say so
        uri = request.environ.get("REQUEST_URI", "")
        if uri.partition("?")[2]:
            raise ApiError(414, "uri_too_long", "request line too long", "query",
                           f"a query of {len(uri.partition('?')[2])} bytes did not reach the service: keep it under "
                           "32 KiB (POST /recommend takes long lists in its body)")  # fmt: skip
    query = request.query_string.decode("utf-8", "werkzeug.url_quote")
    for name, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
        parsed.setdefault(name, []).append(value)
    if "" in parsed:  # "?=x" or "?&=": a value for no parameter
        raise ApiError(422, "validation_error", "request is invalid", "query", "a parameter without a name")
    args = {}
    for name, values in parsed.items():
        if name in LIST_PARAMS:
            args[name] = [part for value in values for part in value.split(",") if part]
        elif name in REPEATED_PARAMS:
            args[name] = values
        elif len(values) > 1:  # user_id=a&user_id=b: which one was meant? refuse, don't guess
            raise ApiError(422, "validation_error", "request is invalid", name, "given more than once")
        else:
            args[name] = values[0]
    return args


def _json_body() -> object:
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # arrays nested thousands deep: the standard decoder recurses per level
        raise ApiError(400, "invalid_json", "request body must be JSON", "body", "nested too deeply") from None
    if body is None:
        empty = not request.get_data(cache=True)
        if empty and "chunked" in request.headers.get("Transfer-Encoding", "").lower():  # uWSGI passes no such body
            raise ApiError(411, "length_required", "send the body with a Content-Length", "body",
                           "a chunked body does not reach the service")  # fmt: skip
        raise ApiError(
            400, "invalid_json", "request body must be JSON", "body", "empty body" if empty else "not valid JSON"
        )
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "request is invalid", "body", "must be a JSON object")
    return body


def _recommendation(user_id: str | None, rec: Recommendation, index: ServingIndex, endpoint: str) -> Response:
    if rec.fallback:
        metrics.FALLBACKS.labels(endpoint=endpoint, kind=rec.fallback).inc()
    return jsonify(user_id=user_id, items=rec.records(), model_version=index.model_version, fallback=rec.fallback)


@bp.get("/healthz")
@documented("GET", "/healthz", "The process is up", responses={200: Health})
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@documented("GET", "/readyz", "A model is loaded and answering", responses={200: Readiness, 503: Readiness})
def readyz():
    state = _holder().state
    if state.index is None:
        return jsonify(ready=False, model_version=None, reason=state.error), 503
    state.index.predict([next(iter(state.index.user_index), "")], [state.index.item_ids[0]])  # answers at all
    return jsonify(ready=True, model_version=state.index.model_version, reason=None, reload_refused=_holder().refused)


@bp.get("/model")
@documented("GET", "/model", "The served model: version, kind, sizes, metrics", responses={200: ModelInfo})
def model_info():
    return jsonify(_model().info)


@bp.get("/recommend")
@documented(
    "GET",
    "/recommend",
    "Top-k items for a known user (popular items for an unknown one)",
    query=RecommendQuery,
    responses={200: RecommendResponse, 414: ErrorResponse, 422: ErrorResponse},
)
def recommend():
    query = RecommendQuery.model_validate(_query_args())
    index = _model().index
    rec = index.recommend(
        query.user_id, query.k, query.exclude_seen, query.exclude, query.items, query.filters(), query.explain
    )
    return _recommendation(query.user_id, rec, index, "recommend")


@bp.post("/recommend")
@documented(
    "POST",
    "/recommend",
    "Top-k for a new user from their history (fold-in, no retraining)",
    body=RecommendHistoryRequest,
    responses={200: RecommendResponse, 422: ErrorResponse},
)
def recommend_history():
    req = RecommendHistoryRequest.model_validate(_json_body())
    index = _model().index
    rec = index.recommend_for_history(
        req.item_ids(), req.k, req.ratings(), req.exclude, req.items, req.filters(), req.explain
    )
    return _recommendation(None, rec, index, "recommend_history")


@bp.get("/similar")
@documented(
    "GET",
    "/similar",
    "Nearest items in embedding space",
    query=SimilarQuery,
    responses={200: SimilarResponse, 404: ErrorResponse, 414: ErrorResponse, 422: ErrorResponse},
)
def similar():
    query = SimilarQuery.model_validate(_query_args())
    index = _model().index
    rec = index.similar(query.item_id, query.k, query.filters())  # UnknownItem: 404 (service.errors)
    return jsonify(item_id=query.item_id, items=rec.records(), model_version=index.model_version)


@bp.post("/predict")
@documented(
    "POST",
    "/predict",
    "Rating predictions for one pair or a batch of up to 10,000",
    body=PredictPair | PredictBatchRequest,
    responses={200: PredictResponse | PredictBatchResponse, 422: ErrorResponse},
)
def predict():
    body = _json_body()
    index = _model().index
    if "pairs" in body:
        batch = PredictBatchRequest.model_validate(body)
        users, items = [p.user_id for p in batch.pairs], [p.item_id for p in batch.pairs]
    else:
        pair = PredictPair.model_validate(body)
        users, items = [pair.user_id], [pair.item_id]
    out = index.predict(users, items)
    fallbacks = sum(f is not None for f in out.fallbacks)
    if fallbacks:
        metrics.FALLBACKS.labels(endpoint="predict", kind="baseline").inc(fallbacks)
    if "pairs" not in body:
        return jsonify(
            user_id=users[0],
            item_id=items[0],
            rating=out.ratings[0],
            model_version=index.model_version,
            fallback=out.fallbacks[0],
        )
    return jsonify(predictions=out.records(users, items), model_version=index.model_version)


@bp.get("/metrics")
@documented("GET", "/metrics", "Prometheus metrics of all workers", responses={200: None}, content_type="text/plain")
def prometheus_metrics():
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
@documented("GET", "/openapi.json", "This document", responses={200: None})
def openapi():
    doc = current_app.extensions.get("recsys.openapi")
    if doc is None:
        doc = current_app.extensions["recsys.openapi"] = build_document("recsys", "1")
    index = _holder().state.index  # the filters the served model answers (its item attributes)
    version = None if index is None else index.model_version
    cached = current_app.extensions.get("recsys.openapi.model")
    if cached is None or cached[0] != version:
        kinds = {} if index is None else {name: a.kind for name, a in index.attributes.by_name.items()}
        explains = index is None or index.dot
        cached = current_app.extensions["recsys.openapi.model"] = (version, with_filters(doc, kinds, explains))
    return jsonify(cached[1])
