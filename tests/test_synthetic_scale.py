"""The MovieLens-20M-shaped generator at a tiny size: deterministic, well-formed, with planted structure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model.data import load_ratings
from model.interactions import build_dataset
from model.synthetic import MovieLensShape, as_raw, movielens_like, write_ratings
from tests.conftest import REPO

TINY = MovieLensShape(num_users=600, num_items=400, num_ratings=30_000, seed=5)


@pytest.fixture(scope="module")
def tiny():
    return movielens_like(TINY)


def test_same_seed_same_rows_other_seed_other_rows(tiny):
    again = movielens_like(TINY)
    for name in ("user_idx", "item_idx", "ratings", "timestamps"):
        assert np.array_equal(getattr(tiny, name), getattr(again, name)), name
    other = movielens_like(MovieLensShape(**{**vars(TINY), "seed": 6}))
    assert not np.array_equal(tiny.item_idx, other.item_idx)


def test_shape_of_the_rows(tiny):
    n = TINY.num_ratings
    assert len(tiny.ratings) == n and tiny.user_idx.dtype == np.int32 and tiny.ratings.dtype == np.float32
    pairs = tiny.user_idx.astype(np.int64) * TINY.num_items + tiny.item_idx
    assert len(np.unique(pairs)) == n  # no repeated (user, item)
    per_user = np.bincount(tiny.user_idx, minlength=TINY.num_users)
    assert per_user.min() >= TINY.min_per_user and per_user.max() <= 0.35 * TINY.num_items
    assert per_user.max() > 3 * np.median(per_user)  # a heavy log-normal tail (capped at 35% of items)
    assert set(np.unique(tiny.ratings).tolist()) <= {k / 2 for k in range(1, 11)}
    per_item = np.sort(np.bincount(tiny.item_idx, minlength=TINY.num_items))[::-1]
    assert per_item[:40].sum() > 0.3 * n and per_item[0] > 10 * np.median(per_item)  # a popular head (top 10%)
    same_user = np.diff(tiny.user_idx) == 0
    assert np.all(np.diff(tiny.user_idx) >= 0) and np.all(np.diff(tiny.timestamps)[same_user] > 0)


def test_planted_structure_beats_a_bias_only_baseline(tiny):
    """Biases fit by alternating means (the baseline the benchmarks use) vs the planted model."""
    u, i, r = tiny.user_idx, tiny.item_idx, tiny.ratings.astype(np.float64)
    mean, bu, bi = r.mean(), np.zeros(TINY.num_users), np.zeros(TINY.num_items)
    for _ in range(10):
        bi = np.bincount(i, r - mean - bu[u], TINY.num_items) / (np.bincount(i, minlength=TINY.num_items) + 5)
        bu = np.bincount(u, r - mean - bi[i], TINY.num_users) / (np.bincount(u, minlength=TINY.num_users) + 5)
    baseline = np.sqrt(np.mean((mean + bu[u] + bi[i] - r) ** 2))
    planted = np.sqrt(np.mean((tiny.expected() - r) ** 2))
    assert planted < 0.85 * baseline, (planted, baseline)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_written_file_reads_back_as_the_same_rows(tmp_path, tiny, suffix):
    path = write_ratings(tiny, tmp_path / f"ratings.{suffix}")
    raw = load_ratings(path)
    want = as_raw(tiny)
    assert np.array_equal(raw.ratings, want.ratings) and np.array_equal(raw.timestamps, want.timestamps)
    assert raw.user_ids[:50].tolist() == (tiny.user_idx[:50] + 1).astype(str).tolist()
    got_ds, want_ds = build_dataset(raw), build_dataset(want)
    assert got_ds.user_map.ids == want_ds.user_map.ids and got_ds.item_map.ids == want_ds.item_map.ids
    if suffix == "csv":
        assert path.read_text().startswith("userId,movieId,rating,timestamp\n")


def test_make_synthetic_cli(tmp_path):
    out = tmp_path / "r.csv"
    args = ["--out", str(out), "--users", "100", "--items", "80", "--ratings", "2000", "--seed", "1"]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(load_ratings(out)) == 2000
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--out", str(out),
                          "--users", "100", "--ratings", "50"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "do not fit" in bad.stderr


def make_synthetic(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_make_synthetic_writes_the_format_the_suffix_names_and_counts_what_it_wrote(tmp_path):
    """Any case of ``.parquet`` is Parquet (not CSV under that name), a missing directory is created (as
    train.py's ``--out``), and the summary counts the items in the file, not the catalogue asked for."""
    import pyarrow.parquet as pq

    out = tmp_path / "new" / "dir" / "r.PARQUET"
    proc = make_synthetic("--out", str(out), "--users", "50", "--items", "200", "--ratings", "2000", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)  # raises for a CSV file
    assert table.column_names == ["userId", "movieId", "rating", "timestamp"] and table.num_rows == 2000
    items = len(set(table.column("movieId").to_pylist()))
    assert items < 200 and f" 50 users, {items} items " in proc.stdout, proc.stdout
    assert [p.name for p in out.parent.iterdir()] == ["r.PARQUET"]
    csv = tmp_path / "r.CSV"
    assert make_synthetic("--out", str(csv), "--users", "50", "--items", "200", "--ratings", "2000").returncode == 0
    assert csv.read_text().startswith("userId,movieId,rating,timestamp\n")


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("directory", ["--users", "50", "--items", "200", "--ratings", "2000"], "is a directory"),
        ("r.csv.gz", ["--users", "50", "--items", "200", "--ratings", "2000"], "ending in .csv or .parquet"),
        ("r.txt", ["--users", "50", "--items", "200", "--ratings", "2000"], "ending in .csv or .parquet"),
        ("r.csv", ["--users", "10", "--items", "10", "--ratings", "200"], "--items 10: at least 20 items"),
        ("r.csv", ["--users", "10", "--items", "0", "--ratings", "200"], "--items 0: at least 20 items"),
    ],
)
def test_make_synthetic_refuses_what_it_cannot_write(tmp_path, case, flags, message):
    out = tmp_path / "r.csv"
    if case == "directory":
        out.mkdir()
    else:
        out = tmp_path / case
    proc = make_synthetic("--out", str(out), *flags)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["r.csv"] if case == "directory" else [])


def test_a_failed_write_leaves_no_temporary_file(tmp_path, tiny):
    """The rename fails (the name is a directory by then): the written temporary file is removed, not left."""
    (tmp_path / "r.csv").mkdir()
    with pytest.raises(OSError):
        write_ratings(tiny, tmp_path / "r.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"] and not list((tmp_path / "r.csv").iterdir())
