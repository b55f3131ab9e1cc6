"""MF recovers planted low-rank ratings; training is deterministic; divergence is reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.evaluate import mae, predict_ratings, rmse
from model.interactions import build_dataset
from model.splits import random_split
from model.synthetic import SyntheticConfig, planted_ratings
from model.train import TrainConfig, TrainingDiverged, fit


def test_mf_recovers_planted_ratings_close_to_noise_level():
    cfg = SyntheticConfig(num_users=400, num_items=200, rank=3, ratings_per_user=50, noise=0.25, seed=5)
    raw, truth = planted_ratings(cfg)
    ds = build_dataset(raw)
    train, test = random_split(ds.interactions, 0.1, seed=1)
    result = fit(train, TrainConfig(dim=16, seed=0), progress=False)
    pred = np.clip(predict_ratings(result.network, test), 1, 5)
    baseline = rmse(np.full(len(test), train.ratings.mean()), test.ratings)
    got = rmse(pred, test.ratings)
    # The noise sets the floor (0.25); a global-mean baseline is far above it.
    assert got < 1.35 * cfg.noise, (got, baseline)
    assert got < 0.5 * baseline
    # Against the noiseless truth the model is closer still.
    users = np.array(ds.user_map.decode(test.user_idx))
    items = np.array(ds.item_map.decode(test.item_idx))
    true_vals = truth[[int(u[1:]) for u in users], [int(i[1:]) for i in items]]
    assert rmse(pred, true_vals) < got
    assert result.metrics["val_rmse"] < 1.35 * cfg.noise
    assert 0 < result.metrics["best_epoch"] <= result.metrics["epochs_run"]


def test_same_seed_same_model(small_dataset):
    cfg = TrainConfig(dim=4, epochs=3, seed=7)
    a = fit(small_dataset.interactions, cfg, progress=False).network.state_dict()
    b = fit(small_dataset.interactions, cfg, progress=False).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = fit(small_dataset.interactions, TrainConfig(dim=4, epochs=3, seed=8), progress=False).network.state_dict()
    assert not torch.equal(a["user_factors.weight"], c["user_factors.weight"])


def test_full_batch_gradient_descent_and_no_validation(small_dataset):
    result = fit(
        small_dataset.interactions,
        TrainConfig(dim=4, epochs=30, lr=0.05, batch_size=0, val_fraction=0, rank_loss="none"),
        progress=False,
    )
    assert len(result.history) == 30 and "val_rmse" not in result.metrics
    assert result.history[-1]["train_rmse"] < result.history[0]["train_rmse"]


def test_diverging_loss_is_reported(small_dataset):
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        fit(small_dataset.interactions, TrainConfig(dim=8, epochs=5, lr=1e30), progress=False)


def test_rmse_and_mae_by_hand():
    assert rmse(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(np.sqrt((1 + 4) / 2))
    assert mae(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(1.5)


def test_ensemble_loss_gradient_equals_autograd_of_its_definition():
    """The MF ensemble's hand-written backward (losses.EnsembleSquaredError) against autograd through the
    definition it replaces: members' MSE summed, plus the weighted L2 of the looked-up rows."""
    from model.losses import EnsembleSquaredError
    from model.networks import MFEnsemble

    torch.manual_seed(0)
    net = MFEnsemble(30, 40, members=4, member_dim=3, global_mean=3.0).double()
    u, i = torch.randint(0, 30, (50,)), torch.randint(0, 40, (50,))
    r = torch.rand(50, dtype=torch.float64) * 4 + 1
    wu, wi = torch.rand(30, dtype=torch.float64), torch.rand(40, dtype=torch.float64)
    reg, reg_bias = 0.7, 0.3

    def by_definition():
        pu, qi, bu, bi = net.user_factors(u), net.item_factors(i), net.user_bias(u), net.item_bias(i)
        out = net.member_outputs(u, i)
        factors = (pu.pow(2).sum(-1) * wu[u] + qi.pow(2).sum(-1) * wi[i]) * reg
        biases = (bu.pow(2).sum(-1) * wu[u] + bi.pow(2).sum(-1) * wi[i]) * reg_bias
        return (out - r[:, None]).pow(2).mean(0).sum() + (factors + biases).mean()

    def fused():
        rows = (net.user_factors(u), net.item_factors(i), net.user_bias(u), net.item_bias(i), net.global_bias)
        return EnsembleSquaredError.apply(*rows, r, wu[u], wi[i], net.members, reg, reg_bias)[0] * 1.5

    results = []
    for loss_fn, scale in ((by_definition, 1.5), (fused, 1.0)):
        net.zero_grad()
        loss = loss_fn() * scale
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert len(grads_a) == 5
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)
        assert a.abs().sum() > 0
