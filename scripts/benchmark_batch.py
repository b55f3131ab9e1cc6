"""``scripts/recommend_batch.py`` timed on MovieLens 100k and on the 20M synthetic model (issue 14): writes the
batch sections of docs/benchmarks.md (one per part, each replaced only by a run of that part).

    .venv/bin/python scripts/benchmark_batch.py                    # both parts
    .venv/bin/python scripts/benchmark_batch.py --only scale       # just the 20M model (about 1-2 minutes)

- ``ml100k``: the default ``scripts/train.py`` on ``--ml100k DIR``'s ``u.data`` (all 100,000 ratings), cached in
  ``--workdir`` (``--retrain`` trains again), then ``recommend_batch.py --k 10`` to Parquet and to CSV.
- ``scale``: ``recommend_batch.py --k 10`` on ``--scale-checkpoint`` (default
  ``artifacts/benchmark_scale/scale.ckpt``, which ``scripts/benchmark_scale.py`` trains on 20M MovieLens-shaped
  rows and caches; run that first), to Parquet (``--scale-formats parquet,csv`` adds CSV).

Each batch run is a child process: wall seconds (process start to exit, imports included), its CPU seconds
(user + system: how much of the machine it used, less sensitive to other load than wall time), peak RSS, and
the script's own split (load and rank / answer and write); the row count is checked against users x k. The
load average before and after each part is recorded: timings on a busy host are marked by ``--note``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _bench import machine, run_child, write_section  # noqa: E402

TITLES = {"ml100k": "MovieLens 100k", "scale": "the 20M synthetic model"}
TARGETS = {"ml100k": 10.0, "scale": 120.0}  # wall seconds of the batch command (issue 14: "in seconds", <= 2 min)
SPLIT = re.compile(r"wrote (\d+) rows for (\d+) users .* in ([\d.]+)s \(load and rank ([\d.]+)s, answer and write")


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def batch(name: str, ckpt: Path, out: Path, workdir: Path) -> dict:
    """One timed ``recommend_batch.py --k 10`` run; raises if it fails or writes the wrong number of rows."""
    cmd = [sys.executable, str(REPO / "scripts" / "recommend_batch.py"), "--checkpoint", str(ckpt)]
    cmd += ["--out", str(out), "--k", "10", "--quiet"]
    run = run_child(cmd, workdir / f"{name}.log")
    found = SPLIT.search(run["output"])
    if run["code"] != 0 or not found:
        raise SystemExit(f"{shlex.join(cmd)} failed ({run['code']}):\n{run['output'][-2000:]}")
    rows, users = int(found[1]), int(found[2])
    if rows != 10 * users:
        raise SystemExit(f"{out}: {rows} rows for {users} users, expected {10 * users}")
    out.unlink()
    return {
        "name": name, "command": shlex.join(cmd[1:]).replace(str(REPO) + "/", ""), "users": users, "rows": rows,
        "wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "rss_gb": run["peak_rss_gb"],
        "script_s": float(found[3]), "rank_s": float(found[4]),
    }  # fmt: skip


def ml100k(args: argparse.Namespace) -> list[dict]:
    ckpt = args.workdir / "ml100k.ckpt"
    if args.retrain or not ckpt.exists():
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(args.ml100k / "u.data")]
        run = run_child([*cmd, "--out", str(ckpt), "--quiet"], args.workdir / "ml100k-train.log")
        if run["code"] != 0:
            raise SystemExit(f"training on {args.ml100k} failed:\n{run['output'][-2000:]}")
    return [batch(f"ml100k-{fmt}", ckpt, args.workdir / f"ml100k.{fmt}", args.workdir) for fmt in ("parquet", "csv")]


def scale(args: argparse.Namespace) -> list[dict]:
    if not args.scale_checkpoint.exists():
        raise SystemExit(f"{args.scale_checkpoint} not found: run scripts/benchmark_scale.py first (it trains it)")
    formats = args.scale_formats.split(",")
    return [batch(f"scale-{f}", args.scale_checkpoint, args.workdir / f"scale.{f}", args.workdir) for f in formats]


def section(part: str, runs: list[dict], meta: dict) -> str:
    note = meta["note"]
    lines = [
        f"<!-- batch-{part}:begin -->",
        f"## Batch recommendations for every user: {TITLES[part]} (`scripts/recommend_batch.py`)",
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}; load average {meta['loads']}",
        f"- command: `python scripts/benchmark_batch.py {meta['argv']}`" + (f"; **{note}**" * bool(note)),
        "- each row: one `recommend_batch.py` child process (imports, checkpoint load, every user's top-100 list "
        "ranked in blocks with every core, each user's `ServingIndex.recommend`, the file written); CPU s = its "
        "user + system time.",
        "",
        "| run | command | users | rows | wall s | CPU s | load and rank s | peak RSS GB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r['name']} | `{r['command']}` | {r['users']:,} | {r['rows']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {r['rank_s']:.1f} | {r['rss_gb']:.2f} |"
        )
    lines += ["", "Targets (issue 14; wall seconds of the batch command):", ""]
    for r in runs:
        target = TARGETS[part]
        verdict = "met" if r["wall_s"] <= target else "NOT met"
        lines.append(f"- {r['name']}: {r['wall_s']:.1f} s (target <= {target:.0f} s): {verdict}")
    lines += ["", f"<!-- batch-{part}:end -->"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["ml100k", "scale"], help="run one part (default: both)")
    p.add_argument(
        "--ml100k",
        type=Path,
        default=REPO / ".." / "shared" / "datasets" / "ml-100k",
        help="MovieLens 100k dir (default: ../shared/datasets/ml-100k beside the repo)",
    )
    p.add_argument("--retrain", action="store_true", help="train the ML-100k model again even if cached")
    p.add_argument("--scale-checkpoint", type=Path, default=REPO / "artifacts" / "benchmark_scale" / "scale.ckpt")
    p.add_argument("--scale-formats", default="parquet", help="comma-separated: parquet, csv (default: parquet)")
    p.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "benchmark_batch")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--note", default="", help="e.g. 'under load (other jobs running)': printed beside the command")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for part, run in (("ml100k", ml100k), ("scale", scale)):
        if args.only not in (None, part):
            continue
        before = load_average()
        runs = run(args)
        meta = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "loads": f"(1/5/15 min) {before} at start, {load_average()} at end",
            "argv": shlex.join(argv if argv is not None else sys.argv[1:]),
            "note": args.note,
        }
        text = section(part, runs, meta)
        print(text)
        write_section(args.output, text, f"batch-{part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
