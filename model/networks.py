"""PyTorch networks. Each maps ``(user_idx, item_idx)`` index tensors of shape (b,) to scores (b,)."""

from __future__ import annotations

import torch
from torch import nn


class BiasedMF(nn.Module):
    """Biased matrix factorization: ``r_ui = mu + b_u + b_i + U_u . I_i``.

    The course's MF minimises ``sum over observed (u,i) of (R_ui - U_u . I_i)^2``; the global mean and
    the biases take out the per-user and per-item offsets so the factors model only the interaction.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float = 0.1, global_mean: float = 0.0):
        super().__init__()
        self.user_factors = nn.Embedding(num_users, dim)
        self.item_factors = nn.Embedding(num_items, dim)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))
        nn.init.normal_(self.user_factors.weight, 0.0, init_std)
        nn.init.normal_(self.item_factors.weight, 0.0, init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(user_idx) * self.item_factors(item_idx)).sum(-1)  # (b,)
        return self.global_bias + self.user_bias(user_idx).squeeze(-1) + self.item_bias(item_idx).squeeze(-1) + dot

    def penalty(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Per-example L2 of the rows the batch touches, averaged over the batch (as in Funk SVD's SGD)."""
        sq = (
            self.user_factors(user_idx).pow(2).sum(-1)
            + self.item_factors(item_idx).pow(2).sum(-1)
            + self.user_bias(user_idx).squeeze(-1).pow(2)
            + self.item_bias(item_idx).squeeze(-1).pow(2)
        )
        return sq.mean()


MODEL_KINDS = ("mf",)


def build_network(kind: str, num_users: int, num_items: int, dim: int, global_mean: float = 0.0) -> nn.Module:
    """Construct an untrained network of the given kind."""
    if kind == "mf":
        return BiasedMF(num_users, num_items, dim, global_mean=global_mean)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
