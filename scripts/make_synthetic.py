"""Write MovieLens-20M-shaped synthetic ratings (``model.synthetic.movielens_like``) to CSV or Parquet.

    python scripts/make_synthetic.py --out ratings.csv                  # ML-20M sizes, about 30 s
    python scripts/make_synthetic.py --out small.parquet --users 2000 --items 800 --ratings 100000 --seed 3

The CSV has MovieLens' header ``userId,movieId,rating,timestamp``; the same seed gives the same bytes.
The format is the name's suffix, ``.csv`` or ``.parquet`` (any case); other names are refused, as are a
catalogue smaller than the 20 items every user rates. Missing parent directories are created; the file is
written to a temporary name and renamed in. The summary counts the users and items the file holds (the
tail of the catalogue may draw no rating).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from model.files import output_problem
from model.synthetic import MovieLensShape, movielens_like, write_ratings

SUFFIXES = (".csv", ".parquet")  # any case, as write_ratings reads it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = MovieLensShape()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--users", dest="num_users", type=int, default=d.num_users)
    p.add_argument("--items", dest="num_items", type=int, default=d.num_items)
    p.add_argument("--ratings", dest="num_ratings", type=int, default=d.num_ratings)
    p.add_argument("--seed", type=int, default=d.seed)
    return p.parse_args(argv)


def shape_problem(shape: MovieLensShape) -> str | None:
    """Why ``movielens_like`` cannot draw ``shape``, for what it does not check itself, or None."""
    if shape.num_users < 1:
        return f"--users {shape.num_users}: at least 1 user is needed"
    if shape.num_items < shape.min_per_user:
        return (f"--items {shape.num_items}: at least {shape.min_per_user} items are needed "
                f"(every user rates at least {shape.min_per_user} distinct items)")  # fmt: skip
    return None


def out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot be written, or None: a name of another format (``.csv.gz``, ``.txt``), a directory,
    a path under a file (``model.files.output_problem``)."""
    if out.suffix.lower() not in SUFFIXES:
        return f"--out {out}: expected a name ending in .csv or .parquet (any case)"
    problem = output_problem(str(out))
    return f"--out: {problem}" if problem else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = MovieLensShape(num_users=args.num_users, num_items=args.num_items, num_ratings=args.num_ratings,
                           seed=args.seed)  # fmt: skip
    problem = shape_problem(shape) or out_problem(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        data = movielens_like(shape)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    generated = time.perf_counter() - start
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)  # as train.py's --out
        write_ratings(data, args.out)
    except OSError as exc:  # permissions, disk full: the temporary file is gone, --out untouched
        print(f"error: writing {args.out}: {exc}", file=sys.stderr)
        return 1
    users = np.count_nonzero(np.bincount(data.user_idx, minlength=shape.num_users))
    items = np.count_nonzero(np.bincount(data.item_idx, minlength=shape.num_items))
    unrated = f" ({shape.num_items - items} of the {shape.num_items} drew no rating)" if items < shape.num_items else ""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.out}: {len(data.ratings)} ratings, {users} users, {items} items{unrated}; "
          f"generated in {generated:.1f} s, written in {time.perf_counter() - start - generated:.1f} s, "
          f"peak RSS {peak_gb:.2f} GB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
