"""The model a worker serves: its index and description, or why none could be loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from model import checkpoint
from service.index import ServingIndex

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    index: ServingIndex | None = None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def load_state(path: str) -> ModelState:
    """Load a checkpoint into a serving index; on failure return an empty state with the reason."""
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointError as exc:
        log.error("model not loaded: %s", exc)
        return ModelState(error=str(exc))
    info = {
        "model_version": ckpt.model_version,
        "kind": ckpt.kind,
        "num_users": ckpt.num_users,
        "num_items": ckpt.num_items,
        "dim": ckpt.config.dim,
        "rating_scale": list(ckpt.rating_scale),
        "metrics": ckpt.metrics,
        "created_at": ckpt.created_at,
        "data_fingerprint": ckpt.data.get("fingerprint", ""),
        "config": {k: v for k, v in vars(ckpt.config).items()},
    }
    log.info("serving %s from %s", ckpt.model_version, path)
    return ModelState(index=ServingIndex(ckpt), info=info)
