"""The exact pruned top-k (service/pruned.py): the full scan's answers, only where the vectors allow it."""

from __future__ import annotations

import numpy as np
import pytest

from model.synthetic import clustered_factors
from model.topk import top_k
from service import pruned


def _vectors(n_items: int, n_users: int, seed: int, dim: int = 64, structured: bool = True):
    """Items (n, dim+1) ``[V, b]`` and user queries ``[U, 1]``: clustered low-rank factors like trained ones (one
    shared basis), or isotropic noise."""
    rng = np.random.default_rng(seed)
    draw = clustered_factors(rng, dim) if structured else (lambda n: rng.normal(size=(n, dim)).astype(np.float32))
    items = np.hstack([draw(n_items), 0.3 * rng.normal(size=(n_items, 1))]).astype(np.float32)
    return items, np.hstack([draw(n_users), np.ones((n_users, 1))]).astype(np.float32)


def _queries(users: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The users' vectors as build()'s sample, nothing banned."""
    return [(user, np.zeros(0, np.int64)) for user in users]


def _full(items: np.ndarray, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = items @ query
    scores[banned] = -np.inf
    top = top_k(scores, k)
    return top, scores[top]


@pytest.fixture(scope="module")
def catalogue():
    items, users = _vectors(12000, 300, seed=1)
    best = int(np.argmax(items[:4000] @ users[0]))
    items[4000:4100] = items[best]  # 101 identical rows, users[0]'s best item: ties at the top of its list
    return items, users


def test_trained_like_vectors_get_a_pruned_scan_that_reads_a_fraction_of_them(catalogue):
    items, users = catalogue
    scan = pruned.build(items, _queries(users))
    assert scan is not None
    assert scan.lead_dims < items.shape[1] // 2
    found = [scan.search_counted(q, 10, np.zeros(0, np.int64)) for q in users]
    assert sum(f is not None for f in found) >= 0.9 * len(users)  # nearly every query is pruned
    assert np.median([f[2] for f in found if f is not None]) < len(items) / 40  # and scores few items exactly


def test_isotropic_vectors_keep_the_full_scan():
    items, users = _vectors(12000, 100, seed=3, structured=False)
    assert pruned.build(items, _queries(users)) is None


@pytest.mark.parametrize("k", [1, 10, 100])
def test_the_pruned_scan_answers_what_the_full_scan_does(catalogue, k):
    items, users = catalogue
    scan = pruned.build(items, _queries(users))
    rng = np.random.default_rng(k)
    answered = 0
    for i, query in enumerate(users):
        banned = np.sort(rng.choice(len(items), 50, replace=False)) if i % 2 else np.zeros(0, np.int64)
        if i % 3 == 0:  # users[0]: 101 items tie for its first place
            query, banned = users[0], banned[(banned < 4000) | (banned >= 4100)]
        found = scan.search(query, k, banned)
        if found is None:  # a query the bound leaves too many items for: the caller scans
            continue
        want_items, want_scores = _full(items, query, k, banned)
        np.testing.assert_array_equal(found[0], want_items)  # the same items in the same order, ties by index
        np.testing.assert_allclose(found[1], want_scores, rtol=1e-5, atol=1e-5)
        answered += 1
    # Pruning answers most queries at the usual k (k = 100 leaves more candidates, and more queries to the scan).
    assert answered >= (0.8 if k <= 10 else 0.2) * len(users)


def test_a_catalogue_of_uneven_blocks_with_a_block_all_banned(catalogue):
    """The bounds are read in equal blocks (the best of each is scored exactly for the floor): a catalogue that
    does not divide into them leaves a padded last block, and a history can ban every item of a block. Neither
    may change the answer."""
    items, users = catalogue
    items = items[:11_987]  # 40 blocks of 300 at k = 10: the last holds 287 items and 13 padding slots
    scan = pruned.build(items, _queries(users))
    assert scan is not None
    answered = 0
    for i, query in enumerate(users[:60]):
        banned = np.arange(300 * (i % 39), 300 * (i % 39) + 300) if i % 2 else np.arange(11_700, 11_987)
        for k in (3, 10):
            found = scan.search(query, k, banned)
            if found is None:
                continue
            want_items, want_scores = _full(items, query, k, banned)
            np.testing.assert_array_equal(found[0], want_items)
            np.testing.assert_allclose(found[1], want_scores, rtol=1e-5, atol=1e-5)
            answered += 1
    assert answered >= 100  # of 120: the pruned path did answer


def test_the_tolerance_keeps_an_item_whose_bound_is_tight(catalogue, monkeypatch):
    """An item whose coordinates beyond the leading ones point exactly along the query's: Cauchy-Schwarz is then an
    equality, and only the tolerance keeps float32 rounding from putting its bound under its own score (without
    it, about 40% of these queries lose their best item)."""
    items, users = catalogue
    scan = pruned.build(items, _queries(users))
    dim, lead = items.shape[1] - 1, scan.lead_dims
    rng = np.random.default_rng(5)
    lost = 0
    for i, tolerance in enumerate((pruned.TOLERANCE, 0.0)):
        monkeypatch.setattr(pruned, "TOLERANCE", tolerance)
        wrong = 0
        for trial in range(100):
            query = users[trial]
            rest = query[:dim] @ scan.rotation
            rest[:lead] = 0.0
            planted = items.copy()
            j = int(rng.integers(0, len(items)))
            planted[j] = np.append((rng.uniform(5, 50) * rest / np.linalg.norm(rest)) @ scan.rotation.T, 0.0)
            rotated = planted[:, :dim] @ scan.rotation
            block = np.ascontiguousarray(np.hstack([rotated[:, :lead], planted[:, dim:]]))
            rests = np.linalg.norm(rotated[:, lead:], axis=1).astype(np.float32)
            norm = float(np.linalg.norm(planted, axis=1).max())
            tight = pruned.PrunedScan(planted, scan.rotation, block, rests, norm)
            found = tight.search(query, 1, np.zeros(0, np.int64))
            want = _full(planted, query, 1, np.zeros(0, np.int64))[0]
            wrong += found is not None and not np.array_equal(found[0], want)
        if i == 0:  # the module's own tolerance: every answer right
            assert wrong == 0
        else:
            lost = wrong
    assert lost > 0  # the planted case does need the tolerance: without it some answers are wrong


def test_queries_pruning_cannot_help_are_left_to_the_full_scan(catalogue):
    items, users = catalogue
    scan = pruned.build(items, _queries(users))
    none = np.zeros(0, np.int64)
    assert scan.search(users[0], len(items) // 2, none) is None  # k near the catalogue's size
    assert scan.search(users[0], 0, none) is None  # no items asked for: the scan's empty answer
    assert scan.search(users[0], 10, np.arange(len(items) - 5)) is None  # almost every item banned
    assert scan.search(np.full_like(users[0], np.nan), 10, none) is None
    # A query nearly orthogonal to the items' leading directions: its bound could not narrow anything.
    outside = np.append(scan.rotation[:, -1] * 5.0, 1.0).astype(np.float32)
    assert scan.search(outside, 10, none) is None


def _structured_checkpoint(num_items: int, num_users: int = 300):
    """scripts/benchmark_ann.py's mf checkpoint: clustered rank-16 factors in 64-d (like trained ones), every user
    having seen 25 of their own top-100 items and 25 random ones (so a fold-in of a history looks like them), and
    a trained model's L2."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("benchmark_ann", REPO / "scripts" / "benchmark_ann.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_checkpoint(num_items, num_users, num_users, reg=5.0)


def test_the_service_answers_the_same_with_and_without_pruning_over_http(tmp_path, start_uwsgi):
    """The real uWSGI, twice on one checkpoint: pruned (the default, on for these vectors) and RECSYS_PRUNE_MIN_ITEMS=0
    (the full scan). New users' histories (items of one user's list, so the fold-in looks like a real user's), with
    and without ``exclude``, give the same answers."""
    from model import checkpoint
    from tests.test_uwsgi import call

    def http_json(base: str, path: str, body: dict | None = None) -> dict:
        status, _, answer = call(base, path, body)
        assert status == 200, answer
        return answer

    path = checkpoint.save(_structured_checkpoint(12000), tmp_path / "model.ckpt")
    pruning, scanning = start_uwsgi(path), start_uwsgi(path, RECSYS_PRUNE_MIN_ITEMS="0")
    assert "pruned exact top-k on" in pruning.log() and "pruned exact top-k" not in scanning.log()
    for u in range(0, 300, 10):
        top = http_json(scanning.base, f"/recommend?user_id=u{u}&k=30")["items"]
        for body in (
            {"history": [item["item_id"] for item in top[:20]], "k": 10},
            {"history": [item["item_id"] for item in top[:5]], "k": 25, "exclude": [top[5]["item_id"]]},
        ):
            got = http_json(pruning.base, "/recommend", body)["items"]
            want = http_json(scanning.base, "/recommend", body)["items"]
            assert [i["item_id"] for i in got] == [i["item_id"] for i in want]
            np.testing.assert_allclose([i["score"] for i in got], [i["score"] for i in want], rtol=1e-5, atol=1e-5)


def test_the_benchmark_script_reports_agreement_with_the_full_scan(tmp_path):
    """scripts/benchmark_pruned.py on a checkpoint whose vectors prune: a section with both kinds of query, every
    answer the full scan's."""
    import subprocess
    import sys

    from model import checkpoint
    from tests.conftest import REPO

    path = checkpoint.save(_structured_checkpoint(12000), tmp_path / "model.ckpt")
    out = tmp_path / "bench.md"
    script = REPO / "scripts" / "benchmark_pruned.py"
    command = [sys.executable, str(script), "--checkpoint", str(path), "--output", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith(("| known", "| fold_in"))]
    assert [r[1].strip() for r in rows] == ["known", "fold_in"]
    for row in rows:
        assert float(row[2]) >= 0.5  # most queries of both kinds are pruned
        assert float(row[4]) == 1.0  # agree: every pruned answer identical to the full scan's
