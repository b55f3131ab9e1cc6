"""Checkpoints round-trip exactly, are written atomically, and never execute code when loaded."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError
from model.evaluate import predict_ratings
from tests.conftest import REPO


def test_round_trip_gives_identical_answers(small_ckpt_path, small_dataset, tmp_path):
    first = checkpoint.load(small_ckpt_path)
    copy_path = checkpoint.save(first, tmp_path / "copy.ckpt")
    second = checkpoint.load(copy_path)
    inter = small_dataset.interactions
    assert np.array_equal(predict_ratings(first.network(), inter), predict_ratings(second.network(), inter))
    assert second.user_ids == small_dataset.user_map.ids and second.item_ids == small_dataset.item_map.ids
    assert second.model_version == first.model_version and second.metrics == first.metrics
    assert np.array_equal(second.seen_indices, small_dataset.interactions.seen_csr()[1])
    assert second.item_popularity.sum() == len(inter)
    assert second.data["fingerprint"] == small_dataset.fingerprint
    assert second.rating_scale == (float(inter.ratings.min()), float(inter.ratings.max()))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "recsys-checkpoint", "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused: it holds objects whose loading runs code") as refused:
        checkpoint.load(evil)
    assert not marker.exists() and "weights_only" not in str(refused.value)  # not torch's advice to run it
    with pytest.raises(CheckpointError, match="a directory, not a checkpoint file"):  # was 'no such checkpoint file'
        checkpoint.load(tmp_path)
    # A damaged pickle is not a security alarm: its own reason is given.
    with zipfile.ZipFile(evil) as z:
        members = {name: z.read(name) for name in z.namelist()}
    pkl = next(name for name in members if name.endswith("data.pkl"))
    members[pkl] = members[pkl][:5] + b"\x5a" + members[pkl][6:]
    with zipfile.ZipFile(tmp_path / "corrupt.ckpt", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(CheckpointError, match=r"not a loadable checkpoint \(a corrupt pickle: Unsupported operand"):
        checkpoint.load(tmp_path / "corrupt.ckpt")
    raw_pickle = tmp_path / "raw.pkl"
    raw_pickle.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError):
        checkpoint.load(raw_pickle)
    assert not marker.exists()


def test_truncated_wrong_format_and_missing_files_are_refused(small_ckpt_path, tmp_path):
    data = small_ckpt_path.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    for name, reason in [
        ("half.ckpt", "not a loadable"),
        ("other.ckpt", "not a recsys-checkpoint"),
        ("text.ckpt", "not a loadable"),
        ("missing.ckpt", "no such checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=reason):
            checkpoint.load(tmp_path / name)


def test_inconsistent_checkpoint_is_refused(small_ckpt, tmp_path):
    bad = checkpoint.Checkpoint(**{**vars(small_ckpt), "item_ids": small_ckpt.item_ids[:-1]})
    checkpoint.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "bad.ckpt")


def test_a_fault_inside_the_checks_refuses_the_file_with_its_traceback_logged(small_ckpt_path, monkeypatch, caplog):
    """Whatever the checks raise beyond their own refusals (a case they missed, a bug in them) refuses the file,
    with the cause chained and the traceback logged: a bug would otherwise read as every file being malformed."""

    def broken(ckpt):
        raise KeyError("a bug in a check")

    monkeypatch.setattr(checkpoint, "consistency_error", broken)
    with pytest.raises(CheckpointError, match=r"malformed checkpoint \(KeyError: 'a bug in a check'\)") as info:
        checkpoint.load(small_ckpt_path)
    assert isinstance(info.value.__cause__, KeyError)
    logged = [r for r in caplog.records if r.name == "model.checkpoint" and r.exc_info]
    assert logged and "a bug in a check" in caplog.text and "Traceback" in caplog.text


def test_crash_while_saving_keeps_the_old_file(small_ckpt, tmp_path, monkeypatch):
    target = checkpoint.save(small_ckpt, tmp_path / "model.ckpt")
    before = target.read_bytes()

    def crash(obj, f):
        Path(f).write_bytes(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(small_ckpt, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no temporary left behind


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_umask_not_owner_only(small_ckpt, tmp_path, mask, mode):
    """mkstemp's 0600 stuck to every checkpoint and report: one trained by a cron job's user (or on the host, for a
    container running as uid 10001) could not be read by the service."""
    from model.retrain import write_report

    old = os.umask(mask)
    try:
        saved = checkpoint.save(small_ckpt, tmp_path / "model.ckpt")
        report = write_report({"outcome": "promoted"}, tmp_path / "reports" / "r.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(saved.stat().st_mode) == mode and stat.S_IMODE(report.stat().st_mode) == mode
    assert checkpoint.load(saved).model_version == small_ckpt.model_version


def test_an_unreadable_file_is_refused_as_unreadable_not_as_corrupt(small_ckpt):
    """A checkpoint another user wrote owner-only was refused as "not a torch.save zip archive: truncated"."""
    folder = Path(tempfile.mkdtemp(prefix="recsys-unreadable-"))  # traversable by another user (tmp_path is not)
    try:
        folder.chmod(0o755)
        path = checkpoint.save(small_ckpt, folder / "model.ckpt")
        path.chmod(0o600 if os.getuid() == 0 else 0o000)
        # Root reads anything: the child imports as root (the interpreter may sit under /root), then loads as nobody.
        code = "import os, sys; from model import checkpoint as c; os.getuid() or os.setuid(65534); c.load(sys.argv[1])"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                             timeout=120)  # fmt: skip
        assert out.returncode != 0
        assert "cannot be read (Permission denied; this process runs as uid" in out.stderr, out.stderr[-500:]
    finally:
        shutil.rmtree(folder)


def test_files_from_before_the_model_family_still_load(small_ckpt_path, tmp_path):
    """A v1 file's config has none of the new fields: it means a plain MF on MSE ranking by rating."""
    from service.index import ServingIndex

    raw = torch.load(small_ckpt_path, weights_only=True)
    new_fields = {"loss", "rank_loss", "layers", "activation", "negatives", "optimizer", "momentum", "weight_decay",
                  "lr_schedule", "rank_dim", "rank_reg", "rank_lr", "rank_epochs"}  # fmt: skip
    raw["config"] = {k: v for k, v in raw["config"].items() if k not in new_fields}
    old = tmp_path / "v1.ckpt"
    torch.save(raw, old)
    ckpt = checkpoint.load(old)
    assert ckpt.config.loss == "mse" and ckpt.config.rank_loss == "none"
    before, after = ServingIndex(checkpoint.load(small_ckpt_path)), ServingIndex(ckpt)
    user = ckpt.user_ids[0]
    assert before.recommend(user, 5) == after.recommend(user, 5)
    assert before.predict([user], [ckpt.item_ids[0]]) == after.predict([user], [ckpt.item_ids[0]])


def _tampered(source, target, **changes):
    """A copy of a checkpoint file with some stored fields replaced (still loadable with weights_only)."""
    raw = torch.load(source, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key.startswith("config."):
            raw["config"][key.removeprefix("config.")] = value
        else:
            raw[key] = value(raw[key]) if callable(value) else value
    torch.save(raw, target)
    return target


WRONG_FIELDS = {
    "seen_indptr_as_a_list": ({"seen_indptr": lambda t: t.tolist()}, "seen_indptr is a list, expected a tensor"),
    "popularity_as_floats": ({"item_popularity": lambda t: t.double()}, "item_popularity has dtype torch.float64"),
    "indptr_decreasing": ({"seen_indptr": lambda t: t.flip(0)}, "seen_indptr does not start at 0"),
    "user_ids_as_ints": ({"user_ids": lambda ids: list(range(len(ids)))}, "user_ids is not a list of strings"),
    "duplicate_item_ids": ({"item_ids": lambda ids: [ids[0]] * len(ids)}, "item_ids holds duplicates"),
    "dim_as_text": ({"config.dim": "eight"}, "config.dim is 'eight', expected int"),
    "scale_reversed": ({"rating_scale": [5.0, 1.0]}, "rating_scale is [5.0, 1.0]"),
    "mean_as_text": ({"global_mean": "3.5"}, "global_mean is '3.5'"),
    "weights_as_lists": ({"state_dict": lambda sd: {k: v.tolist() for k, v in sd.items()}}, "expected a tensor"),
    "unknown_kind": ({"kind": "svd"}, "kind 'svd' is not one of"),
    "metrics_as_text": ({"metrics": "good"}, "metrics is not a dict of numbers"),
    # It loaded: its NaN scores were served, and the retrain gate took its NaN figures for the best.
    # Found by a security review: each cost minutes of CPU or gigabytes before (or instead of) a refusal.
    "popularity_repeating_one_element": (
        {"item_popularity": lambda t: torch.zeros(1, dtype=torch.int64).expand(10**12)},
        "declares 1,000,000,000,000 elements over 8 stored bytes",
    ),
    "dim_past_the_bound": ({"config.dim": 20000}, "config: --dim must be <= 4096, got 20000"),
    "sasrec_blocks_past_the_bound": ({"config.blocks": 100000}, "config: --blocks must be <= 16"),
    # Found by the second security review: each loaded and was served. No users or no items: /readyz and every
    # /predict answered 500 (they read user and item 0); a fingerprint of nested lists (a few MB on disk by
    # pickle's memo) made GET /model answer hundreds of MB; a version with a line break forged log lines, and
    # one of a megabyte went into every answer and /metrics.
    "no_users": (
        {
            "user_ids": [],
            "seen_indptr": torch.zeros(1, dtype=torch.int64),
            "seen_indices": torch.zeros(0, dtype=torch.int64),
        },
        "a model needs users and items: 0 users",
    ),
    "no_items": (
        {
            "item_ids": [],
            "item_popularity": torch.zeros(0, dtype=torch.int64),
            "seen_indices": torch.zeros(0, dtype=torch.int64),
            "seen_indptr": lambda t: torch.zeros_like(t),
        },
        "a model needs users and items: 120 users, 0 items",
    ),
    "fingerprint_of_nested_lists": ({"data": lambda d: {**d, "fingerprint": [[[0]]]}}, "data is not a dict of"),
    "fingerprint_too_long": ({"data": lambda d: {**d, "fingerprint": "f" * 5000}}, "data is not a dict of"),
    "version_with_a_line_break": ({"model_version": "FAKE\nreload ok"}, "model_version is not a version name"),
    "version_of_a_megabyte": ({"model_version": "v" * (1 << 20)}, "model_version is not a version name"),
    "nan_weight": (
        {"state_dict": lambda sd: {k: v.index_fill(0, torch.tensor([0]), float("nan")) for k, v in sd.items()}},
        "holds NaN or infinite values",
    ),  # fmt: skip
}


def test_a_compressed_member_is_refused_before_unpickling(small_ckpt_path, tmp_path):
    """A 2.87 MB file whose deflated pickle held a 1 GB string loaded (3 GB of memory per worker, for good)."""
    target = tmp_path / "packed.ckpt"
    with zipfile.ZipFile(small_ckpt_path) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            packing = zipfile.ZIP_DEFLATED if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=packing)
    with pytest.raises(CheckpointError, match=r"refused: compressed members \(.*data\.pkl\)"):
        checkpoint.load(target)


def test_flags_past_the_network_bounds_are_refused():
    from model.config import size_error

    assert validate_config(dim=4096) is None and "--dim must be <= 4096" in validate_config(dim=4097)
    assert "--layers" not in (size_error({"model": "sasrec", "dim": 512, "blocks": 16}) or "")
    assert "blocks x dim^2" in size_error({"model": "sasrec", "dim": 1024, "blocks": 16})


def validate_config(**fields) -> str | None:
    from model.config import TrainConfig, validate

    try:
        validate(TrainConfig(**fields))
    except ValueError as exc:
        return str(exc)
    return None


def test_finite_weights_whose_sum_overflows_are_not_taken_for_infinite():
    from model.checkpoint_checks import _tensor_error

    assert _tensor_error("w", torch.full((4,), 3e38), (torch.float32,)) is None
    assert "NaN or infinite" in _tensor_error("w", torch.tensor([1.0, float("inf")]), (torch.float32,))


def _set(tensor: torch.Tensor, index, value) -> torch.Tensor:
    out = tensor.clone()
    out[index] = value
    return out


# One fault each, so that each check is what refuses its file (a mutation review deleted most of these checks one at
# a time and no test failed: test_inconsistent_checkpoint_is_refused's file breaks four at once). Each takes the
# loaded dict and changes it in place. What each would do if it loaded, as probed: an item index past the catalogue
# is a 500 for that user, a NaN user vector an empty 200 list, a duplicate user id answers for another user.
ONE_FAULT = {
    "seen_index_equal_to_the_item_count": (
        lambda raw: raw.update(seen_indices=_set(raw["seen_indices"], -1, len(raw["item_ids"]))),
        "seen-item index refers to items outside the catalogue",
    ),
    "popularity_one_entry_short": (
        lambda raw: raw.update(item_popularity=raw["item_popularity"][:-1].clone()),
        "popularity has",
    ),
    "negative_popularity": (
        lambda raw: raw.update(item_popularity=_set(raw["item_popularity"], 0, -1)),
        "item_popularity has negative counts",
    ),
    "indptr_past_the_last_seen_item": (
        lambda raw: raw.update(seen_indices=raw["seen_indices"][:-1].clone()),
        "seen-item index does not match",
    ),
    "indptr_starting_at_1": (
        lambda raw: raw.update(
            seen_indptr=raw["seen_indptr"] + 1, seen_indices=torch.cat([raw["seen_indices"][:1], raw["seen_indices"]])
        ),
        "seen_indptr does not start at 0",
    ),  # fmt: skip
    "duplicate_user_ids": (
        lambda raw: raw["user_ids"].__setitem__(1, raw["user_ids"][0]),
        "user_ids holds duplicates",
    ),
    "nan_user_vector": (
        lambda raw: raw["serving"].update(user_vectors=_set(raw["serving"]["user_vectors"], (3, 0), float("nan"))),
        "serving['user_vectors'] holds NaN or infinite values",
    ),
    "last_item_vector_changed": (
        lambda raw: raw["serving"].update(item_vectors=_set(raw["serving"]["item_vectors"], -1, 0.5)),
        "serving arrays disagree with the weights",
    ),
    "a_weight_one_column_short": (
        lambda raw: raw["state_dict"].update(
            {name: t[:, :-1].clone() for name, t in raw["state_dict"].items() if t.ndim == 2 and "item" in name}
        ),
        "weights do not fit a mf model",
    ),
    "a_metric_as_text": (lambda raw: raw["metrics"].update(rmse="low"), "metrics is not a dict of numbers"),
    "created_at_of_100_characters": (lambda raw: raw.update(created_at="2" * 100), "created_at is not a short"),
    "history_of_numbers": (lambda raw: raw.update(history=[1, 2]), "history malformed"),
}


@pytest.mark.parametrize("case", sorted(ONE_FAULT))
def test_each_check_refuses_its_own_fault(case, small_ckpt_path, tmp_path):
    change, message = ONE_FAULT[case]
    raw = torch.load(small_ckpt_path, map_location="cpu", weights_only=True)
    assert raw["kind"] == "mf"
    change(raw)
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.load(tmp_path / "bad.ckpt")


@pytest.mark.parametrize("case", sorted(WRONG_FIELDS))
def test_a_wrongly_typed_field_is_a_checkpoint_error(case, small_ckpt_path, tmp_path):
    """Before: AttributeError/TypeError from wherever the field was first used (create_app crashed)."""
    changes, message = WRONG_FIELDS[case]
    bad = _tampered(small_ckpt_path, tmp_path / "bad.ckpt", **changes)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.load(bad)


def test_a_failure_other_than_writing_is_not_reported_as_a_full_disk(tmp_path):
    """checkpoint.save names the free space when torch's writer fails; any other RuntimeError (a bug while
    pickling) went out as a disk problem too, and retrain then printed it without its traceback."""

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug, not the disk"):
        checkpoint._write({"x": Unpicklable()}, str(tmp_path / "t.tmp"), tmp_path / "m.ckpt")
