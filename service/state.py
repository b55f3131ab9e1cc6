"""The model a worker serves, and its hot reload.

A :class:`ModelHolder` keeps an immutable :class:`ModelState` snapshot. A daemon thread in each worker
polls the checkpoint path; when the file behind it changes (a new file renamed into place, or a model
store's ``current`` pointer moved), it loads the new checkpoint in the background and swaps the
snapshot in one assignment, so no request waits or fails. A checkpoint that fails to load is logged
and the old model keeps serving.

Large catalogues (``AnnConfig.min_items`` items or more) also get an approximate top-k index
(:mod:`service.ann`), built once per model version and cached next to the checkpoint
(:mod:`service.ann_cache`); a reload that has to build one does so in the watcher thread while the old
model keeps answering.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import checkpoint
from model.serving_arrays import ranks_by_dot_product, serving_arrays
from model.store import CURRENT, ModelStore, StoreError, pointer
from service.ann import AnnConfig
from service.ann_cache import maybe_ann
from service.index import ServingIndex
from service.topn import TopNCache, TopNConfig, load_or_build_lists

log = logging.getLogger(__name__)


# The signals uWSGI stops, reloads and recycles a worker with (SIGINT, SIGQUIT, SIGTERM, SIGHUP) and its user
# signals: blocked in the worker's own threads so that only the main thread, uWSGI's, ever handles them.
WORKER_STOP_SIGNALS = frozenset(
    {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
)


@dataclass(frozen=True)
class ModelState:
    index: ServingIndex | None = None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _signature(path: Path) -> tuple | None:
    """What identifies the file behind ``path`` right now; None when there is none.

    For a store this is the resolved target of ``current`` (path, inode, mtime, size), so moving the
    pointer is a change, and so is replacing a plain file by rename.
    """
    try:
        real = pointer(path).resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError):  # no file; RuntimeError: a symlink loop (Python < 3.13), no file either
        return None
    return (str(real), st.st_ino, st.st_mtime_ns, st.st_size)


def load_state(
    path: str | Path, ann: AnnConfig | None = None, topn: TopNConfig | None = None, progress=None
) -> ModelState:
    """Load a checkpoint into a serving index; on failure return an empty state with the reason.

    ``ann`` decides whether an approximate index is attached (default :class:`AnnConfig`: at 100,000
    items or more, when faiss is installed); ``topn`` whether every known user's top-N list is
    precomputed (default :class:`TopNConfig`: by scanning, up to 1e8 user x item scores and no ANN; with
    an ANN index, searched from it and cached beside it); ``progress(done, users)`` is called after each block
    of users that scan ranks. Never raises: any failure is the returned state's ``error`` (the caller
    counts it, logs it and keeps the model it has).
    """
    try:
        return _load_state(path, ann, topn, progress)
    except checkpoint.CheckpointError as exc:
        return ModelState(error=str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever breaks while loading is a refused load, never a crash
        log.exception("loading %s failed", path)
        return ModelState(error=f"{path}: could not load ({type(exc).__name__}: {exc})")


def _load_state(path: str | Path, ann: AnnConfig | None, topn: TopNConfig | None, progress=None) -> ModelState:
    ckpt = checkpoint.load(path)
    if not ckpt.serving:  # a file written before the ranking arrays were stored: derive them once, here
        ckpt.serving = serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config, ckpt.recent_items)
    ann_index = None
    if ranks_by_dot_product(ckpt.kind, ckpt.config):  # NeuMF: nothing for an inner-product index
        try:
            ann_index = maybe_ann(path, ckpt.model_version, ckpt.serving["item_vectors"], ann or AnnConfig())
        except Exception:  # noqa: BLE001 - ANN only accelerates: without it answers are exact, not wrong
            log.exception("ANN index unavailable for %s, ranking exactly", ckpt.model_version)
    if ann_index is not None:
        log.info("ANN (HNSW, efSearch=%d) over %d items for %s", ann_index.ef_search, ckpt.num_items, path)
    info = {
        "model_version": ckpt.model_version,
        "kind": ckpt.kind,
        "num_users": ckpt.num_users,
        "num_items": ckpt.num_items,
        "dim": ckpt.config.dim,
        "rating_scale": list(ckpt.rating_scale),
        "metrics": ckpt.metrics,
        "created_at": ckpt.created_at,
        "data_fingerprint": ckpt.data.get("fingerprint", ""),
        "config": dict(vars(ckpt.config)),
    }
    topn = topn or TopNConfig()
    cache = None
    dot = ranks_by_dot_product(ckpt.kind, ckpt.config)  # NeuMF's lists would not be its ranking
    serving = ckpt.serving
    if ann_index is None and dot and topn.wants(ckpt.num_users, ckpt.num_items):
        cache = TopNCache.scan(
            serving["user_vectors"],
            serving["item_vectors"],
            ckpt.seen_indptr,
            ckpt.seen_indices,
            topn.length(ckpt.num_users),
            progress=progress,
            threads=topn.threads,
        )
    elif ann_index is not None and topn.wants_from_ann():
        try:
            items = load_or_build_lists(
                path, ckpt.model_version, ann_index, serving["user_vectors"], ckpt.seen_indptr, ckpt.seen_indices,
                topn.length(ckpt.num_users, scanned=False), ann or AnnConfig(),
            )  # fmt: skip
            cache = TopNCache(items, serving["user_vectors"], serving["item_vectors"])
        except Exception:  # noqa: BLE001 - the lists only accelerate: without them each request searches
            log.exception("top-N lists unavailable for %s, searching per request", ckpt.model_version)
    prune = (ann or AnnConfig()).prune_min_items
    return ModelState(index=ServingIndex(ckpt, ann=ann_index, topn=cache, prune_min_items=prune), info=info)


class ModelHolder:
    """Holds the current model state and swaps in a new one when the checkpoint changes."""

    def __init__(self, path: str | Path, on_change=None, ann: AnnConfig | None = None, topn: TopNConfig | None = None):
        self.path = Path(path)
        self.ann, self.topn = ann, topn
        # on_change(state, ok): after each reload, ok True (swapped in) or False (refused); ok None after the first
        # load, which is no reload (a respawned worker would otherwise count as one).
        self.on_change = on_change or (lambda state, ok: None)
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._signature = _signature(self.path)  # the file last seen behind the path
        self._missing = False  # no file behind the path at the last check (said once, not every poll)
        # Why the file now behind the path was refused while an older model serves (/readyz), else None.
        self.refused: str | None = None
        self.state = self._load(self._signature)
        self._served = self._signature if self.state.index is not None else None  # the file the state came from
        if self.state.error:
            log.error("model not loaded: %s", self.state.error)
            self._fall_back(self.state)
        if not self.state.error:
            log.info("serving %s from %s", self.state.info["model_version"], self.path)
        self.on_change(self.state, None)  # the first load (a worker starting or respawned): not a reload
        self._stop = threading.Event()

    def _source(self, sig: tuple | None) -> Path:
        """Load the very file the signature was taken of (a store's pointer may move meanwhile)."""
        return Path(sig[0]) if sig is not None else pointer(self.path)

    def _load(self, sig: tuple | None) -> ModelState:
        """The state of the file behind ``sig``; for a model store, only a file in its ``versions/``: a
        ``current`` aimed elsewhere by hand was served although the store's own tools refuse it."""
        source = self._source(sig)
        if self.path.is_dir() and sig is not None and not ModelStore(self.path).holds(source):
            return ModelState(error=f"{self.path / CURRENT} points outside the store's versions/ ({source})")
        return load_state(source, self.ann, self.topn)

    def _fall_back(self, failed: ModelState) -> None:
        """With no model at all: serve :meth:`_store_fallback`'s version if one loads (remembering its file and
        why ``current``'s was refused, for :attr:`refused` and a later pointer back at it), else ``failed``."""
        state, source = self._store_fallback(failed)
        self.state = state
        if source is not None:
            self._served, self.refused = _signature(source), failed.error

    def _store_fallback(self, failed: ModelState) -> tuple[ModelState, Path | None]:
        """With no model at all and a store whose ``current`` does not load: the first version that does among
        those served before it (:meth:`~model.store.ModelStore.served_before`) and its file, else
        ``(failed, None)``.

        A worker started (or respawned) while ``current`` points at a bad file would otherwise answer 503
        while the others keep serving the model they had: the last one served, which is that one (by the
        order versions were added, it was not after a rollback).
        """
        if not self.path.is_dir():
            return failed, None
        store = ModelStore(self.path)
        try:
            current = store.current()
        except StoreError:  # a pointer outside the store: no order to fall back in
            return failed, None
        try:
            for name in store.served_before(current):
                state = load_state(store.path_of(name), self.ann, self.topn)
                if state.index is not None:
                    log.warning("current version of %s does not load; serving %s, served before it", self.path, name)
                    return state, store.path_of(name)
        except (StoreError, OSError) as exc:  # whatever the store holds, a refused fallback, never a crash
            log.warning("no fallback in %s: %s", self.path, exc)
        return failed, None

    def check(self) -> bool:
        """Reload if the checkpoint changed. Returns True when a new model was swapped in."""
        with self._lock:
            sig = _signature(self.path)
            if sig is None:  # deleted, or a store's current left dangling: say so once, keep serving
                if not self._missing and self._signature is not None:
                    self.refused = f"{pointer(self.path)}: no such checkpoint file (deleted, or a dangling pointer)"
                    log.error("reload refused, still serving %s: %s", self.version, self.refused)
                    self.on_change(self.state, False)
                self._missing = True
                return False
            if self._missing and sig == self._served:  # the file it serves is back
                self.refused = None
            self._missing = False
            if sig == self._signature:
                return False
            self._signature = sig
            if sig == self._served and self.state.index is not None:  # back to the file it serves: nothing to load
                log.info("%s points at %s again, still serving it", self.path, self.version)
                self.refused = None
                return False
            new = self._load(sig)
            if new.error:
                # Keep serving what we have; a later change of the file is tried again.
                log.error("reload refused, still serving %s: %s", self.version, new.error)
                self.refused = new.error if self.state.index is not None else None
                fell_back = False
                if self.state.index is None:  # nothing to keep serving: a version served before, if one loads
                    self._fall_back(new)
                    fell_back = self.state.index is not None
                self.on_change(self.state, False)
                return fell_back
            old = self.version
            self.state, self._served = new, sig  # one reference assignment: requests see the old or the new, whole
            self.refused = None
            log.info("reloaded model %s -> %s from %s", old, self.version, self.path)
            self.on_change(self.state, True)
            return True

    @property
    def version(self) -> str | None:
        return self.state.info.get("model_version")

    def start_watcher(self, interval: float) -> threading.Thread:
        """Poll every ``interval`` seconds in a daemon thread (needs uWSGI ``enable-threads``)."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one bad reload
                    log.exception("model watcher error")

        thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        # Stop signals are the worker's main thread's to handle. A process-directed signal may be delivered to
        # any thread that does not block it: uWSGI's handler then ran the interpreter's exit on this thread,
        # which waited forever in threading's shutdown, and the master killed the worker after its 5 s mercy
        # (in about 1 stop in 3 when the whole process group got SIGTERM). A new thread inherits the mask of the
        # one that starts it, so the watcher blocks them from its first instruction.
        if hasattr(signal, "pthread_sigmask"):  # POSIX; uWSGI runs nowhere else
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP_SIGNALS)
            try:
                thread.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        else:
            thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
