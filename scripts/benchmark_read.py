"""Time ``load_ratings`` + ``build_dataset`` on one file, and its peak RSS, each reader in a fresh process.

    python scripts/make_synthetic.py --out /tmp/ratings.csv      # 20M rows shaped like MovieLens 20M
    python scripts/benchmark_read.py /tmp/ratings.csv
    # the same against another commit's reader, e.g. main before the columnar reader:
    mkdir /tmp/before && git archive main model | tar -x -C /tmp/before
    python scripts/benchmark_read.py /tmp/ratings.csv --before /tmp/before

Readers: ``columnar`` (the default path: pyarrow first), ``lines`` (the line-by-line fallback alone),
``before`` (``load_ratings`` + ``build_dataset`` imported from the tree given to ``--before``).
Peak RSS is the child's ``ru_maxrss``, so each figure includes the interpreter and numpy (about 0.1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import json, resource, sys, time
from model.data import load_ratings
from model.interactions import build_dataset
kwargs = {"fast": False} if sys.argv[2] == "lines" else {}
start = time.perf_counter()
raw = load_ratings(sys.argv[1], **kwargs)
read = time.perf_counter() - start
dataset = build_dataset(raw)
total = time.perf_counter() - start
inter = dataset.interactions
import model.data
print(json.dumps({"module": model.data.__file__, "rows": len(inter), "users": inter.num_users,
                  "items": inter.num_items, "read_s": read,
                  "build_s": total - read, "total_s": total,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def measure(path: Path, reader: str, tree: Path) -> dict:
    """Run one reader in a child process in ``tree`` (so its ``model`` package is the one imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path.resolve()), reader], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return {"reader": reader, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--readers", nargs="+", default=["columnar", "lines"], choices=["columnar", "lines", "before"])
    p.add_argument("--before", type=Path, help="a tree holding an older model/ package (for --readers before)")
    args = p.parse_args(argv)
    readers = args.readers + (["before"] if args.before and "before" not in args.readers else [])
    if "before" in readers and not args.before:
        p.error("--readers before needs --before TREE")
    print(f"{args.data}: {args.data.stat().st_size / 1e6:.0f} MB")
    for reader in readers:
        r = measure(args.data, reader, args.before if reader == "before" else REPO)
        print(
            f"{r['reader']:>9}: {r['rows']} rows ({r['users']} users, {r['items']} items)  read {r['read_s']:.1f} s"
            f" + id maps {r['build_s']:.1f} s = {r['total_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB"
            f"  ({r['module']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
