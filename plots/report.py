"""``bench report``: run folders -> ``figures/``, ``summary.md``, ``summary.json``, ``index.html``,
``runs.csv``.

:func:`compute` turns loaded runs into a :class:`Numbers` record (no matplotlib), :func:`draw`
turns that into figures (:func:`figure_caption` says how to read each). Writers are modules of
their own, each with ``render(num, out) -> str`` and one line in :func:`build_report`:
:mod:`plots.report_md` (summary.md), :mod:`plots.report_json` (summary.json),
:mod:`plots.report_html` (index.html, one self-contained page); the tables they share are laid
out once in :mod:`plots.report_tables`. Definitions the report states in its header:

* a run's **final score** is the mean return of its last N training episodes (N = 100 unless
  ``--last-episodes`` says otherwise), or its last evaluation score when every run of that game
  has one (``--score auto``; ``train`` / ``eval`` force one source);
* learning curves show the same last-N-episode training mean after every metric row, resampled
  step-wise onto a grid shared by all runs of a game (and, normalised, across games), never
  beyond a run's last row;
* aggregates are over runs (seeds), with 95% stratified-bootstrap CIs from rliable (``--reps``
  draws, ``--seed``); with a single seed the CI is absent and the tables say so;
* runs with different protocols (within a game) or hardware are not pooled: the report refuses
  unless ``--allow-mixed``, and then marks every table.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import UserError
from plots import stats
from plots.load import Run, load_runs, tidy
from plots.normalize import normalizer
from plots.references import Reference, references_for
from plots.stats import Curve, Estimate

AXES = {  # key: (metric column, panel title, x label, tick kind)
    "wall": ("wall_s", "vs training wall clock", "training wall clock", "time"),
    "frames": ("frames", "vs env frames", "env frames (env steps x frameskip)", "count"),
    "grad": ("grad_samples", "vs gradient samples", "gradient samples (transitions x uses)", "count"),
}


@dataclass
class Options:
    out: Path
    reps: int = 2000  # bootstrap draws per interval
    seed: int = 0  # seeds NumPy's global RNG for every bootstrap
    last_episodes: int = 100  # N in "mean return over the last N episodes"
    allow_mixed: bool = False  # pool runs of different protocols / hardware (and say so)
    score: str = "auto"  # "auto" | "train" | "eval"
    grid_points: int = 200  # points of the common grids
    formats: tuple[str, ...] = ("png", "pdf")  # figure files written
    command: str | None = None
    suite: str | None = None  # aggregate over this named suite's games only (envs.suites)


@dataclass
class RunScore:
    final: float  # raw final score (NaN: no finished episode / no evaluation)
    source: str  # "train" | "eval"
    episodes: int  # episodes behind it
    normalized: float  # NaN when the game has no normaliser


@dataclass
class GroupRow:
    """One (label, game) cell of the summary tables."""

    label: str
    game: str
    runs: list[Run]
    scored: int  # runs with a final score
    final: Estimate  # IQM of raw final scores over runs
    normalized: Estimate
    source: str
    sps: float
    reuse_ratio: float
    wall_s: float
    env_steps: float
    frames: float
    grad_samples: float
    train_flops: float
    horizon: float | None
    phase_s: dict[str, float]
    mfu: dict[str, float] = field(default_factory=dict)  # "mfu", "mfu_learn": means over runs


@dataclass
class Numbers:
    opts: Options
    runs: list[Run]
    skipped: list[tuple[Path, str]]
    scores: dict[Path, RunScore]
    labels: list[str]
    games: list[str]
    rows: list[GroupRow]
    mixed: list[str]  # why the runs are not poolable (empty: they are)
    notes: list[str]
    agg_games: list[str]  # games in the cross-game aggregates (normalisable, run by every label)
    aggregates: dict[str, dict[str, Estimate]]
    profiles: dict[str, Curve]
    poi: list[tuple[str, str, Estimate]]
    curves: dict[str, dict[str, dict[str, Curve]]]  # game -> axis -> label -> curve
    curve_runs: dict[str, dict[str, int]]  # game -> label -> runs with a curve
    curve_missing: dict[str, dict[str, dict[str, str]]]  # game -> axis -> label -> why absent
    curve_log: dict[str, dict[str, bool]]  # game -> axis -> log-spaced grid
    agg_curves: dict[str, dict[str, Curve]]  # axis -> label -> normalised curve
    agg_log: dict[str, bool]  # axis -> log-spaced grid
    sweeps: dict[str, dict[str, list]]  # "reuse" | "horizon" -> panel title -> [SweepPoint]
    sweep_skipped: dict[str, str]
    figures: list[Path] = field(default_factory=list)
    figures_skipped: dict[str, str] = field(default_factory=dict)
    code_differed: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, why): not a clean commit


# Numbers -----------------------------------------------------------------------------------


def final_score(run: Run, n: int, source: str) -> RunScore:
    norm = normalizer(run.game, run.family)
    if source == "eval":
        ev = run.evals.get("eval_return_mean", np.zeros(0))
        k = run.evals.get("eval_episodes", np.zeros(0))
        ok = np.isfinite(ev)
        if ok.any():
            i = np.flatnonzero(ok)[-1]
            v = float(ev[i])
            eps = int(k[i]) if len(k) and math.isfinite(k[i]) else 0
            return RunScore(v, "eval", eps, float(norm(v)) if norm else math.nan)
        return RunScore(math.nan, "eval", 0, math.nan)
    m = run.metrics
    v, eps = stats.final_window(m.get("episodes", np.zeros(0)), m.get("episode_return", np.zeros(0)), n)
    return RunScore(v, "train", eps, float(norm(v)) if norm and math.isfinite(v) else math.nan)


def capped_eval_warning(run: Run, scored_by_eval: bool) -> str | None:
    """A warning when evaluations of ``run`` hit their step cap with episodes unfinished (eval.csv
    ``eval_episodes_capped`` > 0): those episodes are left out of the evaluation mean, which then
    favours short episodes. None when none did (or the run predates the column)."""
    capped = np.nan_to_num(run.evals.get("eval_episodes_capped", np.zeros(0)))
    if not (capped > 0).any():
        return None
    final = " including the last, which gives its final score" if scored_by_eval and capped[-1] > 0 else ""
    return (
        f"WARNING {run.path}: {int((capped > 0).sum())} of {len(capped)} evaluation(s){final} hit the "
        f"evaluation step cap with {int(capped.sum())} episode(s) unfinished; their returns are left out "
        "of eval_return_mean (biased towards short episodes; partial returns in eval_capped_return_mean)"
    )


# A run whose process got less than this share of its cores' time while its training clock ran
# (compute.json cpu_share) shared them with something else, and its wall-clock budget bought less
# compute than its peers'. Quiet runs read 0.98 to 1.0 at 1 and 2 threads (README, Units), so 0.9
# flags contention, not the harness's own idle moments.
CPU_SHARE_MIN = 0.9


# A run below CPU_SHARE_MIN whose threads waited for a core less than this fraction of its training
# wall clock was not crowded out: it simply left cores idle (a one-thread workload such as the
# random agent given 2 threads, or an env-bound loop). cpu_wait_s (Linux schedstat) tells the two
# apart; where it is unknown every low share is flagged.
CPU_WAIT_MAX = 0.05


def _starved(run: Run) -> bool:
    """``run`` got under :data:`CPU_SHARE_MIN` of its cores and (where known) waited for them."""
    share = run.cpu_share
    if share is None or share >= CPU_SHARE_MIN:
        return False
    wait, wall = run.compute.get("cpu_wait_s"), float(run.compute.get("cpu_wall_s") or 0.0)
    return not isinstance(wait, (int, float)) or wall <= 0 or wait > CPU_WAIT_MAX * wall


def low_cpu_share(runs: list[Run]) -> list[Run]:
    """The runs whose compute.json ``cpu_share`` is below :data:`CPU_SHARE_MIN` because they waited
    for their cores (runs made before it was recorded are never flagged)."""
    return [r for r in runs if _starved(r)]


def cpu_share_warning(run: Run) -> str | None:
    """A warning when ``run`` got less than :data:`CPU_SHARE_MIN` of its cores during training (an
    equal-wall-clock comparison is fair only when nothing else ran); a plain note when it left
    cores idle without waiting for them; None otherwise."""
    share = run.cpu_share
    if share is None or share >= CPU_SHARE_MIN:
        return None
    c = run.compute
    cores = c.get("cpu_share_cores") or c.get("cores") or "?"
    kind = "pinned " if run.config["run"].get("pinned") else ""
    cpu_s, wall_s = float(c.get("cpu_s") or 0.0), float(c.get("cpu_wall_s") or 0.0)
    if not _starved(run):
        return (f"{run.path}: used {100 * share:.0f}% of its {cores} {kind}core(s) (cpu_s {cpu_s:.1f} over "
                f"{wall_s:.1f} s) but waited only {float(c['cpu_wait_s']):.1f} s for them: it left cores idle "
                "(its work does not keep every thread busy), it was not crowded out")  # fmt: skip
    load = ""
    if isinstance(c.get("load_1m_mean"), (int, float)):
        load = f"; machine load 1m mean {c['load_1m_mean']:.1f} on {c.get('machine_cpus') or '?'} cpus"
    return (f"WARNING {run.path}: got {100 * share:.0f}% of its {cores} {kind}core(s) (cpu_s {cpu_s:.1f} over "
            f"{wall_s:.1f} s of training wall clock{load}): its wall-clock budget bought less compute than "
            "its peers'")  # fmt: skip


def inactive_option_notes(runs: list[Run]) -> list[str]:
    """One note per (label, game) whose runs recorded agent options with no effect on that game's
    observations (config.json ``inactive_options``, e.g. BTR's ``impala`` on a vector game), so a
    switch that did nothing is never read as a result."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in runs:
        found[(r.label, r.game)].update(r.config.get("inactive_options") or [])
    return [f"{lab} on {g}: options with no effect on this game's observations: {', '.join(sorted(names))} "
            "(config.json inactive_options)" for (lab, g), names in sorted(found.items()) if names]  # fmt: skip


def tuned_preset_notes(runs: list[Run]) -> list[str]:
    """One note per label saying which ran a tuned preset (config.json ``preset``, from ``bench
    tune``) and with what tuning budget, when any run did; labels without one are named too, so
    "tuned vs untuned" is never read as an equal-tuning comparison."""
    from bench.preset import Preset

    found: dict[str, set[str]] = defaultdict(set)
    untuned: set[str] = set()
    for r in runs:
        rec = r.config.get("preset")
        if not isinstance(rec, dict):
            untuned.add(r.label)
            continue
        pre = Preset(path=str(rec.get("file")), agent=str(rec.get("agent")), values=rec.get("values") or {},
                     tune=rec.get("tuning") or {})  # fmt: skip
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in pre.values.items())
        over = [k for k, v in pre.values.items() if k in r.agent_config and r.agent_config[k] != v]
        over_txt = f"; given explicitly instead: {', '.join(over)}" if over else ""
        found[r.label].add(f"{pre.path} ({pre.budget_text()}; {values}{over_txt})")
    if not found:
        return []
    notes = [f"{lab}: tuned preset {'; '.join(sorted(v))}" for lab, v in sorted(found.items())]
    notes += [f"{lab}: no tuned preset (the agent's defaults and family presets)" for lab in sorted(untuned - set(found))]
    return notes


def code_differences(runs: list[Run]) -> list[tuple[Path, str]]:
    """(run folder, why) for each run whose code was not a clean commit: config.json
    ``fingerprint.git_commit`` ends in ``-dirty`` (uncommitted changes when it started), or the
    folder holds a ``code.diff`` (the harness's copy of those changes). Their commit alone does
    not reproduce their numbers, so the report lists them."""
    out = []
    for r in runs:
        why = []
        commit = str(r.fingerprint.get("git_commit") or "")
        if commit.endswith("-dirty"):
            why.append(f"git_commit {commit}: uncommitted changes")
        diff = r.path / "code.diff"
        if diff.is_file():
            why.append(f"{diff.name} in the run folder ({diff.stat().st_size:,} bytes)")
        if why:
            out.append((r.path, "; ".join(why)))
    return out


def has_eval(run: Run) -> bool:
    return bool(np.isfinite(run.evals.get("eval_return_mean", np.zeros(0))).any())


def mixing(runs: list[Run]) -> list[str]:
    """Reasons the runs cannot be pooled: several protocols within a game, several hardware
    fingerprints. Empty when they can."""
    out = []
    by_game: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_game[r.game][r.protocol_id].append(r)
    for game, ids in sorted(by_game.items()):
        if len(ids) > 1:
            variants = list(ids.values())
            keys = sorted({k for v in variants for k in v[0].protocol} | {"frameskip"})
            differ = [k for k in keys if len({json.dumps(v[0].protocol.get(k), sort_keys=True, default=str)
                                               for v in variants}) > 1]  # fmt: skip
            desc = "; ".join(f"{v[0].protocol_name}#{v[0].protocol_id} ({len(v)} runs, e.g. {v[0].path})"
                             for v in variants)  # fmt: skip
            out.append(
                f"{game} has {len(ids)} protocols (differ in {', '.join(differ) or 'env card'}): {desc}"
            )
    hw: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        hw[r.hardware].append(r)
    if len(hw) > 1:
        desc = "; ".join(f"'{k}' ({len(v)} runs, e.g. {v[0].path})" for k, v in sorted(hw.items()))
        out.append(f"{len(hw)} hardware fingerprints: {desc}")
    return out


def _mean(v: list[float]) -> float:
    f = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(f)) if f else math.nan


def _sig(v: float, digits: int = 2) -> float:
    if v == 0 or not math.isfinite(v):
        return v
    return round(v, -math.floor(math.log10(abs(v))) + digits - 1)


def compute(runs: list[Run], skipped: list[tuple[Path, str]], opts: Options) -> Numbers:
    """Every number of the report; no drawing."""
    if not runs and skipped:
        p, why = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"no usable run: all {len(skipped)} run folder(s) are damaged or unreadable, e.g. {p}: {why}{more}")
    if not runs:
        raise UserError("no run folders found (a run folder holds config.json)")
    if opts.reps < 1:
        raise UserError(f"--reps {opts.reps} must be >= 1")
    if opts.last_episodes < 1:
        raise UserError(f"--last-episodes {opts.last_episodes} must be >= 1")
    mixed = mixing(runs)
    if mixed and not opts.allow_mixed:
        raise UserError(
            "runs with different protocols or hardware are not pooled: "
            + " | ".join(mixed)
            + " -- report them separately, or pass --allow-mixed to pool them anyway (marked MIXED)"
        )
    notes: list[str] = []
    labels = sorted({r.label for r in runs})
    games = sorted({r.game for r in runs})

    # Final scores: one source per game, so a game's runs are always compared like for like.
    scores: dict[Path, RunScore] = {}
    source_of: dict[str, str] = {}
    for g in games:
        rs = [r for r in runs if r.game == g]
        if opts.score == "auto":
            src = "eval" if all(has_eval(r) for r in rs) else "train"
            if src == "train" and any(has_eval(r) for r in rs):
                notes.append(
                    f"{g}: only some runs have evaluation rows, so training returns are used for all"
                )
        else:
            src = opts.score
        source_of[g] = src
        for r in rs:
            scores[r.path] = final_score(r, opts.last_episodes, src)
    unscored = [r for r in runs if not math.isfinite(scores[r.path].final)]
    for r in unscored:
        why = "no finished episode" if scores[r.path].source == "train" else "no evaluation score"
        notes.append(f"{r.path}: {why}, so no final score (still counted in compute tables)")
    for r in runs:
        warning = capped_eval_warning(r, scores[r.path].source == "eval")
        if warning:
            notes.append(warning)
    notes += list(filter(None, map(cpu_share_warning, runs)))
    notes += inactive_option_notes(runs)
    notes += tuned_preset_notes(runs)

    # Per (label, game) rows.
    rows: list[GroupRow] = []
    for g in games:
        for lab in labels:
            rs = [r for r in runs if r.game == g and r.label == lab]
            if not rs:
                continue
            fin = [scores[r.path].final for r in rs if math.isfinite(scores[r.path].final)]
            nrm = [scores[r.path].normalized for r in rs if math.isfinite(scores[r.path].normalized)]
            seed = opts.seed
            final = stats.iqm_estimate(np.array(fin).reshape(-1, 1), opts.reps, seed) if fin else _nan_est()
            normd = stats.iqm_estimate(np.array(nrm).reshape(-1, 1), opts.reps, seed) if nrm else _nan_est()
            horizons = {r.horizon for r in rs}
            rows.append(GroupRow(
                label=lab, game=g, runs=rs, scored=len(fin), final=final, normalized=normd, source=source_of[g],
                sps=_mean([r.sps for r in rs]), reuse_ratio=_mean([r.total("reuse_ratio") for r in rs]),
                wall_s=_mean([r.total("wall_s") for r in rs]), env_steps=_mean([r.total("env_steps") for r in rs]),
                frames=_mean([r.total("frames") for r in rs]),
                grad_samples=_mean([r.total("grad_samples") for r in rs]),
                train_flops=_mean([r.train_flops for r in rs]),
                horizon=horizons.pop() if len(horizons) == 1 else None,
                phase_s={p: _mean([r.phase_s[p] for r in rs]) for p in ("env", "act", "learn", "eval")},
                mfu={k: _mean([r.mfu[k] for r in rs]) for k in ("mfu", "mfu_learn")},
            ))  # fmt: skip
            configs = {json.dumps(r.agent_config, sort_keys=True) for r in rs}
            if len(configs) > 1:
                cfgs = [r.agent_config for r in rs]
                differ = sorted({k for c in cfgs for k in c if len({json.dumps(x.get(k)) for x in cfgs}) > 1})
                notes.append(f"{lab} on {g} pools {len(configs)} different agent configs (differ in "
                             f"{', '.join(differ)}); give runs a --label to tell them apart")  # fmt: skip
            steps = [r.total("env_steps") for r in rs]
            if len(rs) > 1 and max(steps) > 1.01 * min(steps):
                notes.append(f"{lab} on {g}: ragged runs, {min(steps):,.0f} to {max(steps):,.0f} env steps "
                             "(curves are dotted where some runs have ended)")  # fmt: skip

    # Cross-game aggregates over normalised final scores.
    norm_games = [g for g in games if normalizer(g, _family(runs, g)) is not None]
    in_suite = set(games)
    if opts.suite:
        from envs.suites import get as get_suite

        suite_games = get_suite(opts.suite).games
        in_suite = set(suite_games)
        missing = [g for g in suite_games if g not in games]
        if missing:
            notes.append(f"suite {opts.suite}: {len(missing)} of {len(suite_games)} games have no runs here "
                         f"({', '.join(missing)}), so the suite aggregate covers only the others")  # fmt: skip
    agg_games = [g for g in norm_games if g in in_suite and all(any(r.label == lab and r.game == g and
                 math.isfinite(scores[r.path].normalized) for r in runs) for lab in labels)]  # fmt: skip
    for g in games:
        if g not in in_suite:
            notes.append(f"{g}: not in suite {opts.suite}, so left out of the suite aggregate")
        elif g not in norm_games:
            notes.append(f"{g}: no human or min-max reference, so raw scores only (not in the aggregates)")
        elif g not in agg_games:
            notes.append(f"{g}: not scored by every agent, so left out of the cross-game aggregates")
    matrices = {lab: _norm_matrix(runs, scores, lab, agg_games) for lab in labels} if agg_games else {}
    aggregates = {lab: stats.aggregate_estimates(m, opts.reps, opts.seed) for lab, m in matrices.items()}
    profiles: dict[str, Curve] = {}
    if matrices:
        allv = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
        top = float(np.max(allv)) * 1.05 if allv.size and np.max(allv) > 0 else 1.0
        bottom = min(0.0, float(np.min(allv))) if allv.size else 0.0
        taus = np.linspace(bottom, top, 81)
        profiles = {
            lab: stats.performance_profile(m, taus, opts.reps, opts.seed) for lab, m in matrices.items()
        }
    poi = []
    for i, x in enumerate(labels):
        for y in labels[i + 1 :]:
            if x in matrices and y in matrices:
                poi.append(
                    (x, y, stats.probability_of_improvement(matrices[x], matrices[y], opts.reps, opts.seed))
                )

    curves, curve_runs, curve_missing, curve_log = _game_curves(runs, games, labels, opts)
    agg_curves, agg_log = _aggregate_curves(runs, agg_games, labels, opts) if agg_games else ({}, {})
    sweeps, sweep_skipped = _sweeps(runs, scores, games, labels, agg_games, opts)
    return Numbers(opts=opts, runs=runs, skipped=skipped, scores=scores, labels=labels, games=games, rows=rows,
                   mixed=mixed, notes=notes, agg_games=agg_games, aggregates=aggregates, profiles=profiles, poi=poi,
                   curves=curves, curve_runs=curve_runs, curve_missing=curve_missing, curve_log=curve_log,
                   agg_curves=agg_curves, agg_log=agg_log,
                   sweeps=sweeps, sweep_skipped=sweep_skipped, code_differed=code_differences(runs))  # fmt: skip


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "n/a"


def _nan_est() -> Estimate:
    return Estimate(math.nan, math.nan, math.nan)


def _family(runs: list[Run], game: str) -> str:
    return next(r.family for r in runs if r.game == game)


def _norm_matrix(runs, scores, label: str, games: list[str]) -> np.ndarray:
    cols = [[scores[r.path].normalized for r in runs if r.label == label and r.game == g
             and math.isfinite(scores[r.path].normalized)] for g in games]  # fmt: skip
    return stats.pad_runs(cols)


def run_curve(run: Run, n: int) -> np.ndarray:
    """The run's score after every metric row: mean return of its last ``n`` episodes. [rows]"""
    m = run.metrics
    if not len(m.get("env_steps", ())):
        return np.zeros(0)
    return stats.episode_window_mean(m.get("episodes", np.full(len(m["env_steps"]), np.nan)),
                                     m.get("episode_return", np.full(len(m["env_steps"]), np.nan)), n)  # fmt: skip


def _resampled(run: Run, axis: str, grid: np.ndarray, n: int, normalize: bool) -> np.ndarray | None:
    col = AXES[axis][0]
    x = run.metrics.get(col)
    if x is None or not len(x) or not np.isfinite(x).all():
        return None
    y = run_curve(run, n)
    if normalize:
        norm = normalizer(run.game, run.family)
        y = norm(y) if norm else np.full_like(y, np.nan)
    return stats.step_resample(x, y, grid)


def _why_absent(run: Run, axis: str) -> str | None:
    col = AXES[axis][0]
    x = run.metrics.get(col)
    if x is None or not len(x):
        return "no metric rows"
    if axis == "grad" and not (x[-1] > 0):
        return "no gradient samples"
    return None


LOG_SPAN = 10.0  # a count axis whose runs end more than this factor apart is drawn on a log scale
# (at 10x a linear axis already squeezes the shorter runs into its first tenth)


def _grid(runs: list[Run], axis: str, n: int) -> tuple[np.ndarray, bool] | None:
    """The common grid of ``runs`` on ``axis`` and whether it is logarithmic: linear from 0 to
    the furthest run's end, unless the runs' ends on a count axis span more than LOG_SPAN (a
    time-budgeted random agent steps 100x more than a learner), then log-spaced from the first
    logged value so that every run gets points."""
    col, _, _, kind = AXES[axis]
    xs = [r.metrics[col] for r in runs if _why_absent(r, axis) is None]
    if not xs:
        return None
    ends = [float(x[-1]) for x in xs]
    firsts = [float(x[x > 0][0]) for x in xs if (x > 0).any()]
    if kind == "count" and firsts and min(ends) > 0 and max(ends) / min(ends) > LOG_SPAN:
        return np.geomspace(min(firsts), max(ends), n), True
    return np.linspace(0.0, max(ends), n), False


def _game_curves(runs, games, labels, opts):
    curves: dict[str, dict[str, dict[str, Curve]]] = {}
    counts: dict[str, dict[str, int]] = {}
    missing: dict[str, dict[str, dict[str, str]]] = {}
    log: dict[str, dict[str, bool]] = {}
    for g in games:
        rs_g = [r for r in runs if r.game == g]
        curves[g], missing[g], counts[g], log[g] = {}, {}, {}, {}
        for axis in AXES:
            curves[g][axis], missing[g][axis] = {}, {}
            gl = _grid(rs_g, axis, opts.grid_points)
            if gl is None:
                continue
            grid, log[g][axis] = gl
            for lab in labels:
                rs = [r for r in rs_g if r.label == lab]
                if not rs:
                    continue
                why = {_why_absent(r, axis) for r in rs}
                vals = [v for r in rs if _why_absent(r, axis) is None
                        and (v := _resampled(r, axis, grid, opts.last_episodes, False)) is not None]  # fmt: skip
                if not vals:
                    missing[g][axis][lab] = next(w for w in why if w)
                    continue
                arr = np.stack(vals)[:, None, :]  # [runs, 1, G]
                curves[g][axis][lab] = stats.curve_iqm(arr, grid, opts.reps, opts.seed)
                counts[g][lab] = max(counts[g].get(lab, 0), len(vals))
    return curves, counts, missing, log


def _aggregate_curves(runs, games, labels, opts) -> tuple[dict[str, dict[str, Curve]], dict[str, bool]]:
    out: dict[str, dict[str, Curve]] = {}
    log: dict[str, bool] = {}
    rs_all = [r for r in runs if r.game in games]
    for axis in AXES:
        out[axis] = {}
        gl = _grid(rs_all, axis, opts.grid_points)
        if gl is None:
            continue
        grid, log[axis] = gl
        for lab in labels:
            per_game = []
            for g in games:
                per_game.append(
                    [
                        v
                        for r in rs_all
                        if r.label == lab
                        and r.game == g
                        and _why_absent(r, axis) is None
                        and (v := _resampled(r, axis, grid, opts.last_episodes, True)) is not None
                    ]
                )
            if not any(per_game):
                continue
            k = max(len(v) for v in per_game)
            arr = np.full((k, len(games), len(grid)), np.nan)  # [runs, games, G], NaN-padded
            for j, vs in enumerate(per_game):
                for i, v in enumerate(vs):
                    arr[i, j] = v
            out[axis][lab] = stats.curve_iqm(arr, grid, opts.reps, opts.seed)
    return out, log


def _sweeps(runs, scores, games, labels, agg_games, opts):
    """Final score against sample-reuse ratio and against bootstrap horizon, per game (raw) and
    across games (normalised).

    A point is one (label, agent config) group: the runs of one sweep setting. Its x is the
    group's median value (the measured reuse ratio varies a little between runs of one setting:
    warm-up before learning starts, a budget ending mid-rollout), with the min-max range as a
    horizontal error bar. Runs without gradient samples (random) or without a horizon field
    are left out of the respective figure."""
    from plots.figures import SweepPoint

    def value(r: Run, kind: str) -> float | None:
        if kind == "reuse":
            v = r.total("reuse_ratio")
            return v if math.isfinite(v) and v > 0 else None
        return r.horizon

    def points(members: list[Run], kind: str, matrix, by_config: bool = True) -> list:
        # Per game a label's runs are grouped by config too (two configs under one label are two
        # points). Across games they are not: a preset may set other values per game, and
        # splitting a label there would draw one point per game instead of the cross-game IQM.
        groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for r in members:
            groups[(r.label, json.dumps(r.agent_config, sort_keys=True) if by_config else "")].append(r)
        pts = []
        for (lab, _), rs in sorted(groups.items()):
            xs = [value(r, kind) for r in rs]
            est = stats.iqm_estimate(matrix(rs), opts.reps, opts.seed)
            pts.append(SweepPoint(lab, rs[0].agent, float(np.median(xs)), min(xs), max(xs), est, len(rs)))
        return pts

    out: dict[str, dict[str, list]] = {}
    skipped: dict[str, str] = {}
    for kind in ("reuse", "horizon"):
        usable = [r for r in runs if value(r, kind) is not None and math.isfinite(scores[r.path].final)]
        panels: dict[str, list] = {}
        for g in games:
            members = [r for r in usable if r.game == g]
            if members:
                panels[g] = points(
                    members, kind, lambda rs: np.array([scores[r.path].final for r in rs])[:, None]
                )
        if len(agg_games) > 1:
            members = [r for r in usable if r.game in agg_games and math.isfinite(scores[r.path].normalized)]
            if members:
                panels["all games (normalised)"] = points(members, kind, lambda rs: stats.pad_runs(
                    [[scores[r.path].normalized for r in rs if r.game == g] for g in agg_games]), by_config=False)  # fmt: skip
        distinct = {_sig(p.x, 2) for pts in panels.values() for p in pts}
        if len(distinct) < 2:
            what = "sample-reuse ratio" if kind == "reuse" else "bootstrap horizon"
            skipped[kind] = f"the runs span {len(distinct)} value(s) of the {what}; needs at least 2"
            continue
        out[kind] = panels
    return out, skipped


# Figures -----------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")


def draw(num: Numbers, fig_dir: Path) -> list[Path]:
    """Every figure the numbers support, as PNG + PDF under ``fig_dir``."""
    from plots import figures as F

    colors = F.colors_for(num.labels)
    formats = num.opts.formats
    written: list[Path] = []
    n = num.opts.last_episodes
    mark = " [MIXED protocols/hardware]" if num.mixed else ""
    with F.paper_style():
        for g in num.games:
            panels = [F.CurvePanel(title=t, xlabel=xl, kind=k, curves=num.curves[g][a],
                                   n_runs={lab: num.curve_runs[g].get(lab, 0) for lab in num.curves[g][a]},
                                   missing=num.curve_missing[g][a], log=num.curve_log[g].get(a, False))
                      for a, (_, t, xl, k) in AXES.items()]  # fmt: skip
            fig = F.curves_figure(panels, colors, f"return (last-{n}-episode mean)",
                                  f"{g}: IQM over seeds, 95% CI{mark}", references_for(g))  # fmt: skip
            written += F.save(fig, fig_dir / f"curves_{_slug(g)}", formats)
        if num.agg_curves:
            panels = []
            for a, (_, t, xl, k) in AXES.items():
                cur = num.agg_curves.get(a, {})
                nfull = {lab: _runs_in(num, lab, num.agg_games) for lab in cur}
                miss = {lab: "no gradient samples" for lab in num.labels if lab not in cur}
                panels.append(F.CurvePanel(t, xl, k, cur, nfull, miss, log=num.agg_log.get(a, False)))
            fig = F.curves_figure(
                panels,
                colors,
                "normalised score (IQM)",
                (f"suite {num.opts.suite} ({', '.join(num.agg_games)})" if num.opts.suite else
                 f"all games ({', '.join(num.agg_games)})") + f": IQM of normalised scores, 95% CI{mark}",
            )
            written += F.save(fig, fig_dir / "curves_aggregate", formats)
        else:
            num.figures_skipped["curves_aggregate"] = "no game with a human or min-max reference"

        sweep_axes = {"reuse": ("sample-reuse ratio", "reuse ratio (grad samples / env step)"),
                      "horizon": ("bootstrap horizon", "bootstrap horizon (env steps)")}  # fmt: skip
        for kind, (what, xlabel) in sweep_axes.items():
            name = f"final_vs_{kind}"
            if kind not in num.sweeps:
                num.figures_skipped[name] = num.sweep_skipped[kind]
                continue
            panels = num.sweeps[kind]
            # One line per agent across its sweep settings, in the agent's usual colour.
            series_colors = F.colors_for([p.series for pts in panels.values() for p in pts])
            # At most 5 panels a row: a study of 9 games drawn in one row is 6000 px wide and unreadable.
            ncols = min(len(panels), 5)
            nrows = -(-len(panels) // ncols)
            fig, axes = F.new_figure(ncols, nrows, panel_w=4.2 if len(panels) == 1 else 3.2, panel_h=2.8)
            flat = [ax for row in axes for ax in row]
            for ax in flat[len(panels):]:
                ax.set_visible(False)
            for ax, (title, pts) in zip(flat, panels.items()):
                F.draw_sweep(ax, pts, series_colors, log_x=True)
                ax.set_title(title)
                ax.set_xlabel(xlabel)
                F.draw_references(
                    ax, references_for(title), max(p.y.hi if p.y.has_ci else p.y.point for p in pts)
                )
            for row in axes:
                row[0].set_ylabel("final score (IQM)")
            if len(panels) > 1 and "normalised" in list(panels)[-1]:
                flat[len(panels) - 1].set_ylabel("normalised final score (IQM)")
            legend = F.shared_legend(fig, flat[: len(panels)])
            src = ", ".join(sorted({_source_text(num, g) for g in num.games}))
            extra = "; PPO: rollout segment length, Rainbow/BTR: n-step return" if kind == "horizon" else ""
            fig.suptitle(f"final score vs {what}{mark}", y=1.02)
            F.footnote(fig, f"each point: IQM over the runs of one (agent, config), 95% CI; final score = {src}"
                       + (f"\n{extra.lstrip('; ')}" if extra else ""), below=legend)  # fmt: skip
            fig.tight_layout()
            written += F.save(fig, fig_dir / name, formats)

        if num.aggregates:
            over = f"suite {num.opts.suite} ({len(num.agg_games)} games)" if num.opts.suite else ", ".join(num.agg_games)
            foot = (f"normalised final scores over {over}; bars: 95% stratified-bootstrap CI "
                    f"({num.opts.reps} draws); no bar: single seed, CI absent{mark}")  # fmt: skip
            fig = F.interval_figure(num.aggregates, colors, "normalised score", foot)
            written += F.save(fig, fig_dir / "aggregate_intervals", formats)
            fig, axes = F.new_figure(1, panel_w=4.2, panel_h=3.0)
            F.draw_profile(axes[0][0], num.profiles, colors, {lab: _runs_in(num, lab, num.agg_games)
                                                               for lab in num.profiles})  # fmt: skip
            axes[0][0].set_xlabel(r"normalised score $\tau$")
            axes[0][0].set_title(f"performance profile ({over}){mark}")
            axes[0][0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
            fig.tight_layout()
            written += F.save(fig, fig_dir / "performance_profile", formats)
        else:
            for name in ("aggregate_intervals", "performance_profile"):
                num.figures_skipped[name] = "no game with a human or min-max reference run by every agent"
        if num.poi:
            fig, axes = F.new_figure(1, panel_w=4.2, panel_h=0.45 * len(num.poi) + 1.1)
            F.draw_poi(axes[0][0], num.poi, colors)
            axes[0][0].set_title(f"probability of improvement ({', '.join(num.agg_games)}){mark}")
            fig.tight_layout()
            written += F.save(fig, fig_dir / "probability_of_improvement", formats)
        else:
            num.figures_skipped["probability_of_improvement"] = "needs two agents with normalised scores"

        order = num.labels
        per_label = {lab: [r for r in num.runs if r.label == lab] for lab in order}
        fig, axes = F.new_figure(4, panel_w=3.0, panel_h=0.45 * len(order) + 1.3)
        phases = {lab: {p: _mean([r.phase_s[p] for r in rs]) for p in ("env", "act", "learn", "eval")}
                  for lab, rs in per_label.items()}  # fmt: skip
        F.draw_phases(axes[0][0], phases, order, colors)
        F.draw_per_run_bars(axes[0][1], {lab: [r.sps for r in rs] for lab, rs in per_label.items()}, order, colors,
                            "training throughput", "env steps per second (SPS)", log=True)  # fmt: skip
        F.draw_per_run_bars(axes[0][2], {lab: [r.train_flops for r in rs] for lab, rs in per_label.items()}, order,
                            colors, "training compute", "training FLOPs (estimate)", log=True)  # fmt: skip
        # MFU: meter FLOPs (matmuls and convolutions only) per second over the machine's calibrated
        # matmul peak for the run's dtype; bars the whole run, crosses the learn phase alone.
        F.draw_per_run_bars(axes[0][3], {lab: [100 * r.mfu.get("mfu", math.nan) for r in rs]
                                         for lab, rs in per_label.items()}, order, colors,
                            "model FLOP utilisation", "MFU, % of matmul peak (x: learn phase)")  # fmt: skip
        for i, lab in enumerate(order):
            learn = [100 * r.mfu.get("mfu_learn", math.nan) for r in per_label[lab]]
            learn = [x for x in learn if math.isfinite(x)]
            if learn:
                axes[0][3].plot(learn, [i] * len(learn), "x", ms=5, color="k")
        fig.suptitle(f"compute per agent (all games, mean over runs; dots: runs){mark}", y=1.02)
        fig.tight_layout()
        written += F.save(fig, fig_dir / "compute", formats)
    return written


FIGURE_CAPTIONS = {  # figure name -> one line on how to read it ({n}: --last-episodes)
    "curves": "Learning curves on {game}: return (mean of the last {n} training episodes; IQM over seeds, shaded "
              "95% CI) against training wall clock (left: which agent learns faster per second), env frames "
              "(middle: sample efficiency) and gradient samples (right: return per unit of learning); dotted "
              "where some runs have ended; grey lines are published references.",
    "curves_aggregate": "The same three views for the normalised score across games (IQM over runs and games; "
                        "1 = the human or reference score, 0 = random): higher, and earlier on the x axis, is "
                        "better.",
    "final_vs_reuse": "Final score (IQM, bars: 95% CI) of each agent setting against its sample-reuse ratio "
                      "(gradient samples per env step, log2 axis); one line per agent, n = runs per point, "
                      "horizontal bars: the measured range; a rising line means more reuse paid off.",
    "final_vs_horizon": "Final score (IQM, bars: 95% CI) against the bootstrap horizon in env steps (PPO's "
                        "rollout segment, Rainbow/BTR's n-step return; log2 axis); one line per agent, n = runs "
                        "per point.",
    "aggregate_intervals": "Normalised final scores across games: IQM, median, mean and optimality gap per "
                           "agent; the bar spans the 95% stratified-bootstrap CI, the black tick is the point "
                           "estimate; higher is better except for the optimality gap, and overlapping bars do "
                           "not separate two agents.",
    "performance_profile": "Fraction of runs whose normalised final score exceeds each threshold tau (shaded: "
                           "95% CI); a curve that lies above another everywhere is better at every score level.",
    "probability_of_improvement": "P(X > Y): the chance that a run of X scores above a run of Y on a game drawn "
                                  "at random (normalised scores); the dashed line at 0.5 is no difference, the "
                                  "bar spans the 95% CI, and a bar clear of 0.5 is a difference.",
    "compute": "Per agent over all games (bars: mean over runs, dots: single runs): seconds per phase (env / act "
               "/ learn / eval, stacked), throughput in env steps per second, estimated training FLOPs, and MFU, "
               "the share of the machine's calibrated matmul peak (bars: whole run, crosses: learn phase alone); "
               "log axes where values span more than 100x.",
}  # fmt: skip


def figure_caption(name: str, num: Numbers) -> str:
    """How to read the figure :func:`draw` saved as ``name`` (a file stem), in one line; "" for a
    name :func:`draw` does not make."""
    games = {f"curves_{_slug(g)}": g for g in num.games}
    if name in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[name].format(n=num.opts.last_episodes)
    if name in games:
        return FIGURE_CAPTIONS["curves"].format(game=games[name], n=num.opts.last_episodes)
    return ""


def _runs_in(num: Numbers, label: str, games: list[str]) -> int:
    """Seeds behind a label's normalised numbers (the largest count over the games)."""
    return max((sum(1 for r in num.runs if r.label == label and r.game == g
                    and math.isfinite(num.scores[r.path].normalized)) for g in games), default=0)  # fmt: skip


def _source_text(num: Numbers, game: str) -> str:
    rows = [r for r in num.rows if r.game == game]
    if rows and rows[0].source == "eval":
        return "last evaluation"
    return f"mean of last {num.opts.last_episodes} training episodes"


# Tables ------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if abs(v) < 1e4:
        return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"
    r = float(f"{v:.{digits}g}")  # round first, so 999,999 becomes 1M rather than 1e+03k
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(r) >= div:
            return f"{r / div:.{digits}g}{unit}"
    return f"{r:.{digits}g}"


def fmt_est(e: Estimate, n_runs: int) -> str:
    if not math.isfinite(e.point):
        return "n/a"
    if not e.has_ci:
        return f"{fmt(e.point)} (single seed, no CI)" if n_runs < 2 else f"{fmt(e.point)} (no CI)"
    return f"{fmt(e.point)} [{fmt(e.lo)}, {fmt(e.hi)}]"


def _status_counts(runs: list[Run]) -> str:
    c = defaultdict(int)
    for r in runs:
        c[r.status] += 1
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items()))


# Writers: each output format is its own module with ``render(num, out) -> str``; these names stay
# here so that ``from plots.report import summary_md`` keeps working.


def summary_md(num: Numbers, out: Path) -> str:
    """``summary.md`` (:mod:`plots.report_md`)."""
    from plots.report_md import summary_md as md

    return md(num, out)


def summary_json(num: Numbers, out: Path) -> dict:
    """``summary.json`` as a dict (:mod:`plots.report_json`)."""
    from plots.report_json import summary_json as js

    return js(num, out)


def summary_html(num: Numbers, out: Path) -> str:
    """``index.html`` (:mod:`plots.report_html`)."""
    from plots.report_html import page

    return page(num, out)


# Entry point -------------------------------------------------------------------------------


def build_report(paths: list[str | Path], opts: Options) -> tuple[Numbers, list[Path]]:
    """Load, compute, draw and write; returns the numbers and the files written."""
    runs, skipped = load_runs(paths)
    num = compute(runs, skipped, opts)
    out = opts.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the report folder ({e.strerror or e})") from None
    num.figures = draw(num, out / "figures")
    files = list(num.figures)
    from plots import report_html, report_json, report_md

    # One line per output format; each writer is a module with render(num, out) -> str.
    writers = {"summary.md": report_md.render, "summary.json": report_json.render, "index.html": report_html.render}
    for name, render in writers.items():
        (out / name).write_text(render(num, out), encoding="utf-8")
        files.append(out / name)
    tidy(runs).to_csv(out / "runs.csv", index=False)
    files.append(out / "runs.csv")
    return num, files


__all__ = ["Numbers", "Options", "Reference", "build_report", "compute", "draw", "figure_caption", "summary_html",
           "summary_json", "summary_md"]  # fmt: skip
