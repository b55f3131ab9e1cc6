"""The retrain gate's rules without training: the pair holdout, its rotation, and best-of-recent with margins."""

from __future__ import annotations

import numpy as np

from model.data import RawRatings
from model.retrain import Margins, Measured, decide, holdout_mask, holdout_seed, split_holdout


def raw_pairs(users: list[str], items: list[str], fingerprint: str = "sha256:a") -> RawRatings:
    n = len(users)
    return RawRatings(np.array(users, dtype=object), np.array(items, dtype=object), np.ones(n, np.float32),
                      np.zeros(n, np.int64), fingerprint, "test")  # fmt: skip


def test_holdout_keeps_every_row_of_a_pair_together_and_is_redrawn_per_snapshot(rng):
    users = [f"u{u}" for u in rng.integers(0, 300, 20_000)]
    items = [f"i{i}" for i in rng.integers(0, 200, 20_000)]
    raw = raw_pairs(users, items)
    held = holdout_mask(raw, 0.1, seed=7)
    assert 0.08 < held.mean() < 0.12
    pairs = {}
    for u, i, h in zip(users, items, held):
        pairs.setdefault((u, i), set()).add(bool(h))
    assert all(len(sides) == 1 for sides in pairs.values())  # repeated pairs never on both sides
    assert np.array_equal(held, holdout_mask(raw, 0.1, seed=7))  # reproducible
    other = holdout_mask(raw, 0.1, seed=holdout_seed("sha256:b"))
    assert holdout_seed("sha256:a") != holdout_seed("sha256:b") and (held != other).mean() > 0.1  # re-drawn
    eligible = np.arange(len(raw)) % 3 == 0
    only = holdout_mask(raw, 0.1, seed=7, eligible=eligible)
    assert not only[~eligible].any() and 0.08 < only.mean() < 0.12  # the share of all rows, from eligible ones
    train, test = split_holdout(raw, 0.1, seed=7)
    assert len(train) + len(test) == len(raw) and len(test) == held.sum()


def test_tiny_files_keep_a_pair_on_each_side():
    raw = raw_pairs(["a", "a", "b"], ["x", "x", "y"])
    held = holdout_mask(raw, 0.01, seed=0)
    assert held.any() and not held.all() and held[0] == held[1]


def measured(version: str, rmse_shift: float, ndcg: float, user_seed: int = 98, rows: int = 4000) -> Measured:
    rng = np.random.default_rng(0)
    actual = rng.integers(1, 6, rows).astype(np.float64)
    noise = np.random.default_rng(99).normal(0, 0.9, rows)  # the same rows are hard for every model (paired)
    per_user = np.clip(ndcg + np.random.default_rng(user_seed).normal(0, 0.2, 500), 0, 1)
    return Measured(version, actual + noise * (1 + rmse_shift), actual, per_user, {"shift": rmse_shift})


def drift(references_kept: int, runs: int = 10, step: float = 0.004) -> list[Measured]:
    """Nightly runs whose candidate is ``step`` worse than the model it replaces, on both metrics; the promoted."""
    margins = Margins(rmse=0.005, ndcg=0.005, z=2.0)
    promoted = [measured("v0", 0.0, 0.40)]
    for run in range(1, runs + 1):
        last = promoted[-1]
        shift = float(last.extra["shift"]) + step
        candidate = measured(f"v{run}", shift, 0.40 - shift)
        if decide(candidate, promoted[::-1][:references_kept], margins).promote:
            promoted.append(candidate)
    return promoted


def test_slow_drift_is_stopped_by_comparing_with_the_best_recent_version():
    """Each candidate is a little worse than the model it replaces, within the margin: against the current
    model alone all of them pass and the regressions add up; against the best of three recent versions the
    accumulated regression is refused."""
    alone, best_of_three = drift(1), drift(3)
    assert len(alone) == 11  # every run promoted: 10 x 0.004 = 0.04 of nDCG lost
    assert len(best_of_three) <= 3, [m.version for m in best_of_three]
    lost = best_of_three[0].ndcg.mean() - best_of_three[-1].ndcg.mean()
    assert lost < 0.005 + 2 * 0.2 / np.sqrt(500) * np.sqrt(2), lost  # never more than one margin


def test_margin_grows_with_the_standard_error_and_every_served_metric_counts():
    best = measured("v1", 0.0, 0.40)
    # Other users' luck (not paired): below by more than the tolerance, within two standard errors of 500 users.
    lucky = np.random.default_rng(5).permutation(best.ndcg) - 0.01
    slightly = Measured("c", best.predicted, best.actual, lucky)
    decision = decide(slightly, [best], Margins(ndcg=0.005, z=2.0))
    assert decision.promote and decision.comparisons[0]["se"] > 0
    assert not decide(slightly, [best], Margins(ndcg=0.005, z=0.0)).promote
    better_rmse_worse_ranking = measured("c", -0.2, 0.30)
    decision = decide(better_rmse_worse_ranking, [best], Margins())
    checks = {c["metric"]: c["ok"] for c in decision.comparisons}
    assert checks == {"ndcg": False, "rmse": True} and not decision.promote
    ranking_only = Measured("c", None, best.actual, best.ndcg)
    current_ranks_only = Measured("v1", None, best.actual, best.ndcg)
    assert [c["metric"] for c in decide(ranking_only, [current_ranks_only, best], Margins()).comparisons] == ["ndcg"]
    assert decide(better_rmse_worse_ranking, [best], Margins(), force=True).promote
    assert decide(better_rmse_worse_ranking, [], Margins()).reason == "no current model"


def test_a_candidate_without_a_rating_model_cannot_replace_one_that_predicts_ratings():
    """gmf (BCE) after the default mf: as good a ranker, but /predict would answer its squashed logits."""
    current = measured("v1", 0.0, 0.40)
    ranking_only = Measured("c", None, current.actual, current.ndcg + 0.05)
    decision = decide(ranking_only, [current], Margins())
    assert not decision.promote and "does not predict ratings" in decision.reason
    assert decide(ranking_only, [current], Margins(), force=True).promote


def test_a_reference_with_non_finite_figures_is_left_out_not_the_best():
    """A served model with a NaN weight measures NaN: it was taken as the best (max/min keep a NaN key) and
    every comparison with it failed, so no retrain could replace it without --force."""
    good = measured("v1", 0.0, 0.40)
    broken = Measured("v2", np.full_like(good.predicted, np.nan), good.actual, np.full_like(good.ndcg, np.nan))
    candidate = measured("c", 0.0, 0.40)
    decision = decide(candidate, [broken, good], Margins())
    assert decision.promote, decision.reason
    assert {c["best_version"] for c in decision.comparisons} == {"v1"} and "not finite: v2" in decision.reason
    alone = decide(candidate, [broken], Margins())
    assert alone.promote and alone.comparisons == [] and "v2" in alone.reason
    worse = measured("c", 0.3, 0.30)
    assert not decide(worse, [broken, good], Margins()).promote  # the finite reference still judges
    nan_candidate = Measured("c", good.predicted, good.actual, np.full_like(good.ndcg, np.nan))
    decision = decide(nan_candidate, [good], Margins())
    assert not decision.promote and "worse by nan" in decision.reason
