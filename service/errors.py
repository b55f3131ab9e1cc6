"""Every error leaves the service as JSON ``{"error": {status, code, message, details: [{field, reason}]}}``."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.index import BadFilterValue, ExplainUnsupported, UnknownAttribute, UnknownItem

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A domain error raised where it is detected; turned into JSON by :func:`register_error_handlers`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = [{"field": field, "reason": reason or message}] if field else []


def guard_request_line(wsgi_app):
    """``wsgi_app`` answering 400 ``bad_request`` for a request without ``REQUEST_METHOD``: a request line uWSGI
    could not parse (``GARBAGE``) reached the app without one, and werkzeug's KeyError, raised before Flask's
    error handlers, logged a traceback per request and closed the connection without an answer."""
    body = json.dumps({"error": {"status": 400, "code": "bad_request", "message": "malformed request line",
                                 "details": []}}).encode() + b"\n"  # fmt: skip
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]

    def guarded(environ, start_response):
        if "REQUEST_METHOD" in environ:
            return wsgi_app(environ, start_response)
        start_response("400 BAD REQUEST", [*headers, ("X-Request-ID", uuid.uuid4().hex)])  # as every answer has
        return [body]

    return guarded


def error_response(status: int, code: str, message: str, details: list[dict] | None = None):
    body = {"error": {"status": status, "code": code, "message": message, "details": details or []}}
    return jsonify(body), status


# How pydantic names the member of a union in an error's location ("function-after[...]", "list[...]"): a schema
# detail, not a field the client sent, so it is left out of the field's name.
_UNION_MEMBER = re.compile(r"^[a-z][a-z-]*\[.*\]$", re.DOTALL)


def _is_union_member(part) -> bool:
    return isinstance(part, str) and _UNION_MEMBER.match(part) is not None


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict]:
    """Pydantic errors as ``[{field: "pairs.3.user_id", reason: "..."}]``."""
    details, seen = [], set()
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # The last part of an unknown field's location is the client's own key, whatever it looks like.
        own = len(loc) - 1 if err["type"] == "extra_forbidden" else len(loc)
        loc = ".".join(str(p) for i, p in enumerate(loc) if i >= own or not _is_union_member(p))
        field = ".".join(p for p in (prefix, loc) if p) or "body"
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if err["type"] in ("too_long", "too_short") and isinstance(err.get("input"), str):  # an id: not "items"
            bound = "at most" if err["type"] == "too_long" else "at least"
            limit = err["ctx"].get("max_length" if err["type"] == "too_long" else "min_length")
            reason = (
                "must not be empty"
                if limit == 1 and bound == "at least"
                else (f"should have {bound} {limit} characters, not {len(err['input'])}")
            )
        if (field, reason) not in seen:  # a union's members may fail alike
            seen.add((field, reason))
            details.append({"field": field, "reason": reason})
    return details


# Bodies above this are not drained; uWSGI's limit-post (64 MiB) refuses them before the app anyway.
DRAIN_LIMIT = 64 * 1024 * 1024


def _drain_body() -> None:
    """Read and discard an oversized body before answering 413.

    Answering without reading it makes the server close a socket with unread data, which the
    client sees as a connection reset instead of the 413.
    """
    stream = request.environ.get("wsgi.input")
    remaining = min(request.content_length or 0, DRAIN_LIMIT)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(1 << 16, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


# The domain errors the serving index raises where it detects them, and how each answers: (status, code, message,
# the field it names, the reason given the exception). One table: every route answers them alike.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str, str, str, Callable[[Exception], str]]] = {
    UnknownAttribute: (422, "validation_error", "request is invalid", "filter", str),
    BadFilterValue: (422, "validation_error", "request is invalid", "filter", str),
    ExplainUnsupported: (422, "explain_unsupported", "explanations are not defined for this model", "explain", str),
    UnknownItem: (404, "unknown_item", "no such item in the model", "item_id", lambda exc: "unknown item id"),
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details)

    def _domain_error(exc: Exception):
        status, code, message, field, reason = next(DOMAIN_ERRORS[k] for k in type(exc).__mro__ if k in DOMAIN_ERRORS)
        return error_response(status, code, message, [{"field": field, "reason": reason(exc)}])

    for kind in DOMAIN_ERRORS:
        app.register_error_handler(kind, _domain_error)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        return error_response(422, "validation_error", "request is invalid", validation_details(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        details = []
        if exc.code == 413:
            _drain_body()
            limit = app.config.get("MAX_CONTENT_LENGTH")
            details = [{"field": "body", "reason": f"larger than the limit of {limit} bytes"}]
        response, status = error_response(exc.code or 500, code, exc.description or exc.name, details)
        for name, value in exc.get_headers():  # e.g. Allow on a 405 (RFC 9110); the body stays ours
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
