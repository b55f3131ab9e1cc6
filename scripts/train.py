"""Train a recommender on a rating file (or the built-in synthetic data) and write one checkpoint.

    python scripts/train.py --data ratings.csv --out artifacts/model.ckpt

Writes ``<out>.curves.png`` (training curves) beside the checkpoint.
Exit codes: 0 trained and saved, 2 bad arguments or malformed data (nothing written), 3 training failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from model import checkpoint
from model.curves import save_curves
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.interactions import build_dataset
from model.loop import OPTIMIZERS, SCHEDULES
from model.losses import LOSSES, RANKING_LOSSES
from model.networks import ACTIVATIONS, MODEL_KINDS
from model.synthetic import planted_ratings
from model.train import TrainConfig, TrainingDiverged, fit, resolve, resolve_device

DEFAULT_OUT = "artifacts/model.ckpt"


def batch_size(text: str) -> int:
    """``full`` (or 0) = every row in one step: plain gradient descent."""
    if text == "full":
        return 0
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 1, or full (0)")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="rating file (MovieLens or CSV/TSV); default: built-in synthetic data")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"checkpoint to write (default: {DEFAULT_OUT})")
    p.add_argument("--model", default=d.model, choices=MODEL_KINDS, help="model kind (default: mf)")
    p.add_argument(
        "--loss",
        default=d.loss,
        choices=("auto", *LOSSES),
        help="auto: mf -> mse on ratings (softmax on implicit data); gmf, neumf -> bce",
    )
    p.add_argument(
        "--rank-loss",
        default=None,
        choices=("none", *RANKING_LOSSES),
        help=f"ranking head of an mse model, used by /recommend (default: {d.rank_loss})",
    )
    p.add_argument("--dim", type=int, help="embedding size (default: per kind, see README)")
    p.add_argument("--member-dim", type=int, default=d.member_dim, help="mf+mse: --dim as --dim/--member-dim models")
    p.add_argument("--layers", default=d.layers, help="neumf: MLP tower widths, e.g. 64,32,16")
    p.add_argument("--activation", default=d.activation, choices=tuple(ACTIVATIONS), help="neumf: tower activation")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: per kind)")
    p.add_argument("--lr", type=float, help="learning rate (default: per kind)")
    p.add_argument("--reg", type=float, help="L2 on every embedding row per epoch (default: per kind)")
    p.add_argument("--reg-bias", type=float, default=d.reg_bias, help="mf+mse: L2 on every bias")
    p.add_argument("--negatives", type=int, help="sampled negatives per positive; 0 = whole catalogue (softmax)")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--momentum", type=float, default=d.momentum, help="sgd momentum (adam: beta1)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="optimiser L2 on every parameter")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=SCHEDULES)
    p.add_argument("--batch-size", type=batch_size, help="rows per step, 1 (SGD) .. full (gradient descent)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same weights)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held out for early stopping")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without improvement")
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=d.refit,
        help="after early stopping, retrain on all rows for the best number of epochs",
    )
    p.add_argument("--device", default=d.device, choices=("cpu", "cuda", "auto"), help="auto: cuda if available")
    p.add_argument("--rank-dim", type=int, default=d.rank_dim, help="ranking head: embedding size")
    p.add_argument("--rank-reg", type=float, default=d.rank_reg, help="ranking head: L2")
    p.add_argument("--rank-lr", type=float, default=d.rank_lr, help="ranking head: Adam learning rate")
    p.add_argument("--rank-epochs", type=int, default=d.rank_epochs, help="ranking head: maximum epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    positive = {
        "--dim": args.dim,
        "--epochs": args.epochs,
        "--member-dim": args.member_dim,
        "--rank-dim": args.rank_dim,
        "--rank-epochs": args.rank_epochs,
        "--patience": args.patience,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1")
    if (args.lr is not None and args.lr <= 0) or args.rank_lr <= 0:
        p.error("--lr and --rank-lr must be > 0")
    negative = [
        f
        for f, v in {
            "--reg": args.reg,
            "--reg-bias": args.reg_bias,
            "--rank-reg": args.rank_reg,
            "--negatives": args.negatives,
            "--momentum": args.momentum,
            "--weight-decay": args.weight_decay,
        }.items()
        if v is not None and v < 0
    ]
    if negative:
        p.error(f"{', '.join(negative)} must be >= 0")
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    if args.rank_loss is not None and args.loss not in ("auto", "mse"):
        p.error(f"--rank-loss is the ranking head of an mse model; --loss {args.loss} already ranks")
    if args.rank_loss is not None and args.model != "mf":
        p.error(f"--rank-loss needs --model mf (an mse model); {args.model} ranks by itself")
    if args.momentum and args.optimizer == "adagrad":
        p.error("--momentum applies to sgd (and adam's beta1), not adagrad")
    args.rank_loss = args.rank_loss or d.rank_loss
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
    kind = "interactions (implicit)" if dataset.implicit else "ratings"
    print(f"data: {dataset.source}: {len(inter)} {kind}, {inter.num_users} users, {inter.num_items} items")
    config = config_from_args(args)
    try:
        resolve(config, dataset.implicit)
        resolve_device(config.device)
    except ValueError as exc:  # a combination that needs this data to judge (e.g. mse on implicit data)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = fit(inter, config, progress=not args.quiet, implicit=dataset.implicit)
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    ckpt = checkpoint.from_training(result, dataset)
    out = checkpoint.save(ckpt, Path(args.out))
    curves = save_curves(result.history, Path(f"{out}.curves.png"), title=f"{ckpt.kind} ({result.config.loss})")
    m, c = result.metrics, result.config
    parts = [f"trained {ckpt.kind} ({c.loss}) dim={c.dim}"]
    if "train_rmse" in m:
        parts.append(f"train RMSE {m['train_rmse']:.4f}, validation RMSE {m.get('val_rmse', float('nan')):.4f}")
    for key, label in (("val_ndcg10", "validation nDCG@10"), ("rank_val_ndcg10", "ranking head validation nDCG@10")):
        if key in m:
            parts.append(f"{label} {m[key]:.4f}")
    parts.append(f"{int(m['epochs_run'])} epochs (best {int(m['best_epoch'])}) in {m['fit_seconds']:.1f}s")
    print(", ".join(parts))
    print(f"wrote {out} (model_version {ckpt.model_version}), curves {curves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
