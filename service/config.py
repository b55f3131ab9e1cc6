"""Service settings: defaults, then ``RECSYS_*`` environment variables, then a test mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULT_CHECKPOINT = "artifacts/model.ckpt"

DEFAULTS: dict[str, Any] = {
    "CHECKPOINT": DEFAULT_CHECKPOINT,  # RECSYS_CHECKPOINT: the checkpoint file to serve
    "MAX_BODY_BYTES": 8 * 1024 * 1024,  # RECSYS_MAX_BODY_BYTES: larger request bodies get 413
    "RELOAD_INTERVAL": 1.0,  # RECSYS_RELOAD_INTERVAL: seconds between checkpoint checks; 0 = never reload
    "ACCESS_LOG": 1,  # RECSYS_ACCESS_LOG: 1 = one JSON line per request on stderr, 0 = none
    # Precomputed top-N unseen items per known user (service/topn.py), built in each worker at load when
    # users x items is at most this many scores (the build is one users x items matrix product); 0 = no
    # lists at all, the ones searched from an ANN index included (TOPN_WITH_ANN).
    "TOPN_MAX_CELLS": 100_000_000,  # RECSYS_TOPN_MAX_CELLS
    "TOPN_N": 100,  # RECSYS_TOPN_N: list length per user (requests for more k scan); costs 4 bytes x N per user
    # With an ANN index (too many cells to build the lists at load): lists searched from the index once per
    # model (all cores) and cached beside it, memory-mapped and shared by the workers (4 bytes x N per user).
    "TOPN_WITH_ANN": 1,  # RECSYS_TOPN_WITH_ANN: 1 = on, 0 = every request searches the index
    # Approximate top-k (service/ann.py, needs faiss-cpu) for catalogues of at least this many items; 0 = off.
    "ANN_MIN_ITEMS": 100_000,  # RECSYS_ANN_MIN_ITEMS
    "ANN_M": 32,  # RECSYS_ANN_M: HNSW graph degree (part of the cache key)
    "ANN_EF_SEARCH": 128,  # RECSYS_ANN_EF_SEARCH: HNSW candidates per query; higher = better recall, slower
    "ANN_EF_CONSTRUCTION": 40,  # RECSYS_ANN_EF_CONSTRUCTION: HNSW build effort (part of the cache key)
    "ANN_BUILD_THREADS": 0,  # RECSYS_ANN_BUILD_THREADS: threads while building the index; 0 = all cores
}


def load_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Merge defaults, ``RECSYS_<NAME>`` variables and ``overrides`` (highest priority)."""
    environ = os.environ if environ is None else environ
    settings = dict(DEFAULTS)
    for name, default in DEFAULTS.items():
        value = environ.get(f"RECSYS_{name}")
        if value not in (None, ""):
            settings[name] = type(default)(value)
    settings.update(overrides or {})
    return settings
