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


class EnsembleSquaredError(torch.autograd.Function):
    """The MF ensemble's step loss with its gradient written out: each member's mean squared error, summed
    over members, plus the rows' weighted L2; the same value and gradient as autograd through
    :class:`model.networks.MFEnsemble`'s score and an L2 on the looked-up rows, in a third of the ops.

    The rows are looked up by the caller (``nn.Embedding``), so autograd still scatters their gradients
    into the tables and DistributedDataParallel still sees every parameter's gradient. Profiled on
    MovieLens 100k (one torch thread), autograd's elementwise chain (two dozen ``mul``/``pow`` per step
    over (b, d) tensors) was about half of a step; here the backward is two ``addcmul`` per side.

    ``forward(pu (b, d), qi (b, d), bu (b, m), bi (b, m), global_bias (), r (b,), wu (b,), wi (b,),
    members, reg, reg_bias)`` -> (loss (), member scores (b, m)); ``d = m * member_dim``.

    The penalty is summed over members and averaged over the batch. With ``wu = 1 / n_u`` (rows per user
    in the epoch) and likewise ``wi`` for items, one epoch adds up to a penalty on every row once: plain L2
    on all parameters (a Gaussian prior), not Funk's per-example penalty that grows with a user's or
    item's number of ratings.
    """

    @staticmethod
    def forward(ctx, pu, qi, bu, bi, global_bias, r, wu, wi, members: int, reg: float, reg_bias: float):
        b = len(r)
        shape = (b, members, pu.shape[1] // members)
        out = global_bias + bu + bi + (pu * qi).view(shape).sum(-1)  # (b, m)
        err = out - r[:, None]
        penalty = reg * (wu @ (pu * pu).sum(-1) + wi @ (qi * qi).sum(-1))
        penalty = penalty + reg_bias * (wu @ (bu * bu).sum(-1) + wi @ (bi * bi).sum(-1))
        loss = err.pow(2).mean(0).sum() + penalty / b
        ctx.save_for_backward(pu, qi, bu, bi, err, wu, wi)
        ctx.reg, ctx.reg_bias = reg, reg_bias
        ctx.mark_non_differentiable(out)
        return loss, out

    @staticmethod
    def backward(ctx, grad_loss, _grad_out):
        pu, qi, bu, bi, err, wu, wi = ctx.saved_tensors
        b, members = err.shape
        scale = grad_loss * (2.0 / b)
        e = err * scale  # (b, m): d loss / d member score
        shape = (b, members, pu.shape[1] // members)
        grad_pu = torch.addcmul((e[:, :, None] * qi.view(shape)).view(b, -1), pu, (wu * (ctx.reg * scale))[:, None])
        grad_qi = torch.addcmul((e[:, :, None] * pu.view(shape)).view(b, -1), qi, (wi * (ctx.reg * scale))[:, None])
        grad_bu = torch.addcmul(e, bu, (wu * (ctx.reg_bias * scale))[:, None])
        grad_bi = torch.addcmul(e, bi, (wi * (ctx.reg_bias * scale))[:, None])
        return grad_pu, grad_qi, grad_bu, grad_bi, e.sum(), None, None, None, None, None, None
