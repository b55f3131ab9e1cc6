"""Why an item was recommended: how much each of the user's history items contributed to its score.

Every dot-product ranker here scores item i as ``y_i . p + b_i`` with a user vector ``p``; where ``p`` is a
linear function of the history, ``p = W^-1 sum_h a_h y_h``, the personal part of the score splits exactly
over the history: ``y_i . p = sum_h a_h y_i^T W^-1 y_h`` (implicit's ``explain`` for ALS). What ``W`` and
``a`` are per kind (``service.index.ServingIndex.explain_system``):

- implicit-ALS rankers (mf on implicit data, the default mf's ranking head): the user's closed-form solve,
  ``W = Y^T Y + alpha sum_h w_h y_h y_h^T + reg I``, ``a_h = 1 + alpha w_h``; for a known user the solve over
  their training items, recomputed against the served item vectors (training solved users against the item
  vectors of its previous half-sweep, so the stored vector differs from it slightly);
- an mf ranking by predicted rating, for a history: the ridge solve of the fold-in, ``a_h`` = the rating
  minus the baseline; other dot-product rankers (mf on softmax/bce/bpr, gmf), for a history: the fold-in's
  weighted mean (``W = I``);
- for a known user of those kinds, whose vector gradient descent learned rather than solved from the
  history, the item-space similarity ``y_i . y_h`` (``W = I``, ``a_h = 1``): which history items the
  recommendation is closest to in the model's item space;
- vae and dae, and the sequence kinds (gru4rec, caser, sasrec), known users and histories alike: the same
  item-space similarity, since their encoders (a tanh layer over the normalised history; a GRU, convolutions,
  self-attention over the ordered history) are not linear in the history, so the score has no exact split.

NeuMF's MLP mixes user and item before scoring, so its scores do not split over the history: no
explanation (the API answers 422).
"""

from __future__ import annotations

import numpy as np

from model.topk import top_k_rows

EXPLAIN_TOP = 5  # contributing history items reported per recommended item
EXPLAINED_ITEMS = 100  # recommended items explained per answer (the first ones): bounds a request's cost


class ExplainUnsupported(ValueError):
    """``explain`` asked of a model whose scores do not split over the user's history."""


def contributions(items: np.ndarray, history: np.ndarray, coef: np.ndarray, gram: np.ndarray | None) -> np.ndarray:
    """``a_h y_i^T W^-1 y_h`` for recommended items ``items`` (k, d) and history items ``history`` (n, d):
    shape (k, n), float64; row i sums to ``y_i . p``. ``gram`` None stands for the identity."""
    y = np.asarray(items, dtype=np.float64)
    solved = y if gram is None else np.linalg.solve(np.asarray(gram, np.float64), y.T).T  # W^-1 y_i (W symmetric)
    return (solved @ np.asarray(history, np.float64).T) * np.asarray(coef, np.float64)


def per_item(contrib: np.ndarray, history_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct items of ``history_idx`` (n,), sorted; ``contrib`` (k, n) summed over each one's positions):
    an item the history repeats is one contributor, not one per position."""
    items, inverse = np.unique(history_idx, return_inverse=True)
    if len(items) == len(history_idx):
        order = np.argsort(history_idx, kind="stable")
        return items, contrib[:, order]
    merged = np.zeros((len(items), len(contrib)), dtype=contrib.dtype)
    np.add.at(merged, inverse.reshape(-1), contrib.T)
    return items, merged.T


def top_contributors(contrib: np.ndarray, top: int = EXPLAIN_TOP) -> list[list[tuple[int, float]]]:
    """Per row of ``contrib`` (k, n): the ``top`` largest contributions as (column, share), share =
    contribution / the row's sum of absolute contributions: its sign says which way it moved the score (the
    row's plain sum may be negative or near 0 where it is a sum of similarities, which flipped or blew up the
    shares), and the absolute shares over the whole history sum to 1 (all 0 when every contribution is 0)."""
    totals = np.abs(contrib).sum(axis=1)
    best = top_k_rows(contrib, top)  # best first, ties to the lower column
    return [
        [(int(h), float(row[h]) / total if total else 0.0) for h in order if h >= 0]
        for row, total, order in zip(contrib, totals.tolist(), best)
    ]
