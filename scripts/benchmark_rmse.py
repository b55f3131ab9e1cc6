"""RMSE/MAE of our default training command against Surprise's SVD on the MovieLens 100k folds u1..u5.

    python scripts/benchmark_rmse.py [--folds 1,2,3,4,5] [--no-surprise] [--output docs/benchmarks.md]

For each fold, ours is trained exactly as a user would (``scripts/train.py --quiet --data uN.base --out X``,
no tuning flags) in a subprocess whose wall-clock is timed; the checkpoint is then served through
``ServingIndex.predict`` (clipped, baseline fallback for unknown ids) on every row of ``uN.test``. Surprise's
SVD runs with default parameters and ``random_state=0``. The table is printed and written between
``<!-- rmse:begin -->`` and ``<!-- rmse:end -->`` in the output file. Relative paths are taken from the repo root.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model import checkpoint
from model.data import load_ratings
from model.evaluate import mae, rmse
from service.index import ServingIndex

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from _bench import cpu_model, load_avg, markers, write_section  # noqa: E402

BEGIN, END = markers("rmse")
WALL_LIMIT_S = 30.0


@dataclass
class Score:
    rmse: float
    mae: float
    fit_s: float
    wall_s: float = math.nan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/datasets/ml-100k", help="folder with u1.base .. u5.test")
    p.add_argument("--folds", default="1,2,3,4,5", help="comma-separated fold numbers (default: 1,2,3,4,5)")
    p.add_argument("--no-surprise", action="store_true", help="skip Surprise's SVD")
    p.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose rmse section is replaced")
    args = p.parse_args(argv)
    try:
        args.folds = [int(f) for f in args.folds.split(",") if f.strip()]
    except ValueError:
        p.error("--folds must be comma-separated integers, e.g. 1,2,3")
    if not args.folds or any(not 1 <= f <= 5 for f in args.folds):
        p.error("--folds must name folds between 1 and 5")
    args.data_dir, args.output = REPO / args.data_dir, REPO / args.output
    return args


def errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) in float64."""
    truth = np.asarray(truth, dtype=np.float64)
    return rmse(pred, truth), mae(pred, truth)


def run_ours(base: Path, test: Path, workdir: Path) -> Score:
    """Train with the default CLI in a subprocess, then predict the test file through the serving path."""
    ckpt_path = workdir / f"{base.stem}.ckpt"
    cmd = [sys.executable, "scripts/train.py", "--quiet", "--data", str(base), "--out", str(ckpt_path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr or proc.stdout}")
    ckpt = checkpoint.load(ckpt_path)
    raw = load_ratings(test, "ml-100k")
    pred = ServingIndex(ckpt).predict(raw.user_ids.tolist(), raw.item_ids.tolist()).ratings
    rmse, mae = errors(np.array(pred), raw.ratings)
    return Score(rmse, mae, float(ckpt.metrics["fit_seconds"]), wall)


def run_surprise(base: Path, test: Path) -> Score:
    """Surprise's SVD with default parameters (random_state=0) on the same files."""
    from surprise import SVD, Dataset, Reader, accuracy
    from surprise.model_selection import PredefinedKFold

    reader = Reader(line_format="user item rating timestamp", sep="\t")
    data = Dataset.load_from_folds([(str(base), str(test))], reader=reader)
    trainset, testset = next(PredefinedKFold().split(data))
    algo = SVD(random_state=0)
    started = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - started
    predictions = algo.test(testset)
    return Score(accuracy.rmse(predictions, verbose=False), accuracy.mae(predictions, verbose=False), fit_s)


def machine_line(load_start: str) -> str:
    return (
        f"{platform.platform()}; CPU {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"torch.get_num_threads()={torch.get_num_threads()}; load average (1/5/15 min) {load_start} at start, "
        f"{load_avg()} at end"
    )


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def table(rows: list[tuple[str, Score, Score | None]]) -> list[str]:
    """Markdown table lines, one per fold plus the mean row."""
    head = "| fold | ours RMSE | ours MAE | ours fit s (pure) | ours wall s | SVD RMSE | SVD MAE | SVD fit s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, ours, svd in rows:
        svd_cells = [fmt(svd.rmse), fmt(svd.mae), fmt(svd.fit_s, 1)] if svd else ["n/a"] * 3
        cells = [name, fmt(ours.rmse), fmt(ours.mae), fmt(ours.fit_s, 1), fmt(ours.wall_s, 1), *svd_cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def mean_score(scores: list[Score]) -> Score:
    return Score(*(float(np.mean([getattr(s, k) for s in scores])) for k in ("rmse", "mae", "fit_s", "wall_s")))


def verdict(ours: list[Score], svd: list[Score] | None) -> str:
    mean_ours = mean_score(ours)
    if svd:
        mean_svd = mean_score(svd).rmse
        beats = "beats" if mean_ours.rmse < mean_svd else "does NOT beat"
        head = f"Ours {beats} Surprise SVD on mean RMSE ({mean_ours.rmse:.4f} vs {mean_svd:.4f})"
    else:
        head = f"Ours mean RMSE {mean_ours.rmse:.4f} (Surprise not run)"
    worst = max(s.wall_s for s in ours)
    under = "yes" if worst < WALL_LIMIT_S else "no"
    return f"{head}; every fold's wall time under {WALL_LIMIT_S:.0f} s: {under} (max {worst:.1f} s)."


def render(folds: list[int], ours: list[Score], svd: list[Score] | None, command: str, load_start: str) -> str:
    rows = [(f"u{f}", o, s) for f, o, s in zip(folds, ours, svd or [None] * len(ours))]
    rows.append((f"mean of {len(folds)}", mean_score(ours), mean_score(svd) if svd else None))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            BEGIN,
            "## RMSE on MovieLens 100k (official folds)",
            "",
            f"- Date: {date}",
            f"- Machine: {machine_line(load_start)}",
            f"- Reproduce (from the repo root): `{command}`",
            "- Ours: `scripts/train.py --quiet --data uN.base` (defaults), predicted through `ServingIndex.predict`."
            " Wall s = fit time incl. process start and data loading; fit s (pure) = checkpoint `fit_seconds`.",
            "- SVD: Surprise `SVD(random_state=0)`, default parameters; fit s = `algo.fit` only.",
            "",
            *table(rows),
            "",
            verdict(ours, svd),
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_rmse.py", *(sys.argv[1:] if argv is None else argv)])
    ours: list[Score] = []
    load_start = load_avg()
    svd: list[Score] | None = None if args.no_surprise else []
    with tempfile.TemporaryDirectory(prefix="bench-rmse-") as tmp:
        for fold in args.folds:
            base, test = args.data_dir / f"u{fold}.base", args.data_dir / f"u{fold}.test"
            ours.append(run_ours(base, test, Path(tmp)))
            if svd is not None:
                svd.append(run_surprise(base, test))
            print(f"u{fold} done", file=sys.stderr)
    section = render(args.folds, ours, svd, command, load_start)
    print(section)
    write_section(args.output, section, "rmse")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
