"""One self-contained checkpoint file: weights, config, id maps, seen items, popularity, metrics.

The file is a ``torch.save`` of a dict holding only tensors and plain Python values (str, int, float,
list, dict), so it loads with ``torch.load(weights_only=True)``: no pickle code runs, and a file that
would run code is refused. Saving writes a temporary file in the target directory, fsyncs it and
renames it into place, so a crash never leaves a half-written file under the final name.

Serving memory: :func:`load` memory-maps the file (``torch.load(mmap=True)``), so tensors are views of
the page cache rather than private copies, and every uWSGI worker that maps the same checkpoint shares
one physical copy. The ranking arrays the service needs (``item_vectors``, ``user_vectors``,
``item_norms``, see :mod:`model.serving_arrays`) are derived from the weights at save time and stored in an
optional ``serving`` field, so serving takes zero-copy numpy views of them instead of building private
(I, d+1) copies in each worker. Files written before that field existed still load (the service then
derives the arrays itself). Because the mapping is of the file's inode, replacing the file by rename (as
:func:`save` does) is safe for processes still mapping the old one; truncating it in place is not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.checkpoint_checks import consistency_error, field_errors, numpy_attributes
from model.config import TrainConfig
from model.files import atomic_write
from model.interactions import Dataset
from model.items import ItemAttributes, from_payload, to_payload
from model.networks import build_network
from model.sequence import SEQUENCE_KINDS
from model.sequence_data import left_pad, timelines
from model.serving_arrays import serving_arrays

if TYPE_CHECKING:  # the training stack (optimisers, progress bar) is never imported to read a checkpoint
    from model.train import TrainResult

log = logging.getLogger(__name__)
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
    # Item metadata (scripts/train.py --items), aligned to item_ids; None when the model was trained without.
    item_attributes: ItemAttributes | None = None
    # Sequence kinds: each user's last max_len items, oldest first, -1 on the left where fewer (U, L) int64.
    recent_items: np.ndarray | None = None

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


# Fields added after the first files were written, and what those files meant by their absence (a plain
# biased MF on MSE ranking by predicted rating). Newer fields not listed take the dataclass default.
LEGACY_CONFIG = {"loss": "mse", "rank_loss": "none"}


def from_training(result: TrainResult, dataset: Dataset, attributes: ItemAttributes | None = None) -> Checkpoint:
    """Bundle a training result with the id maps and statistics of the data it was fitted on (and the items'
    metadata, aligned to ``dataset``'s items, if any)."""
    inter = dataset.interactions
    indptr, indices = inter.seen_csr()
    recent = None
    if result.config.model in SEQUENCE_KINDS:
        recent = left_pad(*timelines(inter, warn=False), result.config.max_len)
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
        item_attributes=attributes,
        recent_items=recent,
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
        "serving": {
            k: torch.from_numpy(v)
            for k, v in serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config, ckpt.recent_items).items()
        },
    }
    if ckpt.item_attributes is not None:  # optional: files without metadata (and older files) have no key
        payload["item_attributes"] = [
            {**a, "indptr": torch.from_numpy(a["indptr"]), "values": torch.from_numpy(a["values"])}
            for a in to_payload(ckpt.item_attributes)
        ]
    if ckpt.recent_items is not None:
        payload["recent_items"] = torch.from_numpy(np.ascontiguousarray(ckpt.recent_items, dtype=np.int64))
    return atomic_write(path, lambda tmp: _write(payload, tmp, path), sync_dir=True)


# What torch's zip writer says when a write fails (seen on a full tmpfs and under RLIMIT_FSIZE).
_WRITE_FAILED = ("inline_container.cc", "file write failed", "iostream error")


def _write(payload: dict[str, Any], tmp: str, path: Path) -> None:
    """``torch.save``, whose failed write (a full disk, a file size limit) is a ``RuntimeError`` from its C++ writer
    that names no cause (``basic_ios::clear: iostream error``, ``unexpected pos 162240 vs 162104``): an ``OSError``
    naming the file and the room left on its filesystem instead, measured before the temporary file is removed."""
    try:
        torch.save(payload, tmp)
    except RuntimeError as exc:
        if not any(sign in str(exc) for sign in _WRITE_FAILED):  # not the writer's (a RecursionError...): as it is
            raise
        try:
            left = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its filesystem"
        except OSError:
            left = "its filesystem's free space unknown"
        first = str(exc).strip().splitlines()[0]  # not empty: it holds one of _WRITE_FAILED
        raise OSError(f"could not write {path} ({left}): torch.save failed: {first}") from exc


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint without executing code; tensors are memory-mapped (shared page cache).

    Raises:
        CheckpointError: missing or truncated file, pickled objects other than tensors and plain
            values, another format or version, or arrays that disagree with the id maps.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file (of a model store, load STORE/current)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:  # zipfile.is_zipfile reads an unreadable file as "not a zip", which would blame the file
        with open(path, "rb"):
            pass
    except OSError as exc:
        reason = f"{exc.strerror}; this process runs as uid {os.getuid()}"
        raise CheckpointError(f"{path}: cannot be read ({reason})") from None
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; without its end record torch's own error is cryptic
        reason = "not a torch.save zip archive: truncated or another format"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})")
    _check_stored(path)
    try:
        # mmap: tensors stay backed by the file's pages, shared by every process mapping it (copy-on-write
        # if anyone writes, which serving never does), instead of one private copy per uWSGI worker.
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:  # torch's own advice (weights_only=False) is left out: it would run code
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip() and "weights_only" not in line]
        what = lines[0] if lines else "no reason given"
        if "GLOBAL" in what or "global" in what:  # a class or function the file asks to import and call
            raise CheckpointError(f"{path}: refused: it holds objects whose loading runs code ({what})") from None
        raise CheckpointError(f"{path}: not a loadable checkpoint (a corrupt pickle: {what})") from None
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
    # A file can load safely and still hold a list where a tensor belongs, which would fail later in
    # whoever touches it first: every field is checked here, and any fault refuses the file.
    try:  # whatever a check or the conversion meets (an allocation refused, a case they missed) refuses the file
        errors = field_errors(raw)
        if errors:
            raise CheckpointError(f"{path}: malformed checkpoint: {'; '.join(errors[:5])}")
        ckpt = _from_fields(raw)
        error = consistency_error(ckpt)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Not one of the checks' own refusals: a case they missed, or a bug in them. Still a refusal, with the
        # traceback logged (it would otherwise be lost behind every checkpoint reading as "malformed").
        log.warning("checking %s raised %s: refused as malformed", path, type(exc).__name__, exc_info=True)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: malformed checkpoint ({type(exc).__name__}: {first})") from exc
    if error:
        raise CheckpointError(f"{path}: {error}")
    return ckpt


def _check_stored(path: Path) -> None:
    """Every member of the archive stored, not compressed, as torch.save writes them: a deflated pickle a few MB
    long can expand to gigabytes in memory (the tensors torch maps in place would refuse deflation anyway)."""
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({exc})") from None
    if packed:
        raise CheckpointError(f"{path}: refused: compressed members ({', '.join(packed[:3])}), torch.save stores them")


def _from_fields(raw: dict[str, Any]) -> Checkpoint:
    known = {f.name for f in fields(TrainConfig)}
    attributes = numpy_attributes(raw.get("item_attributes"))
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
        item_attributes=None if attributes is None else from_payload(attributes, len(raw["item_ids"])),
        recent_items=raw["recent_items"].numpy() if "recent_items" in raw else None,
    )
