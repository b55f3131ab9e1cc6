"""Deterministic synthetic ratings with a known answer: planted low-rank structure, noise, popularity skew.

It is the built-in default data set (``scripts/train.py`` without ``--data``) and the test fixture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model.keys import sorted_unique
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


@dataclass(frozen=True)
class MovieLensShape:
    """A MovieLens-20M-shaped data set (the defaults are ML-20M's sizes); every field one knob.

    Popularity is Zipf-Mandelbrot, ``p(rank) ~ (rank + popularity_offset * num_items) ** -exponent``: with
    the defaults the top item is rated by about half the users and the median item by a few dozen, as in
    ML-20M. Activity is ``min_per_user`` plus a log-normal share of the rest (ML-20M: mean 144, median 68).
    """

    num_users: int = 138_493
    num_items: int = 26_744
    num_ratings: int = 20_000_263
    min_per_user: int = 20
    max_user_share: float = 0.35  # most items one user rates, as a share of the catalogue (ML-20M: 9,254)
    activity_sigma: float = 1.4
    popularity_exponent: float = 2.1
    popularity_offset: float = 0.0112  # as a share of num_items (300 ranks at ML-20M's 26,744)
    rank: int = 8
    mean: float = 3.3
    bias_std: float = 0.4
    taste_std: float = 0.6  # std of the planted user . item term
    noise: float = 0.6  # Gaussian noise added before rounding to half stars
    seed: int = 0
    start: int = 789_652_009  # 1995-01-09, ML-20M's first timestamp
    end: int = 1_427_784_002  # 2015-03-31, its last


@dataclass
class ScaledRatings:
    """Rows of :func:`movielens_like`, grouped by user in time order, plus the planted model.

    Attributes:
        user_idx, item_idx: shape (n,), int32, 0-based (written out as 1-based ``userId``/``movieId``).
        ratings: shape (n,), float32, on the half-star grid 0.5..5.0.
        timestamps: shape (n,), int64 seconds, strictly increasing within each user.
        user_bias (U,), item_bias (I,), user_factors (U, rank), item_factors (I, rank): float32, and
        ``mean``: the planted model; :meth:`expected` evaluates it.
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    def expected(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The planted (noiseless, unrounded) rating of ``rows``, float32."""
        u, i = self.user_idx[rows], self.item_idx[rows]
        taste = np.einsum("nr,nr->n", self.user_factors[u], self.item_factors[i])
        return (self.mean + self.user_bias[u] + self.item_bias[i] + taste).astype(np.float32)


def movielens_like(shape: MovieLensShape = MovieLensShape()) -> ScaledRatings:
    """Generate ``shape.num_ratings`` distinct (user, item) ratings, vectorised (no loop per user).

    Each user's items are drawn from the popularity distribution without replacement (rejection rounds
    over the users still short). About 20-25 s and 1.3 GB peak at the ML-20M defaults.
    """
    if not shape.min_per_user * shape.num_users <= shape.num_ratings <= _max_per_user(shape) * shape.num_users:
        raise ValueError(f"{shape.num_ratings} ratings do not fit {shape.num_users} users x {shape.num_items} items")
    rng = np.random.default_rng(shape.seed)
    counts = _activity(shape, rng)
    popularity = _popularity(shape, rng)
    user_idx, item_idx = _distinct_items(counts, popularity, rng)
    order = np.argsort(user_idx + rng.random(len(user_idx)))  # random (chronological) order within a user
    user_idx, item_idx = user_idx[order], item_idx[order]
    del order
    out = ScaledRatings(user_idx, item_idx, np.empty(0, np.float32), np.empty(0, np.int64), shape.mean,
                        *_planted(shape, popularity, rng))  # fmt: skip
    out.ratings = _rate(out, shape.noise, rng)
    out.timestamps = _timestamps(shape, counts, rng)
    return out


def _max_per_user(shape: MovieLensShape) -> int:
    return max(shape.min_per_user, int(shape.max_user_share * shape.num_items))


def _activity(shape: MovieLensShape, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user, shape (U,), int64, each in [min, max], summing exactly to ``num_ratings``."""
    weight = rng.lognormal(0.0, shape.activity_sigma, shape.num_users)
    room, extra = _max_per_user(shape) - shape.min_per_user, shape.num_ratings - shape.min_per_user * shape.num_users
    lo, hi = 0.0, extra / weight.min() + 1.0
    for _ in range(60):  # bisect the scale whose capped, floored shares come closest below ``extra``
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(room, np.floor(weight * mid)).sum() <= extra else (lo, mid)
    share = np.minimum(room, np.floor(weight * lo)).astype(np.int64)
    short = extra - share.sum()
    share[rng.choice(np.flatnonzero(share < room), short, replace=False)] += 1
    return shape.min_per_user + share


def _popularity(shape: MovieLensShape, rng: np.random.Generator) -> np.ndarray:
    """Item sampling probabilities, shape (I,), float64, Zipf-Mandelbrot over a random item order."""
    rank = np.arange(1, shape.num_items + 1, dtype=np.float64)
    p = (rank + shape.popularity_offset * shape.num_items) ** -shape.popularity_exponent
    return rng.permutation(p / p.sum())


def _distinct_items(counts: np.ndarray, p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[u]`` distinct items for every user ~ ``p`` without replacement; (users, items) int32,
    sorted by user. Each round draws, for the users still short, enough to cover the shortfall given how
    much popularity mass they already hold, and drops repeats."""
    n_items, cdf = len(p), np.cumsum(p)
    keys, need = np.zeros(0, np.int64), counts.copy()
    for _ in range(100):
        users = np.flatnonzero(need)
        if not len(users):
            break
        held = np.bincount(keys // n_items, weights=p[keys % n_items], minlength=len(counts))[users]
        draws = np.ceil(need[users] / np.maximum(1.0 - held, 1e-3) * 1.1 + 2).astype(np.int64)
        cand_user = np.repeat(users, draws)
        cand_item = np.minimum(np.searchsorted(cdf, rng.random(len(cand_user)) * cdf[-1]), n_items - 1)
        cand = sorted_unique(cand_user * n_items + cand_item)
        if len(keys):
            at = np.minimum(np.searchsorted(keys, cand), len(keys) - 1)
            cand = cand[keys[at] != cand]
        cand = cand[_first_per_user(cand // n_items, need, rng)]
        need -= np.bincount(cand // n_items, minlength=len(counts))
        keys = np.sort(np.concatenate([keys, cand]), kind="stable")  # timsort: a linear merge of two runs
    if need.any():
        raise RuntimeError("could not draw enough distinct items; lower max_user_share or flatten popularity")
    return (keys // n_items).astype(np.int32), (keys % n_items).astype(np.int32)


def _first_per_user(users: np.ndarray, need: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of up to ``need[u]`` random candidates of each user; ``users`` sorted, shape (m,)."""
    shuffled = np.argsort(users + rng.random(len(users)))  # still grouped by user, random within
    start = np.searchsorted(users, users)  # first position of each candidate's user
    rank = np.arange(len(users)) - start
    return np.sort(shuffled[rank < need[users]])


def _planted(shape: MovieLensShape, popularity: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(user_bias, item_bias, user_factors, item_factors), float32; popular items rate a little higher."""
    log_pop = np.log(popularity)
    item_bias = rng.normal(0, shape.bias_std, shape.num_items) + 0.1 * (log_pop - log_pop.mean()) / log_pop.std()
    scale = np.sqrt(shape.taste_std / np.sqrt(shape.rank))  # each of rank products has variance scale**4
    user_factors = rng.normal(0, scale, (shape.num_users, shape.rank))
    item_factors = rng.normal(0, scale, (shape.num_items, shape.rank))
    user_bias = rng.normal(0, shape.bias_std, shape.num_users)
    return tuple(a.astype(np.float32) for a in (user_bias, item_bias, user_factors, item_factors))


def _rate(data: ScaledRatings, noise: float, rng: np.random.Generator, block: int = 1 << 21) -> np.ndarray:
    """Planted rating + noise, rounded to half stars in [0.5, 5.0]; float32, in blocks to bound memory."""
    out = np.empty(len(data.user_idx), np.float32)
    for start in range(0, len(out), block):
        rows = slice(start, start + block)
        noisy = data.expected(rows) + rng.normal(0, noise, len(out[rows])).astype(np.float32)
        out[rows] = np.clip(np.round(noisy * 2) / 2, 0.5, 5.0)
    return out


def _timestamps(shape: MovieLensShape, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-user increasing seconds: a start time, then log-normal gaps (bursts of a session, long pauses)."""
    gaps = np.maximum(1, rng.lognormal(np.log(120.0), 2.5, int(counts.sum()))).astype(np.int64)
    clock = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    elapsed = clock - np.repeat(clock[first] - gaps[first], counts)  # restart the clock at each user
    span = np.minimum(elapsed[np.cumsum(counts) - 1], shape.end - shape.start)
    begin = shape.start + (rng.random(len(counts)) * (shape.end - shape.start - span)).astype(np.int64)
    return np.repeat(begin, counts) + elapsed


def write_ratings(data: ScaledRatings, path: str | Path) -> Path:
    """Write ``userId,movieId,rating,timestamp`` (1-based ids) as MovieLens ``ratings.csv`` or, for a
    ``.parquet`` name (any case), Parquet with the same columns (:func:`model.columnar.write_table`)."""
    import pyarrow as pa

    from model.columnar import write_table

    columns = {"userId": data.user_idx + 1, "movieId": data.item_idx + 1, "rating": data.ratings,
               "timestamp": data.timestamps}  # fmt: skip
    return write_table(pa.table({name: pa.array(values) for name, values in columns.items()}), path)


def as_raw(data: ScaledRatings, source: str = "movielens_like") -> RawRatings:
    """The rows as :class:`RawRatings` with the ids a written file would carry (``"1"``, ``"2"``, ...)."""
    users = sorted_vocab(data.user_idx, [str(k + 1) for k in range(len(data.user_bias))])
    items = sorted_vocab(data.item_idx, [str(k + 1) for k in range(len(data.item_bias))])
    digest = hashlib.sha256(data.ratings.tobytes() + data.user_idx.tobytes() + data.item_idx.tobytes())
    return RawRatings.from_codes(
        *users, *items, data.ratings, data.timestamps, "synthetic:" + digest.hexdigest(), source
    )
