"""A new user's query from their history (``POST /recommend``, strong-generalisation evaluation), one rule per
model kind, and the linear system behind it that explanations split (:mod:`service.explain`).

- Ranking by rating (an MF without a ranking head): the MF objective solved for one new user with the items
  fixed (as implicit's ``recalculate_user`` does for ALS): ``min_p sum_i (r_i - mu - b_i - p.V_i)^2 +
  reg*|p|^2``; without ratings every history item counts as liked at the top of the scale.
- Implicit-ALS rankers (the default MF's ranking head, ``--loss ials``): the user's closed-form ALS solve
  with the items fixed and the fold-in's own L2 (``fold_in_reg``), liked items weighted by
  ``(r - low) / (high - low)``.
- Other dot-product rankers: the mean of the history's item vectors weighted by how much each was liked, at
  a typical trained user's length.
- Autoencoders (vae, dae): their encoder's mean code (numpy).
- Sequence kinds: the network's reading of the history in its order (oldest first), its last ``max_len``
  items (numpy, :mod:`model.sequence_numpy`).
- NeuMF: a few gradient steps on a fresh user's embeddings (:class:`service.torch_scorer.TorchScorer`).
"""

from __future__ import annotations

import numpy as np

from model import sequence_numpy
from model.autoencoder import AUTOENCODERS, encode_history, encoder_arrays
from model.checkpoint import Checkpoint
from model.sequence import SEQUENCE_KINDS
from service.torch_scorer import TorchScorer


class FoldIn:
    """Per-model state for folding histories in, built once per loaded checkpoint next to the serving index.

    ``item_vectors`` (I, d+1) ``[V_i, b_i]`` and ``user_vectors`` (U, d+1) are the index's ranking arrays;
    ``item_bias`` (I,) and ``global_bias`` its rating model's; ``rank_is_rating``: scores read as ratings (an
    MF without a ranking head); ``torch_scorer``: NeuMF's, else None."""

    def __init__(
        self,
        ckpt: Checkpoint,
        state: dict[str, np.ndarray],
        item_vectors: np.ndarray,
        user_vectors: np.ndarray,
        item_bias: np.ndarray,
        global_bias: float,
        rank_is_rating: bool,
        torch_scorer: TorchScorer | None,
    ):
        self.kind = ckpt.kind
        self.item_vectors, self.item_bias, self.global_bias = item_vectors, item_bias, global_bias
        self.rank_is_rating = rank_is_rating
        self.torch_scorer = torch_scorer
        self.dim = item_vectors.shape[1] - 1
        self.low, self.high = ckpt.rating_scale
        self.ridge_reg = max(float(ckpt.config.reg or 0.0), 1e-3)
        # A new user's vector is rescaled to a typical trained user's length (the median), so the personal part
        # of the score weighs against the item biases (popularity) as it does for trained users.
        norms = np.linalg.norm(user_vectors[:, :-1], axis=1)
        self.typical_user_norm = float(np.median(norms)) if len(norms) else 1.0
        # Implicit ALS: YtY over the whole catalogue plus reg I, for a new user (the fold-in's L2) and a known
        # one (training's, for explanations), (d, d) once per model; the history's rows per request.
        self.ials = _ials_fold_in(ckpt.config) if torch_scorer is None else None
        if self.ials is not None:
            items = item_vectors[:, :-1].astype(np.float64)
            gram, eye = items.T @ items, np.eye(self.dim)
            self.ials_base = {False: gram + self.ials[2] * eye, True: gram + self.ials[1] * eye}
        self.encoder = encoder_arrays(state, self.dim) if ckpt.kind in AUTOENCODERS else None
        # Layer weights prepared once (contiguous transposes, folded layer norms): one history is one numpy pass.
        self.sequence = (sequence_numpy.prepare(state), ckpt.config) if ckpt.kind in SEQUENCE_KINDS else None

    @property
    def linear(self) -> bool:
        """Whether a folded-in score splits exactly over the history (not the autoencoders' tanh encoder, the
        sequence networks or NeuMF)."""
        return self.encoder is None and self.sequence is None and self.torch_scorer is None

    def query(self, item_idx: np.ndarray, ratings: np.ndarray | None = None):
        """The query for a history the model never trained on: a user vector ``[p, 1]`` (d+1,) float32 (NeuMF:
        its embeddings). ``item_idx`` (n,) int64 oldest first; ``ratings`` (n,) or None (all liked)."""
        if self.torch_scorer is not None:
            return self.torch_scorer.fold_in(item_idx)
        if self.encoder is not None:  # every history item counts, as every training row did
            return np.append(encode_history(*self.encoder, item_idx), 1.0).astype(np.float32)
        if self.sequence is not None:  # the order is the signal; ratings are not used
            weights, config = self.sequence
            user = sequence_numpy.encode_history(weights, self.kind, item_idx, config.max_len, config.heads)
            return np.append(user, 1.0).astype(np.float32)
        if self.ials is not None or self.rank_is_rating:
            y, gram, coef = self._ials_system(item_idx, ratings) if self.ials else self._ridge_system(item_idx, ratings)
            p = np.linalg.solve(gram, y.T @ coef)
            return np.append(p, 1.0).astype(np.float32)
        # The liking-weighted mean of the history's item vectors at a typical user's length (:meth:`system`).
        y, _, coef = self.system(item_idx, ratings)
        return np.append(coef @ y, 1.0).astype(np.float32)

    def likes_nothing(self, ratings: np.ndarray | None) -> bool:
        """Whether a rated history likes nothing (every rating at the bottom of the scale) where the fold-in
        weighs items by liking (implicit ALS, the mean of item vectors): its query would be zero and rank every
        item alike (in index order, as if personal). Other rules read ratings as targets or ignore them."""
        if ratings is None or not self.linear or self.rank_is_rating:
            return False
        return not bool((self._liking(ratings) > 0).any())

    def system(self, item_idx: np.ndarray, ratings: np.ndarray | None = None, known: bool = False):
        """The linear fold-in behind a user vector, ``p = W^-1 sum_h a_h y_h``: (the history's item vectors
        ``y`` (n, d), ``W`` (d, d) or None for the identity, ``a`` (n,)). ``known``: a trained user, whose
        vector only implicit ALS solves from the history (other kinds: item similarity, ``a = 1``); the
        autoencoders' encoder and the sequence networks are not linear in the history, so theirs is item
        similarity too."""
        if self.ials is not None:
            return self._ials_system(item_idx, ratings, known)
        if known or not self.linear:
            return self.item_vectors[item_idx, :-1], None, np.ones(len(item_idx))
        if self.rank_is_rating:
            return self._ridge_system(item_idx, ratings)
        weights = np.ones(len(item_idx)) if ratings is None else self._liking(ratings)
        y = self.item_vectors[item_idx, :-1]
        mean = (weights[:, None] * y).sum(axis=0) / max(len(item_idx), 1)
        scale = self.typical_user_norm / max(float(np.linalg.norm(mean)), 1e-12)
        return y, None, weights * scale / max(len(item_idx), 1)

    def _ials_system(self, item_idx: np.ndarray, ratings: np.ndarray | None, known: bool = False):
        """Implicit ALS for one user: ``(YtY + alpha sum_h w_h y_h y_h^T + reg I) p = sum_h (1 + alpha w_h) y_h``
        over liked items (w_h > 0): an item rated at the bottom of the scale counts as not interacted with.
        ``reg``: the fold-in's, or training's for a ``known`` user (what their stored vector solved)."""
        weights = np.ones(len(item_idx)) if ratings is None else self._liking(ratings)
        alpha = self.ials[0]
        y = self.item_vectors[item_idx, :-1].astype(np.float64)
        gram = self.ials_base[known] + alpha * (y.T * weights) @ y
        return y, gram, (1.0 + alpha * weights) * (weights > 0)

    def _ridge_system(self, item_idx: np.ndarray, ratings: np.ndarray | None):
        """The MF objective for one new user, items fixed: ``(F^T F + reg I) p = F^T (r - mu - b_i)``."""
        factors = self.item_vectors[item_idx, :-1]  # (n, d)
        target = (np.full(len(item_idx), self.high) if ratings is None else ratings) - self.global_bias
        target = target - self.item_bias[item_idx]
        gram = factors.T @ factors + self.ridge_reg * np.eye(self.dim, dtype=np.float32)
        return factors, gram, target.astype(np.float32)

    def _liking(self, ratings: np.ndarray) -> np.ndarray:
        """Ratings as weights in [0, 1]: (r - low) / (high - low), clipped; all 1 on a scale of one value."""
        if self.high <= self.low:
            return np.ones(len(ratings))
        return np.clip((np.asarray(ratings, np.float64) - self.low) / (self.high - self.low), 0.0, 1.0)


def _ials_fold_in(config) -> tuple[float, float, float] | None:
    """(alpha, training's reg, the fold-in's reg) of the implicit-ALS model that ranks (the model itself or an mse
    model's head), else None. A checkpoint without a fold-in reg folds in with training's."""
    if config.loss == "ials":
        reg = float(config.reg)
    elif config.loss == "mse" and config.rank_loss == "ials":
        reg = float(config.rank_reg)
    else:
        return None
    return float(config.alpha), reg, reg if config.fold_in_reg is None else float(config.fold_in_reg)
