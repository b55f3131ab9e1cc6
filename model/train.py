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
from model.networks import build_network


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; lower ``lr`` or raise ``reg``."""


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``scripts/train.py`` flags map one to one onto fields."""

    model: str = "mf"
    dim: int = 64
    epochs: int = 60
    lr: float = 0.005
    reg: float = 0.1
    batch_size: int = 256
    seed: int = 0
    val_fraction: float = 0.05
    patience: int = 3  # epochs without validation improvement before stopping
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


def fit(train: Interactions, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``train``.

    A ``val_fraction`` of the rows is held out for early stopping (restoring the best epoch); with
    ``val_fraction=0`` every row trains and the loop runs all epochs.
    """
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if config.val_fraction > 0:
        fit_part, val_part = random_split(train, config.val_fraction, seed=config.seed)
    else:
        fit_part, val_part = train, None
    scale = (float(train.ratings.min()), float(train.ratings.max()))
    global_mean = float(fit_part.ratings.mean())
    network = build_network(config.model, train.num_users, train.num_items, config.dim, global_mean)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)

    users, items = torch.from_numpy(fit_part.user_idx), torch.from_numpy(fit_part.item_idx)
    targets = torch.from_numpy(fit_part.ratings)
    generator = torch.Generator().manual_seed(config.seed)
    batch = len(fit_part) if config.batch_size <= 0 else config.batch_size
    best_val, best_state, best_epoch, stale = math.inf, None, 0, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {config.model}", unit="epoch", disable=not progress)
    for epoch in bar:
        network.train()
        order = torch.randperm(len(fit_part), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            u, i, r = users[idx], items[idx], targets[idx]
            err = network(u, i) - r
            mse = err.pow(2).mean()
            loss = mse + config.reg * network.penalty(u, i)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}; lower --lr or raise --reg")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += mse.item() * len(idx)
        row = {"epoch": epoch, "train_rmse": math.sqrt(total / len(fit_part))}
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
    metrics = {
        "train_rmse": _clipped_rmse(network, fit_part, scale)[0],
        "epochs_run": float(len(history)),
        "best_epoch": float(best_epoch or len(history)),
        "fit_seconds": time.perf_counter() - started,
        "num_train": float(len(fit_part)),
    }
    if val_part is not None:
        metrics["val_rmse"], metrics["val_mae"] = _clipped_rmse(network, val_part, scale)
    return TrainResult(network, config, global_mean, scale, metrics, history)
