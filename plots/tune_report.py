"""The tuning report of ``bench tune``: numbers from tune folders (``tune.json`` and the Optuna
study in ``optuna.db``), then ``figures/tune_progress.png`` (best score so far vs tuning wall
clock, one line per tune), ``figures/tune_importance.png`` (Optuna's parameter importances, one
panel per tune) and ``tune.md`` (budget asked and spent, best values, importances, trial table).

Importances are Optuna's default evaluator, PED-ANOVA (``PedAnovaImportanceEvaluator``, Watanabe
et al. 2023), which needs only NumPy: fANOVA and mean-decrease-impurity need scikit-learn. It
compares the best trials' parameter distribution with all trials', so it needs a few complete
trials; with fewer the report says why there are none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

MIN_TRIALS_FOR_IMPORTANCE = 3


@dataclass
class TuneData:
    folder: Path
    state: dict[str, Any]  # tune.json
    trials: list[dict[str, Any]]  # number, state, value, params, wall_s, tune_wall_s_end, note
    importances: dict[str, float]  # empty when not computable (importance_note says why)
    importance_note: str

    @property
    def agent(self) -> str:
        return str(self.state.get("agent"))

    @property
    def where(self) -> str:
        return f"suite {self.state['suite']}" if self.state.get("suite") else ", ".join(self.state.get("games") or [])

    def progress(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tuning wall clock at each complete trial's end, its value, best value so far): [K] each."""
        done = sorted((t for t in self.trials if t["state"] == "COMPLETE" and t.get("tune_wall_s_end") is not None),
                      key=lambda t: t["tune_wall_s_end"])  # fmt: skip
        x = np.array([t["tune_wall_s_end"] for t in done], dtype=np.float64)
        v = np.array([t["value"] for t in done], dtype=np.float64)
        return x, v, np.maximum.accumulate(v) if len(v) else v


def load_tune(folder: Path) -> TuneData:
    """One tune folder's numbers; a folder that is not one is one line (UserError)."""
    from bench.results import read_json
    from bench.tune import STUDY, _optuna, storage_url

    if not (folder / "tune.json").is_file():
        raise UserError(f"{folder}: no tune.json (not a bench tune folder)")
    if not (folder / "optuna.db").is_file():
        raise UserError(f"{folder}: no optuna.db (the tune's study is missing)")
    state = read_json(folder / "tune.json", "tune.json")
    optuna = _optuna()
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage_url(folder))
    except KeyError:
        raise UserError(f"{folder}/optuna.db holds no study {STUDY!r}") from None
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
               "wall_s": t.user_attrs.get("wall_s"), "tune_wall_s_end": t.user_attrs.get("tune_wall_s_end"),
               "note": t.user_attrs.get("reason") or (f"retry of trial {t.user_attrs['retry_of']}"
                                                      if "retry_of" in t.user_attrs else None)}
              for t in study.get_trials(deepcopy=False)]  # fmt: skip
    imp, note = importances(study)
    return TuneData(folder, state, trials, imp, note)


def importances(study) -> tuple[dict[str, float], str]:
    """(Optuna's PED-ANOVA importances, normalised to sum 1; why none when empty)."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"{len(done)} complete trial(s): importances need at least {MIN_TRIALS_FOR_IMPORTANCE}"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"Optuna could not compute importances: {e}"
    imp = {k: float(v) for k, v in imp.items() if math.isfinite(v)}
    if not imp:
        return {}, "Optuna returned no importance (every parameter constant over the complete trials?)"
    return imp, ""


# Drawing -----------------------------------------------------------------------------------


def _colors(data: list[TuneData]) -> list[str]:
    from plots.figures import FIXED_COLORS, PALETTE

    agents = [d.agent for d in data]
    if len(set(agents)) == len(agents):
        out, i = [], 0
        for a in agents:
            if a in FIXED_COLORS:
                out.append(FIXED_COLORS[a])
            else:
                out.append(PALETTE[i % len(PALETTE)])
                i += 1
        return out
    return [PALETTE[i % len(PALETTE)] for i in range(len(data))]


def _label(d: TuneData, data: list[TuneData]) -> str:
    unique = len({x.agent for x in data}) == len(data)
    return d.agent if unique else f"{d.agent} ({d.folder.name})"


def draw_progress(ax, data: list[TuneData], colors: list[str]) -> None:
    """Best objective so far (steps) and each complete trial's value (dots) vs tuning wall clock."""
    from plots.figures import time_unit

    ends = [x for d in data for x in d.progress()[0]] + [float(d.state.get("wall_s") or 0.0) for d in data]
    div, unit = time_unit(max(ends, default=1.0))
    for d, c in zip(data, colors):
        x, v, best = d.progress()
        if not len(x):
            continue
        end = max(float(d.state.get("wall_s") or x[-1]), x[-1])
        ax.step(np.append(x, end) / div, np.append(best, best[-1]), where="post", color=c, label=_label(d, data))
        ax.scatter(x / div, v, s=10, color=c, alpha=0.45, linewidths=0)
    ax.set_xlabel(f"tuning wall clock ({unit})")
    ax.set_ylabel("objective (best so far)")
    # Tunes of different agents can end orders of magnitude apart (PPO ~845 vs Rainbow ~15 on
    # puffer_breakout at 2 minutes): on a linear axis the lower one is a flat line at 0.
    bests = [float(d.progress()[2][-1]) for d in data if len(d.progress()[0])]
    if len(bests) > 1 and min(bests) > 0 and max(bests) / min(bests) > 20:
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylabel("objective (best so far, symlog)")
    ax.set_title("best score vs tuning wall clock")
    ax.set_xlim(left=0)
    if any(len(d.progress()[0]) for d in data):
        ax.legend(loc="best")


def draw_importance(ax, d: TuneData, color: str, title: str) -> None:
    ax.set_title(title)
    if not d.importances:
        ax.text(0.5, 0.5, d.importance_note, ha="center", va="center", wrap=True, fontsize=7, transform=ax.transAxes)
        ax.set_axis_off()
        return
    names = list(d.importances)[::-1]  # largest on top
    ax.barh(names, [d.importances[n] for n in names], color=color)
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_xlim(0, 1)
    ax.grid(axis="y", visible=False)


def draw(data: list[TuneData], fig_dir: Path) -> list[Path]:
    from plots.figures import new_figure, paper_style, save

    colors = _colors(data)
    paths = []
    with paper_style():
        fig, axes = new_figure(1, panel_w=4.2, panel_h=2.8)
        draw_progress(axes[0, 0], data, colors)
        paths += save(fig, fig_dir / "tune_progress", ("png",))
        fig, axes = new_figure(len(data), panel_w=3.4, panel_h=0.4 + 0.3 * max(3, *(len(d.importances) for d in data)))
        for ax, d, c in zip(axes[0], data, colors):
            draw_importance(ax, d, c, f"{_label(d, data)} on {d.where}")
        paths += save(fig, fig_dir / "tune_importance", ("png",))
    return paths


# tune.md -----------------------------------------------------------------------------------


def _v(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)


def _s(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:,.0f} s" if x >= 10 else f"{x:.1f} s"


def markdown(data: list[TuneData], figures: list[Path], out: Path) -> str:
    L = ["# Tuning report (`bench tune`)", ""]
    L += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures if p.suffix == ".png"] + [""]
    L += ["| agent | games | trials (complete / pruned / failed) | tuning wall clock | budget asked | best |",
          "|---|---|---|---|---|---|"]  # fmt: skip
    for d in data:
        s, c, b = d.state, d.state.get("trials") or {}, d.state.get("budget") or {}
        asked = " and ".join(x for x in (b.get("trials") and f"{b['trials']} trials",
                                         b.get("tune_time_s") and _s(b["tune_time_s"])) if x) or "-"  # fmt: skip
        best = s.get("best") or {}
        L.append(f"| {d.agent} | {d.where} | {c.get('complete', 0)} / {c.get('pruned', 0)} / {c.get('failed', 0)} | "
                 f"{_s(s.get('wall_s'))} | {asked} | {_v(best.get('value'))} (trial {_v(best.get('number'))}) |")  # fmt: skip
    for d in data:
        s = d.state
        L += ["", f"## {d.agent} on {d.where} (`{d.folder}`)", "",
              f"- objective: {s.get('objective', '?')}",
              f"- sampler {s.get('sampler')}, pruner {s.get('pruner')}, backend {s.get('backend')}",
              f"- tuning wall clock {_s(s.get('wall_s'))} in all; trials {_s(s.get('trials_wall_s'))}; "
              f"training (the runs' wall_s) {_s(s.get('train_wall_s'))}",
              f"- hardware: {s.get('hardware', '?')}"]  # fmt: skip
        if s.get("killed_trials"):
            L.append(f"- left running by a killed tune, marked failed and retried: trial(s) "
                     f"{', '.join(map(str, s['killed_trials']))}")  # fmt: skip
        if (d.folder / "preset.toml").exists():
            L.append(f"- preset: `{(d.folder / 'preset.toml').as_posix()}` (bench run / compare --preset-file)")
        best = s.get("best")
        if best:
            L += ["", "Best values: " + ", ".join(f"`{k} = {_v(v)}`" for k, v in best["params"].items())]
        L += ["", "Importances (PED-ANOVA): " + (", ".join(f"{k} {v:.2f}" for k, v in d.importances.items())
                                                if d.importances else d.importance_note)]  # fmt: skip
        names = list(dict.fromkeys(k for t in d.trials for k in t["params"]))
        L += ["", "| trial | state | value | wall clock | " + " | ".join(names) + " | note |",
              "|---" * (len(names) + 5) + "|"]  # fmt: skip
        for t in d.trials:
            L.append(f"| {t['number']} | {t['state'].lower()} | {_v(t['value'])} | {_s(t['wall_s'])} | "
                     + " | ".join(_v(t["params"].get(n)) for n in names) + f" | {t['note'] or ''} |")  # fmt: skip
    return "\n".join(L) + "\n"


def build(folders: list[Path], out: Path) -> list[Path]:
    """Write ``out/figures/tune_*.png`` and ``out/tune.md`` for these tune folders; their paths."""
    from bench.results import atomic_write_bytes, check_target_dir

    data = [load_tune(f) for f in folders]
    check_target_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    figures = draw(data, out / "figures")
    md = out / "tune.md"
    atomic_write_bytes(md, markdown(data, figures, out).encode())
    return [md, *figures]
