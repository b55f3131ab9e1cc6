"""Prometheus metrics, correct across uWSGI workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (uwsgi.ini sets it and empties it when the master starts), every
worker writes its samples to memory-mapped files there and ``/metrics`` aggregates all workers.
Without it (tests, a plain Flask run) the default single-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("recsys_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "recsys_request_duration_seconds",
    "Time spent in the app per request",
    ["endpoint", "method"],  # GET /recommend (a list) and POST /recommend (a fold-in) differ several-fold
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FALLBACKS = Counter("recsys_fallbacks_total", "Answers served by a fallback", ["endpoint", "kind"])
RELOADS = Counter("recsys_model_reloads_total", "Model reloads (not a worker's first load) by result", ["result"])
MODEL_INFO = Gauge(
    "recsys_model_info", "1 for the model version a live worker serves", ["model_version"], multiprocess_mode="liveall"
)


def set_model_version(new: str | None, old: str | None) -> None:
    if old and old != new:
        MODEL_INFO.labels(model_version=old).set(0)
    if new:
        MODEL_INFO.labels(model_version=new).set(1)


def render() -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (called by each uWSGI worker's exit hook, ``service.wsgi``; a worker
    killed mid-request skips it, and :func:`reap_dead_workers` catches up)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def reap_dead_workers() -> list[int]:
    """Drop the live gauges of workers that died without running ``atexit`` (SIGKILL, OOM kill, harakiri).

    Called when a worker starts, typically the one respawned in a dead worker's place; otherwise
    ``recsys_model_info`` would report the dead pid's model version forever. Returns the reaped pids.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not os.path.isdir(directory):
        return []
    pids = set()
    for name in os.listdir(directory):
        stem = name.removesuffix(".db")
        if stem.startswith("gauge_live") and stem.rsplit("_", 1)[-1].isdigit():
            pids.add(int(stem.rsplit("_", 1)[-1]))
    dead = []
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)
            dead.append(pid)
        except PermissionError:  # alive, someone else's
            pass
    return dead
