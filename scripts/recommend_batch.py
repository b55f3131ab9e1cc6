"""Every known user's top-k (or the listed users') in one file, the answers ``GET /recommend`` gives.

    python scripts/recommend_batch.py --checkpoint artifacts/model.ckpt --out recs.parquet [--k 10] [--users FILE]
        [--filter genres:Comedy --filter year:1995]

The model is loaded as a service worker loads it (``service.recommender.Recommender.load``: the same
``RECSYS_*`` settings) except that every known user's top-N list is always precomputed (as long as a
worker's, ``RECSYS_TOPN_N``, and at least k): a blocked scan, one matrix product per 512 users (multi-threaded
BLAS: every core) and one top-k per row. Each user's answer is then ``ServingIndex.recommend(user, k)``, the
call the view makes, so the file holds what ``/recommend`` answers (tested against the real uWSGI). NeuMF has
no lists: each of its users is one torch pass over the catalogue.

Output (``--out``; the format from the extension: ``.parquet`` or ``.csv``): one row per recommended item,
columns ``user_id`` (string), ``rank`` (1 = best), ``item_id`` (string), ``score`` (float64, the score
``/recommend`` reports). It is written in blocks of ``--block`` users (pyarrow's ParquetWriter, one row group
per block, or its CSV writer) to a temporary file beside ``--out``, renamed into place at the end: a
failed run never leaves a partial file under that name. A tqdm bar on stderr counts users while ranking
and while writing (``--quiet``: none).

``--users FILE``: one user id per line (blank lines ignored), answered in the file's order, each once. A user
the model does not know stops the run before anything is written (``FILE:LINE: unknown user``, exit 2);
``--skip-unknown`` leaves such users out instead and says how many on stderr.

``--filter attribute:value`` (repeatable; all must hold): as ``GET /recommend``'s ``filter``, applied before
the top-k. An attribute the model does not have, or a non-integer for an int attribute, stops the run before
anything is written (exit 2).

Exit codes: 0 written; 1 writing failed (disk full...: ``--out`` untouched); 2 bad arguments, unreadable
``--users`` file, unknown users, or a checkpoint that does not load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from model.checkpoint import CheckpointError
from model.files import atomic_write, output_problem
from service.attributes import BadFilterValue, UnknownAttribute
from service.config import ConfigError
from service.recommender import BATCH_COLUMNS, Recommender
from service.schemas import MAX_K, parse_filters

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float64())])
FORMATS = {".parquet": "parquet", ".csv": "csv"}
ALWAYS_LISTS = 1 << 62  # RECSYS_TOPN_MAX_CELLS for the batch: lists for any size (the scan's memory is per block)


class BatchError(ValueError):
    """A refusal before anything is written; the message names the file (and line)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint (or model store directory) to recommend from")
    p.add_argument("--out", required=True, help="output file: .parquet or .csv")
    p.add_argument("--k", type=int, default=10, help=f"items per user, 1..{MAX_K} (default: 10)")
    p.add_argument("--users", help="file of user ids, one per line (default: every user the model knows)")
    p.add_argument("--skip-unknown", action="store_true", help="leave out --users the model does not know")
    p.add_argument("--block", type=int, default=8192, help="users per written block (default: 8192)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--filter", action="append", default=[], metavar="ATTRIBUTE:VALUE",
        help="keep only items with this attribute value (repeatable: all must hold), as /recommend's filter",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.k <= MAX_K:
        p.error(f"--k must be between 1 and {MAX_K}")
    if args.block < 1:
        p.error("--block must be at least 1")
    if Path(args.out).suffix.lower() not in FORMATS:
        p.error(f"--out {args.out}: the extension must be one of {', '.join(FORMATS)}")
    if not Path(args.out).resolve().parent.is_dir():
        p.error(f"--out {args.out}: no such directory")
    problem = output_problem(args.out, args.users, args.checkpoint)
    if problem:
        p.error(f"--out: {problem}")
    return args


def read_users(path: str, known: dict[str, int], skip_unknown: bool) -> tuple[list[str], int]:
    """The listed users in file order, each once, and how many unknown ones were skipped.

    Raises:
        BatchError: unreadable file, or (without ``skip_unknown``) ``FILE:LINE: unknown user``.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a BOM, as the rating reader drops it
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path}: cannot read user ids ({exc})") from None
    users: dict[str, None] = {}  # ordered, each user once
    skipped = 0
    for lineno, line in enumerate(lines, start=1):
        user = line.strip()
        if not user or user in users:
            continue
        if user not in known:
            if not skip_unknown:
                raise BatchError(f"{path}:{lineno}: unknown user {user!r} (--skip-unknown leaves such users out)")
            skipped += 1
            continue
        users[user] = None
    return list(users), skipped


def load(args: argparse.Namespace) -> Recommender:
    """The model as a worker loads it, with every known user's top-N list precomputed (a bar counts users)."""
    with tqdm(desc="ranking", unit=" users", disable=args.quiet, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return Recommender.load(args.checkpoint, progress, lists_at_least=args.k, topn_max_cells=ALWAYS_LISTS)


def write(rec: Recommender, users: list[str], args: argparse.Namespace, options: dict) -> int:
    """Stream the users' answers in blocks to a temporary file, then rename it to ``--out``. Returns rows."""
    out = Path(args.out)
    fmt = FORMATS[out.suffix.lower()]
    rows = [0]

    def stream(tmp: str) -> None:
        writer = pq.ParquetWriter(tmp, SCHEMA) if fmt == "parquet" else pacsv.CSVWriter(tmp, SCHEMA)
        with writer, tqdm(total=len(users), desc="writing", unit=" users", disable=args.quiet, file=sys.stderr) as bar:
            for columns in rec.recommend_blocks(users, args.k, block=args.block, **options):
                table = pa.table({name: columns[name] for name in BATCH_COLUMNS}, schema=SCHEMA)
                writer.write_table(table)
                rows[0] += table.num_rows
                bar.update(min(args.block, len(users) - bar.n))

    atomic_write(out, stream)  # a mkstemp name beside --out, not a guessable one a planted link could catch
    return rows[0]


def main(argv: list[str] | None = None, options: dict | None = None) -> int:
    """``options`` pass to ``ServingIndex.recommend`` for every user (as the view passes a request's)."""
    args = parse_args(argv)
    options = dict(options or {})
    bad = [entry for entry in args.filter if ":" not in entry or entry.startswith(":")]
    if bad:
        print(f"error: --filter {bad[0]!r}: expected attribute:value, e.g. genres:Comedy", file=sys.stderr)
        return 2
    if args.filter:
        options["filters"] = parse_filters(args.filter)
    started = time.perf_counter()
    try:
        rec = load(args)
        if "filters" in options:  # refused up front, as the view refuses it (422), before anything is written
            keep = rec.index.attributes.compile(options["filters"])  # None: no condition at all
            if keep is not None and keep.count() == 0:
                print(f"warning: no item matches --filter {' --filter '.join(args.filter)}: every list will be "
                      "empty (values are compared exactly, case included)", file=sys.stderr)  # fmt: skip
        loaded = time.perf_counter() - started
        users, skipped = (rec.user_ids, 0) if args.users is None else read_users(
            args.users, rec.index.user_index, args.skip_unknown
        )  # fmt: skip
    except (BatchError, CheckpointError, ConfigError, UnknownAttribute, BadFilterValue) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if skipped:
        print(f"skipped {skipped} unknown users of {args.users}", file=sys.stderr)
    try:
        rows = write(rec, users, args, options)
    except OSError as exc:  # disk full, permissions: the temporary file is gone, --out untouched
        print(f"error: writing {args.out}: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    print(
        f"wrote {rows} rows for {len(users)} users (k={args.k}) to {args.out} in {total:.1f}s "
        f"(load and rank {loaded:.1f}s, answer and write {total - loaded:.1f}s; model {rec.model_version})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
