"""The validated interaction container (user_idx, item_idx, rating, timestamp) and its splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.idmap import IdMap
from model.keys import sorted_unique
from model.raw import RawRatings


@dataclass
class Interactions:
    """Parallel arrays of observed (user, item, rating) triples in a fixed id space.

    Attributes:
        user_idx, item_idx: shape (n,), int32 (4 bytes a row: 20M rows are 160 MB, not 320), in
            ``[0, num_users)`` / ``[0, num_items)``; products with ``num_items`` are formed in int64.
        ratings: shape (n,), float32.
        timestamps: shape (n,), int64.
        num_users, num_items: size of the id space (may exceed the ids present, e.g. after a split).
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    num_users: int
    num_items: int
    _seen: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.user_idx = np.asarray(self.user_idx, dtype=np.int32)
        self.item_idx = np.asarray(self.item_idx, dtype=np.int32)
        self.ratings = np.asarray(self.ratings, dtype=np.float32)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        n = len(self.user_idx)
        for name in ("item_idx", "ratings", "timestamps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, user_idx has {n}")
        if n and (self.user_idx.min() < 0 or self.user_idx.max() >= self.num_users):
            raise ValueError(f"user_idx out of range [0, {self.num_users})")
        if n and (self.item_idx.min() < 0 or self.item_idx.max() >= self.num_items):
            raise ValueError(f"item_idx out of range [0, {self.num_items})")
        if not np.isfinite(self.ratings).all():
            raise ValueError("ratings contain NaN or infinity")

    def __len__(self) -> int:
        return len(self.user_idx)

    def subset(self, mask_or_index: np.ndarray) -> Interactions:
        """Rows selected by a boolean mask or index array, in the same id space."""
        return Interactions(
            self.user_idx[mask_or_index],
            self.item_idx[mask_or_index],
            self.ratings[mask_or_index],
            self.timestamps[mask_or_index],
            self.num_users,
            self.num_items,
        )

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's distinct items as CSR: ``(indptr (num_users+1,), indices (nnz,))``, int64, sorted.

        Computed once per container (validation asks for it every epoch); the arrays are shared, not copied.
        """
        if self._seen is None:
            self._seen = self._distinct_csr()
        return self._seen

    def pair_keys(self) -> np.ndarray:
        """One int64 key per row, ``user_idx * num_items + item_idx``: equal keys, equal (user, item) pairs.

        Formed in int64: the int32 indices' own product overflows past 2^31 cells (138k users x 27k items)."""
        return self.user_idx.astype(np.int64) * self.num_items + self.item_idx

    def _distinct_csr(self) -> tuple[np.ndarray, np.ndarray]:
        key = sorted_unique(self.pair_keys())
        users, items = key // self.num_items, key % self.num_items
        indptr = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=self.num_users), out=indptr[1:])
        return indptr, items.astype(np.int64)

    def item_counts(self) -> np.ndarray:
        """Number of interactions per item, shape (num_items,), int64."""
        return np.bincount(self.item_idx, minlength=self.num_items).astype(np.int64)


@dataclass
class Dataset:
    """Interactions plus the id maps that turn their indices back into raw ids."""

    interactions: Interactions
    user_map: IdMap
    item_map: IdMap
    fingerprint: str
    source: str
    implicit: bool = False


def build_dataset(raw: RawRatings) -> Dataset:
    """Map raw ids to contiguous indices (raw ids stop here).

    Works on the int32 codes: indices follow sorted raw-id order (as ``IdMap.fit`` gives), only the ids
    present in ``raw`` get one, and no per-row Python object is made.
    """
    user_map, user_idx = _fit_codes(raw.user_codes, raw.user_vocab)
    item_map, item_idx = _fit_codes(raw.item_codes, raw.item_vocab)
    inter = Interactions(user_idx, item_idx, raw.ratings, raw.timestamps, len(user_map), len(item_map))
    return Dataset(inter, user_map, item_map, raw.fingerprint, raw.source, raw.implicit)


def _fit_codes(codes: np.ndarray, vocab: np.ndarray) -> tuple[IdMap, np.ndarray]:
    """(id map of the vocabulary entries in use, indices shape (n,) int32); ``vocab`` is sorted."""
    present = np.bincount(codes, minlength=len(vocab)) > 0
    if present.all():
        return IdMap(vocab.tolist()), codes
    rank = (np.cumsum(present) - 1).astype(np.int32)
    return IdMap(vocab[present].tolist()), rank[codes]


def encode_with(raw: RawRatings, user_map: IdMap, item_map: IdMap) -> tuple[Interactions, np.ndarray]:
    """Encode rows in an existing id space (e.g. a test file against a trained model).

    Returns:
        (interactions of the rows whose user and item are both known, boolean mask of those rows).
    """
    users = user_map.encode(raw.user_vocab)[raw.user_codes]  # one lookup per distinct id, then a gather
    items = item_map.encode(raw.item_vocab)[raw.item_codes]
    known = (users >= 0) & (items >= 0)
    inter = Interactions(
        users[known], items[known], raw.ratings[known], raw.timestamps[known], len(user_map), len(item_map)
    )
    return inter, known


def encode_new_users(raw: RawRatings, user_map: IdMap, item_map: IdMap) -> Interactions:
    """The rows of users absent from ``user_map`` (new users, as in strong generalisation), in an id space of
    their own (their sorted raw ids), items in ``item_map``; rows whose item is unknown are dropped."""
    new_user = user_map.encode(raw.user_vocab)[raw.user_codes] < 0
    items = item_map.encode(raw.item_vocab)[raw.item_codes]
    keep = new_user & (items >= 0)
    new_map, users = _fit_codes(raw.user_codes[keep], raw.user_vocab) if keep.any() else (IdMap([]), items[:0])
    return Interactions(users, items[keep], raw.ratings[keep], raw.timestamps[keep], len(new_map), len(item_map))


def pairs_of(inter: Interactions) -> tuple[Interactions, np.ndarray]:
    """One row per distinct (user, item) pair, in the order of first appearance (its latest timestamp, its
    first rating), and each row's pair (n,) int64: splits draw pairs, so a repeated pair is never on both
    sides. Without repeated pairs the pair rows are the rows themselves, in the same order."""
    keys = inter.pair_keys()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # pairs by first appearance
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    latest = np.full(len(order), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, rank[inverse.reshape(-1)], inter.timestamps)
    rows = first[order]
    pairs = Interactions(inter.user_idx[rows], inter.item_idx[rows], inter.ratings[rows], latest, inter.num_users,
                         inter.num_items)  # fmt: skip
    return pairs, rank[inverse.reshape(-1)]
