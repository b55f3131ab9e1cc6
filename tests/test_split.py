"""scripts/split.py: train and test files that read back as a partition of the rows, by each protocol."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest

from model.data import load_ratings
from model.synthetic import MovieLensShape, movielens_like, write_ratings
from tests.conftest import REPO, write_lines

_spec = importlib.util.spec_from_file_location("split_cli", REPO / "scripts" / "split.py")
split_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(split_cli)


@pytest.fixture(scope="module")
def ratings_csv(tmp_path_factory):
    shape = MovieLensShape(num_users=60, num_items=100, num_ratings=1500, seed=1)
    return write_ratings(movielens_like(shape), tmp_path_factory.mktemp("split") / "ratings.csv")


def rows(raw) -> Counter:
    return Counter(zip(raw.user_ids.tolist(), raw.item_ids.tolist(), raw.ratings.tolist(), raw.timestamps.tolist()))


@pytest.mark.parametrize("by", ["user", "random", "last", "users"])
def test_each_protocol_writes_a_partition_that_reads_back(ratings_csv, tmp_path, by, capsys):
    out = tmp_path / by
    assert split_cli.main(["--data", str(ratings_csv), "--out-dir", str(out), "--by", by, "--test", "0.25"]) == 0
    assert f"{by} split of {ratings_csv}" in capsys.readouterr().out
    whole, train, test = load_ratings(ratings_csv), load_ratings(out / "train.csv"), load_ratings(out / "test.csv")
    assert rows(train) + rows(test) == rows(whole) and len(test) > 0
    pairs = lambda raw: set(zip(raw.user_ids.tolist(), raw.item_ids.tolist()))  # noqa: E731
    assert not pairs(train) & pairs(test)
    users_train, users_test = set(train.user_ids.tolist()), set(test.user_ids.tolist())
    if by == "users":  # whole users: none on both sides, a quarter of them held out
        assert not users_train & users_test and len(users_test) == round(0.25 * len(set(whole.user_ids.tolist())))
    if by == "user":  # every user on both sides, about a quarter of each one's items held out
        assert users_test == users_train
        n_train, n_test = Counter(train.user_ids.tolist()), Counter(test.user_ids.tolist())
        assert all(abs(n_test[u] - 0.25 * (n_train[u] + n_test[u])) <= 0.5 for u in users_test)
    if by == "last":  # each user's newest row
        assert len(test) == len(users_test) == len(users_train)
        newest = {u: max(t for v, t in zip(whole.user_ids, whole.timestamps) if v == u) for u in users_test}
        assert all(t == newest[u] for u, t in zip(test.user_ids, test.timestamps))
    again = tmp_path / f"{by}-again"
    assert split_cli.main(["--data", str(ratings_csv), "--out-dir", str(again), "--by", by, "--test", "0.25"]) == 0
    assert (again / "test.csv").read_bytes() == (out / "test.csv").read_bytes(), "the same seed, the same split"


def test_ids_implicit_data_and_parquet_read_back_as_written(tmp_path):
    lines = ["user,item,timestamp", '"u,1",i1,3', '"u,1","i ""2""",4', "u2,i1,5", "u2,i3,6", "u3,i1,7", "u3,i2,8"]
    clicks = write_lines(tmp_path / "clicks.csv", lines)
    for parquet in (False, True):
        out = tmp_path / f"out-{parquet}"
        flags = ["--parquet"] if parquet else []
        assert split_cli.main(["--data", str(clicks), "--out-dir", str(out), "--by", "last", *flags]) == 0
        suffix = ".parquet" if parquet else ".csv"
        train, test = load_ratings(out / f"train{suffix}"), load_ratings(out / f"test{suffix}")
        assert train.implicit and test.implicit and rows(train) + rows(test) == rows(load_ratings(clicks))
        assert sorted(test.item_ids.tolist()) == ['i "2"', "i2", "i3"]


def test_bad_arguments_and_data_are_refused_before_anything_is_written(ratings_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        split_cli.main(["--data", str(ratings_csv), "--out-dir", str(tmp_path), "--test", "1.5"])
    assert info.value.code == 2 and "--test must be a fraction" in capsys.readouterr().err
    own = write_lines(tmp_path / "train.csv", ["u1,i1,4", "u1,i2,3", "u2,i1,5", "u2,i2,2"])
    with pytest.raises(SystemExit):  # train.csv in --out-dir would replace the data file itself
        split_cli.main(["--data", str(own), "--out-dir", str(tmp_path)])
    assert "is also an input" in capsys.readouterr().err and own.read_text().startswith("u1,i1,4")
    bad = write_lines(tmp_path / "bad.csv", ["u1,i1,4", "u2,i2,great"])
    assert split_cli.main(["--data", str(bad), "--out-dir", str(tmp_path / "never")]) == 2
    assert "bad.csv:2: rating is not a number" in capsys.readouterr().err and not (tmp_path / "never").exists()
    one = write_lines(tmp_path / "one.csv", ["u1,i1,4"])
    assert split_cli.main(["--data", str(one), "--out-dir", str(tmp_path / "none")]) == 2
    assert "left the test part empty" in capsys.readouterr().err and not np.any(list((tmp_path / "none").glob("*")))


def test_last_holds_the_newest_row_alone_and_a_line_break_in_an_id_needs_parquet(tmp_path, capsys):
    """Found by review: ``last`` holds out the newest row alone (as evaluate.py --last-out), so a pair's earlier row
    stays in train, where the docs said every protocol keeps a pair on one side; and an id holding a line break
    was written into a CSV the line reader refuses."""
    lines = ["user,item,rating,timestamp", "u1,i1,4,1", "u1,i2,3,2", "u1,i1,5,3", "u2,i1,4,1", "u2,i3,2,2"]
    data = write_lines(tmp_path / "rewatch.csv", lines)
    assert split_cli.main(["--data", str(data), "--out-dir", str(tmp_path / "s"), "--by", "last"]) == 0
    train, test = load_ratings(tmp_path / "s" / "train.csv"), load_ratings(tmp_path / "s" / "test.csv")
    assert ("u1", "i1", 5.0, 3) in rows(test) and ("u1", "i1", 4.0, 1) in rows(train)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user": ["a\nb", "c", "c"], "item": ["x", "y", "x"]}), tmp_path / "nl.parquet")
    capsys.readouterr()
    assert split_cli.main(["--data", str(tmp_path / "nl.parquet"), "--out-dir", str(tmp_path / "n")]) == 2
    assert "holds a line break" in capsys.readouterr().err and not (tmp_path / "n").exists()
    assert split_cli.main(["--data", str(tmp_path / "nl.parquet"), "--out-dir", str(tmp_path / "p"), "--parquet"]) == 0
