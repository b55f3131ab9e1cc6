"""Mult-VAE and Mult-DAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering").

A user is their item vector ``x`` (I,), 0/1. The encoder L2-normalises it, drops items out (training only),
and maps it through one tanh layer to a latent code; the VAE's code is a Gaussian (mean and log-variance,
sampled by the reparameterisation trick, the KL divergence to N(0, I) weighed by a factor annealed from 0
to ``anneal_cap``, or by default RecVAE's ``kl_per_item`` times the user's number of items), the DAE's the
mean alone. The decoder is one linear layer to logits over the catalogue,
and the loss the multinomial log-likelihood of the user's items under their softmax (the full-softmax
cross entropy). Shapes: ``[I -> hidden -> dim -> I]``.

Why a linear decoder: it makes the score ``z . V_i + b_i`` a dot product, so everything built for the
dot-product kinds serves it unchanged (``user_vectors`` / ``item_vectors``, precomputed top-N lists, the
ANN index). A known user's ``z`` is the mean code of their training history, computed once after training
and stored as ``user_factors`` (a frozen table, not trained); a new user's history is encoded per request
by :func:`encode_history` in numpy: a sum of ``len(history)`` rows of the first layer, one tanh, one
(dim x hidden) product. Training lives in :mod:`model.autoencoder_fit`.

The first layer's weights are an (I, hidden) table (``item_encoder``) applied as an embedding bag over the
user's items, so a batch never builds the dense (users, I) input: only the logits are dense.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.interactions import Interactions

AUTOENCODERS = ("vae", "dae")


class AutoEncoder(nn.Module):
    """Mult-VAE (``variational``) or Mult-DAE over ``num_items`` items, with frozen codes of ``num_users`` users.

    Scoring (``forward``, ``score_all``) reads the stored codes, as the serving index does; training reads
    histories through :meth:`loss`.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, hidden: int, variational: bool):
        super().__init__()
        self.variational, self.dim = variational, dim
        self.item_encoder = nn.Embedding(num_items, hidden)  # (I, h): the first layer, x_norm @ W
        self.encoder_bias = nn.Parameter(torch.zeros(hidden))
        self.latent = nn.Linear(hidden, 2 * dim if variational else dim)  # [mean, log-variance] or the mean
        self.item_factors = nn.Embedding(num_items, dim)  # (I, d): the decoder
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_factors = nn.Embedding(num_users, dim).requires_grad_(False)  # (U, d) codes, see encode_users
        for table in (self.item_encoder, self.item_factors):
            nn.init.xavier_uniform_(table.weight)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.user_factors.weight)

    def encode(self, items: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The latent layer's output (b, d or 2d) of b histories given as an embedding bag (items, offsets)."""
        bag = F.embedding_bag(items, self.item_encoder.weight, offsets, mode="sum", per_sample_weights=weights)
        return self.latent(torch.tanh(bag + self.encoder_bias))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (b, I) of codes (b, d)."""
        return z @ self.item_factors.weight.T + self.item_bias.weight.view(1, -1)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        return (self.user_factors(user_idx) * self.item_factors(item_idx)).sum(-1) + self.item_bias(item_idx).view(-1)

    def score_all(self, user_idx: torch.Tensor) -> torch.Tensor:
        """Logits (b, I) of known users, from their stored codes."""
        return self.decode(self.user_factors(user_idx))

    def rows(self, user_idx: torch.Tensor, item_idx: torch.Tensor):
        return [], []

    def loss(self, items, offsets, weights, targets, target_rows, kl_weight: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``-log-likelihood + kl_weight * KL`` (the negative ELBO; the DAE has no KL).

        ``targets`` (n,) are the batch's items and ``target_rows`` (n,) the row of each: the multinomial
        log-likelihood of a user is ``sum over their items of logit_i - n_u * logsumexp(logits)``.
        ``kl_weight`` (b,) weighs each user's KL term (see :func:`kl_weights`).
        """
        out = self.encode(items, offsets, weights)
        batch = len(offsets)
        kl = out.new_zeros(())
        if self.variational:
            mean, log_var = out[:, : self.dim], out[:, self.dim :]
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
            kl = (kl_weight * 0.5 * (torch.exp(log_var) + mean.pow(2) - 1.0 - log_var).sum(1)).sum() / batch
        else:
            z = out
        logits = self.decode(z)  # (b, I)
        counts = torch.bincount(target_rows, minlength=batch).to(logits.dtype)
        picked = logits[target_rows, targets].sum()
        nll = (counts * torch.logsumexp(logits, dim=1)).sum() - picked
        return nll / batch + kl

    @torch.no_grad()
    def encode_users(self, rows: Interactions, block: int = 4096) -> None:
        """Store every user's code (the mean, no dropout) from their items in ``rows``; users without any: 0."""
        indptr, indices = rows.seen_csr()
        for start in range(0, rows.num_users, block):
            users = np.arange(start, min(start + block, rows.num_users))
            items, offsets, weights, _ = history_bag(indptr, indices, users)
            self.user_factors.weight[users] = self.encode(items, offsets, weights)[:, : self.dim]


def kl_weights(counts: torch.Tensor, progress: float, anneal_cap: float, kl_per_item: float) -> torch.Tensor:
    """Each user's KL weight (b,) from their history sizes ``counts`` (b,): RecVAE's ``kl_per_item * n_u``
    (Shenbin et al. 2020: a user with more items has more evidence to move away from the prior) when
    ``kl_per_item`` > 0, else Mult-VAE's global ``anneal_cap * progress`` (``progress`` in [0, 1])."""
    if kl_per_item > 0:
        return kl_per_item * counts.float()
    return torch.full(counts.shape, anneal_cap * progress)


def history_bag(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray, keep: np.ndarray | None = None):
    """The histories of ``users`` as an embedding bag: (items, offsets, weights, rows) tensors.

    Each history is L2-normalised (every item ``1 / sqrt(n_u)``); ``keep`` (a mask over the batch's items)
    drops items out, the kept ones scaled by ``1 / keep rate`` as dropout does. ``rows`` gives each kept
    item's position in the batch.
    """
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    positions = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    items = indices[positions]
    weights = np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts)
    if keep is not None:
        items, rows, weights = items[keep], rows[keep], weights[keep] / max(keep.mean(), 1e-12)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))[:-1]])
    return (
        torch.from_numpy(items.astype(np.int64)),
        torch.from_numpy(offsets.astype(np.int64)),
        torch.from_numpy(weights.astype(np.float32)),
        torch.from_numpy(rows.astype(np.int64)),
    )


def encode_history(
    item_encoder: np.ndarray, encoder_bias: np.ndarray, latent_weight: np.ndarray, latent_bias: np.ndarray,
    item_idx: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """A new user's code (d,) from their distinct items ``item_idx``, in numpy: what :meth:`AutoEncoder.encode`
    computes without dropout. ``latent_weight`` (d, h) and ``latent_bias`` (d,) are the mean's rows only."""
    item_idx = np.sort(item_idx)  # np.unique only when there are repeats: its own overhead is 2-3x a sort's
    if len(item_idx) > 1 and not (item_idx[1:] != item_idx[:-1]).all():
        item_idx = np.unique(item_idx)
    hidden = np.tanh(item_encoder[item_idx].sum(axis=0) / math.sqrt(max(len(item_idx), 1)) + encoder_bias)
    return latent_weight @ hidden + latent_bias


def encoder_arrays(state: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, ...]:
    """The arguments :func:`encode_history` takes before the history, as float32 views of a state dict's arrays."""
    return (
        np.asarray(state["item_encoder.weight"], np.float32),
        np.asarray(state["encoder_bias"], np.float32),
        np.asarray(state["latent.weight"], np.float32)[:dim],
        np.asarray(state["latent.bias"], np.float32)[:dim],
    )
