"""Mapping between raw ids (strings from the user's data) and contiguous integer indices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class IdMap:
    """Bidirectional map ``raw id (str) <-> index (int, 0..n-1)``.

    Raw ids stop here: everything downstream works with indices.
    """

    def __init__(self, ids: Sequence[str]):
        self.ids: list[str] = [str(i) for i in ids]
        self._index: dict[str, int] = {raw: idx for idx, raw in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap ids must be unique")

    @classmethod
    def fit(cls, raw_ids: np.ndarray) -> tuple[IdMap, np.ndarray]:
        """Build a map from a column of raw ids and encode it.

        Args:
            raw_ids: shape (n,), any dtype; values are converted to ``str``.
        Returns:
            (id map, indices of shape (n,) int64). Indices follow sorted raw-id order, so the map does
            not depend on the order of lines in the file.
        """
        uniques, inverse = np.unique(np.asarray(raw_ids, dtype=str), return_inverse=True)
        return cls(uniques.tolist()), inverse.astype(np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw_id: object) -> bool:
        return str(raw_id) in self._index

    def get(self, raw_id: object) -> int | None:
        """Index of ``raw_id`` or ``None`` when it is unknown."""
        return self._index.get(str(raw_id))

    def encode(self, raw_ids: Iterable[object]) -> np.ndarray:
        """Indices for known ids; -1 for unknown ones. Shape (n,), int64."""
        return np.fromiter((self._index.get(str(r), -1) for r in raw_ids), dtype=np.int64)

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Raw ids for indices (which must be valid)."""
        return [self.ids[int(i)] for i in indices]
