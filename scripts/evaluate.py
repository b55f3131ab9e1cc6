"""Evaluate a checkpoint on a held-out rating file: RMSE, MAE and top-k ranking metrics.

    python scripts/evaluate.py --checkpoint artifacts/model.ckpt --test test.csv [--k 10] [--json]
                               [--fold-in 0.8 --seed 0]

What is measured is what is served: the checkpoint goes through ``service.index.ServingIndex``, the
same index the HTTP service answers from.

- Ratings (only when the test file has a rating column): every test row is predicted as ``/predict``
  answers it (``ServingIndex.predict``: clipped to the training scale; a user or item the model has
  never seen gets the baseline ``mu + known biases``). RMSE and MAE are over all rows, fallbacks
  included, because that is what a user gets; ``fallback_rows`` counts them and ``rmse_known`` /
  ``mae_known`` repeat the figures over the rows with both ids known.
- Ranking (``model.metrics``): each known user's top-k list from ``ServingIndex.score_users``, with
  the user's training items excluded, against their held-out items (every held-out item relevant,
  or those rated ``>= --min-rating``). Users the model has never seen are skipped (``unknown_users``;
  the service would answer them with popular items, which says nothing about the model), and rows
  whose item the model has never seen cannot be hits, so they are dropped (``unknown_item_rows``).

- Fold-in (``--fold-in 0.8``, the strong-generalisation protocol of Liang et al. 2018): every test user the
  model has never seen is a new user. A random 80% of their items (``--seed``) is folded in through the
  service's own path (``ServingIndex.score_history``, what ``POST /recommend`` ranks by) and the other 20%
  is scored: nDCG@100, Recall@20, Recall@50 (``hits / min(k, held-out)``, the paper's) and nDCG@10. Every
  row counts as an interaction (ratings are not used as weights), as in training.
With ``--last-out`` the test file is the whole data set and each user's newest row (by time, ties by file
order) is their held-out item: the leave-last-out protocol of the sequence models (``model.sequence_data``),
where ``hit_rate@k`` is HR@k; the checkpoint is expected to have been trained on the other rows.

Exit codes: 0 evaluated; 2 bad arguments, or a checkpoint or test file that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from model import checkpoint
from model.data import FORMAT_CHOICES, DataFormatError, RawRatings, load_ratings
from model.evaluate import mae, rmse
from model.idmap import IdMap
from model.interactions import Interactions, build_dataset, encode_new_users
from model.keys import member_of, sorted_unique
from model.metrics import FOLD_IN_METRICS, METRIC_NAMES, evaluate_fold_in, evaluate_ranking
from model.raw import plain_warnings
from model.sequence import SEQUENCE_KINDS
from model.sequence_data import newest_rows, timeline_order, timelines
from model.splits import fold_in_split
from model.store import served_file
from service.index import ServingIndex
from service.schemas import MAX_K


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by scripts/train.py, or a model store")
    p.add_argument("--test", required=True, help="held-out rating file (MovieLens, CSV/TSV or Parquet)")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="test file format (default: detect)")
    p.add_argument("--k", type=int, default=10, help=f"length of the top-k lists, 1..{MAX_K} (default: 10)")
    p.add_argument("--min-rating", type=float, help="only held-out rows rated at least this are relevant")
    p.add_argument(
        "--last-out",
        action="store_true",
        help="--test is the whole data file; each user's newest row by time (ties: the later in the "
        "file) is the held-out item, the checkpoint trained on the rest (hit_rate@k is then HR@k)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--fold-in", type=float, help="fold in this fraction of each unknown user's items, score the rest")
    p.add_argument("--seed", type=int, default=0, help="seed of the --fold-in split (default: 0)")
    args = p.parse_args(argv)
    if not 1 <= args.k <= MAX_K:  # the lists are users x k: as /recommend and recommend_batch.py, at most MAX_K
        p.error(f"--k must be between 1 and {MAX_K}")
    if args.fold_in is not None and not 0.0 < args.fold_in < 1.0:
        p.error("--fold-in must be a fraction between 0 and 1 (exclusive), e.g. 0.8")
    return args


def row_indices(index: ServingIndex, raw: RawRatings) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (user index, item index) in the model, -1 where it does not know the id: (n,) int64 each. One
    lookup per distinct id, then a gather (as ``model.interactions.encode_with``), not one per row."""

    def lookup(known: dict[str, int], vocab: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return np.fromiter((known.get(v, -1) for v in vocab), dtype=np.int64, count=len(vocab))[codes]

    return lookup(index.user_index, raw.user_vocab, raw.user_codes), lookup(index.item_index, raw.item_vocab,
                                                                            raw.item_codes)  # fmt: skip


def rating_metrics(index: ServingIndex, raw: RawRatings) -> dict[str, Any]:
    """RMSE/MAE of what ``/predict`` answers for every test row (baseline fallback for unknown ids), with how many
    rows are pairs the model trained on (a test file that overlaps the training data flatters RMSE) and whether
    the model predicts ratings at all (a ranking-only kind answers its score squashed onto the scale)."""
    pred = index.predict(raw.user_ids.tolist(), raw.item_ids.tolist())
    ratings = np.asarray(pred.ratings, dtype=np.float64)
    known = np.array([f is None for f in pred.fallbacks], dtype=bool)
    users, items = row_indices(index, raw)
    seen_users = np.repeat(np.arange(len(index.seen_indptr) - 1, dtype=np.int64), np.diff(index.seen_indptr))
    seen_keys = sorted_unique(seen_users * index.num_items + np.asarray(index.seen_indices, np.int64))
    trained = known & member_of(users * index.num_items + items, seen_keys)
    return {
        "rmse": rmse(ratings, raw.ratings),
        "mae": mae(ratings, raw.ratings),
        "rows": len(raw),
        "predicts_ratings": index.has_rating,
        "training_rows": int(trained.sum()),
        "fallback_rows": int((~known).sum()),
        "rmse_known": rmse(ratings[known], raw.ratings[known]) if known.any() else math.nan,
        "mae_known": mae(ratings[known], raw.ratings[known]) if known.any() else math.nan,
    }


def ranking_metrics(index: ServingIndex, raw: RawRatings, k: int, min_rating: float | None) -> dict[str, Any]:
    """Top-k metrics over the test rows of known users (see the module docstring)."""
    users, items = row_indices(index, raw)
    keep = users >= 0
    if min_rating is not None:
        keep &= raw.ratings >= min_rating
    unknown_users = len(np.unique(raw.user_codes[users < 0]))
    unknown_item_rows = int((keep & (items < 0)).sum())
    keep &= items >= 0
    num_users, num_items = len(index.user_index), index.num_items
    test = Interactions(users[keep], items[keep], raw.ratings[keep], raw.timestamps[keep], num_users, num_items)
    train = (np.asarray(index.seen_indptr), np.asarray(index.seen_indices))
    metrics, _ = evaluate_ranking(index.score_users, train, test.seen_csr(), num_items, k=k)
    return {**metrics.as_dict(), "unknown_users": unknown_users, "unknown_item_rows": unknown_item_rows}


def fold_in_metrics(ckpt: checkpoint.Checkpoint, index: ServingIndex, raw: RawRatings, fraction: float,
                    seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Strong generalisation over the test users the model has never seen (see the module docstring)."""
    user_map, item_map = IdMap(ckpt.user_ids), IdMap(ckpt.item_ids)
    history, heldout = fold_in_split(encode_new_users(raw, user_map, item_map), fraction, seed)
    # Each history oldest first, as POST /recommend takes it (a sequence model reads the order; seen_csr sorts).
    indptr, indices = timelines(history, warn=ckpt.kind in SEQUENCE_KINDS)

    def score(user_idx: np.ndarray) -> np.ndarray:
        return np.stack([index.score_history(indices[indptr[u] : indptr[u + 1]]) for u in user_idx])

    metrics = evaluate_fold_in(score, history.seen_csr(), heldout.seen_csr(), index.num_items)
    known_users = int((user_map.encode(raw.user_vocab[np.unique(raw.user_codes)]) >= 0).sum())
    return {**metrics, "fraction": fraction, "seed": seed, "known_users_skipped": known_users}


def evaluate(
    ckpt: checkpoint.Checkpoint, raw: RawRatings, k: int = 10, min_rating: float | None = None,
    fold_in: float | None = None, seed: int = 0,
) -> dict:  # fmt: skip
    """Everything this script reports, as one plain dict (NaN where a metric has nothing to average)."""
    index = ServingIndex(ckpt)
    extra = {} if fold_in is None else {"fold_in": fold_in_metrics(ckpt, index, raw, fold_in, seed)}
    return {
        **extra,
        "model_version": ckpt.model_version,
        "kind": ckpt.kind,
        "test": raw.source,
        "rows": len(raw),
        "k": k,
        "rating": None if raw.implicit else rating_metrics(index, raw),
        "ranking": ranking_metrics(index, raw, k, min_rating),
    }


def _finite(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ranking_lines(rank: dict, k: int) -> list[str]:
    lines = [
        f"ranking @{k}: {rank['users']} users evaluated; skipped {rank['unknown_users']} unknown users and "
        f"{rank['skipped_users']} whose held-out items were all training items; "
        f"{rank['unknown_item_rows']} rows with unknown items dropped"
    ]
    for name in (*METRIC_NAMES, "coverage"):
        se = f" ± {rank['ndcg_se']:.4f} (standard error over users)" if name == "ndcg" else ""
        lines.append(f"  {name + '@' + str(k):<14} {rank[name]:.4f}{se}")
    return lines


def render_text(report: dict, checkpoint_path: str) -> str:
    k, lines = report["k"], [f"checkpoint: {checkpoint_path} ({report['model_version']})"]
    lines.append(f"test: {report['test']}: {report['rows']} rows")
    rating = report["rating"]
    if rating is None:
        lines.append("rating: n/a (the test file has no rating column)")
    elif rating["fallback_rows"] == rating["rows"]:  # e.g. --fold-in's new users: nothing but the fallback
        lines.append(f"rating: every row is of a user or item the model never saw: RMSE {rating['rmse']:.4f}  MAE "
                     f"{rating['mae']:.4f} of the baseline /predict falls back to")  # fmt: skip
    else:
        lines.append(
            f"rating: RMSE {rating['rmse']:.4f}  MAE {rating['mae']:.4f}  over {rating['rows']} rows, "
            f"{rating['fallback_rows']} of them with the baseline fallback for an unknown user or item "
            f"(known pairs only: RMSE {rating['rmse_known']:.4f}  MAE {rating['mae_known']:.4f})"
        )
        if not rating["predicts_ratings"]:
            lines.append(f"  note: a {report['kind']} model does not predict ratings (/predict answers its score "
                         "squashed onto the rating scale): compare its ranking, not this RMSE")  # fmt: skip
        if rating["training_rows"]:
            lines.append(f"  note: {rating['training_rows']} of the {rating['rows']} rows are (user, item) pairs the "
                         "model trained on: RMSE over them is not held-out error")  # fmt: skip
    rank, fold = report["ranking"], report.get("fold_in")
    if fold is not None and rank["users"] == 0:
        lines.append(f"ranking @{k}: no known user in the test file ({rank['unknown_users']} new ones: the fold-in "
                     "below scores them)")  # fmt: skip
    else:
        lines += _ranking_lines(rank, k)
    if fold is not None:
        lines.append(
            f"fold-in of {fold['fraction']:g} of each new user's items, the rest scored: {int(fold['users'])} new users"
            f" ({fold['known_users_skipped']} known users skipped)"
        )
        lines += [f"  {name:<14} {fold[name]:.4f}" for name in FOLD_IN_METRICS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ckpt = checkpoint.load(served_file(args.checkpoint))  # a model store: its current version
        raw = load_ratings(args.test, args.format)
    except (checkpoint.CheckpointError, DataFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.last_out:
        inter = build_dataset(raw).interactions
        timeline_order(inter)  # a file without timestamps: warns that file order stands in for time
        raw = raw.subset(newest_rows(inter))
    report = evaluate(ckpt, raw, args.k, args.min_rating, args.fold_in, args.seed)
    if args.json:
        print(json.dumps(_finite({"checkpoint": str(Path(args.checkpoint)), **report})))
    else:
        print(render_text(report, args.checkpoint))
    if report["ranking"]["users"] == 0 and args.fold_in is None:
        print("warning: no test user is known to the model with a relevant held-out item", file=sys.stderr)
    return 0


if __name__ == "__main__":
    plain_warnings()  # a DataWarning (columns not read, no timestamps) as one "warning: ..." line
    sys.exit(main())
