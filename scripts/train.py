"""Train a recommender on a rating file (or the built-in synthetic data) and write one checkpoint.

    python scripts/train.py --data ratings.csv --out artifacts/model.ckpt

Exit codes: 0 trained and saved, 2 bad arguments or malformed data (nothing written), 3 training failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from model import checkpoint
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.interactions import build_dataset
from model.networks import MODEL_KINDS
from model.synthetic import planted_ratings
from model.train import TrainConfig, TrainingDiverged, fit

DEFAULT_OUT = "artifacts/model.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="rating file (MovieLens or CSV/TSV); default: built-in synthetic data")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"checkpoint to write (default: {DEFAULT_OUT})")
    p.add_argument("--model", default=defaults.model, choices=MODEL_KINDS, help="model kind")
    p.add_argument("--dim", type=int, default=defaults.dim, help="embedding size of the saved model")
    p.add_argument(
        "--member-dim", type=int, default=defaults.member_dim,
        help="train --dim as an average of --dim/--member-dim independent models of this size",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    p.add_argument("--reg", type=float, default=defaults.reg, help="L2 penalty on every factor row (per epoch)")
    p.add_argument("--reg-bias", type=float, default=defaults.reg_bias, help="L2 penalty on every bias")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per step (0 = full batch)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="held out for early stopping")
    p.add_argument("--patience", type=int, default=defaults.patience, help="epochs without improvement")
    p.add_argument(
        "--refit", action=argparse.BooleanOptionalAction, default=defaults.refit,
        help="after early stopping, retrain on all rows for the best number of epochs",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.dim < 1 or args.epochs < 1 or args.lr <= 0 or args.reg < 0 or args.reg_bias < 0 or args.batch_size < 0:
        p.error("--dim and --epochs must be >= 1, --lr > 0, --reg and --reg-bias >= 0, --batch-size >= 0")
    if args.member_dim < 1:
        p.error("--member-dim must be >= 1")
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    return args


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        raw = load_ratings(args.data, args.format) if args.data else planted_ratings()[0]
    except DataFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dataset = build_dataset(raw)
    inter = dataset.interactions
    print(f"data: {dataset.source}: {len(inter)} ratings, {inter.num_users} users, {inter.num_items} items")
    config = config_from_args(args)
    try:
        result = fit(inter, config, progress=not args.quiet)
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    ckpt = checkpoint.from_training(result, dataset)
    out = checkpoint.save(ckpt, Path(args.out))
    m = result.metrics
    val = f"{m['val_rmse']:.4f}" if "val_rmse" in m else "n/a"
    print(
        f"trained {ckpt.kind} dim={config.dim}: train RMSE {m['train_rmse']:.4f}, validation RMSE {val}, "
        f"{int(m['epochs_run'])} epochs (best {int(m['best_epoch'])}) in {m['fit_seconds']:.1f}s"
    )
    print(f"wrote {out} (model_version {ckpt.model_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
