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


class MFEnsemble(nn.Module):
    """``members`` independent :class:`BiasedMF` models of size ``member_dim``, trained side by side.

    Each member sees the same batches but has its own loss (their gradients do not mix), so this is
    seed averaging at the cost of one wide model. The prediction is the members' mean, which is exactly
    one :class:`BiasedMF` of size ``members * member_dim`` (see :meth:`merged`); that is what is saved
    and served. The global bias is shared.
    """

    def __init__(self, num_users: int, num_items: int, members: int, member_dim: int, init_std: float = 0.1,
                 global_mean: float = 0.0):  # fmt: skip
        super().__init__()
        self.members, self.member_dim = members, member_dim
        self.user_factors = nn.Embedding(num_users, members * member_dim)
        self.item_factors = nn.Embedding(num_items, members * member_dim)
        self.user_bias = nn.Embedding(num_users, members)
        self.item_bias = nn.Embedding(num_items, members)
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))
        nn.init.normal_(self.user_factors.weight, 0.0, init_std)
        nn.init.normal_(self.item_factors.weight, 0.0, init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def member_outputs(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Every member's score, shape (b, members)."""
        shape = (len(user_idx), self.members, self.member_dim)
        dot = (self.user_factors(user_idx).view(shape) * self.item_factors(item_idx).view(shape)).sum(-1)
        return self.global_bias + self.user_bias(user_idx) + self.item_bias(item_idx) + dot

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        return self.member_outputs(user_idx, item_idx).mean(-1)

    def penalty(self, user_idx, item_idx, user_weight, item_weight, reg: float, reg_bias: float) -> torch.Tensor:
        """Weighted L2 of the rows the batch touches, summed over members, averaged over the batch.

        With ``user_weight = 1 / n_u`` (rows per user in the epoch) and likewise for items, one epoch adds
        up to a penalty on every row once: plain L2 on all parameters (a Gaussian prior), not Funk's
        per-example penalty that grows with a user's or item's number of ratings.
        """
        wu, wi = user_weight[user_idx], item_weight[item_idx]
        factors = self.user_factors(user_idx).pow(2).sum(-1) * wu + self.item_factors(item_idx).pow(2).sum(-1) * wi
        biases = self.user_bias(user_idx).pow(2).sum(-1) * wu + self.item_bias(item_idx).pow(2).sum(-1) * wi
        return (reg * factors + reg_bias * biases).mean()

    @torch.no_grad()
    def merged(self) -> BiasedMF:
        """The equivalent single :class:`BiasedMF` (factors scaled by ``1/sqrt(members)``, biases averaged)."""
        scale = self.members**-0.5
        net = BiasedMF(self.user_bias.num_embeddings, self.item_bias.num_embeddings, self.members * self.member_dim)
        net.user_factors.weight.copy_(self.user_factors.weight * scale)
        net.item_factors.weight.copy_(self.item_factors.weight * scale)
        net.user_bias.weight.copy_(self.user_bias.weight.mean(-1, keepdim=True))
        net.item_bias.weight.copy_(self.item_bias.weight.mean(-1, keepdim=True))
        net.global_bias.copy_(self.global_bias)
        return net


MODEL_KINDS = ("mf",)


def build_network(kind: str, num_users: int, num_items: int, dim: int, global_mean: float = 0.0) -> nn.Module:
    """Construct an untrained network of the given kind."""
    if kind == "mf":
        return BiasedMF(num_users, num_items, dim, global_mean=global_mean)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
