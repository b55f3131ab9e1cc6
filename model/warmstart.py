"""Warm start: begin training from an earlier model's rows for the users and items it already knows.

Rows are matched by raw id (the new data's id maps differ from the old model's: ids come and go and
indices follow sorted order), copied where both models know the id, and left at their fresh random
initialisation for new users and items. Only ``mf`` is supported: the saved model is the merged
:class:`~model.networks.BiasedMF` of an ensemble of ``dim / member_dim`` members whose factors were
scaled by ``1/sqrt(members)`` (see ``MFEnsemble.merged``), so each member's rows are recovered exactly
by undoing that scale, and each member's bias starts from the merged (averaged) bias. Other kinds, or
a different ``dim``/``member_dim`` than the old model's, raise :class:`WarmStartError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from model.checkpoint import Checkpoint
from model.networks import MFEnsemble


class WarmStartError(ValueError):
    """The old model cannot initialise the new network (other kind or shape)."""


def _matches(old_ids: Sequence[str], new_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(new indices, old indices) of the ids both lists hold, int64 tensors of equal length."""
    old_index = {raw: idx for idx, raw in enumerate(old_ids)}
    pairs = [(new, old_index[raw]) for new, raw in enumerate(new_ids) if raw in old_index]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(arr[:, 0].copy()), torch.from_numpy(arr[:, 1].copy())


def warm_start(old: Checkpoint, user_ids: Sequence[str], item_ids: Sequence[str]) -> Callable[[MFEnsemble], dict]:
    """An ``init`` for :func:`model.train.fit` that copies ``old``'s rows into the new network.

    Args:
        old: the current model's checkpoint (kind ``mf``).
        user_ids, item_ids: the new data's raw ids in index order (``dataset.user_map.ids``).
    Returns:
        A callable that overwrites matching rows of a fresh :class:`MFEnsemble` in place and returns
        ``{"users": matched, "items": matched}`` (counts).
    """
    if old.kind != "mf":
        raise WarmStartError(f"warm start supports mf models only, the current model is {old.kind!r}")
    user_new, user_old = _matches(old.user_ids, user_ids)
    item_new, item_old = _matches(old.item_ids, item_ids)
    state = old.state_dict

    @torch.no_grad()
    def init(network: MFEnsemble) -> dict:
        if not isinstance(network, MFEnsemble):
            raise WarmStartError(f"warm start needs an MFEnsemble, got {type(network).__name__}")
        dim = network.members * network.member_dim
        if dim != state["user_factors.weight"].shape[1]:
            raise WarmStartError(f"the current model has dim {state['user_factors.weight'].shape[1]}, the new {dim}")
        unscale = network.members**0.5  # merged factors = member factors / sqrt(members)
        network.user_factors.weight[user_new] = state["user_factors.weight"][user_old].float() * unscale
        network.item_factors.weight[item_new] = state["item_factors.weight"][item_old].float() * unscale
        network.user_bias.weight[user_new] = state["user_bias.weight"][user_old].float().expand(-1, network.members)
        network.item_bias.weight[item_new] = state["item_bias.weight"][item_old].float().expand(-1, network.members)
        return {"users": len(user_new), "items": len(item_new)}

    init.matched = {"users": len(user_new), "items": len(item_new)}  # type: ignore[attr-defined]
    return init
