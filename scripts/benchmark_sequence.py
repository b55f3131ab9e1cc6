"""Next-item quality on MovieLens 100k: our sequence models against RecBole's, popularity and our best
non-sequential model, in the same run, on the same split, scored by the same code.

    python scripts/benchmark_sequence.py [--seeds 0,1,2] [--models sasrec,gru4rec,caser] [--epochs N]
        [--trials N] [--peers popularity,mf,recbole] [--recbole-models SASRec,GRU4Rec,Caser]
        [--recbole-epochs N] [--skip-peers] [--data-dir ../shared/datasets/ml-100k] [--output docs/benchmarks.md]

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
Results (mean over ``--seeds`` and per seed) replace the section between ``<!-- sequence:begin -->`` and
``<!-- sequence:end -->`` of ``--output``. Timing figures are under whatever load the machine had.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from model.sequence_data import last_out, timeline_order  # noqa: E402
from model.train import TrainConfig, fit  # noqa: E402
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


def ours(kind: str, dataset: Dataset, test: Interactions, seed: int, args) -> Run:
    """Our kind, tuned on the validation item (fit's own), scored through the serving index."""
    trials, seconds = [], []
    for setting in GRIDS[kind][: args.trials]:
        extra = {"epochs": args.epochs} if args.epochs and kind != "mf" else {}
        config = TrainConfig(model=kind, seed=seed, **extra, **setting)
        result = fit(dataset.interactions, config, progress=False)
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


def run_seed(seed: int, dataset: Dataset, test: Interactions, inter_file: Path | None, args) -> dict[str, Run]:
    runs = {f"ours {kind}": (lambda kind=kind: ours(kind, dataset, test, seed, args)) for kind in args.models}
    if "popularity" in args.peers:
        runs["popularity"] = lambda: popularity(dataset, test)
    if "mf" in args.peers:
        runs["ours mf (default, non-sequential)"] = lambda: ours("mf", dataset, test, seed, args)
    if "recbole" in args.peers:
        for model in args.recbole_models:
            runs[f"RecBole {model}"] = lambda model=model: recbole(model, inter_file, dataset, test, seed, args)
    return {name: guarded(f"{name} seed {seed}", run) for name, run in runs.items()}


def mean_of(runs: list[Run], key: str) -> float:
    if not runs or any(r.error for r in runs):
        return math.nan
    return float(np.mean([r.test[key] if key in r.test else getattr(r, key) for r in runs]))


def cell(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def render(args, results: dict[str, list[Run]], command: str, load_start: str) -> str:
    seeds = args.seeds
    head = ["system", "mean nDCG@10", "mean HR@10", *[f"nDCG@10 seed {s}" for s in seeds], "val nDCG@10",
            "fit s (mean)", "setting chosen (per seed)", "notes"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 3) + "|---|---|"]
    for name, runs in results.items():
        per_seed = [r.error and "failed" or cell(r.test["ndcg"]) for r in runs]
        errors = [r.error for r in runs if r.error]
        settings = "; ".join(json.dumps(r.setting) if r.setting else "defaults" for r in runs if not r.error)
        notes = errors[0] if errors else "; ".join(dict.fromkeys(r.note for r in runs if r.note))
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
        "- fit s: our `fit` (including early stopping and the refit) or RecBole's `trainer.fit`; one torch thread.",
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
    p.add_argument("--output", default="docs/benchmarks.md", help="'' to print only")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
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
    log(f"{len(train)} training rows, {len(test)} test items ({train.num_users} users, {train.num_items} items)")
    results: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inter_file = write_inter(full.interactions, Path(tmp)) if "recbole" in args.peers else None
        for seed in args.seeds:
            for name, run in run_seed(seed, dataset, test, inter_file, args).items():
                results.setdefault(name, []).append(run)
    section = render(args, results, command, load_start)
    print(section)
    if args.output:
        write_section(REPO / args.output, section, TAG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
