"""Split a rating file into a training file and a test file, for ``scripts/train.py`` and ``scripts/evaluate.py``.

    python scripts/split.py --data ratings.csv --out-dir splits/                    # per user, 20% of each user's items
    python scripts/split.py --data ratings.csv --out-dir splits/ --by last          # each user's newest row by time
    python scripts/split.py --data ratings.csv --out-dir splits/ --by users --test 0.2   # whole users: new users

    python scripts/train.py --data splits/train.csv --out model.ckpt
    python scripts/evaluate.py --checkpoint model.ckpt --test splits/test.csv                 # --by user, random
    python scripts/evaluate.py --checkpoint model.ckpt --test splits/test.csv --fold-in 0.8   # --by users

The protocols are ``model.splits``' and ``model.sequence_data``'s, the ones the benchmarks and ``evaluate.py``
use; each is the same for the same seed, and all but ``last`` keep every row of a (user, item) pair on one side:

- ``user`` (default): ``round(n x --test)`` of each user's items, at least one on each side of a user with two or
  more (``stratified_split``; ``benchmark_quality.py``'s ranking task at 0.25);
- ``random``: ``--test`` of all (user, item) pairs at random (``random_split``);
- ``last``: each user's newest row by time, ties to the later row in the file (``last_out``; the sequence models'
  leave-last-out, the same rows as ``evaluate.py --last-out`` on the whole file): that row alone, so an earlier
  row of the same pair (a re-watch, a replay) stays in train;
- ``users``: ``--test`` of the users, with all their rows (``holdout_users``): users the model never sees, for
  ``evaluate.py --fold-in``.

It writes ``train`` and ``test`` files in ``--out-dir`` (``.csv``, or ``.parquet`` with ``--parquet``) with the
columns ``user,item,rating,timestamp`` (``user,item,timestamp`` for implicit data), which the readers read back
as the same rows; each is written to a temporary name and renamed in. Exit 0; 2 for bad arguments or data, 1 when
writing fails (each file whole or absent), with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.columnar import write_table
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.files import output_problem
from model.interactions import Dataset, Interactions, build_dataset
from model.raw import plain_warnings
from model.sequence_data import last_out
from model.splits import holdout_users, random_split, stratified_split

PROTOCOLS = {
    "user": lambda inter, test, seed: stratified_split(inter, test, seed),
    "random": lambda inter, test, seed: random_split(inter, test, seed),
    "last": lambda inter, test, seed: last_out(inter),
    "users": lambda inter, test, seed: holdout_users(inter, test, seed),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="rating file (MovieLens, CSV/TSV or Parquet)")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--out-dir", required=True, help="directory for the train and test files (created if missing)")
    p.add_argument("--by", default="user", choices=sorted(PROTOCOLS), help="the protocol (default: user)")
    p.add_argument("--test", type=float, default=0.2, help="test share: of each user's items (user), of the pairs "
                   "(random), of the users (users); unused by last (default: 0.2)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    p.add_argument("--parquet", action="store_true", help="write Parquet instead of CSV")
    args = p.parse_args(argv)
    if not 0.0 < args.test < 1.0:
        p.error("--test must be a fraction between 0 and 1 (exclusive), e.g. 0.2")
    suffix = ".parquet" if args.parquet else ".csv"
    args.outputs = [Path(args.out_dir) / f"{name}{suffix}" for name in ("train", "test")]
    for out in args.outputs:
        problem = output_problem(str(out), args.data)
        if problem:
            p.error(f"--out-dir: {problem}")
    return args


def rows_table(dataset: Dataset, part: Interactions) -> pa.Table:
    """The rows of ``part`` with their raw ids, as a rating file holds them (no rating column for implicit data)."""
    user_ids, item_ids = np.asarray(dataset.user_map.ids, object), np.asarray(dataset.item_map.ids, object)
    columns = {"user": pa.array(user_ids[part.user_idx], pa.string()),
               "item": pa.array(item_ids[part.item_idx], pa.string())}  # fmt: skip
    if not dataset.implicit:
        columns["rating"] = pa.array(part.ratings)
    columns["timestamp"] = pa.array(part.timestamps)
    return pa.table(columns)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        dataset = build_dataset(load_ratings(args.data, args.format))
        train, test = PROTOCOLS[args.by](dataset.interactions, args.test, args.seed)
        if not len(train) or not len(test):
            raise ValueError(f"the {args.by} split left the {'test' if len(train) else 'training'} part empty "
                             f"({len(dataset.interactions)} rows, {dataset.interactions.num_users} users)")  # fmt: skip
    except (DataFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tables = [rows_table(dataset, part) for part in (train, test)]
    broken = not args.parquet and any(bool(pc.any(pc.match_substring_regex(t.column(n), "[\r\n]")).as_py())
                                      for t in tables for n in ("user", "item"))  # fmt: skip
    if broken:  # a CSV field must stay on one line for the readers (model.data)
        print("error: an id holds a line break, which a CSV line cannot: write Parquet (--parquet)", file=sys.stderr)
        return 2
    try:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        for table, out in zip(tables, args.outputs):
            write_table(table, out)
    except OSError as exc:  # disk full, permissions: each file is whole or absent (written to a temporary name)
        print(f"error: writing the split failed: {exc}", file=sys.stderr)
        return 1
    users = [len(np.unique(part.user_idx)) for part in (train, test)]
    print(f"{args.by} split of {args.data} (seed {args.seed}): {args.outputs[0]} {len(train)} rows, {users[0]} users; "
          f"{args.outputs[1]} {len(test)} rows, {users[1]} users")  # fmt: skip
    return 0


if __name__ == "__main__":
    plain_warnings()
    sys.exit(main())
