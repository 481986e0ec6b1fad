"""``bench sweep FILE.toml``: a declarative grid of runs, on this machine or on Ray.

A sweep file (see ``experiments/``)::

    name = "reuse-puffer-breakout"      # output folder runs/<name> unless --out
    agents = ["ppo", "rainbow"]
    games = ["puffer_breakout"]
    seeds = 2                           # seeds 1..N (or a list, e.g. [1, 5])
    time = "2m"                         # and/or steps = "2M": equal budget for every run
    reuse = [1, 4]                      # optional: sample-reuse ratios (see bench compare)
    horizon = [3, 32]                   # optional: bootstrap horizons
    eval_episodes = 0

    [options.ppo]                       # fixed agent options
    learning_rate = 0.01

    [grid.rainbow]                      # option grids: every combination becomes a variant
    lr = [1e-4, 3e-4]

The same resume rules as ``bench compare`` hold: finished runs are skipped, unfinished resumed.
"""

from __future__ import annotations

import argparse
import itertools
import tomllib
from pathlib import Path

import envs
from bench.compare import check_existing, expand
from bench.config import parse_duration, parse_steps
from bench.errors import UserError
from bench.runner import allowed_cpus, run_local, run_ray

KNOWN_KEYS = {"name", "agents", "games", "seeds", "time", "steps", "reuse", "horizon", "eval_episodes", "options",
              "grid", "workers"}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("file", help="sweep file (TOML)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="local process pool (default) or Ray")
    p.add_argument("--address", default=None, help="Ray address: auto | HOST:PORT (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: file's, else one per core)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs requested per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs requested per run (default 0)")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>)")
    p.add_argument("--report", action="store_true", help="write the report when all runs are done")


def load_sweep(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such sweep file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML ({e})") from None
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    for key, tp in (("agents", list), ("games", list)):
        if not isinstance(cfg.get(key), tp) or not cfg[key] or not all(isinstance(x, str) for x in cfg[key]):
            raise UserError(f"{path}: '{key}' must be a non-empty list of names")
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
    return cfg


def specs_from(cfg: dict, out: Path, path: str):
    seeds = cfg.get("seeds", 1)
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else seeds
    if not isinstance(seed_list, list) or not seed_list or not all(isinstance(s, int) and s >= 1 for s in seed_list):
        raise UserError(f"{path}: seeds must be a positive count or a list of positive ints")
    steps = parse_steps(cfg.get("steps"), "steps") if cfg.get("steps") is not None else None
    time_s = parse_duration(cfg.get("time"), "time") if cfg.get("time") is not None else None
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
                sub = expand([agent], game, max(seed_list), out, steps, time_s, {agent: opts}, cfg.get("reuse"),
                             cfg.get("horizon"), int(cfg.get("eval_episodes", 0)))  # fmt: skip
                suffix = "".join(f"-{k}{v}" for k, v in zip(keys, combo))
                for s in sub:
                    if s.seed not in seed_list:
                        continue
                    label = s.label + suffix
                    game_dir = game.replace(":", "_").replace("/", "_")
                    specs.append(type(s)(**{**s.__dict__, "label": label,
                                            "out": str(out / label / game_dir / f"seed{s.seed}")}))  # fmt: skip
    return specs


def main(args: argparse.Namespace) -> int:
    cfg = load_sweep(args.file)
    out = Path(args.out or f"runs/{cfg.get('name') or Path(args.file).stem}")
    specs = specs_from(cfg, out, args.file)
    check_existing(specs)
    print(f"sweep {args.file}: {len(specs)} runs into {out} ({args.backend} backend)", flush=True)
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

        return cli(["report", str(out), "--out", str(out / "report")])
    return 1 if failed else 0
