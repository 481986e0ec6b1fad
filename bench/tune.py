"""``bench tune``: hyperparameter tuning under a stated budget, so agents are compared at equal
tuning effort as well as equal training compute.

    bench tune --agent ppo --game gym:CartPole-v1 --trials 20 --run-time 1m
    bench tune --agent rainbow --suite minatar --tune-time 40m --run-time 2m --seeds 1

Built on Optuna: each trial draws the agent's options from its ``SEARCH_SPACE`` (next to its
``Config``, :class:`agents.api.Param`), trains ``--seeds`` runs per game for ``--run-time`` of
training wall clock each (the harness's time budget: what ``bench compare --time`` measures),
and scores them as the report does:

* a run's score is its final score: the mean return of its last 100 training episodes
  (:func:`plots.report.final_score`); on several games (``--suite``) the normalised score
  (:mod:`plots.normalize`);
* a trial's objective is the IQM of its runs' scores (over seeds and games, as the report's
  aggregate), maximised. A trial whose runs finish no episode fails (no score).

Pruning (``--pruner median`` default, ``halving``, ``none``): while a run trains, each metric row
gives its score so far (the same last-100-episode mean over the rows so far); at every tenth of
the run's budget the trial reports the mean of its finished runs' scores and this one to the
pruner, at step ``10 x run index + tenth``, so all trials are compared at the same points.

Budget: ``--trials N`` (trials finished: complete or pruned) and/or ``--tune-time T`` (no new
trial starts once the tune's own wall clock, over every session of it, has reached T). The tune's
wall clock, the trials' wall clocks and the runs' training wall clocks are recorded in
``tune.json`` with the machine fingerprint; the preset file carries the total.

Resume: the study lives in ``<out>/optuna.db`` (sqlite, one study per folder). Rerunning the
command continues it: finished trials are kept and counted, a trial left running by a killed
process is marked failed (``tune.json`` ``killed_trials``) and its values are tried again as a
new trial. One tune process per folder.

The folder (default ``runs/tune-<agent>-<game or suite>``)::

    optuna.db       the Optuna study (sqlite)
    tune.json       what is tuned, the budget asked and spent, trial counts, fingerprint, commands
    preset.toml     the best trial's values, the budget spent and the trial table (bench.preset)
    trials/NNNN/<game>/seed<K>/   every trial's run folders (bench report reads them)
    tune.md, figures/tune_progress.png, figures/tune_importance.png   the tuning report

``--backend ray`` trains a trial's runs (games x seeds) as parallel Ray tasks (bench.runner);
its trials are not pruned (their rows are not seen while they run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import parse_duration, parse_steps
from bench.errors import RunFailed, UserError

STUDY = "tune"  # the study's name in optuna.db: fixed, so a rerun finds it
TENTHS = 10  # pruner reports per run
LAST_EPISODES = 100  # the report's final-score window
MAX_FAILED_IN_A_ROW = 3  # a space that keeps failing is a bug, not bad luck: stop and say so
IDENTITY = ("agent", "games", "suite", "seeds", "run_time_s", "space")  # a rerun must match these
HEARTBEAT_S = 5.0  # tune.json's wall clock is refreshed this often during a trial (a kill loses less)


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--agent", default=None, help="agent to tune (ppo, pqn, rainbow, btr): its SEARCH_SPACE is searched")
    p.add_argument("--game", nargs="+", default=None, metavar="GAME", help="game(s) to tune on, e.g. gym:CartPole-v1")
    p.add_argument("--suite", default=None,
                   help="tune on a named suite instead (minatar, ocean, ...): the objective is then the IQM of "
                        "normalised final scores over its games")  # fmt: skip
    p.add_argument("--trials", type=int, default=None,
                   help="tuning budget: trials to finish (complete or pruned), counting earlier sessions")  # fmt: skip
    p.add_argument("--tune-time", default=None,
                   help="tuning budget: tuning wall clock, e.g. 40m (no new trial starts once it is spent; "
                        "earlier sessions count)")  # fmt: skip
    p.add_argument("--run-time", default=None,
                   help="training wall clock of each trial run, e.g. 2m: the budget the score is taken at")  # fmt: skip
    p.add_argument("--seeds", type=int, default=1, help="runs per game per trial, seeds 1..K (default 1)")
    p.add_argument("--out", default=None,
                   help="tune folder (default runs/tune-<agent>-<game or suite>); with --report, where the "
                        "report goes (default: the one tune folder given, else runs/tune-report)")  # fmt: skip
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: runs in this process, one at a time, pruned from their rows (default); "
                        "ray: a trial's runs as parallel Ray tasks, not pruned")  # fmt: skip
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe",
                   help="tpe (Optuna's TPE, default) or random search")  # fmt: skip
    p.add_argument("--pruner", choices=["median", "halving", "none"], default="median",
                   help="median (Optuna's MedianPruner, default), halving (successive halving) or none")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--log-every", default=None,
                   help="env steps between metric rows of trial runs (default the harness's, 10K): rows feed "
                        "the pruner, so short runs want small values")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores allowed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--report", nargs="+", default=None, metavar="DIR",
                   help="only (re)build the tuning report from these tune folders (one line per agent); "
                        "trains nothing")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Plan:
    agent: str
    games: tuple[str, ...]
    suite: str | None
    seeds: int
    run_time_s: float
    trials: int | None
    tune_time_s: float | None
    out: Path
    sampler: str
    pruner: str
    seed: int
    log_every: int | None
    threads: int | None
    device: str
    backend: str
    space: tuple[Any, ...]

    @property
    def normalised(self) -> bool:
        """Several games are scored on one scale: normalised scores (one game: raw)."""
        return len(self.games) > 1

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps({"agent": self.agent, "games": list(self.games), "suite": self.suite,
                                      "seeds": self.seeds, "run_time_s": self.run_time_s,
                                      "space": space_record(self.space)}))  # fmt: skip

    def objective_text(self) -> str:
        what = "normalised final scores" if self.normalised else "final scores"
        return (f"IQM over {self.seeds} seed(s) x {len(self.games)} game(s) of {what} (mean return of the last "
                f"{LAST_EPISODES} training episodes) at {self.run_time_s:g} s of training wall clock")  # fmt: skip


def space_record(space) -> list[dict[str, Any]]:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(p).items()} for p in space]


def search_space(agent: str):
    """(agent module, its checked SEARCH_SPACE); a bad space is one line."""
    from agents.api import check_search_space
    from bench.harness import load_agent_module

    mod = load_agent_module(agent)
    space = getattr(mod, "SEARCH_SPACE", None)
    if space is None:
        raise UserError(f"agent {agent} has no SEARCH_SPACE to tune (agents/{agent}.py)")
    problems = check_search_space(mod.Config, space)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{agent}.SEARCH_SPACE: {problems[0]}{more}")
    return mod, tuple(space)


def plan_from_args(args: argparse.Namespace) -> Plan:
    from bench.compare import games_of
    from bench.config import RunConfig, check_run_config

    if not args.agent:
        raise UserError("give --agent A (the agent to tune), or --report DIR to rebuild a report")
    _, space = search_space(args.agent)
    games = games_of(args.game, args.suite)
    if args.trials is None and args.tune_time is None:
        raise UserError("give a tuning budget: --trials N and/or --tune-time T")
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials} must be >= 1")
    tune_time_s = parse_duration(args.tune_time, "--tune-time")
    if args.run_time is None:
        raise UserError("give --run-time T: each trial run's training wall clock (e.g. 2m)")
    run_time_s = parse_duration(args.run_time, "--run-time")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} must be >= 1")
    log_every = parse_steps(args.log_every, "--log-every")
    for g in games:
        check_run_config(RunConfig(agent=args.agent, game=g, seed=args.seeds, time_s=run_time_s, log_every=log_every,
                                   threads=args.threads, device=args.device))  # fmt: skip
    if len(games) > 1:
        from plots.normalize import normalizer

        import envs

        bare = [g for g in games if normalizer(g, envs.family_of(g)) is None]
        if bare:
            raise UserError(f"{bare[0]} has no normaliser, so its scores cannot be aggregated with other games' "
                            "(tune on it alone)")  # fmt: skip
    if args.out == "":
        raise UserError("--out '': empty path (give a folder, or leave --out out for runs/tune-<agent>-<game>)")
    name = args.suite or "-".join(g.replace(":", "_").replace("/", "_") for g in games[:3])
    out = Path(args.out or f"runs/tune-{args.agent}-{name}")
    return Plan(agent=args.agent, games=tuple(games), suite=args.suite, seeds=args.seeds, run_time_s=run_time_s,
                trials=args.trials, tune_time_s=tune_time_s, out=out, sampler=args.sampler, pruner=args.pruner,
                seed=args.seed, log_every=log_every, threads=args.threads, device=args.device, backend=args.backend,
                space=space)  # fmt: skip


def check_tune_folder(plan: Plan) -> dict | None:
    """The folder's earlier tune.json (None: a new tune); refuses a folder that is not this tune's."""
    from bench.results import check_target_dir, read_json

    check_target_dir(plan.out, "--out")
    if not plan.out.exists() or not any(plan.out.iterdir()):
        return None
    state_path = plan.out / "tune.json"
    if not state_path.exists():
        raise UserError(f"--out {plan.out} holds other files and no tune.json: not a tune folder; choose another --out")
    prev = read_json(state_path, "tune.json")
    if not (plan.out / "optuna.db").exists():
        raise UserError(f"{plan.out}: tune.json without optuna.db, the study is lost; remove the folder to start over")
    mine = plan.identity()
    differ = [k for k in IDENTITY if prev.get(k) != mine[k]]
    if differ:
        raise UserError(f"{plan.out} holds another tune (differs in: {', '.join(differ)}); choose another --out")
    return prev


# Optuna ------------------------------------------------------------------------------------


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("bench tune needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def open_study(plan: Plan, seed_offset: int = 0):
    optuna = _optuna()
    # A resumed random sampler seeded as before would draw the first trials' values again.
    seed = plan.seed + seed_offset
    sampler = (optuna.samplers.RandomSampler(seed=seed) if plan.sampler == "random"
               else optuna.samplers.TPESampler(seed=seed))  # fmt: skip
    pruner = {
        # no decision before 3 trials finished nor before half of the first run's budget: early RL
        # scores are mostly noise
        "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=TENTHS // 2),
        "halving": optuna.pruners.SuccessiveHalvingPruner(),
        "none": optuna.pruners.NopPruner(),
    }[plan.pruner]
    return optuna.create_study(study_name=STUDY, storage=storage_url(plan.out), load_if_exists=True,
                               direction="maximize", sampler=sampler, pruner=pruner)  # fmt: skip


def suggest(trial, space) -> dict[str, Any]:
    out = {}
    for p in space:
        if p.kind == "choice":
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            out[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
    return out


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    c = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}  # fmt: skip
    for t in study.get_trials(deepcopy=False):
        c[names[t.state]] += 1
    return c


def retry_killed(study) -> list[int]:
    """Trials a killed process left RUNNING: marked failed, their values queued to run again."""
    from optuna.trial import TrialState

    killed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        study.tell(t.number, state=TrialState.FAIL)
        killed.append(t.number)
    return killed


# Scores ------------------------------------------------------------------------------------


def objective(scores: list[float]) -> float:
    """The IQM of the runs' scores (rliable's, as the report's aggregate); NaN when one is NaN."""
    from plots.stats import nan_iqm

    a = np.asarray(scores, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        return math.nan
    return float(nan_iqm(a))


def run_score(path: Path, normalised: bool) -> float:
    """A finished run's final score as the report computes it (NaN: no finished episode)."""
    from plots.load import load_run
    from plots.report import final_score

    run = load_run(path)
    if isinstance(run, str):
        return math.nan
    s = final_score(run, LAST_EPISODES, "train")
    return s.normalized if normalised else s.final


def rows_score(rows: list[dict], game: str, normalised: bool) -> float:
    """The score so far of a run still training: the same last-100-episode mean over its rows."""
    import envs
    from plots.normalize import normalize
    from plots.stats import final_window

    eps = np.array([r["episodes"] for r in rows], dtype=np.float64)
    ret = np.array([math.nan if r["episode_return"] is None else r["episode_return"] for r in rows], dtype=np.float64)
    v, _ = final_window(eps, ret, LAST_EPISODES)
    return normalize(game, v, envs.family_of(game)) if normalised and math.isfinite(v) else v


class Clock:
    """The tune's own wall clock, over every session (``prior``: the sessions before this one)."""

    def __init__(self, prior: float):
        self.prior, self.t0 = prior, time.perf_counter()

    def now(self) -> float:
        return self.prior + time.perf_counter() - self.t0


class Reporter:
    """A trial run's ``on_row``: feeds the pruner at every tenth of the run's budget."""

    def __init__(self, trial, plan: Plan, index: int, game: str, done_scores: list[float], heartbeat):
        self.trial, self.plan, self.index, self.game = trial, plan, index, game
        self.done, self.heartbeat = done_scores, heartbeat
        self.rows: list[dict] = []
        self.last_step = -1

    def __call__(self, row: dict) -> None:
        import optuna

        self.rows.append(row)
        self.heartbeat()
        tenth = min(TENTHS - 1, int(TENTHS * row["wall_s"] / self.plan.run_time_s))
        step = self.index * TENTHS + tenth
        if step <= self.last_step:
            return
        v = rows_score(self.rows, self.game, self.plan.normalised)
        if not math.isfinite(v):
            return
        self.last_step = step
        self.trial.report(float(np.mean([*self.done, v])), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"at step {step}: run {self.index}, {tenth + 1}/{TENTHS} of its budget")


def run_paths(plan: Plan, number: int) -> list[tuple[str, int, Path]]:
    base = plan.out / "trials" / f"{number:04d}"
    return [(g, s, base / g.replace(":", "_").replace("/", "_") / f"seed{s}") for g in plan.games
            for s in range(1, plan.seeds + 1)]  # fmt: skip


def run_trial_local(plan: Plan, trial, params: dict, heartbeat, command: str) -> tuple[list[float], float]:
    """Train the trial's runs here, one after another; (scores, training wall clock)."""
    from bench.config import RunConfig
    from bench.harness import train

    scores: list[float] = []
    train_wall = 0.0
    for i, (game, seed, out) in enumerate(run_paths(plan, trial.number)):
        run = RunConfig(agent=plan.agent, game=game, seed=seed, time_s=plan.run_time_s, log_every=plan.log_every,
                        threads=plan.threads, device=plan.device, label=f"{plan.agent}-trial{trial.number}")  # fmt: skip
        reporter = Reporter(trial, plan, i, game, scores, heartbeat)
        try:
            summary = train(run, params, out=out, command=f"{command}  # trial {trial.number}", on_row=reporter)
        except BaseException:  # pruned, failed or interrupted: the seconds it trained still count
            trial.set_user_attr("train_wall_s", train_wall + (reporter.rows[-1]["wall_s"] if reporter.rows else 0.0))
            raise
        train_wall += summary.get("train_wall_s", 0.0)
        trial.set_user_attr("train_wall_s", train_wall)
        scores.append(run_score(out, plan.normalised))
    return scores, train_wall


def run_trial_ray(plan: Plan, trial, params: dict, heartbeat, command: str) -> tuple[list[float], float]:
    """Train the trial's runs as parallel Ray tasks (bench.runner.run_ray); no pruning."""
    from bench.results import read_json
    from bench.runner import RunSpec, run_ray

    flags = ("--device", plan.device) + (("--log-every", str(plan.log_every)) if plan.log_every else ())
    specs = [RunSpec(agent=plan.agent, game=g, seed=s, out=str(out), label=f"{plan.agent}-trial{trial.number}",
                     time_s=plan.run_time_s, overrides=params, run_flags=flags)
             for g, s, out in run_paths(plan, trial.number)]  # fmt: skip
    results = run_ray(specs, None, plan.threads or 1, 0.0, plan.out / "logs")
    failed = [f"{k}: {v}" for k, v in results.items() if v.startswith("failed")]
    if failed:
        raise RunFailed(failed[0])
    wall = sum(read_json(Path(s.out) / "compute.json", "compute.json").get("train_wall_s", 0.0) for s in specs)
    trial.set_user_attr("train_wall_s", wall)
    return [run_score(Path(s.out), plan.normalised) for s in specs], wall


# The tune ----------------------------------------------------------------------------------


def write_state(plan: Plan, study, clock: Clock, prev: dict | None, command: str, fp: dict,
                killed: list[int]) -> dict:  # fmt: skip
    from bench.fingerprint import hardware_key
    from bench.results import atomic_write_json
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    c = counts(study)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
    commands = list((prev or {}).get("commands") or [])
    if not commands or commands[-1] != command:
        commands.append(command)
    state = {
        **plan.identity(),
        "objective": plan.objective_text(),
        "sampler": plan.sampler,
        "pruner": plan.pruner,
        "backend": plan.backend,
        "budget": {"trials": plan.trials, "tune_time_s": plan.tune_time_s},
        # the tune's own wall clock over all sessions: trials, scoring, Optuna and start-up included
        "wall_s": clock.now(),
        "trials_wall_s": sum(float(t.user_attrs.get("wall_s", 0.0)) for t in trials),  # each trial's wall clock
        "train_wall_s": sum(float(t.user_attrs.get("train_wall_s", 0.0)) for t in trials),  # the runs' wall_s
        "trials": c,
        "killed_trials": sorted(set((prev or {}).get("killed_trials", [])) | set(killed)),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "fingerprint": fp,
        "hardware": hardware_key(fp),
        "commands": commands,
        "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    atomic_write_json(plan.out / "tune.json", state)
    return state


def trial_rows(study) -> list[dict[str, Any]]:
    """The trial table: number, state, value, params, wall_s (and why a trial failed)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                     "wall_s": _round(t.user_attrs.get("wall_s")), "note": t.user_attrs.get("reason")})  # fmt: skip
    return rows


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


def write_preset_file(plan: Plan, study, state: dict) -> Path | None:
    from bench.preset import write_preset

    best = state["best"]
    if best is None:
        return None
    c = state["trials"]
    tune = {"agent": plan.agent, "games": list(plan.games), "suite": plan.suite, "seeds": plan.seeds,
            "run_time_s": plan.run_time_s, "objective": plan.objective_text(), "sampler": plan.sampler,
            "pruner": plan.pruner, "wall_s": round(state["wall_s"], 3), "trials": c["complete"] + c["pruned"],
            "trials_complete": c["complete"], "trials_pruned": c["pruned"], "trials_failed": c["failed"],
            "best_trial": best["number"], "best_value": best["value"], "date": state["updated"],
            "hardware": state["hardware"], "folder": str(plan.out)}  # fmt: skip
    path = plan.out / "preset.toml"
    header = (f"bench tune preset for {plan.agent}: use with bench run / compare --preset-file {path}\n"
              f"tuned with: {state['commands'][-1]}")  # fmt: skip
    write_preset(path, tune, best["params"], [{k: v for k, v in r.items() if k != "note"} for r in trial_rows(study)],
                 header)  # fmt: skip
    return path


def tune(plan: Plan, command: str) -> dict:
    """Run the tune to its budget; return tune.json's content."""
    from bench.fingerprint import fingerprint
    from optuna.trial import TrialState

    prev = check_tune_folder(plan)
    _optuna()
    plan.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(float((prev or {}).get("wall_s", 0.0)))
    fp = fingerprint()
    study = open_study(plan)
    killed = retry_killed(study)
    if killed:
        print(f"tune: trial(s) {', '.join(map(str, killed))} were left running by a killed tune: marked failed, "
              "their values queued again", flush=True)  # fmt: skip
    study = open_study(plan, seed_offset=len(study.get_trials(deepcopy=False)))
    state = write_state(plan, study, clock, prev, command, fp, killed)
    last_save = time.perf_counter()

    def heartbeat() -> None:
        nonlocal last_save, state
        if time.perf_counter() - last_save >= HEARTBEAT_S:
            state = write_state(plan, study, clock, state, command, fp, killed)
            last_save = time.perf_counter()

    runner = run_trial_ray if plan.backend == "ray" else run_trial_local
    failed_in_a_row, last_reason = 0, ""
    optuna = _optuna()
    while True:
        c = counts(study)
        done = c["complete"] + c["pruned"]
        if plan.trials is not None and done >= plan.trials:
            stop = f"{done} trials finished (--trials {plan.trials})"
            break
        if plan.tune_time_s is not None and clock.now() >= plan.tune_time_s:
            stop = f"tuning wall clock {clock.now():.0f} s spent (--tune-time {plan.tune_time_s:g} s)"
            break
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            write_state(plan, study, clock, state, command, fp, killed)
            raise RunFailed(f"{failed_in_a_row} trials in a row failed; the last: {last_reason}")
        trial = study.ask()
        params = suggest(trial, plan.space)
        t0 = time.perf_counter()
        print(f"tune: trial {trial.number} ({done + 1}{f'/{plan.trials}' if plan.trials else ''}): "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()),
              flush=True)  # fmt: skip
        value, tell_state, reason = math.nan, TrialState.COMPLETE, ""
        try:
            scores, _ = runner(plan, trial, params, heartbeat, command)
            trial.set_user_attr("scores", scores)
            value = objective(scores)
            if not math.isfinite(value):
                bad = next(str(out) for (_, _, out), v in zip(run_paths(plan, trial.number), scores)
                           if not math.isfinite(v))  # fmt: skip
                tell_state, reason = TrialState.FAIL, (f"{bad}: no episode finished within --run-time "
                                                       f"{plan.run_time_s:g} s, so no score (a longer --run-time?)")  # fmt: skip
        except optuna.TrialPruned as e:
            tell_state, reason = TrialState.PRUNED, str(e)
        except (RunFailed, UserError, ValueError, RuntimeError) as e:
            tell_state, reason = TrialState.FAIL, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        except KeyboardInterrupt:
            trial.set_user_attr("wall_s", time.perf_counter() - t0)
            trial.set_user_attr("reason", "interrupted")
            trial.set_user_attr("tune_wall_s_end", clock.now())
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            study.tell(trial, state=TrialState.FAIL)
            write_state(plan, study, clock, state, command, fp, killed)
            raise
        trial.set_user_attr("wall_s", time.perf_counter() - t0)
        trial.set_user_attr("tune_wall_s_end", clock.now())
        if reason:
            trial.set_user_attr("reason", reason)
        if tell_state == TrialState.COMPLETE:
            study.tell(trial, value)
            failed_in_a_row = 0
        else:
            study.tell(trial, state=tell_state)
            failed_in_a_row = failed_in_a_row + 1 if tell_state == TrialState.FAIL else 0
            last_reason = reason
        shown = f"{value:.4g}" if tell_state == TrialState.COMPLETE else f"{tell_state.name.lower()} ({reason})"
        print(f"tune: trial {trial.number}: {shown} in {time.perf_counter() - t0:.1f} s", flush=True)
        state = write_state(plan, study, clock, state, command, fp, killed)
        last_save = time.perf_counter()
    state = write_state(plan, study, clock, state, command, fp, killed)
    state["stop"] = stop
    state["preset"] = write_preset_file(plan, study, state)
    return state


def main(args: argparse.Namespace) -> int:
    from plots.tune_report import build

    if args.report is not None:
        given = [k for k in ("agent", "game", "suite", "trials", "tune_time", "run_time") if getattr(args, k) is not None]
        if given:
            raise UserError(f"--report rebuilds a report and trains nothing: drop --{given[0].replace('_', '-')}")
        out = Path(args.out) if args.out else (Path(args.report[0]) if len(args.report) == 1 else Path("runs/tune-report"))
        paths = build([Path(d) for d in args.report], out)
        print(f"tune report: {', '.join(str(p) for p in paths)}")
        return 0
    plan = plan_from_args(args)
    command = "bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    state = tune(plan, command)
    c = state["trials"]
    best = state["best"]
    print(f"tune: {state['stop']}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, "
          f"{state['wall_s']:.0f} s of tuning wall clock in all")  # fmt: skip
    if best is None:
        print("tune: no trial completed, so no preset file")
    else:
        vals = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        print(f"tune: best trial {best['number']}: {best['value']:.4g} with {vals}")
        print(f"tune: preset {state['preset']} (bench run / compare --preset-file)")
    paths = build([plan.out], plan.out)
    print(f"tune: report {', '.join(str(p) for p in paths)}")
    return 0
