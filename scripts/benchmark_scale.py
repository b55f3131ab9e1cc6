"""Training and serving at MovieLens-20M scale, end to end (issue 10): writes the scale section of docs/benchmarks.md.

    .venv/bin/python scripts/benchmark_scale.py --busy-check        # the full run: 20M rows, 10-20 minutes
    .venv/bin/python scripts/benchmark_scale.py --users 2000 --items 3000 --ratings 200000 --output /tmp/b.md

1. Data: ``model.synthetic.movielens_like`` at ML-20M's sizes (``--users/--items/--ratings/--seed`` for
   smaller runs), written with ``write_ratings`` as ``<stem>.train.csv`` and ``<stem>.test.csv`` in
   ``--workdir``, and reused on the next run when ``<stem>.json`` records the same shape and holdout. The
   test file is a deterministic random 2% of the rows: the first ``round(0.02 n)`` of a permutation drawn
   by ``numpy.random.default_rng([seed, 2])``; the training file is the rest, in the generated order.
2. The default ``scripts/train.py --data TRAIN --out CKPT --quiet`` in a child process: wall time (process
   start to exit), the child's peak RSS (``wait4``'s ``ru_maxrss``), training rows per second, and the
   stages train.py prints: read (of which id maps), rating model, ranking head, the rest of fit (the
   validation split), save, and process start-up (interpreter and imports: wall minus train.py's total).
3. Held-out RMSE on the test file: the checkpoint through ``ServingIndex.predict`` (``rating_metrics`` of
   ``scripts/evaluate.py``: what ``/predict`` answers, unknown ids on the baseline fallback), and a
   bias-only baseline ``mu + b_u + b_i`` fitted in closed form with numpy on the training file (alternating
   ridge passes with Surprise's ``BaselineOnly`` defaults: reg_u 15, reg_i 10, 10 passes).
4. implicit's ALS (64 factors, 15 iterations, ``num_threads`` = cores, BLAS limited to one thread as
   implicit recommends) on the same training file in its own child process: read and fit seconds, peak RSS.
   ``--skip-peers`` leaves it out; without implicit (the ``[bench]`` extra) the row says so.
5. The checkpoint under the real uWSGI with the real uwsgi.ini on a free loopback port: ready time (start
   to the first ``/readyz`` 200, and until every worker has loaded the app), VmRSS and PSS of each worker,
   and wrk (1 thread, ``--connections``, ``--wrk-seconds``; 2 s warm-up each) on ``/healthz`` and on
   ``/recommend`` for random known users, with the ratio of their req/s. ``--skip-serving`` leaves it out.
6. ``--busy-check``: an ML-100k fold (``--ml100k DIR``, ``u1.base``; without it, a deterministic 80% of
   ``u.data``) trained with the default three times: on its own, while a loop of second ``scripts/train.py``
   runs on the same file keeps both cores busy, and busy again with ``OMP_WAIT_POLICY=ACTIVE`` in the
   measured run's environment (what the package's default PASSIVE avoids; stopped after ``--busy-timeout``).

``--train-flags`` passes extra flags to every ``scripts/train.py`` run (default: none, the default model; the
smoke test uses it to train a few epochs). Targets are the issue's, stated for the 20M file on this 2-core
machine; a smaller run prints the same verdict lines, marked as not at the target size.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _bench import Server, machine, process_memory_mib, run_child, run_wrk, write_section  # noqa: E402

from model import checkpoint  # noqa: E402
from model.data import load_ratings  # noqa: E402
from model.interactions import build_dataset  # noqa: E402
from model.synthetic import MovieLensShape, movielens_like, write_ratings  # noqa: E402
from service.topn import TopNConfig  # noqa: E402

HOLDOUT = 0.02
CORES = os.cpu_count() or 1
FULL = MovieLensShape()
TARGETS = {  # the "done when", for the 20M file on this 2-core machine
    "wall_s": 600.0,
    "peak_rss_gb": 4.0,
    "rmse_ratio": 0.9,
    "ready_s": 120.0,
    "read_s": 15.0,
    "busy_ratio": 3.0,
}

IMPLICIT_CHILD = """
import json, sys, time
started = time.perf_counter()
try:
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits
except ImportError as exc:
    print(json.dumps({"error": f"implicit not importable ({exc}); pip install -e '.[bench]'"}))
    sys.exit(0)
from model.data import load_ratings
from model.interactions import build_dataset
inter = build_dataset(load_ratings(sys.argv[1])).interactions
matrix = sp.csr_matrix((inter.ratings.astype("float32"), (inter.user_idx, inter.item_idx)),
                       shape=(inter.num_users, inter.num_items))
read = time.perf_counter() - started
model = AlternatingLeastSquares(factors=64, iterations=15, num_threads=int(sys.argv[2]), random_state=0)
with threadpool_limits(1, "blas"):
    started = time.perf_counter()
    model.fit(matrix, show_progress=False)
print(json.dumps({"read_s": read, "fit_s": time.perf_counter() - started}))
"""


# ---------------------------------------------------------------------------------------------- data
def prepare_data(shape: MovieLensShape, workdir: Path) -> dict:
    """The training and test files of ``shape`` in ``workdir``, generated unless a previous run left them."""
    stem = f"ml20m-like-u{shape.num_users}-i{shape.num_items}-r{shape.num_ratings}-s{shape.seed}"
    train, test, meta = (workdir / f"{stem}{suffix}" for suffix in (".train.csv", ".test.csv", ".json"))
    want = {"shape": dataclasses.asdict(shape), "holdout": HOLDOUT, "holdout_rng": [shape.seed, 2]}
    out = {"train": train, "test": test}
    if train.exists() and test.exists() and meta.exists() and json.loads(meta.read_text()) == want:
        return {**out, "generated_s": None}
    workdir.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)  # written last: a run that dies half-way leaves nothing to reuse
    started = time.perf_counter()
    data = movielens_like(shape)
    held = holdout_mask(len(data.ratings), shape.seed)
    write_ratings(rows_of(data, ~held), train)
    write_ratings(rows_of(data, held), test)
    meta.write_text(json.dumps(want))
    return {**out, "generated_s": time.perf_counter() - started}


def holdout_mask(n: int, seed: int) -> np.ndarray:
    """Boolean (n,): exactly ``round(HOLDOUT * n)`` rows, the first of a ``default_rng([seed, 2])`` permutation."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 2]).permutation(n)[: round(HOLDOUT * n)]] = True
    return mask


def rows_of(data, mask: np.ndarray):
    """``data`` (ScaledRatings) with only the rows of ``mask``; the planted model is shared."""
    return dataclasses.replace(
        data,
        user_idx=data.user_idx[mask],
        item_idx=data.item_idx[mask],
        ratings=data.ratings[mask],
        timestamps=data.timestamps[mask],
    )


# ---------------------------------------------------------------------------------------------- children
def train_cmd(data: Path, out: Path, flags: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        *shlex.split(flags),
    ]


def parse_train(output: str) -> dict[str, float]:
    """The figures ``scripts/train.py`` prints (NaN for one it did not print)."""
    patterns = {
        "rows": r"data: .*?: (\d+) ratings",
        "users": r"ratings, (\d+) users",
        "items": r"users, (\d+) items",
        "read_s": r"read in ([\d.]+)s",
        "id_maps_s": r"of which id maps ([\d.]+)s",
        "fit_s": r"epochs \(best \d+\) in ([\d.]+)s",
        "rating_s": r"rating model ([\d.]+)s",
        "rank_s": r"ranking head ([\d.]+)s\)",
        "save_s": r"\) in ([\d.]+)s, curves",
        "total_s": r"total ([\d.]+)s, peak RSS",
    }
    found = {key: re.search(pattern, output) for key, pattern in patterns.items()}
    return {key: float(m.group(1)) if m else math.nan for key, m in found.items()}


def train_default(train: Path, ckpt: Path, flags: str, workdir: Path) -> dict:
    run = run_child(train_cmd(train, ckpt, flags), workdir / "train.log")
    if run["code"] != 0:
        raise RuntimeError(f"scripts/train.py exited with {run['code']}:\n{run['output'][-3000:]}")
    figures = parse_train(run["output"])
    rest = figures["fit_s"] - figures["rating_s"] - np.nan_to_num(figures["rank_s"])
    return {
        **run,
        **figures,
        "fit_other_s": rest,
        "startup_s": run["wall_s"] - figures["total_s"],
        "rows_per_s": figures["rows"] / run["wall_s"],
    }


def implicit_als(train: Path, workdir: Path) -> dict:
    """implicit's ALS in its own process, so its peak RSS is its own."""
    env = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = run_child([sys.executable, "-c", IMPLICIT_CHILD, str(train), str(CORES)], workdir / "implicit.log", env)
    last = run["output"].strip().splitlines()[-1:] or [""]
    try:
        figures = json.loads(last[0])
    except json.JSONDecodeError:
        figures = {"error": f"failed (exit {run['code']}): {last[0][:200]}"}
    return {**run, **figures}


# ---------------------------------------------------------------------------------------------- quality
def rmse_of_checkpoint(ckpt_path: Path, test: Path) -> dict:
    """What ``/predict`` answers for every test row, through ``scripts/evaluate.py``'s ``rating_metrics``."""
    spec = importlib.util.spec_from_file_location("recsys_evaluate_cli", REPO / "scripts" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    from service.index import ServingIndex

    return evaluate.rating_metrics(ServingIndex(checkpoint.load(ckpt_path)), load_ratings(test))


def bias_baseline(train: Path, test: Path, reg_user: float = 15.0, reg_item: float = 10.0, passes: int = 10) -> dict:
    """``mu + b_u + b_i`` by alternating closed-form ridge passes (Surprise's BaselineOnly ALS), numpy only.

    Unknown test ids get a zero bias, as the service's baseline fallback does; predictions are clipped to the
    training ratings' range."""
    started = time.perf_counter()
    dataset = build_dataset(load_ratings(train))
    inter = dataset.interactions
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    users, items, ratings = inter.user_idx, inter.item_idx, inter.ratings.astype(np.float64)
    mu = float(ratings.mean())
    per_user = np.bincount(users, minlength=inter.num_users)
    per_item = np.bincount(items, minlength=inter.num_items)
    b_user, b_item = np.zeros(inter.num_users), np.zeros(inter.num_items)
    for _ in range(passes):
        b_user = np.bincount(users, ratings - mu - b_item[items], inter.num_users) / (per_user + reg_user)
        b_item = np.bincount(items, ratings - mu - b_user[users], inter.num_items) / (per_item + reg_item)
    fit_s = time.perf_counter() - started
    raw = load_ratings(test)
    test_users = dataset.user_map.encode(raw.user_vocab)[raw.user_codes]  # -1 = unknown
    test_items = dataset.item_map.encode(raw.item_vocab)[raw.item_codes]
    pred = mu + np.where(test_users >= 0, b_user[test_users], 0.0) + np.where(test_items >= 0, b_item[test_items], 0.0)
    pred = np.clip(pred, ratings.min(), ratings.max())
    err = pred - raw.ratings
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "read_s": read_s,
        "fit_s": fit_s,
    }


# ---------------------------------------------------------------------------------------------- serving
def serve(ckpt: Path, num_users: int, num_items: int, args, workdir: Path) -> dict:
    """Ready time, memory per worker and wrk figures of the checkpoint under the real uWSGI."""
    log = workdir / "uwsgi.log"
    started = time.monotonic()
    server = Server(ckpt, log, {}, ready_timeout=args.ready_timeout)
    # What the service does at load with its defaults: score every user against every item for the lists
    # when users x items fits RECSYS_TOPN_MAX_CELLS, else it ranks per request.
    out: dict = {
        "ready_s": server.ready_s,
        "routes": {},
        "topn_lists": TopNConfig().wants(num_users, num_items),
        "cells": num_users * num_items,
    }
    try:
        out["all_ready_s"] = all_workers_ready(server, log, started, args.ready_timeout)
        scripts = {
            "healthz": 'request = function() return wrk.format("GET", "/healthz") end',
            "recommend": 'request = function() return wrk.format("GET", "/recommend?user_id=" .. '
            f'math.random(1, {num_users}) .. "&k=10") end',
        }
        if shutil.which("wrk") is None:
            out["wrk_error"] = "wrk not found (Debian: apt-get install wrk)"
        else:
            for route, script in scripts.items():
                run_wrk(server.port, script, 2, args.connections, workdir)  # warm-up
                out["routes"][route] = run_wrk(server.port, script, args.wrk_seconds, args.connections, workdir)
        out["workers"] = {pid: process_memory_mib(pid) for pid in server.workers()}
    finally:
        server.stop()
    return out


def all_workers_ready(server: Server, log: Path, started: float, timeout: float) -> float:
    """Seconds from the start until every worker has logged its app ready (lazy-apps: each loads the model)."""
    while time.monotonic() < started + timeout:
        workers = len(server.workers())
        if workers and log.read_text(errors="replace").count("WSGI app 0 (mountpoint='') ready") >= workers:
            return time.monotonic() - started
        time.sleep(0.2)
    return math.nan


# ---------------------------------------------------------------------------------------------- busy host
def ml100k_fold(folder: Path, workdir: Path) -> tuple[Path, str]:
    """``folder/u1.base``, or a deterministic 80% of ``folder/u.data`` written to ``workdir`` when the official
    folds are not there."""
    if (folder / "u1.base").exists():
        return folder / "u1.base", str(folder / "u1.base")
    lines = (folder / "u.data").read_text().splitlines()
    keep = np.random.default_rng(0).permutation(len(lines))[: round(0.8 * len(lines))]
    fold = workdir / "u1-like.base"
    fold.write_text("".join(lines[i] + "\n" for i in np.sort(keep)))
    return fold, f"80% of {folder / 'u.data'} (no u1.base there; rows by default_rng(0))"


def busy_check(fold: Path, flags: str, timeout: float, workdir: Path) -> dict:
    """The fold trained alone, then next to a loop of competing train.py runs (PASSIVE, then ACTIVE)."""
    out = {}
    for name, env, competing in (
        ("quiet", {}, False),
        ("busy", {}, True),
        ("busy_active", {"OMP_WAIT_POLICY": "ACTIVE"}, True),
    ):
        competitor = None
        if competing:
            loop = f"while true; do {shlex.join(train_cmd(fold, workdir / 'competitor.ckpt', flags))}; done"
            competitor = subprocess.Popen(
                ["bash", "-c", loop],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(3)  # let it get past imports and into training
        try:
            cmd = train_cmd(fold, workdir / f"{name}.ckpt", flags)
            run = run_child(cmd, workdir / f"{name}.log", env, timeout=timeout)
        finally:
            if competitor is not None:
                stop_group(competitor)
        out[name] = {**run, **parse_train(run["output"])}
    return out


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGKILL ``proc``'s whole process group until no member is left (a child the loop was starting included)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.05)
    proc.wait()


# ---------------------------------------------------------------------------------------------- report
def check(label: str, got: float, target: float, unit: str, higher_is_worse: bool = True, digits: int = 1) -> str:
    if not math.isfinite(got):
        return f"- {label}: not measured (target <= {target:g}{unit})"
    ok = got <= target if higher_is_worse else got >= target
    verdict = "met" if ok else f"MISSED by {abs(got - target):.{digits}f}{unit}"
    return f"- {label}: {got:.{digits}f}{unit} (target <= {target:g}{unit}): {verdict}"


def verdicts(res: dict) -> list[str]:
    t, out = res["train"], []
    at_size = "" if res["full_size"] else " [this run is not at the 20M target size]"
    out.append(check(f"default train.py wall time, reading included{at_size}", t["wall_s"], TARGETS["wall_s"], " s"))
    out.append(check(f"peak RSS of train.py{at_size}", t["peak_rss_gb"], TARGETS["peak_rss_gb"], " GB", digits=2))
    out.append(check(f"reading, id maps included{at_size}", t["read_s"], TARGETS["read_s"], " s"))
    ratio = res["ours"]["rmse"] / res["baseline"]["rmse"]
    out.append(check("held-out RMSE / bias-only baseline's", ratio, TARGETS["rmse_ratio"], "x", digits=3))
    if "serving" in res:
        out.append(
            check(f"service ready (every worker){at_size}", res["serving"]["all_ready_s"], TARGETS["ready_s"], " s")
        )
    if "busy" in res:
        busy, quiet = res["busy"]["busy"], res["busy"]["quiet"]["total_s"]
        stopped = busy["code"] is None  # then the ratio is at least the timeout's
        ratio = (res["args"].busy_timeout if stopped else busy["total_s"]) / quiet
        label = "ML-100k fold on a busy host / quiet (train.py total)" + (", at least" if stopped else "")
        out.append(check(label, ratio, TARGETS["busy_ratio"], "x", digits=2))
    return out


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float | int) and math.isfinite(value) else "n/a"


def render(res: dict, args, command: str) -> str:
    data, t = res["data"], res["train"]
    gen_s = data["generated_s"]
    generated = "reused from a previous run" if gen_s is None else f"generated in {gen_s:.0f} s"
    flags = f" {args.train_flags}" if args.train_flags else ""
    lines = [
        "<!-- scale:begin -->",
        "## Training and serving at MovieLens-20M scale (synthetic)",
        "",
        f"- date: {res['date']}; machine: {machine()}; load average before the run: {res['load_start']}",
        f"- command: `{command}`",
        f"- data: `model.synthetic.movielens_like` with {args.users:,} users, {args.items:,} items, "
        f"{args.ratings:,} ratings, seed {args.seed} ({generated}); a deterministic random {HOLDOUT:.0%} of the rows "
        f"held out as the test file ({res['test_rows']:,} rows), the rest ({fmt(t['rows'], 0)} rows) trains.",
        f"- trained: `scripts/train.py --data TRAIN --out CKPT --quiet{flags}`"
        f" in a child process; peak RSS is its `ru_maxrss`.",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    stages = (
        ("read (pyarrow + id maps)", "read_s"),
        ("of which id maps", "id_maps_s"),
        ("rating model", "rating_s"),
        ("ranking head", "rank_s"),
        ("rest of fit (validation split)", "fit_other_s"),
        ("save (checkpoint + curves)", "save_s"),
        ("process start-up (interpreter, imports)", "startup_s"),
        ("**wall, process start to exit**", "wall_s"),
    )
    lines += [f"| {label} | {fmt(t[key])} |" for label, key in stages]
    lines += [
        "",
        f"Peak RSS {t['peak_rss_gb']:.2f} GB; {fmt(t['rows_per_s'], 0)} training rows per second of wall time.",
        "",
        "| model | held-out RMSE | MAE | fit s | peak RSS GB | note |",
        "|---|---:|---:|---:|---:|---|",
        f"| ours (default) | {res['ours']['rmse']:.4f} | {res['ours']['mae']:.4f} | {fmt(t['fit_s'])} "
        f"| {t['peak_rss_gb']:.2f} | through `ServingIndex.predict`; {res['ours']['fallback_rows']} rows "
        "(unknown user or item) on the baseline fallback |",
        f"| bias-only baseline | {res['baseline']['rmse']:.4f} | {res['baseline']['mae']:.4f} "
        f"| {fmt(res['baseline']['fit_s'], 2)} | | `mu + b_u + b_i`, numpy, 10 alternating passes (reg 15/10) |",
    ]
    if "implicit" in res:
        imp = res["implicit"]
        if "error" in imp:
            lines.append(f"| implicit ALS | n/a | n/a | n/a | n/a | {imp['error']} |")
        else:
            lines.append(
                f"| implicit ALS 0.7.3 | n/a | n/a | {imp['fit_s']:.1f} | {imp['peak_rss_gb']:.2f} | 64 factors, "
                f"15 iterations, {CORES} threads; implicit: no rating predictions; read {imp['read_s']:.1f} s |"
            )
    if "serving" in res:
        lines += serving_lines(res["serving"], args)
    if "busy" in res:
        lines += busy_lines(res["busy"], res["busy_fold"], args)
    lines += ["", "Targets (issue 10):", "", *verdicts(res), "", "<!-- scale:end -->"]
    return "\n".join(lines)


def serving_lines(srv: dict, args) -> list[str]:
    lines = [
        "",
        f"Serving (real uWSGI, real uwsgi.ini, {len(srv['workers'])} workers): first `/readyz` 200 after "
        f"{srv['ready_s']:.1f} s, every worker's app loaded after {fmt(srv['all_ready_s'])} s "
        f"({'with' if srv['topn_lists'] else 'without'} precomputed top-N lists: {srv['cells']:,} users x items "
        f"{'<=' if srv['topn_lists'] else '>'} RECSYS_TOPN_MAX_CELLS {TopNConfig().max_cells:,}; without them "
        "`/recommend` scans every item per request).",
        "",
        "| worker | RSS MiB | PSS MiB |",
        "|---|---:|---:|",
        *(f"| {pid} | {m['rss']:.0f} | {m['pss']:.0f} |" for pid, m in srv["workers"].items()),
        "",
    ]
    if "wrk_error" in srv:
        return lines + [f"wrk: not run: {srv['wrk_error']}"]
    health = srv["routes"]["healthz"]["rps"]
    lines += [
        f"wrk: 1 thread, {args.connections} connections, {args.wrk_seconds} s per route after a 2 s warm-up; "
        "failures = non-2xx + connect/write/timeout errors (wrk's read errors are closes after whole responses).",
        "",
        "| route | req/s | vs /healthz | p50 ms | p99 ms | requests | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for route, r in srv["routes"].items():
        fails = int(r["non_2xx"] + r["failed_connections"])
        lines.append(
            f"| {route} | {r['rps']:,.0f} | {r['rps'] / health:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {int(r['requests']):,} | {fails} |"
        )
    return lines


def busy_lines(busy: dict, fold: str, args) -> list[str]:
    quiet = busy["quiet"]["total_s"]
    lines = [
        "",
        f"Busy host: the default on an ML-100k fold ({fold}); competitor: a loop of the same `scripts/train.py` "
        "on the same file, started 3 s before the measured run.",
        "",
        "| run | train.py total s | fit s | process wall s | vs quiet (total) |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "quiet": "quiet",
        "busy": "busy (default OMP_WAIT_POLICY=PASSIVE)",
        "busy_active": "busy, OMP_WAIT_POLICY=ACTIVE in the measured run",
    }
    for name, r in busy.items():
        if r["code"] is None:
            lines.append(
                f"| {labels[name]} | stopped after {args.busy_timeout:.0f} s | | | > {args.busy_timeout / quiet:.1f}x |"
            )
        else:
            lines.append(
                f"| {labels[name]} | {fmt(r['total_s'])} | {fmt(r['fit_s'])} | {r['wall_s']:.1f} "
                f"| {r['total_s'] / quiet:.2f}x |"
            )
    return lines


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=FULL.num_users)
    p.add_argument("--items", type=int, default=FULL.num_items)
    p.add_argument("--ratings", type=int, default=FULL.num_ratings)
    p.add_argument("--seed", type=int, default=FULL.seed)
    p.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "artifacts" / "benchmark_scale",
        help="where the data files (reused between runs), the checkpoint and the logs go",
    )
    p.add_argument("--train-flags", default="", help="extra scripts/train.py flags (default: none)")
    p.add_argument("--skip-peers", action="store_true", help="do not time implicit's ALS")
    p.add_argument("--skip-serving", action="store_true", help="do not serve the checkpoint under uWSGI")
    p.add_argument("--wrk-seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the service")
    p.add_argument("--busy-check", action="store_true", help="train an ML-100k fold quiet and on a busy host")
    p.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k")
    p.add_argument("--busy-timeout", type=float, default=300.0, help="seconds before a busy run is stopped")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    if args.busy_check and not ((args.ml100k / "u1.base").exists() or (args.ml100k / "u.data").exists()):
        p.error(f"--busy-check: neither u1.base nor u.data in {args.ml100k}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res: dict = {
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
    }
    shape = MovieLensShape(num_users=args.users, num_items=args.items, num_ratings=args.ratings, seed=args.seed)
    res["full_size"], res["args"] = shape.num_ratings >= FULL.num_ratings, args
    try:
        res["data"] = data = prepare_data(shape, args.workdir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"data: {data['train']} and {data['test']}" + (" (reused)" if data["generated_s"] is None else ""))
    res["test_rows"] = round(HOLDOUT * shape.num_ratings)
    ckpt = args.workdir / "scale.ckpt"
    res["train"] = train_default(data["train"], ckpt, args.train_flags, args.workdir)
    say(f"trained: {res['train']['wall_s']:.1f} s wall, peak RSS {res['train']['peak_rss_gb']:.2f} GB")
    res["ours"] = rmse_of_checkpoint(ckpt, data["test"])
    res["baseline"] = bias_baseline(data["train"], data["test"])
    say(f"held-out RMSE: ours {res['ours']['rmse']:.4f}, bias-only baseline {res['baseline']['rmse']:.4f}")
    if not args.skip_peers:
        res["implicit"] = implicit_als(data["train"], args.workdir)
        imp = res["implicit"]
        say(f"implicit: {imp['error']}" if "error" in imp else f"implicit: fit {imp['fit_s']:.1f} s")
    if not args.skip_serving:
        users, items = int(res["train"]["users"]), int(res["train"]["items"])
        res["serving"] = serve(ckpt, users, items, args, args.workdir)
        say(f"serving: ready {res['serving']['ready_s']:.1f} s, workers {res['serving']['workers']}")
    if args.busy_check:
        with tempfile.TemporaryDirectory() as tmp:
            fold, res["busy_fold"] = ml100k_fold(args.ml100k, Path(tmp))
            res["busy"] = busy_check(fold, args.train_flags, args.busy_timeout, Path(tmp))
    command = "python scripts/benchmark_scale.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    section = render(res, args, command.strip())
    write_section(args.output, section, "scale")
    print(section)
    return 0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
