"""plots.stats and plots.normalize: analytic values and agreement with direct rliable calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from rliable import library as rly
from rliable import metrics

from plots import stats
from plots.normalize import ATARI_57, normalize, normalizer

REPS = 200  # fast default for tests; reports use 2000


# Agreement with rliable ----------------------------------------------------------------------


def _rliable_aggregates(x):
    return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x),
                     metrics.aggregate_optimality_gap(x)])  # fmt: skip


@pytest.mark.parametrize("shape", [(5, 3), (10, 1), (3, 4)])
def test_aggregates_equal_direct_rliable_call(shape):
    scores = np.random.default_rng(7).gamma(2.0, 0.4, size=shape)
    ours = stats.aggregate_estimates(scores, reps=REPS, seed=11)
    np.random.seed(11)
    point, ci = rly.get_interval_estimates({"a": scores}, _rliable_aggregates, reps=REPS)
    for i, k in enumerate(stats.AGGREGATES):
        assert ours[k].point == pytest.approx(point["a"][i], abs=1e-12)
        assert ours[k].lo == pytest.approx(ci["a"][0, i], abs=1e-12)
        assert ours[k].hi == pytest.approx(ci["a"][1, i], abs=1e-12)
        assert ours[k].lo <= ours[k].point <= ours[k].hi


def test_iqm_estimate_equals_rliable_and_is_reproducible_and_restores_global_rng():
    scores = np.array([[1.0], [4.0], [2.0], [8.0], [3.0]])
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    e1 = stats.iqm_estimate(scores, reps=REPS, seed=5)
    after = np.random.random()
    assert after == before  # the global RNG state is restored, callers are not perturbed
    e2 = stats.iqm_estimate(scores, reps=REPS, seed=5)
    assert e1 == e2
    np.random.seed(5)
    point, ci = rly.get_interval_estimates(
        {"a": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS
    )
    # IQM of 5 values cuts int(1.25) = 1 from each end: mean(2, 3, 4) = 3.
    assert e1.point == pytest.approx(3.0) == pytest.approx(point["a"][0])
    assert (e1.lo, e1.hi) == pytest.approx((ci["a"][0, 0], ci["a"][1, 0]))
    assert stats.iqm_estimate(scores, reps=REPS, seed=6) != e1  # the seed matters


def test_single_seed_has_no_ci():
    one = np.array([[3.0, 5.0]])  # 1 run x 2 tasks
    agg = stats.aggregate_estimates(one, reps=REPS, seed=0)
    assert agg["mean"].point == pytest.approx(4.0)
    assert all(not e.has_ci and math.isnan(e.lo) for e in agg.values())
    e = stats.iqm_estimate(np.array([[2.0]]), reps=REPS, seed=0)
    assert e.point == 2.0 and not e.has_ci
    poi = stats.probability_of_improvement(np.array([[2.0]]), np.array([[1.0]]), reps=REPS, seed=0)
    assert poi.point == 1.0 and not poi.has_ci


def test_probability_of_improvement_equals_rliable():
    rng = np.random.default_rng(3)
    x, y = rng.normal(1.0, 1.0, (5, 2)), rng.normal(0.0, 1.0, (4, 2))
    ours = stats.probability_of_improvement(x, y, reps=REPS, seed=9)
    np.random.seed(9)
    point, ci = rly.get_interval_estimates({"p": [x, y]}, metrics.probability_of_improvement, reps=REPS)
    assert ours.point == pytest.approx(point["p"]) and ours.lo == pytest.approx(ci["p"][0])
    assert ours.hi == pytest.approx(ci["p"][1])
    # Hand count for one task: P(X > Y) = #(x_i > y_j) / (n_x n_y).
    a, b = np.array([[1.0], [3.0]]), np.array([[2.0], [0.0]])
    assert stats.probability_of_improvement(a, b, reps=REPS, seed=0).point == pytest.approx(3 / 4)


def test_performance_profile_equals_rliable():
    scores = np.random.default_rng(1).uniform(0, 2, (4, 3))
    taus = np.linspace(0, 2, 11)
    ours = stats.performance_profile(scores, taus, reps=REPS, seed=2)
    np.random.seed(2)
    prof, ci = rly.create_performance_profile({"a": scores}, taus, reps=REPS)
    np.testing.assert_allclose(ours.iqm, prof["a"])
    np.testing.assert_allclose(ours.lo, ci["a"][0])
    np.testing.assert_allclose(ours.hi, ci["a"][1])
    # Analytic: at tau = 0 every run is above, at the max none is.
    assert ours.iqm[0] == 1.0 and ours.iqm[-1] == 0.0


# NaN-aware versions (ragged seeds) -----------------------------------------------------------


def test_nan_iqm_matches_scipy_trim_mean_per_column():
    a = np.random.default_rng(0).normal(size=(9, 6))
    a[7:, 1] = np.nan
    a[3:, 4] = np.nan
    a[:, 5] = np.nan
    got = stats.nan_iqm(a, axis=0)
    for j in range(5):
        col = a[:, j][np.isfinite(a[:, j])]
        assert got[j] == pytest.approx(scipy.stats.trim_mean(col, 0.25))
    assert math.isnan(got[5])


def test_ragged_matrix_aggregates_ignore_padding():
    # Task 0 has 3 runs, task 1 has 2: the padded cell must not count.
    m = stats.pad_runs([[1.0, 2.0, 3.0], [10.0, 20.0]])
    assert m.shape == (3, 2) and math.isnan(m[2, 1])
    agg = stats.aggregate_estimates(m, reps=REPS, seed=0)
    assert agg["mean"].point == pytest.approx((2.0 + 15.0) / 2)  # mean over tasks of per-task means
    assert agg["median"].point == pytest.approx((2.0 + 15.0) / 2)
    assert agg["iqm"].point == pytest.approx(scipy.stats.trim_mean([1, 2, 3, 10, 20], 0.25))
    assert agg["optimality_gap"].point == pytest.approx(1 - np.mean([1, 1, 1, 1, 1]))
    assert all(e.has_ci for e in agg.values())


# Scores of one run and resampling ------------------------------------------------------------


def test_episode_window_mean_by_hand():
    # Rows: 2 episodes averaging 10, a row with none, 3 episodes averaging 20, 1 episode of 40.
    episodes = np.array([2, 2, 5, 6])
    returns = np.array([10.0, np.nan, 20.0, 40.0])
    got = stats.episode_window_mean(episodes, returns, n=4)
    # Episodes so far: [10, 10], [10, 10], [10, 10, 20, 20, 20], [10, 10, 20, 20, 20, 40].
    np.testing.assert_allclose(got, [10.0, 10.0, (10 + 20 * 3) / 4, (20 * 3 + 40) / 4])
    assert stats.final_window(episodes, returns, 4) == (pytest.approx(25.0), 4)
    assert stats.final_window(episodes, returns, 100) == (pytest.approx(120 / 6), 6)
    none = stats.episode_window_mean(np.array([0, 0]), np.array([np.nan, np.nan]), 10)
    assert np.isnan(none).all()


def test_final_window_keeps_equal_scores_equal():
    # Two runs that both end on 100+ episodes of 500 (a solved CartPole) after different early
    # returns: their final scores must both be exactly 500, so the statistics see a tie. The
    # early sums are chosen so the running total crosses 2^21 inside the last 100 episodes, where
    # a difference of prefix sums picks up round-off (real runs: 500.0000000000003 vs 499.99...).
    finals = []
    for frac in (0.3, 0.123456789):
        returns = np.concatenate([[2**21 - 5000 * 25 + frac], np.full(30, 500.0)])  # [rows]
        episodes = np.concatenate([[1], 1 + 10 * np.arange(1, 31)])  # 10 episodes a row after the first
        v, k = stats.final_window(episodes, returns, 100)
        assert k == 100 and v == 500.0
        # The prefix-sum curve gives the same value up to its round-off.
        assert stats.episode_window_mean(episodes, returns, 100)[-1] == pytest.approx(v, rel=1e-12)
        finals.append(v)
    poi = stats.probability_of_improvement(np.array([[finals[0]]] * 3), np.array([[finals[1]]] * 3), reps=200, seed=0)
    assert poi.point == 0.5
    # On ragged rows the two computations agree.
    episodes = np.array([0, 3, 3, 7, 20, 21, 40])
    returns = np.array([np.nan, 1.5, np.nan, 7.25, 3.0, 9.0, 2.0])
    for n in (1, 5, 19, 30, 100):
        v, k = stats.final_window(episodes, returns, n)
        assert v == pytest.approx(stats.episode_window_mean(episodes, returns, n)[-1]) and k == min(n, 40)


def test_step_resample_on_ragged_curves_by_hand():
    grid = np.array([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0])
    # Run A logs at 10, 20, 30; run B is shorter (crashed after 15) and starts later.
    a = stats.step_resample(np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0]), grid)
    b = stats.step_resample(np.array([5.0, 15.0]), np.array([7.0, 9.0]), grid)
    np.testing.assert_array_equal(a, [np.nan, np.nan, 1.0, 1.0, 2.0, 2.0, 3.0])  # step-wise, held
    np.testing.assert_array_equal(b, [np.nan, 7.0, 7.0, 9.0, np.nan, np.nan, np.nan])  # nothing past its end
    # Repeated x (a counter that stalls): the latest value wins.
    c = stats.step_resample(np.array([0.0, 10.0, 10.0]), np.array([1.0, 2.0, 3.0]), np.array([10.0]))
    assert c[0] == 3.0
    # The IQM curve counts only the runs present at each point.
    curve = stats.curve_iqm(np.stack([a, b])[:, None, :], grid, reps=REPS, seed=0)
    np.testing.assert_array_equal(curve.n, [0, 1, 2, 2, 1, 1, 1])
    np.testing.assert_allclose(curve.iqm[[1, 2, 3, 4]], [7.0, 4.0, 5.0, 2.0])
    assert np.isnan(curve.iqm[0]) and np.isnan(curve.lo[1])  # one run: no CI
    assert curve.lo[2] <= curve.iqm[2] <= curve.hi[2]


def test_curve_ci_equals_rliable_on_full_arrays():
    vals = np.random.default_rng(4).normal(size=(5, 1, 7))
    curve = stats.curve_iqm(vals, np.arange(7.0), reps=REPS, seed=3)
    np.random.seed(3)
    point, ci = rly.get_interval_estimates(
        {"a": vals},
        lambda s: np.array([metrics.aggregate_iqm(s[..., t]) for t in range(s.shape[-1])]),
        reps=REPS,
    )
    np.testing.assert_allclose(curve.iqm, point["a"])
    np.testing.assert_allclose(curve.lo, ci["a"][0])
    np.testing.assert_allclose(curve.hi, ci["a"][1])


# Normalisation -------------------------------------------------------------------------------


def test_human_normalised_scores_by_hand():
    # breakout: random 1.7, human 30.5 -> (30.5 - 1.7) / 28.8 = 1 at human level.
    assert normalize("breakout", 30.5) == pytest.approx(1.0)
    assert normalize("breakout", 1.7) == pytest.approx(0.0)
    assert normalize("breakout", 414.66) == pytest.approx((414.66 - 1.7) / 28.8)
    # pong: random -20.7, human 14.6 -> a perfect 21 is (21 + 20.7) / 35.3.
    assert normalize("pong", 21.0) == pytest.approx(41.7 / 35.3)
    # ms_pacman, spelled the ALE/gym way too.
    assert normalize("ms_pacman", 6951.6) == pytest.approx(1.0)
    assert normalize("ALE/MsPacman-v5", 307.3) == pytest.approx(0.0)
    # skiing has negative scores: random -17098.1, human -4336.9.
    assert normalize("skiing", -10717.5) == pytest.approx(0.5)
    assert len(ATARI_57) == 57


def test_min_max_and_unknown_games():
    n = normalizer("puffer_breakout", "puffer")
    assert n.kind == "min-max" and (n.lo, n.hi) == (0.805, 864.0)  # measured random mean to the game's maximum
    assert normalize("puffer_breakout", (0.805 + 864) / 2, "puffer") == pytest.approx(0.5)
    assert normalizer("puffer_snake", "puffer") is None  # no stated range
    assert math.isnan(normalize("puffer_snake", 3.0, "puffer"))
    assert normalizer("pong", "puffer") is None  # a non-ALE family never takes the Atari table
