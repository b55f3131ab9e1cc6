"""The ranking arrays serving uses, derived from a checkpoint's weights.

``item_vectors`` (I, d+1) and ``user_vectors`` (U, d+1) make a user's ranking one matrix-vector product;
``item_norms`` (I,) serve cosine similarity. :func:`model.checkpoint.save` stores them in the file so
every worker maps them instead of building private copies; the service derives them itself for files
written without them.
"""

from __future__ import annotations

import numpy as np
import torch

from model.config import TrainConfig
from model.sequence import SEQUENCE_KINDS
from model.sequence_numpy import encode_in_blocks


def ranks_by_dot_product(kind: str, config: TrainConfig) -> bool:
    """Whether the ranking signal is ``user_vectors @ item_vectors.T`` (every kind but neumf)."""
    return kind != "neumf"


def has_rating_model(kind: str, config: TrainConfig) -> bool:
    """Whether the model predicts ratings: a biased MF trained on squared error (a resolved config: ``--loss auto``
    is ``mse`` on rated data). Every other kind answers ``/predict`` with its score squashed onto the scale."""
    return kind == "mf" and config.loss == "mse"


def ranking_prefix(kind: str, config: TrainConfig) -> str:
    """State-dict prefix of the network that ranks: ``ranking.`` for an MF with a ranking head, else none."""
    return "ranking." if has_rating_model(kind, config) and config.rank_loss != "none" else ""


def _np(state_dict: dict[str, torch.Tensor], name: str) -> np.ndarray:
    return state_dict[name].detach().cpu().numpy().astype(np.float32)


def serving_arrays(state_dict: dict[str, torch.Tensor], kind: str = "mf", config: TrainConfig | None = None,
                   recent_items: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The arrays the serving index ranks with, derived from the weights (all float32, C-contiguous).

    ``item_vectors`` (I, d+1) = ``[V_i, b_i]`` and ``user_vectors`` (U, d+1) = ``[U_u, 1]``, so a user's
    ranking is one matrix-vector product; ``item_norms`` (I,) = ``|V_i|`` for cosine similarity. For an
    MF with a ranking head they come from the head (``ranking.*``); for GMF the output neuron's weights
    are folded into the user side (``[p_u * h, 1]``). Sequence kinds: ``[E_i, b_i]`` and ``[h_u, 1]``, with
    ``h_u`` the network's representation of user u's ``recent_items`` (U, L) (none given: no user rows).
    NeuMF is not a dot product: its ``item_vectors``
    (``[gmf q_i, mlp q_i, 0]``) serve /similar only, and ``user_vectors`` likewise hold its embeddings.
    """
    config = config or TrainConfig(loss="mse", rank_loss="none")
    if kind in SEQUENCE_KINDS:
        return _sequence_arrays(state_dict, kind, config, recent_items)
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


def _sequence_arrays(state_dict, kind: str, config: TrainConfig, recent_items: np.ndarray | None):
    weights = {name: _np(state_dict, name) for name in state_dict}
    items = weights["item_embedding.weight"]
    if recent_items is None:
        users = np.zeros((0, items.shape[1]), np.float32)
    else:
        users = encode_in_blocks(weights, kind, recent_items, config.heads)
    return _pack(users, items, weights["item_bias.weight"].reshape(-1, 1))


def _pack(user_factors: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "item_vectors": np.ascontiguousarray(np.hstack([item_factors, item_bias])),
        "user_vectors": np.ascontiguousarray(np.hstack([user_factors, np.ones((len(user_factors), 1), np.float32)])),
        "item_norms": np.linalg.norm(item_factors, axis=1).astype(np.float32),
    }
