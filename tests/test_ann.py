"""Large-catalogue serving: the faiss HNSW index (service/ann.py), its cache files (service/ann_cache.py),
the top-N lists searched from it (service/topn.py), and memory-mapped checkpoints.

ANN tests need faiss (the ``dev`` extra installs it) and skip only where it is missing; the
memory-sharing and faiss-disabled tests run everywhere. Catalogues are small (3,000 items) with
``min_items`` lowered, so the whole file runs in seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint import Checkpoint, CheckpointError
from model.train import TrainConfig
from service.index import ServingIndex
from service.state import load_state
from tests.conftest import REPO

NUM_USERS, NUM_ITEMS, DIM = 200, 3000, 16


def planted_checkpoint(seed: int = 0) -> Checkpoint:
    """Clustered low-rank item factors (like trained MF) with biases; each user has seen 20 of their
    own exact top-40 items plus 20 random ones, so seen-item exclusion changes every answer."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, DIM))
    items = centers[rng.integers(0, 30, NUM_ITEMS)] + 0.4 * rng.normal(size=(NUM_ITEMS, DIM))
    items *= rng.lognormal(0, 0.3, size=(NUM_ITEMS, 1)) * 0.3
    users = 0.3 * (centers[rng.integers(0, 30, NUM_USERS)] + 0.4 * rng.normal(size=(NUM_USERS, DIM)))
    item_bias = 0.2 * rng.normal(size=(NUM_ITEMS, 1))
    scores = users @ items.T + item_bias.T
    seen = []
    for u in range(NUM_USERS):
        best = np.argsort(-scores[u])[:40]
        seen.append(np.unique(np.concatenate([rng.choice(best, 20, replace=False), rng.integers(0, NUM_ITEMS, 20)])))
    indices = np.concatenate(seen).astype(np.int64)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Checkpoint(
        kind="mf",
        config=TrainConfig(dim=DIM),
        state_dict={
            "user_factors.weight": f32(users),
            "item_factors.weight": f32(items),
            "user_bias.weight": f32(0.1 * rng.normal(size=(NUM_USERS, 1))),
            "item_bias.weight": f32(item_bias),
            "global_bias": torch.tensor(3.5),
        },
        user_ids=[f"u{u}" for u in range(NUM_USERS)],
        item_ids=[f"i{i}" for i in range(NUM_ITEMS)],
        seen_indptr=np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64),
        seen_indices=indices,
        item_popularity=np.bincount(indices, minlength=NUM_ITEMS).astype(np.int64),
        rating_scale=(1.0, 5.0),
        global_mean=3.5,
        metrics={},
        data={"fingerprint": "planted", "source": "planted", "num_ratings": len(indices), "implicit": False},
        created_at="2026-01-01T00:00:00Z",
        model_version=f"mf-planted-{seed}",
        history=[],
    )


@pytest.fixture(scope="module")
def planted_path(tmp_path_factory) -> Path:
    return checkpoint.save(planted_checkpoint(), tmp_path_factory.mktemp("planted") / "model.ckpt")


@pytest.fixture
def ckpt_path(planted_path, tmp_path) -> Path:
    """A private copy, so cache files written next to it belong to one test."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(planted_path.read_bytes())
    return path


def ann_config(**kw):
    from service.ann import AnnConfig

    return AnnConfig(**{"min_items": 1000, "build_threads": 1, **kw})


def prebuild_cli():
    """scripts/prebuild_ann.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("prebuild_ann", REPO / "scripts" / "prebuild_ann.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exact_top(index: ServingIndex, user: int, k: int, banned: np.ndarray) -> np.ndarray:
    scores = index.item_vectors @ index.user_vectors[user]
    scores[banned] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


# --- ANN (needs faiss) --------------------------------------------------------------------------


def test_ann_agrees_with_exact_and_never_returns_banned(ckpt_path):
    pytest.importorskip("faiss")
    approx = load_state(ckpt_path, ann_config()).index
    exact = load_state(ckpt_path, ann_config(min_items=0)).index
    assert approx.ann is not None and exact.ann is None
    hits = 0
    for u in range(NUM_USERS):
        user = f"u{u}"
        extra = [f"i{i}" for i in exact_top(exact, u, 3, exact.seen(u))]  # explicit exclude= on top of seen
        got = approx.recommend(user, 10, exclude=extra)
        want = exact.recommend(user, 10, exclude=extra)
        banned = {f"i{i}" for i in exact.seen(u)} | set(extra)
        assert len(got.item_ids) == 10 and not banned & set(got.item_ids)
        assert got.scores == sorted(got.scores, reverse=True)
        # Exact scores for what it returns: the same numbers the exact path gives those items.
        exact_scores = exact.recommend(user, NUM_ITEMS, exclude=extra)
        lookup = dict(zip(exact_scores.item_ids, exact_scores.scores))
        assert np.allclose(got.scores, [lookup[i] for i in got.item_ids], rtol=0, atol=1e-5)
        hits += len(set(got.item_ids) & set(want.item_ids))
    assert hits / (10 * NUM_USERS) >= 0.95


def test_search_with_most_items_banned_and_k_beyond_what_is_left(ckpt_path):
    pytest.importorskip("faiss")
    ann = load_state(ckpt_path, ann_config()).index.ann
    query = ann.vectors[7].copy()
    allowed = np.array([3, 500, 1499, 2999])
    banned = np.setdiff1d(np.arange(NUM_ITEMS), allowed)
    idx, scores = ann.search(query, 10, np.concatenate([banned, banned[:5]]))  # duplicates are fine
    assert sorted(idx.tolist()) == allowed.tolist()
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and np.all(np.diff(scores) <= 0)
    idx, _ = ann.search(query, 1000, np.arange(100))  # k above efSearch
    assert len(idx) == 1000 and idx.min() >= 100 and len(set(idx.tolist())) == 1000
    assert len(ann.search(query, 5, np.arange(NUM_ITEMS))[0]) == 0


def test_cache_is_reused_and_stale_versions_removed(ckpt_path, monkeypatch):
    pytest.importorskip("faiss")
    from service import ann as ann_mod
    from service import ann_cache

    stale = ckpt_path.with_name("model.ckpt.ann-mf-older-hnsw32-efc40.faiss")
    stale.write_bytes(b"old")
    load_state(ckpt_path, ann_config())
    cache = ann_cache.cache_path(ckpt_path, "mf-planted-0", ann_config())
    assert cache.is_file() and not stale.exists()

    def no_build(*a, **kw):
        raise AssertionError("rebuilt although a valid cache exists")

    monkeypatch.setattr(ann_mod.AnnIndex, "build", staticmethod(no_build))
    assert load_state(ckpt_path, ann_config()).index.ann is not None


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "truncated"])
def test_corrupt_cache_is_rebuilt(ckpt_path, content, caplog):
    pytest.importorskip("faiss")
    from service import ann_cache

    cache = ann_cache.cache_path(ckpt_path, "mf-planted-0", ann_config())
    if content == "truncated":
        load_state(ckpt_path, ann_config())
        content = cache.read_bytes()[: cache.stat().st_size // 2]
    cache.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="service.ann_cache"):
        index = load_state(ckpt_path, ann_config()).index
    assert index.ann is not None and "rebuilding" in caplog.text
    assert ann_cache._read(cache, index.item_vectors) is not None  # the rebuilt file is valid
    assert index.recommend("u1", 10).item_ids


def test_cache_of_another_model_with_the_same_name_is_rebuilt(ckpt_path, tmp_path):
    pytest.importorskip("faiss")
    from service import ann_cache

    load_state(ckpt_path, ann_config())
    other = checkpoint.save(planted_checkpoint(seed=1), tmp_path / "other.ckpt")
    # Same version string and shape, different vectors: the sampled-rows check must refuse it.
    cache = ann_cache.cache_path(ckpt_path, "mf-planted-0", ann_config())
    wrong = ann_cache.cache_path(other, "mf-planted-1", ann_config())
    load_state(other, ann_config())
    cache.write_bytes(wrong.read_bytes())
    assert ann_cache._read(cache, load_state(ckpt_path, ann_config(min_items=0)).index.item_vectors) is None


def test_concurrent_loads_build_once(ckpt_path, monkeypatch):
    pytest.importorskip("faiss")
    from service import ann as ann_mod
    from service import ann_cache

    builds = []
    real_build = ann_mod.AnnIndex.build

    def counting_build(*a, **kw):
        builds.append(1)
        return real_build(*a, **kw)

    monkeypatch.setattr(ann_mod.AnnIndex, "build", staticmethod(counting_build))
    vectors = load_state(ckpt_path, ann_config(min_items=0)).index.item_vectors
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ann_cache.load_or_build(ckpt_path, "v", vectors, ann_config())))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(builds) == 1


def test_unwritable_cache_builds_in_memory(ckpt_path, monkeypatch, caplog):
    pytest.importorskip("faiss")
    from service import ann_cache

    def refuse(index, path):
        raise PermissionError(13, "read-only file system")

    monkeypatch.setattr(ann_cache, "_write", refuse)
    with caplog.at_level(logging.WARNING, logger="service.ann_cache"):
        index = load_state(ckpt_path, ann_config()).index
    assert index.ann is not None and "not cached" in caplog.text


def test_app_serves_through_ann(ckpt_path):
    pytest.importorskip("faiss")
    from service import create_app

    app = create_app({"CHECKPOINT": str(ckpt_path), "TESTING": True, "RELOAD_INTERVAL": 0, "ANN_MIN_ITEMS": 1000})
    assert app.extensions["recsys"].state.index.ann is not None
    body = app.test_client().get("/recommend?user_id=u3&k=10").get_json()
    seen = {f"i{i}" for i in app.extensions["recsys"].state.index.seen(3)}
    assert len(body["items"]) == 10 and not seen & {item["item_id"] for item in body["items"]}


def test_lists_searched_from_the_index_match_exact_ranking_and_are_cached(ckpt_path, monkeypatch):
    pytest.importorskip("faiss")
    from service import topn
    from service.topn import TopNConfig

    index = load_state(ckpt_path, ann_config(), TopNConfig(n=30)).index
    exact = load_state(ckpt_path, ann_config(min_items=0), TopNConfig(max_cells=0)).index
    assert index.topn is not None and index.topn.items.dtype == np.int32 and index.topn.items.shape == (NUM_USERS, 30)
    lists = list(ckpt_path.parent.glob("model.ckpt.ann-*.top30-ef128.npy"))
    assert len(lists) == 1 and isinstance(index.topn.items.base, np.memmap)  # shared by workers, not copied
    hits = 0
    for u in range(NUM_USERS):
        row = index.topn.items[u]
        assert (row >= 0).all() and not set(row.tolist()) & set(exact.seen(u).tolist())
        got = index.recommend(f"u{u}", 10)
        want = exact.recommend(f"u{u}", 10)
        assert got.scores == sorted(got.scores, reverse=True)
        full = exact.recommend(f"u{u}", NUM_ITEMS)
        lookup = dict(zip(full.item_ids, full.scores))
        assert np.allclose(got.scores, [lookup[i] for i in got.item_ids], rtol=0, atol=1e-5)
        hits += len(set(got.item_ids) & set(want.item_ids))
    assert hits / (10 * NUM_USERS) >= 0.97
    # k beyond the list and exclusions that empty it fall through to the live search, still correct.
    long = index.recommend("u0", 50)
    assert len(long.item_ids) == 50 and not {f"i{i}" for i in exact.seen(0)} & set(long.item_ids)
    row0 = [f"i{i}" for i in index.topn.items[0]]
    rest = index.recommend("u0", 5, exclude=row0)
    assert len(rest.item_ids) == 5 and not set(row0) & set(rest.item_ids)

    def no_build(*a, **kw):
        raise AssertionError("lists rebuilt although a valid cache exists")

    monkeypatch.setattr(topn, "build_lists", no_build)
    assert load_state(ckpt_path, ann_config(), TopNConfig(n=30)).index.topn is not None


@pytest.mark.parametrize("damage", ["shape", "out_of_range", "empty", "garbage"])
def test_damaged_list_cache_is_rebuilt_and_short_lists_hold_every_unseen_item(ckpt_path, damage):
    pytest.importorskip("faiss")
    from service import ann_cache, topn
    from service.topn import TopNConfig

    index = load_state(ckpt_path, ann_config(), TopNConfig(n=30)).index
    path = ann_cache.lists_path(ann_cache.cache_path(ckpt_path, index.model_version, ann_config()), 30, 128)
    good = np.load(path)
    if damage == "shape":
        np.save(path, np.zeros((3, 30), np.int32))
    elif damage == "out_of_range":
        np.save(path, np.full((NUM_USERS, 30), NUM_ITEMS, np.int32))
    else:
        path.write_bytes(b"" if damage == "empty" else b"garbage" * 100)
    again = load_state(ckpt_path, ann_config(), TopNConfig(n=30)).index
    assert np.array_equal(np.asarray(again.topn.items), good) and np.array_equal(np.load(path), good)
    # A user who has seen all but 4 items: their list holds exactly those 4, and k=10 answers them.
    ann = again.ann
    seen_all = np.arange(4, NUM_ITEMS, dtype=np.int64)
    lists = topn.build_lists(ann, again.user_vectors[:1], np.array([0, len(seen_all)]), seen_all, 30, threads=1)
    assert sorted(lists[0][lists[0] >= 0].tolist()) == [0, 1, 2, 3] and (lists[0][4:] == -1).all()


def test_long_histories_are_ranked_exactly_and_lists_of_other_sizes_are_removed(ckpt_path, monkeypatch):
    pytest.importorskip("faiss")
    from service import topn
    from service.topn import TopNConfig

    load_state(ckpt_path, ann_config(), TopNConfig(n=20))
    small = list(ckpt_path.parent.glob("*.top20-ef128.npy"))
    assert len(small) == 1
    monkeypatch.setattr(topn, "LONG_HISTORY", 30)  # every user has seen 30-40 items: most go the exact way
    index = load_state(ckpt_path, ann_config(), TopNConfig(n=25)).index
    assert not small[0].exists() and len(list(ckpt_path.parent.glob("*.top25-ef128.npy"))) == 1
    exact = load_state(ckpt_path, ann_config(min_items=0), TopNConfig(max_cells=0)).index
    long_users = [u for u in range(NUM_USERS) if len(exact.seen(u)) > 30]
    assert len(long_users) > NUM_USERS // 2
    for u in long_users:
        assert index.topn.items[u].tolist() == exact_top(exact, u, 25, exact.seen(u)).tolist()


def test_prebuild_command_writes_the_index_and_lists_that_workers_then_only_read(ckpt_path, monkeypatch, capsys):
    pytest.importorskip("faiss")
    from service import ann as ann_mod
    from service import topn

    monkeypatch.setenv("RECSYS_ANN_BUILD_THREADS", "1")
    monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", str(ann_config().min_items))
    assert prebuild_cli().main([str(ckpt_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and printed[0].endswith(".faiss") and printed[1].endswith(".top100-ef128.npy")
    assert all(Path(p).is_file() for p in printed)

    def no_build(*a, **kw):
        raise AssertionError("built although pre-built")

    monkeypatch.setattr(ann_mod.AnnIndex, "build", staticmethod(no_build))
    monkeypatch.setattr(topn, "build_lists", no_build)
    index = load_state(ckpt_path, ann_config()).index
    assert index.ann is not None and index.topn is not None and index.topn.items.shape == (NUM_USERS, 100)


def test_prebuild_for_a_model_store_writes_beside_the_version_that_workers_load(planted_path, tmp_path, monkeypatch,
                                                                               capsys):  # fmt: skip
    """Given the store or its ``current`` link, the files land beside ``versions/<v>.ckpt``: the resolved
    file a worker loads and looks beside (``service.state``), not beside the link (``current.ann-*``)."""
    pytest.importorskip("faiss")
    from model.store import ModelStore
    from service import ann as ann_mod
    from service import ann_cache, topn
    from service.state import ModelHolder

    monkeypatch.setenv("RECSYS_ANN_BUILD_THREADS", "1")
    monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", str(ann_config().min_items))
    store = ModelStore(tmp_path / "store").init()
    store.add_file(planted_path)
    store.set_current("mf-planted-0")
    version_file = store.path_of("mf-planted-0")
    assert prebuild_cli().main([str(store.root)]) == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(printed) == 2 and all(p.is_file() and p.parent == version_file.parent for p in printed)
    assert printed[0] == ann_cache.cache_path(version_file, "mf-planted-0", ann_config())  # the service's name
    assert not list(store.root.glob("*.ann-*"))

    def no_build(*a, **kw):
        raise AssertionError("built although pre-built")

    monkeypatch.setattr(ann_mod.AnnIndex, "build", staticmethod(no_build))
    monkeypatch.setattr(topn, "build_lists", no_build)
    assert prebuild_cli().main([str(store.current_link)]) == 0  # the link: the same files, found
    assert [Path(p) for p in capsys.readouterr().out.split()] == printed
    assert not list(store.root.glob("*.ann-*"))
    index = ModelHolder(store.root, ann=ann_config()).state.index  # a worker serving the store
    assert index.ann is not None and index.topn is not None and index.topn.items.shape == (NUM_USERS, 100)


@pytest.mark.parametrize(("min_items", "says"), [("0", "RECSYS_ANN_MIN_ITEMS=0"), ("", "under RECSYS_ANN_MIN_ITEMS=")])
def test_prebuild_builds_nothing_the_service_would_not_read(ckpt_path, monkeypatch, capsys, min_items, says):
    """It built an index for a 198-item model, which the service (HNSW from 100,000 items) never reads."""
    pytest.importorskip("faiss")
    if min_items:
        monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", min_items)
    assert prebuild_cli().main([str(ckpt_path)]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "nothing to build" in out.err and says in out.err
    assert not list(ckpt_path.parent.glob("*.ann-*"))


@pytest.mark.parametrize("case", ["missing", "truncated", "not a checkpoint", "directory", "store without current"])
def test_prebuild_refuses_what_it_cannot_load(planted_path, tmp_path, capsys, case):
    pytest.importorskip("faiss")
    from model.store import ModelStore

    target = tmp_path / "model.ckpt"
    if case == "truncated":
        target.write_bytes(planted_path.read_bytes()[:5000])
    elif case == "not a checkpoint":
        target.write_text("userId,movieId,rating,timestamp\n")
    elif case == "directory":
        target.mkdir()
    elif case == "store without current":
        target = ModelStore(tmp_path / "store").init().root
    assert prebuild_cli().main([str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(target) in err
    assert not list(tmp_path.rglob("*.ann-*"))


def test_prebuild_refuses_a_bad_ann_setting_in_one_line(planted_path, monkeypatch, capsys):
    """A raw ConfigError traceback before, after the checkpoint had loaded; a C-int overflow passed the check."""
    pytest.importorskip("faiss")
    for value in ("abc", "99999999999"):
        monkeypatch.setenv("RECSYS_ANN_EF_SEARCH", value)
        assert prebuild_cli().main([str(planted_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: RECSYS_ANN_EF_SEARCH=") and "\n" not in err


# --- without faiss ------------------------------------------------------------------------------


def test_service_works_when_faiss_is_missing_or_disabled(ckpt_path, monkeypatch, caplog):
    from service import ann_cache, create_app

    assert load_state(ckpt_path, ann_config(min_items=0)).index.ann is None
    assert load_state(ckpt_path, ann_config(min_items=NUM_ITEMS + 1)).index.ann is None
    monkeypatch.setattr(ann_cache, "import_faiss", lambda: None)
    with caplog.at_level(logging.WARNING, logger="service.ann_cache"):
        app = create_app({"CHECKPOINT": str(ckpt_path), "TESTING": True, "RELOAD_INTERVAL": 0, "ANN_MIN_ITEMS": 10})
    assert app.extensions["recsys"].state.index.ann is None and "faiss is not installed" in caplog.text
    resp = app.test_client().get("/recommend?user_id=u3&k=10")
    assert resp.status_code == 200 and len(resp.get_json()["items"]) == 10
    assert not list(ckpt_path.parent.glob("*.faiss"))


# --- memory shared between workers (checkpoint mmap, stored ranking arrays) ---------------------


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_serving_arrays_are_views_of_the_mapped_file(ckpt_path):
    ckpt = checkpoint.load(ckpt_path)
    index = ServingIndex(ckpt)
    ranges = _mapped_ranges(ckpt_path)
    for arr in (index.item_vectors, index.user_vectors, index.item_norms, index.item_bias, index.seen_indices):
        address = arr.__array_interface__["data"][0]
        assert any(lo <= address < hi for lo, hi in ranges), "array is a private copy, not the mapped file"
        assert not arr.flags.writeable  # a write would silently un-share the page (copy-on-write)
    assert np.shares_memory(index.item_vectors, ckpt.serving["item_vectors"])


def test_files_without_stored_ranking_arrays_still_serve_identically(ckpt_path, tmp_path):
    raw = torch.load(ckpt_path, weights_only=True)
    del raw["serving"]
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    before, after = ServingIndex(checkpoint.load(old)), ServingIndex(checkpoint.load(ckpt_path))
    assert checkpoint.load(old).serving == {}
    for a, b in [
        (before.recommend("u5", 10), after.recommend("u5", 10)),
        (before.similar("i9", 5), after.similar("i9", 5)),
    ]:
        assert a == b
    assert np.array_equal(before.item_vectors, after.item_vectors)


@pytest.mark.parametrize("damage", ["shape", "values", "dtype"])
def test_stored_ranking_arrays_that_disagree_with_the_weights_are_refused(ckpt_path, tmp_path, damage):
    raw = torch.load(ckpt_path, weights_only=True)
    vectors = raw["serving"]["item_vectors"]
    raw["serving"]["item_vectors"] = {
        "shape": vectors[:-1],
        "values": vectors + 1,
        "dtype": vectors.double(),
    }[damage]
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"serving array|serving\['item_vectors'\] has dtype torch.float64"):
        checkpoint.load(tmp_path / "bad.ckpt")
