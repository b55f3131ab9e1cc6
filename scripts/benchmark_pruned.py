"""What the exact pruned top-k (service/pruned.py) does for one checkpoint: how much it reads, whether it answers
what the full scan answers, and its time per query, in-process against the full scan on the same queries.

    python scripts/train.py --model vae --data ../shared/datasets/ml-100k/u.data --out vae.ckpt
    python scripts/benchmark_pruned.py --checkpoint vae.ckpt --output docs/benchmarks.md

The queries are the checkpoint's known users (their seen items excluded, as ``GET /recommend`` without its
precomputed lists) and fold-ins of those users' histories (``POST /recommend``). The pruned scan is built
whatever the catalogue's size (``RECSYS_PRUNE_MIN_ITEMS`` only decides when the service builds it), so a small
real catalogue such as MovieLens 100k's shows how a trained model's vectors prune. Timings are one thread.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _bench import machine, write_section  # noqa: E402

from model import checkpoint  # noqa: E402
from model.topk import top_k  # noqa: E402
from service import pruned  # noqa: E402
from service.index import ServingIndex  # noqa: E402


def per_query_us(run, queries: list, repeats: int = 3) -> float:
    """Best of ``repeats`` passes over every query, microseconds per query."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for query in queries:
            run(*query)
        best = min(best, time.perf_counter() - started)
    return best / len(queries) * 1e6


def full_scan(index: ServingIndex, query: np.ndarray, k: int, banned: np.ndarray) -> np.ndarray:
    """What the service does without the pruned scan: every item scored, banned ones masked, ``top_k``."""
    scores = index.item_vectors @ query
    scores[banned] = -np.inf
    return top_k(scores, k)


def measure(index: ServingIndex, users: np.ndarray, k: int) -> dict[str, float] | None:
    """For known users and for fold-ins of their histories: candidates, fallbacks, agreement, time per query."""
    scan = pruned.build(index.item_vectors, pruned.sample_queries(index), k)
    if scan is None:
        return None
    out: dict[str, float] = {"lead": scan.lead_dims, "dim": index.dim, "items": index.num_items}
    for name, make in (("known", lambda u: index.user_vectors[u]), ("fold_in", lambda u: index.fold_in(index.seen(u)))):
        queries = [(np.asarray(make(u), np.float32), k, index.seen(u)) for u in users]
        found = [scan.search_counted(*q) for q in queries]
        pruned_found = [(q, f) for q, f in zip(queries, found) if f is not None]
        agree = sum(np.array_equal(f[0], full_scan(index, *q)) for q, f in pruned_found)
        out[f"{name}_pruned_share"] = len(pruned_found) / len(found)
        out[f"{name}_candidates"] = float(np.median([f[2] for _, f in pruned_found])) if pruned_found else float("nan")
        out[f"{name}_agree"] = agree / len(pruned_found) if pruned_found else float("nan")
        out[f"{name}_full_us"] = per_query_us(lambda q, kk, b: full_scan(index, q, kk, b), queries)
        out[f"{name}_pruned_us"] = per_query_us(
            lambda q, kk, b: scan.search(q, kk, b) or full_scan(index, q, kk, b), queries
        )
    return out


def render(
    path: str, result: dict[str, float] | None, k: int, command: str, tag: str = "pruned", note: str = ""
) -> str:
    lines = [
        f"<!-- {tag}:begin -->",
        f"## Exact pruned top-k on `{Path(path).name}`: what its vectors allow (`scripts/benchmark_pruned.py`)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}",
        f"- command: `{command}`; checkpoint `{Path(path).name}`; k = {k}; one thread, in-process (no HTTP)",
        "- queries: every known user (seen items excluded) and a fold-in of each one's history; pruned share: "
        "the queries the bound narrowed (the rest are scanned); candidates: items scored exactly (median); agree: "
        "of the narrowed queries, the answers identical to the full scan's (items and order); times: best of 3 "
        "passes, the full scan being the service's (every item scored, `model.topk.top_k`), the pruned one "
        "including its fallbacks to it.",
        "",
    ]
    if result is None:
        lines.append("- the pruned scan would not pay for this checkpoint's vectors: the service keeps the full scan.")
    else:
        lines += [
            f"- {result['items']:,.0f} items, {result['lead']:.0f} of {result['dim']:.0f} dimensions lead.",
            "",
            "| queries | pruned share | candidates | agree | full scan us | pruned us | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("known", "fold_in"):
            full, fast = result[f"{name}_full_us"], result[f"{name}_pruned_us"]
            lines.append(
                f"| {name} | {result[f'{name}_pruned_share']:.3f} | {result[f'{name}_candidates']:.0f} | "
                f"{result[f'{name}_agree']:.3f} | {full:.0f} | {fast:.0f} | {full / fast:.2f}x |"
            )
    lines += [*([f"- {note}"] if note else []), "", f"<!-- {tag}:end -->"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--users", type=int, default=0, help="at most this many known users (0 = all)")
    p.add_argument("--output", help="a markdown file whose --section is (re)written")
    p.add_argument("--section", default="pruned", help="the tagged section of --output (default pruned)")
    p.add_argument("--note", default="", help="a line under the table (e.g. how the checkpoint was made)")
    args = p.parse_args()
    index = ServingIndex(checkpoint.load(args.checkpoint), prune_min_items=0)
    users = np.arange(index.user_vectors.shape[0])
    if args.users:
        users = users[np.linspace(0, len(users) - 1, min(args.users, len(users))).astype(int)]
    result = measure(index, users, args.k)
    command = "python scripts/benchmark_pruned.py " + shlex.join(sys.argv[1:])
    section = render(args.checkpoint, result, args.k, command, args.section, args.note)
    if args.output:
        write_section(Path(args.output), section, args.section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
