"""Deterministic synthetic ratings with a known answer: planted low-rank structure, noise, popularity skew.

It is the built-in default data set (``scripts/train.py`` without ``--data``) and the test fixture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from model.raw import RawRatings, sorted_vocab


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 1000
    num_items: int = 500
    rank: int = 4
    ratings_per_user: int = 40
    noise: float = 0.3  # std of the Gaussian noise: the best achievable RMSE
    popularity_skew: float = 0.8  # Zipf exponent of item sampling; 0 = uniform
    seed: int = 0


def planted_ratings(cfg: SyntheticConfig = SyntheticConfig()) -> tuple[RawRatings, np.ndarray]:
    """Generate ratings ``r = 3 + b_u + b_i + U_u . V_i + noise`` on a continuous 1..5 scale.

    Returns:
        (raw ratings with ids ``u<k>`` / ``i<k>``, the noiseless rating matrix (num_users, num_items)).
        Rows cover each user ``ratings_per_user`` distinct items drawn with a Zipf popularity skew.
    """
    rng = np.random.default_rng(cfg.seed)
    u = rng.normal(0, 1, (cfg.num_users, cfg.rank)) / np.sqrt(cfg.rank)
    v = rng.normal(0, 1, (cfg.num_items, cfg.rank)) / np.sqrt(cfg.rank)
    truth = 3.0 + rng.normal(0, 0.3, (cfg.num_users, 1)) + rng.normal(0, 0.3, (1, cfg.num_items)) + u @ v.T
    truth = np.clip(truth, 1.0, 5.0)
    popularity = 1.0 / np.arange(1, cfg.num_items + 1) ** cfg.popularity_skew
    popularity = rng.permutation(popularity / popularity.sum())
    per_user = min(cfg.ratings_per_user, cfg.num_items)
    users = np.repeat(np.arange(cfg.num_users), per_user)
    items = np.concatenate(
        [rng.choice(cfg.num_items, per_user, replace=False, p=popularity) for _ in range(cfg.num_users)]
    )
    noisy = truth[users, items] + rng.normal(0, cfg.noise, len(users))
    fingerprint = "synthetic:" + hashlib.sha256(repr(sorted(asdict(cfg).items())).encode()).hexdigest()
    raw = RawRatings.from_codes(
        *sorted_vocab(users, [f"u{k}" for k in range(cfg.num_users)]),
        *sorted_vocab(items, [f"i{k}" for k in range(cfg.num_items)]),
        ratings=np.clip(noisy, 1.0, 5.0).astype(np.float32),
        timestamps=np.arange(len(users), dtype=np.int64),
        fingerprint=fingerprint,
        source=f"synthetic(seed={cfg.seed})",
    )
    return raw, truth


def clustered_factors(
    rng: np.random.Generator, dim: int = 64, rank: int = 16, clusters: int = 1024
) -> Callable[..., np.ndarray]:
    """A generator of embedding rows shaped like trained MF factors, for serving benchmarks: clustered
    rank-``rank`` structure in ``dim`` dimensions, a little isotropic noise, log-normal norms.

    Draws the shared basis and cluster centres from ``rng`` now; ``factors(n, scale=0.3)`` then draws
    ``n`` rows (float32) from the same ``rng``."""
    basis = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(rank)
    centers = rng.normal(size=(clusters, rank)).astype(np.float32)

    def factors(n: int, scale: float = 0.3) -> np.ndarray:
        latent = centers[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, rank)).astype(np.float32)
        out = latent @ basis + 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
        return (out * scale * rng.lognormal(0, 0.3, size=(n, 1))).astype(np.float32)

    return factors
