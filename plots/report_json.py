"""``summary.json``: every number of the report, machine-readable (NaN -> null, paths as
strings)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from plots import stats
from plots.normalize import normalizer
from plots.references import REFERENCES
from plots.report import CPU_SHARE_MIN, Numbers, _family, _status_counts, low_cpu_share
from plots.stats import Curve, Estimate


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, Estimate):
        return {"point": _clean(v.point), "lo": _clean(v.lo), "hi": _clean(v.hi)}
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def _curve_json(c: Curve) -> dict:
    return {"x": c.grid, "iqm": c.iqm, "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n}


def summary_json(num: Numbers, out: Path) -> dict:
    o = num.opts
    runs = []
    for r in num.runs:
        s = num.scores[r.path]
        runs.append({"path": r.path, "agent": r.agent, "label": r.label, "game": r.game, "seed": r.seed,
                     "status": r.status, "reason": r.reason, "notes": r.notes,
                     "protocol": f"{r.protocol_name}#{r.protocol_id}", "hardware": r.hardware,
                     "final_score": s.final, "score_source": s.source, "score_episodes": s.episodes,
                     "normalized_score": s.normalized, "env_steps": r.total("env_steps"), "frames": r.total("frames"),
                     "grad_samples": r.total("grad_samples"), "reuse_ratio": r.total("reuse_ratio"),
                     "wall_s": r.total("wall_s"), "sps": r.sps, "train_flops": r.train_flops, "phase_s": r.phase_s,
                     "cpu_share": r.cpu_share,
                     "bootstrap_horizon": r.horizon, "agent_config": r.agent_config})  # fmt: skip
    # The runs that got less than CPU_SHARE_MIN of their cores while training (plots.report), and
    # how many predate the record.
    shares = [r.cpu_share for r in num.runs if r.cpu_share is not None]
    cpu_flags = {"threshold": CPU_SHARE_MIN, "flagged": [r.path for r in low_cpu_share(num.runs)],
                 "min": min(shares, default=None), "unmeasured": len(num.runs) - len(shares)}  # fmt: skip
    rows = [{"label": x.label, "game": x.game, "runs": len(x.runs), "scored_runs": x.scored, "score_source": x.source,
             "final_score_iqm": x.final, "normalized_iqm": x.normalized, "sps": x.sps, "reuse_ratio": x.reuse_ratio,
             "wall_s": x.wall_s, "env_steps": x.env_steps, "frames": x.frames, "grad_samples": x.grad_samples,
             "train_flops": x.train_flops, "mfu": x.mfu.get("mfu"), "mfu_learn": x.mfu.get("mfu_learn"),
             "bootstrap_horizon": x.horizon, "phase_s": x.phase_s,
             "statuses": _status_counts(x.runs)} for x in num.rows]  # fmt: skip
    doc = {
        "schema": 1,
        "settings": {
            "last_episodes": o.last_episodes,
            "score": o.score,
            "reps": o.reps,
            "seed": o.seed,
            "ci": stats.CI_SIZE,
            "grid_points": o.grid_points,
            "allow_mixed": o.allow_mixed,
            "command": o.command,
        },
        "mixed": num.mixed,
        "notes": num.notes,
        "skipped": [{"path": p, "reason": why} for p, why in num.skipped],
        "cpu_share": cpu_flags,
        "runs": runs,
        "per_agent_game": rows,
        "suite": o.suite,
        "aggregate_games": num.agg_games,
        "normalization": {g: {"kind": n.kind, "lo": n.lo, "hi": n.hi, "source": n.source}
                          for g in num.agg_games for n in [normalizer(g, _family(num.runs, g))]},
        "aggregates": num.aggregates,
        "probability_of_improvement": [{"x": x, "y": y, "estimate": e} for x, y, e in num.poi],
        "performance_profiles": {
            lab: {"tau": c.grid, "fraction": c.iqm, "ci_lo": c.lo, "ci_hi": c.hi}
            for lab, c in num.profiles.items()
        },
        "curves": {
            g: {a: {lab: _curve_json(c) for lab, c in d.items()} for a, d in ax.items()}
            for g, ax in num.curves.items()
        },
        "aggregate_curves": {
            a: {lab: _curve_json(c) for lab, c in d.items()} for a, d in num.agg_curves.items()
        },
        "sweeps": {
            k: {
                t: [
                    {"label": p.label, "agent": p.series, "x": p.x, "x_min": p.x_lo, "x_max": p.x_hi, "final": p.y, "runs": p.n}
                    for p in pts
                ]
                for t, pts in panels.items()
            }
            for k, panels in num.sweeps.items()
        },
        "references": [ref.__dict__ for ref in REFERENCES if ref.game in num.games],
        "figures": [p.relative_to(out) for p in num.figures],
        "figures_skipped": num.figures_skipped,
    }
    return _clean(doc)


def render(num: Numbers, out: Path) -> str:
    return json.dumps(summary_json(num, out), indent=1) + "\n"
