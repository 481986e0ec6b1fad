"""``bench sweep FILE.toml``: a declarative grid of runs, on this machine or on Ray.

A sweep file (see ``experiments/``)::

    name = "reuse-puffer-breakout"      # output folder runs/<name> unless --out
    agents = ["ppo", "rainbow"]
    games = ["puffer_breakout"]        # or suite = "minatar" (minatar, ocean, atari5, atari57)
    seeds = 2                           # seeds 1..N (or a list, e.g. [1, 5])
    time = "2m"                         # and/or steps = "2M": equal budget for every run
    reuse = [1, 4]                      # optional: sample-reuse ratios (see bench compare)
    horizon = [3, 32]                   # optional: bootstrap horizons
    eval_episodes = 0
    capture_video = false               # optional: film evaluations (bench run --capture-video)
    tensorboard = false                 # optional sinks, as bench run's flags, for every run:
    wandb = false                       #   wandb_project, wandb_entity, wandb_group (default: name)
    preset_files = ["../runs/tune-ppo-puffer_breakout/preset.toml"]  # optional: bench tune presets,
                                        # one per agent at most, paths relative to this file; their
                                        # values sit under [options] and [grid]
    label_suffix = "-tuned"             # optional: appended to every run label (two sweeps, one report)

    [options.ppo]                       # fixed agent options
    learning_rate = 0.01

    [grid.rainbow]                      # option grids: every combination becomes a variant
    lr = [1e-4, 3e-4]

The same resume rules as ``bench compare`` hold: finished runs are skipped, unfinished resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tomllib
from pathlib import Path

import envs
from bench.compare import add_max_runs, check_existing, check_out_root, check_run_count, expand, make_out_root
from bench.config import parse_duration, parse_steps
from bench.errors import UserError
from bench.run_cmd import add_sink_options, sink_flags
from bench.runner import allowed_cpus, run_local, run_ray

KNOWN_KEYS = {"name", "agents", "games", "suite", "seeds", "time", "steps", "reuse", "horizon", "eval_episodes", "options",
              "grid", "workers", "capture_video", "tensorboard", "wandb", "wandb_project", "wandb_entity",
              "wandb_group", "preset_files", "label_suffix"}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("file", help="sweep file (TOML)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="local process pool (default) or Ray")
    p.add_argument("--address", default=None, help="Ray address: auto | HOST:PORT (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: file's, else one per core)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs requested per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs requested per run (default 0)")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>)")
    p.add_argument("--report", action="store_true", help="write the report when all runs are done")
    add_max_runs(p)
    add_sink_options(p, "the sweep's name; given here, they win over the file's")


def _count(v) -> bool:
    """A whole number from TOML (``true`` is a bool, not a count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def read_toml(path: str, what: str = "sweep file", example: str = "experiments/*.toml") -> dict:
    """The TOML file at ``path`` as a dict; any reason it cannot be read is one line."""
    if path == "":
        raise UserError(f"{what} '': empty path")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give a {what} (TOML), e.g. {example}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML ({str(e).splitlines()[0]})") from None


def load_sweep(path: str) -> dict:
    """The sweep file, with every top-level key's type and range checked (one line on error)."""
    return check_sweep(read_toml(path), path)


def check_sweep(cfg: dict, path: str, known: set[str] | frozenset[str] = KNOWN_KEYS,
                agents_optional: bool = False) -> dict:  # fmt: skip
    """``cfg`` (a sweep file's table) checked key by key; ``path`` names the file in errors.
    ``known``: the keys allowed (``bench paper`` study files add their own, drop some);
    ``agents_optional``: 'agents' may be absent or empty (a study whose runs are all labelled arms)."""
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if agents_optional and cfg.get("agents", []) == []:
        cfg["agents"] = []
    if "suite" in cfg:
        from bench.compare import games_of
        from envs import suites

        if not isinstance(cfg["suite"], str) or not cfg["suite"].strip():
            raise UserError(f"{path}: suite = {cfg['suite']!r} must be a suite name")
        games_of(cfg.get("games"), cfg["suite"], "games", f"{path}: suite")
        cfg["games"] = list(suites.get(cfg["suite"]).games)
    for key, tp in (("agents", list), ("games", list)):
        if key == "agents" and agents_optional and cfg[key] == []:
            continue
        if not isinstance(cfg.get(key), tp) or not cfg[key] or not all(isinstance(x, str) for x in cfg[key]):
            what = " (or a suite = NAME)" if key == "games" else ""
            raise UserError(f"{path}: '{key}' must be a non-empty list of names{what}")
    if "time" not in cfg and "steps" not in cfg:
        raise UserError(f"{path}: give a budget: steps and/or time")
    for table in ("options", "grid"):
        t = cfg.get(table, {})
        if not isinstance(t, dict) or not all(isinstance(v, dict) for v in t.values()):
            raise UserError(f"{path}: [{table}.AGENT] tables expected")
        stray = sorted(set(t) - set(cfg["agents"]))
        if stray:
            raise UserError(f"{path}: [{table}.{stray[0]}] names an agent not in 'agents'")
    for agent, grid in cfg.get("grid", {}).items():
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise UserError(f"{path}: grid.{agent}.{k} must be a non-empty list")
    if "name" in cfg and (not isinstance(cfg["name"], str) or not cfg["name"].strip()):
        raise UserError(f"{path}: name = {cfg['name']!r} must be a non-empty string")
    seeds = cfg.get("seeds", 1)
    if not ((_count(seeds) and seeds >= 1) or (isinstance(seeds, list) and seeds
                                               and all(_count(x) and x >= 1 for x in seeds))):  # fmt: skip
        raise UserError(f"{path}: seeds = {seeds!r} must be a positive count or a non-empty list of positive ints")
    for key, kind, low in (("reuse", (int, float), 0), ("horizon", int, 0)):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, list) or not v
                              or not all(isinstance(x, kind) and not isinstance(x, bool) and x > low for x in v)):  # fmt: skip
            what = "positive numbers" if key == "reuse" else "whole numbers >= 1"
            raise UserError(f"{path}: {key} = {v!r} must be a non-empty list of {what} (or left out)")
    ev = cfg.get("eval_episodes", 0)
    if not _count(ev) or ev < 0:
        raise UserError(f"{path}: eval_episodes = {ev!r} must be a whole number >= 0")
    cv = cfg.get("capture_video", False)
    if not isinstance(cv, bool):
        raise UserError(f"{path}: capture_video = {cv!r} must be true or false")
    if cv and not ev:
        raise UserError(f"{path}: capture_video = true films the evaluation episodes: set eval_episodes >= 1")
    w = cfg.get("workers")
    if w is not None and (not _count(w) or w < 1):
        raise UserError(f"{path}: workers = {w!r} must be a whole number >= 1")
    for key in ("tensorboard", "wandb"):
        if not isinstance(cfg.get(key, False), bool):
            raise UserError(f"{path}: {key} = {cfg[key]!r} must be true or false")
    for key in ("wandb_project", "wandb_entity", "wandb_group"):
        if key in cfg and (not isinstance(cfg[key], str) or not cfg[key].strip()):
            raise UserError(f"{path}: {key} = {cfg[key]!r} must be a non-empty string")
        if key in cfg and not cfg.get("wandb"):
            raise UserError(f"{path}: {key} without wandb = true")
    ls = cfg.get("label_suffix", "")
    if not isinstance(ls, str) or (ls and not all(c.isalnum() or c in "-_.+" for c in ls)):
        raise UserError(f"{path}: label_suffix = {ls!r} must be a string of letters, digits and - _ . + (it names folders)")
    pf = cfg.get("preset_files", [])
    if not isinstance(pf, list) or not all(isinstance(x, str) and x for x in pf):
        raise UserError(f"{path}: preset_files = {pf!r} must be a list of preset file paths")
    return cfg


def sweep_presets(cfg: dict, path: str) -> dict:
    """{agent: Preset} from the file's ``preset_files`` (paths relative to the sweep file)."""
    from bench.preset import presets_by_agent

    base = Path(path).parent
    files = [str(p if Path(p).is_absolute() else base / p) for p in cfg.get("preset_files", [])]
    return presets_by_agent(files, cfg["agents"], f"{path}: preset_files")


def run_count(cfg: dict) -> int:
    """How many runs the file expands into (before expanding it)."""
    seeds = cfg.get("seeds", 1)
    n_seeds = seeds if isinstance(seeds, int) else len(set(seeds))
    per_agent = len(cfg.get("reuse") or [0]) * len(cfg.get("horizon") or [0]) * n_seeds
    total = 0
    for agent in cfg["agents"]:
        grid = cfg.get("grid", {}).get(agent, {})
        combos = 1
        for v in grid.values():
            combos *= len(v)
        total += combos * per_agent
    return total * len(cfg["games"])


def specs_from(cfg: dict, out: Path, path: str):
    seeds = cfg.get("seeds", 1)
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else seeds
    if not isinstance(seed_list, list) or not seed_list or not all(isinstance(s, int) and s >= 1 for s in seed_list):
        raise UserError(f"{path}: seeds must be a positive count or a list of positive ints")
    steps = parse_steps(cfg.get("steps"), f"{path}: steps =") if cfg.get("steps") is not None else None
    time_s = parse_duration(cfg.get("time"), f"{path}: time =") if cfg.get("time") is not None else None
    presets = sweep_presets(cfg, path)
    specs = []
    for game in cfg["games"]:
        try:
            envs.check_game(game)
        except envs.UnknownGame as e:
            raise UserError(f"{path}: {e}") from None
        for agent in cfg["agents"]:
            grid = cfg.get("grid", {}).get(agent, {})
            keys = sorted(grid)
            for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
                opts = {**cfg.get("options", {}).get(agent, {}), **dict(zip(keys, combo))}

                def spell(a, k, v, keys=keys):
                    return f"{path}: [{'grid' if k in keys else 'options'}.{a}] {k} = {v!r}"

                sub = expand([agent], game, max(seed_list), out, steps, time_s, {agent: opts}, cfg.get("reuse"),
                             cfg.get("horizon"), cfg.get("eval_episodes", 0), spell,
                             capture_video=cfg.get("capture_video", False), presets=presets)  # fmt: skip
                suffix = "".join(f"-{k}{v}" for k, v in zip(keys, combo))
                for s in sub:
                    if s.seed not in seed_list:
                        continue
                    label = s.label + cfg.get("label_suffix", "") + suffix
                    game_dir = game.replace(":", "_").replace("/", "_")
                    specs.append(type(s)(**{**s.__dict__, "label": label,
                                            "out": str(out / label / game_dir / f"seed{s.seed}")}))  # fmt: skip
    return specs


def main(args: argparse.Namespace) -> int:
    for flag, v in (("--workers", args.workers), ("--cpus-per-run", args.cpus_per_run)):
        if v is not None and v < 1:
            raise UserError(f"{flag} {v} must be >= 1")
    if not 0 <= args.gpus_per_run < 1e6:
        raise UserError(f"--gpus-per-run {args.gpus_per_run} must be >= 0")
    if args.out == "":
        raise UserError("--out '': empty path (give a folder, or leave --out out for runs/<name>)")
    cfg = load_sweep(args.file)
    out = Path(args.out or f"runs/{cfg.get('name') or Path(args.file).stem}")
    check_out_root(out)
    n = run_count(cfg)
    print(f"sweep {args.file}: {n:,} runs into {out} ({args.backend} backend)", flush=True)
    check_run_count(n, args.max_runs, f"sweep {args.file}")
    specs = specs_from(cfg, out, args.file)
    # The sinks, as the file asks and the command line overrides, passed on to every run.
    sinks = argparse.Namespace(tensorboard=args.tensorboard or cfg.get("tensorboard", False),
                               wandb=args.wandb or cfg.get("wandb", False),
                               **{k: getattr(args, k) if getattr(args, k) is not None else cfg.get(k)
                                  for k in ("wandb_project", "wandb_entity", "wandb_group")})  # fmt: skip
    flags = sink_flags(sinks, cfg.get("name") or Path(args.file).stem)
    specs = [dataclasses.replace(s, run_flags=flags) for s in specs]
    check_existing(specs)
    make_out_root(out)
    if args.backend == "ray":
        results = run_ray(specs, args.address, args.cpus_per_run, args.gpus_per_run, out / "logs")
    else:
        workers = args.workers or cfg.get("workers") or min(len(allowed_cpus()), len(specs))
        results = run_local(specs, workers, out / "logs")
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    done = sum(v in ("done",) or v.startswith("skipped") for v in results.values())
    print(f"sweep: {done}/{len(specs)} runs finished, {len(failed)} failed")
    for k, v in failed.items():
        print(f"  {k}: {v}")
    if args.report and not failed:
        from bench.cli import main as cli

        return cli(["report", str(out), "--out", str(out / "report")] + (["--suite", cfg["suite"]] if "suite" in cfg else []))
    return 1 if failed else 0
