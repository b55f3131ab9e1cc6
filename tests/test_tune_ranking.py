"""scripts/tune_ranking.py on one's own file (--data), and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys

from model.synthetic import SyntheticConfig, planted_ratings
from tests.conftest import REPO, write_lines


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "tune_ranking.py"), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_tunes_on_a_rating_file_of_ones_own_and_refuses_bad_arguments(tmp_path):
    raw, _ = planted_ratings(SyntheticConfig(200, 60, 3, 15, seed=2))
    data = write_lines(tmp_path / "mine.csv", [f"{u},{i},{r:.2f}" for u, i, r in zip(raw.user_ids, raw.item_ids,
                                                                                         raw.ratings)])  # fmt: skip
    proc = run("--data", str(data), "--losses", "kinds")
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| kinds |")]
    assert len(table) == 3 and all(0.0 < float(line.split("|")[3]) <= 1.0 for line in table)  # ials, vae, dae
    bad = run("--data", str(data), "--losses", "ials,nope")
    assert bad.returncode == 2 and "no grid nope" in bad.stderr
    missing = run("--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "cannot read file" in missing.stderr and "Traceback" not in missing.stderr
