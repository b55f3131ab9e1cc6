"""Shared fixtures: small synthetic data with a known answer, a trained checkpoint, the app, uWSGI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from model import checkpoint
from model.interactions import build_dataset
from model.synthetic import SyntheticConfig, planted_ratings
from model.train import TrainConfig, fit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from _bench import free_port, live_workers, stop_uwsgi  # noqa: E402  (one home for starting and stopping uWSGI)

SMALL = SyntheticConfig(num_users=120, num_items=60, rank=3, ratings_per_user=20, noise=0.2, seed=1)


@pytest.fixture(scope="session")
def small_dataset():
    raw, _ = planted_ratings(SMALL)
    return build_dataset(raw)


@pytest.fixture(scope="session")
def small_ckpt_path(tmp_path_factory, small_dataset) -> Path:
    """A quickly trained MF checkpoint on :data:`SMALL` (shared by the whole session, read-only)."""
    # rank_loss="none": ranks by predicted rating, the behaviour the API tests were written against.
    config = TrainConfig(dim=8, epochs=15, lr=0.01, seed=0, rank_loss="none")
    result = fit(small_dataset.interactions, config, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    checkpoint.save(checkpoint.from_training(result, small_dataset), path)
    return path


@pytest.fixture(scope="session")
def small_ckpt(small_ckpt_path):
    return checkpoint.load(small_ckpt_path)


@pytest.fixture
def app(small_ckpt_path):
    from service import create_app

    return create_app({"CHECKPOINT": str(small_ckpt_path), "TESTING": True, "RELOAD_INTERVAL": 0})


@pytest.fixture
def client(app):
    return app.test_client()


class UwsgiServer:
    """The real uWSGI with the real uwsgi.ini, in its own process group, on a free loopback port."""

    def __init__(self, checkpoint_path: Path, log_path: Path, affinity: set[int] | None = None, **env: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        uwsgi = Path(sys.executable).parent / "uwsgi"
        environ = {
            **os.environ,
            "RECSYS_CHECKPOINT": str(checkpoint_path),
            "RECSYS_PORT": str(self.port),
            "RECSYS_HOST": "127.0.0.1",
            # uwsgi.ini's default, /tmp/recsys-metrics-<port>, would leave a directory in /tmp per test server
            "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / f"metrics-{self.port}"),
            **env,
        }
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(uwsgi), "--ini", str(REPO / "uwsgi.ini")],
            cwd=REPO,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if affinity is None else lambda: os.sched_setaffinity(0, affinity),
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uWSGI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"uWSGI not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        """The master's live worker processes (zombies excluded)."""
        return live_workers(self.proc.pid)

    def stop(self) -> None:
        """Stop it as ``docker stop`` does (``_bench.stop_uwsgi``: SIGTERM to the master alone, then KILL the group
        after a short grace): never wait out uWSGI's mercy."""
        stop_uwsgi(self.proc)
        self._log.close()


@pytest.fixture
def start_uwsgi(tmp_path):
    servers: list[UwsgiServer] = []

    def _start(checkpoint_path: Path, wait: bool = True, affinity: set[int] | None = None, **env: str) -> UwsgiServer:
        server = UwsgiServer(checkpoint_path, tmp_path / f"uwsgi-{len(servers)}.log", affinity, **env)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield _start
    for server in servers:
        server.stop()


FIGURES = REPO / "artifacts" / "reliability"


def record_figures(name: str, figures: dict) -> None:
    """Write a reliability test's figures (requests sent/failed, cases run...) to artifacts/reliability/NAME.json,
    so they can be quoted; also printed (``pytest -s`` shows them)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{name}: {json.dumps(figures)}")


def write_lines(path: Path, lines: list[str] | bytes) -> Path:
    path.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
