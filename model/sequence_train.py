"""Training the sequence models (:mod:`model.sequence`): next-item cross entropy over each user's timeline.

Validation is leave-last-out by time inside the training data: each user's newest item (of two or more) is
held out, the model reads the items before it, and early stopping watches nDCG@10 of that item over the
whole catalogue, the user's earlier items excluded (``model.metrics``, the protocol of the benchmark).
With ``refit`` the model is then retrained from the same start on every row for the best number of epochs.

The loss is the full softmax over the catalogue (cross entropy of the true next item against every
item), or, with ``negatives`` > 0 (the default above ``model.train.FULL_SOFTMAX_MAX_ITEMS`` items), a
sampled softmax against that many uniform negatives shared by the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.interactions import Interactions
from model.loop import make_optimizer, run_epochs, take_step
from model.metrics import evaluate_ranking
from model.sequence import build_sequence_network
from model.sequence_data import left_pad, next_item_pairs, timelines, windows
from model.validation import VAL_USERS


def _drop_last(indptr: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Timelines without each newest item (users with two or more): (indptr, items, users held out, their items)."""
    counts = np.diff(indptr)
    held = np.flatnonzero(counts >= 2)
    keep = np.ones(len(items), dtype=bool)
    keep[indptr[held + 1] - 1] = False
    new_ptr = np.zeros_like(indptr)
    np.cumsum(counts - (counts >= 2), out=new_ptr[1:])
    return new_ptr, items[keep], held, items[indptr[held + 1] - 1]


def _csr(indptr: np.ndarray, items: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct sorted items per user, as ``Interactions.seen_csr`` (what ``model.metrics`` expects)."""
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    inter = Interactions(users, items, np.ones(len(items), np.float32), np.zeros(len(items), np.int64),
                         len(indptr) - 1, num_items)  # fmt: skip
    return inter.seen_csr()


def sequence_scores(network, indptr: np.ndarray, items: np.ndarray, device) -> callable:
    """``score(user_idx) -> (n, I)``: the network reading each user's last ``max_len`` items."""

    @torch.no_grad()
    def score(users: np.ndarray) -> np.ndarray:
        seq = torch.from_numpy(left_pad(indptr, items, network.max_len, users)).to(device)
        return network.logits(network.encode(seq)).float().cpu().numpy()

    return score


def _loss(network, h: torch.Tensor, target: torch.Tensor, negatives: int, generator) -> torch.Tensor:
    """Mean cross entropy of ``target`` (n,) given representations ``h`` (n, d): full or sampled softmax."""
    if negatives <= 0:
        return F.cross_entropy(network.logits(h), target)
    num_items = network.item_embedding.num_embeddings
    neg = torch.randint(num_items, (negatives,), generator=generator).to(h.device)
    emb, bias = network.item_embedding, network.item_bias
    pos = (h * emb(target)).sum(-1, keepdim=True) + bias(target)  # (n, 1)
    other = h @ emb(neg).T + bias(neg).view(1, -1)  # (n, S)
    other = other.masked_fill(neg.view(1, -1) == target.view(-1, 1), float("-inf"))  # a negative that is the target
    return F.cross_entropy(torch.cat([pos, other], 1), torch.zeros(len(h), dtype=torch.long, device=h.device))


def _epoch_fn(network, optimizer, indptr, items, config, device):
    """One pass over the training windows (causal kinds: a loss at every position) or pairs (Caser)."""
    if network.causal:
        inputs, targets = windows(indptr, items, network.max_len)
    else:
        inputs, targets = next_item_pairs(indptr, items, network.max_len)
    inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size if config.batch_size > 0 else max(len(inputs), 1)

    def train_epoch(epoch: int) -> dict[str, float]:
        order = torch.randperm(len(inputs_t), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            x, y = inputs_t[rows].to(device), targets_t[rows].to(device)
            if network.causal:
                h = network.hidden(x)  # (b, L, d)
                valid = y >= 0
                h, y = h[valid], y[valid]
            else:
                h = network.encode(x)
            loss = _loss(network, h, y, config.negatives, generator)
            take_step(optimizer, loss, epoch)
            total += loss.item() * len(y)
            count += len(y)
        return {"train_loss": total / max(count, 1)}

    return train_epoch


def _train(network, indptr, items, config, device, epochs, progress, desc, validate=None):
    optimizer = make_optimizer(config.optimizer, network.parameters(), config.lr, config.momentum,
                               config.weight_decay)  # fmt: skip
    train_epoch = _epoch_fn(network, optimizer, indptr, items, config, device)
    return run_epochs(network, optimizer, train_epoch, validate, monitor="val_ndcg10", higher_is_better=True,
                      epochs=epochs, patience=config.patience, schedule=config.lr_schedule, progress=progress,
                      desc=desc)  # fmt: skip


def fit_sequence(train: Interactions, config, device, progress: bool):
    """Train ``config.model`` (resolved) on ``train``; returns (network on the device, history, metrics)."""
    indptr, items = timelines(train)
    torch.manual_seed(config.seed)
    network = build_sequence_network(config.model, train.num_items, config).to(device)
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    metrics: dict[str, float] = {}
    if config.val_fraction <= 0:
        history, best = _train(network, indptr, items, config, device, config.epochs, progress, f"train {config.model}")
        metrics.update({"epochs_run": float(len(history)), "best_epoch": float(len(history))})
        return network, history, metrics
    fit_ptr, fit_items, held, held_items = _drop_last(indptr, items)
    users = (
        held if len(held) <= VAL_USERS else np.sort(np.random.default_rng(config.seed).choice(held, VAL_USERS, False))
    )
    val_csr = _csr(*_held_csr(held, held_items, train.num_users), train.num_items)
    seen = _csr(fit_ptr, fit_items, train.num_items)
    score = sequence_scores(network, fit_ptr, fit_items, device)

    def validate() -> dict[str, float]:
        found, _ = evaluate_ranking(score, seen, val_csr, train.num_items, k=10, batch_size=256, users=users)
        return {"val_ndcg10": 0.0 if found.users == 0 else found.ndcg, "val_hit10": found.hit_rate}

    history, best = _train(network, fit_ptr, fit_items, config, device, config.epochs, progress,
                           f"train {config.model}", validate)  # fmt: skip
    last = validate()
    metrics.update({"val_ndcg10": last["val_ndcg10"], "val_hit10": last["val_hit10"]})
    if config.refit:
        network.load_state_dict(initial)  # the same start as the validated run, now on every item
        _train(network, indptr, items, config, device, max(best, 1), progress, f"refit {config.model}")
    metrics.update({"epochs_run": float(len(history)), "best_epoch": float(best or len(history))})
    return network, history, metrics


def _held_csr(held: np.ndarray, held_items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    counts = np.zeros(num_users, dtype=np.int64)
    counts[held] = 1
    np.cumsum(counts, out=indptr[1:])
    return indptr, held_items
