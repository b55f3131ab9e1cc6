"""The notebook API: a checkpoint loaded as a service worker loads it, asked through the same methods.

:meth:`Recommender.load` goes through :func:`service.state.load_state` with the service's settings
(defaults, then ``RECSYS_*`` variables, then keyword overrides), so the :class:`~service.index.ServingIndex`
it holds is the one a uWSGI worker would build, top-N lists and ANN index included. Every question is one
call of the index method the HTTP view makes (``recommend``, ``recommend_for_history``, ``similar``,
``predict``); this module only shapes the answer: a list of plain dicts (the HTTP response's ``items``) or,
with ``frame=True``, a pandas DataFrame with the same columns (pandas is the ``[notebook]`` extra, imported
only then).

    >>> rec = Recommender.load("artifacts/model.ckpt")
    >>> rec.recommend("u1", k=3)
    [{'item_id': 'i42', 'score': 1.93, 'attributes': {}}, ...]
    >>> rec.recommend_history(["i1", "i2"], k=5, frame=True)      # fold-in: a user the model never saw

``scripts/recommend_batch.py`` writes :meth:`Recommender.recommend_blocks` for every user to a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.checkpoint import CheckpointError
from model.distributed import SINGLE, threads_per_process
from model.store import served_file
from service.ann import AnnConfig
from service.config import load_settings
from service.index import Recommendation, ServingIndex
from service.state import load_state
from service.topn import TopNConfig

BATCH_COLUMNS = ("user_id", "rank", "item_id", "score")


def _frame(rows: list[dict], columns: Sequence[str]):
    import pandas as pd  # the [notebook] extra; plain lists need nothing

    return pd.DataFrame(rows, columns=list(columns))


class Recommender:
    """A loaded model, answering as the HTTP service does (see the module docstring)."""

    def __init__(self, index: ServingIndex, info: Mapping[str, Any]):
        self.index = index
        self.info = dict(info)  # what GET /model answers: version, kind, sizes, metrics, config

    @classmethod
    def load(
        cls, path: str | Path, progress=None, threads: int | None = None, lists_at_least: int = 0, **settings: Any
    ) -> Recommender:
        """Load ``path`` (a checkpoint, or a model store directory's ``current``) as a service worker would.

        ``settings`` override the service's settings by name, e.g. ``topn_max_cells=0`` for
        ``RECSYS_TOPN_MAX_CELLS=0`` (see ``service/config.py``); ``progress(done, users)`` is called after
        each block of users whose top-N lists the load-time scan ranked; ``threads`` blocks are ranked at
        once (default: every core this process may use; a service worker ranks one); ``lists_at_least``: top-N
        lists of at least this many items (otherwise as long as a worker's).

        Raises:
            CheckpointError: the file does not load (the reason the service would log).
            ConfigError: a setting that does not parse.
        """
        merged = load_settings(overrides={name.upper(): value for name, value in settings.items()})
        topn = replace(
            TopNConfig.from_settings(merged), threads=threads or threads_per_process(SINGLE), at_least=lists_at_least
        )
        state = load_state(served_file(path), AnnConfig.from_settings(merged), topn, progress)
        if state.index is None:
            raise CheckpointError(state.error)
        return cls(state.index, state.info)

    @property
    def model_version(self) -> str:
        return self.index.model_version

    @property
    def user_ids(self) -> list[str]:
        """Every user the model knows, in index order."""
        return list(self.index.user_index)

    @property
    def item_ids(self) -> list[str]:
        """Every item the model knows, in index order."""
        return self.index.item_ids.tolist()

    def knows_user(self, user_id: str) -> bool:
        """Whether the model trained on ``user_id``: :meth:`recommend` answers anyone else with the popular items
        (HTTP's ``"fallback": "popular"``, which the list of items does not carry)."""
        return str(user_id) in self.index.user_index

    def recommend(self, user_id: str, k: int = 10, *, frame: bool = False, **options: Any):
        """``GET /recommend``: the ``k`` best items for a known user, the popular ones for an unknown one
        (:meth:`knows_user` tells which).

        ``options`` are :meth:`ServingIndex.recommend`'s (``exclude_seen``, ``exclude``, ``candidates``,
        ``filters={"genres": ["Comedy"]}``, ``explain=True``). Returns ``[{"item_id", "score", "attributes"}]``
        (and ``"explanation"`` with ``explain``) best first, or a DataFrame with those columns.
        """
        return self._answer(self.index.recommend(str(user_id), k, **options), frame)

    def recommend_history(
        self,
        history: Sequence[str] | Mapping[str, float],
        k: int = 10,
        *,
        frame: bool = False,
        **options: Any,
    ):
        """``POST /recommend``: fold-in for a user the model never saw, from the items they interacted with.

        ``history`` is a list of item ids, or a mapping item id -> rating. ``options``: ``exclude``,
        ``candidates``, ``filters``, ``explain``. History items are never recommended.
        """
        items = [str(i) for i in history]
        ratings = [float(history[i]) for i in history] if isinstance(history, Mapping) else None
        return self._answer(self.index.recommend_for_history(items, k, ratings, **options), frame)

    def similar(self, item_id: str, k: int = 10, *, frame: bool = False, filters=None):
        """``GET /similar``: nearest items by cosine similarity (``filters`` as for :meth:`recommend`).
        Raises ``UnknownItem`` (a ``KeyError``)."""
        return self._answer(self.index.similar(str(item_id), k, filters), frame)

    def predict(self, user_ids: str | Sequence[str], item_ids: str | Sequence[str], *, frame: bool = False):
        """``POST /predict``: ratings for (user, item) pairs, each ``{"user_id", "item_id", "rating",
        "fallback"}``; one pair of ids gives one dict, two equally long lists give a list (or a DataFrame)."""
        single = isinstance(user_ids, str) and isinstance(item_ids, str)
        users = [user_ids] if single else [str(u) for u in user_ids]
        items = [item_ids] if single else [str(i) for i in item_ids]
        if len(users) != len(items):
            raise ValueError(f"{len(users)} user ids but {len(items)} item ids")
        rows = self.index.predict(users, items).records(users, items)
        if single:
            return rows[0]
        return _frame(rows, ("user_id", "item_id", "rating", "fallback")) if frame else rows

    def recommend_blocks(
        self, user_ids: Sequence[str] | None = None, k: int = 10, *, block: int = 4096, **options: Any
    ) -> Iterator[dict[str, list]]:
        """``GET /recommend`` for many users (default: every known user, in index order), ``block`` users at a
        time: each block as columns :data:`BATCH_COLUMNS` (one row per recommended item, ``rank`` from 1).

        Each user's answer is :meth:`ServingIndex.recommend` with ``options``, the call the view makes, so a
        file written from these blocks holds what ``/recommend`` answers (with the lists precomputed, as
        ``scripts/recommend_batch.py`` loads the model, each call is a slice and a re-score of k items).
        """
        users = self.user_ids if user_ids is None else [str(u) for u in user_ids]
        for start in range(0, len(users), block):
            columns: dict[str, list] = {name: [] for name in BATCH_COLUMNS}
            for user in users[start : start + block]:
                rec = self.index.recommend(user, k, **options)
                n = len(rec.item_ids)
                columns["user_id"].extend([user] * n)
                columns["rank"].extend(range(1, n + 1))
                columns["item_id"].extend(rec.item_ids)
                columns["score"].extend(rec.scores)
            yield columns

    def recommend_users(self, user_ids: Sequence[str] | None = None, k: int = 10, *, frame: bool = False, **options):
        """:meth:`recommend_blocks` gathered: rows ``{"user_id", "rank", "item_id", "score"}`` or a DataFrame."""
        rows = [
            dict(zip(BATCH_COLUMNS, values))
            for columns in self.recommend_blocks(user_ids, k, **options)
            for values in zip(*(columns[name] for name in BATCH_COLUMNS))
        ]
        return _frame(rows, BATCH_COLUMNS) if frame else rows

    @staticmethod
    def _answer(rec: Recommendation, frame: bool):
        records = rec.records()
        if not frame:
            return records
        return _frame(records, ("item_id", "score", "attributes") + (("explanation",) if rec.explanations else ()))
