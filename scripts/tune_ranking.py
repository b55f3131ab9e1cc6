"""Choose the ranking head's defaults on a validation split of MovieLens 100k training data only.

    python scripts/tune_ranking.py [--data-dir ../shared/datasets/ml-100k] [--seed 0]
    python scripts/tune_ranking.py --data my_ratings.csv --losses kinds          # your own file (any format)

The ranking task of ``scripts/benchmark_quality.py`` holds out 25% of each user's rows (seed 0) as its
test set. This script never looks at those rows: it splits the remaining 75% per user again (75/25, seed
``seed + 1``, as the benchmark does to tune the peers), trains each candidate on the inner 75% and scores
nDCG@10 on the inner 25%, with the benchmark's metric code. It prints one row per candidate, best first.

``--protocol strong`` chooses for new users instead: the benchmark's strong task holds 20% of the users out
whole (seed ``seed``); of the rest, 20% of the users are held out again (``seed + 1``), each candidate trains
on the others and folds in 80% of each held-out user's items through the serving index (what ``POST
/recommend`` does), scored on the other 20% (NDCG@100 and the rest of ``model.metrics.FOLD_IN_METRICS``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import checkpoint  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data import DataFormatError, load_ratings  # noqa: E402
from model.idmap import IdMap  # noqa: E402
from model.interactions import Dataset, build_dataset  # noqa: E402
from model.metrics import evaluate_fold_in, evaluate_ranking  # noqa: E402
from model.splits import fold_in_split, holdout_users, stratified_split  # noqa: E402
from model.train import fit  # noqa: E402
from service.index import ServingIndex  # noqa: E402

GRIDS = {
    "ials": {"alpha": [1.0, 2.0, 3.0, 5.0], "reg": [10.0, 30.0, 50.0], "dim": [64]},
    "softmax": {"lr": [0.003, 0.006], "batch_size": [64, 256], "dim": [64]},
    # Mult-VAE / DAE (--model vae|dae): fixed epochs (val_fraction 0) against early stopping on 5% of the rows.
    "vae": {"model": ["vae"], "epochs": [30, 60, 100], "dim": [64, 200], "val_fraction": [0.0]},
    "dae": {"model": ["dae"], "epochs": [30, 60], "dim": [64, 200], "val_fraction": [0.0]},
    # Implicit ALS's fold-in L2 for new users (--protocol strong), the default mf with its ials head.
    "fold_in": {"loss": ["auto"], "fold_in_reg": [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]},
    # The kinds as they are by default (the default's ranking head is ials with these defaults).
    "kinds": [{"loss": "ials"}, {"model": "vae"}, {"model": "dae"}],
}


def data_file(args) -> tuple[Path, str]:
    """(path, format): ``--data`` (format detected), else MovieLens 100k's ``u.data`` in ``--data-dir``."""
    return (args.data, "auto") if args.data else (args.data_dir / "u.data", "ml-100k")


def known_users(args) -> tuple:
    """(fit part, score function maker): the benchmark's ranking task's training part, split per user again."""
    full = build_dataset(load_ratings(*data_file(args))).interactions
    train, _ = stratified_split(full, 0.25, seed=args.seed)  # the benchmark's training part; its test unused
    inner, val = stratified_split(train, 0.25, seed=args.seed + 1)

    def measure(result) -> dict[str, float]:
        network = result.network

        def score(users):
            with torch.no_grad():
                return network.score_all(torch.from_numpy(users)).numpy()

        metrics, _ = evaluate_ranking(score, inner.seen_csr(), val.seen_csr(), inner.num_items, k=10)
        return {"ndcg@10": metrics.ndcg}

    return inner, measure


def new_users(args) -> tuple:
    """(fit part, score function maker): the strong task's training users, some of them held out again whole."""
    full = build_dataset(load_ratings(*data_file(args))).interactions
    train, _ = holdout_users(full, 0.2, seed=args.seed)  # the benchmark's strong training users; its test unused
    inner, val_users = holdout_users(train, 0.2, seed=args.seed + 1)
    history, heldout = fold_in_split(val_users, 0.8, seed=args.seed + 1)
    h_ptr, h_idx = history.seen_csr()
    ids = Dataset(inner, IdMap([str(u) for u in range(inner.num_users)]),
                  IdMap([str(i) for i in range(inner.num_items)]), "tune", "tune")  # fmt: skip

    def measure(result) -> dict[str, float]:
        index = ServingIndex(checkpoint.from_training(result, ids))

        def score(users):
            return np.stack([index.score_history(h_idx[h_ptr[u] : h_ptr[u + 1]]) for u in users])

        return evaluate_fold_in(score, (h_ptr, h_idx), heldout.seen_csr(), inner.num_items)

    return inner, measure


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k",
                   help="MovieLens 100k folder (its u.data), when no --data")  # fmt: skip
    p.add_argument("--data", type=Path, help="your own rating file instead (MovieLens, CSV/TSV or Parquet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses", default="ials,softmax", help=f"grids to run, comma-separated: {', '.join(GRIDS)}")
    p.add_argument("--protocol", default="known", choices=("known", "strong"), help="known users or new ones")
    args = p.parse_args()
    unknown = [name for name in args.losses.split(",") if name not in GRIDS]
    if unknown:
        p.error(f"--losses: no grid {', '.join(unknown)}; choose from {', '.join(GRIDS)}")
    try:
        inner, measure = (known_users if args.protocol == "known" else new_users)(args)
    except DataFormatError as exc:  # a missing --data-dir too: "cannot read file"
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for loss in args.losses.split(","):
        grid = GRIDS[loss]
        candidates = grid if isinstance(grid, list) else [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
        for params in candidates:
            started = time.perf_counter()
            loss_flag = {} if {"model", "loss"} & params.keys() else {"loss": loss}
            result = fit(inner, TrainConfig(seed=args.seed, **loss_flag, **params), progress=False)
            rows.append((measure(result), loss, params, time.perf_counter() - started))
            print(rows[-1], file=sys.stderr, flush=True)
    names = [n for n in (rows[0][0] if rows else {}) if n != "users"]
    print(f"| loss | params | {' | '.join(f'validation {n}' for n in names)} | fit s |")
    print("|---|---|" + "---:|" * (len(names) + 1))
    for figures, loss, params, seconds in sorted(rows, key=lambda r: -r[0][names[0]]):
        print(f"| {loss} | {params} | {' | '.join(f'{figures[n]:.4f}' for n in names)} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
