"""Sets of (row, column) pairs as sorted int64 keys ``row * num_columns + column``.

numpy 2's ``np.unique`` and ``np.isin`` hash int64 input, which is several times slower than sorting
on tens of millions of keys (0.5 s a call on 2M keys here); these helpers sort or binary-search instead.
"""

from __future__ import annotations

import numpy as np


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values of ``values`` in ascending order (``np.unique`` by sorting)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def member_of(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_keys`` (ascending); boolean, shape of ``values``."""
    if not len(sorted_keys):
        return np.zeros(np.shape(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values
