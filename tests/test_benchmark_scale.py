"""scripts/benchmark_scale.py end to end on a tiny MovieLens-shaped file (a few epochs, the real uWSGI and wrk),
and its pieces: reusing the data, the held-out split, the busy-host runs, the verdicts."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.synthetic import MovieLensShape
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("benchmark_scale", REPO / "scripts" / "benchmark_scale.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

TINY = ["--users", "300", "--items", "200", "--ratings", "8000", "--seed", "1"]


def table_row(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tiny_run_writes_a_section_with_real_figures(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- scale:begin -->\nstale\n<!-- scale:end -->\n\ntail\n")
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_scale.py"), *TINY, "--workdir", str(tmp_path / "w"),
           "--output", str(out), "--train-flags", "--epochs 2 --rank-epochs 2", "--wrk-seconds", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "stale" not in text and text.endswith("<!-- scale:end -->\n\ntail\n")
    assert "--ratings 8000" in text and f"{os.cpu_count()} cores" in text
    assert "(160 rows), the rest (7,840 rows) trains" in text  # 2% of 8,000 held out

    stages = {label: float(table_row(text, label)[1]) for label in ("rating model", "ranking head")}
    wall = float(table_row(text, "**wall, process start to exit**")[1])
    assert 0 < stages["rating model"] < wall and 0 <= stages["ranking head"] < wall  # one decimal: 0.0 on tiny data
    assert 0.05 < float(re.search(r"Peak RSS ([\d.]+) GB", text).group(1)) < 4

    ours, base = table_row(text, "ours (default)"), table_row(text, "bias-only baseline")
    rmse_ours, rmse_base = float(ours[1]), float(base[1])
    assert math.isfinite(rmse_ours) and 0.3 < rmse_ours < rmse_base * 1.5
    assert 0.3 < rmse_base < 1.5  # planted noise 0.6 plus half-star rounding
    implicit = next(ln for ln in text.splitlines() if ln.startswith("| implicit ALS"))
    assert "64 factors" in implicit or "not importable" in implicit

    ready = float(re.search(r"every worker's app loaded after ([\d.]+) s", text).group(1))
    assert 0 < ready < 120
    workers = [ln for ln in text.splitlines() if re.match(r"\| \d+ \| \d+ \| \d+ \|$", ln)]
    assert len(workers) == os.cpu_count()  # uwsgi.ini: one worker per core
    for row in workers:
        _, rss, pss = (int(cell) for cell in row.strip("|").split("|"))
        assert 0 < pss <= rss
    if shutil.which("wrk"):
        recommend = table_row(text, "recommend")
        assert float(recommend[1].replace(",", "")) > 0 and recommend[6] == "0"  # req/s, no failures
        assert float(recommend[2].rstrip("x")) > 0  # vs /healthz
    verdicts = [ln for ln in text.splitlines() if ln.startswith("- ") and "(target <=" in ln]
    assert len(verdicts) == 5 and all(ln.endswith(": met") or "MISSED by" in ln for ln in verdicts)
    assert "[this run is not at the 20M target size]" in verdicts[0]


def test_data_is_reused_for_the_same_shape_and_regenerated_for_another(tmp_path):
    shape = MovieLensShape(num_users=100, num_items=200, num_ratings=3000, seed=4)
    first = bs.prepare_data(shape, tmp_path)
    assert first["generated_s"] is not None
    train, test = first["train"].read_bytes(), first["test"].read_bytes()
    assert test.count(b"\n") - 1 == 60 and train.count(b"\n") - 1 == 2940  # 2% held out, headers
    again = bs.prepare_data(shape, tmp_path)
    assert again["generated_s"] is None and again["train"].read_bytes() == train
    other = bs.prepare_data(MovieLensShape(num_users=100, num_items=200, num_ratings=3000, seed=5), tmp_path)
    assert other["generated_s"] is not None and other["train"].read_bytes() != train


def test_holdout_is_deterministic_and_exact():
    a, b = bs.holdout_mask(10_000, 0), bs.holdout_mask(10_000, 0)
    assert a.sum() == 200 and np.array_equal(a, b) and not np.array_equal(a, bs.holdout_mask(10_000, 1))


def test_ml100k_fold_falls_back_to_80_percent_of_u_data(tmp_path):
    (tmp_path / "u.data").write_text("".join(f"{u}\t{u % 7}\t3\t{u}\n" for u in range(100)))
    fold, note = bs.ml100k_fold(tmp_path, tmp_path)
    assert fold.read_text().count("\n") == 80 and "no u1.base" in note
    (tmp_path / "u1.base").write_text("1\t1\t3\t1\n")
    assert bs.ml100k_fold(tmp_path, tmp_path)[0] == tmp_path / "u1.base"


def test_busy_check_stops_a_slow_run_and_its_competitor(tmp_path, monkeypatch):
    """The measured runs and the competing loop, with a stand-in for train.py: quiet and busy print their
    totals; ACTIVE sleeps past the timeout and is stopped; no competitor survives."""
    stand_in = (
        "import os, sys, time\n"
        "if 'competitor' in sys.argv[1]:\n"
        "    open(sys.argv[1] + '.pids', 'a').write(f'{os.getpid()}\\n')\n"
        "    time.sleep(60)\n"
        "if os.environ.get('OMP_WAIT_POLICY') == 'ACTIVE': time.sleep(30)\n"
        "print('total 0.5s, peak RSS 0.1 GB')\n"
    )
    monkeypatch.setattr(bs, "train_cmd", lambda data, out, flags: [sys.executable, "-c", stand_in, str(out)])
    runs = bs.busy_check(tmp_path / "fold", "", timeout=2.0, workdir=tmp_path)
    assert runs["quiet"]["total_s"] == 0.5 and runs["busy"]["total_s"] == 0.5 and runs["busy"]["code"] == 0
    assert runs["busy_active"]["code"] is None and 2.0 <= runs["busy_active"]["wall_s"] < 10
    competitors = (tmp_path / "competitor.ckpt.pids").read_text().split()
    assert len(competitors) == 2  # one per busy run, each stopped with its loop
    for pid in competitors:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "State:\tZ" in status.read_text(), f"competitor {pid} left running"


@pytest.mark.parametrize(
    ("got", "expected"),
    [(550.0, ": met"), (610.0, "MISSED by 10.0 s"), (math.nan, "not measured (target <= 600 s)")],
)
def test_verdict_lines(got, expected):
    assert bs.check("wall", got, 600.0, " s").endswith(expected)
