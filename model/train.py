"""The training loop: mini-batch gradient descent with a validation split and early stopping."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from model.evaluate import mae, predict_ratings, rmse
from model.interactions import Interactions, random_split
from model.networks import MFEnsemble


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; lower ``lr`` or raise ``reg``."""


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``scripts/train.py`` flags map one to one onto fields."""

    model: str = "mf"
    dim: int = 256  # size of the saved model: members * member_dim
    member_dim: int = 16  # factors per ensemble member; dim must be a multiple, else one member of size dim
    epochs: int = 60
    lr: float = 0.005
    reg: float = 5.0  # L2 on every factor row, once per epoch: sum of squared errors + reg * |row|^2
    reg_bias: float = 1.0  # the same for the biases
    batch_size: int = 256
    seed: int = 0
    val_fraction: float = 0.05
    patience: int = 5  # epochs without validation improvement before stopping
    refit: bool = True  # after early stopping, retrain on every row for the best number of epochs
    device: str = "cpu"


@dataclass
class TrainResult:
    """A fitted network and what happened while fitting it."""

    network: torch.nn.Module
    config: TrainConfig
    global_mean: float
    rating_scale: tuple[float, float]
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def _clipped_rmse(network, inter: Interactions, scale: tuple[float, float]) -> tuple[float, float]:
    pred = np.clip(predict_ratings(network, inter), *scale)
    return rmse(pred, inter.ratings), mae(pred, inter.ratings)


def _members(config: TrainConfig) -> tuple[int, int]:
    """(members, member_dim): ``dim`` split into members of ``member_dim``, or one member if it does not divide."""
    if 0 < config.member_dim < config.dim and config.dim % config.member_dim == 0:
        return config.dim // config.member_dim, config.member_dim
    return 1, config.dim


def _train(
    rows: Interactions,
    val_part: Interactions | None,
    config: TrainConfig,
    scale: tuple[float, float],
    epochs: int,
    progress: bool,
    desc: str,
    init=None,
) -> tuple[MFEnsemble, list[dict[str, float]], int]:
    """One training run on ``rows``: returns the network (best epoch restored when validating), history, best epoch."""
    torch.manual_seed(config.seed)
    members, member_dim = _members(config)
    network = MFEnsemble(rows.num_users, rows.num_items, members, member_dim, global_mean=float(rows.ratings.mean()))
    if init is not None:  # warm start (model.warmstart): overwrite the rows an earlier model already knows
        init(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    users, items = torch.from_numpy(rows.user_idx), torch.from_numpy(rows.item_idx)
    targets = torch.from_numpy(rows.ratings)
    # 1 / rows per user (item): the per-batch penalty then adds up to plain L2 on every row once per epoch.
    user_weight = 1.0 / torch.from_numpy(np.bincount(rows.user_idx, minlength=rows.num_users)).float().clamp(min=1)
    item_weight = 1.0 / torch.from_numpy(np.bincount(rows.item_idx, minlength=rows.num_items)).float().clamp(min=1)
    generator = torch.Generator().manual_seed(config.seed)
    batch = len(rows) if config.batch_size <= 0 else config.batch_size
    best_val, best_state, best_epoch, stale = math.inf, None, 0, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        network.train()
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            u, i, r = users[idx], items[idx], targets[idx]
            out = network.member_outputs(u, i)  # (b, members)
            # Each member's mean squared error, summed: the members train independently.
            member_mse = (out - r[:, None]).pow(2).mean(0).sum()
            loss = member_mse + network.penalty(u, i, user_weight, item_weight, config.reg, config.reg_bias)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}; lower --lr or raise --reg")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += (out.detach().mean(-1) - r).pow(2).sum().item()
        row = {"epoch": epoch, "train_rmse": math.sqrt(total / len(rows))}
        if val_part is not None:
            row["val_rmse"], row["val_mae"] = _clipped_rmse(network, val_part, scale)
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        if val_part is None:
            continue
        if row["val_rmse"] < best_val - 1e-4:
            best_val, best_epoch, stale = row["val_rmse"], epoch, 0
            best_state = copy.deepcopy(network.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return network, history, best_epoch


def fit(train: Interactions, config: TrainConfig, progress: bool = True, init=None) -> TrainResult:
    """Train ``config.model`` on ``train``.

    A ``val_fraction`` of the rows is held out for early stopping (restoring the best epoch); with
    ``refit`` the model is then retrained on every row for that many epochs. With ``val_fraction=0``
    every row trains and the loop runs all epochs. The ``dim`` factors are trained as an ensemble of
    ``dim / member_dim`` independent models whose mean is returned as one :class:`BiasedMF`.
    ``init``, if given, is called with each freshly built network before training (warm start).
    """
    started = time.perf_counter()
    if config.val_fraction > 0:
        fit_part, val_part = random_split(train, config.val_fraction, seed=config.seed)
    else:
        fit_part, val_part = train, None
    scale = (float(train.ratings.min()), float(train.ratings.max()))
    network, history, best_epoch = _train(
        fit_part, val_part, config, scale, config.epochs, progress, f"train {config.model}", init
    )
    metrics: dict[str, float] = {}
    if val_part is not None:
        metrics["val_rmse"], metrics["val_mae"] = _clipped_rmse(network, val_part, scale)
    trained_on = fit_part
    if val_part is not None and config.refit:
        # The validation rows only chose the number of epochs; retrain on all rows for that many.
        network, _, _ = _train(train, None, config, scale, max(best_epoch, 1), progress, f"refit {config.model}", init)
        trained_on = train
    merged = network.merged().eval()
    metrics.update(
        {
            "train_rmse": _clipped_rmse(merged, trained_on, scale)[0],
            "epochs_run": float(len(history)),
            "best_epoch": float(best_epoch or len(history)),
            "fit_seconds": time.perf_counter() - started,
            "num_train": float(len(trained_on)),
        }
    )
    global_mean = float(trained_on.ratings.mean())
    return TrainResult(merged, config, global_mean, scale, metrics, history)
