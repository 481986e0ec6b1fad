"""Statistics as pure functions on arrays: no files, no matplotlib.

Scores
    :func:`episode_window_mean` turns a run's metric rows (cumulative episode count, mean return
    of the episodes finished in each row) into "mean return of the last N episodes" after every
    row; the final training score is its last value (N = 100 by default, the usual Atari
    convention, e.g. Machado et al. 2018 report the mean of the last 100 training episodes).

Common axes
    :func:`step_resample` puts a run's curve on a shared grid step-wise: the value at ``g`` is
    the latest value logged at or before ``g``; NaN before the run's first row and after its
    last row (no extrapolation beyond a run's end).

Aggregates and uncertainty (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice", NeurIPS; the rliable library)
    IQM, median, mean and optimality gap over a ``[runs, tasks]`` score matrix, with percentile
    stratified-bootstrap CIs from ``rliable.library.get_interval_estimates``; performance
    profiles; probability of improvement; the difference of two IQMs. rliable draws its
    bootstrap indices from NumPy's *global* RNG, so every call here runs under :func:`seeded`,
    which seeds it and restores the previous state afterwards; each agent is bootstrapped in its
    own seeded call, so adding an agent to a report does not change another agent's intervals.
    ``reps`` is always an argument (rliable's 50,000 default takes minutes; 2,000 is the report
    default, tests use ~200).

Ragged data
    Matrices may be NaN-padded (a game with fewer seeds than another, a run that ended before a
    grid point). The resampling is always rliable's; the statistics it resamples are rliable's
    definitions written in NumPy so that they ignore NaN entries and run fast inside the
    bootstrap loop. On matrices without NaN they equal rliable's own functions, so point
    estimates and CIs equal a direct rliable call (tests/test_stats.py checks this). With fewer
    than two runs per task a CI is meaningless (the bootstrap can only redraw the same run):
    CIs are then NaN ("absent"), never a zero-width band.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

AGGREGATES = ("iqm", "median", "mean", "optimality_gap")
AGGREGATE_NAMES = {"iqm": "IQM", "median": "Median", "mean": "Mean", "optimality_gap": "Optimality gap"}
CI_SIZE = 0.95


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG (which rliable's bootstrap uses) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


# Scores of one run -------------------------------------------------------------------------


def episode_window_mean(episodes: np.ndarray, returns: np.ndarray, n: int) -> np.ndarray:
    """Mean return of the last ``n`` finished episodes as of each row. ``[rows]`` in and out.

    ``episodes`` is the cumulative episode count at each row; ``returns`` the mean return of the
    episodes finished since the previous row (NaN when none). A row's episodes all count at
    that row's mean (the rows keep no more detail). NaN until the first episode ends; fewer than
    ``n`` episodes so far averages all of them."""
    c, r = _row_episodes(episodes, returns)
    s = r * c  # [rows] sum of returns finished in the row
    cum_c, cum_s = np.cumsum(c), np.cumsum(s)
    # E(e) = sum of the first e episode returns: piecewise linear in e, knots at row ends.
    xp = np.concatenate([[0.0], cum_c[c > 0]])
    fp = np.concatenate([[0.0], cum_s[c > 0]])
    start = np.maximum(cum_c - n, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (cum_s - np.interp(start, xp, fp)) / np.minimum(cum_c, n)
    out[cum_c == 0] = np.nan
    return out


def _row_episodes(episodes: np.ndarray, returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(episodes finished in each row, their mean return with 0 where none): ``[rows]`` each."""
    episodes = np.asarray(episodes, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    counts = np.diff(episodes, prepend=0.0)
    has = np.isfinite(returns)
    # A row with a return but no count (a missing episodes column) still holds >= 1 episode.
    c = np.where(has, np.where(np.isfinite(counts) & (counts > 0), counts, 1.0), 0.0)
    return c, np.where(has, returns, 0.0)


def final_window(episodes: np.ndarray, returns: np.ndarray, n: int) -> tuple[float, int]:
    """(mean return of the last ``n`` episodes at the end of the run, episodes it averages).

    The same number as ``episode_window_mean(...)[-1]``, summed over the last rows only: the
    prefix-sum difference there cancels two large sums and leaves ~1e-13 of noise, which turns
    runs that all end at CartPole's 500 into "different" scores, and a probability of
    improvement of 0.5 into 0.78. Summing the window's own rows keeps equal scores equal."""
    c, r = _row_episodes(episodes, returns)
    take = np.minimum(c[::-1], np.maximum(n - (np.cumsum(c[::-1]) - c[::-1]), 0.0))  # [rows] newest first
    k = float(take.sum())
    if k == 0:
        return math.nan, 0
    return float(np.sum(r[::-1] * take) / k), int(k)


def step_resample(x: np.ndarray, y: np.ndarray, grid: np.ndarray, x_end: float | None = None) -> np.ndarray:
    """``y`` on ``grid``, step-wise: the latest ``y`` with ``x <= g``. ``[G]`` out.

    NaN before the first ``x`` and beyond ``x_end`` (default: the last ``x``): a run says
    nothing about where it never got to. ``x`` must be non-decreasing (cumulative counters)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    out = np.full(grid.shape, np.nan)
    if len(x) == 0:
        return out
    end = x[-1] if x_end is None else x_end
    idx = np.searchsorted(x, grid, side="right") - 1  # [G] last row at or before g
    ok = (idx >= 0) & (grid <= end)
    out[ok] = y[idx[ok]]
    return out


# NaN-aware rliable metrics ---------------------------------------------------------------


def nan_iqm(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean along ``axis`` ignoring NaN; equals ``scipy.stats.trim_mean(v, 0.25)``
    (rliable's ``aggregate_iqm``) on each slice's finite values. NaN where a slice is empty."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0)
    s = np.sort(a, axis=0)  # NaN sorts last
    n = np.sum(np.isfinite(a), axis=0)
    lo = np.floor(0.25 * n).astype(np.int64)  # scipy: lowercut = int(proportiontocut * nobs)
    hi = n - lo
    i = np.arange(a.shape[0]).reshape(-1, *([1] * (a.ndim - 1)))
    keep = (i >= lo) & (i < hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sum(np.where(keep, s, 0.0), axis=0) / (hi - lo)
    return np.where(n > 0, out, np.nan)


def aggregates(scores: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """[IQM, median, mean, optimality gap] of a ``[runs, tasks]`` matrix, NaN entries ignored.

    Without NaN these are exactly rliable's ``aggregate_iqm`` (25% trimmed mean of all scores),
    ``aggregate_median`` / ``aggregate_mean`` (median / mean over tasks of the per-task mean over
    runs) and ``aggregate_optimality_gap`` (gamma - mean of min(score, gamma)); they are written
    in plain NumPy because scipy's ``trim_mean`` costs ~1 ms a call and the bootstrap calls
    this thousands of times. tests/test_stats.py checks the CIs against rliable's own."""
    with _quiet():
        task_means = np.nanmean(scores, axis=0)  # [tasks]
        finite = scores[np.isfinite(scores)]
        return np.array([
            float(nan_iqm(finite, axis=0)) if finite.size else math.nan,
            float(np.nanmedian(task_means)),
            float(np.nanmean(task_means)),
            float(gamma - np.mean(np.minimum(finite, gamma))) if finite.size else math.nan,
        ])  # fmt: skip


def _iqm(scores: np.ndarray) -> np.ndarray:
    """[IQM] over all finite entries: rliable's ``aggregate_iqm`` as a 1-vector."""
    finite = scores[np.isfinite(scores)]
    return np.array([float(nan_iqm(finite, axis=0)) if finite.size else math.nan])


@contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _runs_per_task(scores: np.ndarray) -> int:
    """Largest number of finite runs any task has (the CI is absent below 2)."""
    if scores.size == 0:
        return 0
    return int(np.max(np.sum(np.isfinite(scores), axis=0)))


# Interval estimates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% CI; ``lo``/``hi`` are NaN when the CI is absent."""

    point: float
    lo: float
    hi: float

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def as_list(self) -> list[float | None]:
        return [_none(self.point), _none(self.lo), _none(self.hi)]


def _none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _interval(scores, func, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point [k], ci [2, k]) from one seeded rliable call on one score entry."""
    from rliable import library as rly

    with seeded(seed), _quiet():
        point, ci = rly.get_interval_estimates(
            {"x": scores}, func, reps=reps, confidence_interval_size=CI_SIZE
        )
    return np.atleast_1d(point["x"]), np.asarray(ci["x"]).reshape(2, -1)


def aggregate_estimates(scores: np.ndarray, reps: int, seed: int) -> dict[str, Estimate]:
    """IQM, median, mean and optimality gap of a ``[runs, tasks]`` matrix with 95% stratified-
    bootstrap CIs (absent when no task has two runs)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).any():
        return {k: Estimate(math.nan, math.nan, math.nan) for k in AGGREGATES}
    func = aggregates
    if _runs_per_task(scores) < 2:
        point = func(scores)
        return {k: Estimate(float(point[i]), math.nan, math.nan) for i, k in enumerate(AGGREGATES)}
    point, ci = _interval(scores, func, reps, seed)
    return {k: Estimate(float(point[i]), float(ci[0, i]), float(ci[1, i])) for i, k in enumerate(AGGREGATES)}


def iqm_estimate(scores: np.ndarray, reps: int, seed: int) -> Estimate:
    """IQM (over runs x tasks) with its 95% stratified-bootstrap CI."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if not np.isfinite(scores).any():
        return Estimate(math.nan, math.nan, math.nan)
    func = _iqm
    if _runs_per_task(scores) < 2:
        return Estimate(float(func(scores)[0]), math.nan, math.nan)
    point, ci = _interval(scores, func, reps, seed)
    return Estimate(float(point[0]), float(ci[0, 0]), float(ci[1, 0]))


@dataclass(frozen=True)
class Curve:
    """IQM across runs (and tasks) at each grid point, with pointwise 95% CIs. ``[G]`` each."""

    grid: np.ndarray
    iqm: np.ndarray
    lo: np.ndarray  # NaN where the CI is absent (not every run present, or a single seed)
    hi: np.ndarray
    n: np.ndarray  # finite entries (runs x tasks) behind each point
    full: np.ndarray  # bool: every run has data at this point (none has ended or not yet scored)


def curve_iqm(values: np.ndarray, grid: np.ndarray, reps: int, seed: int) -> Curve:
    """IQM curve of ``values`` ``[runs, tasks, G]`` (NaN = no data at that point; tasks with
    fewer runs are NaN-padded).

    The CI at each grid point is rliable's stratified bootstrap over runs within each task, as
    in rliable's sample-efficiency curves (``scores[..., frame]``). It is given only where every
    run has data: past the end of a short run the IQM of the remaining runs is still shown, but
    a bootstrap over a set of runs that changes along the curve would not be a CI of anything."""
    values = np.asarray(values, dtype=np.float64)
    g = values.shape[-1]

    def func(x: np.ndarray) -> np.ndarray:
        return nan_iqm(x.reshape(-1, x.shape[-1]), axis=0)  # [G]

    point = func(values)
    finite = np.isfinite(values)  # [runs, tasks, G]
    n = finite.reshape(-1, g).sum(axis=0)
    per_task = finite.sum(axis=0)  # [tasks, G] runs with data at each point
    runs_in_task = finite.any(axis=2).sum(axis=0)  # [tasks] runs with data anywhere
    full = (per_task == runs_in_task[:, None]).all(axis=0) & (n > 0)  # [G]
    lo = np.full(g, np.nan)
    hi = np.full(g, np.nan)
    with_ci = full & (per_task.max(axis=0) >= 2)  # [G] some task has >= 2 runs here
    if with_ci.any():
        _, ci = _interval(values[:, :, with_ci], func, reps, seed)
        lo[with_ci], hi[with_ci] = ci[0], ci[1]
    return Curve(grid=np.asarray(grid, dtype=np.float64), iqm=point, lo=lo, hi=hi, n=n, full=full)


# Performance profiles and probability of improvement ---------------------------------------


def _profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of finite scores above each tau: rliable's ``score_distributions``. [taus]"""
    f = scores[np.isfinite(scores)]
    if f.size == 0:
        return np.full(len(taus), np.nan)
    return np.mean(f[:, None] > taus[None, :], axis=0)


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int, seed: int) -> Curve:
    """Fraction of runs (over all tasks) scoring above each tau, with 95% CIs, as rliable's
    ``create_performance_profile`` (score distributions). ``iqm`` holds the profile."""
    from rliable import library as rly

    scores = np.asarray(scores, dtype=np.float64)
    taus = np.asarray(taus, dtype=np.float64)
    n = np.full(len(taus), np.isfinite(scores).sum())
    prof = _profile(scores, taus)
    if _runs_per_task(scores) < 2:
        nan = np.full(len(taus), np.nan)
        return Curve(grid=taus, iqm=prof, lo=nan, hi=nan.copy(), n=n, full=np.ones(len(taus), bool))
    with seeded(seed), _quiet():
        _, ci = rly.create_performance_profile({"x": scores}, taus, custom_profile_func=_profile, reps=reps)
    return Curve(
        grid=taus,
        iqm=prof,
        lo=np.asarray(ci["x"][0]),
        hi=np.asarray(ci["x"][1]),
        n=n,
        full=np.ones(len(taus), bool),
    )


def poi_per_task(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Per task the Mann-Whitney U statistic over n_x n_y, i.e. #(x_i > y_j) + 0.5 #(x_i = y_j)
    over all pairs; NaN for a task where either side has no finite run. Counted directly
    (scipy's mannwhitneyu costs ~0.5 ms a call); NaN runs are ignored."""
    probs = []
    for t in range(x.shape[1]):
        a, b = x[:, t][np.isfinite(x[:, t])], y[:, t][np.isfinite(y[:, t])]
        if a.size == 0 or b.size == 0:
            probs.append(math.nan)
            continue
        d = a[:, None] - b[None, :]  # [n_x, n_y]
        probs.append(float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / d.size))
    return probs


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement``: :func:`poi_per_task` averaged over the tasks
    where both sides have runs."""
    probs = [p for p in poi_per_task(x, y) if not math.isnan(p)]
    return float(np.mean(probs)) if probs else math.nan


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> Estimate:
    """P(X > Y): the probability that a run of X beats a run of Y on a random task, averaged
    over tasks, with a 95% CI from independently resampling the runs of X and of Y within each
    task. ``x``: ``[runs_x, tasks]``, ``y``: ``[runs_y, tasks]``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    point = _poi(x, y)
    if _runs_per_task(x) < 2 and _runs_per_task(y) < 2:
        return Estimate(point, math.nan, math.nan)
    return Estimate(point, *_two_sample_ci(x, y, _poi, reps, seed))


def _two_sample_ci(x: np.ndarray, y: np.ndarray, fn, reps: int, seed: int) -> tuple[float, float]:
    """95% CI of ``fn(x, y)`` from rliable's stratified bootstrap resampling the runs of X and of
    Y independently within each task."""
    from rliable import library as rly

    with seeded(seed), _quiet():
        _, ci = rly.get_interval_estimates({"x": [x, y]}, fn, reps=reps, confidence_interval_size=CI_SIZE)
    ci = np.asarray(ci["x"]).reshape(2, -1)
    return float(ci[0, 0]), float(ci[1, 0])


def _iqm_diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _iqm(x) - _iqm(y)


def iqm_difference(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> Estimate:
    """IQM(X) - IQM(Y) (each over runs x tasks) with a 95% CI from independently resampling the
    runs of X and of Y within each task, as :func:`probability_of_improvement` does. The CI is
    absent unless both have two runs on some task: with one side fixed the interval would show
    only the other side's spread and look tighter than it is. ``x``: ``[runs_x, tasks]``,
    ``y``: ``[runs_y, tasks]``, NaN-padded."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).any() and np.isfinite(y).any()):
        return Estimate(math.nan, math.nan, math.nan)
    point = float(_iqm_diff(x, y)[0])
    if _runs_per_task(x) < 2 or _runs_per_task(y) < 2:
        return Estimate(point, math.nan, math.nan)
    return Estimate(point, *_two_sample_ci(x, y, _iqm_diff, reps, seed))


def pad_runs(columns: list[list[float]]) -> np.ndarray:
    """``[runs, tasks]`` from per-task lists of run scores of different lengths (NaN-padded)."""
    r = max((len(c) for c in columns), default=0)
    out = np.full((r, len(columns)), np.nan)
    for j, c in enumerate(columns):
        out[: len(c), j] = c
    return out
