"""HTTP serving benchmark: the real uWSGI with the real uwsgi.ini, driven by wrk on loopback.

    .venv/bin/python scripts/benchmark_serving.py            # writes the serving section of docs/benchmarks.md
    .venv/bin/python scripts/benchmark_serving.py --model vae --sizes 10000 --history 50 \
        --routes recommend_history,recommend         # the vae section: fold-in of 50-item histories at 10k items

For each catalogue size it writes a synthetic checkpoint (64-d MF factors shaped like trained ones, 10k
users with 20 seen items each), starts uWSGI on a free loopback port, and runs wrk against /recommend
(known users, and fold-in of a new user's history), /predict (single and a batch of 100), /similar and
the trivial /healthz route, in one run (``--routes`` picks some; ``--model vae`` serves a Mult-VAE checkpoint
of the default vae sizes with random weights instead, whose fold-in runs its encoder per request), then
measures recall@10 of the served answers over HTTP. The items
carry metadata (a title, a year, genres drawn with MovieLens 100k's genre shares), so every answer carries
attributes, and ``recommend_filtered`` asks known users' top-10 with ``filter=genres:G``, G uniform over the
18 genres (from Drama, 43% of the items, to Fantasy, 1.3%: narrow filters run out of the top-N list and
scan). A subset of routes and sizes can be rerun into its own section of docs/benchmarks.md:

    .venv/bin/python scripts/benchmark_serving.py --sizes 10000 --routes healthz,recommend,recommend_filtered \
        --section serving-filters

Failures
are counted from wrk's non-2xx responses and its connect/write/timeout errors; its "read" errors are
the connection closes of a server without keep-alive and are not failures (every response is whole).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _bench import Server, machine, process_cpu_seconds, run_wrk, write_section  # noqa: E402

from model import checkpoint  # noqa: E402
from model.data import RawRatings  # noqa: E402
from model.interactions import build_dataset  # noqa: E402
from model.items import build as build_attributes  # noqa: E402
from model.networks import build_network  # noqa: E402
from model.synthetic import MovieLensShape, clustered_factors, movielens_like  # noqa: E402
from model.train import TrainConfig, TrainResult, fit, resolve  # noqa: E402
from service.index import ServingIndex  # noqa: E402

NUM_USERS, SEEN_PER_USER, DIM = 10_000, 20, 64
# Share of MovieLens 100k's 1,682 movies in each genre (u.item), used as each synthetic item's chance of it.
GENRE_SHARES = {
    "Drama": 0.431, "Comedy": 0.300, "Thriller": 0.149, "Action": 0.149, "Romance": 0.147, "Adventure": 0.080,
    "Children's": 0.073, "Crime": 0.065, "Sci-Fi": 0.060, "Horror": 0.055, "War": 0.042, "Mystery": 0.036,
    "Musical": 0.033, "Documentary": 0.030, "Animation": 0.025, "Western": 0.016, "Film-Noir": 0.014,
    "Fantasy": 0.013,
}  # fmt: skip
GENRES = list(GENRE_SHARES)

LUA = {
    "recommend": 'request = function() return wrk.format("GET", '
    '"/recommend?user_id=u" .. math.random(0, {U}) .. "&k=10") end',
    "similar": 'request = function() return wrk.format("GET", '
    '"/similar?item_id=i" .. math.random(0, {I}) .. "&k=10") end',
    "predict": 'request = function() return wrk.format("POST", "/predict", {{["Content-Type"]="application/json"}}, '
    '\'{{"user_id": "u\' .. math.random(0, {U}) .. \'", "item_id": "i\' .. math.random(0, {I}) .. \'"}}\') end',
    "healthz": 'request = function() return wrk.format("GET", "/healthz") end',
    "recommend_filtered": "genres = {{{G}}}\n"
    'request = function() return wrk.format("GET", "/recommend?user_id=u" .. math.random(0, {U}) .. '
    '"&k=10&filter=genres:" .. genres[math.random(1, #genres)]) end',
}
ALL_ROUTES = [
    "healthz", "recommend", "recommend_filtered", "recommend_history", "predict", "predict_batch100", "similar",
]  # fmt: skip
LARGE_ROUTES = ["healthz", "recommend", "recommend_history"]  # past the first size


def synthetic_dataset(num_items: int, seed: int = 0):
    """Every user rates SEEN_PER_USER random items, and every item is rated at least once (so the catalogue has
    exactly num_items items); the rows' order is their time order."""
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.repeat(np.arange(NUM_USERS), SEEN_PER_USER), rng.integers(0, NUM_USERS, num_items)])
    items = np.concatenate([rng.integers(0, num_items, NUM_USERS * SEEN_PER_USER), np.arange(num_items)])
    raw = RawRatings(
        np.array([f"u{u}" for u in users], dtype=object),
        np.array([f"i{i}" for i in items], dtype=object),
        rng.integers(1, 6, len(users)).astype(np.float32),
        np.arange(len(users), dtype=np.int64),
        f"bench:{num_items}",
        "bench",
    )
    return build_dataset(raw), rng


def synthetic_checkpoint(num_items: int, path: Path, seed: int = 0, kind: str = "mf") -> Path:
    """A checkpoint of the real format with synthetic factors shaped like trained ones (serving cost does
    not depend on training): clustered rank-16 factors in 64-d with varying norms and item biases, the
    recipe of ``scripts/benchmark_ann.py``. Random-init factors would be the worst case for HNSW.
    Another ``kind`` (``--model vae|sasrec``): an untrained network of the kind's default sizes (serving cost
    does not depend on the weights); a vae's known users get their codes as training stores them."""
    dataset, rng = synthetic_dataset(num_items, seed)
    if kind != "mf":
        torch.manual_seed(seed)
        inter = dataset.interactions
        cfg = resolve(TrainConfig(model=kind), implicit=False, num_rows=len(inter))
        net = build_network(kind, inter.num_users, inter.num_items, cfg).eval()
        if kind == "vae":
            net.encode_users(inter)
        result = TrainResult(net, cfg, 3.5, (1.0, 5.0), {"val_ndcg10": 0.0})
        return checkpoint.save(checkpoint.from_training(result, dataset, synthetic_attributes(dataset, rng)), path)
    cfg = TrainConfig(dim=DIM)
    net = build_network("mf", dataset.interactions.num_users, dataset.interactions.num_items, cfg, 3.5)
    factors = clustered_factors(rng, DIM)  # the recipe of scripts/benchmark_ann.py
    with torch.no_grad():
        net.user_factors.weight.copy_(torch.from_numpy(factors(dataset.interactions.num_users)))
        net.item_factors.weight.copy_(torch.from_numpy(factors(dataset.interactions.num_items)))
        net.item_bias.weight.copy_(torch.from_numpy(0.3 * rng.normal(size=(num_items, 1)).astype(np.float32)))
    result = TrainResult(net, cfg, 3.5, (1.0, 5.0), {"val_rmse": 0.0})
    return checkpoint.save(checkpoint.from_training(result, dataset, synthetic_attributes(dataset, rng)), path)


TRAINED_CACHE = REPO / "artifacts" / "benchmark_serving"


def trained_checkpoint(num_items: int, kind: str, epochs: int, seed: int = 0) -> Path:
    """``--trained``: the kind trained (its defaults, ``epochs`` epochs) on MovieLens-shaped synthetic rows
    (``model.synthetic.movielens_like``: Zipf popularity, log-normal activity, ~50 items per user; every item
    rated at least once) under the benchmark's ids. Trained item vectors are far from isotropic, which the
    exact pruned top-k (``service/pruned.py``) uses and random weights would not show. Kept under
    ``artifacts/benchmark_serving/`` and reused by later runs with the same arguments (training takes minutes)."""
    path = TRAINED_CACHE / f"{kind}-{num_items}-{epochs}-{seed}.ckpt"
    if path.exists():
        print(f"reusing {path}", flush=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = MovieLensShape(num_users=NUM_USERS, num_items=num_items, num_ratings=50 * NUM_USERS, seed=seed)
    data = movielens_like(shape)
    rng = np.random.default_rng(seed)
    missing = np.setdiff1d(np.arange(num_items), data.item_idx)  # one row each, by a random user
    users = np.concatenate([data.user_idx, rng.integers(0, NUM_USERS, len(missing))])
    items = np.concatenate([data.item_idx, missing])
    raw = RawRatings(
        np.array([f"u{u}" for u in users], dtype=object),
        np.array([f"i{i}" for i in items], dtype=object),
        np.concatenate([data.ratings, np.full(len(missing), 3.0, np.float32)]),
        np.concatenate([data.timestamps, np.full(len(missing), data.timestamps.max() + 1)]),
        f"bench-trained:{num_items}:{seed}",
        "bench",
    )
    dataset = build_dataset(raw)
    started = time.monotonic()
    result = fit(dataset.interactions, TrainConfig(model=kind, epochs=epochs, seed=seed), progress=False)
    print(f"trained {kind} on {len(users):,} rows in {time.monotonic() - started:.0f} s", flush=True)
    return checkpoint.save(checkpoint.from_training(result, dataset, synthetic_attributes(dataset, rng)), path)


def synthetic_attributes(dataset, rng: np.random.Generator):
    """A title, a year and genres per item (each genre with its MovieLens 100k share; Drama when none drawn)."""
    ids = dataset.item_map.ids
    drawn = rng.random((len(ids), len(GENRES))) < np.array(list(GENRE_SHARES.values()))
    rows = {}
    for idx, item in enumerate(ids):
        genres = [g for g, on in zip(GENRES, drawn[idx]) if on] or ["Drama"]
        rows[idx] = [[f"Movie {item}"], [str(1950 + idx % 70)], genres]
    return build_attributes(["title", "year", "genres"], ["str", "int", "list"], rows, len(ids))


def batch_script(num_items: int, size: int = 100, variants: int = 50) -> str:
    rng = np.random.default_rng(1)
    bodies = [
        json.dumps(
            {
                "pairs": [
                    {"user_id": f"u{rng.integers(NUM_USERS)}", "item_id": f"i{rng.integers(num_items)}"}
                    for _ in range(size)
                ]
            }
        )
        for _ in range(variants)
    ]
    lua_bodies = ",".join("[[" + b + "]]" for b in bodies)
    return (
        f'bodies = {{{lua_bodies}}}\nrequest = function() return wrk.format("POST", "/predict", '
        f'{{["Content-Type"]="application/json"}}, bodies[math.random(1, #bodies)]) end'
    )


# Items per POST /recommend history by default; a sequence kind reads them in order.
HISTORY_SIZE = {"mf": 20, "vae": 20, "sasrec": 50}


def history_bodies(num_items: int, variants: int = 200, size: int = 20, seed: int = 2) -> list[dict]:
    """Fold-in requests: new users described by ``size`` random items (the live top-k path: no list)."""
    rng = np.random.default_rng(seed)
    return [
        {"history": [f"i{i}" for i in rng.choice(num_items, size, replace=False)], "k": 10} for _ in range(variants)
    ]


def history_script(num_items: int, size: int) -> str:
    lua_bodies = ",".join("[[" + json.dumps(b) + "]]" for b in history_bodies(num_items, size=size))
    return (
        f'bodies = {{{lua_bodies}}}\nrequest = function() return wrk.format("POST", "/recommend", '
        f'{{["Content-Type"]="application/json"}}, bodies[math.random(1, #bodies)]) end'
    )


def http_json(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def recall_at_10(port: int, ckpt: Path, num_items: int, history: int = 20, users: int = 200) -> dict[str, float]:
    """Recall@10 of what the server answers against exact ranking (numpy over every item, seen excluded),
    for known users (GET) and for fold-in histories (POST)."""
    exact = ServingIndex(checkpoint.load(ckpt), prune_min_items=0)  # no ANN, no lists: a full scan per query
    rng = np.random.default_rng(3)
    got_known = want_known = 0
    for u in rng.choice(NUM_USERS, users, replace=False):
        served = {x["item_id"] for x in http_json(port, f"/recommend?user_id=u{u}&k=10")["items"]}
        truth = set(exact.recommend(f"u{u}", 10).item_ids)
        got_known, want_known = got_known + len(served & truth), want_known + len(truth)
    got_hist = want_hist = 0
    for body in history_bodies(num_items, size=history)[:users]:
        served = {x["item_id"] for x in http_json(port, "/recommend", body)["items"]}
        truth = set(exact.recommend_for_history(body["history"], 10).item_ids)
        got_hist, want_hist = got_hist + len(served & truth), want_hist + len(truth)
    got_filt = want_filt = 0
    for u in rng.choice(NUM_USERS, users, replace=False):
        genre = GENRES[int(rng.integers(len(GENRES)))]
        path = f"/recommend?user_id=u{u}&k=10&filter=genres:{urllib.parse.quote(genre)}"
        answer = http_json(port, path)["items"]
        assert all(genre in x["attributes"]["genres"] for x in answer), (path, answer)
        served = [x["item_id"] for x in answer]
        truth = set(exact.recommend(f"u{u}", 10, filters={"genres": [genre]}).item_ids)
        got_filt, want_filt = got_filt + len(set(served) & truth), want_filt + len(truth)
    return {
        "recommend": got_known / want_known,
        "recommend_history": got_hist / want_hist,
        "recommend_filtered": got_filt / want_filt,
    }


def bench_size(num_items: int, routes: list[str], args, workdir: Path) -> dict[str, dict[str, float]]:
    if args.trained:
        ckpt = trained_checkpoint(num_items, args.model, args.trained)
    else:
        ckpt = synthetic_checkpoint(num_items, workdir / f"bench-{num_items}.ckpt", kind=args.model)
    started = time.monotonic()
    # Ready includes building the HNSW index and the top-N lists (100k items and up), cached beside the file.
    server = Server(ckpt, workdir / f"uwsgi-{num_items}.log", {"RECSYS_RELOAD_INTERVAL": "5"})
    ready_s = time.monotonic() - started
    rounds: dict[str, list[dict[str, float]]] = {route: [] for route in routes}
    try:
        scripts = {}
        for route in routes:
            if route == "predict_batch100":
                scripts[route] = batch_script(num_items)
            elif route == "recommend_history":
                scripts[route] = history_script(num_items, args.history)
            else:
                genres = ",".join(f'"{urllib.parse.quote(g)}"' for g in GENRES)
                scripts[route] = LUA[route].format(U=NUM_USERS - 1, I=num_items - 1, G=genres)
            run_wrk(server.port, scripts[route], 2, args.connections, workdir)  # warm-up
        # Rounds over all routes in turn, so a slow spell of the shared 2-core machine hits every route alike;
        # each route's ratio to /healthz is taken within its round.
        for round_no in range(args.rounds):
            for route in routes:
                workers = server.workers()
                cpu = process_cpu_seconds(workers)
                sample = run_wrk(server.port, scripts[route], args.seconds, args.connections, workdir)
                sample["worker_us"] = (process_cpu_seconds(workers) - cpu) / max(sample["requests"], 1) * 1e6
                rounds[route].append(sample)
                print(num_items, f"round {round_no + 1}", route, rounds[route][-1], flush=True)
        results = {route: summarize(samples, rounds["healthz"]) for route, samples in rounds.items()}
        for route, recall in recall_at_10(server.port, ckpt, num_items, args.history).items():
            if route in results:
                results[route]["recall10"] = recall
        results["healthz"]["ready_s"] = ready_s
    finally:
        server.stop()
    return results


def summarize(samples: list[dict[str, float]], healthz: list[dict[str, float]]) -> dict[str, float]:
    """Median req/s and median ratio to /healthz of the same round (with their range), median p50, worst p99,
    and the requests and failures of every round together."""
    ratios = [s["rps"] / h["rps"] for s, h in zip(samples, healthz)]
    return {
        "rps": float(np.median([s["rps"] for s in samples])),
        "ratio": float(np.median(ratios)),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "p50_ms": float(np.median([s["p50_ms"] for s in samples])),
        "worker_us": float(np.median([s["worker_us"] for s in samples])),
        "p99_ms": max(s["p99_ms"] for s in samples),
        "requests": sum(s["requests"] for s in samples),
        "non_2xx": sum(s["non_2xx"] for s in samples),
        "failed_connections": sum(s["failed_connections"] for s in samples),
    }


def check(label: str, got: float, target: float, higher: bool, unit: str = "", digits: int = 2,
          inclusive: bool = False) -> str:  # fmt: skip
    """``label got (target: met)``, or ``NOT met, missed by ...``: a missed target always says how far.
    ``higher``: at least ``target``; else below it (``inclusive``: at most it)."""
    ok = got >= target if higher else got <= target if inclusive else got < target
    sign = ">=" if higher else "<=" if inclusive else "<"
    miss = "" if ok else f", missed by {abs(got - target):.{digits}f}{unit}"
    return f"{label} {got:.{digits}f}{unit} (target {sign} {target:g}{unit}: {'met' if ok else 'NOT met'}{miss})"


def verdicts(results: dict[int, dict[str, dict[str, float]]], args) -> list[str]:
    """The issue's targets against this run: met, or by how much they are missed."""
    out = []
    small = results.get(10_000, {}).get("recommend")
    folded = results.get(10_000, {}).get("recommend_history")
    if folded and args.model == "vae":
        out.append(
            f"- 10,000 items, vae `POST /recommend` with a {args.history}-item history: "
            + check("throughput", folded["ratio"], 0.5, True, "x")
            + "; "
            + check("p99", folded["p99_ms"], 5.0, False, " ms")
            + "."
        )
    if small:
        out.append(
            "- 10,000 items, `/recommend`: "
            + check("throughput", small["ratio"], 0.8, True, "x")
            + "; "
            + check("p99", small["p99_ms"], 5.0, False, " ms")
            + "."
        )
    filtered = results.get(10_000, {}).get("recommend_filtered")
    if filtered:
        verdict = check("throughput", filtered["ratio"], 0.6, True, "x")
        out.append(f"- 10,000 items, `/recommend` with a genre filter (known users): {verdict}.")
    big = results.get(1_000_000, {})
    for route, what in (
        ("recommend", "known users (top-100 lists searched from HNSW)"),
        ("recommend_history", "fold-in (a live HNSW search per request)"),
    ):
        r = big.get(route)
        if r:
            out.append(
                f"- 1,000,000 items, {what}: "
                + check("p99", r["p99_ms"], 3.0, False, " ms")
                + "; "
                + check("recall@10", r["recall10"], 0.97, True, digits=4)
                + "; "
                + check("throughput", r["ratio"], 0.7, True, "x")
                + "."
            )
    return out


def section_name(args) -> str:
    """The docs section a run replaces: ``--section``, or for the vae run its own beside the mf one."""
    if args.section != "serving" or args.model == "mf":
        return args.section
    return f"serving-{args.model}" + ("-trained" if args.trained else "")


def sequence_verdicts(results: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Issue 11's targets for a sasrec checkpoint at 10,000 items."""
    r = results.get(10_000, {})
    out = []
    if "recommend" in r:
        out.append(f"- GET /recommend, known users: {check('throughput', r['recommend']['ratio'], 0.8, True, 'x')}.")
    if "recommend_history" in r:
        h = r["recommend_history"]
        p99 = check("p99", h["p99_ms"], 10.0, False, " ms", inclusive=True)
        out.append(f"- POST /recommend, 50-item history: {p99}; {check('throughput', h['ratio'], 0.3, True, 'x')}.")
    return out


def served_model(args) -> str:
    """What the checkpoint is, for the section's load line."""
    if args.trained:
        rows = "MovieLens-shaped rows (50 per user on average, at least 20; every item rated at least once)"
        return f"the {args.model}'s default sizes trained {args.trained} epochs on {NUM_USERS} users' {rows}"
    if args.model != "mf":
        return f"an untrained {args.model} of its default sizes, {NUM_USERS} users with {SEEN_PER_USER} seen items each"
    return f"{DIM}-d factors, {NUM_USERS} users with at least {SEEN_PER_USER} seen items each"


def render(results: dict[int, dict[str, dict[str, float]]], args, command: str) -> str:
    title = "" if args.section == "serving" else f" ({args.section}: a subset of the routes)"
    lines = [
        f"<!-- {section_name(args)}:begin -->",
        f"## Serving throughput and latency (real uWSGI + wrk on loopback){title}"
        + ("" if args.model == "mf" else f": a {args.model} checkpoint, {args.history}-item histories")
        + (f", trained {args.trained} epochs on MovieLens-shaped synthetic rows" if args.trained else ""),
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {machine()}",
        f"- command: `{command}`",
        f"- load: wrk 1 thread, {args.connections} connections, {args.rounds} rounds of {args.seconds} s per route "
        "(routes in turn within a round) after a 2 s warm-up of each; "
        f"uWSGI with the repo's uwsgi.ini (processes = cores, no keep-alive); {served_model(args)}; fold-in "
        f"histories of {args.history} items; load average at start {args.load_start}.",
        "- failures = non-2xx responses + failed connections (connect/write/timeout); wrk's 'read' errors are "
        "the server closing each connection after a whole response (no keep-alive) and are not failures.",
        "",
        "- recall@10: of 200 known users' `/recommend` answers (GET, from the precomputed lists where there are "
        f"some) and 200 fold-in answers (`POST /recommend`, {args.history}-item histories: always a live search) "
        "over HTTP, "
        "against exact ranking of every item with the same exclusions. `recommend_history` is the live top-k "
        "path: an exact numpy scan at 10k items (the pruned one of service/pruned.py where the vectors allow it, "
        "`RECSYS_PRUNE_MIN_ITEMS`), an HNSW search (faiss, efSearch 128) from 100k. "
        "`recommend_filtered`: 200 known users' top-10 with a random genre filter against exact filtered ranking "
        "(every answer also checked to hold only the genre).",
        "- ready s: from starting uWSGI to /readyz answering, including building and caching the HNSW index "
        "and every user's top-N list (scanned in each worker, 100-1,000 items long by default; searched from HNSW "
        "by the first worker and mapped by the others).",
        "",
        "- req/s and p50: median over the rounds; vs /healthz: median of each round's ratio (range over the rounds "
        "in brackets); p99: the worst round's; requests and failures: all rounds.",
        "- worker CPU: the uWSGI workers' user + system CPU time (/proc) per request served, median over the rounds, "
        "and in brackets what the route adds to /healthz's (the framework's own cost: HTTP, Flask, telemetry). "
        "wrk and the kernel's loopback TCP take CPU from the same 2 cores besides.",
        "",
        "| items | route | req/s | vs /healthz | p50 ms | p99 ms | worker CPU us/req | requests | failures "
        "| recall@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, routes in results.items():
        for route, r in routes.items():
            ratio = f"{r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            fails = int(r["non_2xx"] + r["failed_connections"])
            recall = f"{r['recall10']:.4f}" if "recall10" in r else ""
            name = f"{route} (ready {r['ready_s']:.0f} s)" if "ready_s" in r else route
            extra = r["worker_us"] - routes["healthz"]["worker_us"] if "healthz" in routes else float("nan")
            cpu = f"{r['worker_us']:.0f}" + ("" if route == "healthz" else f" (+{extra:.0f})")
            lines.append(
                f"| {size:,} | {name} | {r['rps']:,.0f} | {ratio} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cpu} "
                f"| {int(r['requests']):,} | {fails} | {recall} |"
            )
    judged = verdicts(results, args) if args.model != "sasrec" else sequence_verdicts(results)
    lines += ["", *judged, *([f"- {args.note}"] if args.note else []), "", f"<!-- {section_name(args)}:end -->"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items)")
    p.add_argument("--seconds", type=int, default=10, help="seconds per route per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all routes (medians are reported)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--routes", help=f"only these routes, comma-separated (healthz is always run: the ratios' base); "
                   f"default: {','.join(ALL_ROUTES)} at the first size, {','.join(LARGE_ROUTES)} past it")  # fmt: skip
    p.add_argument("--section", default="serving", help="the tagged section of --output to (re)write (default serving)")
    p.add_argument("--note", default="", help="a line about the conditions, written under the table (e.g. the load)")
    p.add_argument("--model", "--kind", dest="model", default="mf", choices=("mf", "vae", "sasrec"),
                   help="the checkpoint served: mf (trained-like factors) or an untrained vae or sasrec of the "
                   "kind's default sizes, each with its own section (default: mf)")  # fmt: skip
    p.add_argument("--history", type=int, help="items in each fold-in history (default: 20; sasrec 50)")
    p.add_argument("--trained", type=int, default=0, metavar="EPOCHS",
                   help="vae or sasrec: serve the kind trained for EPOCHS epochs on MovieLens-shaped synthetic rows "
                   "instead of random weights (its own section, serving-KIND-trained)")  # fmt: skip
    args = p.parse_args()
    if args.history is None:
        args.history = HISTORY_SIZE[args.model]
    if args.trained and args.model == "mf":
        p.error(
            "--trained is for --model vae or sasrec (the mf checkpoint's factors are already shaped like trained ones)"
        )
    if args.model != "mf" and args.sizes == p.get_default("sizes"):
        args.sizes = "10000"
    if shutil.which("wrk") is None:
        print("error: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(sizes):
            routes = ALL_ROUTES if i == 0 else LARGE_ROUTES
            if args.routes:
                routes = ["healthz", *(r for r in args.routes.split(",") if r != "healthz")]
            results[size] = bench_size(size, routes, args, Path(tmp))
    command = "python scripts/benchmark_serving.py " + shlex.join(sys.argv[1:])
    section = render(results, args, command.strip())
    write_section(Path(args.output), section, section_name(args))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
