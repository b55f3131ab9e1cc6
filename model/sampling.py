"""Negative sampling for ranking losses: uniform over the catalogue, reproducible from a generator."""

from __future__ import annotations

import torch


def uniform_negatives(num_items: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Item indices drawn uniformly, int64 of ``shape``.

    A draw may hit one of the user's positives (an "accidental" positive); at ML-100k's density that is
    about 6% of draws and costs less than rejecting them, as in spotlight and NCF's reference code.
    """
    return torch.randint(0, num_items, shape, generator=generator)
