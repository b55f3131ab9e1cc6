"""What one epoch does, per objective: ratings (the MF ensemble on MSE) and ranking (BCE, BPR, softmax).

Both hand their epoch to :func:`model.loop.run_epochs` (early stopping, progress, divergence) and refit
on every row for the best number of epochs afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from model import losses
from model.distributed import SINGLE, Cluster
from model.interactions import Interactions
from model.loop import make_optimizer, run_epochs, take_step
from model.networks import BiasedMF, MFEnsemble
from model.sampling import uniform_negatives
from model.validation import ndcg_at_k, rmse_mae


def _members(config) -> tuple[int, int]:
    """(members, member_dim): ``dim`` split into members of ``member_dim``, or one member if it does not divide."""
    if 0 < config.member_dim < config.dim and config.dim % config.member_dim == 0:
        return config.dim // config.member_dim, config.member_dim
    return 1, config.dim


def _inverse_counts(idx: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """1 / rows per index (n,), float32: per-row L2 weights that add up to one penalty per row per epoch."""
    return (1.0 / torch.from_numpy(np.bincount(idx, minlength=n)).float().clamp(min=1)).to(device)


def _batch(config, n: int) -> int:
    return n if config.batch_size <= 0 else config.batch_size


class _RatingLoss(nn.Module):
    """One step's objective for the MF ensemble as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, network: MFEnsemble, user_weight: torch.Tensor, item_weight: torch.Tensor, config):
        super().__init__()
        self.network, self.reg, self.reg_bias = network, config.reg, config.reg_bias
        self.register_buffer("user_weight", user_weight, persistent=False)
        self.register_buffer("item_weight", item_weight, persistent=False)

    def forward(self, u: torch.Tensor, i: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Each member's mean squared error, summed (the members train independently), plus the weighted L2.
        net = self.network
        return losses.EnsembleSquaredError.apply(
            net.user_factors(u), net.item_factors(i), net.user_bias(u), net.item_bias(i), net.global_bias, r,
            self.user_weight[u], self.item_weight[i], net.members, self.reg, self.reg_bias,
        )  # fmt: skip


def _train_rating(
    rows: Interactions, val: Interactions | None, config, scale, device, epochs, progress, desc, init=None,
    cluster: Cluster = SINGLE,
):  # fmt: skip
    torch.manual_seed(config.seed)
    members, member_dim = _members(config)
    network = MFEnsemble(rows.num_users, rows.num_items, members, member_dim, global_mean=float(rows.ratings.mean()))
    if init is not None:  # warm start (model.warmstart): overwrite the rows an earlier model already knows
        init(network)
    network.to(device)
    optimizer = make_optimizer(config.optimizer, network.parameters(), config.lr, config.momentum, config.weight_decay)
    users, items = torch.from_numpy(rows.user_idx).to(device), torch.from_numpy(rows.item_idx).to(device)
    targets = torch.from_numpy(rows.ratings).to(device)
    user_weight = _inverse_counts(rows.user_idx, rows.num_users, device)
    item_weight = _inverse_counts(rows.item_idx, rows.num_items, device)
    generator = torch.Generator().manual_seed(config.seed)
    batch = _batch(config, len(rows))
    objective = cluster.wrap(_RatingLoss(network, user_weight, item_weight, config))

    def train_epoch(epoch: int) -> dict[str, float]:
        order = torch.randperm(len(rows), generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if not cluster.runs(len(idx)):
                continue
            idx = cluster.shard(idx)
            u, i, r = users[idx], items[idx], targets[idx]
            loss, out = objective(u, i, r)
            take_step(optimizer, loss, epoch)
            total += (out.mean(-1) - r).pow(2).sum().item()
            seen += len(idx)
        return {"train_rmse": math.sqrt(total / max(seen, 1))}

    def validate() -> dict[str, float]:
        got = rmse_mae(network, val, scale)
        return {"val_rmse": got[0], "val_mae": got[1]}

    history, best = run_epochs(
        network,
        optimizer,
        train_epoch,
        validate if val is not None else None,
        monitor="val_rmse",
        higher_is_better=False,
        epochs=epochs,
        patience=config.patience,
        schedule=config.lr_schedule,
        progress=progress,
        desc=desc,
    )
    return network, history, best


def fit_rating(train, fit_part, val_part, config, scale, device, progress, init=None, cluster: Cluster = SINGLE):
    """The rating model: an ensemble of biased MFs on MSE, merged into one :class:`BiasedMF` (cpu)."""
    network, history, best = _train_rating(
        fit_part, val_part, config, scale, device, config.epochs, progress, f"train {config.model}", init, cluster
    )
    metrics: dict[str, float] = {}
    if val_part is not None:
        metrics["val_rmse"], metrics["val_mae"] = rmse_mae(network, val_part, scale)
    trained_on = fit_part
    if val_part is not None and config.refit:
        # The validation rows only chose the number of epochs; retrain on all rows for that many.
        network, _, _ = _train_rating(
            train, None, config, scale, device, max(best, 1), progress, f"refit {config.model}", init, cluster
        )
        trained_on = train
    merged = network.cpu().merged().eval()
    metrics.update(
        {
            "train_rmse": rmse_mae(merged, trained_on, scale)[0],
            "epochs_run": float(len(history)),
            "best_epoch": float(best or len(history)),
        }
    )
    return merged, history, metrics


def _positives_csr(rows: Interactions) -> tuple[torch.Tensor, torch.Tensor]:
    indptr, indices = rows.seen_csr()
    return torch.from_numpy(indptr), torch.from_numpy(indices)


def _train_ranking(network, rows: Interactions, val, config, device, epochs, progress, desc, cluster=SINGLE):
    network.to(device)
    optimizer = make_optimizer(config.optimizer, network.parameters(), config.lr, config.momentum, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    if config.negatives == 0:
        epoch_fn = _full_softmax_epoch(network, optimizer, rows, config, device, generator, cluster)
    else:
        epoch_fn = _sampled_epoch(network, optimizer, rows, config, device, generator, cluster)

    def validate() -> dict[str, float]:
        return {"val_ndcg10": ndcg_at_k(network, rows, val, device, k=10, seed=config.seed)}

    history, best = run_epochs(
        network,
        optimizer,
        epoch_fn,
        validate if val is not None else None,
        monitor="val_ndcg10",
        higher_is_better=True,
        epochs=epochs,
        # Ranking curves plateau once popularity is learned before personal factors take over, and nDCG@10
        # on a few percent of the rows is noisy: wait twice as long, and never stop in the first quarter.
        patience=2 * config.patience,
        min_epochs=epochs // 4,
        schedule=config.lr_schedule,
        progress=progress,
        desc=desc,
    )
    return network, history, best


class _SoftmaxLoss(nn.Module):
    """Full-catalogue softmax cross entropy of a batch of users, plus L2, as one module (see _RatingLoss)."""

    def __init__(self, network: BiasedMF, reg: float):
        super().__init__()
        self.network, self.reg = network, reg

    def forward(self, users: torch.Tensor, positives: torch.Tensor, item_share: float) -> tuple[torch.Tensor, ...]:
        loss = losses.multinomial(self.network.score_all(users), positives)
        user_rows, _ = self.network.rows(users, users[:0])
        # Users once each per epoch; the whole item table an ``item_share`` of a penalty per step.
        item_rows = [self.network.item_factors.weight]
        penalty = losses.l2(user_rows, torch.ones(len(users), device=users.device))
        penalty = penalty + losses.l2(item_rows, torch.full((len(item_rows[0]),), item_share, device=users.device))
        return (loss + self.reg * penalty) / len(users), loss.detach()


def _full_softmax_epoch(network: BiasedMF, optimizer, rows: Interactions, config, device, generator, cluster):
    """Batches of users; each user's positives against the whole catalogue (multinomial likelihood)."""
    indptr, indices = _positives_csr(rows)
    active = torch.nonzero(indptr[1:] > indptr[:-1]).squeeze(1)  # users with at least one positive
    batch = _batch(config, len(active))
    objective = cluster.wrap(_SoftmaxLoss(network, config.reg))

    def train_epoch(epoch: int) -> dict[str, float]:
        order = active[torch.randperm(len(active), generator=generator)]
        total = 0.0
        for start in range(0, len(order), batch):
            users = order[start : start + batch]
            if not cluster.runs(len(users)):
                continue
            users = cluster.shard(users)
            starts, counts = indptr[users], indptr[users + 1] - indptr[users]
            rows_in_batch = torch.repeat_interleave(torch.arange(len(users)), counts)
            # Each user's run of positions in ``indices``: its start plus 0, 1, ... within the run.
            offsets = torch.arange(len(rows_in_batch)) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts
            )
            positives = torch.zeros(len(users), rows.num_items)
            positives[rows_in_batch, indices[starts[rows_in_batch] + offsets]] = 1.0
            step, loss = objective(users.to(device), positives.to(device), len(users) / len(active))
            take_step(optimizer, step, epoch)
            total += loss.item()
        return {"train_loss": total / len(rows)}

    return train_epoch


class _PairwiseLoss(nn.Module):
    """A sampled ranking loss (BCE, BPR, sampled softmax) of a batch of rows, plus L2, as one module."""

    def __init__(self, network: nn.Module, config, user_weight: torch.Tensor, item_weight: torch.Tensor):
        super().__init__()
        self.network, self.loss, self.reg = network, config.loss, config.reg
        self.register_buffer("user_weight", user_weight, persistent=False)
        self.register_buffer("item_weight", item_weight, persistent=False)

    def forward(self, u: torch.Tensor, i: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = neg.shape[1]
        pos_logit = self.network(u, i)
        neg_logit = self.network(u.repeat_interleave(k), neg.reshape(-1)).view(len(u), k)
        loss = losses.pairwise(self.loss, pos_logit, neg_logit)
        user_rows, item_rows = self.network.rows(u, i)
        # Negatives' rows are not penalised: they are drawn too often to weigh once per epoch.
        penalty = losses.l2(user_rows, self.user_weight[u]) + losses.l2(item_rows, self.item_weight[i])
        return (loss + self.reg * penalty) / len(u), loss.detach()


def _sampled_epoch(network, optimizer, rows: Interactions, config, device, generator, cluster):
    """Batches of (user, positive) rows, each against ``negatives`` uniform draws (BCE, BPR, sampled softmax)."""
    users, items = torch.from_numpy(rows.user_idx), torch.from_numpy(rows.item_idx)
    user_weight = _inverse_counts(rows.user_idx, rows.num_users, device)
    item_weight = _inverse_counts(rows.item_idx, rows.num_items, device)
    batch, k = _batch(config, len(rows)), config.negatives
    objective = cluster.wrap(_PairwiseLoss(network, config, user_weight, item_weight))

    def train_epoch(epoch: int) -> dict[str, float]:
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if not cluster.runs(len(idx)):
                continue
            # Every rank draws the whole batch's negatives (the generators stay in step), then keeps its slice.
            neg = cluster.shard(uniform_negatives(rows.num_items, (len(idx), k), generator))
            idx = cluster.shard(idx)
            step, loss = objective(users[idx].to(device), items[idx].to(device), neg.to(device))
            take_step(optimizer, step, epoch)
            total += loss.item()
        return {"train_loss": total / len(rows)}

    return train_epoch


def fit_ranking(network, train, fit_part, val_part, config, device, progress, desc, cluster: Cluster = SINGLE):
    """Train ``network`` on a ranking loss; early stopping on validation nDCG@10, then refit on all rows."""
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    network, history, best = _train_ranking(
        network, fit_part, val_part, config, device, config.epochs, progress, desc, cluster
    )
    metrics: dict[str, float] = {}
    if val_part is not None:
        metrics["val_ndcg10"] = ndcg_at_k(network, fit_part, val_part, device, k=10, seed=config.seed)
        if config.refit:
            network.load_state_dict(initial)  # the same start as the validated run, now on every row
            network, _, _ = _train_ranking(
                network, train, None, config, device, max(best, 1), progress, desc.replace("train", "refit"), cluster
            )
    metrics.update({"epochs_run": float(len(history)), "best_epoch": float(best or len(history))})
    return network.cpu().eval(), history, metrics
