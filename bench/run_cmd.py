"""``bench run``: one agent, one game, one seed, into one run folder (resumable)."""

from __future__ import annotations

import argparse
import shlex
import sys

from bench.config import RunConfig, add_config_options, check_run_config, check_sinks, parse_duration, parse_steps
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
    p.add_argument("--capture-video", action="store_true",
                   help="film each evaluation's first episode of env 0 into <out>/videos/eval_<env_steps>_ep0.mp4 "
                        "(needs --eval-episodes and pip install 'onoff-bench[video]'; not on puffer_* games)")  # fmt: skip
    add_sink_options(p, "none")


WANDB_PROJECT = "onoff-bench"


def add_sink_options(p: argparse.ArgumentParser, group_default: str) -> None:
    """The optional sinks fed from the same rows as the CSVs (which stay the record): shared by
    ``bench run``, ``bench compare`` and ``bench sweep``, which pass them on to every run."""
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events into the run folder")
    p.add_argument("--wandb", action="store_true",
                   help="also send the rows to Weights & Biases (needs pip install 'onoff-bench[wandb]'; "
                        "WANDB_MODE=offline works without an account)")  # fmt: skip
    p.add_argument("--wandb-project", default=None, help=f"W&B project (default {WANDB_PROJECT}; with --wandb)")
    p.add_argument("--wandb-entity", default=None, help="W&B entity, user or team (default: the account's; with --wandb)")
    p.add_argument("--wandb-group", default=None, help=f"W&B group (default: {group_default}; with --wandb)")


def check_sink_options(args: argparse.Namespace) -> None:
    """The --wandb-* options only mean something with --wandb: refused without it, not ignored."""
    given = [f"--wandb-{k}" for k in ("project", "entity", "group") if getattr(args, f"wandb_{k}") is not None]
    if given and not args.wandb:
        raise UserError(f"{' '.join(given)} without --wandb: add --wandb to send the run to W&B")


def sink_flags(args: argparse.Namespace, group_default: str) -> tuple[str, ...]:
    """For ``bench compare`` / ``sweep``: the sink options, checked once before any run starts,
    as the ``bench run`` flags that turn them on in every run (W&B group: ``group_default``
    unless --wandb-group is given)."""
    check_sink_options(args)
    check_sinks(args.tensorboard, args.wandb, args.wandb_project)
    flags = ["--tensorboard"] if args.tensorboard else []
    if args.wandb:
        flags.append("--wandb")
        group = args.wandb_group if args.wandb_group is not None else group_default
        for name, v in (("project", args.wandb_project), ("entity", args.wandb_entity), ("group", group)):
            if v is not None:
                flags += [f"--wandb-{name}", v]
    return tuple(flags)


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    add_run_options(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<agent>-<game>-s<seed>)")
    p.add_argument("--preset-file", default=None, metavar="FILE",
                   help="a tuned preset (bench tune's preset.toml) for this agent: its values sit between the "
                        "agent's PRESETS and the options given here; recorded in config.json (preset)")  # fmt: skip
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
            "device", "threads", "protocol", "label", "tensorboard", "capture_video", "out", "command", "wandb",
            "wandb_project", "wandb_entity", "wandb_group", "preset_file"}  # fmt: skip


def run_config_from_args(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    """The run config (every field range-checked) and the agent overrides the user typed."""
    if args.steps is None and args.time is None:
        raise UserError("give a budget: --steps N and/or --time T")
    check_sink_options(args)
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
        capture_video=args.capture_video,
        wandb=args.wandb,
        wandb_project=args.wandb_project if args.wandb_project is not None else WANDB_PROJECT,
        wandb_entity=args.wandb_entity,
        wandb_group=args.wandb_group,
    )
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_KEYS}
    return check_run_config(run), overrides


def apply_preset(path: str | None, agent: str, overrides: dict) -> tuple[dict, dict | None]:
    """(overrides with the preset file's values under them, the record config.json keeps); the
    file must name ``agent``."""
    if path is None:
        return overrides, None
    from bench.preset import load_preset

    pre = load_preset(path)
    if pre.agent != agent:
        raise UserError(f"--preset-file {path}: a preset for {pre.agent}, not for --agent {agent}")
    return {**pre.values, **overrides}, pre.record()


def main(args: argparse.Namespace) -> int:
    from bench.harness import train

    run, overrides = run_config_from_args(args)
    overrides, preset = apply_preset(args.preset_file, run.agent, overrides)
    if args.out == "":
        raise UserError("--out '': empty path (give a run folder, or leave --out out for runs/<agent>-<game>-s<seed>)")
    out = args.out or f"runs/{run.agent}-{run.game.replace(':', '_').replace('/', '_')}-s{run.seed}"
    command = "bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train(run, overrides, out=out, command=command, progress=True, preset=preset)
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
