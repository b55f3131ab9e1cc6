"""The pieces of a scheduled retrain that decide things: exit codes, the holdout, the promotion rule, the report.

``scripts/retrain.py`` strings them together (and scores models through the serving index); keeping the
decisions here makes them testable without training anything.

The comparison, kept simple on purpose: a fixed, seeded fraction of the *new* data is held out before
anything trains (chosen by hashing each row's ids, see :func:`split_holdout`). The candidate trains on
the rest. Both the candidate and the current model then predict the held-out ratings exactly as the
service would answer ``/predict`` (known ids through the factors, unknown users or items through the
baseline ``mu + known biases``, clipped to the rating scale), and the RMSEs are compared: the
candidate is promoted when ``candidate_rmse <= current_rmse + tolerance``. Both are judged on the same
rows by the same code, so neither the current model's stale ids nor the candidate's missing holdout
rows are an advantage the other lacks. The model promoted is exactly the one evaluated (no refit on
the held-out rows). Ranking-only models and implicit data (no ratings to predict) have no RMSE: see :func:`decide`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from model.data import RawRatings


class ExitCode(IntEnum):
    """Exit codes of ``scripts/retrain.py`` and ``scripts/rollback.py``, for a scheduler to act on."""

    PROMOTED = 0  # retrain: the candidate is now current; rollback: current moved
    FAILED = 1  # anything unexpected (training diverged, disk full, a bug): nothing was promoted
    BAD_INPUT = 2  # malformed data file, bad flags, unknown version: nothing was written to the store
    REJECTED = 10  # the candidate was worse than the current model beyond the tolerance: not promoted
    LOCKED = 11  # another retrain or rollback holds the store's lock: this run did nothing


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def split_holdout(raw: RawRatings, fraction: float, seed: int) -> tuple[RawRatings, RawRatings]:
    """(training rows, held-out rows) of ``raw``; row order is kept in both.

    A row is held out when a seeded hash of its (user id, item id) falls below ``fraction``, not by
    position: the data is a growing snapshot, so a pair held out today was held out in every earlier
    run with the same fraction and seed, and a current model trained by this script never saw the rows
    it is now judged on. (A model trained some other way may have: the report then says so.)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if len(raw) < 2:
        raise ValueError(f"{raw.source}: {len(raw)} rating(s), too few to hold any out")
    prefix = f"{seed}\0".encode()
    draws = np.fromiter(
        (zlib.crc32(f"{u}\0{i}".encode(), zlib.crc32(prefix)) for u, i in zip(raw.user_ids, raw.item_ids)),
        dtype=np.uint64,
        count=len(raw),
    )
    held = draws < np.uint64(fraction * 2**32)
    if held.all() or not held.any():  # tiny files: keep at least one row on each side
        held[:] = False
        held[int(np.argmin(draws))] = True
    return _subset(raw, ~held), _subset(raw, held)


def _subset(raw: RawRatings, mask: np.ndarray) -> RawRatings:
    return RawRatings(
        raw.user_ids[mask], raw.item_ids[mask], raw.ratings[mask], raw.timestamps[mask],
        raw.fingerprint, raw.source, raw.implicit,
    )  # fmt: skip


def rmse_figures(predicted: np.ndarray, actual: np.ndarray, fallbacks: list) -> dict[str, float]:
    """RMSE, MAE, rows and the share of rows answered by a fallback, for a run report."""
    err = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "rows": int(len(err)),
        "fallback_share": float(np.mean([f is not None for f in fallbacks])) if len(fallbacks) else 0.0,
    }


def decide(current: dict | None, candidate: dict, tolerance: float, force: bool) -> Decision:
    """Whether to promote, from the figures of both models on the holdout.

    ``current``/``candidate`` are :func:`rmse_figures` dicts, or ``{"skipped": reason}`` when the model
    cannot be scored by RMSE (implicit data, ranking-only kinds). That is the hook for ranking metrics:
    until one is wired, such a candidate is not promoted over an existing model without ``--force``.
    """
    if force:
        return Decision(True, "forced (--force)")
    if current is None:
        return Decision(True, "no current model")
    if "rmse" not in candidate or "rmse" not in current:
        why = candidate.get("skipped") or current.get("skipped") or "no comparable metric"
        return Decision(False, f"cannot compare the models ({why}); use --force to promote anyway")
    limit = current["rmse"] + tolerance
    if candidate["rmse"] <= limit:
        return Decision(True, f"holdout RMSE {candidate['rmse']:.4f} <= current {current['rmse']:.4f} + {tolerance}")
    return Decision(False, f"holdout RMSE {candidate['rmse']:.4f} > current {current['rmse']:.4f} + {tolerance}")


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed), as ``sha256:<hex>``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a JSON report atomically (temporary file + rename), creating the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
