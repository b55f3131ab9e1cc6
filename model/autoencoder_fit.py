"""Training Mult-VAE / Mult-DAE (:mod:`model.autoencoder`): epochs over shuffled batches of users, the KL weight
annealed per step, early stopping on validation nDCG@10 and the refit. Kept apart from the network so that
serving (which imports the network to read a checkpoint) never imports the training loop."""

from __future__ import annotations

import math

import numpy as np
import torch

from model.autoencoder import AutoEncoder, history_bag, kl_weights
from model.interactions import Interactions
from model.loop import make_optimizer, run_epochs, take_step
from model.validation import ndcg_at_k


def _epoch(network: AutoEncoder, optimizer, rows: Interactions, config, generator: np.random.Generator):
    """One pass over the users of ``rows`` in shuffled batches (an annealed KL weight rises by a step per batch)."""
    indptr, indices = rows.seen_csr()
    users = np.flatnonzero(np.diff(indptr))
    batch = config.batch_size or len(users)
    steps_per_epoch = max(math.ceil(len(users) / batch), 1)
    anneal_steps = max(config.epochs // 2, 1) * steps_per_epoch

    def train_epoch(epoch: int) -> dict[str, float]:
        order = generator.permutation(users)
        total = 0.0
        for step, start in enumerate(range(0, len(order), batch)):
            chunk = order[start : start + batch]
            n = int((indptr[chunk + 1] - indptr[chunk]).sum())
            keep = generator.random(n) >= config.dropout
            items, offsets, weights, _ = history_bag(indptr, indices, chunk, keep)
            targets, _, _, target_rows = history_bag(indptr, indices, chunk)  # the whole history, undropped
            done = (epoch - 1) * steps_per_epoch + step
            sizes = torch.from_numpy(indptr[chunk + 1] - indptr[chunk])
            beta = kl_weights(sizes, min(1.0, done / anneal_steps), config.anneal_cap, config.kl_per_item)
            loss = network.loss(items, offsets, weights, targets, target_rows, beta)
            take_step(optimizer, loss, epoch)
            total += float(loss.detach()) * len(chunk)
        return {"train_loss": total / max(len(users), 1)}

    return train_epoch


def _train(network: AutoEncoder, rows: Interactions, val: Interactions | None, config, epochs: int, progress, desc):
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config.lr, config.momentum, config.weight_decay)
    generator = np.random.default_rng(config.seed)

    def validate() -> dict[str, float]:
        network.encode_users(rows)
        return {"val_ndcg10": ndcg_at_k(network, rows, val, torch.device("cpu"), k=10, seed=config.seed)}

    history, best = run_epochs(
        network, optimizer, _epoch(network, optimizer, rows, config, generator), validate if val is not None else None,
        monitor="val_ndcg10", higher_is_better=True, epochs=epochs, patience=2 * config.patience,
        min_epochs=epochs // 4, schedule=config.lr_schedule, progress=progress, desc=desc,
    )  # fmt: skip
    return history, best


def fit(train: Interactions, fit_part, val_part, config, progress: bool, desc: str):
    """Train a Mult-VAE/DAE: early stopping on validation nDCG@10 (codes from ``fit_part``), then (``refit``)
    the same number of epochs from the same start on every row; codes of every user from all of ``train``.
    Returns (network, history, metrics)."""
    torch.manual_seed(config.seed)
    network = AutoEncoder(train.num_users, train.num_items, config.dim, config.hidden, config.model == "vae")
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    history, best = _train(network, fit_part, val_part, config, config.epochs, progress, desc)
    metrics: dict[str, float] = {}
    if val_part is not None:
        metrics["val_ndcg10"] = max((row["val_ndcg10"] for row in history), default=0.0)
        if config.refit:
            network.load_state_dict(initial)
            _train(network, train, None, config, max(best, 1), progress, desc.replace("train", "refit"))
    network.encode_users(train)
    metrics.update({"epochs_run": float(len(history)), "best_epoch": float(best or len(history))})
    return network.eval(), history, metrics
