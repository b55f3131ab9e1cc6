"""Approximate top-k for large catalogues: a faiss HNSW index over the ranking vectors.

``ServingIndex`` ranks a user by ``item_vectors @ query`` (maximum inner product over (I, d+1) float32).
Past ``RECSYS_ANN_MIN_ITEMS`` items (default 100,000) that full scan costs milliseconds per request, so
an :class:`AnnIndex` answers instead: HNSW with ``METRIC_INNER_PRODUCT`` (M=32, efSearch=128 by
default), one faiss thread per worker (uWSGI scales by processes), banned items excluded inside the
search by an ``IDSelector``, and the returned items re-scored exactly with numpy, so scores match the
exact path and only the membership of the top-k is approximate.

Building HNSW over 1M items takes minutes, so it is built once per model and cached on disk next to
the checkpoint, keyed by model_version and the build parameters::

    <checkpoint>.ann-<model_version>-hnsw<M>-efc<efConstruction>.faiss

The first worker to need it takes an exclusive ``flock`` on ``<cache>.lock``, builds, writes a temporary
file, fsyncs and renames it into place; workers waiting on the lock then find the file and read it.
Reading uses ``IO_FLAG_MMAP_IFC``: the vectors and the graph stay file-backed pages, shared by every
worker like the memory-mapped checkpoint, instead of ~0.5 GB private per worker at 1M x 64. A cache
file that fails to read or does not match the model is rebuilt; cache files of other model versions
are removed after a build. When the directory is not writable the index is built in memory (a
warning says so). To build the cache before the service starts (e.g. at deploy time, with all cores)::

    python -m service.ann artifacts/model.ckpt

The lock file is left in place on purpose: deleting a file others may be waiting on with ``flock``
would let two builders lock two different inodes.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.topk import order_by_score, top_k

log = logging.getLogger(__name__)

faiss: Any = None  # the module, once imported by _import_faiss


def _import_faiss() -> Any | None:
    """faiss (the optional ``ann`` extra), imported on first use: importing it costs ~60 MB per worker,
    which a worker serving a small catalogue should not pay. None when it is not installed."""
    global faiss
    if faiss is None:
        try:
            import faiss as module
        except ImportError:
            return None
        faiss = module
    return faiss


@dataclass(frozen=True)
class AnnConfig:
    """When and how to build the index. ``min_items <= 0`` disables it."""

    min_items: int = 100_000  # RECSYS_ANN_MIN_ITEMS
    m: int = 32  # RECSYS_ANN_M: graph degree (2*M links per node on level 0)
    ef_search: int = 128  # RECSYS_ANN_EF_SEARCH: candidate list size per query (recall vs latency)
    ef_construction: int = 40  # RECSYS_ANN_EF_CONSTRUCTION: faiss's default; higher = slower build
    build_threads: int = 0  # RECSYS_ANN_BUILD_THREADS: threads while building; 0 = all cores

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> AnnConfig:
        return cls(
            min_items=int(settings.get("ANN_MIN_ITEMS", cls.min_items)),
            m=int(settings.get("ANN_M", cls.m)),
            ef_search=int(settings.get("ANN_EF_SEARCH", cls.ef_search)),
            ef_construction=int(settings.get("ANN_EF_CONSTRUCTION", cls.ef_construction)),
            build_threads=int(settings.get("ANN_BUILD_THREADS", cls.build_threads)),
        )


def exact_top(vectors: np.ndarray, query: np.ndarray, banned: np.ndarray, k: int) -> np.ndarray:
    """The best ``k`` rows of ``vectors`` for ``query`` by exact inner product, never ``banned``, best first."""
    scores = vectors @ query
    scores[banned] = -np.inf
    return top_k(scores, k)


class AnnIndex:
    """Top-k by inner product over ``vectors`` (I, d+1) float32, approximately, via faiss HNSW."""

    def __init__(self, index: Any, vectors: np.ndarray, ef_search: int = 128):
        self.index = index
        self.vectors = vectors
        self.ef_search = ef_search

    @staticmethod
    def build(vectors: np.ndarray, m: int = 32, ef_construction: int = 40, threads: int = 0) -> Any:
        """A new faiss ``IndexHNSWFlat`` (inner product) holding ``vectors`` (I, d+1)."""
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
        try:
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        finally:
            faiss.omp_set_num_threads(1)  # serving: one thread per worker, processes give the parallelism
        return index

    def search(self, query: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items for ``query`` (d+1,) never in ``banned`` (int64 indices), best first.

        Returns item indices (n,) int64 and their exact scores ``vectors[idx] @ query`` (n,) float32,
        ``n = min(k, items not banned)``.
        """
        banned = np.unique(np.asarray(banned, dtype=np.int64))
        k = min(k, len(self.vectors) - len(banned))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)  # HNSW cannot return more than efSearch results
        if len(banned):
            # Filtered inside the graph walk, so exactly k allowed items come back however many are banned.
            # Both selectors must outlive the search: SWIG does not keep them alive through params.
            batch = faiss.IDSelectorBatch(banned)
            allowed = faiss.IDSelectorNot(batch)
            params.sel = allowed
        _, labels = self.index.search(np.ascontiguousarray(query, dtype=np.float32)[None, :], k, params=params)
        idx = labels[0][labels[0] >= 0].astype(np.int64)
        if len(idx) < k:
            # The walk ran out of reachable allowed items (a huge banned set): answer exactly instead.
            idx = exact_top(self.vectors, query, banned, k)
        return order_by_score(idx, self.vectors[idx] @ query)  # exact scores, the numpy path's numbers and order


def cache_path(checkpoint: str | Path, model_version: str, config: AnnConfig) -> Path:
    """Where the index for this checkpoint, model version and build parameters is cached."""
    checkpoint = Path(checkpoint)
    version = re.sub(r"[^A-Za-z0-9._-]", "_", model_version)
    name = f"{checkpoint.name}.ann-{version}-hnsw{config.m}-efc{config.ef_construction}.faiss"
    return checkpoint.with_name(name)


def _read(path: Path, vectors: np.ndarray) -> Any | None:
    """The cached index at ``path`` if it is readable and holds ``vectors``; None otherwise."""
    if not path.is_file():
        return None
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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
    _atomic_write(path, lambda tmp: faiss.write_index(index, tmp))


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write`` a temporary file in the same directory, fsync it and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(keep: Path, checkpoint: Path) -> None:
    """Delete cache files of other model versions or build parameters of this checkpoint: every index and
    top-N list file beside it but ``keep`` and the lists searched from ``keep`` (workers mapping a deleted
    file keep its inode). Lock files stay (see the module docstring)."""
    lists_prefix = keep.name.removesuffix(".faiss") + ".top"
    for other in checkpoint.parent.glob(f"{glob.escape(checkpoint.name)}.ann-*"):
        if other.suffix not in (".faiss", ".npy") or other == keep:
            continue
        if other.suffix == ".npy" and other.name.startswith(lists_prefix):
            continue  # this index's lists (of any N): _remove_stale_lists handles them
        other.unlink(missing_ok=True)


def _remove_stale_lists(keep: Path) -> None:
    """Delete lists searched from the same index with another N or efSearch than ``keep``."""
    prefix = keep.name[: keep.name.rindex(".top") + len(".top")]
    for other in keep.parent.glob(f"{glob.escape(prefix)}*.npy"):
        if other != keep:
            other.unlink(missing_ok=True)


def load_or_build(checkpoint: str | Path, model_version: str, vectors: np.ndarray, config: AnnConfig) -> AnnIndex:
    """The cached index for this model, built (once, under a lock) and cached if missing or bad."""
    if _import_faiss() is None:
        raise ImportError("faiss is not installed (pip install -e '.[ann]')")
    path = cache_path(checkpoint, model_version, config)
    index = _read(path, vectors)
    if index is None:
        with _locked(path.with_name(path.name + ".lock")) as locked:
            index = _read(path, vectors) if locked else None  # another worker may have built it meanwhile
            if index is None:
                started = time.perf_counter()
                index = AnnIndex.build(vectors, config.m, config.ef_construction, config.build_threads)
                log.info("built ANN index over %d items in %.1fs", len(vectors), time.perf_counter() - started)
                try:
                    _write(index, path)
                    _remove_stale(path, Path(checkpoint))
                    mapped = _read(path, vectors)  # re-read mmapped, so this worker shares the pages too
                    index = index if mapped is None else mapped
                except OSError as exc:
                    log.warning("ANN index not cached (%s); built in memory for this worker only", exc)
    faiss.omp_set_num_threads(1)
    return AnnIndex(index, vectors, config.ef_search)


LONG_HISTORY = 2000  # build_lists: users with more seen items than this are ranked exactly


def lists_path(index_path: Path, n: int, ef_search: int) -> Path:
    """Where the top-``n`` lists searched from the index at ``index_path`` are cached."""
    return index_path.with_name(index_path.name.removesuffix(".faiss") + f".top{n}-ef{ef_search}.npy")


def build_lists(
    ann: AnnIndex, user_vectors: np.ndarray, seen_indptr: np.ndarray, seen_indices: np.ndarray, n: int, threads: int = 0
) -> np.ndarray:
    """Every user's best ``n`` unseen items, (U, n) int32, best first, ``-1`` past a short list's end.

    One batched HNSW search per block of users (users sorted by history length, each block asking for
    ``n`` + its longest history, so ``n`` unseen items survive removing the seen ones), the candidates
    re-scored exactly and sorted. A user the graph walk leaves short of ``n`` unseen items is ranked
    exactly, so a list shorter than ``n`` always holds every unseen item.
    """
    num_users, num_items = len(user_vectors), len(ann.vectors)
    n = min(n, num_items)
    out = np.full((num_users, n), -1, dtype=np.int32)
    counts = np.diff(seen_indptr)
    order = np.argsort(counts, kind="stable")
    # Users with a very long history would make a block's search ask for n + that many results (memory
    # blocks x k, and slow walks): past LONG_HISTORY they are ranked exactly, one scan each.
    order = order[counts[order] <= LONG_HISTORY]
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    try:
        for user in np.flatnonzero(counts > LONG_HISTORY):
            seen = seen_indices[seen_indptr[user] : seen_indptr[user + 1]]
            best = exact_top(ann.vectors, user_vectors[user], seen, n)
            out[user, : len(best)] = best
        for start in range(0, len(order), 1024):
            users = order[start : start + 1024]
            k = min(num_items, n + int(counts[users].max()))
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ann.ef_search, k)
            queries = np.ascontiguousarray(user_vectors[users], dtype=np.float32)
            _, labels = ann.index.search(queries, k, params=params)
            for row, user in enumerate(users):
                query, seen = user_vectors[user], seen_indices[seen_indptr[user] : seen_indptr[user + 1]]
                cand = labels[row][labels[row] >= 0]
                cand = cand[~np.isin(cand, seen)]
                want = min(n, num_items - len(np.unique(seen)))
                if len(cand) < want:
                    cand = exact_top(ann.vectors, query, seen, want)
                best = order_by_score(cand, ann.vectors[cand] @ query)[0][:n]
                out[user, : len(best)] = best
    finally:
        faiss.omp_set_num_threads(1)
    return out


def load_or_build_lists(
    checkpoint: str | Path,
    model_version: str,
    ann: AnnIndex,
    user_vectors: np.ndarray,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    n: int,
    config: AnnConfig,
) -> np.ndarray:
    """The cached top-``n`` lists for this model (memory-mapped, shared by every worker), built once under
    a lock like the index itself."""
    path = lists_path(cache_path(checkpoint, model_version, config), n, ann.ef_search)
    shape = (len(user_vectors), min(n, len(ann.vectors)))

    def read() -> np.ndarray | None:
        try:
            items = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # noqa: BLE001 - missing, empty (EOFError), truncated or not .npy: rebuild
            return None
        # Right shape and type, and every entry an item or the -1 padding (one pass over the mapped file).
        if items.shape == shape and items.dtype == np.int32 and (not items.size or (
            int(items.min()) >= -1 and int(items.max()) < len(ann.vectors)
        )):  # fmt: skip
            return items
        log.warning("top-N list cache %s does not match the model, rebuilding", path)
        return None

    items = read()
    if items is None:
        with _locked(path.with_name(path.name + ".lock")) as locked:
            items = read() if locked else None
            if items is None:
                started = time.perf_counter()
                built = build_lists(ann, user_vectors, seen_indptr, seen_indices, n, config.build_threads)
                log.info("built top-%d lists for %d users in %.1fs", shape[1], shape[0], time.perf_counter() - started)
                try:

                    def save(tmp: str) -> None:
                        with open(tmp, "wb") as fh:
                            np.save(fh, built, allow_pickle=False)

                    _atomic_write(path, save)
                    _remove_stale_lists(path)
                    items = read()
                except OSError as exc:
                    log.warning("top-N lists not cached (%s); kept in memory for this worker only", exc)
                items = built if items is None else items
    return items


def maybe_ann(checkpoint: str | Path, model_version: str, vectors: np.ndarray, config: AnnConfig) -> AnnIndex | None:
    """An :class:`AnnIndex` when the catalogue is large enough and faiss is installed; else None (exact)."""
    if config.min_items <= 0 or len(vectors) < config.min_items:
        return None
    if _import_faiss() is None:
        log.warning("%d items >= RECSYS_ANN_MIN_ITEMS but faiss is not installed: exact top-k", len(vectors))
        return None
    return load_or_build(checkpoint, model_version, vectors, config)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.ann CHECKPOINT``: build (or verify) the cached index and top-N lists before serving."""
    from model import checkpoint as ckpt_io
    from model.checkpoint import serving_arrays
    from service.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m service.ann CHECKPOINT", file=sys.stderr)
        return 2
    if _import_faiss() is None:
        print("error: faiss is not installed (pip install -e '.[ann]')", file=sys.stderr)
        return 2
    from service.topn import TopNConfig

    ckpt = ckpt_io.load(args[0])
    serving = ckpt.serving or serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config)
    settings = load_settings()
    config, topn = AnnConfig.from_settings(settings), TopNConfig.from_settings(settings)
    ann = load_or_build(args[0], ckpt.model_version, serving["item_vectors"], config)
    print(cache_path(args[0], ckpt.model_version, config))
    if topn.wants_from_ann() and ckpt_io.ranks_by_dot_product(ckpt.kind, ckpt.config):
        load_or_build_lists(
            args[0], ckpt.model_version, ann, serving["user_vectors"], ckpt.seen_indptr, ckpt.seen_indices,
            topn.n, config,
        )  # fmt: skip
        print(lists_path(cache_path(args[0], ckpt.model_version, config), topn.n, config.ef_search))
    return 0


if __name__ == "__main__":
    sys.exit(main())
