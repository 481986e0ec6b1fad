"""``bench compare``: agents side by side on one game under equal budgets, then the report.

Expands agents x (reuse values) x (horizon values) x seeds into runs, runs them with equal pinned
CPU shares (:mod:`bench.runner`), writes figures/summary with ``bench report`` and prints a
terminal table. Rerunning the same command skips finished runs and resumes unfinished ones.

Sweep knobs per agent (what "reuse" and "horizon" mean for each algorithm):

* reuse (gradient samples per env step): PPO and PQN ``epochs`` (every epoch uses the whole
  batch); Rainbow / BTR ``replay_ratio``.
* horizon (bootstrap horizon in env steps): PPO and PQN ``segment_length`` (GAE / Q(lambda) over
  the segment); Rainbow / BTR ``n_step``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

import envs
from bench.config import parse_duration, parse_steps
from bench.errors import UserError
from bench.run_cmd import add_sink_options, sink_flags
from bench.runner import RunSpec, allowed_cpus, run_local, run_ray
from bench.results import RunDir, check_target_dir

REUSE_KNOB = {"ppo": "epochs", "rainbow": "replay_ratio", "btr": "replay_ratio", "pqn": "epochs"}
HORIZON_KNOB = {"ppo": "segment_length", "rainbow": "n_step", "btr": "n_step", "pqn": "segment_length"}
# Default budgets per family: ALE uses the literature's 10M env steps (40M frames); Ocean games
# a wall-clock budget that shows real learning in minutes on a laptop CPU; gymnasium 300K steps;
# MinAtar, like Ocean, a wall-clock budget.
DEFAULT_BUDGET = {"ale": {"steps": 10_000_000}, "puffer": {"time_s": 120.0}, "gym": {"steps": 300_000},
                  "minatar": {"time_s": 120.0}}  # fmt: skip
# More runs than this in one command is more often a typo (--seeds 1000) than a plan; --max-runs
# raises the cap. The count is printed before anything starts either way.
MAX_RUNS = 1000


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--agents", nargs="*", required=True, help="agents to compare, e.g. ppo rainbow")
    p.add_argument("--game", nargs="+", default=None, metavar="GAME",
                   help="game name(s) (breakout, puffer_breakout, minatar:breakout, gym:CartPole-v1)")
    p.add_argument("--suite", default=None, help="a named suite of games instead of --game: "
                   "minatar, ocean, atari5, atari57 (the report then aggregates over the suite)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per agent (default 3; seeds are 1..N)")
    p.add_argument("--steps", default=None, help="env-step budget per run (default: ALE 10M, gym 300K)")
    p.add_argument("--time", default=None, help="training wall clock per run (default for puffer_*: 2m)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs in parallel, each pinned to cores/workers cores (default: one per core)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<game>)")
    p.add_argument("--preset-file", action="extend", nargs="+", default=[], metavar="FILE",
                   help="tuned preset files (bench tune's preset.toml), at most one per agent compared: its values "
                        "sit between the agent's PRESETS and --agent-option / --reuse / --horizon")  # fmt: skip
    p.add_argument("--label-suffix", default="", metavar="SUFFIX",
                   help="append SUFFIX to every run label (e.g. -tuned), so two compares into one folder tree stay "
                        "apart in a joint bench report")  # fmt: skip
    p.add_argument("--agent-option", action="append", default=[], metavar="AGENT.KEY=VALUE",
                   help="agent option for one agent, e.g. ppo.epochs=2 (repeatable)")  # fmt: skip
    p.add_argument("--reuse", nargs="+", type=float, default=None,
                   help="sample-reuse ratios to sweep (PPO/PQN epochs; Rainbow/BTR replay ratio)")  # fmt: skip
    p.add_argument("--horizon", nargs="+", type=int, default=None,
                   help="bootstrap horizons to sweep (PPO/PQN segment length; Rainbow/BTR n-step)")  # fmt: skip
    p.add_argument("--eval-episodes", type=int, default=0, help="greedy evaluation episodes at the end of each run")
    p.add_argument("--capture-video", action="store_true",
                   help="each run films its evaluation's first episode of env 0 into <run>/videos/ (bench run "
                        "--capture-video; needs --eval-episodes)")  # fmt: skip
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="local process pool or Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (auto | HOST:PORT); default: start one")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions for the report's CIs")
    p.add_argument("--no-report", action="store_true", help="run only; skip figures and summary")
    add_max_runs(p)
    add_sink_options(p, "the --out folder's name")


def add_max_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-runs", type=int, default=MAX_RUNS,
                   help=f"refuse to start more runs than this (default {MAX_RUNS}; the count is printed first)")  # fmt: skip


def check_run_count(n: int, max_runs: int, what: str) -> None:
    if max_runs < 1:
        raise UserError(f"--max-runs {max_runs} must be >= 1")
    if n > max_runs:
        raise UserError(f"{what}: {n:,} runs is more than --max-runs {max_runs:,}; "
                        f"pass --max-runs {n} to start them all")  # fmt: skip


def check_out_root(out: Path) -> None:
    """The folder compare and sweep write run folders under: creatable, and not itself a run."""
    check_target_dir(out, "--out")
    if (out / "config.json").exists():
        raise UserError(f"--out {out} is a run folder (bench run); give compare and sweep a folder of their own")


def make_out_root(out: Path) -> None:
    """Create it once everything is checked (some folders pass the permission check and still
    refuse a mkdir: /proc, a read-only mount)."""
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror or e})") from None


def parse_agent_options(items: list[str], agents: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {a: {} for a in agents}
    for it in items:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            raise UserError(f"--agent-option {it!r}: expected AGENT.KEY=VALUE, e.g. ppo.epochs=2")
        key, value = it.split("=", 1)
        agent, field = key.split(".", 1)
        if agent not in out:
            raise UserError(f"--agent-option {it!r}: {agent!r} is not among --agents ({', '.join(agents)})")
        out[agent][field.replace("-", "_")] = value
    return out


def _fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def expand(agents: list[str], game: str, seeds: int, out: Path, steps: int | None, time_s: float | None,
           options: dict[str, dict], reuse: list[float] | None, horizon: list[int] | None,
           eval_episodes: int = 0, spell=None, capture_video: bool = False,
           presets: dict | None = None, label_suffix: str = "") -> list[RunSpec]:  # fmt: skip
    """agents x reuse x horizon x seeds -> run specs with equal budgets, every run's config
    resolved and range-checked here, before any run starts. ``spell(agent, key, value)`` names
    an agent option as the user gave it (default ``--agent-option AGENT.KEY=VALUE``).
    ``presets``: {agent: bench.preset.Preset}, values under the options (passed on as --preset-file)."""
    presets = presets or {}
    from bench.config import RunConfig, check_run_config
    from bench.harness import load_agent_module, resolve
    from bench.perf import _typed

    spell = spell or (lambda a, k, v: f"--agent-option {a}.{k}={v}")
    check_run_config(RunConfig(agent=agents[0] if agents else "?", game=game, seed=max(seeds, 1), steps=steps,
                               time_s=time_s, eval_episodes=eval_episodes, capture_video=capture_video))  # fmt: skip
    if capture_video:
        from bench.video import check

        check(game)  # e.g. an Ocean game: refused before any run starts
    specs: list[RunSpec] = []
    for agent in agents:
        mod = load_agent_module(agent)
        base = _typed(mod.Config, options.get(agent, {}), lambda k, v, a=agent: spell(a, k, v))
        variants: list[tuple[str, dict]] = [(agent + label_suffix, {})]
        if reuse:
            if agent not in REUSE_KNOB:
                raise UserError(f"--reuse: agent {agent!r} has no reuse knob (known: {', '.join(REUSE_KNOB)})")
            knob = REUSE_KNOB[agent]
            conv = int if knob == "epochs" else float
            for r in reuse:
                if r <= 0 or (conv is int and not float(r).is_integer()):
                    raise UserError(f"--reuse {r:g}: {agent} needs a positive {'whole ' if conv is int else ''}number")
            variants = [(f"{lab}-reuse{_fmt_value(r)}", {**o, knob: conv(r)}) for lab, o in variants for r in reuse]
        if horizon:
            if agent not in HORIZON_KNOB:
                raise UserError(f"--horizon: agent {agent!r} has no horizon knob (known: {', '.join(HORIZON_KNOB)})")
            for h in horizon:
                if h < 1:
                    raise UserError(f"--horizon {h}: must be >= 1")
            knob = HORIZON_KNOB[agent]
            variants = [(f"{lab}-h{h}", {**o, knob: h}) for lab, o in variants for h in horizon]
        knob_flag = {REUSE_KNOB.get(agent): "--reuse", HORIZON_KNOB.get(agent): "--horizon"}
        for label, extra in variants:
            overrides = {**base, **extra}

            def named(k, v, a=agent, extra=extra, flags=knob_flag):
                return f"{flags[k]} {v}" if k in extra else spell(a, k, v)

            pre = presets.get(agent)
            # validates names and values now, with the preset's values under the options, as bench run will
            resolve(RunConfig(agent=agent, game=game), {**(pre.values if pre else {}), **overrides}, named)
            for seed in range(1, seeds + 1):
                specs.append(RunSpec(agent=agent, game=game, seed=seed, label=label, steps=steps, time_s=time_s,
                                     overrides=overrides, eval_episodes=eval_episodes, capture_video=capture_video,
                                     preset_file=pre.path if pre else None,
                                     out=str(out / label / game.replace(":", "_").replace("/", "_") / f"seed{seed}")))  # fmt: skip
    return specs


def games_of(game: list[str] | None, suite: str | None, game_flag: str = "--game",
             suite_flag: str = "--suite") -> list[str]:  # fmt: skip
    """The games a command runs: ``--game`` names or one ``--suite``, never both; each checked."""
    from envs import suites

    if game and suite:
        raise UserError(f"{suite_flag} {suite} and {game_flag} {' '.join(map(str, game))}: give a suite or games, not both")
    if suite is not None:
        try:
            games = list(suites.get(suite).games)
        except suites.UnknownSuite as e:
            raise UserError(f"{suite_flag}: {e}") from None
    elif game:
        games = list(dict.fromkeys(game))
    else:
        raise UserError(f"give {game_flag} GAME (one or more) or {suite_flag} NAME ({', '.join(suites.names())})")
    for g in games:
        try:
            envs.check_game(g)
        except envs.UnknownGame as e:
            where = f" (in suite {suite})" if suite else ""
            raise UserError(f"{e}{where}") from None
    return games


def check_existing(specs: list[RunSpec]) -> None:
    """Refuse up front if --out already holds runs with other budgets or options."""
    for s in specs:
        rd = RunDir(s.out)
        if rd.check() == "new":  # a folder that is neither new nor an intact run is refused here
            continue
        cfg = rd.config()
        prev = cfg["run"]
        if (prev.get("steps"), prev.get("time_s")) != (s.steps, s.time_s):
            raise UserError(
                f"{s.out} was run with budget steps={prev.get('steps')} time_s={prev.get('time_s')}, "
                f"this command asks steps={s.steps} time_s={s.time_s}: conflicting budgets; use another --out"
            )


def eta_text(specs: list[RunSpec], workers: int) -> str:
    todo = [s for s in specs if RunDir(s.out).status != "done"]
    if not todo:
        return "all runs already finished"
    waves = math.ceil(len(todo) / workers)
    if all(s.time_s is not None for s in todo):
        return f"ETA ~{waves * max(s.time_s for s in todo) / 60:.0f} min ({len(todo)} runs, {workers} at a time)"
    from bench.perf import measure

    share = max(1, len(allowed_cpus()) // workers)
    total_s = 0.0
    probe: dict[tuple, float] = {}
    for s in todo:
        key = (s.agent, json.dumps(s.overrides, sort_keys=True, default=str))
        if key not in probe:
            probe[key] = measure(s.agent, s.game, dict(s.overrides), 10.0, 0, share, "auto")["sps"]
        t = s.steps / max(probe[key], 1e-9)
        total_s += min(t, s.time_s) if s.time_s else t
    return f"ETA ~{total_s / workers / 3600:.1f} h ({len(todo)} runs, {workers} at a time; from a 10 s speed probe each)"


def main(args: argparse.Namespace) -> int:
    agents = list(dict.fromkeys(args.agents))
    if not agents:
        raise UserError("--agents is empty: name at least one agent, e.g. --agents ppo rainbow")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} must be >= 1")
    if args.workers is not None and not 1 <= args.workers <= len(allowed_cpus()):
        raise UserError(f"--workers {args.workers} must be in [1, {len(allowed_cpus())}] (the cores available)")
    if args.reps < 1:
        raise UserError(f"--reps {args.reps} must be >= 1")
    if args.out == "":
        raise UserError("--out '': empty path (give a folder, or leave --out out for runs/compare-<game>)")
    if args.label_suffix and not re.fullmatch(r"[A-Za-z0-9_.+-]+", args.label_suffix):
        raise UserError(f"--label-suffix {args.label_suffix!r}: use letters, digits and - _ . + only (it names folders)")
    games = games_of(args.game, args.suite)
    steps, time_s = parse_steps(args.steps, "--steps"), parse_duration(args.time, "--time")
    if steps is None and time_s is None:
        fams = sorted({envs.family_of(g) for g in games})
        if len({json.dumps(DEFAULT_BUDGET[f], sort_keys=True) for f in fams}) > 1:
            raise UserError(f"games of families {', '.join(fams)} have different default budgets: "
                            "give --steps and/or --time")  # fmt: skip
        d = DEFAULT_BUDGET[fams[0]]
        steps, time_s = d.get("steps"), d.get("time_s")
    name = args.suite or "-".join(g.replace(":", "_").replace("/", "_") for g in games[:3]) + (
        f"-and-{len(games) - 3}-more" if len(games) > 3 else "")  # fmt: skip
    out = Path(args.out or f"runs/compare-{name}")
    check_out_root(out)
    n_runs = len(agents) * len(args.reuse or [0]) * len(args.horizon or [0]) * args.seeds * len(games)
    check_run_count(n_runs, args.max_runs, "compare")
    options = parse_agent_options(args.agent_option, agents)
    from bench.preset import presets_by_agent

    presets = presets_by_agent(args.preset_file, agents)
    specs = [s for g in games for s in expand(agents, g, args.seeds, out, steps, time_s, options, args.reuse,
                                              args.horizon, args.eval_episodes,
                                              capture_video=args.capture_video, presets=presets,
                                              label_suffix=args.label_suffix)]  # fmt: skip
    flags = sink_flags(args, out.resolve().name)  # --wandb and the like, passed on to every run
    specs = [dataclasses.replace(s, run_flags=flags) for s in specs]
    check_existing(specs)
    make_out_root(out)
    workers = args.workers or min(len(allowed_cpus()), len(specs))
    budget = " and ".join(x for x in (steps and f"{steps:,} env_steps", time_s and f"{time_s:g} s training wall clock") if x)
    print(f"compare: {len(specs)} runs ({', '.join(agents)} x {args.seeds} seeds"
          f"{' x reuse ' + str(args.reuse) if args.reuse else ''}{' x horizon ' + str(args.horizon) if args.horizon else ''}) "
          f"on {('suite ' + args.suite + ': ') if args.suite else ''}{', '.join(games)}, budget {budget} each, "
          f"into {out}")  # fmt: skip
    print(eta_text(specs, workers), flush=True)
    if args.backend == "ray":
        results = run_ray(specs, args.address, max(1, len(allowed_cpus()) // workers), 0, out / "logs")
    else:
        results = run_local(specs, workers, out / "logs")
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    for k, v in failed.items():
        print(f"  {k}: {v}")
    if not args.no_report:
        from bench.cli import main as cli

        code = cli(["report", str(out), "--out", str(out / "report"), "--reps", str(args.reps)]
                   + (["--suite", args.suite] if args.suite else []))  # fmt: skip
        if code != 0:
            return code
    return 1 if failed else 0
