"""The model store, the promotion rule, the holdout and warm start, without uWSGI."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

import numpy as np
import pytest
import torch

from model import checkpoint
from model.data import RawRatings
from model.evaluate import predict_ratings, rmse
from model.retrain import split_holdout
from model.store import (
    STALE_CACHE_S,
    ModelStore,
    ServedListNotWritten,
    StoreError,
    StoreLocked,
    is_store,
    served_file,
)
from model.train import TrainConfig, fit
from model.warmstart import WarmStartError, warm_start
from service.recommender import Recommender
from service.state import ModelHolder


@pytest.fixture(scope="module")
def versions(small_dataset) -> list[checkpoint.Checkpoint]:
    """Four distinct small models of the same data (different seeds)."""
    out = []
    for seed in range(4):
        result = fit(small_dataset.interactions, TrainConfig(dim=4, epochs=2, seed=seed), progress=False)
        out.append(checkpoint.from_training(result, small_dataset))
    return out


def test_add_point_rollback_and_list(tmp_path, versions):
    store = ModelStore(tmp_path / "store").init()
    assert store.current() is None and store.previous() is None and is_store(store.root)
    for ckpt in versions[:3]:
        store.add(ckpt)
        store.set_current(ckpt.model_version)
    names = [c.model_version for c in versions[:3]]
    assert [v.name for v in store.versions()] == names
    assert store.current() == names[2] and os.readlink(store.current_link) == f"versions/{names[2]}.ckpt"
    assert checkpoint.load(store.current_link).model_version == names[2]  # the link works as a plain path
    assert store.rollback() == (names[2], names[1])
    assert store.rollback() == (names[1], names[0])
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()
    assert store.rollback(names[2]) == (names[0], names[2])
    with pytest.raises(StoreError, match="already in the store"):
        store.add(versions[0])  # a version file is never rewritten (it may be memory-mapped)
    with pytest.raises(StoreError, match="already in the store"):
        store.add_file(store.path_of(names[0]))  # nor by copying a file in: a rollback to it would serve another model
    with pytest.raises(StoreError):
        store.set_current("no-such-version")
    with pytest.raises(StoreError, match="not a valid version"):
        store.path_of("../escape")


def test_a_bad_version_file_is_never_made_current(tmp_path, versions):
    store = ModelStore(tmp_path / "store").init()
    store.add(versions[0])
    store.set_current(versions[0].model_version)
    (store.versions_dir / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError):
        store.set_current("broken")
    assert store.current() == versions[0].model_version


def test_prune_keeps_the_newest_and_never_current_or_its_predecessor(tmp_path, versions):
    store = ModelStore(tmp_path / "store").init()
    for ckpt in versions:
        store.add(ckpt)
    names = [c.model_version for c in versions]
    store.set_current(names[1])  # rolled back far: current and its predecessor are old
    (store.versions_dir / f"{names[2]}.ckpt.ann-x.faiss").write_bytes(b"cache")
    (store.versions_dir / ".stale.ckpt.123.tmp").write_bytes(b"half")
    assert store.prune(keep=1) == [names[2]]
    assert [v.name for v in store.versions()] == [names[0], names[1], names[3]]
    assert sorted(p.name for p in store.versions_dir.iterdir()) == sorted(f"{n}.ckpt" for n in (names[0], *names[1::2]))


def test_lock_is_exclusive_and_released_on_exit(tmp_path):
    store = ModelStore(tmp_path / "store")
    with store.lock():
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            with store.lock():
                pass
    with store.lock():  # released
        pass
    # Found by the security review: the lock file was 0644, so another account could open it read-only and
    # hold it (flock needs no write access), and the message then named the pid of a run long gone.
    lock_file = store.root / ".lock"
    assert lock_file.stat().st_mode & 0o777 == 0o600
    lock_file.chmod(0o644)  # a store locked before: owner-only again once locked
    with store.lock():
        assert lock_file.stat().st_mode & 0o777 == 0o600
    lock_file.chmod(0o660)  # shared on purpose with a group that may write: left so
    with store.lock():
        assert lock_file.stat().st_mode & 0o777 == 0o660
    lock_file.chmod(0o600)
    other = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_SH)
        gone = subprocess.Popen(["true"])  # a pid that has exited, as the last run's would have
        gone.wait()
        lock_file.write_text(f"{gone.pid}\n")
        with pytest.raises(StoreLocked, match="locked by another process \\(the last run, pid \\d+, has exited\\)"):
            with store.lock():
                pass
        lock_file.write_text("99999999999999999999\n")  # no pid at all: no OverflowError, a refusal
        with pytest.raises(StoreLocked, match="locked by another process; try"):
            with store.lock():
                pass
    finally:
        os.close(other)


def test_holder_follows_a_store_directory(tmp_path, versions):
    store = ModelStore(tmp_path / "store").init()
    holder = ModelHolder(store.root)
    assert holder.state.index is None and "no such checkpoint" in holder.state.error
    store.add(versions[0])
    store.set_current(versions[0].model_version)
    assert holder.check() and holder.version == versions[0].model_version
    assert not holder.check()  # nothing moved
    store.add(versions[1])
    assert not holder.check()  # a new version alone is not served until current points at it
    store.set_current(versions[1].model_version)
    assert holder.check() and holder.version == versions[1].model_version
    (store.versions_dir / "bad.ckpt").write_bytes(b"\x80\x02junk")
    store._point(store.versions_dir / "bad.ckpt")
    assert not holder.check() and holder.version == versions[1].model_version
    store.rollback(versions[0].model_version)
    assert holder.check() and holder.version == versions[0].model_version


def _raw(users, items) -> RawRatings:
    n = len(users)
    return RawRatings(
        np.array(users, dtype=object), np.array(items, dtype=object), np.ones(n, np.float32),
        np.zeros(n, np.int64), "fp", "test",
    )  # fmt: skip


def test_holdout_is_stable_as_the_data_grows():
    rng = np.random.default_rng(0)
    users, items = [f"u{k}" for k in rng.integers(0, 300, 5000)], [f"i{k}" for k in rng.integers(0, 200, 5000)]
    _, held = split_holdout(_raw(users[:4000], items[:4000]), 0.1, seed=7)
    _, held_more = split_holdout(_raw(users, items), 0.1, seed=7)
    pairs = set(zip(held.user_ids, held.item_ids))
    assert 300 < len(held) < 500 and pairs <= set(zip(held_more.user_ids, held_more.item_ids))
    _, other_seed = split_holdout(_raw(users, items), 0.1, seed=8)
    assert set(zip(other_seed.user_ids, other_seed.item_ids)) != set(zip(held_more.user_ids, held_more.item_ids))
    train, held = split_holdout(_raw(["a", "b"], ["x", "y"]), 0.1, seed=0)
    assert len(train) == 1 and len(held) == 1


def test_warm_start_copies_known_rows_and_leaves_new_ones_fresh(versions, small_dataset):
    old = versions[0]
    # The new data drops the first user and adds one: ids shift, so rows must be matched by raw id.
    user_ids = [*old.user_ids[1:], "newcomer"]
    item_ids = list(old.item_ids)
    init = warm_start(old, user_ids, item_ids)
    assert init.matched == {"users": len(user_ids) - 1, "items": len(item_ids)}
    from model.networks import MFEnsemble

    net = MFEnsemble(len(user_ids), len(item_ids), members=1, member_dim=4, global_mean=old.global_mean)
    fresh = net.user_factors.weight[-1].clone()
    init(net)
    net.global_bias.data.fill_(float(old.state_dict["global_bias"]))
    users, items = torch.tensor([0, 5]), torch.tensor([3, 7])  # new index 0 = old index 1
    old_net = old.network()
    assert torch.allclose(net(users, items), old_net(users + 1, items), atol=1e-5)
    assert torch.equal(net.user_factors.weight[-1], fresh)
    with pytest.raises(WarmStartError, match="dim"):
        init(MFEnsemble(len(user_ids), len(item_ids), members=1, member_dim=8))


def test_warm_started_fit_begins_near_the_old_model(versions, small_dataset):
    old = versions[0]
    data = small_dataset.interactions
    init = warm_start(old, small_dataset.user_map.ids, small_dataset.item_map.ids)
    cfg = TrainConfig(dim=4, epochs=1, lr=1e-6, seed=5, val_fraction=0)
    warm, cold = fit(data, cfg, progress=False, init=init), fit(data, cfg, progress=False)
    old_rmse = rmse(np.clip(predict_ratings(old.network(), data), *old.rating_scale), data.ratings)
    assert abs(warm.metrics["train_rmse"] - old_rmse) < 0.02  # lr ~ 0: the warm model is the old one
    assert warm.metrics["train_rmse"] < cold.metrics["train_rmse"] - 0.03


def test_a_fresh_holder_falls_back_to_the_version_before_a_bad_current(tmp_path, versions):
    store = ModelStore(tmp_path / "store").init()
    for ckpt in versions[:2]:
        store.add(ckpt)
    (store.versions_dir / "bad.ckpt").write_bytes(b"\x80\x02junk")
    store._point(store.versions_dir / "bad.ckpt")  # as a damaged store might be; set_current would refuse
    holder = ModelHolder(store.root)  # a worker (re)started now
    assert holder.version == versions[1].model_version and holder.state.error is None
    store.set_current(versions[0].model_version)
    assert holder.check() and holder.version == versions[0].model_version
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(b"junk")
    assert ModelHolder(plain).state.index is None  # a plain file has nothing to fall back to


def test_rollback_follows_what_was_served_not_the_order_versions_were_added(tmp_path, versions):
    """v2 is rolled back to v1, then v3 is promoted: the next rollback goes to v1 (by the order of adding it went
    to v2, the version rolled away from), pruning keeps v1, and a worker that cannot load current serves what the
    others kept (by adding order it served v2 after a rollback)."""
    store = ModelStore(tmp_path / "store").init()
    names = [c.model_version for c in versions[:4]]
    for ckpt in versions[:3]:
        store.add(ckpt)
        store.set_current(ckpt.model_version)
    assert store.rollback() == (names[2], names[1])
    (store.versions_dir / "bad.ckpt").write_bytes(b"\x80\x02junk")
    store._point(store.versions_dir / "bad.ckpt")  # aimed at a bad file by hand, after the rollback
    assert ModelHolder(store.root).version == names[1]  # a respawned worker: what the others kept
    store.set_current(names[1])
    store.add(versions[3])
    store.set_current(names[3])
    assert store.served() == [names[0], names[1], names[3]] and store.previous() == names[1]
    assert store.prune(keep=1) == [names[0], names[2], "bad"] and store.served() == [names[1], names[3]]
    assert store.rollback() == (names[3], names[1])
    assert store.rollback(names[3]) == (names[1], names[3]) and store.served()[-2:] == [names[1], names[3]]


def test_rollback_to_repairs_a_pointer_that_is_not_a_link_to_a_version(tmp_path, versions, capsys):
    from tests.test_retrain import _script

    rollback = _script("rollback")
    store = ModelStore(tmp_path / "store").init()
    store.add(versions[0])
    store.current_link.write_text("not a link")  # made by hand
    assert rollback.main(["--store", str(store.root), "--list"]) == 2
    assert "not a symlink" in capsys.readouterr().err
    assert rollback.main(["--store", str(store.root)]) == 2  # where to? nothing to go back from
    assert "--to" in capsys.readouterr().err
    assert rollback.main(["--store", str(store.root), "--to", versions[0].model_version]) == 0
    assert store.current() == versions[0].model_version
    store.current_link.unlink()
    assert rollback.main(["--store", str(store.root)]) == 2  # was "nothing to roll back to: None is the oldest"
    assert "serves no version yet: name one to serve (--to)" in capsys.readouterr().err
    store._point(store.versions_dir / "mf-20200101T000000Z-00000000.ckpt")  # a version deleted by hand, in a
    (store.root / "served").unlink()  # store from before the served list: no way to tell what came before it
    assert rollback.main(["--store", str(store.root)]) == 2 and "no longer holds" in capsys.readouterr().err
    assert rollback.main(["--store", str(store.root), "--list"]) == 2 and "no longer holds" in capsys.readouterr().err
    store.current_link.unlink()
    store.current_link.mkdir()  # a directory where the link belongs: refused by name, nothing deleted
    for flags in (["--to", versions[0].model_version], [], ["--list"]):  # none advises --to, which cannot help
        assert rollback.main(["--store", str(store.root), *flags]) == 2
        err = capsys.readouterr().err
        assert "is a directory" in err and "move it away first" in err and "--to" not in err, flags
    assert store.current_link.is_dir()


def _serving_three(tmp_path, versions) -> tuple[ModelStore, list[str]]:
    """A store that served versions 0, 1 and 2 in turn (2 current), and their names."""
    store = ModelStore(tmp_path / "store").init()
    for ckpt in versions[:3]:
        store.add(ckpt)
        store.set_current(ckpt.model_version)
    return store, [c.model_version for c in versions[:3]]


def _full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_rollback_whose_served_list_is_not_written_rolled_back_and_the_next_goes_on_back(
    tmp_path, versions, monkeypatch, capsys
):
    """A full disk while writing STORE/served, after current had moved (chaos review): rollback.py said "not rolled
    back" (exit 1); the operator's retry then went forward to the version rolled away from, served last in the
    list. A rollback killed between its two steps left the same list, with the same retry."""
    from tests.test_retrain import _script

    rollback = _script("rollback")
    store, names = _serving_three(tmp_path, versions)

    monkeypatch.setattr(ModelStore, "_write_served", _full_disk)
    assert rollback.main(["--store", str(store.root)]) == 0 and store.current() == names[1]
    captured = capsys.readouterr()
    assert f"current: {names[2]} -> {names[1]}" in captured.out and "not rolled back" not in captured.err
    assert "warning: the list of served versions could not be written" in captured.err and "No space" in captured.err
    monkeypatch.undo()
    assert store.served() == names  # not unwound on disk: read as unwound back to current
    assert store.previous() == names[0] and store.served_before() == [names[0]]
    assert rollback.main(["--store", str(store.root)]) == 0 and store.current() == names[0]
    assert store.served() == names[:1]


def test_a_list_that_missed_a_rollback_is_read_the_same_by_the_next_promotion(tmp_path, versions, monkeypatch):
    """The list missed the rollback v2 -> v1 (full disk); then v3 is promoted. Before, set_current pushed v3 onto
    the list as written: the next rollback went to v2, the version rolled away from, and pruning deleted v1, the
    one served before v3 (a review of the fix)."""
    store, names = _serving_three(tmp_path, versions)

    monkeypatch.setattr(ModelStore, "_write_served", _full_disk)
    with pytest.raises(ServedListNotWritten):
        store.rollback()
    monkeypatch.undo()
    store.add(versions[3])
    store.set_current(versions[3].model_version)
    assert store.served() == [*names[:2], versions[3].model_version] and store.previous() == names[1]
    assert store.prune(keep=2) == [names[0]]  # the two newest and v1, the one a rollback goes to


def test_a_worker_falls_back_to_what_the_others_kept_when_current_is_aimed_at_a_bad_listed_version(tmp_path, versions):
    """v0, v1, v2 served; v1's file then damaged and current aimed at it by hand. Running workers refuse the reload
    and keep v2: a starting worker serves v2 too, not v0 (a current that does not load was never served, so the
    list is read as written; a review of the unwinding rule found it going back to v0)."""
    store, names = _serving_three(tmp_path, versions)
    store.path_of(names[1]).write_bytes(b"\x80\x02junk")
    store._point(store.path_of(names[1]))
    assert store.served_before() == [names[2], names[0]]
    assert ModelHolder(store.root).version == names[2]


def test_a_directory_named_like_a_version_is_no_version_and_does_not_stop_pruning(tmp_path, versions):
    """``versions/<a version's name>.ckpt/`` as a directory was listed as the oldest version, and pruning it failed
    (IsADirectoryError) on every promotion after, so old versions piled up until the disk filled."""
    store = ModelStore(tmp_path / "store").init()
    planted = store.versions_dir / "mf-20200101T000000Z-dddddddd.ckpt"
    planted.mkdir()
    os.utime(planted, (0, 0))
    names = [c.model_version for c in versions[:3]]
    for ckpt in versions[:3]:
        store.add(ckpt)
        store.set_current(ckpt.model_version)
    assert [v.name for v in store.versions()] == names
    assert store.prune(keep=1) == [names[0]] and planted.is_dir()  # not ours to delete


def test_cleaning_keeps_a_serving_workers_cache_write_in_progress(tmp_path, versions):
    """Workers write the ANN index and top-N lists beside a version without the store's lock: a retrain's clean-up
    deleted their temporary file mid-write (the cache was then lost). A checkpoint's own is always stale."""
    store = ModelStore(tmp_path / "store").init()
    version = versions[0].model_version
    ckpt_tmp = store.versions_dir / f".{version}.ckpt.a1b2c3d4.tmp"
    cache_tmp = store.versions_dir / f".{version}.ckpt.ann-hnsw32.faiss.x9y8z7w6.tmp"
    for path in (ckpt_tmp, cache_tmp):
        path.write_bytes(b"half")
    assert store.clean_temporary() == [ckpt_tmp] and cache_tmp.exists()
    assert store.clean_temporary(now=time.time() + STALE_CACHE_S + 60) == [cache_tmp]


def test_a_store_from_before_the_served_list_rolls_back_in_the_order_versions_were_added(tmp_path, versions):
    """No STORE/served yet (a store written by an older release), current v2 of v0-v2; v3 promoted after the
    upgrade. Rollbacks go v3 -> v2 -> v1 (the first move seeds the list from the adding order; it went
    v3 -> v2 -> v3 in review), and with no current at all a worker serves nothing rather than a guess."""
    store = ModelStore(tmp_path / "store").init()
    names = [c.model_version for c in versions[:4]]
    for ckpt in versions[:3]:
        store.add(ckpt)
    holder = ModelHolder(store.root)
    assert holder.state.index is None  # versions but no current: not one of them at random
    store._point(store.path_of(names[2]))  # as the older release left it, no served list
    store.add(versions[3])
    store.set_current(names[3])
    assert store.rollback() == (names[3], names[2]) and store.rollback() == (names[2], names[1])


def test_a_file_dropped_in_versions_by_hand_is_no_version_and_no_crash(tmp_path, versions):
    """``versions/a b.ckpt`` (a name no version has) made the service's fallback raise StoreError: no worker
    could start, where a bad ``current`` should fall back to the version before it."""
    store = ModelStore(tmp_path / "store").init()
    good = versions[0].model_version
    store.add(versions[0])
    store.set_current(good)
    (store.versions_dir / "a b.ckpt").write_bytes(store.path_of(good).read_bytes())
    bad = store.versions_dir / "mf-bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    (store.root / "served").unlink()
    store._point(bad)
    assert [v.name for v in store.versions()] == [good, "mf-bad"]
    holder = ModelHolder(store.root)
    assert holder.state.index is not None and holder.state.index.model_version == good


def test_the_store_lock_does_not_follow_a_planted_link(tmp_path):
    """``.lock -> victim``: taking the lock truncated the victim and wrote a pid into it."""
    store = ModelStore(tmp_path / "store").init()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (store.root / ".lock").symlink_to(victim)
    with pytest.raises(OSError), store.lock():
        pass
    assert victim.read_text() == "keep me"


def test_a_current_aimed_outside_the_store_is_not_served(tmp_path, versions):
    """The store's own tools refuse a ``current`` that points outside ``versions/``; the service served it."""
    store = ModelStore(tmp_path / "store").init()
    store.add(versions[0])
    store.set_current(versions[0].model_version)
    holder = ModelHolder(store.root)
    assert holder.version == versions[0].model_version
    outside = checkpoint.save(versions[1], tmp_path / "elsewhere" / "model.ckpt")
    store._point(outside)
    assert not holder.check() and holder.version == versions[0].model_version  # the reload refused, kept
    fresh = ModelHolder(store.root)  # a worker starting now
    assert fresh.state.index is None and "points outside the store's versions/" in fresh.state.error
    # The offline readers (the Python API and recommend_batch.py, evaluate.py, prebuild_ann.py) read the served
    # model through served_file, and refuse it too: they followed the pointer.
    with pytest.raises(checkpoint.CheckpointError, match="points outside the store's versions/"):
        served_file(store.root)
    with pytest.raises(checkpoint.CheckpointError, match="points outside the store's versions/"):
        Recommender.load(store.root)
    store._point(store.path_of(versions[0].model_version))
    assert served_file(store.root) == store.path_of(versions[0].model_version).resolve()
    assert Recommender.load(store.root).model_version == versions[0].model_version


def test_a_worker_that_fell_back_says_why_and_a_pointer_back_loads_nothing(tmp_path, versions):
    """Found by review: a worker started while ``current`` was bad served the version before it, but reported
    ``reload_refused`` as nothing (the running workers said why) and loaded that version in full again when
    ``current`` was pointed back at it."""
    store = ModelStore(tmp_path / "store").init()
    good = versions[0].model_version
    store.add(versions[0])
    store.set_current(good)
    bad = store.versions_dir / "mf-bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    store._point(bad)
    outcomes = []
    holder = ModelHolder(store.root, on_change=lambda state, ok: outcomes.append((ok, state.info.get("model_version"))))
    served = holder.state
    assert served.index.model_version == good and "not a torch.save zip" in holder.refused
    store._point(store.path_of(good))
    assert not holder.check() and holder.state is served and holder.refused is None
    assert outcomes == [(None, good)], "the pointer back is no reload"


def test_a_looping_current_is_a_missing_file_and_a_link_out_of_versions_is_no_version(tmp_path, versions):
    """Found by the security review: a ``current`` that points at itself raised RuntimeError (Python 3.11's
    symlink loop) in the watcher every poll and in a starting worker, whose failed app load ended the whole
    uWSGI instance (need-app): now a missing file, refused, as for a dangling pointer. And a link in
    ``versions/`` to a file outside was listed and made current by rollback, which the service then refused."""
    store = ModelStore(tmp_path / "store").init()
    good = versions[0].model_version
    store.add(versions[0])
    store.set_current(good)
    holder = ModelHolder(store.root)
    loop = store.root / ".loop"
    loop.symlink_to("current")
    os.replace(loop, store.current_link)  # current -> current
    assert not holder.check() and holder.version == good and "no such checkpoint file" in holder.refused
    fresh = ModelHolder(store.root)  # a worker starting now: no exception (the app loads and answers 503)
    assert fresh.state.index is None and "no such checkpoint file" in fresh.state.error
    plain_loop = tmp_path / "self.ckpt"
    plain_loop.symlink_to("self.ckpt")
    assert ModelHolder(plain_loop).state.index is None  # refused, no exception
    elsewhere = checkpoint.save(versions[1], tmp_path / "elsewhere" / "model.ckpt")
    (store.versions_dir / f"{versions[1].model_version}.ckpt").symlink_to(elsewhere)
    assert [v.name for v in store.versions()] == [good]
    with pytest.raises(StoreError, match="no version"):
        store.set_current(versions[1].model_version)
