"""The report's tables as a header and rows of plain strings, for every writer.

:mod:`plots.report_md` and :mod:`plots.report_html` lay the same tables out in their own
syntax, so a cell's text (and its rounding) is decided once, here. Prose may hold Markdown's
inline ``code`` and **bold**; the HTML writer converts those two and escapes the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plots.normalize import normalizer
from plots.references import REFERENCES
from plots.report import Numbers, _family, _pct, _runs_in, _status_counts, fmt, fmt_est
from plots.stats import AGGREGATE_NAMES, AGGREGATES


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def final_scores(num: Numbers) -> Table:
    """Final score per (agent, game): IQM over seeds, raw and normalised."""
    body = []
    for row in num.rows:
        statuses = _status_counts(row.runs)
        body.append([row.label, row.game, f"{len(row.runs)} ({statuses})", row.source,
                     fmt_est(row.final, row.scored), fmt_est(row.normalized, row.scored)])  # fmt: skip
    return Table(["agent", "game", "runs", "score", "final score IQM [95% CI]", "normalised IQM [95% CI]"], body)


def aggregate_title(num: Numbers) -> str:
    what = f"suite {num.opts.suite}: {len(num.agg_games)} games" if num.opts.suite else "games"
    return f"Aggregate over {what} ({', '.join(num.agg_games)}), normalised"


def aggregates(num: Numbers) -> Table:
    """IQM / median / mean / optimality gap of normalised final scores per agent (empty when no
    game is in the cross-game aggregate)."""
    body = [[lab] + [fmt_est(num.aggregates[lab][k], _runs_in(num, lab, num.agg_games)) for k in AGGREGATES]
            for lab in sorted(num.aggregates)]  # fmt: skip
    return Table(["agent"] + [AGGREGATE_NAMES[k] + " [95% CI]" for k in AGGREGATES], body)


OPTIMALITY_GAP = "Optimality gap: how far below a normalised score of 1 the runs fall on average (lower is better)."


def normalisation_lines(num: Numbers) -> list[str]:
    """One line per aggregated game: its normaliser's kind, lo, hi and source."""
    out = []
    for g in num.agg_games:
        n = normalizer(g, _family(num.runs, g))
        out.append(f"{g}: {n.kind}, lo {n.lo:g}, hi {n.hi:g} ({n.source})")
    return out


def improvement(num: Numbers) -> Table:
    body = [[f"P({x} > {y})", fmt_est(e, 2 if e.has_ci else 1)] for x, y, e in num.poi]
    return Table(["pair", "estimate [95% CI]"], body)


def compute(num: Numbers) -> Table:
    body = []
    for row in num.rows:
        ph = row.phase_s
        body.append([row.label, row.game, fmt(row.env_steps), fmt(row.frames), fmt(row.wall_s), fmt(row.sps),
                     fmt(row.grad_samples), fmt(row.reuse_ratio), fmt(row.train_flops),
                     " / ".join(_pct(row.mfu.get(k, math.nan)) for k in ("mfu", "mfu_learn")),
                     " / ".join(fmt(ph[p]) for p in ("env", "act", "learn", "eval")),
                     "n/a" if row.horizon is None else fmt(row.horizon)])  # fmt: skip
    return Table(["agent", "game", "env steps", "frames", "wall clock s", "SPS", "grad samples", "reuse ratio",
                  "train FLOPs", "MFU run / learn", "s env / act / learn / eval", "bootstrap horizon"], body)  # fmt: skip


COMPUTE_NOTE = (
    "Means over runs. Wall clock is training time (evaluation excluded); SPS = env steps / wall clock; "
    "reuse ratio = gradient samples / env steps; FLOPs are the meter's per-sample estimates times the "
    "samples taken. MFU (model FLOP utilisation) = those FLOPs per second over the machine's calibrated "
    "float32 matmul peak (bench/peak.py), for the whole run and for its learn phase; it counts only "
    "matmuls and convolutions, so a small network bound by per-op overhead shows a low MFU (n/a: run "
    "made before MFU was recorded)."
)


def protocols(num: Numbers) -> Table:
    """One row per (game, protocol, hardware): the protocol card and the software fingerprint."""
    body = []
    seen = set()
    for r in num.runs:
        key = (r.game, r.protocol_id, r.hardware)
        if key in seen:
            continue
        seen.add(key)
        p = r.protocol
        card = ", ".join(f"{k}={p[k]}" for k in ("sticky_actions", "life_loss", "episode_cap", "action_set")
                         if k in p)  # fmt: skip
        n = sum(1 for x in num.runs if (x.game, x.protocol_id, x.hardware) == key)
        fp = r.fingerprint
        sw = ", ".join(
            f"{k} {fp[k]}" for k in ("torch", "cuda", "ale_py", "pufferlib", "numpy", "python") if fp.get(k)
        )
        body.append([r.game, f"{r.protocol_name}#{r.protocol_id}", f"frameskip={r.env.get('frameskip')}, {card}",
                     r.hardware, sw, str(n)])  # fmt: skip
    return Table(["game", "protocol", "card", "hardware", "software", "runs"], body)


def normalisation(num: Numbers) -> Table:
    body = []
    for g in num.games:
        nz = normalizer(g, _family(num.runs, g))
        body.append([g, nz.kind if nz else "none", f"{nz.lo:g} -> 0, {nz.hi:g} -> 1" if nz else "raw only",
                     nz.source if nz else ""])  # fmt: skip
    return Table(["game", "kind", "map", "source"], body)


def references(num: Numbers) -> Table:
    """Published reference points for the games in the report (no rows: none matches)."""
    body = [[ref.game, ref.name, fmt(ref.score), fmt(ref.env_steps), ref.protocol, ref.source]
            for ref in REFERENCES if ref.game in num.games]  # fmt: skip
    return Table(["game", "reference", "score", "env steps", "protocol", "source"], body)


def unclean_runs(num: Numbers) -> Table:
    """Runs that did not finish cleanly (or carry loading notes) and folders left out."""
    bad = [r for r in num.runs if r.status != "ok" or r.notes]
    body = [[str(r.path), r.label, r.game, str(r.seed), r.status, "; ".join(filter(None, [r.reason, *r.notes])),
             f"{fmt(r.total('env_steps'))} of {r.budget}"] for r in bad]  # fmt: skip
    body += [[str(p), "?", "?", "?", "damaged" if why.startswith("damaged") else "skipped", why, ""]
             for p, why in num.skipped]  # fmt: skip
    return Table(["run", "agent", "game", "seed", "status", "why", "reached"], body)


UNCLEAN_NOTE = (
    "Incomplete and failed runs are included in every table and figure with the data they have; "
    "damaged and skipped folders are in none."
)


def code_differed(num: Numbers) -> Table:
    """Runs whose code was not a clean commit (:func:`plots.report.code_differences`)."""
    by_path = {r.path: r for r in num.runs}
    body = [[str(p), by_path[p].label, by_path[p].game, str(by_path[p].seed), why] for p, why in num.code_differed]
    return Table(["run", "agent", "game", "seed", "why"], body)


CODE_DIFFERED_NOTE = (
    "These runs ran code with uncommitted changes (`git_commit` ending in `-dirty`, or a `code.diff` "
    "in the run folder), so the recorded commit alone does not reproduce them; the diff, where saved, says what "
    "changed."
)


def definitions(num: Numbers) -> str:
    o = num.opts
    return (
        "**Definitions.** "
        f"Final score: mean return of the last {o.last_episodes} training episodes of a run (full games, raw "
        "rewards), or its last evaluation score where every run of the game was evaluated (score source: "
        f"`{o.score}`). Aggregates are interquartile means (IQM) over runs with 95% percentile stratified-bootstrap "
        f"confidence intervals (rliable; {o.reps} draws, seed {o.seed}); a single seed has no CI and the tables "
        "say so. Normalised scores: human-normalised for Atari-57 games, min-max against a stated reference "
        "otherwise (see below). Learning curves: the same last-episodes mean after every metric row, resampled "
        "step-wise onto a common grid, never beyond a run's end."
    )


def run_counts(num: Numbers) -> str:
    n_ok = sum(r.status == "ok" for r in num.runs)
    n_failed = sum(r.status == "failed" for r in num.runs)
    n_incomplete = sum(r.status == "incomplete" for r in num.runs)
    return (f"{len(num.runs)} runs ({n_ok} finished, {n_failed} failed, {n_incomplete} incomplete), "
            f"{len(num.labels)} agents, {len(num.games)} games.")  # fmt: skip
