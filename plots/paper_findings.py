"""Per-study analysis for ``bench paper``: a computed report (:class:`plots.report.Numbers`) -> the
study's numbers, one study figure and the answer sentences of the findings page.

:func:`analyse` dispatches on the study file's ``kind``:

``equal_compute``
    Agents at one training wall-clock budget, read twice. At the budget (the report's final
    scores): who wins per second. At equal env frames: for each game g, ``F_g`` is the most env
    frames every scored run of g logged (the shortest run's last metric row), each run's score at
    ``F_g`` is the mean return of its last N episodes up to that row (N = ``--last-episodes``,
    the same window and the same summation as the final score), normalised; who wins per sample.
    Also the mean SPS, frames and gradient samples each agent had at the budget.
``reuse`` / ``horizon``
    Labels ``<agent>-reuse<r>`` / ``<agent>-h<h>`` (bench/compare.py ``expand``): per series (the
    label without the swept part, usually the agent) the score at equal wall clock at each
    setting, its optimum, the settings whose CI overlaps the optimum's, and whether the optimum is
    resolved above the lowest setting. ``horizon`` also checks the claim "off-policy methods need
    only ~3-step bootstraps while on-policy methods need 32+ step segments" per series.
``arms``
    Labelled arms (the study file's ``[arms.<label>]`` tables) at equal wall clock: score, SPS,
    frames, gradient samples, probabilities of improvement and the throughput ratios per pair.
``ablation``
    The first arm is the full agent; every other arm removes one component. Per arm the drop
    IQM(full) - IQM(arm) with a 95% CI (:func:`plots.stats.iqm_difference`) at equal wall clock
    and at equal env frames (``F_g`` as above), its rank among the components at each reading,
    whether the two rankings differ, and the BTR paper's claim that the Impala CNN and Munchausen
    are the largest contributors. An arm running another agent (Rainbow) is a comparison row:
    its drop is given, not ranked.
``variants``
    The first arm is the baseline. Score at equal wall clock as ``arms``, each arm's IQM
    difference from the baseline with its CI and P(arm > baseline), and the study file's
    ``diagnostics`` (learner.csv columns): per run the mean over the rows logged in the second
    half of its training wall clock (the archive's learner.csv is thinned to evenly spaced rows,
    which keeps that mean), per arm the IQM over runs with CI, per game, and against wall clock.

Conventions shared by every kind:

* scores are normalised (:mod:`plots.normalize`) and aggregated over the games every label scored
  on (``Numbers.agg_games``), as the report's aggregates are; a study of one game without a
  normaliser uses raw scores and says so; several games without a normaliser are refused (raw
  returns of different games do not pool);
* a difference is "resolved" when the two 95% CIs do not overlap. That is stricter than a 95%
  test (two intervals can overlap a little and still differ), so "not resolved" is the honest
  word, not "equal"; a label with one run per game has no CI and is never resolved. Where an arm
  is compared with one reference (``ablation``, ``variants``) the difference itself is
  bootstrapped, and it is resolved when its 95% CI excludes 0;
* every bootstrap is drawn ``num.opts.reps`` times from NumPy seeded with ``num.opts.seed``
  (:func:`plots.stats.seeded`), so the same runs give the same JSON;
* the answer is generated from the numbers: the leader is the highest point estimate and the
  text says when its lead is not resolved. Nothing names a winner by hand.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import UserError
from plots import stats
from plots.load import HORIZON_FIELDS, Run
from plots.normalize import normalizer
from plots.report import GroupRow, Numbers, fmt
from plots.report_json import _clean
from plots.stats import Estimate

DISPLAY = {"ppo": "PPO", "rainbow": "Rainbow", "btr": "BTR", "pqn": "PQN", "random": "random"}
# Which family each agent belongs to, for "which family wins" sentences. PQN learns Q-values
# off-policy but without a replay buffer (PPO's vectorised data pipeline), so it is named apart.
FAMILY = {"ppo": "on-policy", "rainbow": "off-policy", "btr": "off-policy", "pqn": "replay-free off-policy"}
FULL_NAME = {"ppo": "on-policy PPO", "rainbow": "off-policy Rainbow", "btr": "off-policy BTR",
             "pqn": "PQN (off-policy, no replay)"}  # fmt: skip
GAME_FAMILY = {"minatar": "MinAtar", "puffer": "Ocean", "ale": "Atari", "gym": "Gymnasium"}
REUSE_FIELDS = ("epochs", "replay_ratio")  # the agent config field a reuse setting sets (bench/compare.py)
KNOB_WORDS = {"epochs": "epochs", "replay_ratio": "replay ratio", "segment_length": "segment length",
              "n_step": "n-step"}  # fmt: skip
# The horizon claim under test: replay learners need only ~3-step returns, PPO needs long segments.
SHORT_NSTEP = 3
LONG_SEGMENT = 32
REPLAY_AGENTS = ("rainbow", "btr")
ON_POLICY_AGENTS = ("ppo",)


@dataclass
class StudyResult:
    numbers: dict  # JSON-ready (floats, lists, dicts), deterministic given the runs
    figures: list[Path]  # the study figure written (png + pdf), stem under fig_dir
    answer: str  # markdown: 1-3 sentences with numbers, CIs and scope
    change: str  # one line: what would change the answer


KINDS = ("equal_compute", "reuse", "horizon", "arms", "ablation", "variants")


def analyse(kind: str, study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    """The study's numbers, figure and answer from the report computed over its runs
    (:func:`plots.report.compute`). ``study``: the parsed study file; ``hardware``: one phrase
    naming the machine and the share each run had, quoted in the answer."""
    handlers: dict[str, Callable[[dict, Numbers, Path, str], StudyResult]] = {
        "equal_compute": _equal_compute,
        "reuse": lambda s, n, f, h: _sweep("reuse", s, n, f, h),
        "horizon": lambda s, n, f, h: _sweep("horizon", s, n, f, h),
        "arms": _arms,
        "ablation": _ablation,
        "variants": _variants,
    }
    if kind not in handlers:
        raise UserError(f"study {study.get('name', '?')}: unknown kind {kind!r} (known: {', '.join(handlers)})")
    result = handlers[kind](study, num, fig_dir, hardware)
    result.answer += _left_out_note(num)
    return result


def _left_out_note(num: Numbers) -> str:
    """Games the study ran but its aggregates leave out, with why: a label that finished no
    episode there within the budget has no score, and an IQM over a different set of games per
    label would not compare. Said in the answer, since "8 games" where the study file lists 9
    otherwise reads as a slip."""
    if not num.agg_games:
        return ""
    notes = []
    for g in num.games:
        if g in num.agg_games:
            continue
        rs = [r for r in num.runs if r.game == g]
        if not any(math.isfinite(num.scores[r.path].normalized) or not math.isfinite(num.scores[r.path].final)
                   for r in rs):  # fmt: skip
            notes.append(f"{g} has no normaliser")
            continue
        missing = []
        for lab in num.labels:
            mine = [r for r in rs if r.label == lab]
            scored = sum(math.isfinite(num.scores[r.path].normalized) for r in mine)
            if not scored:
                missing.append(f"{_plain(lab)} ({len(mine)} run{'s' if len(mine) != 1 else ''}, "
                               f"none with a finished episode)" if mine else f"{_plain(lab)} (no runs)")  # fmt: skip
        if missing:
            notes.append(f"{g} has no score for {', '.join(missing)} within the budget")
    if not notes:
        return ""
    return (f" Left out of the aggregates, since an IQM over different games per label would not compare: "
            f"{'; '.join(notes)}.")


# Scope: which games, which scores, which budget ------------------------------------------


@dataclass
class Scope:
    """What a study's numbers cover, as lists and in words."""

    labels: list[str]  # in the order tables and figures show them
    games: list[str]
    normalised: bool  # False: one game without a normaliser, raw returns
    n_runs: dict[str, dict[str, int]]  # label -> game -> runs with a score
    budget: str  # "2 minutes of training per run"
    budget_s: float | None  # the wall-clock budget, None when the runs had a step budget
    hardware: str
    games_text: str  # "9 games (5 MinAtar: asterix, ...; 4 Ocean: ...)"
    unit: str  # what a label is in words: "agent", "setting", "arm"
    mixed: list[str]

    @property
    def score_name(self) -> str:
        return "normalised score" if self.normalised else "raw score"

    @property
    def iqm_name(self) -> str:
        return "normalised-score IQM" if self.normalised else "raw-score IQM"

    def raw_note(self) -> str:
        return "" if self.normalised else f" Scores are raw returns: {self.games[0]} has no normaliser."

    def n_text(self) -> str:
        counts = [n for per in self.n_runs.values() for n in per.values()]
        lo, hi = min(counts, default=0), max(counts, default=0)
        runs = f"{lo} run{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} runs"
        return f"{runs} per {self.unit} and game"

    def prefix(self) -> str:
        mixed = " (pooling mixed protocols or hardware, see the report's notes)" if self.mixed else ""
        return f"On {self.games_text} at {self.budget} on {self.hardware} ({self.n_text()}{mixed})"

    def as_json(self) -> dict:
        return {"labels": self.labels, "games": self.games, "normalised": self.normalised, "n_runs": self.n_runs,
                "budget": self.budget, "budget_s": self.budget_s, "hardware": self.hardware,
                "mixed": self.mixed}  # fmt: skip


def _scope(num: Numbers, study: dict, hardware: str, labels: list[str], unit: str) -> Scope:
    if num.agg_games:
        games, normalised = list(num.agg_games), True
    elif len(num.games) == 1:
        games, normalised = list(num.games), False
    else:
        raise UserError(f"study {study.get('name', '?')}: no game among {', '.join(num.games)} has a normaliser "
                        "scored by every label, and raw returns of different games do not pool; add a reference "
                        "in plots/normalize.py or study one game")  # fmt: skip
    n_runs = {lab: {g: len(_cell(num, lab, g, normalised)) for g in games} for lab in labels}
    budget, budget_s = _budget(num.runs)
    return Scope(labels=labels, games=games, normalised=normalised, n_runs=n_runs, budget=budget, budget_s=budget_s,
                 hardware=hardware.strip() or "the recorded hardware", games_text=_games_text(num, games), unit=unit,
                 mixed=list(num.mixed))  # fmt: skip


def _budget(runs: list[Run]) -> tuple[str, float | None]:
    """The runs' budget in words, from their config.json (the study file may say "2m"; the runs
    say what was actually run)."""
    times = sorted({float(r.config["run"]["time_s"]) for r in runs if r.config["run"].get("time_s")})
    steps = sorted({int(r.config["run"]["steps"]) for r in runs if r.config["run"].get("steps")})
    if len(times) == 1:
        return f"{_duration(times[0])} of training per run", times[0]
    if times:
        return f"{_duration(times[0])} to {_duration(times[-1])} of training per run (unequal budgets)", None
    if len(steps) == 1:
        return f"{steps[0]:,} env steps per run", None
    if steps:
        return f"{steps[0]:,} to {steps[-1]:,} env steps per run (unequal budgets)", None
    return "the runs' budgets", None


def _duration(s: float) -> str:
    for unit, div in (("hour", 3600.0), ("minute", 60.0)):
        if s >= div and (s / div) == round(s / div, 1):
            v = s / div
            return f"{v:g} {unit}{'s' if v != 1 else ''}"
    return f"{s:g} s"


def _short_game(g: str) -> str:
    for prefix in ("minatar:", "puffer_", "gym:", "ale:"):
        if g.startswith(prefix):
            return g[len(prefix) :]
    return g


def _game_family(num: Numbers, g: str) -> str:
    fam = next((r.family for r in num.runs if r.game == g), "")
    return GAME_FAMILY.get(fam, fam)


def _games_text(num: Numbers, games: list[str]) -> str:
    if len(games) == 1:
        return f"{games[0]} ({_game_family(num, games[0])})"
    by_family: dict[str, list[str]] = defaultdict(list)
    for g in games:
        by_family[_game_family(num, g)].append(_short_game(g))
    parts = [f"{len(v)} {k}: {', '.join(v)}" for k, v in by_family.items()]
    return f"{len(games)} games ({'; '.join(parts)})"


# Scores at the budget ----------------------------------------------------------------------


def _score(num: Numbers, r: Run, normalised: bool) -> float:
    s = num.scores[r.path]
    return s.normalized if normalised else s.final


def _cell(num: Numbers, label: str, game: str, normalised: bool) -> list[Run]:
    """The runs of one (label, game) that have a final score (the ones the aggregates use)."""
    return [r for r in num.runs if r.label == label and r.game == game and math.isfinite(_score(num, r, normalised))]


def _row(num: Numbers, label: str, game: str) -> GroupRow | None:
    return next((x for x in num.rows if x.label == label and x.game == game), None)


def _wall_matrix(num: Numbers, scope: Scope, label: str) -> np.ndarray:
    """``[runs, games]`` final scores of a label (NaN-padded), the report's ``_norm_matrix``."""
    return stats.pad_runs([[_score(num, r, scope.normalised) for r in _cell(num, label, g, scope.normalised)]
                           for g in scope.games])  # fmt: skip


def _wall_estimates(num: Numbers, scope: Scope) -> dict[str, Estimate]:
    """IQM with 95% CI per label at the budget: the report's own aggregate when normalised (so the
    findings page and the report agree to the digit), the same estimator on raw scores otherwise."""
    if scope.normalised:
        return {lab: num.aggregates[lab]["iqm"] for lab in scope.labels}
    o = num.opts
    return {lab: stats.aggregate_estimates(_wall_matrix(num, scope, lab), o.reps, o.seed)["iqm"]
            for lab in scope.labels}  # fmt: skip


def _wall_pairs(num: Numbers, scope: Scope) -> list[tuple[str, str, Estimate]]:
    if scope.normalised:
        return [(x, y, e) for x, y, e in num.poi if x in scope.labels and y in scope.labels]
    return _pairs({lab: _wall_matrix(num, scope, lab) for lab in scope.labels}, num)


def _pairs(matrices: dict[str, np.ndarray], num: Numbers) -> list[tuple[str, str, Estimate]]:
    """P(X > Y) for every pair, in the report's order (labels sorted, X before Y)."""
    labels = sorted(matrices)
    o = num.opts
    return [(x, y, stats.probability_of_improvement(matrices[x], matrices[y], o.reps, o.seed))
            for i, x in enumerate(labels) for y in labels[i + 1 :]]  # fmt: skip


def _poi(pairs: list[tuple[str, str, Estimate]], a: str, b: str) -> Estimate:
    """P(a > b) from pairs stored either way round (P(b > a) = 1 - P(a > b), CI mirrored)."""
    for x, y, e in pairs:
        if (x, y) == (a, b):
            return e
        if (x, y) == (b, a):
            return Estimate(1 - e.point, 1 - e.hi, 1 - e.lo)
    return Estimate(math.nan, math.nan, math.nan)


def _pairs_json(pairs: list[tuple[str, str, Estimate]]) -> list[dict]:
    return [{"x": x, "y": y, "p_x_better": e, "resolved": e.has_ci and (e.lo > 0.5 or e.hi < 0.5)}
            for x, y, e in pairs]  # fmt: skip


def _compute(num: Numbers, scope: Scope, label: str) -> dict[str, float]:
    """Mean over a label's runs (on the scope's games) of what the budget bought."""
    rs = [r for r in num.runs if r.label == label and r.game in scope.games]
    keys = ("env_steps", "frames", "grad_samples", "reuse_ratio", "wall_s")
    out = {"runs": len(rs), "sps": _mean([r.sps for r in rs])}
    out.update({k: _mean([r.total(k) for r in rs]) for k in keys})
    return out


def _mean(v: list[float]) -> float:
    f = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(f)) if f else math.nan


# Leads and their resolution ----------------------------------------------------------------


def _above(a: Estimate, b: Estimate) -> bool:
    """a resolved above b: both have a CI and they do not overlap."""
    return a.has_ci and b.has_ci and a.lo > b.hi


def _ranked(est: dict[str, Estimate]) -> list[str]:
    """Labels with a score, best first (ties: the order given)."""
    have = [lab for lab in est if math.isfinite(est[lab].point)]
    return sorted(have, key=lambda lab: -est[lab].point)


@dataclass
class Lead:
    order: list[str]  # best first
    leader: str | None
    runner_up: str | None
    margin: float  # leader - runner-up, in the scope's score
    unresolved_with: list[str]  # labels whose CI overlaps the leader's

    @property
    def resolved(self) -> bool:
        return self.leader is not None and self.runner_up is not None and not self.unresolved_with

    def as_json(self) -> dict:
        return {"order": self.order, "leader": self.leader, "runner_up": self.runner_up, "margin": self.margin,
                "resolved": self.resolved, "unresolved_with": self.unresolved_with}  # fmt: skip


def _lead(est: dict[str, Estimate]) -> Lead:
    order = _ranked(est)
    if len(order) < 2:
        return Lead(order, order[0] if order else None, None, math.nan, [])
    a, b = order[0], order[1]
    return Lead(order, a, b, est[a].point - est[b].point, [x for x in order[1:] if not _above(est[a], est[x])])


def _lead_text(lead: Lead, est: dict[str, Estimate], pairs, what: str, name: Callable[[str], str]) -> str:
    """The clause "<leader> leads <what> by d over <runner-up> (P(..) = p [lo, hi]), <resolved or
    not>"; "" with fewer than two scored labels."""
    if lead.leader is None or lead.runner_up is None:
        return ""
    a, b = lead.leader, lead.runner_up
    p = _poi(pairs, a, b)
    what = f" {what}" if what else ""
    if _v(lead.margin) == "0.00":
        # A lead that rounds to nothing is stated as a tie, not as "leads by 0.00".
        text = (f"{name(a)} and {_plain(b)} are level{what} (IQM difference {lead.margin:.3f}, "
                f"P({_plain(a)} > {_plain(b)}) = {_est(p)})")  # fmt: skip
    else:
        text = (f"{name(a)} leads{what} by {_v(lead.margin)} over {_plain(b)} "
                f"(P({_plain(a)} > {_plain(b)}) = {_est(p)})")  # fmt: skip
    if not (est[a].has_ci and est[b].has_ci):
        return text + ", not resolved (one run per game gives no CI)"
    if lead.resolved:
        text += (", resolved (95% CIs do not overlap)" if len(lead.order) == 2 else
                 ", resolved against every other (95% CIs do not overlap)")  # fmt: skip
        if p.has_ci and p.lo <= 0.5 <= p.hi:
            # The IQMs separate but a random run of a does not reliably beat one of b: the lead
            # comes from some games, not all.
            text += f", though P({_plain(a)} > {_plain(b)})'s CI includes 0.5 (the lead is not on every game)"
        return text
    level = _v(lead.margin) == "0.00"
    if level and lead.unresolved_with == [b]:
        return text + " (95% CIs overlap)"
    if lead.unresolved_with == [b] and len(lead.order) == 2:
        return text + ", but the difference is not resolved (95% CIs overlap)"
    return text + f", but not resolved against {', '.join(map(_plain, lead.unresolved_with))} (95% CIs overlap)"


def _split_text(ma: np.ndarray, mb: np.ndarray, games: list[str], a: str, b: str) -> str:
    """Where two labels' aggregate leads are unresolved, the per-game picture: the games on which
    every run of one beats every run of the other (the Mann-Whitney P is 1 or 0). A tie made of
    clean wins each way is a different finding from a tie of overlapping runs, and P(a > b) =
    0.50 with a zero-width CI is exactly that case. ``ma``, ``mb``: ``[runs, games]``."""
    wins: dict[str, list[str]] = {a: [], b: []}
    for g, p in zip(games, stats.poi_per_task(ma, mb), strict=True):
        if p == 1.0:
            wins[a].append(g)
        elif p == 0.0:
            wins[b].append(g)
    if not (wins[a] or wins[b]):
        return ""
    parts = [f"every {_plain(x)} run beats every {_plain(y)} run on {', '.join(wins[x])}"
             for x, y in ((a, b), (b, a)) if wins[x]]  # fmt: skip
    rest = len(games) - len(wins[a]) - len(wins[b])
    tail = f"; the runs overlap on the other {rest} game{'s' if rest != 1 else ''}" if rest else ""
    return f" Per game, {'; '.join(parts)}{tail}."


# Text --------------------------------------------------------------------------------------


def _v(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.2f}" if abs(x) < 10 else fmt(x)


def _est(e: Estimate) -> str:
    if not math.isfinite(e.point):
        return "n/a"
    if not e.has_ci:
        return f"{_v(e.point)} (no CI)"
    return f"{_v(e.point)} [{_v(e.lo)}, {_v(e.hi)}]"


def _est_small(e: Estimate) -> str:
    """An estimate whose values may be far below 0.01 (a KL per update, a bonus per step): two
    significant figures of the largest of point and bounds, the same decimals for all three, so
    0.0008 [0.0006, 0.0011] does not print as 0.00 [0.00, 0.00]."""
    vals = [x for x in (e.point, e.lo, e.hi) if x is not None and math.isfinite(x)]
    ref = max((abs(x) for x in vals), default=0.0)
    if not math.isfinite(e.point) or ref == 0.0 or ref >= 0.1:
        return _est(e)
    d = min(8, 1 - math.floor(math.log10(ref)))

    def v(x: float) -> str:
        s = f"{x:.{d}f}"
        return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.000"

    return f"{v(e.point)} (no CI)" if not e.has_ci else f"{v(e.point)} [{v(e.lo)}, {v(e.hi)}]"


def _ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def _div(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def _sentence(head: str, lead: str) -> str:
    return head + (f"; {lead}." if lead else ".")


def _plain(label: str) -> str:
    return DISPLAY.get(label, label)


def _agent_of(num: Numbers, label: str) -> str | None:
    agents = {r.agent for r in num.runs if r.label == label}
    return agents.pop() if len(agents) == 1 else None


def _namer(num: Numbers) -> Callable[[str], str]:
    """A label's name with its family when the label is an agent ("on-policy PPO")."""

    def name(label: str) -> str:
        agent = _agent_of(num, label)
        return FULL_NAME[label] if agent == label and agent in FULL_NAME else _plain(label)

    return name


def _list_est(est: dict[str, Estimate], order: list[str]) -> str:
    return ", ".join(f"{_plain(lab)} {_est(est[lab])}" for lab in order)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stem(fig_dir: Path, study: dict, kind: str) -> Path:
    return fig_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", str(study.get("name") or kind)).strip("_")


# equal_compute -----------------------------------------------------------------------------


@dataclass
class FramesReading:
    """The runs read at equal env frames: per game, the frames the shortest scored run reached."""

    frames: dict[str, float]  # game -> F_g
    limited_by: dict[str, str]  # game -> "label seed k", the run that ended there
    scores: dict[str, dict[str, list[float]]]  # game -> label -> per-run score at F_g (the scope's scale)
    raw: dict[str, dict[str, list[float]]]  # game -> label -> per-run raw return at F_g

    def span(self) -> str:
        """The F_g in words: "80k", or "80k to 1.2M" when the games differ."""
        fr = list(self.frames.values())
        if not fr:
            return "n/a"
        return fmt(fr[0]) if min(fr) == max(fr) else f"{fmt(min(fr))} to {fmt(max(fr))}"


def _last_frames(r: Run) -> float:
    x = r.metrics.get("frames")
    if x is None or not len(x) or not np.isfinite(x[-1]):
        return math.nan
    return float(x[-1])


def score_at_frames(r: Run, frames: float, n: int) -> float:
    """Mean return of the run's last ``n`` training episodes finished by the metric row at or
    before ``frames``: the final score's window (:func:`plots.stats.final_window`, so a run read
    at its own last row gets exactly its final training score), cut at ``frames``. NaN when no
    episode had finished by then."""
    m = r.metrics
    x = m.get("frames")
    if x is None or not len(x):
        return math.nan
    k = int(np.searchsorted(x, frames, side="right"))  # rows at or before F
    eps = m.get("episodes", np.full(len(x), np.nan))[:k]
    ret = m.get("episode_return", np.full(len(x), np.nan))[:k]
    return stats.final_window(eps, ret, n)[0]


def frames_reading(num: Numbers, scope: Scope) -> FramesReading:
    """Every scored run of the scope read at its game's common frame count ``F_g``. F_g is taken
    over the metric rows (the last row's frames), not compute.json's total: a score exists only
    at a row, and a run's total can lie a little past its last row."""
    out = FramesReading({}, {}, {}, {})
    n = num.opts.last_episodes
    for g in scope.games:
        members = {lab: _cell(num, lab, g, scope.normalised) for lab in scope.labels}
        ends = [(_last_frames(r), r.label, r.seed) for rs in members.values() for r in rs]
        ends = [e for e in ends if math.isfinite(e[0])]
        if not ends:
            continue
        f_g, lab_min, seed_min = min(ends)
        out.frames[g], out.limited_by[g] = f_g, f"{lab_min} seed {seed_min}"
        out.scores[g], out.raw[g] = {}, {}
        for lab, rs in members.items():
            raw = [score_at_frames(r, f_g, n) for r in rs]
            if scope.normalised:
                norm = normalizer(g, rs[0].family) if rs else None
                scaled = [float(norm(v)) if norm and math.isfinite(v) else math.nan for v in raw]
            else:
                scaled = list(raw)
            out.raw[g][lab] = raw
            out.scores[g][lab] = [v for v in scaled if math.isfinite(v)]
    return out


def _equal_compute(study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    scope = _scope(num, study, hardware, list(num.labels), "agent")
    o = num.opts
    wall, wall_pairs = _wall_estimates(num, scope), _wall_pairs(num, scope)
    reading = frames_reading(num, scope)
    fgames = [g for g in scope.games if g in reading.frames]
    mats = {lab: stats.pad_runs([reading.scores[g][lab] for g in fgames]) for lab in scope.labels}
    at_frames = {lab: stats.aggregate_estimates(m, o.reps, o.seed)["iqm"] for lab, m in mats.items()}
    frame_pairs = _pairs(mats, num)
    compute = {lab: _compute(num, scope, lab) for lab in scope.labels}
    lead_w, lead_f = _lead(wall), _lead(at_frames)

    per_game = {}
    for g in scope.games:
        rows = {lab: _row(num, lab, g) for lab in scope.labels}
        per_game[g] = {
            "frames": reading.frames.get(g, math.nan),
            "limited_by": reading.limited_by.get(g),
            "raw_iqm_at_frames": {lab: float(stats.nan_iqm(np.array(reading.raw[g][lab] or [math.nan])))
                                  for lab in scope.labels} if g in reading.raw else {},
            "raw_iqm_at_wall": {lab: row.final.point if row else math.nan for lab, row in rows.items()},
            "frames_at_wall": {lab: row.frames if row else math.nan for lab, row in rows.items()},
            "score_source_at_wall": next((row.source for row in rows.values() if row), None),
        }  # fmt: skip
    numbers = {
        "kind": "equal_compute",
        "scope": scope.as_json(),
        "score": "normalised" if scope.normalised else "raw",
        "last_episodes": o.last_episodes,
        "bootstrap": {"reps": o.reps, "seed": o.seed},
        "wall": {"iqm": wall, "poi": _pairs_json(wall_pairs), "lead": lead_w.as_json()},
        "frames": {"iqm": at_frames, "poi": _pairs_json(frame_pairs), "lead": lead_f.as_json(), "games": fgames},
        "per_game": per_game,
        "compute": compute,
    }
    figures = _equal_compute_figure(_stem(fig_dir, study, "equal_compute"), study, num, scope, wall, at_frames,
                                     wall_pairs, frame_pairs, reading)  # fmt: skip

    name = _namer(num)
    order_w = lead_w.order or scope.labels
    s1 = _sentence(f"{scope.prefix()}, the {scope.iqm_name} with 95% CI at equal wall clock is "
                   f"{_list_est(wall, order_w)}", _lead_text(lead_w, wall, wall_pairs, "per second", name))  # fmt: skip
    s2 = _sentence(f"Read at equal env frames instead (per game the frames its shortest run reached, "
                   f"{reading.span()}), it "
                   f"is {_list_est(at_frames, lead_f.order or scope.labels)}",
                   _lead_text(lead_f, at_frames, frame_pairs, "per sample", name))  # fmt: skip
    if lead_w.runner_up and not lead_w.resolved:
        s1 += _split_text(_wall_matrix(num, scope, lead_w.leader), _wall_matrix(num, scope, lead_w.runner_up),
                          scope.games, lead_w.leader, lead_w.runner_up)  # fmt: skip
    if lead_f.runner_up and not lead_f.resolved:
        s2 += _split_text(mats[lead_f.leader], mats[lead_f.runner_up], fgames, lead_f.leader, lead_f.runner_up)
    s3 = ""
    a, b = lead_w.leader, lead_f.leader
    if a and b and a != b:
        ca, cb = compute[a], compute[b]
        s3 = (f" In the budget {_plain(a)} ran {_ratio(_div(ca['sps'], cb['sps']))} {_plain(b)}'s env steps per "
              f"second ({fmt(ca['sps'])} vs {fmt(cb['sps'])} SPS) and so saw {_ratio(_div(ca['frames'], cb['frames']))} "
              "its env frames.")  # fmt: skip
    elif a and a == b:
        s3 = f" {_plain(a)} has the highest IQM on both readings."
    change = _one_line(study.get("change") or (
        f"More seeds (now {scope.n_text()}) would narrow the CIs; a longer budget or other hardware (a GPU speeds "
        "the learners far more than the environments) changes how many samples each family gets per second."))  # fmt: skip
    return StudyResult(numbers=_clean(numbers), figures=figures, answer=s1 + " " + s2 + s3 + scope.raw_note(),
                       change=change)


def _equal_compute_figure(stem: Path, study: dict, num: Numbers, scope: Scope, wall, at_frames, wall_pairs,
                          frame_pairs, reading: FramesReading) -> list[Path]:  # fmt: skip
    from plots import figures as F

    order = scope.labels
    colors = F.colors_for(order)
    shown = {lab: f"{lab} (n={min(scope.n_runs[lab].values(), default=0)})" for lab in order}
    pcolors = {shown[lab]: colors[lab] for lab in order}
    pairs = [("wall", p) for p in wall_pairs] + [("frames", p) for p in frame_pairs]
    height = max(0.45 * len(order) + 1.3, 0.3 * len(pairs) + 1.3)
    budget = _duration(scope.budget_s) if scope.budget_s else "the budget"
    with F.paper_style():
        fig, axes = F.new_figure(3 if pairs else 2, panel_w=3.1, panel_h=height)
        ax_w, ax_f = axes[0][0], axes[0][1]
        F.draw_interval(ax_w, {shown[lab]: wall[lab] for lab in order}, [shown[lab] for lab in order], pcolors,
                        f"at equal wall clock ({budget})", show_labels=True)  # fmt: skip
        F.draw_interval(ax_f, {shown[lab]: at_frames[lab] for lab in order}, [shown[lab] for lab in order], pcolors,
                        "at equal env frames (per-game $F_g$)", show_labels=False)  # fmt: skip
        # Each reading on its own x range: at equal frames the scores are often a tenth of those
        # at equal wall clock, and a shared axis would squash their ranking into one pixel column.
        # The second panel's title says so, so nobody compares bar positions across the two.
        for ax in (ax_w, ax_f):
            ax.set_xlabel(f"{'normalised' if scope.normalised else 'raw'} score (IQM)")
        wl, fl = ax_w.get_xlim(), ax_f.get_xlim()
        if (fl[1] - fl[0]) < 0.5 * (wl[1] - wl[0]) or (wl[1] - wl[0]) < 0.5 * (fl[1] - fl[0]):
            ax_f.set_title(ax_f.get_title() + "\n(own x scale)")
        else:
            lo, hi = min(wl[0], fl[0]), max(wl[1], fl[1])
            for ax in (ax_w, ax_f):
                ax.set_xlim(lo, hi)
        if pairs:
            ax_p = axes[0][2]
            F.draw_poi(ax_p, [p for _, p in pairs], colors)
            ax_p.set_yticks(range(len(pairs)), [f"{r}: P({x} > {y})" for r, (x, y, _) in pairs])
            if wall_pairs and frame_pairs:
                ax_p.axhline(len(wall_pairs) - 0.5, color="0.5", lw=0.8)
            ax_p.set_title("probability of improvement")
        # Read top-down: the first label (and the wall-clock pairs) on top.
        for ax in axes[0]:
            ax.invert_yaxis()
        foot = (f"IQM over runs x games of the {scope.score_name}, {scope.games_text}; bars: 95% stratified-bootstrap "
                f"CI ({num.opts.reps} draws), n: runs per game. $F_g$: the env frames the shortest run of game g "
                f"reached ({reading.span()}); score: mean return of the last {num.opts.last_episodes} training "
                f"episodes. {scope.hardware}.")  # fmt: skip
        fig.suptitle(str(study.get("title") or study.get("name") or "equal compute"))
        fig.text(0.5, 0.0, textwrap.fill(foot, 170), ha="center", va="top", fontsize=7, color="0.35",
                 style="italic")  # fmt: skip
        # Constrained layout spaces each panel by its own tick labels; tight_layout's uniform gaps
        # would open the long P(x > y) labels' width between the two interval panels as well.
        fig.set_layout_engine("constrained")
        return F.save(fig, stem, num.opts.formats)


# reuse / horizon ---------------------------------------------------------------------------

# Labels come from `reuse = [...]` / `horizon = [...]` (compare.expand: -reuse4, -h3) or from a
# per-agent [grid.AGENT] of the knob itself (sweep.specs_from: -epochs4, -n_step3), which lets
# each family sweep its own range (PPO segments 8..128, n-step 1..20).
SWEEPS = {  # kind: (label pattern, what, x label)
    "reuse": (r"-(?:reuse|epochs|replay_ratio)([0-9]+(?:\.[0-9]+)?)(?=$|-)", "sample-reuse ratio",
              "sample-reuse ratio (grad samples / env step)"),
    "horizon": (r"-(?:h|segment_length|n_step)([0-9]+)(?=$|-)", "bootstrap horizon",
                "bootstrap horizon (env steps)"),
}  # fmt: skip


@dataclass
class Setting:
    """One point of a sweep: the runs of one label."""

    label: str
    series: str  # the line it belongs to: the label without the swept part (usually the agent)
    agent: str | None
    knob: str | None  # the agent config field swept (epochs, replay_ratio, segment_length, n_step)
    value: float  # the setting (from the label, else from the runs)
    measured: float  # reuse: median measured reuse ratio over the runs; horizon: the value
    measured_lo: float
    measured_hi: float
    est: Estimate  # score IQM at equal wall clock
    n_runs: int  # fewest scored runs on any of the scope's games
    sps: float

    def as_json(self) -> dict:
        return {"label": self.label, "value": self.value, "measured": self.measured,
                "measured_range": [self.measured_lo, self.measured_hi], "iqm": self.est, "n_runs": self.n_runs,
                "sps": self.sps}  # fmt: skip


def split_label(label: str, kind: str) -> tuple[str, float | None]:
    """(series, swept value) of a sweep label: ``ppo-reuse4`` -> ("ppo", 4.0), ``rainbow-h3`` ->
    ("rainbow", 3.0), ``ppo-tuned-reuse2-h8`` (kind reuse) -> ("ppo-tuned-h8", 2.0); (label,
    None) when the label has no such part."""
    m = re.search(SWEEPS[kind][0], label)
    if not m:
        return label, None
    return label[: m.start()] + label[m.end() :], float(m.group(1))


def _knob(runs: list[Run], kind: str) -> str | None:
    fields = REUSE_FIELDS if kind == "reuse" else HORIZON_FIELDS
    for r in runs:
        for k in fields:
            if k in r.agent_config:
                return k
    return None


def _settings(kind: str, num: Numbers, scope: Scope, est: dict[str, Estimate]) -> dict[str, list[Setting]]:
    out: dict[str, list[Setting]] = defaultdict(list)
    for lab in scope.labels:
        rs = [r for r in num.runs if r.label == lab and r.game in scope.games]
        series, value = split_label(lab, kind)
        if kind == "reuse":
            measured = [v for r in rs if math.isfinite(v := r.total("reuse_ratio"))]
        else:
            measured = [r.horizon for r in rs if r.horizon is not None]
        if value is None:
            if not measured:
                continue  # a label outside the sweep (e.g. random: no reuse, no horizon)
            value = float(f"{float(np.median(measured)):.2g}")
        mid = float(np.median(measured)) if measured else value
        out[series].append(Setting(
            label=lab, series=series, agent=_agent_of(num, lab), knob=_knob(rs, kind), value=value, measured=mid,
            measured_lo=min(measured, default=value), measured_hi=max(measured, default=value), est=est[lab],
            n_runs=min(scope.n_runs[lab].values(), default=0), sps=_mean([r.sps for r in rs])))  # fmt: skip
    return {s: sorted(pts, key=lambda p: p.value) for s, pts in sorted(out.items())}


def _best(pts: list[Setting]) -> Setting | None:
    """The setting with the highest score; a tie goes to the lower (cheaper) value."""
    have = [p for p in pts if math.isfinite(p.est.point)]
    return max(have, key=lambda p: (p.est.point, -p.value)) if have else None


def _series_numbers(pts: list[Setting]) -> dict:
    best = _best(pts)
    scored = [p for p in pts if math.isfinite(p.est.point)]
    if best is None:
        return {"agent": pts[0].agent, "knob": pts[0].knob, "points": [p.as_json() for p in pts], "best": None}
    low, high = scored[0], scored[-1]
    within = [p.value for p in scored if not _above(best.est, p.est)]
    return {
        "agent": best.agent,
        "family": FAMILY.get(best.agent or ""),
        "knob": best.knob,
        "points": [p.as_json() for p in pts],
        "best": {"value": best.value, "label": best.label, "iqm": best.est},
        "lowest": low.value,
        "highest": high.value,
        "resolved_above_lowest": best is not low and _above(best.est, low.est),
        "highest_resolved_below_best": best is not high and _above(best.est, high.est),
        "within_ci_of_best": within,
        "sps_highest_over_lowest": _div(high.sps, low.sps),
        "has_ci": best.est.has_ci,
    }


def _claim(series: dict, kind: str) -> dict:
    """Does this series agree with "replay learners need only ~3-step returns, on-policy PPO
    needs 32+ step segments"? ``consistent``: for a replay agent, a horizon <= 3 lies within the
    CI of the best; for PPO, the best is >= 32 and every shorter segment is resolved below it.
    ``not tested``: the sweep has no value on the side of the threshold that decides it."""
    agent, best = series.get("agent"), series.get("best")
    if kind != "horizon" or best is None or agent not in REPLAY_AGENTS + ON_POLICY_AGENTS:
        return {"role": None, "verdict": "not part of the claim", "why": ""}
    values = [p["value"] for p in series["points"] if p["iqm"]["point"] is not None]
    within = series["within_ci_of_best"]
    if not series["has_ci"]:
        role = "replay" if agent in REPLAY_AGENTS else "on-policy"
        return {"role": role, "verdict": "not resolved", "why": "one run per game, no CI"}
    if agent in REPLAY_AGENTS:
        short = [v for v in values if v <= SHORT_NSTEP]
        if not short:
            return {"role": "replay", "verdict": "not tested", "why": f"no n-step <= {SHORT_NSTEP} was run"}
        ok = [v for v in short if v in within]
        if ok and best["value"] <= SHORT_NSTEP:
            return {"role": "replay", "verdict": "consistent", "why": f"the best n-step is {_g(best['value'])}"}
        if ok:
            return {"role": "replay", "verdict": "consistent",
                    "why": f"n-step {_g(max(ok))} is within the CI of the best, {_g(best['value'])}"}  # fmt: skip
        return {"role": "replay", "verdict": "inconsistent",
                "why": f"every n-step <= {SHORT_NSTEP} is resolved below the best, {_g(best['value'])}"}  # fmt: skip
    short = [v for v in values if v < LONG_SEGMENT]
    if not short or max(values) < LONG_SEGMENT:
        return {"role": "on-policy", "verdict": "not tested",
                "why": f"the sweep does not span segments below and at or above {LONG_SEGMENT}"}  # fmt: skip
    if best["value"] < LONG_SEGMENT:
        return {"role": "on-policy", "verdict": "inconsistent", "why": f"the best segment is {_g(best['value'])}"}
    near = [v for v in short if v in within]
    if near:
        return {"role": "on-policy", "verdict": "inconsistent",
                "why": f"a {_g(max(near))}-step segment is within the CI of the best, {_g(best['value'])}"}  # fmt: skip
    return {"role": "on-policy", "verdict": "consistent",
            "why": f"every segment below {LONG_SEGMENT} is resolved below the best, {_g(best['value'])}"}  # fmt: skip


def _g(v: float) -> str:
    return f"{v:g}"


def _sweep(kind: str, study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    scope = _scope(num, study, hardware, list(num.labels), "setting")
    est = _wall_estimates(num, scope)
    settings = _settings(kind, num, scope, est)
    if not settings:
        raise UserError(f"study {study.get('name', '?')}: no run has a {SWEEPS[kind][1]} to sweep")
    # JSON form from here on (Estimates as {point, lo, hi}, NaN as None): the text reads what the page stores.
    series = {s: _clean(_series_numbers(pts)) for s, pts in settings.items()}
    if kind == "horizon":
        for s in series.values():
            s["claim"] = _claim(s, kind)
    o = num.opts
    numbers = {"kind": kind, "scope": scope.as_json(), "score": "normalised" if scope.normalised else "raw",
               "last_episodes": o.last_episodes, "bootstrap": {"reps": o.reps, "seed": o.seed},
               "series": series}  # fmt: skip
    figures = _sweep_figure(_stem(fig_dir, study, kind), kind, study, num, scope, settings)
    clauses = [_sweep_clause(kind, name, s) for name, s in series.items()]
    answer = (f"{scope.prefix()}, with the {scope.iqm_name} and 95% CI at equal wall clock: "
              + "; ".join(c for c in clauses if c) + ".")  # fmt: skip
    answer += scope.raw_note()
    if kind == "horizon":
        answer += _claim_text(series)
    default = ("Other hardware, where a gradient step costs differently relative to an env step, or a longer "
               "budget, would move the optima.")  # fmt: skip
    return StudyResult(numbers=_clean(numbers), figures=figures, answer=answer,
                       change=_one_line(study.get("change") or default))  # fmt: skip


def _sweep_clause(kind: str, name: str, s: dict) -> str:
    best = s.get("best")
    if best is None:
        return ""
    pts = {p["value"]: p for p in s["points"]}
    knob = KNOB_WORDS.get(s.get("knob") or "", "")
    who = _plain(name) + (f" ({knob})" if knob and kind == "reuse" else "")
    b, low = best["value"], s["lowest"]
    b_est = _est(_e(best["iqm"]))
    low_est = _est(_e(pts[low]["iqm"]))
    if kind == "reuse":
        high = s["highest"]
        cost = (f", with reuse {_g(high)} at {_ratio(s['sps_highest_over_lowest'])} the SPS of reuse {_g(low)}"
                if high != low else "")  # fmt: skip
        if len(pts) == 1:
            return f"{who} at reuse {_g(b)}: {b_est} (a single setting)"
        if b == low:
            return (f"{who} scores best at the lowest reuse, {_g(low)} ({b_est}): more reuse does not pay for its "
                    f"compute{cost}")  # fmt: skip
        tail = (f", resolved above reuse {_g(low)} ({low_est}): more reuse pays for its compute up to {_g(b)}"
                if s["resolved_above_lowest"] else
                f", not resolved above reuse {_g(low)} ({low_est}): the extra compute buys no resolved gain")  # fmt: skip
        over = (f", and reuse {_g(s['highest'])} is resolved below the optimum"
                if s["highest_resolved_below_best"] else "")  # fmt: skip
        return f"{who} peaks at reuse {_g(b)} ({b_est}){tail}{over}{cost}"
    word = knob or "horizon"
    within = s["within_ci_of_best"]
    others = [v for v in within if v != b]
    if len(pts) == 1:
        return f"{_plain(name)} ran a single {word}, {_g(b)} ({b_est})"
    near = (f"{word} {_and(within)} are within its CI" if others else
            "every other value is resolved below it" if s["has_ci"] else "no CI (one run per game)")  # fmt: skip
    return f"{_plain(name)}'s best {word} is {_g(b)} ({b_est}), and {near}"


def _and(values: list[float]) -> str:
    """1, 3 and 5."""
    words = [_g(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _e(d: dict) -> Estimate:
    """An Estimate back from its JSON form (None: absent)."""
    return Estimate(*(math.nan if d[k] is None else d[k] for k in ("point", "lo", "hi")))


def _claim_text(series: dict) -> str:
    judged = {name: s["claim"] for name, s in series.items() if s.get("claim", {}).get("role")}
    if not judged:
        return ""
    parts = [f"{_plain(name)}: {c['verdict']} ({c['why']})" for name, c in judged.items()]
    return (f" Against the claim that off-policy methods need only ~{SHORT_NSTEP}-step bootstraps while on-policy "
            f"methods need {LONG_SEGMENT}+ step segments: " + "; ".join(parts) + ".")  # fmt: skip


def _sweep_figure(stem: Path, kind: str, study: dict, num: Numbers, scope: Scope,
                  settings: dict[str, list[Setting]]) -> list[Path]:  # fmt: skip
    import matplotlib.ticker as mt

    from plots import figures as F

    colors = F.colors_for(list(settings))
    _, what, xlabel = SWEEPS[kind]
    budget = _duration(scope.budget_s) if scope.budget_s else "the budget"
    with F.paper_style():
        fig, axes = F.new_figure(2, panel_w=3.6, panel_h=2.8)
        ax, ax_sps = axes[0]
        xs_all: list[float] = []
        for name, pts in settings.items():
            c = colors[name]
            # reuse: x is the measured ratio (warm-up makes it a little below the setting);
            # horizon: the setting itself, which is exact.
            xs = np.array([p.measured if kind == "reuse" else p.value for p in pts])
            ys = np.array([p.est.point for p in pts])
            lo = np.array([p.est.lo for p in pts])
            hi = np.array([p.est.hi for p in pts])
            xs_all += list(xs)
            ax.plot(xs, ys, marker="o", ms=4, color=c, label=_n_label(_plain(name), [p.n_runs for p in pts]))
            ax.fill_between(xs, lo, hi, color=c, alpha=F.CI_ALPHA, lw=0)
            best = _best(pts)
            if best is not None:
                bx = best.measured if kind == "reuse" else best.value
                ax.plot([bx], [best.est.point], marker="*", ms=11, color=c, mec="k", mew=0.6, lw=0)
            for x, p in zip(xs, pts, strict=True):
                if len({q.n_runs for q in pts}) == 1:
                    break  # one n for the series: the legend says it
                ax.annotate(f"n={p.n_runs}", (x, p.est.point), xytext=(3, -9), textcoords="offset points",
                            fontsize=6, color=c)  # fmt: skip
            ax_sps.plot(xs, [p.sps for p in pts], marker="o", ms=4, color=c)
        for a in (ax, ax_sps):
            _log2_axis(a, xs_all)
            a.set_xlabel(xlabel)
        ax.set_ylabel(f"{'normalised' if scope.normalised else 'raw final'} score (IQM)")
        ax.set_title(f"score at equal wall clock ({budget})")
        sps = [p.sps for pts in settings.values() for p in pts if math.isfinite(p.sps) and p.sps > 0]
        if sps and max(sps) / min(sps) > 10:
            ax_sps.set_yscale("log")
        if ax_sps.get_yscale() == "log":
            # Ticks at 1-2-5 of each decade; matplotlib's default labels minor ticks as 4x10^3.
            ax_sps.yaxis.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax_sps.yaxis.set_minor_formatter(mt.NullFormatter())
        F.count_axis(ax_sps, "y")
        ax_sps.set_ylabel("env steps per second (SPS)")
        ax_sps.set_title("training throughput")
        legend = F.shared_legend(fig, axes[0])
        fig.suptitle(str(study.get("title") or f"score vs {what}"), y=1.02)
        knob_note = ("; horizon: PPO/PQN rollout segment length, Rainbow/BTR n-step return" if kind == "horizon" else
                     "; reuse: PPO/PQN epochs, Rainbow/BTR replay ratio, measured")  # fmt: skip
        foot = (f"line: IQM of the {scope.score_name} over runs x games ({scope.games_text}); band: 95% "
                f"stratified-bootstrap CI ({num.opts.reps} draws); star: each series' best; n: runs per game and point"
                f"{knob_note}. {scope.hardware}.")  # fmt: skip
        F.footnote(fig, textwrap.fill(foot, 130), below=legend)
        fig.tight_layout()
        return F.save(fig, stem, num.opts.formats)


def _n_label(name: str, ns: list[int]) -> str:
    """Legend entry with the runs behind each point: "PPO (n=3)", "PPO (n=2-3)"."""
    lo, hi = min(ns, default=0), max(ns, default=0)
    return f"{name} (n={lo})" if lo == hi else f"{name} (n={lo}-{hi})"


def _log2_axis(ax, xs: list[float]) -> None:
    """Log2 x axis with ticks at the powers of two spanning the data (1, 2, 4, ...)."""
    import matplotlib.ticker as mt

    xs = [x for x in xs if math.isfinite(x) and x > 0]
    if not xs:
        return
    ax.set_xscale("log", base=2)
    lo_e, hi_e = math.floor(math.log2(min(xs)) + 0.2), math.ceil(math.log2(max(xs)) - 0.2)
    ticks = [2.0**e for e in range(lo_e, max(hi_e, lo_e + 1) + 1)]
    ax.set_xticks(ticks)
    ax.set_xlim(min(ticks[0], min(xs)) / 1.3, max(ticks[-1], max(xs)) * 1.3)
    ax.xaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(mt.NullLocator())


# arms --------------------------------------------------------------------------------------


def _arm_order(study: dict, labels: list[str]) -> list[str]:
    """The study file's arm order (its ``[arms.<label>]`` tables), then any other label sorted."""
    arms = study.get("arms")
    named = list(arms) if isinstance(arms, dict) else [a.get("label") for a in arms or [] if isinstance(a, dict)]
    first = [lab for lab in named if lab in labels]
    return first + [lab for lab in labels if lab not in first]


def _arms(study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    scope = _scope(num, study, hardware, _arm_order(study, list(num.labels)), "arm")
    o = num.opts
    est, pairs = _wall_estimates(num, scope), _wall_pairs(num, scope)
    compute = {lab: _compute(num, scope, lab) for lab in scope.labels}
    lead = _lead(est)

    def ratio(x: str, y: str, k: str) -> float:
        return _div(compute[x][k], compute[y][k])

    ratios = [{"x": x, "y": y, **{k: ratio(x, y, k) for k in ("sps", "frames", "grad_samples")}}
              for i, x in enumerate(scope.labels) for y in scope.labels[i + 1 :]]  # fmt: skip
    numbers = {"kind": "arms", "scope": scope.as_json(), "score": "normalised" if scope.normalised else "raw",
               "last_episodes": o.last_episodes, "bootstrap": {"reps": o.reps, "seed": o.seed},
               "iqm": est, "poi": _pairs_json(pairs), "lead": lead.as_json(), "compute": compute,
               "ratios": ratios}  # fmt: skip
    figures = _arms_figure(_stem(fig_dir, study, "arms"), study, num, scope, est)
    answer = (f"{scope.prefix()}, the {scope.iqm_name} with 95% CI at equal wall clock is "
              f"{_list_est(est, lead.order or scope.labels)}")  # fmt: skip
    answer = _sentence(answer, _lead_text(lead, est, pairs, "", _plain)) + scope.raw_note()
    a, b = lead.leader, lead.runner_up
    if a and b:
        answer += (f" {_plain(a)} ran at {fmt(compute[a]['sps'])} env steps per second, {_ratio(ratio(a, b, 'sps'))} "
                   f"{_plain(b)}'s, and in the budget took {_ratio(ratio(a, b, 'frames'))} its env frames and "
                   f"{_ratio(ratio(a, b, 'grad_samples'))} its gradient samples.")  # fmt: skip
    default = "Other hardware or a longer budget, which change the throughput ratio between the arms."
    return StudyResult(numbers=_clean(numbers), figures=figures, answer=answer,
                       change=_one_line(study.get("change") or default))  # fmt: skip


def _arms_figure(stem: Path, study: dict, num: Numbers, scope: Scope, est: dict[str, Estimate]) -> list[Path]:
    from plots import figures as F

    order = scope.labels
    colors = F.colors_for(order)
    shown = {lab: f"{lab} (n={min(scope.n_runs[lab].values(), default=0)})" for lab in order}
    pcolors = {shown[lab]: colors[lab] for lab in order}
    budget = _duration(scope.budget_s) if scope.budget_s else "the budget"
    sps = {shown[lab]: [r.sps for r in num.runs if r.label == lab and r.game in scope.games] for lab in order}
    with F.paper_style():
        fig, axes = F.new_figure(2, panel_w=3.4, panel_h=0.45 * len(order) + 1.3)
        F.draw_interval(axes[0][0], {shown[lab]: est[lab] for lab in order}, [shown[lab] for lab in order], pcolors,
                        f"score at equal wall clock ({budget})", show_labels=True)  # fmt: skip
        axes[0][0].set_xlabel(f"{'normalised' if scope.normalised else 'raw'} score (IQM)")
        F.draw_per_run_bars(axes[0][1], sps, [shown[lab] for lab in order], pcolors, "training throughput",
                            "env steps per second (SPS)", log=True)  # fmt: skip
        fig.suptitle(str(study.get("title") or study.get("name") or "arms"), y=1.02)
        foot = (f"left: IQM over runs x games of the {scope.score_name}, {scope.games_text}; bars: 95% "
                f"stratified-bootstrap CI ({num.opts.reps} draws), n: runs per game. Right: mean SPS over runs (dots: "
                f"single runs). {scope.hardware}.")  # fmt: skip
        fig.text(0.5, -0.02, textwrap.fill(foot, 130), ha="center", va="top", fontsize=7, color="0.35",
                 style="italic")  # fmt: skip
        fig.tight_layout()
        return F.save(fig, stem, num.opts.formats)


# ablation ----------------------------------------------------------------------------------

# The BTR paper's claim on Atari (Clark et al. 2024): these two removals cost the most.
CLAIM_ARMS = ("btr-no-impala", "btr-no-munchausen")


def _ablation(study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    scope = _scope(num, study, hardware, _arm_order(study, list(num.labels)), "arm")
    if len(scope.labels) < 2:
        raise UserError(f"study {study.get('name', '?')}: an ablation needs the full agent and at least one arm "
                        f"without a component (arms: {', '.join(scope.labels)})")  # fmt: skip
    o = num.opts
    ref, others = scope.labels[0], scope.labels[1:]
    ref_agent = _agent_of(num, ref)
    wall_est = _wall_estimates(num, scope)
    reading = frames_reading(num, scope)
    fgames = [g for g in scope.games if g in reading.frames]
    fmats = {lab: stats.pad_runs([reading.scores[g][lab] for g in fgames]) for lab in scope.labels}
    frames_est = {lab: stats.aggregate_estimates(m, o.reps, o.seed)["iqm"] for lab, m in fmats.items()}
    wmats = {lab: _wall_matrix(num, scope, lab) for lab in scope.labels}
    # A comparison arm runs another agent (Rainbow against BTR): its drop is reported, not ranked
    # among the components, which it is not.
    role = {lab: "comparison" if _agent_of(num, lab) != ref_agent else "component" for lab in others}
    drops = {lab: {"wall": stats.iqm_difference(wmats[ref], wmats[lab], o.reps, o.seed),
                   "frames": stats.iqm_difference(fmats[ref], fmats[lab], o.reps, o.seed)} for lab in others}  # fmt: skip
    comps = [lab for lab in others if role[lab] == "component"]
    ranks = {r: _ranks({lab: drops[lab][r] for lab in comps}) for r in ("wall", "frames")}
    order = {r: sorted((lab for lab in comps if ranks[r][lab] is not None), key=lambda lab: ranks[r][lab])
             for r in ("wall", "frames")}  # fmt: skip
    arms_json = {}
    for lab in others:
        opts = {k: v for k, v in (study.get("arms") or {}).get(lab, {}).items() if k not in ("agent", "preset_file")}
        arms_json[lab] = {"role": role[lab], "agent": _agent_of(num, lab), "options": opts,
                          "drop_wall": drops[lab]["wall"], "drop_frames": drops[lab]["frames"],
                          "resolved_wall": _excludes_zero(drops[lab]["wall"]),
                          "resolved_frames": _excludes_zero(drops[lab]["frames"]),
                          "rank_wall": ranks["wall"].get(lab), "rank_frames": ranks["frames"].get(lab),
                          "iqm_wall": wall_est[lab], "iqm_frames": frames_est[lab]}  # fmt: skip
    claim = _ablation_claim(comps, drops, ranks)
    numbers = {
        "kind": "ablation", "scope": scope.as_json(), "score": "normalised" if scope.normalised else "raw",
        "last_episodes": o.last_episodes, "bootstrap": {"reps": o.reps, "seed": o.seed},
        "reference": {"label": ref, "agent": ref_agent, "iqm_wall": wall_est[ref], "iqm_frames": frames_est[ref]},
        "frames": {"per_game": reading.frames, "limited_by": reading.limited_by, "games": fgames},
        "arms": arms_json,
        "ranking": {"wall": order["wall"], "frames": order["frames"],
                    "ranking_differs": order["wall"] != order["frames"],
                    "top_differs": order["wall"][:1] != order["frames"][:1],
                    "rank_correlation": _spearman(ranks["wall"], ranks["frames"])},
        "claim": claim,
        "compute": {lab: _compute(num, scope, lab) for lab in scope.labels},
    }  # fmt: skip
    numbers = _clean(numbers)
    figures = _ablation_figure(_stem(fig_dir, study, "ablation"), study, num, scope, ref, drops, role,
                               order["frames"], wall_est[ref], frames_est[ref], reading)  # fmt: skip
    answer = _ablation_answer(scope, numbers, reading)
    default = ("A GPU or longer budgets, which change what each component costs in wall clock and how long "
               "training runs for the components that stabilise it to matter.")  # fmt: skip
    return StudyResult(numbers=numbers, figures=figures, answer=answer,
                       change=_one_line(study.get("change") or default))  # fmt: skip


def _excludes_zero(e: Estimate) -> bool:
    """The 95% CI of a difference excludes 0: the difference is resolved."""
    return e.has_ci and (e.lo > 0 or e.hi < 0)


def _ranks(drops: dict[str, Estimate]) -> dict[str, int | None]:
    """1 = the largest drop (the removal that costs most); ties keep the file order; None: no score."""
    have = sorted((lab for lab in drops if math.isfinite(drops[lab].point)), key=lambda lab: -drops[lab].point)
    out: dict[str, int | None] = {lab: None for lab in drops}
    out.update({lab: i for i, lab in enumerate(have, start=1)})
    return out


def _spearman(a: dict[str, int | None], b: dict[str, int | None]) -> float:
    """Rank correlation of two rankings over the labels both rank (NaN below three)."""
    common = [lab for lab in a if a[lab] is not None and b.get(lab) is not None]
    if len(common) < 3:
        return math.nan
    x = np.argsort(np.argsort([a[lab] for lab in common]))
    y = np.argsort(np.argsort([b[lab] for lab in common]))
    return float(np.corrcoef(x, y)[0, 1])


def _ablation_claim(comps: list[str], drops: dict, ranks: dict) -> dict:
    """Is "Impala CNN and Munchausen are the largest contributors" true here, at each reading?
    ``consistent``: their removals are the two largest drops; ``resolved``: consistent and both
    drops' CIs lie above every other component's, or inconsistent and a higher-ranked
    component's CI lies above one of theirs."""
    missing = [lab for lab in CLAIM_ARMS if lab not in comps]
    if missing:
        return {"verdict": "not tested", "why": f"no arm {' or '.join(missing)}", "readings": {}}
    out = {}
    for r in ("wall", "frames"):
        rk = {lab: ranks[r][lab] for lab in CLAIM_ARMS}
        if any(v is None for v in rk.values()):
            out[r] = {"verdict": "not tested", "ranks": rk, "resolved": False}
            continue
        rest = [lab for lab in comps if lab not in CLAIM_ARMS]
        est = {lab: drops[lab][r] for lab in comps}
        if max(rk.values()) <= 2:
            res = all(_above(est[c], est[x]) for c in CLAIM_ARMS for x in rest)
            out[r] = {"verdict": "consistent", "ranks": rk, "resolved": res}
        else:
            above = [x for x in rest if ranks[r][x] is not None and any(
                ranks[r][x] < rk[c] and _above(est[x], est[c]) for c in CLAIM_ARMS)]  # fmt: skip
            out[r] = {"verdict": "inconsistent", "ranks": rk, "resolved": bool(above), "resolved_above": above}
    verdicts = {v["verdict"] for v in out.values()}
    verdict = verdicts.pop() if len(verdicts) == 1 else "mixed"
    return {"verdict": verdict, "why": "", "readings": out}


def _drop_text(a: dict, r: str) -> str:
    e = _e(a[f"drop_{r}"])
    tag = "" if a[f"resolved_{r}"] or not e.has_ci else ", not resolved from 0"
    return f"{_est(e)}{tag}"


def _ablation_answer(scope: Scope, n: dict, reading: FramesReading) -> str:
    ref, arms, rk = n["reference"], n["arms"], n["ranking"]
    head = (f"{scope.prefix()}, full {ref['label']} scores {_est(_e(ref['iqm_frames']))} ({scope.iqm_name}) at "
            f"equal env frames ({reading.span()} per game) and {_est(_e(ref['iqm_wall']))} at equal wall clock.")  # fmt: skip
    parts = [head]
    for r, words in (("frames", "at equal env frames"), ("wall", "at equal wall clock")):
        top = rk[r][:3]
        if top:
            items = "; ".join(f"{lab} {_drop_text(arms[lab], r)}" for lab in top)
            parts.append(f"The largest drops in IQM {words} (full minus ablated, 95% CI): {items}.")
    if len(rk["frames"]) > 1:
        if rk["ranking_differs"]:
            top = ("the largest contributor differs too" if rk["top_differs"] else
                   f"the largest contributor, {rk['frames'][0]}, is the same")  # fmt: skip
            parts.append(f"The ranking differs between the two readings (rank correlation "
                         f"{_v(rk['rank_correlation'])}); {top}.")  # fmt: skip
        else:
            parts.append("The ranking is the same at both readings.")
    claim = n["claim"]
    if claim["verdict"] == "not tested":
        parts.append(f"The BTR paper's claim that the Impala CNN and Munchausen are the largest contributors is "
                     f"not tested here ({claim['why']}).")  # fmt: skip
    else:
        bits = []
        for r, words in (("frames", "at equal frames"), ("wall", "at equal wall clock")):
            c = claim["readings"][r]
            if c["verdict"] == "not tested":
                bits.append(f"not tested {words}")
                continue
            res = "resolved" if c["resolved"] else "not resolved"
            ranks = ", ".join(f"{lab} ranks {c['ranks'][lab]}" for lab in CLAIM_ARMS)
            bits.append(f"{c['verdict']} {words} ({ranks}; {res})")
        parts.append("The BTR paper's claim that the Impala CNN and Munchausen are the largest contributors: "
                     + "; ".join(bits) + ".")  # fmt: skip
    comp = [lab for lab, a in arms.items() if a["role"] == "comparison"]
    if comp:
        items = "; ".join(f"{lab} ({arms[lab]['agent']}) {_drop_text(arms[lab], 'frames')} at equal frames, "
                          f"{_drop_text(arms[lab], 'wall')} at equal wall clock" for lab in comp)  # fmt: skip
        parts.append(f"For comparison, the drop from full {ref['label']} to {items}.")
    return " ".join(parts) + scope.raw_note()


def _ablation_figure(stem: Path, study: dict, num: Numbers, scope: Scope, ref: str, drops: dict, role: dict,
                     by_frames: list[str], ref_wall: Estimate, ref_frames: Estimate,
                     reading: FramesReading) -> list[Path]:  # fmt: skip
    from plots import figures as F

    # Components sorted by their equal-frames drop (largest on top), unscored ones after them, then
    # the comparison rows below a line.
    comps = by_frames + [lab for lab, r in role.items() if r == "component" and lab not in by_frames]
    comparisons = [lab for lab, r in role.items() if r == "comparison"]
    rows = comps + comparisons
    shown = [f"{lab} (comparison: {_agent_of(num, lab)})" if role[lab] == "comparison" else lab for lab in rows]
    budget = _duration(scope.budget_s) if scope.budget_s else "the budget"
    with F.paper_style():
        fig, axes = F.new_figure(2, panel_w=3.4, panel_h=0.32 * len(rows) + 1.4)
        for ax, r, title, refe in ((axes[0][0], "frames", "at equal env frames", ref_frames),
                                   (axes[0][1], "wall", f"at equal wall clock ({budget})", ref_wall)):  # fmt: skip
            for i, lab in enumerate(rows):
                e = drops[lab][r]
                if not math.isfinite(e.point):
                    F.note_at(ax, i, "n/a")
                    continue
                comparison = role[lab] == "comparison"
                ax.barh(i, e.point, height=0.6, color="0.75" if comparison else "#1f77b4",
                        hatch="//" if comparison else "", alpha=0.85)  # fmt: skip
                if e.has_ci:
                    ax.errorbar(e.point, i, xerr=[[e.point - e.lo], [e.hi - e.point]], fmt="none", ecolor="k",
                                capsize=2, lw=0.9)  # fmt: skip
            ax.axvline(0, color="k", lw=0.8)
            if comparisons and comps:
                ax.axhline(len(comps) - 0.5, color="0.5", lw=0.8, ls="--")
            ax.set_yticks(range(len(rows)), shown if r == "frames" else [""] * len(rows))
            ax.set_ylim(len(rows) - 0.4, -0.6)  # the largest drop on top
            ax.set_title(f"{title}\nfull {ref}: IQM {_est(refe)}")
            ax.set_xlabel(f"drop in {'normalised' if scope.normalised else 'raw'} IQM (full - ablated)")
            ax.grid(axis="y", visible=False)
        lo = min(axes[0][0].get_xlim()[0], axes[0][1].get_xlim()[0])
        hi = max(axes[0][0].get_xlim()[1], axes[0][1].get_xlim()[1])
        for ax in axes[0]:
            ax.set_xlim(lo, hi)  # one x range, so a bar compares across the two readings
        fig.suptitle(str(study.get("title") or study.get("name") or "ablation"))
        foot = (f"bar: IQM of the full agent minus IQM of the ablated one over runs x games of the "
                f"{scope.score_name} ({scope.games_text}); positive: the removal costs score. Error bar: 95% CI "
                f"of the difference, stratified bootstrap of each side's runs per game ({num.opts.reps} draws). "
                f"Equal frames: per game the env frames every run reached ({reading.span()}). Sorted by the "
                f"equal-frames drop; hatched: another agent, for comparison. {scope.hardware}.")  # fmt: skip
        fig.text(0.5, 0.0, textwrap.fill(foot, 130), ha="center", va="top", fontsize=7, color="0.35",
                 style="italic")  # fmt: skip
        fig.set_layout_engine("constrained")
        return F.save(fig, stem, num.opts.formats)


# variants ----------------------------------------------------------------------------------


@dataclass
class Diagnostic:
    """One learner.csv column over a study's runs."""

    name: str
    per_run: dict[str, dict[str, list[float]]]  # label -> game -> second-half means of the runs that log it
    missing: dict[str, int]  # label -> runs without the column (or without learner.csv)
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # label -> per run (wall_s, value)


def _diagnostic(num: Numbers, scope: Scope, name: str) -> Diagnostic:
    from plots.load import read_ledger

    d = Diagnostic(name, {lab: {g: [] for g in scope.games} for lab in scope.labels},
                   dict.fromkeys(scope.labels, 0), {lab: [] for lab in scope.labels})  # fmt: skip
    for lab in scope.labels:
        for g in scope.games:
            for r in _cell(num, lab, g, scope.normalised):
                cols, _, bad = read_ledger(r.path / "learner.csv", ())
                wall, y = cols.get("wall_s"), cols.get(name)
                if bad or wall is None or y is None or not len(y):
                    d.missing[lab] += 1
                    continue
                d.per_run[lab][g].append(second_half_mean(wall, y, r.total("wall_s")))
                d.curves[lab].append((wall, y))
    return d


def second_half_mean(wall: np.ndarray, y: np.ndarray, train_wall_s: float) -> float:
    """Mean of ``y`` over the learner rows logged in the second half of the run's training wall
    clock (``wall_s > train_wall_s / 2``; the last row's wall_s when the total is unknown), empty
    fields ignored: what the learner settled at, not its first updates. NaN when no value."""
    end = train_wall_s if math.isfinite(train_wall_s) and train_wall_s > 0 else float(np.nanmax(wall))
    v = y[(wall > end / 2) & np.isfinite(y)]
    return float(np.mean(v)) if v.size else math.nan


def _variants(study: dict, num: Numbers, fig_dir: Path, hardware: str) -> StudyResult:
    scope = _scope(num, study, hardware, _arm_order(study, list(num.labels)), "arm")
    o = num.opts
    base, others = scope.labels[0], scope.labels[1:]
    est, pairs = _wall_estimates(num, scope), _wall_pairs(num, scope)
    wmats = {lab: _wall_matrix(num, scope, lab) for lab in scope.labels}
    vs = {}
    for lab in others:
        diff = stats.iqm_difference(wmats[lab], wmats[base], o.reps, o.seed)
        vs[lab] = {"diff": diff, "poi": _poi(pairs, lab, base), "resolved": _excludes_zero(diff),
                   "better": math.isfinite(diff.point) and diff.point > 0}  # fmt: skip
    diags = [_diagnostic(num, scope, name) for name in study.get("diagnostics") or []]
    diag_json = {}
    for d in diags:
        mats = {lab: stats.pad_runs([d.per_run[lab][g] for g in scope.games]) for lab in scope.labels}
        arms = {}
        for lab in scope.labels:
            logged = int(np.isfinite(mats[lab]).sum())
            if not any(d.per_run[lab][g] for g in scope.games):
                arms[lab] = {"status": "not logged", "runs": 0, "runs_missing": d.missing[lab]}
                continue
            arms[lab] = {
                "status": "ok", "runs": logged, "runs_missing": d.missing[lab],
                "iqm": stats.iqm_estimate(mats[lab], o.reps, o.seed),
                "per_game": {g: stats.iqm_estimate(stats.pad_runs([d.per_run[lab][g]]), o.reps, o.seed)
                             for g in scope.games},
                "per_run": {g: d.per_run[lab][g] for g in scope.games},
            }  # fmt: skip
            if lab != base and arms.get(base, {}).get("status") == "ok":
                diff = stats.iqm_difference(mats[lab], mats[base], o.reps, o.seed)
                arms[lab]["vs_baseline"] = diff
                arms[lab]["resolved"] = _excludes_zero(diff)
        logged_any = any(a["status"] == "ok" for a in arms.values())
        diag_json[d.name] = {"status": "ok" if logged_any else "not logged", "arms": arms}
    numbers = _clean({
        "kind": "variants", "scope": scope.as_json(), "score": "normalised" if scope.normalised else "raw",
        "last_episodes": o.last_episodes, "bootstrap": {"reps": o.reps, "seed": o.seed}, "baseline": base,
        "iqm": est, "poi": _pairs_json(pairs), "vs_baseline": vs,
        "diagnostics_summary": "per run: mean of the learner.csv column over the rows logged in the second half of "
                               "its training wall clock; per arm: IQM over runs x games with a 95% stratified-"
                               "bootstrap CI, and per game",
        "diagnostics": diag_json,
        "compute": {lab: _compute(num, scope, lab) for lab in scope.labels},
    })  # fmt: skip
    figures = _variants_figure(_stem(fig_dir, study, "variants"), study, num, scope, est, diags, numbers)
    default = "Other hardware or a longer budget, which change how many updates each variant makes."
    return StudyResult(numbers=numbers, figures=figures, answer=_variants_answer(scope, numbers),
                       change=_one_line(study.get("change") or default))  # fmt: skip


def _variants_answer(scope: Scope, n: dict) -> str:
    base = n["baseline"]
    parts = [f"{scope.prefix()}, the {scope.iqm_name} with 95% CI at equal wall clock is "
             f"{_list_est({k: _e(v) for k, v in n['iqm'].items()}, scope.labels)}."]  # fmt: skip
    clauses = []
    for lab, v in n["vs_baseline"].items():
        diff, poi = _e(v["diff"]), _e(v["poi"])
        if not math.isfinite(diff.point):
            clauses.append(f"{lab} has no score")
            continue
        word = "above" if v["better"] else "below"
        res = ("resolved" if v["resolved"] else "not resolved" if diff.has_ci else "no CI")
        clauses.append(f"{lab} {'+' if diff.point >= 0 else ''}{_est(diff)} {word} it "
                       f"(P({lab} > {base}) = {_est(poi)}, {res})")  # fmt: skip
    if clauses:
        beat = [lab for lab, v in n["vs_baseline"].items() if v["better"] and v["resolved"]]
        verdict = (f"{_and_words(beat)} beat{'s' if len(beat) == 1 else ''} the baseline, resolved" if beat else
                   "no arm is resolved above the baseline")  # fmt: skip
        parts.append(f"Against the baseline {base} (difference of IQMs, 95% CI): {'; '.join(clauses)}; {verdict}.")
    diag = []
    for name, d in n["diagnostics"].items():
        if d["status"] == "not logged":
            diag.append(f"{name}: not logged")
            continue
        items = []
        for lab, a in d["arms"].items():
            if a["status"] == "not logged":
                items.append(f"{lab} not logged")
                continue
            txt = f"{lab} {_est_small(_e(a['iqm']))}"
            if "vs_baseline" in a and a["resolved"]:
                txt += f" ({'above' if _e(a['vs_baseline']).point > 0 else 'below'} {base}, resolved)"
            items.append(txt)
        diag.append(f"{name}: " + ", ".join(items))
    if diag:
        parts.append("Diagnostics (per run the mean over the second half of training wall clock; IQM over runs "
                     "with 95% CI): " + "; ".join(diag) + ".")  # fmt: skip
    return " ".join(parts) + scope.raw_note()


def _and_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing mean over 2% of a run's rows (empty fields skipped): one update's value is noisy,
    and the curve is meant to show the trend."""
    k = max(1, len(y) // 50)
    ok = np.isfinite(y)
    c = np.cumsum(np.where(ok, y, 0.0))
    n = np.cumsum(ok)
    c = np.concatenate([[0.0], c])
    n = np.concatenate([[0], n])
    lo = np.maximum(np.arange(1, len(y) + 1) - k, 0)
    hi = np.arange(1, len(y) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c[hi] - c[lo]) / (n[hi] - n[lo])


def _variants_figure(stem: Path, study: dict, num: Numbers, scope: Scope, est: dict[str, Estimate],
                     diags: list[Diagnostic], n: dict) -> list[Path]:  # fmt: skip
    import matplotlib.ticker as mt

    from plots import figures as F

    order = scope.labels
    colors = F.colors_for(order)
    shown = {lab: f"{lab} (n={min(scope.n_runs[lab].values(), default=0)})" for lab in order}
    pcolors = {shown[lab]: colors[lab] for lab in order}
    budget = _duration(scope.budget_s) if scope.budget_s else "the budget"
    ncols = 1 + len(diags)
    with F.paper_style():
        fig, axes = F.new_figure(ncols, 2, panel_w=3.0, panel_h=max(0.4 * len(order) + 1.2, 2.4))
        F.draw_interval(axes[0][0], {shown[lab]: est[lab] for lab in order}, [shown[lab] for lab in order], pcolors,
                        f"score at equal wall clock ({budget})", show_labels=True)  # fmt: skip
        axes[0][0].set_xlabel(f"{'normalised' if scope.normalised else 'raw'} score (IQM)")
        axes[0][0].invert_yaxis()
        curves = (num.agg_curves or {}).get("wall") or {}
        ax = axes[1][0]
        if curves:
            for lab in order:
                if lab in curves:
                    F.draw_curve(ax, curves[lab], colors[lab], lab)
            ax.set_xlabel("training wall clock (s)")
            ax.set_ylabel("normalised score (IQM)")
            ax.set_title("score vs wall clock")
        else:
            ax.set_axis_off()
        for j, d in enumerate(diags, start=1):
            ax, ax_c = axes[0][j], axes[1][j]
            dj = n["diagnostics"][d.name]["arms"]
            ests = {shown[lab]: _e(dj[lab]["iqm"]) if dj[lab]["status"] == "ok" else Estimate(math.nan, math.nan,
                    math.nan) for lab in order}  # fmt: skip
            F.draw_interval(ax, ests, [shown[lab] for lab in order], pcolors, f"{d.name} (2nd half)",
                            show_labels=False)  # fmt: skip
            for i, lab in enumerate(order):
                v = [x for g in scope.games for x in d.per_run[lab][g] if math.isfinite(x)]
                if v:
                    ax.plot(v, np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), "o", ms=2.5, color="k",
                            alpha=0.6)  # fmt: skip
                elif dj[lab]["status"] != "ok":
                    F.note_at(ax, i, "not logged")
            ax.invert_yaxis()
            ax.set_xlabel(d.name)
            # Small diagnostics (a bonus of -0.012) get long tick labels: four ticks keep them apart.
            ax.xaxis.set_major_locator(mt.MaxNLocator(4))
            runs = [(w, _smooth(y)) for lab in order for w, y in d.curves[lab]]
            if not runs:
                ax_c.set_axis_off()
                continue
            end = max(float(np.nanmax(w)) for w, _ in runs)
            grid = np.linspace(0.0, end, num.opts.grid_points)
            for lab in order:
                if not d.curves[lab]:
                    continue
                m = np.stack([stats.step_resample(w, _smooth(y), grid) for w, y in d.curves[lab]])  # [runs, G]
                ax_c.plot(grid, stats.nan_iqm(m, axis=0), color=colors[lab], label=lab, drawstyle="steps-post")
            ax_c.set_xlabel("training wall clock (s)")
            ax_c.set_title(f"{d.name} vs wall clock")
        # In the first curve panel: a figure-level legend below would collide with the footnote.
        lined = next((a for a in axes[1] if a.get_legend_handles_labels()[0]), None)
        if lined is not None:
            lined.legend(fontsize=7, loc="best")
        fig.suptitle(str(study.get("title") or study.get("name") or "variants"))
        foot = (f"top left: IQM over runs x games of the {scope.score_name} ({scope.games_text}), 95% "
                f"stratified-bootstrap CI ({num.opts.reps} draws); n: runs per game. Top, other panels: each "
                "diagnostic's mean over the second half of a run's training wall clock (dots: runs), IQM over "
                "runs with 95% CI. Bottom: the diagnostic (trailing mean over 2% of the rows) against training "
                f"wall clock, IQM over runs on a common grid (step-wise). {scope.hardware}.")  # fmt: skip
        fig.text(0.5, 0.0, textwrap.fill(foot, 150), ha="center", va="top", fontsize=7, color="0.35",
                 style="italic")  # fmt: skip
        fig.set_layout_engine("constrained")
        return F.save(fig, stem, num.opts.formats)


__all__ = ["KINDS", "FramesReading", "StudyResult", "analyse", "frames_reading", "score_at_frames",
           "second_half_mean", "split_label"]  # fmt: skip
