"""Evaluation metrics over held-out interactions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.interactions import Interactions


@torch.no_grad()
def predict_ratings(network: nn.Module, inter: Interactions, batch_size: int = 65536) -> np.ndarray:
    """Network outputs for every row of ``inter``; shape (n,), float32."""
    was_training = network.training
    network.eval()
    out = np.empty(len(inter), dtype=np.float32)
    users, items = torch.from_numpy(inter.user_idx), torch.from_numpy(inter.item_idx)
    for start in range(0, len(inter), batch_size):
        sl = slice(start, start + batch_size)
        out[sl] = network(users[sl], items[sl]).numpy()
    network.train(was_training)
    return out


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error; shapes (n,). The one RMSE: validation, evaluation and the retrain gate use it."""
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)) ** 2)))


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error; shapes (n,)."""
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(actual, np.float64))))
