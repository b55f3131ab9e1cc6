"""Cheap validation signals for early stopping: clipped RMSE/MAE for ratings, sampled nDCG@10 for ranking.

These watch training; the full offline metrics (every user, every metric) live in :mod:`model.metrics`,
and the figures themselves are computed there and in :mod:`model.evaluate` (one RMSE, one nDCG).
"""

from __future__ import annotations

import numpy as np
import torch

from model.evaluate import mae, rmse
from model.interactions import Interactions
from model.metrics import evaluate_ranking

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
    pred = np.clip(pred, *scale)
    return rmse(pred, inter.ratings), mae(pred, inter.ratings)


@torch.no_grad()
def ndcg_at_k(
    network: torch.nn.Module, train: Interactions, val: Interactions, device, k: int = 10, seed: int = 0
) -> float:
    """Mean nDCG@k over (a sample of) users with validation rows; training items are never ranked.

    The protocol and the figure are :func:`model.metrics.evaluate_ranking`'s (binary gain, validation items
    also in training dropped from the relevant set).
    """
    val_csr = val.seen_csr()
    users = np.flatnonzero(np.diff(val_csr[0]))
    if len(users) > VAL_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, VAL_USERS, replace=False))

    def score(block: np.ndarray) -> np.ndarray:
        return network.score_all(torch.from_numpy(block).to(device)).float().cpu().numpy()  # (b, I)

    was_training = network.training
    network.eval()
    try:
        metrics, _ = evaluate_ranking(score, train.seen_csr(), val_csr, val.num_items, k, batch_size=256, users=users)
    finally:
        network.train(was_training)
    return 0.0 if metrics.users == 0 else metrics.ndcg
