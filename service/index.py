"""The serving index: numpy arrays precomputed from a checkpoint, so requests (but NeuMF's) never touch torch.

Ranking (``/recommend``, ``/similar``, :meth:`ServingIndex.score_users`) uses the checkpoint's ranking
arrays: item vectors ``[V_i, b_i]`` (I, d+1) and user vectors ``[U_u, 1]``, so a user's ranking is one
matrix-vector product. They come from the ranking head of a default MF (a softmax-trained MF beside
the rating model), from GMF (output neuron folded into the user side), or, for an MF without a head,
from the rating model itself (then ``mu + b_u`` is added so the score reads as a rating). NeuMF is not
a dot product: it is scored by a torch forward pass over the catalogue, one thread per worker.

Ratings (``/predict``) come from the rating model ``mu + b_u + b_i + U_u . V_i`` where there is one;
a ranking-only model (gmf, neumf, mf on a ranking loss) reports ``low + (high - low) * sigmoid(logit)``,
a preference on the data's scale rather than a calibrated rating (on implicit data, which has no scale,
``sigmoid(logit)``). Unknown users fall back to the most
popular items; unknown users or items in predictions fall back to the baseline ``mu + known biases``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model.checkpoint import Checkpoint
from model.serving_arrays import has_rating_model, ranking_prefix, ranks_by_dot_product, serving_arrays
from model.topk import top_k
from service import pruned
from service.attributes import AttributeIndex, BadFilterValue, ItemFilter, UnknownAttribute
from service.config import DEFAULTS
from service.explain import EXPLAINED_ITEMS, ExplainUnsupported, contributions, per_item, top_contributors
from service.fold_in import FoldIn
from service.torch_scorer import TorchScorer

__all__ = ["BadFilterValue", "ExplainUnsupported", "Recommendation", "ServingIndex", "UnknownAttribute", "UnknownItem"]
VALUE_BLOCK_BUDGET = 64 * 2**20
Filters = Mapping[str, Sequence[str]]  # attribute -> values that must all hold, e.g. {"genres": ["Comedy"]}

if TYPE_CHECKING:
    from service.ann import AnnIndex
    from service.topn import TopNCache


class UnknownItem(KeyError):
    """An item id the model has never seen, where a known one is required."""

    def __init__(self, item_id: str):
        super().__init__(item_id)
        self.item_id = item_id


@dataclass(frozen=True)
class Recommendation:
    """Items best first, their scores, and per item its attributes (``{}`` without metadata) and, when asked
    (``explain=True``), the history items that contributed most: ``[{"item_id", "share", "attributes"}]``."""

    item_ids: list[str]
    scores: list[float]
    fallback: str | None
    attributes: list[dict[str, Any]] = field(default_factory=list)
    explanations: list[list[dict[str, Any]]] | None = None

    def records(self) -> list[dict]:
        """The answer's items as ``[{"item_id", "score", "attributes"}]`` (and ``"explanation"`` when asked for),
        best first: the HTTP responses' ``items`` and the notebook API's (:mod:`service.recommender`) lists are
        both this."""
        attributes = self.attributes or [{} for _ in self.item_ids]
        items = [{"item_id": i, "score": s, "attributes": a} for i, s, a in zip(self.item_ids, self.scores, attributes)]
        for item, explanation in zip(items, self.explanations or ()):
            item["explanation"] = explanation
        return items


@dataclass(frozen=True)
class Predictions:
    ratings: list[float]
    fallbacks: list[str | None]

    def records(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> list[dict]:
        """The pairs asked for as ``[{"user_id", "item_id", "rating", "fallback"}]``, in their order: ``POST
        /predict``'s ``predictions`` and the notebook API's rows are both this."""
        return [
            {"user_id": u, "item_id": i, "rating": r, "fallback": f}
            for u, i, r, f in zip(user_ids, item_ids, self.ratings, self.fallbacks)
        ]


def _frozen(arr: np.ndarray) -> np.ndarray:
    """A read-only view: a stray in-place write would otherwise silently un-share mmapped pages (COW)."""
    view = arr.view()
    view.flags.writeable = False
    return view


_NO_ITEMS = _frozen(np.empty(0, dtype=np.int64))


class ServingIndex:
    """Read-only arrays for answering requests; built once per loaded checkpoint."""

    def __init__(
        self,
        ckpt: Checkpoint,
        ann: AnnIndex | None = None,
        topn: TopNCache | None = None,
        prune_min_items: int = DEFAULTS["PRUNE_MIN_ITEMS"],
    ):
        # Views, not copies: the checkpoint is memory-mapped, so these arrays are the page cache that every
        # worker serving the same file shares. Only per-request temporaries (scores, (I,)) are private.
        state = {k: v.detach().numpy() for k, v in ckpt.state_dict.items()}
        serving = ckpt.serving or serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config, ckpt.recent_items)
        self.kind = ckpt.kind
        self.item_vectors = _frozen(serving["item_vectors"])  # (I, d+1) [V_i, b_i]
        self.user_vectors = _frozen(serving["user_vectors"])  # (U, d+1) [U_u, 1]
        self.item_norms = _frozen(serving["item_norms"])  # (I,) |V_i|, for /similar
        self.dim = self.item_vectors.shape[1] - 1
        # Rating model: biased MF where there is one; ranking-only kinds report a squashed logit instead.
        self.has_rating = has_rating_model(ckpt.kind, ckpt.config)
        self.rank_is_rating = self.has_rating and not ranking_prefix(ckpt.kind, ckpt.config)
        zeros_u = np.zeros(ckpt.num_users, np.float32)
        if ckpt.kind == "mf":
            self.rating_user = _frozen(np.asarray(state["user_factors.weight"], np.float32))  # (U, d)
            self.rating_item = _frozen(np.asarray(state["item_factors.weight"], np.float32))  # (I, d)
            self.user_bias = _frozen(np.asarray(state["user_bias.weight"], np.float32).reshape(-1))  # (U,)
            self.item_bias = _frozen(np.asarray(state["item_bias.weight"], np.float32).reshape(-1))  # (I,)
            self.global_bias = float(state["global_bias"])
        else:
            self.rating_user, self.rating_item = self.user_vectors[:, :-1], self.item_vectors[:, :-1]
            self.user_bias, self.item_bias = _frozen(zeros_u), _frozen(self.item_vectors[:, -1])
            # GMF's output bias; NeuMF's forward pass (TorchScorer.pairs) already includes its own.
            self.global_bias = float(state["output.bias"].reshape(-1)[0]) if ckpt.kind == "gmf" else 0.0
        self.dot = ranks_by_dot_product(ckpt.kind, ckpt.config)
        self.torch_scorer = None if self.dot else TorchScorer(ckpt)
        self.seen_indptr, self.seen_indices = _frozen(ckpt.seen_indptr), _frozen(ckpt.seen_indices)
        self.popularity = _frozen(ckpt.item_popularity)  # (I,) int64
        self.popular_order = np.argsort(-ckpt.item_popularity, kind="stable")  # most popular first
        self.user_index = {raw: idx for idx, raw in enumerate(ckpt.user_ids)}
        self.item_index = {raw: idx for idx, raw in enumerate(ckpt.item_ids)}
        self.item_ids = np.array(ckpt.item_ids, dtype=object)
        self._id_list = list(ckpt.item_ids)  # answers name k items: k list lookups beat an object-array gather
        self.attributes = AttributeIndex(ckpt.item_attributes, ckpt.num_items)  # metadata and filters
        self._blocks: dict[tuple, np.ndarray] = {}  # (attribute, value) -> its items' vectors (see _value_block)
        self._block_bytes = 0
        self.low, self.high = ckpt.rating_scale
        # A new user's query from a history (POST /recommend), per kind: service.fold_in.
        self.folding = FoldIn(ckpt, state, self.item_vectors, self.user_vectors, self.item_bias, self.global_bias,
                              self.rank_is_rating, self.torch_scorer)  # fmt: skip
        self.model_version = ckpt.model_version
        # NeuMF is not a dot product: an inner-product index or top-N lists of user_vectors . item_vectors
        # would rank by something other than the model, so it always scores the catalogue.
        self.ann = ann if self.dot else None  # optional approximate index over item_vectors (service.ann)
        self.topn = topn if self.dot else None  # optional precomputed top-N unseen items per user (service.topn)
        # Exact top-k that reads a fraction of item_vectors, where the model's vectors allow it (service.pruned).
        wants_pruned = self.dot and self.ann is None and 0 < prune_min_items <= self.num_items
        self.pruned = pruned.build(self.item_vectors, pruned.sample_queries(self)) if wants_pruned else None

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def seen(self, user_idx: int) -> np.ndarray:
        """Item indices the user rated in training, shape (n,), int64."""
        return self.seen_indices[self.seen_indptr[user_idx] : self.seen_indptr[user_idx + 1]]

    def item_indices(self, item_ids: Iterable[str]) -> np.ndarray:
        """Indices of the known ids among ``item_ids`` (unknown ones are dropped), int64."""
        if isinstance(item_ids, (list, tuple)) and not item_ids:  # the usual exclude= (none): no array per request
            return _NO_ITEMS
        found = (self.item_index.get(i) for i in item_ids)
        return np.array([i for i in found if i is not None], dtype=np.int64)

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Ranking scores of every item for known users, shape (n, I), float32; nothing excluded.

        This is the signal ``recommend`` ranks by (before seen items are removed); offline evaluation
        (``scripts/evaluate.py``, ``model.metrics``) scores top-k lists through it, so what is measured is
        what is served.
        """
        user_idx = np.asarray(user_idx, dtype=np.int64)
        if not self.dot:
            return self.torch_scorer.scores(self.torch_scorer.users(user_idx))
        return self.user_vectors[user_idx] @ self.item_vectors.T

    def _scores(self, query, items: np.ndarray | None = None) -> np.ndarray:
        """Ranking scores of ``items`` (default: all) for one query (a (d+1,) vector, or NeuMF's embeddings)."""
        if not self.dot:
            return self.torch_scorer.scores(query, items)[0]
        return (self.item_vectors if items is None else self.item_vectors[items]) @ query

    def _rank(
        self,
        query,
        offset: float,
        k: int,
        banned: np.ndarray,
        candidates: np.ndarray | None,
        keep: ItemFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for a query, without ``banned``; optionally among ``candidates`` and those ``keep`` keeps.

        A filter is applied before the top-k: a narrow one (under a quarter of the catalogue) scores only
        the items it keeps, a broad one masks the full scan; either is exact (no ANN search).
        """
        if keep is not None and candidates is None and 4 * keep.count() >= self.num_items:  # broad: masked scan
            scores = self._scores(query)  # (I,)
            scores[banned] = -np.inf
            scores[~keep.mask()] = -np.inf
            top = top_k(scores, k)
            return top, scores[top] + offset
        if candidates is not None:  # sorted, unique
            candidates = np.unique(candidates)
            candidates = candidates if keep is None else candidates[keep.allows(candidates)]
        elif keep is not None:  # a narrow filter: score only the items it keeps (sorted, unique)
            block = self._value_block(keep)
            if block is not None:
                return self._rank_block(keep.items(), block @ query, offset, k, banned)
            candidates = keep.items()
        if candidates is not None:
            candidates = _without(candidates, banned)
            if not len(candidates):  # nothing left to rank (a filter no item passes)
                return candidates.astype(np.int64), np.empty(0, np.float32)
            scores = self._scores(query, candidates)
            top = top_k(scores, k)
            return candidates[top], scores[top] + offset
        if self.ann is not None:
            idx, scores = self.ann.search(query, k, banned)
            return idx, scores + offset
        found = None if self.pruned is None else self.pruned.search(query, k, banned)
        if found is not None:
            return found[0], found[1] + offset
        scores = self._scores(query)  # (I,)
        scores[banned] = -np.inf
        top = top_k(scores, k)
        return top, scores[top] + offset

    def _value_block(self, keep: ItemFilter) -> np.ndarray | None:
        """The item vectors of the items one ``attribute: value`` keeps, as one contiguous (m, d+1) copy made on
        first use (within ``VALUE_BLOCK_BUDGET`` bytes per worker): scoring a narrow filter's items then reads
        memory in order instead of gathering m scattered rows per request (cache misses dominate there)."""
        if keep.key is None or not self.dot:
            return None
        block = self._blocks.get(keep.key)
        if block is None:
            items = keep.items()
            size = len(items) * self.item_vectors.shape[1] * self.item_vectors.itemsize
            if self._block_bytes + size > VALUE_BLOCK_BUDGET:
                return None
            block = self._blocks[keep.key] = _frozen(np.ascontiguousarray(self.item_vectors[items]))
            self._block_bytes += size
        return block

    @staticmethod
    def _rank_block(items: np.ndarray, scores: np.ndarray, offset: float, k: int, banned: np.ndarray):
        """Top-k of ``items`` (sorted) scored ``scores`` (their order), ``banned`` removed."""
        if len(banned) and len(items):
            pos = np.minimum(np.searchsorted(items, banned), len(items) - 1)
            scores[pos[items[pos] == banned]] = -np.inf
        top = top_k(scores, k)
        return items[top], scores[top] + offset

    def _answer(
        self, idx: np.ndarray, scores, fallback: str | None = None, explained: tuple | None = None
    ) -> Recommendation:
        """The answer for item indices ``idx`` (k,): ids, scores, attributes and, with ``explained`` = (the
        history's item indices, its fold-in system from :meth:`explain_system`), each item's top contributors."""
        scores = scores.tolist() if isinstance(scores, np.ndarray) else scores
        # The first EXPLAINED_ITEMS items only: each costs a pass over the whole history (k = 1,000 over 10,000
        # history items took 1.4-2.1 s of a worker); the items past them come without an "explanation".
        explanations = None if explained is None else self._explanations(idx[:EXPLAINED_ITEMS], *explained)
        positions = idx.tolist()
        ids = self._id_list
        return Recommendation(
            [ids[i] for i in positions], scores, fallback, self.attributes.describe(positions), explanations
        )

    def _explanations(self, idx: np.ndarray, hist_idx: np.ndarray, system) -> list[list[dict[str, Any]]]:
        if not len(hist_idx) or not len(idx):
            return [[] for _ in idx]
        vectors, gram, coef = system
        items, contrib = per_item(contributions(self.item_vectors[idx, :-1], vectors, coef, gram), hist_idx)
        tops = top_contributors(contrib)
        named = np.unique([h for row in tops for h, _ in row])  # distinct history items named in any explanation
        attrs = dict(zip(named.tolist(), self.attributes.describe(items[named])))
        ids = self.item_ids[items]
        return [[{"item_id": ids[h], "share": share, "attributes": attrs[h]} for h, share in row] for row in tops]

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool = True,
        exclude: Sequence[str] = (),
        candidates: Sequence[str] | None = None,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """Top-``k`` items for a user, best first; ``k`` is clamped to what can be returned.

        ``exclude`` drops those item ids; ``candidates`` restricts the answer to those ids (unknown ids
        in either are ignored). ``filters`` keeps only items holding every ``attribute: value`` (applied
        before the top-k, so k items come back when k exist); ``explain`` adds each item's top contributing
        history items (:mod:`service.explain`; an unknown user has none).

        Raises:
            UnknownAttribute, BadFilterValue: a filter the items' attributes cannot answer.
            ExplainUnsupported: ``explain`` for a kind whose scores do not split over the history (NeuMF).
        """
        self._check_explain(explain)
        keep = self.attributes.compile(filters)
        banned = self.item_indices(exclude)
        cand = None if candidates is None else self.item_indices(candidates)
        user_idx = self.user_index.get(user_id)
        if user_idx is None:
            return self._popular(k, banned, cand, keep, explain)
        # Reported score: the predicted rating when ranking by it, else the ranking model's own score.
        offset = self.global_bias + float(self.user_bias[user_idx]) if self.rank_is_rating else 0.0
        explained = (self.seen(user_idx), self.explain_system(self.seen(user_idx), known=True)) if explain else None
        # A filter expected to keep under k of the list's n items fails to fill k from it more often than not (the
        # walk then costs as much as the scan after it): scan at once.
        hopeless = keep is not None and self.topn is not None and keep.count() * self.topn.n < k * self.num_items
        if self.topn is not None and exclude_seen and cand is None and not hopeless:
            hit = self.topn.lookup(user_idx, k, banned, keep)
            if hit is not None:  # exactly what the scan below would answer
                scores = hit[1].tolist()  # the offset in Python: k additions, not a numpy call on the request path
                return self._answer(hit[0], [s + offset for s in scores] if offset else scores, None, explained)
        if exclude_seen:
            banned = np.concatenate([banned, self.seen(user_idx)]) if len(banned) else self.seen(user_idx)
        query = self.user_vectors[user_idx] if self.dot else self.torch_scorer.users(np.array([user_idx]))
        idx, scores = self._rank(query, offset, k, banned, cand, keep)
        return self._answer(idx, scores, None, explained)

    def _popular(
        self, k: int, banned: np.ndarray, cand: np.ndarray | None, keep: ItemFilter | None, explain: bool
    ) -> Recommendation:
        """What a user the model cannot personalise for gets: the most popular items (``banned`` out, among
        ``cand`` and what ``keep`` allows), scored by their training counts, with ``"fallback": "popular"``."""
        if cand is not None:  # items= may repeat an id: each item once, by popularity then index
            cand = np.unique(cand)
        pool = self.popular_order if cand is None else cand[np.argsort(-self.popularity[cand], kind="stable")]
        if len(banned):
            pool = pool[~np.isin(pool, banned)]
        if keep is not None:
            pool = pool[keep.allows(pool)]
        top = pool[:k]
        scores = self.popularity[top].astype(np.float32).tolist()
        return self._answer(top, scores, "popular", (np.empty(0, np.int64), None) if explain else None)

    def _check_explain(self, explain: bool) -> None:
        if explain and not self.dot:
            raise ExplainUnsupported(
                f"explain is not defined for {self.kind}: its MLP mixes user and item before scoring, so a score "
                "does not split over the history items"
            )

    def explain_system(self, item_idx: np.ndarray, ratings: np.ndarray | None = None, known: bool = False):
        """The linear system behind a (folded-in or ``known``) user's vector: see :meth:`FoldIn.system`."""
        return self.folding.system(item_idx, ratings, known)

    def fold_in(self, item_idx: np.ndarray, ratings: np.ndarray | None = None):
        """A query for a history the model never trained on: a user vector ``[p, 1]`` (d+1,) (NeuMF: its
        embeddings), by the kind's rule (:mod:`service.fold_in`)."""
        return self.folding.query(item_idx, ratings)

    def score_history(self, item_idx: np.ndarray, ratings: np.ndarray | None = None) -> np.ndarray:
        """Ranking scores (I,) of every item for a new user with this history: what ``recommend_for_history``
        ranks by (it then drops the history). Offline strong-generalisation evaluation scores through it."""
        return np.asarray(self._scores(self.fold_in(np.asarray(item_idx, np.int64), ratings)), np.float32)

    def recommend_for_history(
        self,
        history: Sequence[str],
        k: int,
        ratings: Sequence[float] | None = None,
        exclude: Sequence[str] = (),
        candidates: Sequence[str] | None = None,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """Top-``k`` for a new user described by the items they interacted with (excluded from the answer);
        ``filters`` and ``explain`` as for :meth:`recommend` (the contributions of the history given)."""
        self._check_explain(explain)
        known = [(self.item_index.get(item), r) for item, r in zip(history, ratings or [None] * len(history))]
        known = [(idx, r) for idx, r in known if idx is not None]
        hist_r = None if ratings is None or not known else np.array([r for _, r in known], dtype=np.float32)
        keep = self.attributes.compile(filters)
        cand = None if candidates is None else self.item_indices(candidates)
        if not known or self.folding.likes_nothing(hist_r):  # nothing to go by: what an unknown user gets
            banned = np.concatenate([self.item_indices(exclude), self.item_indices(history)])
            return self._popular(k, banned, cand, keep, explain)
        hist_idx = np.array([idx for idx, _ in known], dtype=np.int64)
        query = self.fold_in(hist_idx, hist_r)
        banned = np.concatenate([self.item_indices(exclude), hist_idx])
        idx, scores = self._rank(query, self.global_bias if self.rank_is_rating else 0.0, k, banned, cand, keep)
        explained = (hist_idx, self.explain_system(hist_idx, hist_r)) if explain else None
        return self._answer(idx, scores, None, explained)

    def similar(self, item_id: str, k: int, filters: Filters | None = None) -> Recommendation:
        """Nearest items by cosine similarity of the item factors (the item itself excluded), among the items
        ``filters`` keeps (see :meth:`recommend`)."""
        keep = self.attributes.compile(filters)
        item_idx = self.item_index.get(item_id)
        if item_idx is None:
            raise UnknownItem(item_id)
        # cos = V.v / (|V| |v|) straight from the shared arrays: a stored unit-vector copy would add
        # another (I, d) array per model. (The strided view of item_vectors goes to BLAS without a copy.)
        norms = np.maximum(self.item_norms, 1e-12)
        factors = self.item_vectors[:, :-1]
        scores = (factors @ factors[item_idx]) / (norms * norms[item_idx])
        scores[item_idx] = -np.inf
        if keep is not None:
            scores[~keep.mask()] = -np.inf
        top = top_k(scores, k)
        return self._answer(top, scores[top])

    def predict(self, user_ids: list[str], item_ids: list[str]) -> Predictions:
        """Ratings for (user, item) pairs, clipped to the training scale; vectorised over pairs."""
        users = np.fromiter((self.user_index.get(u, -1) for u in user_ids), dtype=np.int64, count=len(user_ids))
        items = np.fromiter((self.item_index.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known_u, known_i = users >= 0, items >= 0
        u, i = np.where(known_u, users, 0), np.where(known_i, items, 0)
        both = known_u & known_i
        # [U_u, 1] . [V_i, b_i] = U_u . V_i + b_i; zeroed where either side is unknown.
        if self.dot:
            interaction = np.einsum("nd,nd->n", self.rating_user[u], self.rating_item[i]) * both
        else:
            interaction = self.torch_scorer.pairs(u, i) * both
        rating = self.global_bias + self.user_bias[u] * known_u + self.item_bias[i] * known_i + interaction
        if not self.has_rating and self.high > self.low:  # a logit: squash onto the scale of the ratings
            rating = np.clip(self.low + (self.high - self.low) / (1.0 + np.exp(-rating)), self.low, self.high)
        elif not self.has_rating:  # implicit data has no scale (every rating 1): a preference in (0, 1)
            rating = 1.0 / (1.0 + np.exp(-rating))
        else:
            rating = np.clip(rating, self.low, self.high)
        fallbacks = [None if ok else "baseline" for ok in both.tolist()]
        return Predictions(rating.astype(float).tolist(), fallbacks)


def _without(items: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """Sorted unique ``items`` less ``banned`` (any order): a binary search per banned item, no sort of ``items``."""
    if not len(banned) or not len(items):
        return items
    pos = np.minimum(np.searchsorted(items, banned), len(items) - 1)
    return np.delete(items, pos[items[pos] == banned])
