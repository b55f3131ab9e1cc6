"""Train a recommender on a rating file (or the built-in synthetic data) and write one checkpoint.

    python scripts/train.py --data ratings.csv --out artifacts/model.ckpt

Writes ``<out>.curves.png`` (training curves) beside the checkpoint (a failure to write them is a warning).
Exit codes: 0 trained and saved, 2 bad arguments or malformed data (nothing written), 3 training failed or the
checkpoint could not be written (a full disk; the file at ``--out`` is left as it was), 143 stopped by SIGTERM
(nothing written unless the checkpoint was already in place).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from model import checkpoint, distributed
from model.config import TrainConfig, config_flags, overrides, validate
from model.curves import save_curves
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.files import output_problem
from model.interactions import build_dataset
from model.item_files import read_items
from model.raw import plain_warnings
from model.sequence import SEQUENCE_KINDS
from model.signals import EXIT_CODE as TERMINATED_EXIT
from model.signals import Terminated, raise_on_sigterm
from model.synthetic import planted_ratings
from model.train import TrainingDiverged, fit, resolve, resolve_device

DEFAULT_OUT = "artifacts/model.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="rating file (MovieLens, CSV/TSV or Parquet); default: built-in synthetic data")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"checkpoint to write (default: {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("training (one flag per TrainConfig field, shared with scripts/retrain.py)")
    for names, kwargs in config_flags():
        group.add_argument(*names, **kwargs)
    args = p.parse_args(argv)
    try:
        args.config = validate(replace(TrainConfig(), **overrides(args)), overrides(args))
    except ValueError as exc:
        p.error(str(exc))
    problem = output_problem(args.out, args.data, args.config.items)
    if problem:
        p.error(f"--out: {problem}")
    return args


def peak_rss_gb() -> float:
    """This process's peak resident set so far, in GB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = distributed.from_env()
    try:
        distributed.start(cluster, resolve_device(args.config.device))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        code = train(args, cluster)
        if code == 0:  # an error return (bad data, divergence) may be one rank's alone: no barrier to wait in
            distributed.finish(cluster)
        return code
    finally:
        distributed.stop(cluster)


def train(args: argparse.Namespace, cluster: distributed.Cluster) -> int:
    """Read, train (every rank under torchrun, each on its slice of every batch) and save (rank 0)."""
    say = print if cluster.is_main else (lambda *a, **k: None)
    started = time.perf_counter()
    try:
        raw = load_ratings(args.data, args.format) if args.data else planted_ratings()[0]
    except DataFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parsed = time.perf_counter()
    dataset = build_dataset(raw)
    del raw  # the id codes now live in the dataset; 20M rows of codes, ratings and stamps are 400 MB
    inter = dataset.interactions
    kind = "interactions (implicit)" if dataset.implicit else "ratings"
    read, id_maps = time.perf_counter() - started, time.perf_counter() - parsed
    say(f"data: {dataset.source}: {len(inter)} {kind}, {inter.num_users} users, {inter.num_items} items "
        f"(read in {read:.1f}s, of which id maps {id_maps:.1f}s)" + (f", rank 0 of {cluster.world}"
                                                                      if cluster.distributed else ""))  # fmt: skip
    config = args.config
    try:  # before training: a malformed metadata file costs nothing and writes nothing
        items = read_items(config.items) if config.items else None
    except DataFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if items is not None:
        say(items.summary(dataset.item_map.ids))
    try:
        resolve(config, dataset.implicit, len(inter), cluster.distributed)
        resolve_device(config.device)
    except ValueError as exc:  # a combination that needs this data to judge (e.g. mse on implicit data)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = fit(inter, config, progress=not args.quiet and cluster.is_main, implicit=dataset.implicit,
                     cluster=cluster)  # fmt: skip
    except TrainingDiverged as exc:
        low, high = (None, None) if dataset.implicit else (inter.ratings.min(), inter.ratings.max())
        span = "" if low is None else f" (the ratings range from {low:g} to {high:g})"
        print(f"error: training diverged: {exc}{span}", file=sys.stderr)
        return 3
    if not cluster.is_main:
        return 0  # rank 0 alone writes; the weights are the same on every rank
    saving = time.perf_counter()
    ckpt = checkpoint.from_training(result, dataset, items.align(dataset.item_map.ids) if items else None)
    try:
        out = checkpoint.save(ckpt, Path(args.out))
    except OSError as exc:  # a full disk: the temporary file is gone and --out is as it was
        print(f"error: {exc}; {args.out} is left as it was", file=sys.stderr)
        return 3
    try:  # the checkpoint is in place (a serving instance may already reload it): the plot is no reason to fail
        curves = save_curves(result.history, Path(f"{out}.curves.png"), title=f"{ckpt.kind} ({result.config.loss})")
    except OSError as exc:
        print(f"warning: the checkpoint is written, but not its training curves: {exc}", file=sys.stderr)
        curves = None
    saved = time.perf_counter() - saving
    m, c = result.metrics, result.config
    parts = [f"trained {ckpt.kind} ({c.loss}) dim={c.dim}"]
    if "train_rmse" in m:
        parts.append(f"train RMSE {m['train_rmse']:.4f}, validation RMSE {m.get('val_rmse', float('nan')):.4f}")
    for key, label in (("val_ndcg10", "validation nDCG@10"), ("rank_val_ndcg10", "ranking head validation nDCG@10")):
        if key in m:
            parts.append(f"{label} {m[key]:.4f}")
    validated = any(key in m for key in ("val_rmse", "val_ndcg10", "rank_val_ndcg10"))
    held = "each user's newest item" if c.model in SEQUENCE_KINDS else f"a random {100 * c.val_fraction:g}% of the rows"
    best = f"best {int(m['best_epoch'])}; validation: {held}" if validated else "no validation: --val-fraction 0"
    parts.append(f"{int(m['epochs_run'])} epochs ({best}) in {m['fit_seconds']:.1f}s")
    stages = [f"{label} {m[key]:.1f}s" for key, label in (("rating_seconds", "rating model"),
                                                          ("rank_seconds", "ranking head")) if key in m]  # fmt: skip
    print(", ".join(parts) + (f" ({', '.join(stages)})" if stages else ""))
    print(f"wrote {out} (model_version {ckpt.model_version}) in {saved:.1f}s, curves {curves or 'not written'}")
    print(f"total {time.perf_counter() - started:.1f}s, peak RSS {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    plain_warnings()  # a DataWarning (columns not read, no timestamps) as one "warning: ..." line
    raise_on_sigterm()  # a stopped run unwinds, so a checkpoint half written is removed
    try:
        sys.exit(main())
    except Terminated as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        sys.exit(TERMINATED_EXIT)
