"""The serving index: numpy arrays precomputed from a checkpoint, so requests never touch torch.

Scores follow the biased MF form ``mu + b_u + b_i + U_u . V_i``. Unknown users fall back to the most
popular items; unknown users or items in predictions fall back to the baseline ``mu + known biases``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.checkpoint import Checkpoint


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    fallback: str | None


@dataclass(frozen=True)
class Predictions:
    ratings: list[float]
    fallbacks: list[str | None]


class ServingIndex:
    """Read-only arrays for answering requests; built once per loaded checkpoint."""

    def __init__(self, ckpt: Checkpoint):
        state = {k: v.detach().numpy() for k, v in ckpt.state_dict.items()}
        self.user_factors = np.ascontiguousarray(state["user_factors.weight"], dtype=np.float32)  # (U, d)
        self.item_factors = np.ascontiguousarray(state["item_factors.weight"], dtype=np.float32)  # (I, d)
        self.user_bias = state["user_bias.weight"].reshape(-1).astype(np.float32)  # (U,)
        self.item_bias = state["item_bias.weight"].reshape(-1).astype(np.float32)  # (I,)
        self.global_bias = float(state["global_bias"])
        self.seen_indptr, self.seen_indices = ckpt.seen_indptr, ckpt.seen_indices
        self.popularity = ckpt.item_popularity.astype(np.float32)
        self.popular_order = np.argsort(-ckpt.item_popularity, kind="stable")  # most popular first
        self.user_index = {raw: idx for idx, raw in enumerate(ckpt.user_ids)}
        self.item_index = {raw: idx for idx, raw in enumerate(ckpt.item_ids)}
        self.item_ids = np.array(ckpt.item_ids, dtype=object)
        self.low, self.high = ckpt.rating_scale
        self.model_version = ckpt.model_version

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def seen(self, user_idx: int) -> np.ndarray:
        """Item indices the user rated in training, shape (n,), int64."""
        return self.seen_indices[self.seen_indptr[user_idx] : self.seen_indptr[user_idx + 1]]

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True) -> Recommendation:
        """Top-``k`` items for a user, best first; ``k`` is clamped to what can be returned."""
        user_idx = self.user_index.get(user_id)
        if user_idx is None:
            top = self.popular_order[:k]
            return Recommendation(self.item_ids[top].tolist(), self.popularity[top].tolist(), "popular")
        scores = self.item_factors @ self.user_factors[user_idx] + self.item_bias  # (I,)
        scores += self.global_bias + self.user_bias[user_idx]
        available = self.num_items
        if exclude_seen:
            seen = self.seen(user_idx)
            scores[seen] = -np.inf
            available -= len(seen)
        k = min(k, available)
        if k <= 0:
            return Recommendation([], [], None)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return Recommendation(self.item_ids[top].tolist(), scores[top].tolist(), None)

    def predict(self, user_ids: list[str], item_ids: list[str]) -> Predictions:
        """Ratings for (user, item) pairs, clipped to the training scale; vectorised over pairs."""
        users = np.fromiter((self.user_index.get(u, -1) for u in user_ids), dtype=np.int64, count=len(user_ids))
        items = np.fromiter((self.item_index.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known_u, known_i = users >= 0, items >= 0
        u, i = np.where(known_u, users, 0), np.where(known_i, items, 0)
        both = known_u & known_i
        dot = np.einsum("nd,nd->n", self.user_factors[u], self.item_factors[i]) * both
        rating = self.global_bias + self.user_bias[u] * known_u + self.item_bias[i] * known_i + dot
        rating = np.clip(rating, self.low, self.high)
        fallbacks = [None if ok else "baseline" for ok in both.tolist()]
        return Predictions(rating.astype(float).tolist(), fallbacks)
