"""``bench run``: one agent, one game, one seed, into one run folder (resumable)."""

from __future__ import annotations

import argparse
import shlex
import sys

from bench.config import RunConfig, add_config_options, check_run_config, parse_duration, parse_steps
from bench.errors import UserError


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", required=True, help="agent name (random, ppo, rainbow, btr, pqn)")
    p.add_argument("--game", required=True, help="breakout (ALE id), puffer_breakout (Ocean), gym:CartPole-v1")
    p.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    p.add_argument("--steps", default=None, help="env-step budget, e.g. 2M, 500k (rounded up to whole vector steps)")
    p.add_argument("--time", default=None, help="training wall-clock budget, e.g. 10m, 90s (evaluation excluded)")
    p.add_argument("--eval-every", default=None, help="env steps between greedy evaluations (default: only at the end)")
    p.add_argument("--eval-episodes", type=int, default=0, help="full-game episodes per evaluation (default 0: none)")
    p.add_argument("--log-every", default=None, help="env steps between metric rows (default budget/200, >= 10K)")
    p.add_argument("--checkpoint-every", default="2m", help="wall clock between checkpoints (default 2m)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch/ALE threads (default: all cores allowed)")
    p.add_argument("--protocol", default=None, choices=["machado", "dqn"], help="ALE protocol preset (default machado)")
    p.add_argument("--label", default=None, help="name for this run in reports (default: the agent name)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events into the run folder")


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    add_run_options(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<agent>-<game>-s<seed>)")
    add_agent_options(p, argv)


def add_agent_options(p: argparse.ArgumentParser, argv: list[str]) -> None:
    """Add the chosen agent's config fields as options (found by a pre-parse of --agent)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent")
    known, _ = pre.parse_known_args(argv)
    if known.agent:
        from bench.harness import load_agent_module

        try:
            mod = load_agent_module(known.agent)
        except UserError as e:
            p.error(str(e))
        add_config_options(p, mod.Config, getattr(mod, "PRESETS", None))


RUN_KEYS = {"agent", "game", "seed", "steps", "time", "eval_every", "eval_episodes", "log_every", "checkpoint_every",
            "device", "threads", "protocol", "label", "tensorboard", "out", "command"}  # fmt: skip


def run_config_from_args(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    """The run config (every field range-checked) and the agent overrides the user typed."""
    if args.steps is None and args.time is None:
        raise UserError("give a budget: --steps N and/or --time T")
    run = RunConfig(
        agent=args.agent,
        game=args.game,
        seed=args.seed,
        steps=parse_steps(args.steps, "--steps"),
        time_s=parse_duration(args.time, "--time"),
        eval_every=parse_steps(args.eval_every, "--eval-every"),
        eval_episodes=args.eval_episodes,
        log_every=parse_steps(args.log_every, "--log-every"),
        checkpoint_every_s=parse_duration(args.checkpoint_every, "--checkpoint-every"),
        device=args.device,
        threads=args.threads,
        protocol=args.protocol,
        label=args.label,
        tensorboard=args.tensorboard,
    )
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_KEYS}
    return check_run_config(run), overrides


def main(args: argparse.Namespace) -> int:
    from bench.harness import train

    run, overrides = run_config_from_args(args)
    if args.out == "":
        raise UserError("--out '': empty path (give a run folder, or leave --out out for runs/<agent>-<game>-s<seed>)")
    out = args.out or f"runs/{run.agent}-{run.game.replace(':', '_').replace('/', '_')}-s{run.seed}"
    command = "bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train(run, overrides, out=out, command=command, progress=True)
    if summary.get("already_finished"):
        print(f"{out}: already finished ({summary.get('env_steps', '?'):,} env_steps); nothing to do")
        return 0
    ph = summary["phase_s"]
    print(f"{out}: {summary['env_steps']:,} env_steps  {summary['frames']:,} frames  "
          f"{summary['grad_samples']:,} grad_samples  reuse_ratio {summary['reuse_ratio']:.2f}  "
          f"{summary['train_wall_s']:.1f} wall_s  {summary['sps']:,.0f} sps  "
          f"(env {ph['env']:.1f}s act {ph['act']:.1f}s learn {ph['learn']:.1f}s; not in wall_s: eval {ph['eval']:.1f}s "
          f"checkpoints {ph.get('checkpoint', 0.0):.1f}s)")  # fmt: skip
    return 0
