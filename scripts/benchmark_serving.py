"""HTTP serving benchmark: the real uWSGI with the real uwsgi.ini, driven by wrk on loopback.

    .venv/bin/python scripts/benchmark_serving.py            # writes the serving section of docs/benchmarks.md

For each catalogue size it writes a synthetic checkpoint (random 64-d MF factors, 10k users with 20
seen items each), starts uWSGI on a free loopback port, and runs wrk against /recommend,
/predict (single and a batch of 100), /similar and the trivial /healthz route, in one run. Failures
are counted from wrk's non-2xx responses and its connect/write/timeout errors; its "read" errors are
the connection closes of a server without keep-alive and are not failures (every response is whole).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import checkpoint  # noqa: E402
from model.data import RawRatings  # noqa: E402
from model.interactions import build_dataset  # noqa: E402
from model.networks import build_network  # noqa: E402
from model.train import TrainConfig, TrainResult  # noqa: E402

NUM_USERS, SEEN_PER_USER, DIM = 10_000, 20, 64

LUA = {
    "recommend": 'request = function() return wrk.format("GET", '
    '"/recommend?user_id=u" .. math.random(0, {U}) .. "&k=10") end',
    "similar": 'request = function() return wrk.format("GET", '
    '"/similar?item_id=i" .. math.random(0, {I}) .. "&k=10") end',
    "predict": 'request = function() return wrk.format("POST", "/predict", {{["Content-Type"]="application/json"}}, '
    '\'{{"user_id": "u\' .. math.random(0, {U}) .. \'", "item_id": "i\' .. math.random(0, {I}) .. \'"}}\') end',
    "healthz": 'request = function() return wrk.format("GET", "/healthz") end',
}


def synthetic_checkpoint(num_items: int, path: Path, seed: int = 0) -> Path:
    """A checkpoint of the real format with random factors (serving cost does not depend on training)."""
    rng = np.random.default_rng(seed)
    # Every user rates SEEN_PER_USER random items, and every item is rated at least once (so the
    # catalogue has exactly num_items items).
    users = np.concatenate([np.repeat(np.arange(NUM_USERS), SEEN_PER_USER), rng.integers(0, NUM_USERS, num_items)])
    items = np.concatenate([rng.integers(0, num_items, NUM_USERS * SEEN_PER_USER), np.arange(num_items)])
    raw = RawRatings(
        np.array([f"u{u}" for u in users], dtype=object),
        np.array([f"i{i}" for i in items], dtype=object),
        rng.integers(1, 6, len(users)).astype(np.float32),
        np.zeros(len(users), np.int64),
        f"bench:{num_items}",
        "bench",
    )
    dataset = build_dataset(raw)
    cfg = TrainConfig(dim=DIM)
    net = build_network("mf", dataset.interactions.num_users, dataset.interactions.num_items, cfg, 3.5)
    result = TrainResult(net, cfg, 3.5, (1.0, 5.0), {"val_rmse": 0.0})
    return checkpoint.save(checkpoint.from_training(result, dataset), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ckpt: Path, log: Path, env: dict[str, str]):
        self.port = free_port()
        environ = {**os.environ, "RECSYS_CHECKPOINT": str(ckpt), "RECSYS_PORT": str(self.port), **env}
        self.log = open(log, "wb")
        uwsgi = Path(sys.executable).parent / "uwsgi"
        self.proc = subprocess.Popen(
            [str(uwsgi), "--ini", str(REPO / "uwsgi.ini")],
            cwd=REPO,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if json.loads(r.read())["ready"]:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"uWSGI did not become ready; see {log}")

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def parse_wrk(text: str) -> dict[str, float]:
    def seconds(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    out: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    out["requests"] = float(re.search(r"(\d+) requests in", text).group(1))
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s|m)\b", text)
        out[f"p{pct}_ms"] = seconds(m.group(1), m.group(2)) * 1000
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["failed_connections"] = float(int(m.group(1)) + int(m.group(3)) + int(m.group(4))) if m else 0.0
    return out


def run_wrk(port: int, script: str, seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    lua = workdir / "script.lua"
    lua.write_text(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}"]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


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


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def bench_size(num_items: int, routes: list[str], args, workdir: Path) -> dict[str, dict[str, float]]:
    ckpt = synthetic_checkpoint(num_items, workdir / f"bench-{num_items}.ckpt")
    server = Server(ckpt, workdir / f"uwsgi-{num_items}.log", {"RECSYS_RELOAD_INTERVAL": "5"})
    results = {}
    try:
        for route in routes:
            script = (
                batch_script(num_items)
                if route == "predict_batch100"
                else LUA[route].format(U=NUM_USERS - 1, I=num_items - 1)
            )
            run_wrk(server.port, script, 2, args.connections, workdir)  # warm-up
            results[route] = run_wrk(server.port, script, args.seconds, args.connections, workdir)
            print(num_items, route, results[route], flush=True)
    finally:
        server.stop()
    return results


def render(results: dict[int, dict[str, dict[str, float]]], args, command: str) -> str:
    lines = [
        "<!-- serving:begin -->",
        "## Serving throughput and latency (real uWSGI + wrk on loopback)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {machine()}",
        f"- command: `{command}`",
        f"- load: wrk 1 thread, {args.connections} connections, {args.seconds} s per route after a 2 s warm-up; "
        f"uWSGI with the repo's uwsgi.ini (processes = cores, no keep-alive); {DIM}-d factors, {NUM_USERS} users "
        f"with at least {SEEN_PER_USER} seen items each; load average at start {args.load_start}.",
        "- failures = non-2xx responses + failed connections (connect/write/timeout); wrk's 'read' errors are "
        "the server closing each connection after a whole response (no keep-alive) and are not failures.",
        "",
        "| items | route | req/s | vs /healthz | p50 ms | p99 ms | requests | failures |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, routes in results.items():
        base = routes.get("healthz", {}).get("rps")
        for route, r in routes.items():
            ratio = f"{r['rps'] / base:.2f}x" if base else "n/a"
            fails = int(r["non_2xx"] + r["failed_connections"])
            lines.append(
                f"| {size:,} | {route} | {r['rps']:,.0f} | {ratio} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {int(r['requests']):,} | {fails} |"
            )
    lines += ["", "<!-- serving:end -->"]
    return "\n".join(lines)


def write_section(path: Path, section: str, tag: str = "serving") -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items)")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(sizes):
            routes = (
                ["healthz", "recommend", "predict", "predict_batch100", "similar"]
                if i == 0
                else ["healthz", "recommend"]
            )
            results[size] = bench_size(size, routes, args, Path(tmp))
    command = "python scripts/benchmark_serving.py " + " ".join(sys.argv[1:])
    section = render(results, args, command.strip())
    write_section(Path(args.output), section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
