"""The ANN index's files on disk: naming, reading back, building once under a lock, atomic writes and
removing stale files. Also the top-N lists searched from the index (:mod:`service.topn`) are cached here.

Building HNSW over 1M items takes minutes, so it is built once per model and cached next to the
checkpoint, keyed by model_version and the build parameters::

    <checkpoint>.ann-<model_version>-hnsw<M>-efc<efConstruction>.faiss
    <checkpoint>.ann-<model_version>-hnsw<M>-efc<efConstruction>.top<N>-ef<efSearch>.npy   (the lists)

The first worker to need a file takes an exclusive ``flock`` on ``<file>.lock``, builds, writes a
temporary file, fsyncs and renames it into place; workers waiting on the lock then find the file and
read it. The index is read with ``IO_FLAG_MMAP_IFC``: the vectors and the graph stay file-backed pages,
shared by every worker like the memory-mapped checkpoint, instead of ~0.5 GB private per worker at
1M x 64. A cache file that fails to read or does not match the model is rebuilt; cache files of other
model versions are removed after a build. When the directory is not writable the index is built in
memory (a warning says so). To build the cache before the service starts (e.g. at deploy time, with
all cores)::

    python scripts/prebuild_ann.py artifacts/model.ckpt

The lock files are left in place on purpose: deleting a file others may be waiting on with ``flock``
would let two builders lock two different inodes.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from model.files import atomic_write, open_lock
from service.ann import AnnConfig, AnnIndex, import_faiss

log = logging.getLogger(__name__)

T = TypeVar("T")


def cache_path(checkpoint: str | Path, model_version: str, config: AnnConfig) -> Path:
    """Where the index for this checkpoint, model version and build parameters is cached."""
    checkpoint = Path(checkpoint)
    version = re.sub(r"[^A-Za-z0-9._-]", "_", model_version)
    name = f"{checkpoint.name}.ann-{version}-hnsw{config.m}-efc{config.ef_construction}.faiss"
    return checkpoint.with_name(name)


def lists_path(index_path: Path, n: int, ef_search: int) -> Path:
    """Where the top-``n`` lists searched from the index at ``index_path`` are cached."""
    return index_path.with_name(index_path.name.removesuffix(".faiss") + f".top{n}-ef{ef_search}.npy")


def _read(path: Path, vectors: np.ndarray) -> Any | None:
    """The cached index at ``path`` if it is readable and holds ``vectors``; None otherwise."""
    if not path.is_file():
        return None
    faiss = import_faiss()
    try:
        # MMAP_IFC: vectors and graph stay file-backed pages shared by all workers (not copied in).
        # (read_index already returns the concrete class; downcast_index on it would dangle and crash.)
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        log.warning("ANN cache %s unreadable, rebuilding: %s", path, str(exc).splitlines()[0][:200])
        return None
    n, dim = vectors.shape
    ok = (
        isinstance(index, faiss.IndexHNSWFlat)
        and index.ntotal == n
        and index.d == dim
        and index.metric_type == faiss.METRIC_INNER_PRODUCT
    )
    if ok and n:  # a sample of stored rows must be this model's vectors
        rows = np.unique(np.linspace(0, n - 1, min(n, 64)).astype(np.int64))
        ok = all(np.array_equal(index.reconstruct(int(r)), vectors[r]) for r in rows)
    if not ok:
        log.warning("ANN cache %s does not match the model, rebuilding", path)
        return None
    return index


@contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (released on exit or process death); False if it cannot."""
    try:
        fd = open_lock(path)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _write(index: Any, path: Path) -> None:
    """Atomically write ``index`` to ``path``."""
    atomic_write(path, lambda tmp: import_faiss().write_index(index, tmp))


def load_or_build_file(
    path: Path,
    read: Callable[[], T | None],
    build: Callable[[], T],
    write: Callable[[T, Path], None],
    remove_stale: Callable[[], None],
    not_cached: str,
) -> T:
    """What ``read`` finds at ``path``, else ``build`` it (once, under an exclusive lock on ``<path>.lock``),
    ``write`` it, ``remove_stale`` files and read it back (memory-mapped, so this worker shares the pages
    too). When writing fails (``OSError``) the built object is used in memory and ``not_cached`` (a
    logging format with one ``%s``, the error) is logged as a warning."""
    found = read()
    if found is not None:
        return found
    with _locked(path.with_name(path.name + ".lock")) as locked:
        found = read() if locked else None  # another worker may have built it meanwhile
        if found is not None:
            return found
        built = build()
        try:
            write(built, path)
            remove_stale()
            found = read()
        except OSError as exc:
            log.warning(not_cached, exc)
    return built if found is None else found


def _remove_stale(keep: Path, checkpoint: Path) -> None:
    """Delete cache files of other model versions or build parameters of this checkpoint: every index and
    top-N list file beside it but ``keep`` and the lists searched from ``keep`` (workers mapping a deleted
    file keep its inode). Lock files stay (see the module docstring)."""
    lists_prefix = keep.name.removesuffix(".faiss") + ".top"
    for other in checkpoint.parent.glob(f"{glob.escape(checkpoint.name)}.ann-*"):
        if other.suffix not in (".faiss", ".npy") or other == keep:
            continue
        if other.suffix == ".npy" and other.name.startswith(lists_prefix):
            continue  # this index's lists (of any N): remove_stale_lists handles them
        other.unlink(missing_ok=True)


def remove_stale_lists(keep: Path) -> None:
    """Delete lists searched from the same index with another N or efSearch than ``keep``."""
    prefix = keep.name[: keep.name.rindex(".top") + len(".top")]
    for other in keep.parent.glob(f"{glob.escape(prefix)}*.npy"):
        if other != keep:
            other.unlink(missing_ok=True)


def load_or_build(checkpoint: str | Path, model_version: str, vectors: np.ndarray, config: AnnConfig) -> AnnIndex:
    """The cached index for this model, built (once, under a lock) and cached if missing or bad."""
    faiss = import_faiss()
    if faiss is None:
        raise ImportError("faiss is not installed (pip install -e '.[ann]')")
    path = cache_path(checkpoint, model_version, config)

    def build() -> Any:
        started = time.perf_counter()
        index = AnnIndex.build(vectors, config.m, config.ef_construction, config.build_threads)
        log.info("built ANN index over %d items in %.1fs", len(vectors), time.perf_counter() - started)
        return index

    index = load_or_build_file(
        path,
        read=lambda: _read(path, vectors),
        build=build,
        write=_write,
        remove_stale=lambda: _remove_stale(path, Path(checkpoint)),
        not_cached="ANN index not cached (%s); built in memory for this worker only",
    )
    faiss.omp_set_num_threads(1)
    return AnnIndex(index, vectors, config.ef_search)


def maybe_ann(checkpoint: str | Path, model_version: str, vectors: np.ndarray, config: AnnConfig) -> AnnIndex | None:
    """An :class:`AnnIndex` when the catalogue is large enough and faiss is installed; else None (exact)."""
    if not config.applies(len(vectors)):
        return None
    if import_faiss() is None:
        log.warning("%d items >= RECSYS_ANN_MIN_ITEMS but faiss is not installed: exact top-k", len(vectors))
        return None
    return load_or_build(checkpoint, model_version, vectors, config)
