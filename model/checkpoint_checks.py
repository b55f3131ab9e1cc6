"""Validation of a checkpoint's contents: every stored field's type, dtype, shape and ordering, then the
arrays' agreement with the id maps, the weights with a network of the stored kind and size, and the
stored ranking arrays with the weights.

Checks return what is wrong as text (None or nothing when all is well); :func:`model.checkpoint.load`
turns the first fault into a ``CheckpointError``, so a file that loaded safely but would fail later (a
list where a tensor belongs) is refused at load, never half used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.config import TrainConfig, field_type, size_error
from model.items import payload_errors
from model.networks import MODEL_KINDS, build_network, parse_layers
from model.sequence import SEQUENCE_KINDS
from model.serving_arrays import serving_arrays

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _config_error(config: Any) -> str | None:
    """What is wrong with a stored ``TrainConfig`` dict (unknown keys are ignored: newer files), or None."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        return "config is not a dict of names"
    for f in fields(TrainConfig):
        if f.name not in config or config[f.name] is None and f.default is None:
            continue
        value, kind = config[f.name], field_type(f.name)
        ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
              float: _is_number(value), str: isinstance(value, str)}.get(kind, True)  # fmt: skip
        if not ok:
            return f"config.{f.name} is {value!r}, expected {kind.__name__}"
    error = size_error(config)  # before a network of those sizes is built
    return None if error is None else f"config: {error}"


def _tensor_error(name: str, value: Any, dtypes: tuple[torch.dtype, ...], ndim: int | None = None) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, expected a tensor"
    if value.dtype not in dtypes:
        return f"{name} has dtype {value.dtype}, expected {' or '.join(str(d) for d in dtypes)}"
    if ndim is not None and value.ndim != ndim:
        return f"{name} has {value.ndim} dimensions, expected {ndim}"
    # A view that repeats its storage (a stride of 0) can declare 10^12 elements over one: every scan of it, and
    # any copy, would cost that much. A saved tensor's elements all have their own bytes in the file.
    if value.numel() * value.element_size() > value.untyped_storage().nbytes():
        return f"{name} declares {value.numel():,} elements over {value.untyped_storage().nbytes():,} stored bytes"
    # A NaN weight answers NaN scores (and a gate judging against it fails every candidate): refused like a
    # truncated file. A sum carries any NaN or inf (a finite sum proves all finite; one that overflowed is
    # checked element-wise): one read of the weights, a sixth of the time of isfinite().all().
    if value.is_floating_point() and not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
        return f"{name} holds NaN or infinite values"
    return None


# A model version names a store's file (``versions/<version>.ckpt``), a metrics label and log lines: a short
# token, no spaces, line breaks or escapes. What train.py writes (``mf-20261203T181715Z-b2666cfd``) fits.
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
DATA_TEXT_LIMIT = 4096  # a stored ``data`` string (the training file's path, its fingerprint): at most PATH_MAX


def _data_value(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float))
        or (isinstance(value, str) and len(value) <= DATA_TEXT_LIMIT)
    )


def _data_error(data: Any) -> str | None:
    """``data`` (what the model was trained on, shown by ``GET /model``): short strings, numbers, booleans."""
    if not isinstance(data, dict):
        return "data is not a dict"
    if not all(isinstance(k, str) and len(k) <= 64 and _data_value(v) for k, v in data.items()):
        return f"data is not a dict of numbers and strings of at most {DATA_TEXT_LIMIT} characters"
    return None


def _field_errors(raw: dict[str, Any]) -> Iterator[str | None]:
    """Every stored field's type, dtype and shape, and the seen-item index's ordering: one message per fault."""
    floats = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    yield None if raw["kind"] in MODEL_KINDS else f"kind {raw['kind']!r} is not one of {', '.join(MODEL_KINDS)}"
    yield _config_error(raw["config"])
    state = raw["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        yield "state_dict is not a dict of named tensors"
    else:
        yield from (_tensor_error(f"state_dict[{k!r}]", v, floats) for k, v in state.items())
    for name in ("user_ids", "item_ids"):
        ids = raw[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            yield f"{name} is not a list of strings"
        elif len(set(ids)) != len(ids):
            yield f"{name} holds duplicates"
    bad = {}
    for name in ("seen_indptr", "seen_indices", "item_popularity"):
        bad[name] = _tensor_error(name, raw[name], (torch.int64,), ndim=1)
        yield bad[name]
    if bad["seen_indptr"] is None:  # its values are read only once the tensor itself is sound
        indptr = raw["seen_indptr"].numpy()
        if len(indptr) == 0 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
            yield "seen_indptr does not start at 0 and never decrease (CSR row pointers)"
    if bad["item_popularity"] is None and (raw["item_popularity"] < 0).any():
        yield "item_popularity has negative counts"
    scale = raw["rating_scale"]
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(map(_is_number, scale))
            and scale[0] <= scale[1]):  # fmt: skip
        yield f"rating_scale is {scale!r}, expected [low, high] finite numbers"
    yield None if _is_number(raw["global_mean"]) else f"global_mean is {raw['global_mean']!r}, expected a number"
    metrics = raw["metrics"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                for k, v in metrics.items()):  # fmt: skip
        yield "metrics is not a dict of numbers"
    yield _data_error(raw["data"])
    created = raw["created_at"]
    yield None if isinstance(created, str) and 0 < len(created) <= 64 else "created_at is not a short non-empty string"
    version = raw["model_version"]
    if not (isinstance(version, str) and VERSION.fullmatch(version)):
        shown = repr(version[:80]) if isinstance(version, str) else f"a {type(version).__name__}"  # never str() a blob
        yield f"model_version is not a version name (letters, digits, '.', '_', '-'; 1-201): {shown}"
    history = raw.get("history", [])
    yield None if isinstance(history, list) and all(isinstance(r, dict) for r in history) else "history malformed"
    if "recent_items" in raw:
        yield _tensor_error("recent_items", raw["recent_items"], (torch.int64,), ndim=2)
    serving = raw.get("serving", {})
    if not isinstance(serving, dict):
        yield "serving is not a dict of tensors"
    else:
        yield from (_tensor_error(f"serving[{k!r}]", v, (torch.float32,)) for k, v in serving.items())
    if raw.get("item_attributes") is not None:
        num_items = len(raw["item_ids"]) if isinstance(raw["item_ids"], list) else 0
        yield from payload_errors(numpy_attributes(raw["item_attributes"]), num_items)


def numpy_attributes(payload: Any) -> Any:
    """A stored ``item_attributes`` list with its tensors as numpy arrays (anything else left as it is, for
    :func:`model.items.payload_errors` to name)."""
    if not isinstance(payload, list):
        return payload
    as_numpy = lambda v: v.numpy() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return [{k: as_numpy(v) for k, v in a.items()} if isinstance(a, dict) else a for a in payload]


def field_errors(raw: dict[str, Any]) -> list[str]:
    """What is wrong with the fields of a file as loaded (a dict holding every required key): its type,
    dtype, shape or ordering, one message per fault; empty when every field is well formed."""
    return [e for e in _field_errors(raw) if e]


def consistency_error(ckpt: Checkpoint) -> str | None:
    """What disagrees in a checkpoint of well-formed fields (the first fault found), or None: the seen-item
    index and popularity against the id maps, the weights against the kind, the ranking arrays against
    the weights."""
    n_users, n_items = ckpt.num_users, ckpt.num_items
    if n_users < 1 or n_items < 1:  # training never writes one; the service answers about user and item 0
        return f"a model needs users and items: {n_users} users, {n_items} items"
    if len(ckpt.seen_indptr) != n_users + 1 or ckpt.seen_indptr[-1] != len(ckpt.seen_indices):
        return f"seen-item index does not match {n_users} users"
    if len(ckpt.seen_indices) and (ckpt.seen_indices.min() < 0 or ckpt.seen_indices.max() >= n_items):
        return "seen-item index refers to items outside the catalogue"
    if len(ckpt.item_popularity) != n_items:
        return f"popularity has {len(ckpt.item_popularity)} entries for {n_items} items"
    return (_recent_error(ckpt) or _weight_shape_error(ckpt)
            or (_serving_error(ckpt) if ckpt.serving else None))  # fmt: skip


def _recent_error(ckpt: Checkpoint) -> str | None:
    """A sequence kind's recent items: (users, max_len), every entry an item or the -1 padding."""
    recent = ckpt.recent_items
    if ckpt.kind not in SEQUENCE_KINDS:
        return None if recent is None else f"recent_items stored for a {ckpt.kind} model"
    if recent is None:
        return f"a {ckpt.kind} model needs recent_items (each user's last items)"
    if recent.shape != (ckpt.num_users, ckpt.config.max_len or 0):
        return f"recent_items has shape {recent.shape}, expected {(ckpt.num_users, ckpt.config.max_len)}"
    if recent.size and (recent.min() < -1 or recent.max() >= ckpt.num_items):
        return "recent_items refers to items outside the catalogue"
    return None


def _weight_shape_error(ckpt: Checkpoint) -> str | None:
    """The weights fit a network of this kind and size, checked without allocating that network.

    A real network would allocate and randomly initialise every embedding (256 MB at 1M x 64) in each
    worker at each load, and one on the meta device pulls in ~70 MB of torch decomposition modules per
    worker. So a tiny network with placeholder sizes (distinct from each other, from 1 and from ``dim``)
    gives the parameter names and shapes, and the placeholders are mapped back to the real sizes.
    """
    try:
        sizes = [ckpt.config.dim, ckpt.config.rank_dim, ckpt.config.hidden or 1, *parse_layers(ckpt.config.layers),
                 ckpt.config.max_len or 0]  # fmt: skip
        fake_users, fake_items = max(sizes) + 7, max(sizes) + 13
        tiny = build_network(ckpt.kind, fake_users, fake_items, ckpt.config, ckpt.global_mean).state_dict()
    except (RuntimeError, ValueError, TypeError) as exc:
        return f"weights do not fit a {ckpt.kind} model: {exc}"
    real = {fake_users: ckpt.num_users, fake_items: ckpt.num_items}
    expected = {name: tuple(real.get(n, n) for n in t.shape) for name, t in tiny.items()}
    got = {name: tuple(t.shape) for name, t in ckpt.state_dict.items()}
    if got != expected:
        wrong = sorted(n for n in expected.keys() | got.keys() if expected.get(n) != got.get(n))
        detail = ", ".join(f"{n}: {got.get(n)} (expected {expected.get(n)})" for n in wrong[:5])
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""  # a reason, not megabytes in every 503
        return f"weights do not fit a {ckpt.kind} model: {detail}{more}"
    return None


def _serving_error(ckpt: Checkpoint) -> str | None:
    """The stored ranking arrays have the right shapes and agree with the weights on a sample of rows."""
    # The column count follows from the kind's weights: compute it on one item row.
    width = serving_arrays(_first_rows(ckpt.state_dict, ckpt.num_users, ckpt.num_items), ckpt.kind, ckpt.config)
    dim = width["item_vectors"].shape[1] - 1
    expected = {
        "item_vectors": (ckpt.num_items, dim + 1),
        "user_vectors": (ckpt.num_users, dim + 1),
        "item_norms": (ckpt.num_items,),
    }
    for name, shape in expected.items():
        arr = ckpt.serving.get(name)
        if arr is None or arr.shape != shape or arr.dtype != np.float32:
            got = None if arr is None else (arr.shape, str(arr.dtype))
            return f"serving array {name} is {got}, expected {shape} float32"
    # A sample, not everything: comparing all rows would read (and fault in) the whole file at load.
    rows = np.unique(np.linspace(0, ckpt.num_items - 1, min(ckpt.num_items, 256)).astype(np.int64))
    sample = serving_arrays(_item_rows(ckpt.state_dict, ckpt.num_items, rows), ckpt.kind, ckpt.config)
    if not np.array_equal(ckpt.serving["item_vectors"][rows], sample["item_vectors"]):
        return "serving arrays disagree with the weights"
    return None


def _item_rows(state_dict: dict[str, torch.Tensor], num_items: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The state dict with every per-item table cut to ``rows`` (per-user tables cut to one row)."""
    out = {}
    for name, tensor in state_dict.items():
        table = name.split(".")[-2] if "." in name else name  # "ranking.item_factors.weight" -> item_factors
        if "item" in table and tensor.ndim == 2 and tensor.shape[0] == num_items:
            out[name] = tensor[torch.from_numpy(rows)]
        elif "user" in table and tensor.ndim == 2:
            out[name] = tensor[:1]
        else:
            out[name] = tensor
    return out


def _first_rows(state_dict: dict[str, torch.Tensor], num_users: int, num_items: int) -> dict[str, torch.Tensor]:
    return _item_rows(state_dict, num_items, np.zeros(1, dtype=np.int64))
