"""Item attributes at serving time: what each returned item carries, and filters on them (``filter=genres:Comedy``).

Built once per loaded model from the checkpoint's :class:`model.items.ItemAttributes`. Per attribute: each
item's codes (CSR, views of the checkpoint) for describing items, and the inverse index (value -> sorted
item indices) for filtering. Values common enough that building their item mask per request would cost
(at least ``1/MASK_SHARE`` of the catalogue: a genre, a year) also get a precomputed boolean mask (a byte
per item: one gather answers a walk, where a bitset took six numpy calls), within ``MASK_BUDGET`` bytes per
worker, most common first. A filter answers two questions: does it keep these few items (walking a
precomputed top-N list: a mask lookup or a binary search per item), and which items does it keep at all
(the scan fallback: the mask itself, or one set from the inverse index).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.items import MAX_NAME_LENGTH, Attribute, ItemAttributes, canonical

MASK_SHARE = 256
MASK_BUDGET = 32 * 2**20
CACHE_ITEMS = 100_000  # items whose attribute dicts are kept once built (about 0.5 KB each)
COMPILED_FILTERS = 4096  # distinct filters on one common value kept compiled per worker (emptied when full)


class UnknownAttribute(KeyError):
    """A filter names an attribute the model's items do not have."""

    def __init__(self, name: str, known: Sequence[str]):
        super().__init__(name)
        self.name, self.known = name, list(known)

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none: the model was trained without --items"
        # No name longer than an attribute's can be one: echoing a 100 KB one in full made a 100 KB answer.
        name = repr(self.name) if len(self.name) <= MAX_NAME_LENGTH else f"{self.name[:MAX_NAME_LENGTH]!r}..."
        return f"unknown attribute {name} (known: {known})"


class BadFilterValue(ValueError):
    """A filter value that the attribute can never hold (a word for an int attribute)."""

    def __init__(self, name: str, value: str, kind: str):
        super().__init__(f"{name}: {value!r} is not {'an integer' if kind == 'int' else 'a ' + kind}")
        self.name = name


class _Served:
    """One attribute, ready to describe items and to select them."""

    def __init__(self, attr: Attribute, num_items: int):
        self.name, self.kind, self.num_items = attr.name, attr.kind, num_items
        self.vocab = attr.vocab
        self.shown = [int(v) for v in attr.vocab] if attr.kind == "int" else attr.vocab  # as JSON shows it
        self.code = {v: c for c, v in enumerate(attr.vocab)}
        self.indptr, self.values = attr.indptr, attr.values
        if attr.kind != "list":  # one code per item (-1: none), so describing k items is one gather
            self.single = np.full(num_items, -1, dtype=np.int64)
            has = np.diff(attr.indptr) > 0
            self.single[has] = attr.values[attr.indptr[:-1][has]]
        self.value_ptr, self.value_items = attr.value_items()
        self._items: dict[int, np.ndarray] = {}  # value code -> its items (views), filled as filters ask
        self.masks: dict[int, np.ndarray] = {}  # value code -> (I,) bool, read-only

    def count(self, code: int) -> int:
        return int(self.value_ptr[code + 1] - self.value_ptr[code])

    def items_of(self, code: int) -> np.ndarray:
        items = self._items.get(code)
        if items is None:  # the slice once per value asked for, not two numpy scalar reads per request
            items = self._items[code] = self.value_items[self.value_ptr[code] : self.value_ptr[code + 1]]
        return items


class AttributeIndex:
    """The served model's item attributes (possibly none) and the filters over them."""

    def __init__(self, attrs: ItemAttributes | None, num_items: int, budget: int = MASK_BUDGET):
        self.num_items = num_items
        self._cache: dict[int, dict[str, Any]] = {}
        self._compiled: dict[tuple, ItemFilter] = {}  # filters -> their ItemFilter (shared: read only)
        self.by_name = {a.name: _Served(a, num_items) for a in (attrs.attributes if attrs else [])}
        # Masks for the most common values first, while they fit the budget.
        common = sorted(
            ((served.count(c), name, c) for name, served in self.by_name.items()
             for c in np.flatnonzero(np.diff(served.value_ptr) * MASK_SHARE >= num_items).tolist()),
            key=lambda t: -t[0],
        )  # fmt: skip
        for _, name, c in common[: budget // max(num_items, 1)]:
            mask = np.zeros(num_items, dtype=bool)
            mask[self.by_name[name].items_of(c)] = True
            mask.flags.writeable = False
            self.by_name[name].masks[c] = mask

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def describe(self, item_idx: np.ndarray | list[int]) -> list[dict[str, Any]]:
        """Each item's attributes, ``{name: value}`` (a list for list attributes); attributes without a value
        for the item are left out, so an item without metadata is ``{}``. The dicts are cached per item (the
        first ``CACHE_ITEMS`` items asked for: top-k answers repeat the same items) and shared: read only."""
        if not self.by_name:
            return [{} for _ in range(len(item_idx))]
        out, cache = [], self._cache
        for item in item_idx.tolist() if isinstance(item_idx, np.ndarray) else item_idx:
            row = cache.get(item)
            if row is None:
                row = self._describe_one(item)
                if len(cache) < CACHE_ITEMS:
                    cache[item] = row
            out.append(row)
        return out

    def _describe_one(self, item: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, served in self.by_name.items():
            if served.kind != "list":
                code = int(served.single[item])
                if code >= 0:
                    row[name] = served.shown[code]
            elif served.indptr[item + 1] > served.indptr[item]:
                codes = served.values[served.indptr[item] : served.indptr[item + 1]].tolist()
                row[name] = [served.shown[c] for c in codes]
        return row

    def compile(self, filters: Mapping[str, Sequence[str]] | None) -> ItemFilter | None:
        """A filter keeping the items that hold every ``name: value`` (None without filters).

        Raises:
            UnknownAttribute: a name the items do not have.
            BadFilterValue: a value the attribute cannot hold (not an integer, for an int attribute).
        """
        if not filters:
            return None
        key = tuple((name, tuple(values)) for name, values in filters.items())
        compiled = self._compiled.get(key)
        if compiled is None:  # the same few filters come back request after request: compile each once
            compiled = self._compile(filters)
            # Only filters on one common value (one with a stored mask) are kept: they hold views of the index and
            # never build an (I,) mask of their own (/similar asks any filter for one), which kept filters would
            # multiply by 4,096.
            if len(compiled.conditions) == 1 and compiled.conditions[0][0] is not None:
                if len(self._compiled) >= COMPILED_FILTERS:
                    self._compiled.clear()
                self._compiled[key] = compiled
        return compiled

    def _compile(self, filters: Mapping[str, Sequence[str]]) -> ItemFilter:
        conditions = []
        for name, values in filters.items():
            served = self.by_name.get(name)
            if served is None:
                raise UnknownAttribute(name, self.names)
            for given in values:
                value = canonical(served.kind, str(given))
                if value is None:
                    raise BadFilterValue(name, str(given), served.kind)
                code = served.code.get(value)
                if code is None:  # a value no item holds: keeps nothing
                    conditions.append((None, np.empty(0, np.int64), None))
                else:
                    conditions.append((served.masks.get(code), served.items_of(code), (name, code)))
        return ItemFilter(conditions, self.num_items)


class ItemFilter:
    """Conditions that must all hold; each is (the value's (I,) bool mask or None, the sorted items holding the
    value, (attribute, value code) or None for a value no item holds)."""

    def __init__(self, conditions: list[tuple[np.ndarray | None, np.ndarray, tuple | None]], num_items: int):
        self.conditions, self.num_items = conditions, num_items
        self._mask: np.ndarray | None = None
        # One (attribute, value): a key under which the caller may cache what it derives from the kept items.
        self.key = conditions[0][2] if len(conditions) == 1 else None

    def allows(self, items: np.ndarray) -> np.ndarray:
        """Which of ``items`` (n,) the filter keeps, (n,) bool: a few operations per item, no (I,) array."""
        if len(self.conditions) == 1 and self.conditions[0][0] is not None:  # the usual filter: one gather
            return self.conditions[0][0][items]
        items = np.asarray(items, dtype=np.int64)
        keep = np.ones(len(items), dtype=bool)
        for held, members, _ in self.conditions:
            if held is not None:
                keep &= held[items]
            else:
                pos = np.minimum(np.searchsorted(members, items), max(len(members) - 1, 0))
                keep &= (members[pos] == items) if len(members) else False
        return keep

    def mask(self) -> np.ndarray:
        """Every item the filter keeps, (I,) bool, read only (computed once per request; one common value's own)."""
        if self._mask is None and len(self.conditions) == 1 and self.conditions[0][0] is not None:
            self._mask = self.conditions[0][0]
        if self._mask is None:
            mask = np.ones(self.num_items, dtype=bool)
            for held, members, _ in self.conditions:
                if held is not None:
                    mask &= held
                else:
                    held = np.zeros(self.num_items, dtype=bool)
                    held[members] = True
                    mask &= held
            self._mask = mask
        return self._mask

    def items(self) -> np.ndarray:
        """The kept item indices, ascending, int64 (one condition: its inverse-index row, no (I,) pass)."""
        if len(self.conditions) == 1:
            return self.conditions[0][1]
        return np.flatnonzero(self.mask())

    def count(self) -> int:
        """How many items the filter keeps."""
        return len(self.conditions[0][1]) if len(self.conditions) == 1 else int(self.mask().sum())
