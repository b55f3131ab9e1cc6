"""Write MovieLens-20M-shaped synthetic ratings (``model.synthetic.movielens_like``) to CSV or Parquet.

    python scripts/make_synthetic.py --out ratings.csv                  # ML-20M sizes, about 30 s
    python scripts/make_synthetic.py --out small.parquet --users 2000 --items 800 --ratings 100000 --seed 3

The CSV has MovieLens' header ``userId,movieId,rating,timestamp``; the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from model.synthetic import MovieLensShape, movielens_like, write_ratings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = MovieLensShape()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--users", dest="num_users", type=int, default=d.num_users)
    p.add_argument("--items", dest="num_items", type=int, default=d.num_items)
    p.add_argument("--ratings", dest="num_ratings", type=int, default=d.num_ratings)
    p.add_argument("--seed", type=int, default=d.seed)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = MovieLensShape(num_users=args.num_users, num_items=args.num_items, num_ratings=args.num_ratings,
                           seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    try:
        data = movielens_like(shape)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    generated = time.perf_counter() - start
    write_ratings(data, args.out)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.out}: {len(data.ratings)} ratings, {shape.num_users} users, {shape.num_items} items; "
          f"generated in {generated:.1f} s, written in {time.perf_counter() - start - generated:.1f} s, "
          f"peak RSS {peak_gb:.2f} GB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
