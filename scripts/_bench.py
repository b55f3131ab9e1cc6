"""Helpers shared by the benchmark scripts: the real uWSGI on a free loopback port, wrk and its output,
per-worker memory, a timed child process, the machine line, and the tagged sections of docs/benchmarks.md.

Imported by every ``scripts/benchmark_*.py`` (the scripts directory is ``sys.path[0]`` when a script runs; each
script also puts it there for importers such as the tests).
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.files import atomic_write  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uWSGI with the repo's uwsgi.ini serving ``ckpt`` on a free loopback port, in its own process group.

    Returns from the constructor once ``/readyz`` says ready (``ready_s`` seconds after the start), or
    raises ``RuntimeError`` after ``ready_timeout`` seconds or when uWSGI exits."""

    def __init__(self, ckpt: Path, log: Path, env: dict[str, str], ready_timeout: float = 300.0):
        self.port = free_port()
        self.log_path = log
        environ = {**os.environ, "RECSYS_CHECKPOINT": str(ckpt), "RECSYS_PORT": str(self.port),
                   # beside the log: uwsgi.ini's default, /tmp/recsys-metrics-<port>, stays behind after each run
                   "PROMETHEUS_MULTIPROC_DIR": str(log.parent / f"metrics-{self.port}"), **env}  # fmt: skip
        self.log = open(log, "wb")
        uwsgi = Path(sys.executable).parent / "uwsgi"
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(uwsgi), "--ini", str(REPO / "uwsgi.ini")],
            cwd=REPO,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + ready_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if json.loads(r.read())["ready"]:
                        self.ready_s = time.monotonic() - started
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"uWSGI did not become ready in {ready_timeout:.0f} s; see {log}")

    def workers(self) -> list[int]:
        """Pids of the live worker processes."""
        return sorted(live_workers(self.proc.pid))

    def stop(self) -> None:
        stop_uwsgi(self.proc)
        self.log.close()


def live_workers(master: int) -> set[int]:
    """The uWSGI master's live worker processes (a dead one it has not reaped yet, a zombie, is not one)."""
    found = set()
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:  # the master is gone
        return found
    for pid in children:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # reaped since
            continue
        if state != "Z":
            found.add(int(pid))
    return found


def stop_uwsgi(proc: subprocess.Popen, grace: float = 8.0) -> None:
    """Stop a uWSGI started in its own process group as ``docker stop`` and Kubernetes do, SIGTERM to the master
    alone (it sends its workers SIGINT), then KILL the whole group after ``grace`` seconds at most.

    Not SIGTERM to the whole group: a worker then gets two stop signals, and the second one, arriving inside
    uWSGI's exit() for the first, deadlocks it on glibc's exit lock until the master kills it 5 s later (README,
    Stopping). Once the workers are dead a second SIGTERM wakes the master, which otherwise notices them on its
    next once-a-second check."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
                if not live_workers(proc.pid):
                    os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group, if anything
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)


def process_memory_mib(pid: int) -> dict[str, float]:
    """``rss`` (VmRSS: shared pages counted in full) and ``pss`` (shared pages divided among the processes
    mapping them: the fair share of a memory-mapped checkpoint), MiB, from /proc."""
    out = {}
    for name, key, path in (("rss", "VmRSS:", "status"), ("pss", "Pss:", "smaps_rollup")):
        try:
            line = next(ln for ln in Path(f"/proc/{pid}/{path}").read_text().splitlines() if ln.startswith(key))
            out[name] = int(line.split()[1]) / 1024  # kB
        except (OSError, StopIteration):
            out[name] = float("nan")
    return out


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (/proc/PID/stat), summed; a process that has
    exited counts 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


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
    """wrk with one thread against the loopback port, requests made by the Lua ``script``. Failures are its
    non-2xx responses and connect/write/timeout errors; its 'read' errors are the server closing each
    connection after a whole response (uWSGI here has no keep-alive) and are not failures."""
    lua = workdir / "script.lua"
    lua.write_text(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}"]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd`` with stdout and stderr to ``log``; wall seconds, CPU seconds (user + system), peak RSS (GB, the
    child's ``ru_maxrss``), exit code (``None`` when stopped after ``timeout`` seconds) and the output."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    deadline = None if timeout is None else started + timeout
    while True:  # wait4 gives this child's own rusage; poll so a timeout can stop it
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            code = None
            break
        time.sleep(0.2)
    proc.returncode = code if code is not None else -9  # reaped here: keep Popen from waiting again
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
        "code": code,
        "output": log.read_text(errors="replace"),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_avg() -> str:
    """The 1, 5 and 15 minute load averages, ``1.23/0.45/0.67``."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    import torch  # only for its version: the scripts import it anyway

    return f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def markers(tag: str) -> tuple[str, str]:
    """The lines that open and close the tagged section ``tag`` of docs/benchmarks.md."""
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


def write_section(path: Path, section: str, tag: str) -> None:
    """Replace the ``<!-- tag:begin -->`` .. ``<!-- tag:end -->`` section of ``path`` with ``section`` (which carries
    the markers), or append it; a file with only one of the two markers, or them in the wrong order, is left as
    it is and the run stops with the reason (SystemExit), its section unwritten: fix the markers and rerun. Written
    through a temporary file, so an interrupted run leaves the old file."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = markers(tag)
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    elif begin in text or end in text:
        raise SystemExit(f"{path}: unbalanced {begin} / {end} markers; fix them by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
