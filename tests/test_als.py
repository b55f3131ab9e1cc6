"""The closed-form ALS engine: its normal equations against dense numpy, its sweeps, and when it is chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import als
from model.config import ALS_MIN_ROWS, TrainConfig, validate
from model.interactions import build_dataset
from model.splits import random_split
from model.synthetic import SyntheticConfig, planted_ratings
from model.train import fit, resolve
from model.validation import rmse_mae


def random_csr(rng, rows=30, cols=20, density=0.3):
    mask = rng.random((rows, cols)) < density
    mask[3] = False  # a row without entries
    mask[5, :] = True  # a long row
    r, c = np.nonzero(mask)
    values = rng.normal(size=len(r)).astype(np.float32)
    return mask, r, c, values


def test_row_systems_equal_dense_gram_matrices_in_chunks_of_any_size(rng):
    mask, r, c, values = random_csr(rng)
    factors = torch.from_numpy(rng.normal(size=(mask.shape[1], 4)).astype(np.float32))
    offset = torch.from_numpy(rng.normal(size=mask.shape[1]).astype(np.float32))
    indptr, indices, vals = als.csr(r, c, values, mask.shape[0])
    for max_cells in (1, 7, 1 << 17):  # a chunk per row, small chunks, one chunk
        seen = []
        for rows, gram, rhs in als.row_systems(indptr, indices, vals, factors, offset, max_cells=max_cells):
            for k, row in enumerate(rows.tolist()):
                cols = np.flatnonzero(mask[row])
                f = factors.numpy()[cols]
                target = values[r == row] - offset.numpy()[cols]
                np.testing.assert_allclose(gram[k].numpy(), f.T @ f, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(rhs[k].numpy(), f.T @ target, rtol=1e-5, atol=1e-5)
                seen.append(row)
        assert sorted(seen) == sorted(set(r.tolist())), "every row with entries exactly once, empty rows never"


def test_explicit_sweep_solves_each_rows_ridge_regression(rng):
    mask, r, c, values = random_csr(rng)
    other = torch.from_numpy(rng.normal(size=(mask.shape[1], 3)).astype(np.float32))
    other_bias = torch.from_numpy(rng.normal(size=mask.shape[1]).astype(np.float32))
    out, out_bias = torch.full((mask.shape[0], 3), 9.0), torch.full((mask.shape[0],), 9.0)
    als.explicit_sweep(*als.csr(r, c, values, mask.shape[0]), other, other_bias, 0.7, 0.2, out, out_bias)
    for row in range(mask.shape[0]):
        cols = np.flatnonzero(mask[row])
        x = np.hstack([other.numpy()[cols], np.ones((len(cols), 1))])
        y = values[r == row] - other_bias.numpy()[cols]
        want = np.linalg.solve(x.T @ x + np.diag([0.7, 0.7, 0.7, 0.2]), x.T @ y) if len(cols) else np.zeros(4)
        np.testing.assert_allclose(out[row].numpy(), want[:3], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out_bias[row].item(), want[3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cg_steps", [0, 3])
def test_implicit_sweep_is_hu_koren_volinsky_over_the_whole_matrix(rng, cg_steps):
    """Exact (Cholesky), and conjugate gradient: d = 3 steps solve a 3-dimensional system exactly from any
    start (here 9.0 everywhere)."""
    mask, r, c, _ = random_csr(rng)
    other = torch.from_numpy(rng.normal(size=(mask.shape[1], 3)).astype(np.float32))
    out = torch.full((mask.shape[0], 3), 9.0)
    ones = np.ones(len(r), np.float32)
    als.implicit_sweep(*als.csr(r, c, ones, mask.shape[0])[:2], other, 4.0, 0.5, out, cg_steps=cg_steps)
    y = other.numpy().astype(np.float64)
    for row in range(mask.shape[0]):
        weight = 1.0 + 4.0 * mask[row]  # every cell: observed 1 + alpha, unobserved 1
        want = np.linalg.solve(y.T @ (weight[:, None] * y) + 0.5 * np.eye(3), y.T @ (weight * mask[row]))
        np.testing.assert_allclose(out[row].numpy(), want, rtol=1e-4, atol=1e-4)


def test_the_engine_follows_the_data_size_and_what_it_can_train():
    small, large = resolve(TrainConfig(), False, 1000), resolve(TrainConfig(), False, ALS_MIN_ROWS)
    assert (small.engine, small.rank_loss, small.dim) == ("gd", "ials", 128)
    assert (large.engine, large.rank_loss, large.dim) == ("als", "ials", 32)
    assert resolve(TrainConfig(), True, 1000).loss == "ials"  # implicit data
    distributed = resolve(TrainConfig(), False, ALS_MIN_ROWS, distributed=True)
    assert (distributed.engine, distributed.rank_loss) == ("gd", "softmax")  # what trains data-parallel
    assert resolve(TrainConfig(engine="gd"), False, 10**8).engine == "gd"  # an explicit choice wins
    with pytest.raises(ValueError, match="--engine als trains mf only"):
        validate(TrainConfig(model="gmf", engine="als"))
    with pytest.raises(ValueError, match="--loss ials needs --model mf"):
        resolve(TrainConfig(model="neumf", loss="ials"), False)


def test_als_recovers_planted_ratings_far_better_than_biases():
    raw, _ = planted_ratings(SyntheticConfig(num_users=300, num_items=150, rank=3, ratings_per_user=40, seed=5))
    data = build_dataset(raw).interactions
    train, test = random_split(data, 0.2, seed=1)
    result = fit(train, TrainConfig(engine="als", dim=8, reg=2.0, rank_loss="none"), progress=False)
    ours = rmse_mae(result.network, test, result.rating_scale)[0]
    biases = fit(train, TrainConfig(engine="als", dim=1, reg=1e6, reg_bias=2.0, rank_loss="none"), progress=False)
    baseline = rmse_mae(biases.network, test, biases.rating_scale)[0]  # factors held at ~0: biases only
    assert ours < 0.8 * baseline, (ours, baseline)
    assert result.metrics["best_epoch"] >= 2 and result.config.engine == "als"
