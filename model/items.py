"""Item metadata: named attributes per item (a title, a year, a list of genres), aligned to the model's items.

``ItemAttributes`` is what ``scripts/train.py --items FILE`` stores in the checkpoint and what the service
answers with and filters on. Per attribute it holds no Python object per item: a sorted vocabulary of the
distinct values (strings) and, per item, codes into it as CSR (``indptr`` (I+1,) int64, ``values`` (nnz,)
int32), so a single-valued attribute is the case of at most one value per item and an item without a value
has an empty row. Reading files is :mod:`model.item_files`; what a checkpoint may hold is checked by
:func:`payload_errors` (called from ``model.checkpoint_checks``).

Kinds: ``str`` (one string), ``int`` (one integer, kept as its decimal string: filters compare strings) and
``list`` (any number of strings, e.g. MovieLens genres).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("str", "int", "list")
# Size bounds of what a checkpoint may hold (validated at load): a metadata file is descriptive text, not data.
MAX_ATTRIBUTES = 64
MAX_NAME_LENGTH = 64
MAX_VALUE_LENGTH = 1024
MAX_VALUES_PER_ITEM = 256  # per attribute


def name_error(name: Any) -> str | None:
    """Why ``name`` cannot be an attribute name (None when it can): ``filter=name:value`` must parse."""
    if not isinstance(name, str) or not name or name != name.strip():
        return f"attribute name {name!r} is empty or has surrounding spaces"
    if len(name) > MAX_NAME_LENGTH or ":" in name:
        return f"attribute name {name!r} is longer than {MAX_NAME_LENGTH} characters or holds ':'"
    return None


@dataclass(frozen=True)
class Attribute:
    """One attribute of every item: ``vocab[values[indptr[i]:indptr[i + 1]]]`` are item i's values."""

    name: str
    kind: str  # one of KINDS
    vocab: list[str]  # distinct values, sorted (ints by value)
    indptr: np.ndarray  # (I + 1,) int64
    values: np.ndarray  # (nnz,) int32 codes into vocab

    def value_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The inverse index: items per value as CSR, ((V + 1,) int64 pointers, (nnz,) int64 sorted items)."""
        items = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        order = np.argsort(self.values, kind="stable")  # stable: items stay ascending within a value
        counts = np.bincount(self.values, minlength=len(self.vocab))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items[order]


@dataclass(frozen=True)
class ItemAttributes:
    """Every attribute of the model's items, item indices as in the checkpoint's ``item_ids``."""

    attributes: list[Attribute]
    num_items: int

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]


def canonical(kind: str, value: str) -> str | None:
    """A value as stored for ``kind`` (ints in decimal, without sign or zero padding noise), None if it is not one."""
    value = value.strip()
    if kind == "int":
        try:
            return str(int(value))
        except ValueError:
            return None
    return value


def build(
    names: Sequence[str], kinds: Sequence[str], rows: Mapping[int, Sequence[Sequence[str]]], num_items: int
) -> ItemAttributes:
    """Attributes from per-item values: ``rows[item_idx][a]`` is item ``item_idx``'s list of values of attribute
    ``a`` (empty: none). Items absent from ``rows`` have no values."""
    attributes = []
    for a, (name, kind) in enumerate(zip(names, kinds)):
        per_item = [rows[i][a] if i in rows else () for i in range(num_items)]
        distinct = {v for vals in per_item for v in vals}
        vocab = sorted(distinct, key=int) if kind == "int" else sorted(distinct)
        code = {v: c for c, v in enumerate(vocab)}
        counts = np.fromiter((len(vals) for vals in per_item), np.int64, num_items)
        values = np.fromiter((code[v] for vals in per_item for v in vals), np.int32, int(counts.sum()))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        attributes.append(Attribute(name, kind, vocab, indptr, values))
    return ItemAttributes(attributes, num_items)


def to_payload(attrs: ItemAttributes) -> list[dict[str, Any]]:
    """Plain values and numpy arrays for the checkpoint (``model.checkpoint`` turns arrays into tensors)."""
    return [
        {"name": a.name, "kind": a.kind, "vocab": list(a.vocab), "indptr": a.indptr, "values": a.values}
        for a in attrs.attributes
    ]


def from_payload(payload: Sequence[Mapping[str, Any]], num_items: int) -> ItemAttributes:
    """The inverse of :func:`to_payload` (arrays already numpy); call :func:`payload_errors` first."""
    attributes = [
        Attribute(str(a["name"]), str(a["kind"]), [str(v) for v in a["vocab"]], a["indptr"], a["values"])
        for a in payload
    ]
    return ItemAttributes(attributes, num_items)


def payload_errors(payload: Any, num_items: int) -> Iterator[str]:
    """What is wrong with a stored attribute list (arrays as numpy), one message per fault."""
    if not isinstance(payload, list) or len(payload) > MAX_ATTRIBUTES:
        yield f"item_attributes is not a list of at most {MAX_ATTRIBUTES} attributes"
        return
    seen: set[str] = set()
    for n, attr in enumerate(payload):
        where = f"item_attributes[{n}]"
        if not isinstance(attr, dict) or set(attr) != {"name", "kind", "vocab", "indptr", "values"}:
            yield f"{where} is not a dict of name, kind, vocab, indptr, values"
            continue
        error = name_error(attr["name"])
        if error or attr["name"] in seen:
            yield f"{where}: {error or 'duplicate attribute name'}"
            continue
        seen.add(attr["name"])
        yield from _attribute_errors(f"{where} ({attr['name']})", attr, num_items)


def _attribute_errors(where: str, attr: dict[str, Any], num_items: int) -> Iterator[str]:
    kind, vocab, indptr, values = attr["kind"], attr["vocab"], attr["indptr"], attr["values"]
    if kind not in KINDS:
        yield f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}"
    if not isinstance(vocab, list) or not all(isinstance(v, str) and len(v) <= MAX_VALUE_LENGTH for v in vocab):
        yield f"{where}: vocab is not a list of strings of at most {MAX_VALUE_LENGTH} characters"
        return
    if len(set(vocab)) != len(vocab):
        yield f"{where}: vocab holds duplicates"
    if kind == "int" and not all(canonical("int", v) == v for v in vocab):
        yield f"{where}: an int attribute's vocab holds a value that is not a decimal integer"
    ok_arrays = (
        isinstance(indptr, np.ndarray) and indptr.dtype == np.int64 and indptr.shape == (num_items + 1,)
        and isinstance(values, np.ndarray) and values.dtype == np.int32 and values.ndim == 1
    )  # fmt: skip
    if not ok_arrays:
        yield f"{where}: indptr must be ({num_items + 1},) int64 and values 1-d int32"
        return
    counts = np.diff(indptr)
    if indptr[0] != 0 or indptr[-1] != len(values) or (counts < 0).any():
        yield f"{where}: indptr does not start at 0, never decrease and end at len(values)"
    elif len(counts) and counts.max() > (MAX_VALUES_PER_ITEM if kind == "list" else 1):
        yield f"{where}: an item has more values than a {kind} attribute allows"
    if len(values) and (values.min() < 0 or values.max() >= len(vocab)):
        yield f"{where}: values refer outside the vocabulary"
