"""Parsed rating rows before id mapping: raw string ids held as int32 codes into a sorted vocabulary.

A 20M-row file has about 165k distinct ids, so one Python ``str`` per distinct id (not per row) is what
keeps reading fast and small. :class:`RawRatings` is what every reader returns (``model.data`` for files,
``model.synthetic`` for generated data) and what ``model.interactions.build_dataset`` maps to indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Longer ids could be trained on but never asked for: the service refuses ids over this length.
MAX_ID_LENGTH = 256


class DataFormatError(ValueError):
    """A rating file could not be parsed. ``str()`` reads ``FILE:LINE: reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class DataWarning(UserWarning):
    """Data read, but maybe not as the user meant it (a Parquet column not read, a sequence without times). The
    command-line tools print it as one ``warning: ...`` line (:func:`plain_warnings`)."""


def plain_warnings() -> None:
    """Print warnings as ``warning: message`` lines, without the source line Python shows for a library's."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def sorted_vocab(codes: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Re-code ``codes`` (indices into ``names``, which may repeat) against the sorted distinct names.

    Args:
        codes: shape (n,), any integer dtype, each in ``[0, len(names))``.
        names: the strings the codes point at (duplicates allowed, e.g. ``" a"`` and ``"a"`` after strip).
    Returns:
        (codes shape (n,) int32 into the vocabulary, vocabulary shape (v,) object array of sorted unique str).
    """
    remap, vocab = vocab_remap(names)
    return remap[codes] if len(codes) else np.zeros(0, np.int32), vocab


def vocab_remap(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(position of each name in the vocabulary, shape (len(names),) int32; the vocabulary).

    The vocabulary is the sorted distinct ``names`` in Python ``str`` order (code points), the order
    ``np.unique`` gives ``IdMap.fit``, so id maps built from codes equal the ones built from raw strings.
    Costs O(len(names) log) in Python: one ``str`` per distinct id, none per row.
    """
    vocab = sorted(set(names))
    position = {name: rank for rank, name in enumerate(vocab)}
    remap = np.fromiter((position[name] for name in names), dtype=np.int32, count=len(names))
    return remap, _object_array(vocab)


def _object_array(strings: Sequence[str]) -> np.ndarray:
    out = np.empty(len(strings), dtype=object)
    out[:] = list(strings)
    return out


class RawRatings:
    """Parsed rows with raw (string) ids, before id mapping.

    Storage (what readers fill):
        user_codes, item_codes: shape (n,), int32, indices into the vocabularies.
        user_vocab, item_vocab: shape (v,), object (str), sorted by code point, unique. An entry may be
            unused after :meth:`subset`; ``build_dataset`` keeps only the ids present.
        ratings: shape (n,), float32 (1.0 for implicit rows).
        timestamps: shape (n,), int64 (0 where the file had none).
        fingerprint: sha256 of the file bytes (or of the generator's arguments).
        source: where the rows came from, for messages and the checkpoint.
        implicit: True when the file carried no rating column.
    Views: ``user_ids`` / ``item_ids`` decode to shape (n,) object arrays of str on each access (O(n)
    pointers; fine for test files, avoid on 20M rows).

    ``RawRatings(user_ids, item_ids, ratings, timestamps, fingerprint, source, implicit)`` still builds
    one from raw id columns (any dtype, converted with ``str``); readers use :meth:`from_codes`.
    """

    def __init__(
        self,
        user_ids: Sequence[object] | np.ndarray,
        item_ids: Sequence[object] | np.ndarray,
        ratings: np.ndarray,
        timestamps: np.ndarray,
        fingerprint: str,
        source: str,
        implicit: bool = False,
    ):
        users, user_codes = np.unique(np.asarray(user_ids, dtype=str), return_inverse=True)
        items, item_codes = np.unique(np.asarray(item_ids, dtype=str), return_inverse=True)
        self._store(
            user_codes.reshape(-1).astype(np.int32), _object_array(users.tolist()),
            item_codes.reshape(-1).astype(np.int32), _object_array(items.tolist()),
            ratings, timestamps, fingerprint, source, implicit,
        )  # fmt: skip

    @classmethod
    def from_codes(
        cls,
        user_codes: np.ndarray,
        user_vocab: np.ndarray,
        item_codes: np.ndarray,
        item_vocab: np.ndarray,
        ratings: np.ndarray,
        timestamps: np.ndarray,
        fingerprint: str,
        source: str,
        implicit: bool = False,
    ) -> RawRatings:
        """Wrap arrays a reader built (see :func:`sorted_vocab`); checks shapes, ranges and vocab order."""
        raw = cls.__new__(cls)
        raw._store(user_codes, user_vocab, item_codes, item_vocab, ratings, timestamps, fingerprint, source, implicit)
        return raw

    def _store(
        self, user_codes, user_vocab, item_codes, item_vocab, ratings, timestamps, fingerprint, source, implicit
    ):  # noqa: E501
        self.user_codes = np.asarray(user_codes, dtype=np.int32)
        self.item_codes = np.asarray(item_codes, dtype=np.int32)
        self.user_vocab = _object_array(user_vocab) if not isinstance(user_vocab, np.ndarray) else user_vocab
        self.item_vocab = _object_array(item_vocab) if not isinstance(item_vocab, np.ndarray) else item_vocab
        self.ratings = np.asarray(ratings, dtype=np.float32)
        self.timestamps = np.asarray(timestamps, dtype=np.int64)
        self.fingerprint, self.source, self.implicit = fingerprint, source, bool(implicit)
        n = len(self.ratings)
        for name in ("user_codes", "item_codes", "timestamps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, ratings has {n}")
        for side in ("user", "item"):
            codes, vocab = getattr(self, f"{side}_codes"), getattr(self, f"{side}_vocab")
            if n and (codes.min() < 0 or codes.max() >= len(vocab)):
                raise ValueError(f"{side}_codes out of range [0, {len(vocab)})")
            if len(vocab) > 1 and not (vocab[1:] > vocab[:-1]).all():
                raise ValueError(f"{side}_vocab must be sorted and unique")

    @property
    def user_ids(self) -> np.ndarray:
        """Raw user id of each row, shape (n,), object (str)."""
        return self.user_vocab[self.user_codes]

    @property
    def item_ids(self) -> np.ndarray:
        """Raw item id of each row, shape (n,), object (str)."""
        return self.item_vocab[self.item_codes]

    def subset(self, mask_or_index: np.ndarray) -> RawRatings:
        """Rows selected by a boolean mask or index array; the vocabularies are shared, not copied."""
        return RawRatings.from_codes(
            self.user_codes[mask_or_index], self.user_vocab, self.item_codes[mask_or_index], self.item_vocab,
            self.ratings[mask_or_index], self.timestamps[mask_or_index], self.fingerprint, self.source,
            self.implicit,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ratings)

    def __repr__(self) -> str:
        return (
            f"RawRatings({len(self)} rows, {len(self.user_vocab)} user ids, {len(self.item_vocab)} item ids, "
            f"source={self.source!r}, implicit={self.implicit})"
        )
