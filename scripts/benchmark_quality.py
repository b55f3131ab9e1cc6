"""Quality of our default training command against the peers on MovieLens 100k: ratings and top-k ranking.

    python scripts/benchmark_quality.py [--folds 1,2,3,4,5] [--tasks rating,ranking,strong] [--seed 0,1,2]
                                        [--skip-peers] [--quick]
                                        [--data-dir ../shared/datasets/ml-100k] [--output docs/benchmarks.md]

Ours is always run exactly as a user runs it: ``scripts/train.py --quiet --data TRAIN --out X`` (no tuning
flags) in a subprocess whose wall clock is its fit time, then ``scripts/evaluate.py --checkpoint X --test
TEST --json``, which serves the checkpoint through ``ServingIndex``. The peers are fitted here on the same
files and scored by the same code (``model.metrics``), with the same rules.

- rating task: the official folds ``uN.base`` / ``uN.test``. RMSE and MAE over every test row (an unknown
  user or item gets each model's own fallback). Peers: Surprise ``SVD`` (defaults), ``SVD`` tuned by
  ``GridSearchCV`` (3-fold CV on ``uN.base`` only), ``SVDpp``, ``KNNBaseline`` (item-based,
  pearson_baseline similarity), ``BaselineOnly``.
- ranking task: ``u.data`` split per user at random, 75% train / 25% test (``model.splits.stratified_split``,
  seed 0). Each user's training items are excluded from their list, every held-out item is relevant,
  metrics at k=10 as defined in ``model/metrics.py``. Peers: implicit ALS and BPR (tuned on a validation
  split carved from the 75%: a second per-user 75/25 split, best nDCG@10, then refitted on all of the 75%),
  EASE (closed-form item-item, a reference: lambda tuned on the same split), Surprise SVD ranking by
  predicted rating, and item popularity. Ours also with ``--model vae`` and ``--model dae``.
- strong task (new users, Liang et al. 2018): 20% of the users held out whole (``model.splits.holdout_users``);
  every model trains on the others, then folds in a random 80% of each held-out user's items and is scored
  on the rest (NDCG@100, Recall@20, Recall@50, nDCG@10). Ours (default, vae, dae) through ``scripts/evaluate.py
  --fold-in``; peers on the same split: EASE (``x B``, lambda tuned as above on the training users) and implicit
  ALS (tuned as above) folding in by its ``recalculate_user``.

``--seed 0,1,2`` runs the ranking and strong tasks once per split seed, with a table per seed and the means.

A peer that fails is reported as failed in the table. The section between ``<!-- quality:begin -->`` and
``<!-- quality:end -->`` of ``--output`` is replaced. Relative paths are taken from the repo root. Peers need
``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model import checkpoint
from model.data import RawRatings, load_ratings
from model.interactions import Dataset, Interactions, build_dataset, encode_new_users, encode_with
from model.metrics import FOLD_IN_METRICS, METRIC_NAMES, evaluate_fold_in, evaluate_ranking
from model.splits import fold_in_split, holdout_users, stratified_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from _bench import cpu_model, load_avg, markers, write_section  # noqa: E402

PEER_MODULES = ("surprise", "implicit", "scipy", "threadpoolctl")  # the [bench] extra of pyproject.toml
K = 10
TARGET_RMSE, TARGET_RMSE_FIT_S = 0.905, 30.0
TARGET_NDCG, TARGET_NDCG_FIT_S = 0.50, 60.0
STRONG_USERS, FOLD_IN = 0.2, 0.8  # strong generalisation: users held out whole; share of their items folded in
TARGET_STRONG_OVER_EASE = 1.03  # our best fold-in's NDCG@100 against EASE's

# Grids over the usual ranges (the libraries' defaults included where they fit). --quick keeps the first two values.
SVD_GRID = {
    "n_factors": [50, 100, 200],
    "n_epochs": [20, 50, 100],
    "lr_all": [0.005, 0.01],
    "reg_all": [0.05, 0.1, 0.15],
}
ALS_GRID = {
    "factors": [16, 32, 64, 8],
    "regularization": [1.0, 0.1, 10.0],
    "alpha": [1.0, 2.0, 0.5, 5.0],
    "iterations": [15, 30],
}
EASE_LAMBDAS = [100.0, 200.0, 300.0, 500.0, 800.0, 1200.0]
BPR_GRID = {
    "factors": [32, 100],
    "learning_rate": [0.01, 0.05],
    "regularization": [0.01, 0.1],
    "iterations": [100, 300],
}


@dataclass
class Result:
    """One model on one split. ``metrics`` holds rmse/mae or the ranking metrics; ``error`` if it failed."""

    metrics: dict[str, float] = field(default_factory=dict)
    fit_s: float = math.nan  # fitting only (ours: the whole train.py process, see notes)
    tune_s: float = math.nan  # hyper-parameter search, when there is one
    note: str = ""
    error: str = ""


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def guarded(name: str, run: Callable[[], Result]) -> Result:
    """Run one model; a failure becomes a failed row, not a crash."""
    started = time.perf_counter()
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - any failure of a peer is reported, not raised
        log(f"  {name}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return Result(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:120])
    log(f"  {name}: {fmt_metrics(result.metrics)} fit {result.fit_s:.1f}s ({time.perf_counter() - started:.1f}s)")
    return result


def fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def small_grid(grid: dict[str, list], quick: bool) -> dict[str, list]:
    return {k: v[:2] if quick else v for k, v in grid.items()}


def combos(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


# ---------------------------------------------------------------- ours: the two commands a user runs


def run_ours(
    train_file: Path, test_file: Path, workdir: Path, flags: tuple[str, ...] = (), eval_flags: tuple[str, ...] = ()
) -> tuple[Result, dict]:
    """``scripts/train.py`` with defaults (plus ``flags``), then ``scripts/evaluate.py --json``; returns (timing,
    report)."""
    ckpt_path = workdir / f"{train_file.stem}{''.join(flags).replace('-', '_')}.ckpt"
    train_cmd = [sys.executable, "scripts/train.py", "--quiet", "--data", str(train_file), "--out", str(ckpt_path),
                 *flags]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(train_cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(train_cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
    eval_cmd = [sys.executable, "scripts/evaluate.py", "--checkpoint", str(ckpt_path), "--test", str(test_file)]
    proc = subprocess.run([*eval_cmd, "--k", str(K), "--json", *eval_flags], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(eval_cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
    ckpt = checkpoint.load(ckpt_path)
    note = f"pure fit {ckpt.metrics['fit_seconds']:.1f}s, {ckpt.kind} dim={ckpt.config.dim}"
    return Result(fit_s=wall, note=note), json.loads(proc.stdout)


def ours_rating(base: Path, test: Path, workdir: Path) -> Result:
    result, report = run_ours(base, test, workdir)
    result.metrics = {"rmse": report["rating"]["rmse"], "mae": report["rating"]["mae"]}
    return result


def ours_ranking(train_file: Path, test_file: Path, workdir: Path, flags: tuple[str, ...] = ()) -> Result:
    result, report = run_ours(train_file, test_file, workdir, flags)
    rank = report["ranking"]
    result.metrics = {name: rank[name] for name in (*METRIC_NAMES, "coverage", "ndcg_se")}
    result.metrics["users"] = rank["users"]
    return result


# ---------------------------------------------------------------- rating peers (Surprise)


def surprise_fold(base: Path, test: Path):
    from surprise import Dataset, Reader
    from surprise.model_selection import PredefinedKFold

    reader = Reader(line_format="user item rating timestamp", sep="\t")
    data = Dataset.load_from_folds([(str(base), str(test))], reader=reader)
    return next(PredefinedKFold().split(data))


def surprise_rating(make_algo: Callable[[], object], base: Path, test: Path, tune_s: float = math.nan, note: str = ""):
    from surprise import accuracy

    trainset, testset = surprise_fold(base, test)
    algo = make_algo()
    started = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - started
    pred = algo.test(testset)  # unknown ids get Surprise's own fallback (the global mean / baseline)
    metrics = {"rmse": accuracy.rmse(pred, verbose=False), "mae": accuracy.mae(pred, verbose=False)}
    return Result(metrics, fit_s, tune_s, note)


def tuned_svd(base: Path, test: Path, quick: bool) -> Result:
    """SVD with the parameters GridSearchCV (3-fold, RMSE) picks on ``base`` alone: the test file is never seen."""
    from surprise import SVD, Dataset, Reader
    from surprise.model_selection import GridSearchCV

    data = Dataset.load_from_file(str(base), Reader(line_format="user item rating timestamp", sep="\t"))
    grid = small_grid(SVD_GRID, quick)
    search = GridSearchCV(SVD, {**grid, "random_state": [0]}, measures=["rmse"], cv=3, n_jobs=-1)
    started = time.perf_counter()
    search.fit(data)
    tune_s = time.perf_counter() - started
    best = {k: v for k, v in search.best_params["rmse"].items() if k != "random_state"}
    note = ", ".join(f"{k}={v}" for k, v in best.items())
    return surprise_rating(lambda: SVD(**best, random_state=0), base, test, tune_s, note)


def rating_peers(base: Path, test: Path, quick: bool) -> dict[str, Callable[[], Result]]:
    def algo(name: str, **kwargs):
        import surprise

        return lambda: getattr(surprise, name)(**kwargs)

    knn = {"sim_options": {"name": "pearson_baseline", "user_based": False}, "verbose": False}
    return {
        "Surprise SVD (defaults)": lambda: surprise_rating(algo("SVD", random_state=0), base, test),
        "Surprise SVD (tuned)": lambda: tuned_svd(base, test, quick),
        "Surprise SVD++ (defaults)": lambda: surprise_rating(
            algo("SVDpp", random_state=0, cache_ratings=True), base, test
        ),
        "Surprise KNNBaseline (item, pearson_baseline)": lambda: surprise_rating(
            algo("KNNBaseline", **knn), base, test
        ),
        "Surprise BaselineOnly": lambda: surprise_rating(algo("BaselineOnly", verbose=False), base, test),
    }


# ---------------------------------------------------------------- ranking peers (implicit, Surprise, popularity)


def user_items(inter: Interactions):
    """Binary user x item CSR (float32) of the distinct training pairs, as implicit wants it."""
    from scipy.sparse import csr_matrix

    indptr, indices = inter.seen_csr()
    return csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(inter.num_users, inter.num_items))


def fit_implicit(kind: str, train: Interactions, params: dict, model_out: list | None = None):
    """Fit implicit's ALS or BPR on one thread of BLAS (implicit's own threads do the work); returns (user factors,
    item factors, fit seconds); the fitted model is appended to ``model_out`` when given."""
    from threadpoolctl import threadpool_limits

    if kind == "als":
        from implicit.cpu.als import AlternatingLeastSquares as Model
    else:
        from implicit.cpu.bpr import BayesianPersonalizedRanking as Model
    matrix = user_items(train)
    with threadpool_limits(1, "blas"):  # inside: implicit checks the BLAS threads when the model is built
        model = Model(**params, random_state=0)
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        fit_s = time.perf_counter() - started
    if model_out is not None:
        model_out.append(model)
    # BPR's factors carry the item bias as a last column and users a matching column of ones.
    return np.asarray(model.user_factors), np.asarray(model.item_factors), fit_s


def factor_scores(user_factors: np.ndarray, item_factors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda users: user_factors[users] @ item_factors.T


def rank_metrics(score, train: Interactions, test: Interactions) -> dict[str, float]:
    metrics, _ = evaluate_ranking(score, train.seen_csr(), test.seen_csr(), train.num_items, k=K)
    out = {name: getattr(metrics, name) for name in (*METRIC_NAMES, "coverage")}
    out["ndcg_se"] = metrics.ndcg_se
    out["users"] = metrics.users
    return out


def tune_implicit(kind: str, train: Interactions, quick: bool, seed: int) -> tuple[dict, float, float]:
    """Grid search on a validation split of ``train``: (best parameters by nDCG@10, that nDCG, seconds)."""
    fit_part, val_part = stratified_split(train, 0.25, seed=seed + 1)
    grid = small_grid(ALS_GRID if kind == "als" else BPR_GRID, quick)
    started, best, best_ndcg = time.perf_counter(), None, -1.0
    for params in combos(grid):
        users, items, _ = fit_implicit(kind, fit_part, params)
        ndcg = rank_metrics(factor_scores(users, items), fit_part, val_part)["ndcg"]
        if ndcg > best_ndcg:
            best, best_ndcg = params, ndcg
    return best, best_ndcg, time.perf_counter() - started


def tuned_implicit(kind: str, train: Interactions, test: Interactions, quick: bool, seed: int) -> Result:
    """Grid search on a validation split of ``train`` (best nDCG@10), then refit on all of ``train``."""
    best, best_ndcg, tune_s = tune_implicit(kind, train, quick, seed)
    users, items, fit_s = fit_implicit(kind, train, best)
    note = ", ".join(f"{k}={v}" for k, v in best.items()) + f" (validation nDCG {best_ndcg:.4f})"
    return Result(rank_metrics(factor_scores(users, items), train, test), fit_s, tune_s, note)


def default_implicit(kind: str, train: Interactions, test: Interactions) -> Result:
    users, items, fit_s = fit_implicit(kind, train, {})
    return Result(rank_metrics(factor_scores(users, items), train, test), fit_s, note="library defaults")


def svd_ranker(train_file: Path, dataset: Dataset, test: Interactions) -> Result:
    """Surprise SVD (defaults) ranking every item by its predicted rating ``b_i + q_i . p_u`` (mu + b_u is constant)."""
    from surprise import SVD, Reader
    from surprise import Dataset as SurpriseData

    data = SurpriseData.load_from_file(str(train_file), Reader(line_format="user item rating timestamp", sep="\t"))
    trainset = data.build_full_trainset()
    algo = SVD(random_state=0)
    started = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - started
    # Surprise's inner ids -> our indices: both id spaces are built from the same training file.
    inner_item = np.array([trainset.to_inner_iid(i) for i in dataset.item_map.ids])
    inner_user = np.array([trainset.to_inner_uid(u) for u in dataset.user_map.ids])
    item_vec = np.hstack([algo.qi[inner_item], algo.bi[inner_item, None]])
    user_vec = np.hstack([algo.pu[inner_user], np.ones((len(inner_user), 1))])
    train = dataset.interactions
    return Result(rank_metrics(factor_scores(user_vec, item_vec), train, test), fit_s, note="defaults, random_state=0")


def binary_matrix(inter: Interactions) -> np.ndarray:
    """Dense user x item 0/1 matrix (float64) of the training pairs: small catalogues only (EASE's own limit)."""
    x = np.zeros((inter.num_users, inter.num_items))
    x[inter.user_idx, inter.item_idx] = 1.0
    return x


def fit_ease(train: Interactions, lam: float) -> tuple[np.ndarray, float]:
    """EASE (Steck 2019): ``B = I - P / diag(P)`` with ``P = (X'X + lam I)^-1`` and a zero diagonal; scores ``X B``.

    A closed-form item-item model with no user embeddings (nothing this service could serve at 1M items:
    B is items x items), measured as the strong simple reference on small catalogues."""
    started = time.perf_counter()
    x = binary_matrix(train)
    inverse = np.linalg.inv(x.T @ x + lam * np.eye(train.num_items))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights, time.perf_counter() - started


def _ease_scores(x: np.ndarray, weights: np.ndarray, users: np.ndarray) -> np.ndarray:
    return x[users] @ weights


def tune_ease(train: Interactions, seed: int) -> tuple[float, float, float]:
    """EASE's L2 chosen on the same validation split as implicit's grids: (lambda, its nDCG@10, seconds)."""
    fit_part, val_part = stratified_split(train, 0.25, seed=seed + 1)
    started, best, best_ndcg = time.perf_counter(), None, -1.0
    x = binary_matrix(fit_part)
    for lam in EASE_LAMBDAS:
        weights, _ = fit_ease(fit_part, lam)
        ndcg = rank_metrics(functools.partial(_ease_scores, x, weights), fit_part, val_part)["ndcg"]
        if ndcg > best_ndcg:
            best, best_ndcg = lam, ndcg
    return best, best_ndcg, time.perf_counter() - started


def ease(train: Interactions, test: Interactions, seed: int) -> Result:
    """EASE with its L2 chosen on the same validation split as implicit's grids, then refitted on ``train``."""
    best, best_ndcg, tune_s = tune_ease(train, seed)
    weights, fit_s = fit_ease(train, best)
    note = f"lambda={best:g} (validation nDCG {best_ndcg:.4f}); closed form, item x item, no embeddings"
    metrics = rank_metrics(functools.partial(_ease_scores, binary_matrix(train), weights), train, test)
    return Result(metrics, fit_s, tune_s, note)


def popularity(train: Interactions, test: Interactions) -> Result:
    started = time.perf_counter()
    counts = train.item_counts().astype(np.float64)
    fit_s = time.perf_counter() - started
    return Result(
        rank_metrics(lambda users: np.tile(counts, (len(users), 1)), train, test), fit_s, note="training counts"
    )


# ---------------------------------------------------------------- tasks


def rating_task(args: argparse.Namespace, workdir: Path) -> tuple[list[str], dict[str, list[Result]]]:
    folds = [f"u{f}" for f in args.folds]
    results: dict[str, list[Result]] = {}
    for fold in folds:
        base, test = args.data_dir / f"{fold}.base", args.data_dir / f"{fold}.test"
        log(f"rating task, fold {fold}")
        runs = {"ours (default `scripts/train.py`)": functools.partial(ours_rating, base, test, workdir)}
        if not args.skip_peers:
            runs.update(rating_peers(base, test, args.quick))
        for name, run in runs.items():
            results.setdefault(name, []).append(guarded(name, run))
    return folds, results


def write_tsv(raw: RawRatings, mask: np.ndarray, path: Path) -> Path:
    rows = zip(raw.user_ids[mask], raw.item_ids[mask], raw.ratings[mask], raw.timestamps[mask])
    path.write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in rows))
    return path


def ranking_task(args: argparse.Namespace, workdir: Path, seed: int) -> dict[str, Result]:
    raw = load_ratings(args.data_dir / "u.data", "ml-100k")
    full = build_dataset(raw).interactions
    # Split a copy whose timestamps are the row numbers, so the held-out rows can be written out in raw ids.
    rows = Interactions(
        full.user_idx, full.item_idx, full.ratings, np.arange(len(full)), full.num_users, full.num_items
    )
    is_test = np.zeros(len(raw), dtype=bool)
    is_test[stratified_split(rows, 0.25, seed=seed)[1].timestamps] = True
    train_file = write_tsv(raw, ~is_test, workdir / "ranking-train.tsv")
    test_file = write_tsv(raw, is_test, workdir / "ranking-test.tsv")
    log(f"ranking task: {int((~is_test).sum())} training rows, {int(is_test.sum())} held-out (seed {seed})")
    # The id space every model ranks in: the training file's, exactly as train.py builds it.
    dataset = build_dataset(load_ratings(train_file, "ml-100k"))
    train = dataset.interactions
    test, _ = encode_with(load_ratings(test_file, "ml-100k"), dataset.user_map, dataset.item_map)
    runs = {
        "ours (default `scripts/train.py`)": lambda: ours_ranking(train_file, test_file, workdir),
        **{
            f"ours `--model {kind}`": functools.partial(ours_ranking, train_file, test_file, workdir, ("--model", kind))
            for kind in ("vae", "dae")
        },
    }
    if not args.skip_peers:
        runs.update(
            {
                "implicit ALS (tuned)": lambda: tuned_implicit("als", train, test, args.quick, seed),
                "implicit ALS (defaults)": lambda: default_implicit("als", train, test),
                "implicit BPR (tuned)": lambda: tuned_implicit("bpr", train, test, args.quick, seed),
                "implicit BPR (defaults)": lambda: default_implicit("bpr", train, test),
                "EASE (reference, tuned)": lambda: ease(train, test, seed),
                "Surprise SVD as ranker": lambda: svd_ranker(train_file, dataset, test),
                "popularity": lambda: popularity(train, test),
            }
        )
    return {name: guarded(name, run) for name, run in runs.items()}


# ---------------------------------------------------------------- strong generalisation (new users, fold-in)


def ours_fold_in(train_file: Path, test_file: Path, workdir: Path, seed: int, flags: tuple[str, ...] = ()) -> Result:
    """Ours trained by ``scripts/train.py`` (plus ``flags``), new users folded in by ``scripts/evaluate.py --fold-in``
    (the service's own ``ServingIndex.score_history``)."""
    result, report = run_ours(train_file, test_file, workdir, flags, ("--fold-in", str(FOLD_IN), "--seed", str(seed)))
    result.metrics = {name: report["fold_in"][name] for name in (*FOLD_IN_METRICS, "users")}
    return result


def fold_in_scores(score_history: Callable[[np.ndarray], np.ndarray], history: Interactions, heldout: Interactions):
    """A peer's :data:`FOLD_IN_METRICS`: ``score_history(items) -> (I,)`` ranks each new user from their history."""
    indptr, indices = history.seen_csr()

    def score(users: np.ndarray) -> np.ndarray:
        return np.stack([score_history(indices[indptr[u] : indptr[u + 1]]) for u in users])

    return evaluate_fold_in(score, (indptr, indices), heldout.seen_csr(), history.num_items)


def ease_fold_in(train: Interactions, history: Interactions, heldout: Interactions, seed: int) -> Result:
    """EASE needs no fold-in: a new user's scores are their history's rows of ``B`` summed (``x B``)."""
    lam, val_ndcg, tune_s = tune_ease(train, seed)
    weights, fit_s = fit_ease(train, lam)
    metrics = fold_in_scores(lambda items: weights[items].sum(axis=0), history, heldout)
    return Result(metrics, fit_s, tune_s, f"lambda={lam:g} (validation nDCG@10 {val_ndcg:.4f})")


def als_fold_in(train: Interactions, history: Interactions, heldout: Interactions, quick: bool, seed: int) -> Result:
    """implicit's ALS, tuned as in the ranking task; a new user solved by its ``recalculate_user``."""
    from scipy.sparse import csr_matrix

    params, val_ndcg, tune_s = tune_implicit("als", train, quick, seed)
    models: list = []
    _, items, fit_s = fit_implicit("als", train, params, models)

    def score_history(hist: np.ndarray) -> np.ndarray:
        row = csr_matrix((np.ones(len(hist), np.float32), (np.zeros(len(hist)), hist)), shape=(1, train.num_items))
        return np.asarray(models[0].recalculate_user(0, row)).reshape(-1) @ items.T

    note = ", ".join(f"{k}={v}" for k, v in params.items()) + f" (validation nDCG@10 {val_ndcg:.4f})"
    return Result(fold_in_scores(score_history, history, heldout), fit_s, tune_s, note)


def strong_task(args: argparse.Namespace, workdir: Path, seed: int) -> dict[str, Result]:
    """Whole users held out (``STRONG_USERS`` of them, seed ``seed``); every model trains on the others, then
    folds in ``FOLD_IN`` of each held-out user's items and is scored on the rest (the same split for all)."""
    raw = load_ratings(args.data_dir / "u.data", "ml-100k")
    full = build_dataset(raw).interactions
    rows = Interactions(
        full.user_idx, full.item_idx, full.ratings, np.arange(len(full)), full.num_users, full.num_items
    )
    is_test = np.zeros(len(raw), dtype=bool)
    is_test[holdout_users(rows, STRONG_USERS, seed=seed)[1].timestamps] = True
    train_file = write_tsv(raw, ~is_test, workdir / "strong-train.tsv")
    test_file = write_tsv(raw, is_test, workdir / "strong-test.tsv")
    dataset = build_dataset(load_ratings(train_file, "ml-100k"))
    train = dataset.interactions
    new_users = encode_new_users(load_ratings(test_file, "ml-100k"), dataset.user_map, dataset.item_map)
    history, heldout = fold_in_split(new_users, FOLD_IN, seed=seed)  # what evaluate.py --fold-in draws
    log(f"strong generalisation: {train.num_users} training users, {new_users.num_users} new users (seed {seed})")
    runs = {
        "ours (default `scripts/train.py`)": lambda: ours_fold_in(train_file, test_file, workdir, seed),
        **{
            f"ours `--model {kind}`": functools.partial(
                ours_fold_in, train_file, test_file, workdir, seed, ("--model", kind)
            )
            for kind in ("vae", "dae")
        },
    }
    if not args.skip_peers:
        runs.update(
            {
                "EASE (tuned)": lambda: ease_fold_in(train, history, heldout, seed),
                "implicit ALS (tuned), recalculate_user": lambda: als_fold_in(
                    train, history, heldout, args.quick, seed
                ),
            }
        )
    return {name: guarded(name, run) for name, run in runs.items()}


# ---------------------------------------------------------------- report


def cell(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean(results: list[Result], key: str) -> float:
    """Mean over folds of a metric (or of ``fit_s`` / ``tune_s``); NaN if any fold failed."""
    if not results or any(r.error for r in results):
        return math.nan
    return float(np.mean([getattr(r, key) if key in ("fit_s", "tune_s") else r.metrics[key] for r in results]))


def rating_table(folds: list[str], results: dict[str, list[Result]]) -> list[str]:
    head = ["model", *[f"{f} RMSE" for f in folds], "mean RMSE", "mean MAE", "mean fit s", "max fit s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 2) + "|---|"]
    for name, runs in results.items():
        per_fold = [r.error and "failed" or cell(r.metrics["rmse"]) for r in runs]
        failed = [r.error for r in runs if r.error]
        notes = f"failed: {failed[0]}" if failed else "; ".join(dict.fromkeys(r.note for r in runs if r.note))
        tune = mean(runs, "tune_s")
        if not math.isnan(tune):
            notes = f"tuning {tune:.1f}s per fold; best per fold: {notes}"
        max_fit = max((r.fit_s for r in runs), default=math.nan)
        cells = [name, *per_fold, cell(mean(runs, "rmse")), cell(mean(runs, "mae")), cell(mean(runs, "fit_s"), 1)]
        lines.append("| " + " | ".join([*cells, cell(max_fit, 1), notes]) + " |")
    return lines


def ranking_table(results: dict[str, Result]) -> list[str]:
    names = ["nDCG@10", "precision@10", "recall@10", "MAP@10", "hit rate@10", "coverage@10"]
    head = ["model", *names, "fit s", "tuning s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 2) + "|---|"]
    for name, r in results.items():
        if r.error:
            lines.append("| " + " | ".join([name, *["failed"] * len(names), "", "", r.error]) + " |")
            continue
        m = r.metrics
        ndcg = cell(m["ndcg"]) + (f" ± {m['ndcg_se']:.4f}" if m.get("ndcg_se") is not None else "")
        cells = [ndcg, *(cell(m[k]) for k in ("precision", "recall", "map", "hit_rate", "coverage"))]
        lines.append("| " + " | ".join([name, *cells, cell(r.fit_s, 1), cell(r.tune_s, 1), r.note]) + " |")
    return lines


def verdicts(rating, ranking) -> list[str]:
    out = []
    if rating:
        ours = rating[1]["ours (default `scripts/train.py`)"]
        rmse, worst = mean(ours, "rmse"), max(r.fit_s for r in ours)
        ok = rmse <= TARGET_RMSE and worst < TARGET_RMSE_FIT_S
        out.append(
            f"- Rating target (mean RMSE <= {TARGET_RMSE}, every fold's fit under {TARGET_RMSE_FIT_S:.0f} s): "
            f"{'met' if ok else 'NOT met'} (RMSE {cell(rmse)}, slowest fold {worst:.1f} s)."
        )
    if ranking:
        default = "ours (default `scripts/train.py`)"
        means = seed_means(ranking, "ndcg")
        slowest = max(res[default].fit_s for res in ranking.values())
        ok = means[default] >= TARGET_NDCG and slowest < TARGET_NDCG_FIT_S
        out.append(
            f"- Ranking target (nDCG@10 >= {TARGET_NDCG}, fit under {TARGET_NDCG_FIT_S:.0f} s; mean over seeds"
            f" {', '.join(map(str, ranking))}): {'met' if ok else 'NOT met'} (nDCG@10 {cell(means[default])},"
            f" slowest fit {slowest:.1f} s)."
        )
        peers = {n: v for n, v in means.items() if not n.startswith("ours")}
        best_peer = max(peers, key=lambda n: -math.inf if math.isnan(peers[n]) else peers[n], default=None)
        if best_peer is not None:
            above = means[default] > peers[best_peer]
            out.append(
                f"- Above every peer (mean nDCG@10): {'yes' if above else 'NO'} (ours {cell(means[default])}, best"
                f" peer {best_peer} {cell(peers[best_peer])}); per seed: {'; '.join(beaten_by(ranking, default))}."
            )
    return out


def seed_summary(per_seed: dict[int, dict[str, Result]], metric: str, label: str) -> list[str]:
    """One row per model: ``metric`` per seed and its mean over the seeds (n/a where a seed failed)."""
    seeds = list(per_seed)
    names = list(dict.fromkeys(name for results in per_seed.values() for name in results))
    lines = [f"#### {label} per split seed and the mean", "", "| model | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean |", "|---" + "|---:" * (len(seeds) + 1) + "|"]  # fmt: skip
    for name in names:
        runs = [per_seed[s].get(name) for s in seeds]
        values = [math.nan if r is None or r.error else r.metrics[metric] for r in runs]
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in values) + f" | {cell(float(np.mean(values)))} |")
    return [*lines, ""]


def seed_means(per_seed: dict[int, dict[str, Result]], metric: str) -> dict[str, float]:
    """Each model's mean of ``metric`` over the seeds (NaN if it failed on one)."""
    names = dict.fromkeys(name for results in per_seed.values() for name in results)
    return {
        name: float(
            np.mean(
                [r.metrics[metric] if (r := res.get(name)) and not r.error else math.nan for res in per_seed.values()]
            )
        )  # fmt: skip
        for name in names
    }


def beaten_by(per_seed: dict[int, dict[str, Result]], ours: str, metric: str = "ndcg") -> list[str]:
    """Per seed, the peers that score above ``ours`` (``above every peer`` when none does)."""
    out = []
    for seed, results in per_seed.items():
        mine = results[ours].metrics.get(metric, math.nan)
        above = [f"{n} {cell(r.metrics[metric])}" for n, r in results.items()
                 if not n.startswith("ours") and not r.error and r.metrics[metric] >= mine]  # fmt: skip
        out.append(f"seed {seed}: " + (f"below {', '.join(above)}" if above else f"above every peer ({cell(mine)})"))
    return out


def strong_table(results: dict[str, Result]) -> list[str]:
    head = ["model", *(name.replace("ndcg", "NDCG").replace("recall", "Recall") for name in FOLD_IN_METRICS)]
    head += ["fit s", "tuning s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 2) + "|---|"]
    for name, r in results.items():
        cells = ["failed"] * len(FOLD_IN_METRICS) if r.error else [cell(r.metrics[m]) for m in FOLD_IN_METRICS]
        lines.append("| " + " | ".join([name, *cells, cell(r.fit_s, 1), cell(r.tune_s, 1), r.error or r.note]) + " |")
    return lines


def strong_verdict(strong: dict[int, dict[str, Result]]) -> list[str]:
    means = seed_means(strong, "ndcg@100")
    ours = {n: v for n, v in means.items() if n.startswith("ours") and not math.isnan(v)}
    ease_v = means.get("EASE (tuned)", math.nan)
    als_v = means.get("implicit ALS (tuned), recalculate_user", math.nan)
    if not ours or math.isnan(ease_v) or math.isnan(als_v):
        return []
    best = max(ours, key=ours.get)
    ratio = ours[best] / ease_v
    ok = ratio >= TARGET_STRONG_OVER_EASE and ours[best] > als_v
    needed = TARGET_STRONG_OVER_EASE * ease_v
    short = [] if ratio >= TARGET_STRONG_OVER_EASE else [f"{needed - ours[best]:.4f} short of the {needed:.4f} needed"]
    short += [] if ours[best] > als_v else [f"{als_v - ours[best]:.4f} below ALS"]
    return [
        f"- Strong generalisation target (our best fold-in NDCG@100 >= {TARGET_STRONG_OVER_EASE}x EASE's and above"
        f" ALS recalculate_user; means over seeds {', '.join(map(str, strong))}): {'met' if ok else 'NOT met'}"
        f" ({best}: {cell(ours[best])}, {ratio:.3f}x EASE's {cell(ease_v)}; ALS {cell(als_v)})"
        + (f": {', '.join(short)}." if short else ".")
    ]


def render(args, command: str, load_start: str, rating, ranking, strong=None) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        markers(section_tag(args))[0],
        "## Quality on MovieLens 100k: ours (defaults) vs the peers"
        + ("" if "rating" in args.tasks else f" ({', '.join(sorted(args.tasks))} only)"),
        "",
        f"- Date: {date}{' (QUICK smoke run: one fold, small grids; not the benchmark)' if args.quick else ''}",
        f"- Machine: {platform.platform()}; CPU {cpu_model()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}; load average (1/5/15 min) {load_start} at start, {load_avg()} at end",
        f"- Reproduce (from the repo root): `{command}`",
        "- Ours: `scripts/train.py --quiet --data TRAIN --out X` with no tuning flags, then `scripts/evaluate.py"
        " --checkpoint X --test TEST --json` (served through `ServingIndex`). Its fit s is the wall clock of the whole"
        " train.py process (start-up, reading the file, fitting, writing the checkpoint); notes give the pure fit.",
        "- Peers: fit s is the library's `fit` call only; tuning s is the grid search before it (on training data"
        " only).",
        "",
    ]
    if rating:
        lines += [
            "### Rating prediction: official folds u1..u5 (train uN.base, test uN.test)",
            "",
            *rating_table(*rating),
        ]
        lines += ["", f"Surprise SVD tuning grid (GridSearchCV, 3-fold CV on uN.base, RMSE): `{SVD_GRID}`.", ""]
    for seed, results in (ranking or {}).items():
        lines += [
            f"### Top-{K} ranking: u.data split per user at random, 75% train / 25% test (seed {seed})",
            "",
            "Training items excluded from each list; every held-out item relevant; users with no held-out item"
            " known to the model skipped. Definitions in `model/metrics.py` (nDCG as implicit's"
            " `ranking_metrics_at_k`; recall = hits / held-out items). nDCG ± its standard error over users.",
            "",
            *ranking_table(results),
            "",
        ]
    if ranking:
        lines += [
            *seed_summary(ranking, "ndcg", f"nDCG@{K}"),
            f"implicit grids, tuned on a per-user 75/25 split of the training part: ALS `{ALS_GRID}`;"
            f" BPR `{BPR_GRID}`; EASE lambda `{EASE_LAMBDAS}` on the same split.",
            "",
        ]
    for seed, results in (strong or {}).items():
        lines += [
            f"### Strong generalisation: {STRONG_USERS:.0%} of the users held out whole (seed {seed})",
            "",
            "Every model trains on the other users' rows; each held-out user's items are split at random,"
            f" {FOLD_IN:.0%} folded in (ours: `scripts/evaluate.py --fold-in`, through the service's"
            " `ServingIndex.score_history`),"
            " the rest scored (the same split for every model; history items never recommended). Recall@k = hits /"
            " min(k, held-out items), as in Liang et al. 2018.",
            "",
            *strong_table(results),
            "",
        ]
    if strong:
        lines += seed_summary(strong, "ndcg@100", "NDCG@100 (new users)")
    lines += [*verdicts(rating, ranking), *(strong_verdict(strong) if strong else []), markers(section_tag(args))[1]]
    return "\n".join(lines)


def section_tag(args) -> str:
    """The section a run replaces: ``quality`` for a run with the rating task, else one per set of tasks (a
    ranking-only run leaves the rating figures of the full run in place)."""
    return "quality" if "rating" in args.tasks else "quality-" + "-".join(sorted(args.tasks))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/datasets/ml-100k", help="MovieLens 100k folder (u.data, uN.*)")
    p.add_argument("--folds", default="1,2,3,4,5", help="official folds for the rating task (default: 1,2,3,4,5)")
    p.add_argument("--tasks", default="rating,ranking,strong", help="comma-separated: rating, ranking, strong")
    p.add_argument("--skip-peers", action="store_true", help="run only ours")
    p.add_argument("--quick", action="store_true", help="smoke run: fold 1 only, first two values of each grid")
    p.add_argument("--seed", default="0", help="seed(s) of the ranking and strong splits, e.g. 0,1,2 (default: 0)")
    p.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose quality section is replaced")
    args = p.parse_args(argv)
    try:
        args.folds = [int(f) for f in args.folds.split(",") if f.strip()]
    except ValueError:
        p.error("--folds must be comma-separated integers, e.g. 1,2,3")
    if not args.folds or any(not 1 <= f <= 5 for f in args.folds):
        p.error("--folds must name folds between 1 and 5")
    args.folds = args.folds[:1] if args.quick else args.folds
    try:
        args.seeds = [int(x) for x in str(args.seed).split(",") if x.strip()]
    except ValueError:
        p.error("--seed must be comma-separated integers, e.g. 0,1,2")
    args.tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    if not args.tasks or args.tasks - {"rating", "ranking", "strong"}:
        p.error("--tasks takes any of rating, ranking, strong")
    args.data_dir, args.output = REPO / args.data_dir, REPO / args.output
    needed = [args.data_dir / "u.data"] if args.tasks & {"ranking", "strong"} else []
    needed += (
        [args.data_dir / f"u{f}.{s}" for f in args.folds for s in ("base", "test")] if "rating" in args.tasks else []
    )
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        p.error(f"missing data files: {', '.join(missing)} (see --data-dir)")
    # A section whose peer rows all read "failed" says nothing: refuse before the run, not after it.
    absent = [] if args.skip_peers else [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        p.error(f"peer libraries not installed: {', '.join(absent)} (pip install -e '.[bench]', or --skip-peers)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_quality.py", *(sys.argv[1:] if argv is None else argv)])
    load_start, started = load_avg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        rating = rating_task(args, Path(tmp)) if "rating" in args.tasks else None
        ranking = (
            {seed: ranking_task(args, Path(tmp), seed) for seed in args.seeds} if "ranking" in args.tasks else None
        )
        strong = {seed: strong_task(args, Path(tmp), seed) for seed in args.seeds} if "strong" in args.tasks else None
    section = render(args, command, load_start, rating, ranking, strong)
    print(section)
    write_section(args.output, section, section_tag(args))
    log(f"wrote {args.output} after {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
