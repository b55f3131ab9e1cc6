"""Sequence models: timelines, the numpy forward pass against torch, the checkpoint's recent items, and a
planted order that sequence models recover and order-blind models cannot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint_checks import consistency_error
from model.config import RANKING_DEFAULTS
from model.data import RawRatings, load_ratings
from model.idmap import IdMap
from model.interactions import Interactions, build_dataset, encode_new_users
from model.metrics import evaluate_fold_in, evaluate_ranking
from model.retrain import ExitCode
from model.sequence import SEQUENCE_KINDS, build_sequence_network
from model.sequence_data import FileOrderWarning, last_out, left_pad, newest_rows, next_item_pairs, timelines, windows
from model.sequence_numpy import encode, encode_history, prepare
from model.splits import fold_in_split
from model.train import TrainConfig, fit, resolve
from service.index import ServingIndex


def inter(users, items, times) -> Interactions:
    n = len(users)
    return Interactions(users, items, np.ones(n, np.float32), times, max(users) + 1, max(items) + 1)


def test_timelines_sort_by_time_and_keep_file_order_on_ties():
    data = inter([0, 1, 0, 0, 1], [5, 6, 7, 8, 9], [30, 1, 10, 10, 0])
    indptr, items = timelines(data)
    assert items[indptr[0] : indptr[1]].tolist() == [7, 8, 5]  # 10, 10 (file order), then 30
    assert items[indptr[1] : indptr[2]].tolist() == [9, 6]
    train, test = last_out(data)
    assert sorted(zip(test.user_idx.tolist(), test.item_idx.tolist())) == [(0, 5), (1, 6)]
    assert len(train) == 3 and train.num_items == data.num_items
    tie = inter([0, 0, 0], [1, 2, 0], [4, 4, 1])
    assert last_out(tie)[1].item_idx.tolist() == [2]  # equal times: the later row in the file is the newer


def test_no_timestamps_means_file_order_with_a_warning():
    data = inter([0, 0, 0], [3, 1, 2], [0, 0, 0])
    with pytest.warns(FileOrderWarning, match="no timestamps"):
        indptr, items = timelines(data)
    assert items.tolist() == [3, 1, 2]


def test_windows_and_pairs_are_left_padded_next_item_targets():
    indptr, items = np.array([0, 4, 5]), np.array([1, 2, 3, 4, 9])
    x, y = windows(indptr, items, 3)
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[2, 3, 4]]  # a one-item timeline has no transition
    x, y = windows(indptr, items, 2)
    assert x.tolist() == [[2, 3], [-1, 1]] and y.tolist() == [[3, 4], [-1, 2]]
    x, y = next_item_pairs(indptr, items, 2)
    assert x.tolist() == [[-1, 1], [1, 2], [2, 3]] and y.tolist() == [2, 3, 4]
    assert left_pad(indptr, items, 3).tolist() == [[2, 3, 4], [-1, -1, 9]]


@pytest.mark.parametrize(("kind", "blocks"), [*((kind, 2) for kind in SEQUENCE_KINDS), ("sasrec", 3)])
def test_numpy_forward_pass_is_the_torch_network(kind, blocks):
    torch.manual_seed(0)
    config = TrainConfig(model=kind, dim=8, max_len=6, heads=2, dropout=0.2, blocks=blocks)
    net = build_sequence_network(kind, 30, config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # away from the initial zeros (biases), so every weight matters
    seqs = np.random.default_rng(0).integers(0, 30, (7, 6))
    seqs[1, :3] = -1
    seqs[2, :5] = -1
    with torch.no_grad():
        expected = net.encode(torch.from_numpy(seqs)).numpy()
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    np.testing.assert_allclose(encode(weights, kind, seqs, heads=2), expected, rtol=1e-4, atol=1e-5)
    # One history (POST /recommend's path, sasrec's own shorter one), with or without the prepared weights.
    for w in (weights, prepare(weights)):
        for row, want in zip(seqs, expected):
            history = row[row >= 0]
            np.testing.assert_allclose(encode_history(w, kind, history, 6, 2), want, rtol=1e-4, atol=1e-5)
        longer = np.concatenate([[1, 2, 3], seqs[0]])  # more than max_len: the newest max_len items count
        np.testing.assert_allclose(encode_history(w, kind, longer, 6, 2), expected[0], rtol=1e-4, atol=1e-5)
    seqs[:, :2] = -1  # padding in every row (sasrec drops those columns) and a row of padding only
    seqs[3] = -1
    with torch.no_grad():
        expected = net.encode(torch.from_numpy(seqs)).numpy()
    for w in (weights, prepare(weights)):  # the batched path too takes the prepared weights (folded norms)
        np.testing.assert_allclose(encode(w, kind, seqs, heads=2), expected, rtol=1e-4, atol=1e-5)


def cycle_data(num_items: int = 20, users: int = 120, length: int = 8, seed: int = 0) -> RawRatings:
    """Each user walks ``length + 1`` steps of one fixed cycle of items from a random start: the next item is
    always the successor of the last, and the set of items says nothing about which end of the run is newer."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start = int(rng.integers(num_items))
        rows += [(f"u{u}", f"i{(start + t) % num_items:02d}", 1000 * u + t) for t in range(length + 1)]
    order = rng.permutation(len(rows))  # the file is shuffled: only the timestamps carry the order
    u, i, t = zip(*[rows[j] for j in order])
    n = len(rows)
    return RawRatings(np.array(u, object), np.array(i, object), np.ones(n, np.float32), np.array(t, np.int64),
                      "cycle", "cycle", implicit=True)  # fmt: skip


@pytest.fixture(scope="module")
def cycle_split():
    dataset = build_dataset(cycle_data())
    train, test = last_out(dataset.interactions)
    return dataclasses.replace(dataset, interactions=train), test


def hit_at_1(index: ServingIndex, train: Interactions, test: Interactions) -> float:
    metrics, _ = evaluate_ranking(index.score_users, train.seen_csr(), test.seen_csr(), train.num_items, k=1)
    return metrics.hit_rate


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_sequence_models_recover_a_planted_order(cycle_split, kind, tmp_path):
    dataset, test = cycle_split
    config = TrainConfig(model=kind, dim=16, epochs=40, lr=0.01, max_len=4, batch_size=32, val_fraction=0)
    result = fit(dataset.interactions, config, progress=False)
    ckpt = checkpoint.load(checkpoint.save(checkpoint.from_training(result, dataset), tmp_path / "m.ckpt"))
    assert ckpt.recent_items.shape == (dataset.interactions.num_users, 4)
    index = ServingIndex(ckpt)
    assert hit_at_1(index, dataset.interactions, test) >= 0.9
    # A visitor's history (oldest first) gets the successor of its newest item.
    assert index.recommend_for_history(["i03", "i04", "i05"], 1).item_ids == ["i06"]
    assert index.recommend_for_history(["i17", "i18", "i19", "i00"], 1).item_ids == ["i01"]


def test_order_blind_models_cannot_recover_it(cycle_split):
    dataset, test = cycle_split
    # Both ends of a user's run are equally likely to an order-blind model: at best about half are hits.
    for config in (TrainConfig(loss="ials", dim=16, epochs=10, reg=1.0, val_fraction=0), TrainConfig(model="gmf")):
        index = ServingIndex(checkpoint.from_training(fit(dataset.interactions, config, progress=False), dataset))
        assert hit_at_1(index, dataset.interactions, test) <= 0.65


def test_known_users_rank_by_their_stored_recent_items(cycle_split):
    dataset, _ = cycle_split
    config = TrainConfig(model="sasrec", dim=8, epochs=2, max_len=5, val_fraction=0)
    ckpt = checkpoint.from_training(fit(dataset.interactions, config, progress=False), dataset)
    index = ServingIndex(ckpt)
    with torch.no_grad():
        expected = ckpt.network().encode(torch.from_numpy(ckpt.recent_items))
        expected = ckpt.network().logits(expected).numpy()
    np.testing.assert_allclose(index.score_users(np.arange(10)), expected[:10], rtol=1e-4, atol=1e-4)
    # POST /recommend with a known user's own recent items is their GET /recommend ranking (seen aside).
    recent = [ckpt.item_ids[i] for i in ckpt.recent_items[3] if i >= 0]
    folded = index.fold_in(np.array([index.item_index[i] for i in recent]))
    np.testing.assert_allclose(folded, index.user_vectors[3], rtol=1e-5, atol=1e-6)


def test_recent_items_are_checked_at_load(cycle_split, tmp_path):
    dataset, _ = cycle_split
    config = TrainConfig(model="gru4rec", dim=8, epochs=1, max_len=3, val_fraction=0)
    ckpt = checkpoint.from_training(fit(dataset.interactions, config, progress=False), dataset)
    bad = dataclasses.replace(ckpt, recent_items=ckpt.recent_items[:, :2])
    with pytest.raises(checkpoint.CheckpointError, match="recent_items has shape"):
        checkpoint.load(checkpoint.save(bad, tmp_path / "a.ckpt"))
    wrong = ckpt.recent_items.copy()
    wrong[0, 0] = ckpt.num_items
    assert "outside the catalogue" in consistency_error(dataclasses.replace(ckpt, recent_items=wrong))
    wrong[0, 0] = -2  # -1 is the padding, anything below it no item (a mutation review moved the bound unnoticed)
    assert "outside the catalogue" in consistency_error(dataclasses.replace(ckpt, recent_items=wrong))
    assert "needs recent_items" in consistency_error(dataclasses.replace(ckpt, recent_items=None))


def test_sampled_softmax_and_validation_on_the_last_item(cycle_split):
    dataset, _ = cycle_split
    config = TrainConfig(model="sasrec", dim=8, epochs=3, max_len=4, negatives=5, patience=1)
    result = fit(dataset.interactions, config, progress=False)
    assert result.config.negatives == 5 and 0.0 <= result.metrics["val_ndcg10"] <= 1.0
    assert all(np.isfinite(row["train_loss"]) for row in result.history)


def test_sequence_kinds_refuse_other_losses():
    with pytest.raises(ValueError, match="softmax"):
        resolve(TrainConfig(model="caser", loss="bce"), implicit=True)
    assert resolve(TrainConfig(model="sasrec"), implicit=False).max_len == 50


def test_retrain_gates_a_sequence_model_on_each_users_newest_row(tmp_path):
    from tests.test_retrain import retrain

    raw = cycle_data(users=80)
    rows = sorted(zip(raw.user_ids, raw.item_ids, raw.timestamps), key=lambda r: r[2])
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    old.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},1,{t}\n" for u, i, t in rows if t % 1000 < 8))
    new.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},1,{t}\n" for u, i, t in rows))
    store = tmp_path / "store"
    fast = ["--store", str(store), "--quiet", "--dim", "16", "--max-len", "4", "--batch-size", "32", "--val-fraction",
            "0", "--model", "sasrec"]  # fmt: skip
    good = [*fast, "--epochs", "40", "--lr", "0.01"]
    assert retrain.main(["--data", str(old), *good]) == 0  # an empty store: promoted
    # The data grows by one step per user: that newest row is what every model is judged on.
    report = tmp_path / "weak.json"
    weak = ["--data", str(new), *fast, "--epochs", "1", "--lr", "0.00001", "--report", str(report)]
    assert retrain.main(weak) == ExitCode.REJECTED
    figures = json.loads(report.read_text())
    assert figures["holdout"]["by"] == "each user's newest row" and figures["holdout"]["held_rows"] == 80
    assert figures["current"]["holdout"]["ndcg10"] >= 0.9 > figures["candidate"]["holdout"]["ndcg10"]
    assert retrain.main(["--data", str(new), *good]) == ExitCode.PROMOTED


def test_evaluate_cli_scores_the_newest_row_of_the_whole_file(cycle_split, tmp_path, capsys):
    from tests.test_retrain import _script

    dataset, test = cycle_split
    config = TrainConfig(model="gru4rec", dim=16, epochs=40, lr=0.01, max_len=4, batch_size=32, val_fraction=0)
    ckpt = checkpoint.from_training(fit(dataset.interactions, config, progress=False), dataset)
    path = checkpoint.save(ckpt, tmp_path / "m.ckpt")
    raw = cycle_data()
    whole = tmp_path / "all.csv"
    whole.write_text("".join(f"{u},{i},1,{t}\n" for u, i, t in zip(raw.user_ids, raw.item_ids, raw.timestamps)))
    assert _script("evaluate").main(["--checkpoint", str(path), "--test", str(whole), "--last-out", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 120 and report["ranking"]["users"] == 120
    expected = hit_at_1(ServingIndex(ckpt), dataset.interactions, test)
    assert report["ranking"]["hit_rate"] >= expected >= 0.9  # HR@10 at least HR@1, on the same items

    # --fold-in feeds each new user's history oldest first, as POST /recommend takes it (it fed the items sorted
    # by index: a run that wraps around the cycle, i17 i18 i19 i00 i01, then ended at i19).
    new = cycle_data(seed=1)
    fresh = tmp_path / "new.csv"
    fresh.write_text("".join(f"n{u},{i},1,{t}\n" for u, i, t in zip(new.user_ids, new.item_ids, new.timestamps)))
    assert (
        _script("evaluate").main(["--checkpoint", str(path), "--test", str(fresh), "--fold-in", "0.8", "--json"]) == 0
    )
    got = json.loads(capsys.readouterr().out)["fold_in"]
    new = load_ratings(fresh)
    history, heldout = fold_in_split(encode_new_users(new, IdMap(ckpt.user_ids), IdMap(ckpt.item_ids)), 0.8, 0)
    index = ServingIndex(ckpt)
    figures = []
    for indptr, items in (timelines(history), history.seen_csr()):  # oldest first, then sorted by index

        def score(users, indptr=indptr, items=items):
            return np.stack([index.score_history(items[indptr[u] : indptr[u + 1]]) for u in users])

        figures.append(evaluate_fold_in(score, history.seen_csr(), heldout.seen_csr(), index.num_items))
    assert got["ndcg@100"] == pytest.approx(figures[0]["ndcg@100"]) and got["users"] == 120
    assert abs(figures[0]["ndcg@100"] - figures[1]["ndcg@100"]) > 0.05  # the order changes what is measured


def test_benchmark_sequence_runs_on_a_tiny_file(tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("benchmark_sequence", REPO / "scripts" / "benchmark_sequence.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "benchmark_sequence", bench)  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    raw = cycle_data(users=40)
    rows = zip(raw.user_ids, raw.item_ids, raw.timestamps)
    (tmp_path / "u.data").write_text("".join(f"{u[1:]}\t{i[1:]}\t1\t{t}\n" for u, i, t in rows))
    args = ["--data-dir", str(tmp_path), "--seeds", "0", "--models", "sasrec", "--epochs", "2", "--peers",
            "popularity", "--results", str(tmp_path / "runs"), "--output", ""]  # fmt: skip
    assert bench.main([*args, "--jobs", "2"]) == 0  # each system in a child process, saved under --results
    table = capsys.readouterr().out
    assert "| ours sasrec |" in table and "| popularity |" in table and "failed" not in table
    assert "reused" not in table and len(list((tmp_path / "runs").glob("*.json"))) == 2
    assert bench.main(args) == 0  # the same key again: nothing re-runs, the saved runs give the same table
    again = capsys.readouterr().out
    assert "2 of 2 runs were measured by earlier invocations" in again and "all of them" in again
    rows = lambda text: [ln for ln in text.splitlines() if ln.startswith("| ours") or ln.startswith("| pop")]  # noqa: E731
    assert rows(again) == rows(table)
    saved = bench.result_path("popularity", 0, bench.parse_args(args))
    record = json.loads(saved.read_text())
    saved.write_text(json.dumps({**record, "test": {}, "error": "RuntimeError: boom"}))  # a failed run is retried
    assert bench.main(args) == 0
    third = capsys.readouterr().out
    assert "1 of 2 runs were measured by earlier invocations" in third
    assert "reused: ours sasrec seed 0;" in third and rows(third) == rows(table)
    assert not json.loads(saved.read_text())["error"]
    assert bench.main([*args, "--seeds", "0,1", "--render-only"]) == 0  # seed 1 never ran: shown, not run
    partial = capsys.readouterr().out
    assert "not run" in partial and "means over the 1 seed(s) run" in partial
    assert not list((tmp_path / "runs").glob("*seed1*"))
    parsed = bench.parse_args(args)
    parsed.implicit, parsed.train_rows = False, 120
    ours = bench.result_path("ours sasrec", 0, parsed)
    monkeypatch.setitem(RANKING_DEFAULTS["sasrec"], "dim", 24)  # a changed default: the saved run is not reused
    assert bench.result_path("ours sasrec", 0, parsed) != ours
    assert bench.result_path("popularity", 0, parsed) == saved


def test_the_retrain_holdout_is_each_users_newest_fresh_pair_even_when_an_old_pair_repeats_after_it():
    """Repeat consumption: a user's newest row may repeat a pair the served model knows. The holdout then takes
    their newest fresh row (it held nothing before: "nothing to judge by"), with every row of that pair."""
    # (user, item, time); eligible = the pair is fresh (no compared model trained on it)
    rows = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 0, 4),  # old a, fresh b, fresh c, old a again: c is held
            (1, 3, 1), (1, 3, 2),  # one fresh pair, twice: nothing else to train on, nothing held
            (2, 4, 1), (2, 5, 2), (2, 5, 3),  # old e, fresh f twice: both f rows held
            (3, 6, 1), (3, 7, 2)]  # fmt: skip
    users, items, times = (np.array(col) for col in zip(*rows))
    inter = Interactions(users, items, np.ones(len(rows), np.float32), times, 4, 8)
    eligible = ~np.isin(items, [0, 4, 6])
    held = newest_rows(inter, eligible)
    assert held.tolist() == [False, False, True, False, False, False, False, True, True, False, True]
    # Without eligibility it is leave-last-out: each user's newest row.
    assert np.flatnonzero(newest_rows(inter)).tolist() == [3, 5, 8, 10]
