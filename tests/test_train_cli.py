"""scripts/train.py end to end as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from model import checkpoint
from model.synthetic import SyntheticConfig, planted_ratings
from tests.conftest import REPO


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--quiet", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_trains_on_a_csv_file_and_writes_a_checkpoint(tmp_path):
    raw, _ = planted_ratings(SyntheticConfig(num_users=50, num_items=30, ratings_per_user=10, seed=2))
    lines = ["user,item,rating"] + [f"{u},{i},{r:.2f}" for u, i, r in zip(raw.user_ids, raw.item_ids, raw.ratings)]
    data = tmp_path / "ratings.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.ckpt"
    proc = run_train("--data", str(data), "--out", str(out), "--dim", "4", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert "validation RMSE" in proc.stdout and str(out) in proc.stdout
    ckpt = checkpoint.load(out)
    assert ckpt.num_users == 50 and ckpt.num_items == 30 and ckpt.config.dim == 4
    assert ckpt.data["source"] == str(data)


def test_malformed_file_names_the_line_and_writes_nothing(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text("1,2,5\n1,3,4\n2,3,great\n")
    out = tmp_path / "m.ckpt"
    proc = run_train("--data", str(data), "--out", str(out))
    assert proc.returncode == 2
    assert f"{data}:3: rating is not a number: 'great'" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [data]


def test_bad_flags_are_rejected(tmp_path):
    proc = run_train("--dim", "0", "--out", str(tmp_path / "m.ckpt"))
    assert proc.returncode == 2 and "--dim" in proc.stderr
    proc = run_train("--model", "nope")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
