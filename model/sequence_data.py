"""Each user's timeline for the sequence models: time order, training windows, the last item held out.

A timeline is a user's rows sorted by timestamp; rows with the same timestamp keep their order in the
file (a stable sort), and a file without timestamps (every one 0) is taken in file order, with a warning.
Padding is ``-1`` on the left: a window's newest item is always its last column, so a window of any
length lines up with the positions the model was trained on.
"""

from __future__ import annotations

import warnings

import numpy as np

from model.interactions import Interactions
from model.raw import DataWarning

PAD = -1


class FileOrderWarning(DataWarning):
    """The data has no timestamps: each user's items are taken in the order of the file."""


def timeline_order(inter: Interactions, warn: bool = True) -> np.ndarray:
    """Row indices (n,) int64 grouping rows by user, each user's rows by time, ties in file order."""
    if warn and len(inter) > 1 and inter.timestamps.min() == inter.timestamps.max():
        warnings.warn("the data has no timestamps: each user's items are ordered as in the file", FileOrderWarning,
                      stacklevel=2)  # fmt: skip
    return np.lexsort((np.arange(len(inter)), inter.timestamps, inter.user_idx)).astype(np.int64)


def timelines(inter: Interactions, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every user's items oldest first as CSR: ``(indptr (num_users + 1,), items (n,))``, int64."""
    order = timeline_order(inter, warn)
    indptr = np.zeros(inter.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(inter.user_idx, minlength=inter.num_users), out=indptr[1:])
    return indptr, inter.item_idx[order].astype(np.int64)


def last_out(inter: Interactions, warn: bool = True) -> tuple[Interactions, Interactions]:
    """Leave-last-out by time: each user's latest row (ties: the later in the file) is the test part, the rest
    the training part; a user with one row keeps it in training. Both parts keep the id space and the rows'
    file order."""
    timeline_order(inter, warn)  # the warning only
    is_test = newest_rows(inter)
    return inter.subset(~is_test), inter.subset(is_test)


def newest_rows(inter: Interactions, eligible: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: each user's newest row (ties: the later in the file) where the user has another row to train on:
    leave-last-out's test part.

    With ``eligible`` (the retrain's holdout: rows of pairs no compared model has trained on), each user's
    newest *eligible* row, with every row of its (user, item) pair, so that no model has the held item among
    the user's training items; a user keeps it only with a row of another pair to train on. Rows after it (a
    repeat of an older pair: music, re-watches) stay in training, as they did for the compared models."""
    order = timeline_order(inter, warn=False)
    if eligible is None:
        counts = np.bincount(inter.user_idx, minlength=inter.num_users)
        held = np.zeros(len(inter), dtype=bool)
        held[order[np.cumsum(counts)[counts >= 2] - 1]] = True
        return held
    at = np.flatnonzero(np.asarray(eligible, dtype=bool)[order])  # positions in time order of eligible rows
    newest = np.full(inter.num_users, -1, dtype=np.int64)
    np.maximum.at(newest, inter.user_idx[order[at]], at)  # each user's last eligible position
    keys = inter.pair_keys()
    held = np.isin(keys, keys[order[newest[newest >= 0]]])
    others = np.bincount(inter.user_idx[~held], minlength=inter.num_users)
    return held & (others[inter.user_idx] > 0)


def left_pad(indptr: np.ndarray, items: np.ndarray, length: int, users: np.ndarray | None = None) -> np.ndarray:
    """Each user's last ``length`` items, oldest first, left-padded with ``PAD``: (n_users, length) int64."""
    users = np.arange(len(indptr) - 1) if users is None else np.asarray(users, dtype=np.int64)
    out = np.full((len(users), length), PAD, dtype=np.int64)
    for row, user in enumerate(users):
        seq = items[indptr[user] : indptr[user + 1]][-length:]
        if len(seq):
            out[row, length - len(seq) :] = seq
    return out


def pad_history(item_idx: np.ndarray, length: int) -> np.ndarray:
    """One history (oldest first) as a model input row: its last ``length`` items, left-padded, (length,)."""
    out = np.full(length, PAD, dtype=np.int64)
    seq = np.asarray(item_idx, dtype=np.int64)[-length:]
    if len(seq):
        out[length - len(seq) :] = seq
    return out


def windows(indptr: np.ndarray, items: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Training windows for models that predict at every position (GRU4Rec, SASRec).

    Each timeline ``s`` is cut from its end into pieces of ``length`` transitions: inputs ``s[a:b]`` and
    targets ``s[a+1:b+1]``, left-padded with ``PAD`` (targets padded too: those positions carry no loss).
    Returns (inputs, targets), both (windows, length) int64.
    """
    inputs, targets = [], []
    for user in range(len(indptr) - 1):
        seq = items[indptr[user] : indptr[user + 1]]
        for end in range(len(seq) - 1, 0, -length):
            start = max(end - length, 0)
            inputs.append(pad_history(seq[start:end], length))
            targets.append(pad_history(seq[start + 1 : end + 1], length))
    if not inputs:
        return np.zeros((0, length), np.int64), np.zeros((0, length), np.int64)
    return np.stack(inputs), np.stack(targets)


def next_item_pairs(indptr: np.ndarray, items: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs for models that read a fixed window (Caser): for every position ``t >= 1`` of every
    timeline, the ``length`` items before it (left-padded) and the item at ``t``. Returns ((m, length), (m,))."""
    starts, counts = indptr[:-1], np.diff(indptr)
    pos = np.concatenate([np.arange(s + 1, s + c) for s, c in zip(starts, counts) if c >= 2] or [np.zeros(0, int)])
    pos = pos.astype(np.int64)
    first = np.repeat(starts, np.maximum(counts - 1, 0))  # each position's timeline start
    offsets = np.arange(-length, 0, dtype=np.int64)  # (length,)
    idx = pos[:, None] + offsets[None, :]  # (m, length) positions of the window
    valid = idx >= first[:, None]
    inputs = np.where(valid, items[np.clip(idx, 0, None)], PAD)
    return inputs.astype(np.int64), items[pos]
