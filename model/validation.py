"""Cheap validation signals for early stopping: clipped RMSE/MAE for ratings, sampled nDCG@10 for ranking.

These watch training; the full offline metrics (every user, every metric) live in :mod:`model.evaluate`.
"""

from __future__ import annotations

import numpy as np
import torch

from model.interactions import Interactions

VAL_USERS = 1000  # nDCG is averaged over at most this many validation users (a fixed sample per run)


@torch.no_grad()
def rmse_mae(network: torch.nn.Module, inter: Interactions, scale: tuple[float, float]) -> tuple[float, float]:
    """(RMSE, MAE) of the network's ratings on ``inter``, clipped to ``scale``."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    pred = np.empty(len(inter), dtype=np.float64)
    users, items = torch.from_numpy(inter.user_idx), torch.from_numpy(inter.item_idx)
    for start in range(0, len(inter), 65536):
        sl = slice(start, start + 65536)
        pred[sl] = network(users[sl].to(device), items[sl].to(device)).cpu().numpy()
    network.train(was_training)
    err = np.clip(pred, *scale) - inter.ratings
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


@torch.no_grad()
def ndcg_at_k(
    network: torch.nn.Module, train: Interactions, val: Interactions, device, k: int = 10, seed: int = 0
) -> float:
    """Mean nDCG@k over (a sample of) users with validation rows; training items are never ranked.

    Every validation item is relevant (binary gain); the ideal DCG places ``min(k, n_relevant)`` hits first.
    """
    indptr, indices = val.seen_csr()
    users = np.flatnonzero(np.diff(indptr))
    if len(users) > VAL_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, VAL_USERS, replace=False))
    train_ptr, train_idx = train.seen_csr()
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    was_training = network.training
    network.eval()
    for start in range(0, len(users), 256):
        block = users[start : start + 256]
        scores = network.score_all(torch.from_numpy(block).to(device)).float().cpu().numpy()  # (b, I)
        for row, user in enumerate(block):
            scores[row, train_idx[train_ptr[user] : train_ptr[user + 1]]] = -np.inf
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1, kind="stable"), 1)
        for row, user in enumerate(block):
            relevant = indices[indptr[user] : indptr[user + 1]]
            hits = np.isin(top[row], relevant)
            ideal = discount[: min(kk, len(relevant))].sum()
            total += float((hits * discount[:kk]).sum() / ideal)
    network.train(was_training)
    return total / max(len(users), 1)
