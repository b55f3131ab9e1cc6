"""scripts/train.py end to end as a user runs it."""

from __future__ import annotations

import importlib.util
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

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


def _tiny_csv(tmp_path, implicit: bool = False):
    raw, _ = planted_ratings(SyntheticConfig(num_users=40, num_items=25, ratings_per_user=8, seed=3))
    if implicit:
        lines = [f"{u},{i}" for u, i in zip(raw.user_ids, raw.item_ids)]
    else:
        lines = [f"{u},{i},{r:.2f}" for u, i, r in zip(raw.user_ids, raw.item_ids, raw.ratings)]
    data = tmp_path / ("implicit.csv" if implicit else "ratings.csv")
    data.write_text("\n".join(lines) + "\n")
    return data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gmf", "--loss", "mse"], "--loss mse needs --model mf"),
        (["--loss", "bpr", "--rank-loss", "softmax"], "--loss bpr already ranks"),
        (["--model", "neumf", "--rank-loss", "bce"], "--rank-loss needs --model mf"),
        (["--loss", "bce", "--negatives", "0"], "needs sampled negatives"),
        (["--model", "neumf", "--layers", "64"], "layers needs at least two"),
        (["--optimizer", "adagrad", "--momentum", "0.9"], "--momentum applies to sgd"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--optimizer", "rmsprop"], "invalid choice"),
    ],
)
def test_nonsensical_flag_combinations_exit_2(tmp_path, capsys, args, message):
    """In-process (the CLI's main), so the many cases cost no interpreter start each."""
    data = _tiny_csv(tmp_path)
    try:
        code = _train_module().main(["--quiet", "--data", str(data), "--out", str(tmp_path / "m.ckpt"), *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize("out", ["DATA", "DIR", "DATA/m.ckpt", "", "x" * 240 + ".ckpt"])
def test_an_out_that_cannot_be_written_exits_2_before_training(tmp_path, capsys, out):
    """--out the same file as --data replaced the ratings by the checkpoint (exit 0); a directory, a path under a
    file, an empty name or one too long for the temporary file beside it failed after training with a traceback."""
    data = _tiny_csv(tmp_path)
    before = data.read_bytes()
    (tmp_path / "DIR").mkdir()
    out = out.replace("DATA", str(data)).replace("DIR", str(tmp_path / "DIR"))
    out = str(tmp_path / out) if out.startswith("x") else out  # fits, but not with the temporary name's extra
    with pytest.raises(SystemExit) as exit_:
        _train_module().main(["--quiet", "--data", str(data), "--out", out])
    assert exit_.value.code == 2 and "--out: " in capsys.readouterr().err
    assert data.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["DIR", data.name]


def _train_module():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mse_on_implicit_data_and_missing_gpu_exit_2(tmp_path):
    data = _tiny_csv(tmp_path, implicit=True)
    proc = run_train("--data", str(data), "--out", str(tmp_path / "m.ckpt"), "--loss", "mse")
    assert proc.returncode == 2 and "needs ratings" in proc.stderr
    if not torch.cuda.is_available():
        proc = run_train("--data", str(data), "--out", str(tmp_path / "m.ckpt"), "--device", "cuda")
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_implicit_data_trains_a_ranking_model_full_batch_with_curves(tmp_path):
    data = _tiny_csv(tmp_path, implicit=True)
    out = tmp_path / "m.ckpt"
    proc = run_train(
        "--data",
        str(data),
        "--out",
        str(out),
        "--dim",
        "4",
        "--epochs",
        "3",
        "--loss",
        "softmax",
        "--batch-size",
        "full",
        "--device",
        "auto",
        "--optimizer",
        "sgd",
        "--lr",
        "0.5",
        "--momentum",
        "0.9",
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = checkpoint.load(out)
    assert ckpt.kind == "mf" and ckpt.config.loss == "softmax" and ckpt.config.batch_size == 0
    png = tmp_path / "m.ckpt.curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "validation nDCG@10" in proc.stdout


def test_diverging_training_exits_3(tmp_path):
    data = _tiny_csv(tmp_path)
    proc = run_train(
        "--data", str(data), "--out", str(tmp_path / "m.ckpt"), "--model", "gmf", "--lr", "1e30", "--optimizer", "sgd"
    )
    assert proc.returncode == 3 and "training diverged" in proc.stderr and "lower --lr" in proc.stderr
    with data.open("a") as f:
        f.write("u0,i1,1e30\n")  # a corrupt value: the hint names the ratings' range, not only --lr
    proc = run_train("--data", str(data), "--out", str(tmp_path / "m.ckpt"), "--epochs", "2")
    assert proc.returncode == 3 and "(the ratings range from " in proc.stderr and "to 1e+30)" in proc.stderr


def _file_size_limit(limit: int):
    """A child's writes past ``limit`` bytes per file fail (EFBIG), as on a full disk: the kernel's own refusal."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_that_cannot_be_written_exits_3_and_leaves_the_old_file(tmp_path):
    """A failed write (found on a full tmpfs) ended in two chained torch tracebacks ("basic_ios::clear: iostream
    error"), exit 1, and nothing said which file or why."""
    data, out = _tiny_csv(tmp_path), tmp_path / "m.ckpt"
    out.write_bytes(b"the model served until now")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--quiet", "--data", str(data), "--out", str(out),
         "--epochs", "2", "--dim", "8"],
        capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=_file_size_limit(4096),
    )  # fmt: skip
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: could not write {out} (" in proc.stderr and "MiB free on its filesystem" in proc.stderr
    assert out.read_bytes() == b"the model served until now" and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.ckpt", "ratings.csv"]  # fmt: skip


def test_curves_that_cannot_be_written_are_a_warning_after_the_checkpoint(tmp_path):
    """The curves are written after the checkpoint: their failure (a full disk) exited 1 with a traceback although
    the new model was already in place, and a serving instance had reloaded it."""
    data, out = _tiny_csv(tmp_path), tmp_path / "m.ckpt"
    (tmp_path / "m.ckpt.curves.png").mkdir()  # the plot cannot be written there
    proc = run_train("--data", str(data), "--out", str(out), "--epochs", "2", "--dim", "8")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the checkpoint is written, but not its training curves" in proc.stderr
    assert checkpoint.load(out).config.dim == 8 and "curves not written" in proc.stdout


@pytest.mark.reliability
def test_sigterm_stops_training_and_writes_nothing(tmp_path):
    """SIGTERM (a cron timeout, docker stop) ended the process where it stood: a save in progress left its
    temporary file beside --out for good. Now the run unwinds: exit 143, nothing written."""
    data, out = _tiny_csv(tmp_path), tmp_path / "m.ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--quiet", "--data", str(data), "--out", str(out),
         "--epochs", "100000", "--patience", "100000", "--dim", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("data: "), proc.stderr.read()  # read: training starts now
        time.sleep(0.5)
        assert proc.poll() is None, "training ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143 and "error: terminated by SIGTERM" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]


def test_trains_on_a_parquet_file_and_writes_a_checkpoint(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw, _ = planted_ratings(SyntheticConfig(num_users=40, num_items=25, ratings_per_user=8, seed=4))
    data = tmp_path / "ratings.parquet"
    table = {"user_id": raw.user_ids.astype(str), "item_id": raw.item_ids.astype(str), "rating": raw.ratings}
    pq.write_table(pa.table(table), data)
    out = tmp_path / "m.ckpt"
    proc = run_train("--data", str(data), "--out", str(out), "--dim", "4", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    ckpt = checkpoint.load(out)
    assert (ckpt.num_users, ckpt.num_items) == (40, 25) and ckpt.data["source"] == str(data)
    assert ckpt.user_ids == sorted(set(raw.user_ids.tolist()))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_malformed_large_or_parquet_file_exits_2_and_writes_nothing(tmp_path, kind):
    if kind == "csv":
        data = tmp_path / "bad.csv"
        lines = [f"{k % 300},{k % 97},{1 + k % 5}" for k in range(30_000)]
        lines[23_456] = "5,6,7,8"
        data.write_text("\n".join(lines) + "\n")
        expected = f"{data}:23457: expected 3 fields like the lines before, got 4"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"userId": [1, 2], "title": ["a", "b"], "rating": [3.0, 4.0]}), data)
        expected = f"{data}: no item column"
    out = tmp_path / "m.ckpt"
    proc = run_train("--data", str(data), "--out", str(out))
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == [data]
