"""Next-item quality on MovieLens 100k: our sequence models against RecBole's, popularity and our best
non-sequential model, in the same run, on the same split, scored by the same code.

    python scripts/benchmark_sequence.py [--seeds 0,1,2] [--models sasrec,gru4rec,caser] [--epochs N]
        [--trials N] [--peers popularity,mf,recbole] [--recbole-models SASRec,GRU4Rec,Caser]
        [--recbole-epochs N] [--skip-peers] [--jobs N] [--results DIR] [--fresh] [--render-only]
        [--data-dir ../shared/datasets/ml-100k] [--output docs/benchmarks.md]

Protocol (issue 11): leave-last-out by time (``model.sequence_data.last_out``: each user's newest row is the
test item, ties in time broken by file order; the newest training row is the validation item), full
ranking over the catalogue with the user's earlier items excluded, HR@10 and nDCG@10 from
``model.metrics.evaluate_ranking`` for every system.

- Ours (``--models``): trained by ``model.train.fit`` (early stopping on the validation item, then refit on
  every training row), saved, loaded and ranked through ``ServingIndex.score_users``: what is measured is
  what ``GET /recommend`` serves (each user's stored recent items). ``--epochs`` caps the epochs.
- ``mf``: our best non-sequential ranker, the default ``scripts/train.py`` model (its implicit-ALS head).
- ``popularity``: training counts.
- ``recbole``: RecBole 1.2.1 (``--recbole-models``) in its own virtual environment, made here on first use
  (``artifacts/recbole-venv``: torch==2.13.0 and the ``recbole`` extra of pyproject.toml), one child process
  per model (``scripts/_recbole_peer.py``), with RecBole's own early stopping on validation NDCG@10 within
  ``--recbole-epochs``; its scores of every item come back and are scored here.

Tuning budget (``--trials N``): every tunable system tries the first N settings of its grid (the first is
its default) and keeps the one with the best validation nDCG@10; N=1 runs the defaults only.
Runs (one system on one seed) are saved under ``--results`` (``artifacts/benchmark_sequence``), keyed by the
system, the seed and the settings that change its result (trials, epoch caps, patience, data); a later run
with the same key reuses the saved one unless it failed (``--fresh`` re-runs all), so an interrupted
benchmark resumes and parts of it can be run apart. Each saved run records the commit and the time it was
measured at, and the table says which runs were reused; ``--render-only`` runs nothing and shows the saved
runs alone (a seed without one reads "not run", and that system's means are over the seeds that ran).
``--jobs N`` runs N systems at once, each in a child process of this script with one torch thread, longest
first (RecBole's SASRec takes the longest by far).

Results (mean over ``--seeds`` and per seed) replace the section between ``<!-- sequence:begin -->`` and
``<!-- sequence:end -->`` of ``--output``. Timing figures are under whatever load the machine had.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPO, machine, write_section  # noqa: E402

from model import checkpoint  # noqa: E402
from model.data import load_ratings  # noqa: E402
from model.interactions import Dataset, Interactions, build_dataset  # noqa: E402
from model.metrics import evaluate_ranking  # noqa: E402
from model.sequence import SEQUENCE_KINDS  # noqa: E402
from model.sequence_data import last_out, timeline_order  # noqa: E402
from model.train import TrainConfig, fit, resolve  # noqa: E402
from service.index import ServingIndex  # noqa: E402

TAG = "sequence"
RECBOLE_VENV = REPO / "artifacts" / "recbole-venv"
RECBOLE_MAX_LEN = {"Caser": 5}  # as our caser's window; RecBole's Caser has a convolution per height 1..L
# Grids in order of trial: the first entry is each system's default.
GRIDS = {
    "sasrec": [{}, {"dropout": 0.5}, {"lr": 0.001}, {"max_len": 200}],
    "gru4rec": [{}, {"dropout": 0.5}, {"lr": 0.001}, {"dim": 128}],
    "caser": [{}, {"dropout": 0.5}, {"max_len": 10}, {"lr": 0.001}],
    "mf": [{}, {"rank_reg": 20.0}, {"rank_reg": 100.0}, {"alpha": 10.0}],
    "SASRec": [
        {},
        {"hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2},
        {"learning_rate": 0.003},
        {"n_layers": 1},
    ],  # fmt: skip
    "GRU4Rec": [{}, {"dropout_prob": 0.1}, {"learning_rate": 0.003}, {"hidden_size": 128}],
    "Caser": [{}, {"dropout_prob": 0.2}, {"learning_rate": 0.003}, {"reg_weight": 0.0}],
}


@dataclasses.dataclass
class Run:
    """One system on one seed: test metrics, the chosen setting, its validation score and seconds."""

    test: dict[str, float] = dataclasses.field(default_factory=dict)
    setting: dict = dataclasses.field(default_factory=dict)
    val_ndcg: float = math.nan
    fit_s: float = math.nan
    note: str = ""
    error: str = ""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def score_test(score, train: Interactions, test: Interactions) -> dict[str, float]:
    metrics, _ = evaluate_ranking(score, train.seen_csr(), test.seen_csr(), train.num_items, k=10)
    return {"ndcg": metrics.ndcg, "hr": metrics.hit_rate, "ndcg_se": metrics.ndcg_se, "users": metrics.users}


def best_of(trials: list[tuple[dict, float, object]]) -> tuple[dict, float, object]:
    return max(trials, key=lambda t: -math.inf if math.isnan(t[1]) else t[1])


def trial_configs(kind: str, seed: int, args) -> list[TrainConfig]:
    """Our kind's training configurations, one per tried setting, in the grid's order."""
    extra = {"epochs": args.epochs} if args.epochs and kind != "mf" else {}
    # One thread for every system (the closed-form MF would take every core: unfair to --jobs neighbours).
    return [TrainConfig(model=kind, seed=seed, threads=1, **extra, **s) for s in GRIDS[kind][: args.trials]]


def ours(kind: str, dataset: Dataset, test: Interactions, seed: int, args) -> Run:
    """Our kind, tuned on the validation item (fit's own), scored through the serving index."""
    trials, seconds = [], []
    for setting, config in zip(GRIDS[kind][: args.trials], trial_configs(kind, seed, args)):
        result = fit(dataset.interactions, config, progress=False, implicit=dataset.implicit)
        seconds.append(result.metrics["fit_seconds"])
        val = result.metrics.get("val_ndcg10", result.metrics.get("rank_val_ndcg10", math.nan))
        log(
            f"{kind} seed {seed} {setting or 'defaults'}: validation nDCG@10 {val:.4f} in {seconds[-1]:.0f}s "
            f"({int(result.metrics.get('best_epoch', 0))} best of {int(result.metrics.get('epochs_run', 0))} epochs)"
        )
        trials.append((setting, val, result))
    setting, val, result = best_of(trials)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint.save(checkpoint.from_training(result, dataset), Path(tmp) / "m.ckpt")
        index = ServingIndex(checkpoint.load(path))
        test_metrics = score_test(index.score_users, dataset.interactions, test)
    note = f"best epoch {int(result.metrics.get('best_epoch', 0))}"
    if kind == "mf":  # its early stopping holds out random pairs, not the newest item
        note = "val nDCG@10: its ranking head's own random-pair validation, not the last item"
    return Run(test_metrics, setting, val, seconds[GRIDS[kind].index(setting)], note)


def popularity(dataset: Dataset, test: Interactions) -> Run:
    counts = dataset.interactions.item_counts().astype(np.float32)
    return Run(score_test(lambda users: np.tile(counts, (len(users), 1)), dataset.interactions, test), fit_s=0.0)


def recbole_venv() -> Path:
    """The RecBole environment's python, made on first use (torch pinned as ours; recbole's extra from
    pyproject.toml)."""
    python = RECBOLE_VENV / "bin" / "python"
    if (RECBOLE_VENV / ".installed").exists():
        return python
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["recbole"]
    log(f"making {RECBOLE_VENV} (torch==2.13.0, {', '.join(extra)})")
    subprocess.run([sys.executable, "-m", "venv", str(RECBOLE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0", *extra], check=True)
    (RECBOLE_VENV / ".installed").touch()
    return python


def write_inter(inter: Interactions, folder: Path) -> Path:
    """Every row as RecBole's atomic file; timestamp = the row's position in its user's timeline (our order)."""
    order = timeline_order(inter, warn=False)
    position = np.empty(len(inter), np.int64)
    position[order] = np.arange(len(inter))
    path = folder / "seqbench" / "seqbench.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(inter.user_idx.tolist(), inter.item_idx.tolist(), position.tolist()):
            fh.write(f"{u}\t{i}\t{t}\n")
    return path


def recbole(model: str, inter_file: Path, dataset: Dataset, test: Interactions, seed: int, args) -> Run:
    python = recbole_venv()
    trials = []
    for n, setting in enumerate(GRIDS[model][: args.trials]):
        out = inter_file.parent.parent / f"{model}-{seed}-{n}"
        cmd = [str(python), str(REPO / "scripts" / "_recbole_peer.py"), "--inter", str(inter_file), "--model", model,
               "--seed", str(seed), "--epochs", str(args.recbole_epochs), "--patience", str(args.recbole_patience),
               "--params", json.dumps(setting), "--out", str(out),
               "--max-len", str(RECBOLE_MAX_LEN.get(model, 50))]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=inter_file.parent.parent)
        if done.returncode != 0:
            raise RuntimeError(f"{model} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        info = json.loads(out.with_suffix(".json").read_text())
        log(
            f"RecBole {model} seed {seed} {setting or 'defaults'}: validation NDCG@10 {info['valid_ndcg10']:.4f} "
            f"in {info['fit_s']:.0f}s"
        )
        trials.append((setting, info["valid_ndcg10"], (out, info)))
    setting, val, (out, info) = best_of(trials)
    scores = np.load(out.with_suffix(".npy"))
    return Run(score_test(lambda users: scores[users], dataset.interactions, test), setting, val, info["fit_s"],
               f"{info['epochs']} epochs")  # fmt: skip


def guarded(name: str, run) -> Run:
    started = time.perf_counter()
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - one failing system is reported, the others still run
        traceback.print_exc()
        return Run(error=f"{type(exc).__name__}: {exc}")
    log(f"{name}: {result.test} ({time.perf_counter() - started:.0f}s)")
    return result


MF = "ours mf (default, non-sequential)"
# Rough single-thread minutes per seed on this machine, for running the longest first (--jobs).
EXPECTED_MINUTES = {"RecBole SASRec": 60, "RecBole GRU4Rec": 20, "RecBole Caser": 4, "ours sasrec": 4,
                    "ours gru4rec": 3, "ours caser": 1}  # fmt: skip


def systems(args) -> list[str]:
    """The systems to run, in table order."""
    names = [f"ours {kind}" for kind in args.models]
    names += [name for peer, name in (("popularity", "popularity"), ("mf", MF)) if peer in args.peers]
    if "recbole" in args.peers:
        names += [f"RecBole {model}" for model in args.recbole_models]
    return names


def run_one(name: str, seed: int, full: Dataset, dataset: Dataset, test: Interactions, args) -> Run:
    """One system on one seed, in this process (``full``: every row, for RecBole's own split)."""
    if name == "popularity":
        return popularity(dataset, test)
    if name == MF:
        return ours("mf", dataset, test, seed, args)
    if name.startswith("ours "):
        return ours(name.removeprefix("ours "), dataset, test, seed, args)
    with tempfile.TemporaryDirectory() as tmp:
        inter_file = write_inter(full.interactions, Path(tmp))
        return recbole(name.removeprefix("RecBole "), inter_file, dataset, test, seed, args)


def result_path(name: str, seed: int, args) -> Path:
    """Where one run is saved: keyed by everything on the command line that changes its result."""
    key = {"trials": args.trials, "data": str(args.data_dir)}
    if name.startswith("RecBole "):
        key |= {"epochs": args.recbole_epochs, "patience": args.recbole_patience}
    elif name != "popularity":
        # Our runs also by what fit will train, every default filled in (the seed is in the file name):
        # a changed default (epochs, patience, dim, ...) runs them again instead of reusing the old results.
        kind = "mf" if name == MF else name.removeprefix("ours ")
        resolved = [resolve(c, args.implicit, args.train_rows) for c in trial_configs(kind, 0, args)]
        key |= {"epochs": args.epochs, "configs": [dataclasses.asdict(c) for c in resolved]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return Path(args.results) / f"{slug}-seed{seed}-{digest}.json"


def save_run(path: Path, run: Run) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    record = {**dataclasses.asdict(run), "commit": commit.stdout.strip() or "unknown",
              "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    tmp.replace(path)


def saved_ok(path: Path) -> bool:
    """A saved run that did not fail (a failed one is shown once, then run again by the next invocation)."""
    return path.exists() and not load_run(path)[0].error


def load_run(path: Path) -> tuple[Run, tuple[str, str]]:
    """A saved run and (the commit, the time) it was measured at."""
    record = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(Run)}
    return Run(**{k: v for k, v in record.items() if k in fields}), (record["commit"], record["measured"])


def run_pending(pending: list[tuple[str, int]], full: Dataset, dataset: Dataset, test: Interactions, args) -> None:
    """Run and save each (system, seed): in this process, or ``--jobs`` children at a time, longest first.
    A run's old file goes first, so a run that dies leaves no result rather than an older one."""
    for name, seed in pending:
        result_path(name, seed, args).unlink(missing_ok=True)
    if args.jobs <= 1:
        for name, seed in pending:
            run = guarded(f"{name} seed {seed}", lambda n=name, s=seed: run_one(n, s, full, dataset, test, args))
            save_run(result_path(name, seed, args), run)
        return
    if any(name.startswith("RecBole ") for name, _ in pending):
        recbole_venv()  # made once here, not by several children at once
    pending = sorted(pending, key=lambda task: -EXPECTED_MINUTES.get(task[0], 1))
    logs = Path(args.results) / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def child(task: tuple[str, int]) -> None:
        name, seed = task
        log_file = logs / (result_path(name, seed, args).stem + ".log")
        cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--one", name, "--seeds", str(seed),
               "--results", args.results]  # fmt: skip
        log(f"{name} seed {seed}: started (log {log_file})")
        with log_file.open("w") as out:
            code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode  # fmt: skip
        log(f"{name} seed {seed}: exited {code}")
        if not result_path(name, seed, args).exists():  # killed, or failed outside guarded(): say so in the table
            save_run(result_path(name, seed, args), Run(error=f"child exited {code}; see {log_file}"))

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(child, pending))


NOT_RUN = "not run (--render-only)"


def mean_of(runs: list[Run], key: str) -> float:
    """The mean over the seeds that ran (``--render-only`` may lack some); NaN if one failed or none ran."""
    runs = [r for r in runs if r.error != NOT_RUN]
    if not runs or any(r.error for r in runs):
        return math.nan
    return float(np.mean([r.test[key] if key in r.test else getattr(r, key) for r in runs]))


def cell(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def reused_line(reused: dict[str, tuple[str, str]], total: int) -> list[str]:
    """One line on the runs this invocation took from earlier ones: how many, when and at which commits."""
    if not reused:
        return []
    commits = ", ".join(dict.fromkeys(commit for commit, _ in reused.values()))
    times = sorted(when for _, when in reused.values())
    which = "all of them" if len(reused) == total else ", ".join(reused)
    return [
        f"- {len(reused)} of {total} runs were measured by earlier invocations with the same settings (saved "
        f"under --results) and reused: {which}; measured {times[0]} to {times[-1]}, at commit(s) {commits}."
    ]


def render(args, results: dict[str, list[Run]], command: str, load_start: str, reused: dict) -> str:
    seeds = args.seeds
    head = ["system", "mean nDCG@10", "mean HR@10", *[f"nDCG@10 seed {s}" for s in seeds], "val nDCG@10",
            "fit s (mean)", "setting chosen (per seed)", "notes"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 3) + "|---|---|"]
    for name, runs in results.items():
        per_seed = [("not run" if r.error == NOT_RUN else "failed") if r.error else cell(r.test["ndcg"]) for r in runs]
        errors = [r.error for r in runs if r.error and r.error != NOT_RUN]
        settings = "; ".join(json.dumps(r.setting) if r.setting else "defaults" for r in runs if not r.error)
        notes = errors[0] if errors else "; ".join(dict.fromkeys(r.note for r in runs if r.note))
        missing = sum(r.error == NOT_RUN for r in runs)
        if missing and missing < len(runs):
            notes = f"means over the {len(runs) - missing} seed(s) run; " + notes
        cells = [name, cell(mean_of(runs, "ndcg")), cell(mean_of(runs, "hr")), *per_seed,
                 cell(mean_of(runs, "val_ndcg")), cell(mean_of(runs, "fit_s"), 0), settings, notes]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"<!-- {TAG}:begin -->",
        f"## Next-item quality on MovieLens 100k: sequence models vs RecBole, popularity, our MF ({date})",
        "",
        f"- Machine: {machine()}; load average {load_start} at start, "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} at end",
        f"- Reproduce (from the repo root): `{command}`",
        f"- Leave-last-out by time (ties: file order), full ranking, earlier items excluded; {len(seeds)} seed(s); "
        f"tuning budget {args.trials} setting(s) per system on the validation item; our epochs cap "
        f"{args.epochs or 'default'}, RecBole epochs cap {args.recbole_epochs} (patience {args.recbole_patience}).",
        "- fit s: our `fit` (including early stopping and the refit) or RecBole's `trainer.fit`; one torch thread"
        + (f"; {args.jobs} systems at a time (`--jobs`)." if args.jobs > 1 else "."),
        *reused_line(reused, sum(len(runs) for runs in results.values())),
        "",
        *lines,
        f"<!-- {TAG}:end -->",
    ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/datasets/ml-100k")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="sasrec,gru4rec,caser", help="our sequence kinds (empty: none)")
    p.add_argument("--epochs", type=int, default=0, help="cap on our sequence models' epochs (0: their defaults)")
    p.add_argument("--trials", type=int, default=1, help="settings per system tried on the validation item")
    p.add_argument("--peers", default="popularity,mf,recbole")
    p.add_argument("--skip-peers", action="store_true", help="ours only (same as --peers '')")
    p.add_argument("--recbole-models", default="SASRec,GRU4Rec,Caser")
    p.add_argument("--recbole-epochs", type=int, default=50)
    p.add_argument("--recbole-patience", type=int, default=5)
    p.add_argument("--jobs", type=int, default=1, help="systems run at once, each in a child process")
    p.add_argument("--results", default=str(REPO / "artifacts" / "benchmark_sequence"),
                   help="saved runs (reused unless --fresh)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="re-run systems that have a saved run")
    p.add_argument("--render-only", action="store_true", help="run nothing: the table from the saved runs alone")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # a --jobs child: this system, one seed
    p.add_argument("--output", default="docs/benchmarks.md", help="'' to print only")
    args = p.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    args.results = str(Path(args.results).resolve())  # children run in the repo root
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in args.models if m not in SEQUENCE_KINDS]:
        p.error(f"--models: unknown sequence kind(s) {', '.join(unknown)}; choose among {', '.join(SEQUENCE_KINDS)}")
    args.peers = [] if args.skip_peers else [m for m in args.peers.split(",") if m]
    args.recbole_models = [m for m in args.recbole_models.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/benchmark_sequence.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load_start = "/".join(f"{x:.2f}" for x in os.getloadavg())
    data_dir = (REPO / args.data_dir).resolve()
    full = build_dataset(load_ratings(data_dir / "u.data"))
    train, test = last_out(full.interactions)
    dataset = dataclasses.replace(full, interactions=train)
    args.implicit, args.train_rows = dataset.implicit, len(train)  # what result_path resolves our configs for
    log(f"{len(train)} training rows, {len(test)} test items ({train.num_users} users, {train.num_items} items)")
    if args.one:  # a --jobs child
        args.jobs = 1
        run_pending([(args.one, seed) for seed in args.seeds], full, dataset, test, args)
        return 0
    tasks = [(name, seed) for name in systems(args) for seed in args.seeds]
    pending = [t for t in tasks if args.fresh or not saved_ok(result_path(*t, args))]
    log(f"{len(tasks) - len(pending)} of {len(tasks)} runs saved already")
    if not args.render_only:
        run_pending(pending, full, dataset, test, args)
    results: dict[str, list[Run]] = {}
    reused: dict[str, tuple[str, str]] = {}
    for name, seed in tasks:
        path = result_path(name, seed, args)
        missing = Run(error=NOT_RUN if args.render_only else "no result (see its log)")
        run, measured = load_run(path) if path.exists() else (missing, None)
        results.setdefault(name, []).append(run)
        if ((name, seed) not in pending or args.render_only) and measured:
            reused[f"{name} seed {seed}"] = measured
    section = render(args, results, command, load_start, reused)
    print(section)
    if args.output:
        write_section(REPO / args.output, section, TAG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
