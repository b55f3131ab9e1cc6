"""Application factory (the Flask tutorial's shape): settings, model holder, routes, JSON errors, telemetry."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider

from service import metrics
from service.ann import AnnConfig
from service.config import load_settings
from service.errors import guard_request_line, register_error_handlers
from service.state import ModelHolder
from service.topn import TopNConfig

access_log = logging.getLogger("recsys.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: "$" would also match before a final "\n"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))  # the metrics' method label


def _json_lines(logger: logging.Logger) -> None:
    """The access log as bare JSON lines on stderr (what log shippers parse), not inside the other loggers'
    ``time LEVEL name:`` prefix; each line carries its own UTC ``time``. Once per process."""
    if not any(getattr(h, "recsys_json", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.recsys_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson writing responses (about 20x faster than json for a top-10 list).

    Reading request bodies stays with the standard library (its errors and big-integer handling are what
    the validation layer expects). Anything orjson cannot write (an integer beyond 64 bits) goes to the
    standard encoder, so the output never depends on which one ran.
    """

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj, default=self.default).decode()
        except orjson.JSONEncodeError:
            return super().dumps(_finite(obj), **kwargs)

    def response(self, *args: Any, **kwargs: Any):
        """``jsonify``: orjson's bytes straight into the response (Flask's own goes bytes -> str -> bytes), compact
        and newline-terminated as Flask writes it; the standard encoder only for what orjson cannot write."""
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=self.default, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            body = f"{super().dumps(_finite(obj), separators=(',', ':'))}\n"
        return self._app.response_class(body, mimetype=self.mimetype)


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None, as orjson writes them (json would write invalid ``NaN``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def _track_model(previous: list[str | None]):
    """on_change callback: keep the model-version gauge and the reload counter current."""

    def on_change(state, ok: bool | None) -> None:
        version = state.info.get("model_version")
        if ok is not None:  # a reload, not a worker's first load
            metrics.RELOADS.labels(result="ok" if ok else "failed").inc()
        metrics.set_model_version(version, previous[0])
        previous[0] = version

    return on_change


def _register_telemetry(app: Flask) -> None:
    """Request id, Prometheus counters/latency, and one JSON access-log line per request."""

    @app.before_request
    def _start():
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish(response):
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"  # a client's token: unbounded series
        metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=str(response.status_code)).inc()
        metrics.LATENCY.labels(endpoint=endpoint, method=method).observe(elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if app.config["ACCESS_LOG"]:
            access_log.info(orjson.dumps({
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": g.get("request_id"), "method": request.method, "path": request.path,
                "status": response.status_code, "duration_ms": round(elapsed * 1000, 3),
                "model_version": g.get("model_version", app.extensions["recsys"].version),
            }).decode())  # fmt: skip
        return response


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` overrides settings (keys as in :data:`service.config.DEFAULTS`)."""
    settings = load_settings(overrides=test_config)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(settings)
    # Flask answers 413 itself; uWSGI's limit-post (a larger backstop) would drop the connection instead.
    app.config["MAX_CONTENT_LENGTH"] = int(settings["MAX_BODY_BYTES"])
    app.json.sort_keys = False
    # The worker's pid in each line: two workers log the same reload, and only one may refuse it.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    _json_lines(access_log)
    holder = ModelHolder(
        settings["CHECKPOINT"],
        on_change=_track_model([None]),
        ann=AnnConfig.from_settings(settings),
        topn=TopNConfig.from_settings(settings),
    )
    app.extensions["recsys"] = holder
    if float(settings["RELOAD_INTERVAL"]) > 0:
        holder.start_watcher(float(settings["RELOAD_INTERVAL"]))

    from service.api import bp
    from service.openapi import docs_blueprint

    app.register_blueprint(bp)
    app.register_blueprint(docs_blueprint())
    register_error_handlers(app)
    _register_telemetry(app)
    app.wsgi_app = guard_request_line(app.wsgi_app)  # type: ignore[method-assign]
    return app
