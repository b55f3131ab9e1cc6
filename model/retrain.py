"""The pieces of a scheduled retrain that decide things: exit codes, the holdout, the promotion rule, the report.

``scripts/retrain.py`` strings them together (and measures models through the serving index); keeping
the decisions here makes them testable without training anything.

The rule, in the order a run applies it:

1. **References.** The current model and the versions served just before it (``--compare-versions``) are
   loaded. An unreadable current (or a ``current`` pointing outside the store) is an error unless
   ``--force``: the store is never silently treated as empty.
2. **Holdout.** Pairs that no reference has trained on (nothing in its seen items) are the only fair
   judges. A ``fraction`` of all rows is held out from them, chosen by a seeded hash of each (user,
   item) pair (:func:`holdout_mask`), so repeated rows of a pair fall on one side. The seed follows the
   data snapshot (:func:`holdout_seed`): every new snapshot re-draws it, and a run is reproducible.
3. **Candidate.** Trained on the other rows, then measured with every reference on the held-out pairs as
   the service answers them: RMSE of ``/predict`` when the model predicts ratings, and always nDCG@10 of
   the list ``/recommend`` returns (ranking head, popular fallback for unknown users), with every other
   pair of the data file excluded from every model's list alike.
4. **Decision** (:func:`decide`). For each served metric the candidate is compared with the *best*
   reference on it (so small regressions cannot accumulate run after run), and refused when worse by
   more than ``tolerance + z * SE``, SE being the standard error of the paired difference over the
   held-out rows (RMSE) or users (nDCG). Refused too: fewer held-out users than ``min_judged``, and a
   candidate without a rating model where the current model has one. A reference whose figure is not
   finite is left out of that comparison.
5. **Refit.** A promoted candidate is retrained with the same configuration on every row, so the model
   served knows every pair (and never recommends an item the user has in the data file).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from model.data import RawRatings
from model.evaluate import rmse
from model.files import atomic_write


class ExitCode(IntEnum):
    """Exit codes of ``scripts/retrain.py`` and ``scripts/rollback.py``, for a scheduler to act on."""

    PROMOTED = 0  # retrain: the candidate is now current; rollback: current moved
    FAILED = 1  # anything unexpected (training diverged, disk full, a bug): nothing was promoted
    BAD_INPUT = 2  # malformed data file, bad flags, unknown version, unreadable current: nothing promoted
    REJECTED = 10  # the candidate was worse than the best recent model beyond the margin: not promoted
    LOCKED = 11  # another retrain or rollback holds the store's lock: this run did nothing


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def holdout_seed(fingerprint: str) -> int:
    """A seed that follows the data snapshot: a new file re-draws the holdout, the same file draws it again."""
    return zlib.crc32(fingerprint.encode())


def _hash_ids(ids: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """(crc32 of each distinct id (m,) uint64, each row's position among them (n,)): one hash per distinct id."""
    uniques, inverse = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    hashes = np.fromiter((zlib.crc32(u.encode(), salt) for u in uniques), dtype=np.uint64, count=len(uniques))
    return hashes, inverse.reshape(-1)


def pair_draws(raw: RawRatings, seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per row, the same for every row of one (user id, item id) pair; (n,) float64.

    Each distinct id is hashed once (crc32 salted by ``seed``) and the two hashes are mixed per row with a
    vectorised splitmix64 finaliser, so 20M rows cost two ``np.unique`` and a few array passes.
    """
    salt = zlib.crc32(f"{seed}\0".encode())
    user_hash, user_row = _hash_ids(raw.user_ids, salt)
    item_hash, item_row = _hash_ids(raw.item_ids, salt ^ 0x5BD1E995)
    with np.errstate(over="ignore"):
        x = (user_hash[user_row] << np.uint64(32)) ^ item_hash[item_row] ^ np.uint64(seed & 0xFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def holdout_mask(raw: RawRatings, fraction: float, seed: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Which rows of ``raw`` to hold out, (n,) bool.

    About ``fraction`` of all rows, drawn only among ``eligible`` rows (default: all), all of them when they
    are fewer: see :func:`pair_draws`. Every row of a (user, item) pair lands on the same side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if len(raw) < 2:
        raise ValueError(f"{raw.source}: {len(raw)} rating(s), too few to hold any out")
    eligible = np.ones(len(raw), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    draws = pair_draws(raw, seed)
    rate = min(1.0, fraction * len(raw) / max(int(eligible.sum()), 1))
    held = eligible & (draws < rate)
    if eligible.any() and not held.any():  # tiny files: hold out at least one pair...
        held = eligible & (draws == draws[eligible].min())
    if held.all():  # ...and keep at least one to train on
        held &= draws != draws.max()
    if held.all() or (eligible.any() and not held.any()):
        raise ValueError(f"{raw.source}: one (user, item) pair only, too few to hold any out")
    return held


def split_holdout(
    raw: RawRatings, fraction: float, seed: int, eligible: np.ndarray | None = None
) -> tuple[RawRatings, RawRatings]:
    """(training rows, held-out rows) of ``raw`` by :func:`holdout_mask`; row order is kept in both."""
    held = holdout_mask(raw, fraction, seed, eligible)
    return raw.subset(~held), raw.subset(held)


@dataclass
class Measured:
    """What one model serves, measured on the held-out pairs: ``/predict``'s answers for the held-out rows
    (None when the model does not predict ratings) and per-user nDCG@10 of ``/recommend`` (one fixed user order)."""

    version: str
    predicted: np.ndarray | None  # (n,) the rating /predict answers for each held-out row
    actual: np.ndarray  # (n,) the held-out ratings
    ndcg: np.ndarray  # (users,)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rmse(self) -> float:
        return rmse(self.predicted, self.actual)

    @property
    def squared_errors(self) -> np.ndarray:
        return (np.asarray(self.predicted, np.float64) - np.asarray(self.actual, np.float64)) ** 2

    @property
    def predicts_ratings(self) -> bool:
        return self.predicted is not None and len(self.actual) > 0

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, **self.extra}
        if self.predicts_ratings:
            out["rmse"] = self.rmse
            out["rmse_se"] = _se(self.squared_errors) / (2 * max(out["rmse"], 1e-12))  # delta method
        out["ndcg10"] = float(self.ndcg.mean()) if len(self.ndcg) else float("nan")
        out["ndcg10_se"] = _se(self.ndcg)
        out["users"] = int(len(self.ndcg))
        return out


def _se(values: np.ndarray) -> float:
    """Standard error of the mean (ddof=1); 0 for fewer than two values."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Margins:
    rmse: float = 0.005  # --tolerance
    ndcg: float = 0.005  # --ndcg-tolerance
    z: float = 2.0  # --margin-se: standard errors of the paired difference added to each tolerance


def _compare(candidate: Measured, best: Measured, metric: str, margins: Margins) -> dict[str, Any]:
    """How much worse the candidate is than ``best`` on one metric (positive = worse), and the allowed margin."""
    if metric == "rmse":
        cand, ref = candidate.rmse, best.rmse
        # Paired: the rows are the same; the MSE difference's SE, carried to the RMSE scale (delta method).
        se = _se(candidate.squared_errors - best.squared_errors) / max(cand + ref, 1e-12)
        worse, tolerance = cand - ref, margins.rmse
    else:
        cand, ref = float(candidate.ndcg.mean()), float(best.ndcg.mean())
        se, worse, tolerance = _se(best.ndcg - candidate.ndcg), ref - cand, margins.ndcg
    margin = tolerance + margins.z * se
    return {"metric": metric, "candidate": cand, "best": ref, "best_version": best.version, "worse_by": worse,
            "margin": margin, "se": se, "ok": worse <= margin}  # fmt: skip


# Fewer held-out users than this judge nothing: one user's nDCG is 0 or 1, and a standard error needs spread.
MIN_JUDGED_USERS = 10


def decide(
    candidate: Measured,
    references: list[Measured],
    margins: Margins,
    force: bool = False,
    min_judged: int = MIN_JUDGED_USERS,
) -> Decision:
    """Whether to promote ``candidate`` over the ``references`` (current first, then recent versions).

    Each served metric is compared with the reference that is best on it: RMSE when the candidate predicts
    ratings (references that do not are left out of that comparison), nDCG@10 always. A candidate without a
    rating model is refused where the current model has one: ``/predict`` would answer squashed ranking scores. A
    reference whose figure is not finite (a model with NaN weights) is left out of that comparison: it
    cannot be the best, and the candidate is what replaces it.
    """
    if force:
        return Decision(True, "forced (--force)")
    if not references:
        return Decision(True, "no current model")
    if not len(candidate.ndcg):
        return Decision(False, "no held-out pair that the recent models have not trained on: nothing to judge by "
                               "(the data has not changed?); use --force to promote anyway")  # fmt: skip
    if len(candidate.ndcg) < min_judged:
        return Decision(False, f"rejected: {len(candidate.ndcg)} held-out user(s), too few to judge by (at least "
                               f"{min_judged}, --min-judged); use --force to promote anyway")  # fmt: skip
    rating_refs = [m for m in references if m.predicts_ratings]
    if references[0].predicts_ratings and not candidate.predicts_ratings:
        return Decision(False, f"rejected: the candidate does not predict ratings and {references[0].version} does "
                               "(/predict would answer squashed ranking scores); train a kind with a rating model "
                               "(the default mf) or use --force")  # fmt: skip
    comparisons, unusable = [], []
    for metric, refs, key in (
        ("ndcg", references, lambda m: -float(m.ndcg.mean())),
        ("rmse", rating_refs if candidate.predicts_ratings else [], lambda m: m.rmse),
    ):
        finite = [m for m in refs if np.isfinite(key(m))]
        unusable += [f"{m.version} ({metric} {abs(key(m))})" for m in refs if not np.isfinite(key(m))]
        if finite:
            comparisons.append(_compare(candidate, min(finite, key=key), metric, margins))
    failed = [c for c in comparisons if not c["ok"]]
    words = "; ".join(
        f"{c['metric']} {c['candidate']:.4f} vs best {c['best']:.4f} ({c['best_version']}): "
        + ("not worse by 0.0000" if c["worse_by"] <= 0 else f"worse by {c['worse_by']:.4f}")  # NaN: worse
        + f", margin {c['margin']:.4f}"
        for c in comparisons
    )
    if unusable:
        words += f"{'; ' if words else ''}left out, not finite: {', '.join(unusable)}"
    return Decision(not failed, ("rejected: " if failed else "") + words, comparisons)


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
    text = json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
