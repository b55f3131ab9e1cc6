"""Mult-VAE / Mult-DAE: a planted structure they must recover, and fold-in of a user never seen in training.

Block-diagonal tastes: 5 groups of users, each interacting only with items of its own block of 12 (each user
a random 7 of them). One user of every group is held out of training whole; folding in their history
through the serving index must recommend the rest of their block, exactly as for the users trained on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model import checkpoint
from model.autoencoder import encode_history, encoder_arrays, history_bag
from model.data import RawRatings
from model.interactions import build_dataset
from model.train import TrainConfig, fit
from service.index import ServingIndex
from tests.conftest import REPO

GROUPS, USERS, BLOCK, TAKEN = 5, 16, 12, 7


def blocks(seed: int = 0) -> tuple[RawRatings, dict[str, list[str]]]:
    """(training rows, held-out users' histories): every group's last user is held out."""
    rng = np.random.default_rng(seed)
    users, items, held = [], [], {}
    for u in range(GROUPS * USERS):
        group = u // USERS
        mine = [f"i{group * BLOCK + j:03d}" for j in rng.choice(BLOCK, TAKEN, replace=False)]
        if u % USERS == USERS - 1:
            held[f"u{u:03d}"] = mine
            continue
        users += [f"u{u:03d}"] * TAKEN
        items += mine
    n = len(users)
    raw = RawRatings(np.array(users, dtype=object), np.array(items, dtype=object), np.ones(n, np.float32),
                     np.arange(n, dtype=np.int64), "blocks", "blocks")  # fmt: skip
    return raw, held


def block_of(item_id: str) -> int:
    return int(item_id[1:]) // BLOCK


@pytest.fixture(scope="module", params=["vae", "dae"])
def served(request, tmp_path_factory):
    raw, held = blocks()
    dataset = build_dataset(raw)
    config = TrainConfig(model=request.param, dim=8, hidden=32, epochs=80, lr=0.01, batch_size=16, val_fraction=0)
    result = fit(dataset.interactions, config, progress=False)
    path = checkpoint.save(checkpoint.from_training(result, dataset), tmp_path_factory.mktemp("ae") / "m.ckpt")
    return request.param, checkpoint.load(path), held, path


def test_recovers_planted_blocks_and_folds_in_unseen_users(served):
    kind, ckpt, held, _ = served
    index = ServingIndex(ckpt)
    # Known users: the 5 unseen items of their own block come first.
    for user in ckpt.user_ids:
        group = int(user[1:]) // USERS
        top = index.recommend(user, BLOCK - TAKEN).item_ids
        assert [block_of(i) for i in top] == [group] * len(top), (kind, user, top)
    # Users never seen in training: their history's code gives the rest of their block, history excluded.
    for user, history in held.items():
        assert user not in index.user_index
        group = int(user[1:]) // USERS
        top = index.recommend_for_history(history, BLOCK - TAKEN).item_ids
        assert not set(top) & set(history)
        assert [block_of(i) for i in top] == [group] * len(top), (kind, user, top)


def test_serving_encoder_is_the_training_encoder(served):
    """The numpy fold-in (request path) computes the network's own mean code, and a known user's stored code."""
    _, ckpt, _, _ = served
    network = ckpt.network()
    arrays = encoder_arrays({k: v.numpy() for k, v in ckpt.state_dict.items()}, ckpt.config.dim)
    indptr, indices = ckpt.seen_indptr, ckpt.seen_indices
    users = np.arange(ckpt.num_users)
    with torch.no_grad():
        mean = network.encode(*history_bag(indptr, indices, users)[:3])[:, : ckpt.config.dim].numpy()
    for u in users[::7]:
        code = encode_history(*arrays, indices[indptr[u] : indptr[u + 1]])
        np.testing.assert_allclose(code, mean[u], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(code, ckpt.state_dict["user_factors.weight"][u].numpy(), rtol=1e-4, atol=1e-5)


def test_vae_learns_a_posterior_dae_does_not():
    """The VAE's encoder also outputs a log-variance (the KL term is trained); the DAE's only the mean."""
    raw, _ = blocks(1)
    dataset = build_dataset(raw)
    for kind, width in (("vae", 16), ("dae", 8)):
        config = TrainConfig(model=kind, dim=8, hidden=16, epochs=2, batch_size=16, val_fraction=0)
        state = fit(dataset.interactions, config, progress=False).network.state_dict()
        assert state["latent.weight"].shape == (width, 16)


def test_evaluate_fold_in_scores_new_users_through_the_service(served, tmp_path):
    """scripts/evaluate.py --fold-in: the held-out users are new to the model; 80% of their 7 items folded in,
    the rest scored. Their block's other items come first, so every held-out item is in the top 20."""
    _, _, held, path = served
    rows = [f"{user},{item},1" for user, items in held.items() for item in items] + ["u000,i000,1"]  # u000: known
    test = tmp_path / "new-users.csv"
    test.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint", str(path), "--test", str(test)]
    proc = subprocess.run([*cmd, "--fold-in", "0.8", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fold = json.loads(proc.stdout)["fold_in"]
    assert fold["users"] == GROUPS and fold["known_users_skipped"] == 1 and fold["fraction"] == 0.8
    assert fold["recall@20"] == fold["recall@50"] == 1.0, fold
    assert 0.3 < fold["ndcg@10"] <= 1.0 and 0.3 < fold["ndcg@100"] <= 1.0, fold
    bad = subprocess.run([*cmd, "--fold-in", "1.5"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "--fold-in" in bad.stderr
    # Only new users (u000 left out): the text names what the known-user blocks cannot measure, not rows of nan.
    test.write_text("user,item,rating\n" + "\n".join(rows[:-1]) + "\n")
    text = subprocess.run([*cmd, "--fold-in", "0.8"], capture_output=True, text=True, cwd=REPO, timeout=120).stdout
    assert f"ranking @10: no known user in the test file ({GROUPS} new ones" in text and "nan" not in text
    assert "rating: every row is of a user or item the model never saw" in text and "ndcg@100" in text
