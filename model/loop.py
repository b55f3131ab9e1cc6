"""The epoch loop every model kind trains in: optimiser, LR schedule, progress bar, early stopping.

What an epoch does (rating MSE, ranking losses) is a callback; this module owns everything around it,
so each kind gets the same stopping rule, divergence check, history and progress bar.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

OPTIMIZERS = ("sgd", "adam", "adagrad")
SCHEDULES = ("none", "cosine", "step")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; lower ``lr`` or raise ``reg``."""


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum), ``adam`` or ``adagrad``; ``weight_decay`` is the optimiser's own L2.

    The fused implementations update each parameter in one pass instead of a dozen elementwise ops: the
    default MF ensemble's Adam step went from 44 to 2.7 ms on 2 cores (embedding tables are dense here).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum or 0.9, 0.999), weight_decay=weight_decay, fused=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_schedule(name: str, optimizer: torch.optim.Optimizer | None, epochs: int):
    """Per-epoch LR schedule: ``cosine`` anneals to 0 over ``epochs``, ``step`` halves every quarter of them."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 4, 1), gamma=0.5)
    if name == "none":
        return None
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def check_finite(loss: torch.Tensor, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` for a NaN or infinite loss (checked every step: one bad step poisons all)."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}; lower --lr or raise --reg")


def take_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, epoch: int) -> None:
    """One optimisation step on ``loss``, after checking it is finite."""
    check_finite(loss, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run_epochs(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]] | None,
    *,
    monitor: str,
    higher_is_better: bool,
    epochs: int,
    patience: int,
    schedule: str = "none",
    progress: bool = True,
    desc: str = "train",
    min_epochs: int = 0,
) -> tuple[list[dict[str, float]], int]:
    """Run up to ``epochs`` epochs; with ``validate``, stop after ``patience`` epochs without improving
    ``monitor`` (but not before ``min_epochs``) and restore the best epoch's weights.
    Returns (history rows, best epoch or 0)."""
    scheduler = make_schedule(schedule, optimizer, epochs)
    sign = 1.0 if higher_is_better else -1.0
    best, best_state, best_epoch, stale = -math.inf, None, 0, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        network.train()
        row = {"epoch": float(epoch), **train_epoch(epoch)}
        if scheduler is not None:
            scheduler.step()
        if validate is not None:
            network.eval()
            row.update(validate())
            if not math.isfinite(row[monitor]):
                raise TrainingDiverged(f"validation {monitor} became {row[monitor]} at epoch {epoch}; lower --lr")
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        if validate is None:
            continue
        if sign * row[monitor] > best + 1e-4:
            best, best_epoch, stale = sign * row[monitor], epoch, 0
            best_state = copy.deepcopy(network.state_dict())
        else:
            stale += 1
            if stale >= patience and epoch >= min_epochs:
                break
    bar.close()
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return history, best_epoch
