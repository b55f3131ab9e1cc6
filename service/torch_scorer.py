"""NeuMF at serving time: the one kind whose requests run torch (its MLP mixes user and item before scoring)."""

from __future__ import annotations

import numpy as np

from model.checkpoint import Checkpoint


class TorchScorer:
    """NeuMF at serving time: batched forward passes over the catalogue, no gradients, on the CPU.

    torch runs on the request path only here. Workers run one torch thread each (uwsgi.ini sets
    ``OMP_NUM_THREADS=1``; ``service.wsgi`` calls ``torch.set_num_threads(1)``), so N workers use N cores.
    """

    def __init__(self, ckpt: Checkpoint, chunk: int = 65536):
        import torch  # only this kind needs torch to answer requests

        self.torch = torch
        self.net = ckpt.network().requires_grad_(False)  # fold-in optimises new embeddings only
        self.chunk = chunk
        self.num_items = ckpt.num_items
        # The first fold-in in a process pays torch's one-off set-up of autograd and the optimiser: under uWSGI each
        # worker's first POST /recommend took 1.1-1.4 s, the next ones 33-42 ms. A one-step fold-in here pays it at
        # load, before /readyz answers.
        if self.num_items:
            self.fold_in(np.zeros(1, np.int64), steps=1)

    def users(self, user_idx: np.ndarray):
        """The query for known users: their (gmf, mlp) embeddings, (n, d) and (n, h)."""
        idx = self.torch.from_numpy(np.asarray(user_idx, dtype=np.int64))
        with self.torch.no_grad():
            return self.net.gmf_user(idx), self.net.mlp_user(idx)

    def scores(self, query, items: np.ndarray | None = None) -> np.ndarray:
        """Logits (n, m) of ``items`` (default: all) for n queries."""
        torch = self.torch
        gmf_u, mlp_u = query
        items_t = torch.arange(self.num_items) if items is None else torch.from_numpy(np.asarray(items, np.int64))
        out = np.empty((len(gmf_u), len(items_t)), dtype=np.float32)
        step = max(self.chunk // max(len(items_t), 1), 1)
        with torch.no_grad():
            for start in range(0, len(gmf_u), step):
                out[start : start + step] = self.net.score_items(
                    gmf_u[start : start + step], mlp_u[start : start + step], items_t
                ).numpy()
        return out

    def pairs(self, user_idx: np.ndarray, item_idx: np.ndarray, block: int = 256) -> np.ndarray:
        """Logits (n,) for (user, item) pairs.

        Computed in zero-padded blocks of a fixed size: a matrix product's rounding can depend on how many
        rows it has, and a pair must get the same answer alone as in a batch of 10,000.
        """
        torch = self.torch
        n = len(user_idx)
        padded = -(-max(n, 1) // block) * block
        users, items = np.zeros(padded, np.int64), np.zeros(padded, np.int64)
        users[:n], items[:n] = user_idx, item_idx
        out = np.empty(padded, np.float32)
        with torch.no_grad():
            for start in range(0, padded, block):
                sl = slice(start, start + block)
                out[sl] = self.net(torch.from_numpy(users[sl]), torch.from_numpy(items[sl])).numpy()
        return out[:n]

    def fold_in(self, item_idx: np.ndarray, steps: int = 30):
        """Embeddings for a new user: Adam steps on BCE (history = 1, every other item = 0, weighted to balance)."""
        torch = self.torch
        gmf = self.net.gmf_user.weight.detach().mean(0, keepdim=True).clone().requires_grad_(True)
        mlp = self.net.mlp_user.weight.detach().mean(0, keepdim=True).clone().requires_grad_(True)
        target = torch.zeros(self.num_items)
        target[torch.from_numpy(np.asarray(item_idx, np.int64))] = 1.0
        weight = torch.where(target > 0, 1.0 / target.sum(), 1.0 / (self.num_items - target.sum()).clamp(min=1))
        opt = torch.optim.Adam([gmf, mlp], lr=0.05)
        items = torch.arange(self.num_items)
        for _ in range(steps):
            logits = self.net.score_items(gmf, mlp, items)[0]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = (bce * weight).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return gmf.detach(), mlp.detach()
