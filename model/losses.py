"""Training losses: MSE for ratings; BCE, BPR and (sampled or full) softmax cross entropy for ranking.

Ranking losses take the positive's logit ``pos`` (b,) and logits of sampled negatives ``neg`` (b, k);
:func:`multinomial` takes full-catalogue logits (b, I) with a 0/1 matrix of each user's positives.
All return a sum over the batch, so the caller decides the normalisation (and the L2 penalty's scale
matches, see :func:`l2`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RATING_LOSSES = ("mse",)
RANKING_LOSSES = ("bce", "bpr", "softmax", "ials")  # ials: implicit ALS's weighted squares, closed form (model.als)
LOSSES = RATING_LOSSES + RANKING_LOSSES


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors; shapes (b,)."""
    return (pred - target).pow(2).sum()


def bce(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy: positives labelled 1, sampled negatives 0 (the course's GMF/NeuMF loss)."""
    return F.softplus(-pos).sum() + F.softplus(neg).sum()


def bpr(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``-log sigmoid(pos - neg)`` for each sampled negative, summed."""
    return F.softplus(-(pos[:, None] - neg)).sum()


def sampled_softmax(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Cross entropy of the positive among itself and ``k`` uniform negatives (uniform: no logQ correction)."""
    logits = torch.cat([pos[:, None], neg], 1)  # (b, 1 + k), the positive in column 0
    return -(torch.log_softmax(logits, 1)[:, 0]).sum()


def multinomial(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Full softmax cross entropy: ``-sum_u sum_{i in pos(u)} log softmax(logits_u)_i``; (b, I) each."""
    return -(positives * torch.log_softmax(logits, 1)).sum()


def pairwise(loss: str, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The ranking loss named ``loss`` over positives and sampled negatives."""
    return {"bce": bce, "bpr": bpr, "softmax": sampled_softmax}[loss](pos, neg)


def l2(rows: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``sum_r weight_r * |row_r|^2`` over embedding rows (b, *) with per-row weights (b,).

    With ``weight = 1 / (times the row appears in an epoch)`` an epoch's penalties add up to plain L2 on
    every row once (a Gaussian prior), not a penalty that grows with a user's or item's activity.
    """
    return sum((row.pow(2).flatten(1).sum(1) * weight).sum() for row in rows)
