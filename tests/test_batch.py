"""scripts/recommend_batch.py: every user's top-k in a file, equal to what the real uWSGI's /recommend answers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, write_lines
from tests.test_uwsgi import call

_spec = importlib.util.spec_from_file_location("recommend_batch", REPO / "scripts" / "recommend_batch.py")
recommend_batch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recommend_batch)


def answers(rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """File rows -> user -> [(item, score)] in rank order (ranks checked to run 1..n)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        got = out.setdefault(str(row["user_id"]), [])
        assert row["rank"] == len(got) + 1
        got.append((str(row["item_id"]), float(row["score"])))
    return out


def test_every_users_file_equals_recommend_over_http(start_uwsgi, small_ckpt_path, small_ckpt, tmp_path):
    server = start_uwsgi(small_ckpt_path)
    parquet, csv = tmp_path / "recs.parquet", tmp_path / "recs.csv"
    cli = [sys.executable, str(REPO / "scripts" / "recommend_batch.py"), "--checkpoint", str(small_ckpt_path)]
    done = subprocess.run([*cli, "--out", str(parquet), "--k", "7", "--block", "16"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"wrote {7 * small_ckpt.num_users} rows for {small_ckpt.num_users} users" in done.stdout
    assert "ranking" in done.stderr and "writing" in done.stderr  # the progress bars
    assert recommend_batch.main(["--checkpoint", str(small_ckpt_path), "--out", str(csv), "--k", "7"]) == 0
    table = pq.read_table(parquet)
    assert table.schema.names == ["user_id", "rank", "item_id", "score"]
    from_parquet = answers(table.to_pylist())
    # CSV ids stay strings (the file's ids are u0, i3...; a numeric-looking id would be read back as a number).
    from_csv = answers(pacsv.read_csv(csv).to_pylist())
    assert list(from_parquet) == small_ckpt.user_ids  # every known user, in index order
    for user in small_ckpt.user_ids:
        status, _, body = call(server.base, f"/recommend?user_id={user}&k=7")
        assert status == 200
        served = [(item["item_id"], item["score"]) for item in body["items"]]
        assert from_parquet[user] == served, user  # same items, same order, bit-identical scores
        assert from_csv[user] == served, user


def test_listed_users_in_file_order_once_and_unknown_users_refused(small_ckpt_path, small_ckpt, tmp_path, capsys):
    users = small_ckpt.user_ids
    listed = write_lines(tmp_path / "users.txt", [users[5], "", users[2], f"  {users[5]}  ", users[9]])
    out = tmp_path / "some.parquet"
    args = ["--checkpoint", str(small_ckpt_path), "--out", str(out), "--k", "3", "--quiet"]
    assert recommend_batch.main([*args, "--users", str(listed)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["user_id"] for r in rows] == [users[5]] * 3 + [users[2]] * 3 + [users[9]] * 3

    out.unlink()
    with_unknown = write_lines(tmp_path / "unknown.txt", [users[0], "nobody", users[1]])
    assert recommend_batch.main([*args, "--users", str(with_unknown)]) == 2
    assert f"{with_unknown}:2: unknown user 'nobody'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".some.parquet*"))  # nothing written, no temporary left

    # The temporary was named .OUT.tmp-<pid>: a link planted there was written through (a shared /tmp).
    victim = write_lines(tmp_path / "victim.txt", ["keep me"])
    (tmp_path / f".some.parquet.tmp-{os.getpid()}").symlink_to(victim)
    assert recommend_batch.main([*args, "--users", str(with_unknown), "--skip-unknown"]) == 0
    assert victim.read_text() == "keep me\n"
    assert "skipped 1 unknown users" in capsys.readouterr().err
    assert sorted({r["user_id"] for r in pq.read_table(out).to_pylist()}) == sorted(users[:2])

    bom = tmp_path / "bom.txt"  # as Windows tools write it: the first id was '\ufeffu..', unknown or skipped
    bom.write_bytes(b"\xef\xbb\xbf" + f"{users[7]}\r\n{users[1]}\r\n".encode())
    assert recommend_batch.main([*args, "--users", str(bom)]) == 0
    assert [r["user_id"] for r in pq.read_table(out).to_pylist()][::3] == [users[7], users[1]]

    assert recommend_batch.main([*args, "--users", str(bom)], options={"filters": {}}) == 0  # no condition at all

    # --out naming an input (it was overwritten: exit 0, the id list replaced by recommendations)
    with pytest.raises(SystemExit) as stop:
        recommend_batch.main([*args[:2], "--out", str(listed.with_suffix(".csv")), "--users",
                              str(listed.rename(listed.with_suffix(".csv")))])  # fmt: skip
    assert stop.value.code == 2 and "is also an input" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "recs.json"], "the extension must be one of .parquet, .csv"),
        (["--out", "recs.csv", "--k", "0"], "--k must be between 1 and 1000"),
        (["--out", "no/such/dir/recs.csv"], "no such directory"),
    ],
)
def test_bad_arguments_exit_2(small_ckpt_path, extra, message, capsys):
    with pytest.raises(SystemExit) as stop:
        recommend_batch.main(["--checkpoint", str(small_ckpt_path), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_missing_checkpoint_or_users_file_exit_2(small_ckpt_path, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert recommend_batch.main(["--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(out), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()
    missing = ["--checkpoint", str(small_ckpt_path), "--out", str(out), "--users", str(tmp_path / "no.txt"), "--quiet"]
    assert recommend_batch.main(missing) == 2
    assert "no.txt: cannot read user ids" in capsys.readouterr().err and not out.exists()


def test_benchmark_script_writes_its_section(small_ckpt_path, small_ckpt, tmp_path):
    """scripts/benchmark_batch.py end to end on the tiny model (its 'scale' part takes any checkpoint)."""
    spec = importlib.util.spec_from_file_location("benchmark_batch", REPO / "scripts" / "benchmark_batch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    doc = write_lines(
        tmp_path / "benchmarks.md", ["# Benchmarks", "", "<!-- batch-scale:begin -->old<!-- batch-scale:end -->"]
    )
    args = ["--only", "scale", "--scale-checkpoint", str(small_ckpt_path), "--workdir", str(tmp_path / "w")]
    assert bench.main([*args, "--output", str(doc), "--note", "smoke"]) == 0
    text = doc.read_text()
    assert "old" not in text and text.count("<!-- batch-scale:begin -->") == 1
    assert f"| scale-parquet | `scripts/recommend_batch.py --checkpoint {small_ckpt_path}" in text
    assert f"| {small_ckpt.num_users:,} | {10 * small_ckpt.num_users:,} |" in text and "**smoke**" in text
