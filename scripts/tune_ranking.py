"""Choose the ranking head's defaults on a validation split of MovieLens 100k training data only.

    python scripts/tune_ranking.py [--data-dir ../shared/datasets/ml-100k] [--seed 0]

The ranking task of ``scripts/benchmark_quality.py`` holds out 25% of each user's rows (seed 0) as its
test set. This script never looks at those rows: it splits the remaining 75% per user again (75/25, seed
``seed + 1``, as the benchmark does to tune the peers), trains each candidate on the inner 75% and scores
nDCG@10 on the inner 25%, with the benchmark's metric code. It prints one row per candidate, best first.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.config import TrainConfig  # noqa: E402
from model.data import load_ratings  # noqa: E402
from model.interactions import build_dataset  # noqa: E402
from model.metrics import evaluate_ranking  # noqa: E402
from model.splits import stratified_split  # noqa: E402
from model.train import fit  # noqa: E402

GRIDS = {
    "ials": {"alpha": [1.0, 2.0, 3.0, 5.0], "reg": [10.0, 30.0, 50.0], "dim": [64]},
    "softmax": {"lr": [0.003, 0.006], "batch_size": [64, 256], "dim": [64]},
    # Mult-VAE / DAE (--model vae|dae): fixed epochs (val_fraction 0) against early stopping on 5% of the rows.
    "vae": {"model": ["vae"], "epochs": [30, 60, 100], "dim": [64, 200], "val_fraction": [0.0]},
    "dae": {"model": ["dae"], "epochs": [30, 60], "dim": [64, 200], "val_fraction": [0.0]},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses", default="ials,softmax", help="grids to run: ials, softmax, vae, dae")
    args = p.parse_args()
    full = build_dataset(load_ratings(args.data_dir / "u.data", "ml-100k")).interactions
    train, _ = stratified_split(full, 0.25, seed=args.seed)  # the benchmark's training part; its test unused
    inner, val = stratified_split(train, 0.25, seed=args.seed + 1)
    rows = []
    for loss in args.losses.split(","):
        grid = GRIDS[loss]
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            started = time.perf_counter()
            loss_flag = {} if "model" in params else {"loss": loss}
            result = fit(inner, TrainConfig(seed=args.seed, **loss_flag, **params), progress=False)
            network = result.network

            def score(users, network=network):
                with torch.no_grad():
                    return network.score_all(torch.from_numpy(users)).numpy()

            metrics, _ = evaluate_ranking(score, inner.seen_csr(), val.seen_csr(), inner.num_items, k=10)
            rows.append((metrics.ndcg, loss, params, time.perf_counter() - started))
    print("| loss | params | validation nDCG@10 | fit s |\n|---|---|---:|---:|")
    for ndcg, loss, params, seconds in sorted(rows, key=lambda r: -r[0]):
        print(f"| {loss} | {params} | {ndcg:.4f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
