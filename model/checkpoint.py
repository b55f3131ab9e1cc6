"""One self-contained checkpoint file: weights, config, id maps, seen items, popularity, metrics.

The file is a ``torch.save`` of a dict holding only tensors and plain Python values (str, int, float,
list, dict), so it loads with ``torch.load(weights_only=True)``: no pickle code runs, and a file that
would run code is refused. Saving writes a temporary file in the target directory, fsyncs it and
renames it into place, so a crash never leaves a half-written file under the final name.

Serving memory: :func:`load` memory-maps the file (``torch.load(mmap=True)``), so tensors are views of
the page cache rather than private copies, and every uWSGI worker that maps the same checkpoint shares
one physical copy. The ranking arrays the service needs (``item_vectors``, ``user_vectors``,
``item_norms``, see :func:`serving_arrays`) are derived from the weights at save time and stored in an
optional ``serving`` field, so serving takes zero-copy numpy views of them instead of building private
(I, d+1) copies in each worker. Files written before that field existed still load (the service then
derives the arrays itself). Because the mapping is of the file's inode, replacing the file by rename (as
:func:`save` does) is safe for processes still mapping the old one; truncating it in place is not.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.config import TrainConfig, field_type
from model.interactions import Dataset
from model.networks import MODEL_KINDS, build_network, parse_layers

if TYPE_CHECKING:  # the training stack (optimisers, progress bar) is never imported to read a checkpoint
    from model.train import TrainResult

FORMAT = "recsys-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = (
    "format", "format_version", "kind", "config", "state_dict", "user_ids", "item_ids", "seen_indptr",
    "seen_indices", "item_popularity", "rating_scale", "global_mean", "metrics", "data", "created_at",
    "model_version",
)  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe or inconsistent. Nothing from it was used."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. Arrays are numpy; ``state_dict`` keeps torch tensors for rebuilding."""

    kind: str
    config: TrainConfig
    state_dict: dict[str, torch.Tensor]
    user_ids: list[str]
    item_ids: list[str]
    seen_indptr: np.ndarray  # (num_users + 1,) int64, CSR row pointers into seen_indices
    seen_indices: np.ndarray  # (nnz,) int64, item indices each user rated in training
    item_popularity: np.ndarray  # (num_items,) int64, training interactions per item
    rating_scale: tuple[float, float]
    global_mean: float
    metrics: dict[str, float]
    data: dict[str, Any]
    created_at: str
    model_version: str
    history: list[dict[str, float]]
    # Ranking arrays derived from state_dict (see serving_arrays); empty for files written without them.
    serving: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def network(self) -> torch.nn.Module:
        """Rebuild the trained network in eval mode."""
        net = build_network(self.kind, self.num_users, self.num_items, self.config, self.global_mean)
        net.load_state_dict(self.state_dict)
        return net.eval()


def ranks_by_dot_product(kind: str, config: TrainConfig) -> bool:
    """Whether the ranking signal is ``user_vectors @ item_vectors.T`` (every kind but neumf)."""
    return kind != "neumf"


def ranking_prefix(kind: str, config: TrainConfig) -> str:
    """State-dict prefix of the network that ranks: ``ranking.`` for an MF with a ranking head, else none."""
    return "ranking." if kind == "mf" and config.loss == "mse" and config.rank_loss != "none" else ""


def _np(state_dict: dict[str, torch.Tensor], name: str) -> np.ndarray:
    return state_dict[name].detach().cpu().numpy().astype(np.float32)


def serving_arrays(state_dict: dict[str, torch.Tensor], kind: str = "mf", config: TrainConfig | None = None,
                   ) -> dict[str, np.ndarray]:  # fmt: skip
    """The arrays the serving index ranks with, derived from the weights (all float32, C-contiguous).

    ``item_vectors`` (I, d+1) = ``[V_i, b_i]`` and ``user_vectors`` (U, d+1) = ``[U_u, 1]``, so a user's
    ranking is one matrix-vector product; ``item_norms`` (I,) = ``|V_i|`` for cosine similarity. For an
    MF with a ranking head they come from the head (``ranking.*``); for GMF the output neuron's weights
    are folded into the user side (``[p_u * h, 1]``). NeuMF is not a dot product: its ``item_vectors``
    (``[gmf q_i, mlp q_i, 0]``) serve /similar only, and ``user_vectors`` likewise hold its embeddings.
    """
    config = config or TrainConfig(loss="mse", rank_loss="none")
    if kind == "neumf":
        items = np.hstack([_np(state_dict, "gmf_item.weight"), _np(state_dict, "mlp_item.weight")])
        users = np.hstack([_np(state_dict, "gmf_user.weight"), _np(state_dict, "mlp_user.weight")])
        return _pack(users, items, np.zeros((len(items), 1), np.float32))
    prefix = ranking_prefix(kind, config)
    item_factors = _np(state_dict, f"{prefix}item_factors.weight")  # (I, d)
    user_factors = _np(state_dict, f"{prefix}user_factors.weight")  # (U, d)
    item_bias = _np(state_dict, f"{prefix}item_bias.weight").reshape(-1, 1)  # (I, 1)
    if kind == "gmf":
        user_factors = user_factors * _np(state_dict, "output.weight").reshape(1, -1)
    return _pack(user_factors, item_factors, item_bias)


def _pack(user_factors: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "item_vectors": np.ascontiguousarray(np.hstack([item_factors, item_bias])),
        "user_vectors": np.ascontiguousarray(np.hstack([user_factors, np.ones((len(user_factors), 1), np.float32)])),
        "item_norms": np.linalg.norm(item_factors, axis=1).astype(np.float32),
    }


# Fields added after the first files were written, and what those files meant by their absence (a plain
# biased MF on MSE ranking by predicted rating). Newer fields not listed take the dataclass default.
LEGACY_CONFIG = {"loss": "mse", "rank_loss": "none"}


def from_training(result: TrainResult, dataset: Dataset) -> Checkpoint:
    """Bundle a training result with the id maps and statistics of the data it was fitted on."""
    inter = dataset.interactions
    indptr, indices = inter.seen_csr()
    state = {k: v.detach().cpu().clone() for k, v in result.network.state_dict().items()}
    created = datetime.now(timezone.utc).replace(microsecond=0)
    digest = hashlib.sha256(dataset.fingerprint.encode())
    for name in sorted(state):
        digest.update(state[name].numpy().tobytes())
    return Checkpoint(
        kind=result.config.model,
        config=result.config,
        state_dict=state,
        user_ids=list(dataset.user_map.ids),
        item_ids=list(dataset.item_map.ids),
        seen_indptr=indptr,
        seen_indices=indices,
        item_popularity=inter.item_counts(),
        rating_scale=result.rating_scale,
        global_mean=result.global_mean,
        metrics=dict(result.metrics),
        data={
            "fingerprint": dataset.fingerprint,
            "source": dataset.source,
            "num_ratings": len(inter),
            "implicit": dataset.implicit,
        },
        created_at=created.isoformat().replace("+00:00", "Z"),
        model_version=f"{result.config.model}-{created:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}",
        history=list(result.history),
    )


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path`` (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": ckpt.kind,
        "config": asdict(ckpt.config),
        "state_dict": ckpt.state_dict,
        "user_ids": ckpt.user_ids,
        "item_ids": ckpt.item_ids,
        "seen_indptr": torch.from_numpy(np.ascontiguousarray(ckpt.seen_indptr, dtype=np.int64)),
        "seen_indices": torch.from_numpy(np.ascontiguousarray(ckpt.seen_indices, dtype=np.int64)),
        "item_popularity": torch.from_numpy(np.ascontiguousarray(ckpt.item_popularity, dtype=np.int64)),
        "rating_scale": [float(ckpt.rating_scale[0]), float(ckpt.rating_scale[1])],
        "global_mean": float(ckpt.global_mean),
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "data": dict(ckpt.data),
        "created_at": ckpt.created_at,
        "model_version": ckpt.model_version,
        "history": [dict(row) for row in ckpt.history],
        # Always re-derived from state_dict, so it can never disagree with the weights it is saved with.
        "serving": {k: torch.from_numpy(v) for k, v in serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config).items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint without executing code; tensors are memory-mapped (shared page cache).

    Raises:
        CheckpointError: missing or truncated file, pickled objects other than tensors and plain
            values, another format or version, or arrays that disagree with the id maps.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; without its end record torch's own error is cryptic
        reason = "not a torch.save zip archive: truncated or another format"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})")
    try:
        # mmap: tensors stay backed by the file's pages, shared by every process mapping it (copy-on-write
        # if anyone writes, which serving never does), instead of one private copy per uWSGI worker.
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle safely means "refuse"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing fields {', '.join(missing)}")
    _check_fields(raw, path)
    try:
        ckpt = _from_fields(raw)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a case _check_fields missed
        raise CheckpointError(f"{path}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
    _check_consistent(ckpt, path)
    return ckpt


def _from_fields(raw: dict[str, Any]) -> Checkpoint:
    known = {f.name for f in fields(TrainConfig)}
    return Checkpoint(
        kind=raw["kind"],
        config=TrainConfig(**{**LEGACY_CONFIG, **{k: v for k, v in raw["config"].items() if k in known}}),
        state_dict=raw["state_dict"],
        user_ids=[str(u) for u in raw["user_ids"]],
        item_ids=[str(i) for i in raw["item_ids"]],
        seen_indptr=raw["seen_indptr"].numpy(),
        seen_indices=raw["seen_indices"].numpy(),
        item_popularity=raw["item_popularity"].numpy(),
        rating_scale=(float(raw["rating_scale"][0]), float(raw["rating_scale"][1])),
        global_mean=float(raw["global_mean"]),
        metrics=dict(raw["metrics"]),
        data=dict(raw["data"]),
        created_at=str(raw["created_at"]),
        model_version=str(raw["model_version"]),
        history=list(raw.get("history", [])),
        serving={str(k): v.numpy() for k, v in raw.get("serving", {}).items()},
    )


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
    return None


def _tensor_error(name: str, value: Any, dtypes: tuple[torch.dtype, ...], ndim: int | None = None) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, expected a tensor"
    if value.dtype not in dtypes:
        return f"{name} has dtype {value.dtype}, expected {' or '.join(str(d) for d in dtypes)}"
    if ndim is not None and value.ndim != ndim:
        return f"{name} has {value.ndim} dimensions, expected {ndim}"
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
    for name in ("seen_indptr", "seen_indices", "item_popularity"):
        yield _tensor_error(name, raw[name], (torch.int64,), ndim=1)
    if isinstance(raw["seen_indptr"], torch.Tensor) and raw["seen_indptr"].ndim == 1:
        indptr = raw["seen_indptr"].numpy()
        if len(indptr) == 0 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
            yield "seen_indptr does not start at 0 and never decrease (CSR row pointers)"
    if isinstance(raw["item_popularity"], torch.Tensor) and (raw["item_popularity"] < 0).any():
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
    yield None if isinstance(raw["data"], dict) else "data is not a dict"
    for name in ("created_at", "model_version"):
        yield None if isinstance(raw[name], str) and raw[name] else f"{name} is not a non-empty string"
    history = raw.get("history", [])
    yield None if isinstance(history, list) and all(isinstance(r, dict) for r in history) else "history malformed"
    serving = raw.get("serving", {})
    if not isinstance(serving, dict):
        yield "serving is not a dict of tensors"
    else:
        yield from (_tensor_error(f"serving[{k!r}]", v, (torch.float32,)) for k, v in serving.items())


def _check_fields(raw: dict[str, Any], path: Path) -> None:
    """Refuse a file whose fields have the wrong type, dtype, shape or ordering (it loaded safely, but a
    list where a tensor belongs would fail later, in whoever touches it first)."""
    errors = [e for e in _field_errors(raw) if e]
    if errors:
        raise CheckpointError(f"{path}: malformed checkpoint: {'; '.join(errors[:5])}")


def _check_consistent(ckpt: Checkpoint, path: Path) -> None:
    n_users, n_items = ckpt.num_users, ckpt.num_items
    if len(ckpt.seen_indptr) != n_users + 1 or ckpt.seen_indptr[-1] != len(ckpt.seen_indices):
        raise CheckpointError(f"{path}: seen-item index does not match {n_users} users")
    if len(ckpt.seen_indices) and (ckpt.seen_indices.min() < 0 or ckpt.seen_indices.max() >= n_items):
        raise CheckpointError(f"{path}: seen-item index refers to items outside the catalogue")
    if len(ckpt.item_popularity) != n_items:
        raise CheckpointError(f"{path}: popularity has {len(ckpt.item_popularity)} entries for {n_items} items")
    _check_weight_shapes(ckpt, path)
    if ckpt.serving:
        _check_serving(ckpt, path)


def _check_weight_shapes(ckpt: Checkpoint, path: Path) -> None:
    """The weights fit a network of this kind and size, checked without allocating that network.

    A real network would allocate and randomly initialise every embedding (256 MB at 1M x 64) in each
    worker at each load, and one on the meta device pulls in ~70 MB of torch decomposition modules per
    worker. So a tiny network with placeholder sizes (distinct from each other, from 1 and from ``dim``)
    gives the parameter names and shapes, and the placeholders are mapped back to the real sizes.
    """
    try:
        sizes = [ckpt.config.dim, ckpt.config.rank_dim, *parse_layers(ckpt.config.layers)]
        fake_users, fake_items = max(sizes) + 7, max(sizes) + 13
        tiny = build_network(ckpt.kind, fake_users, fake_items, ckpt.config, ckpt.global_mean).state_dict()
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit a {ckpt.kind} model: {exc}") from None
    real = {fake_users: ckpt.num_users, fake_items: ckpt.num_items}
    expected = {name: tuple(real.get(n, n) for n in t.shape) for name, t in tiny.items()}
    got = {name: tuple(t.shape) for name, t in ckpt.state_dict.items()}
    if got != expected:
        wrong = sorted(n for n in expected.keys() | got.keys() if expected.get(n) != got.get(n))
        detail = ", ".join(f"{n}: {got.get(n)} (expected {expected.get(n)})" for n in wrong)
        raise CheckpointError(f"{path}: weights do not fit a {ckpt.kind} model: {detail}")


def _check_serving(ckpt: Checkpoint, path: Path) -> None:
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
            raise CheckpointError(f"{path}: serving array {name} is {got}, expected {shape} float32")
    # A sample, not everything: comparing all rows would read (and fault in) the whole file at load.
    rows = np.unique(np.linspace(0, ckpt.num_items - 1, min(ckpt.num_items, 256)).astype(np.int64))
    sample = serving_arrays(_item_rows(ckpt.state_dict, ckpt.num_items, rows), ckpt.kind, ckpt.config)
    if not np.array_equal(ckpt.serving["item_vectors"][rows], sample["item_vectors"]):
        raise CheckpointError(f"{path}: serving arrays disagree with the weights")


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
