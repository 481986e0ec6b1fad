"""``bench demo`` (what ``make demo`` runs): the embedded default job.

1. ``bench envs`` on ``puffer_breakout`` and ``breakout``: raw backend vs harness speed;
2. ``bench compare --agents ppo rainbow --game puffer_breakout --seeds 3 --time 2m``: PPO vs
   Rainbow under the same training wall clock per run, two runs at a time on a 2-core machine,
   ending with figures (``runs/demo/report/figures``), ``summary.md`` and a terminal table.

Rerunning it skips finished runs.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--time", default="2m", help="training wall clock per run (default 2m)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per agent (default 3)")
    p.add_argument("--skip-envs", action="store_true", help="skip the env speed check")


def main(args: argparse.Namespace) -> int:
    from bench.cli import main as cli

    if not args.skip_envs:
        print("== 1/2  bench envs: raw backend vs harness speed", flush=True)
        code = cli(["envs", "--game", "puffer_breakout", "--game", "breakout", "--seconds", "3"])
        if code:
            return code
    print(f"\n== 2/2  bench compare: PPO vs Rainbow on puffer_breakout, {args.seeds} seeds, {args.time} each",
          flush=True)  # fmt: skip
    return cli(["compare", "--agents", "ppo", "rainbow", "--game", "puffer_breakout", "--seeds", str(args.seeds),
                "--time", args.time, "--out", args.out])  # fmt: skip
