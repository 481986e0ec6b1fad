"""``bench envs``: raw backend SPS vs the same env driven through the full harness.

Raw: the backend's own batched step with pre-drawn random actions, nothing else. Harness: the
real training loop (:func:`bench.harness.train`) with the ``random`` agent, the meter, episode
accounting and result rows, into a temporary folder. The ratio is the harness's overhead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import envs
from bench.config import RunConfig, parse_duration
from bench.errors import UserError

# MinAtar steps in Python, ~3-4 us (breakout) to ~30 us (space_invaders) per env step: 1024 envs
# make a vector step of ~3 ms and up, against the harness's ~0.1 ms per vector step (measured at 256
# envs), so the overhead stays a few percent even where the machine's load skews one of the two
# 10-second windows.
DEFAULT_NUM_ENVS = {"puffer": 16384, "ale": 16, "gym": 8, "minatar": 1024}


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--game", action="append", required=True,
                   help="game to measure (repeatable): breakout, puffer_breakout, minatar:breakout, gym:CartPole-v1")  # fmt: skip
    p.add_argument("--num-envs", type=int, default=None,
                   help="parallel envs (default: puffer 16384, ale 16, gym 8, minatar 1024)")  # fmt: skip
    p.add_argument("--seconds", default="10", help="seconds per measurement, raw and harness each (default 10)")
    p.add_argument("--threads", type=int, default=None, help="ALE/torch threads (default: all cores allowed)")
    p.add_argument("--json", action="store_true", help="print one JSON object per game instead of a table")


def measure_raw(game: str, num_envs: int, seconds: float, threads: int | None) -> float:
    import os

    env = envs.make(game, num_envs, num_threads=threads or len(os.sched_getaffinity(0)))
    env.reset(0)
    step = env.raw_step_fn()
    for _ in range(10):  # warm-up
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(8):
            step()
        n += 8
    sps = n * num_envs / (time.perf_counter() - t0)
    env.close()
    return sps


def measure_harness(game: str, num_envs: int, seconds: float, threads: int | None) -> dict:
    from bench.harness import train

    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp:
        run = RunConfig(agent="random", game=game, seed=0, time_s=seconds, threads=threads, device="cpu",
                        checkpoint_every_s=1e9)  # fmt: skip
        return train(run, {"num_envs": num_envs}, out=tmp)


def main(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.seconds, "--seconds")
    if args.num_envs is not None and not 1 <= args.num_envs <= 1_000_000:
        raise UserError(f"--num-envs {args.num_envs} must be in [1, 1000000]")
    if args.threads is not None and not 1 <= args.threads <= 4096:
        raise UserError(f"--threads {args.threads} must be in [1, 4096]")
    for game in args.game:
        try:
            envs.check_game(game)
        except envs.UnknownGame as e:
            raise UserError(str(e)) from None
    for game in args.game:
        n = args.num_envs or DEFAULT_NUM_ENVS[envs.family_of(game)]
        raw = measure_raw(game, n, seconds, args.threads)
        h = measure_harness(game, n, seconds, args.threads)
        out = {"game": game, "num_envs": n, "raw_sps": raw, "harness_sps": h["sps"], "ratio": h["sps"] / raw,
               "frameskip_frames_per_step": h["frames"] // max(h["env_steps"], 1),
               "harness_phase_s": h["phase_s"], "harness_env_steps": h["env_steps"], "seconds": seconds}  # fmt: skip
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{game:<22} num_envs {n:<5} raw {raw:>12,.0f} env_steps/s   harness {h['sps']:>12,.0f} "
                  f"env_steps/s   ratio {out['ratio']:.3f}")  # fmt: skip
    return 0
