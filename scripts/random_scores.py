"""The uniform-random policy's mean episode return per game: the ``lo`` of the MinAtar and Ocean
normalisers in ``plots/normalize.py`` (which quote this command and its output).

    .venv/bin/python scripts/random_scores.py --suite minatar --episodes 1000
    .venv/bin/python scripts/random_scores.py --game puffer_pong --episodes 1000

Each game is stepped through the harness's own adapter (``envs.make``: the same protocol card as
training runs), with actions drawn uniformly from a seeded generator, until ``--episodes`` full
episodes have finished; the first ``--episodes`` to finish are averaged. The printed standard error
is over episodes. Episodes still running when the count is reached are discarded, which biases
towards short episodes only when episode length and return are correlated and few envs run; with
``--num-envs 8`` against 1000 episodes that is at most 8 unfinished episodes in 1008.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import envs  # noqa: E402
from envs import suites  # noqa: E402


def random_score(game: str, episodes: int, num_envs: int, seed: int, max_steps: int) -> tuple[float, float, int, int]:
    env = envs.make(game, num_envs)
    env.reset(seed)
    gen = torch.Generator().manual_seed(seed)
    ret = torch.zeros(num_envs, dtype=torch.float64)
    done_returns: list[float] = []
    steps = 0
    while len(done_returns) < episodes and steps < max_steps:
        a = torch.randint(0, env.spec.num_actions, (num_envs,), generator=gen)
        st = env.step(a)
        ret += st.reward.double()
        for i in torch.nonzero(st.done).flatten().tolist():
            done_returns.append(float(ret[i]))
            ret[i] = 0.0
        steps += num_envs
    env.close()
    r = np.array(done_returns[:episodes])
    se = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan
    return float(r.mean()) if len(r) else math.nan, se, len(r), steps


def _fail(msg: str):
    print(f"random_scores.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", action="append", default=[], help="a game (repeatable)")
    p.add_argument("--suite", default=None, help="every game of a named suite")
    p.add_argument("--episodes", type=int, default=1000, help="finished episodes to average, >= 1")
    p.add_argument("--num-envs", type=int, default=8, help="parallel envs, >= 1")
    p.add_argument("--seed", type=int, default=0, help="env and action seed")
    p.add_argument("--max-steps", type=int, default=20_000_000, help="give up after this many env steps per game, >= 1")
    p.error = _fail  # one line, exit 2 (no usage dump), as the bench commands
    a = p.parse_args()
    for flag, v in (("--episodes", a.episodes), ("--num-envs", a.num_envs), ("--max-steps", a.max_steps)):
        if v < 1:
            p.error(f"{flag} {v} must be >= 1")
    try:
        games = list(a.game) + (list(suites.get(a.suite).games) if a.suite else [])
        for g in games:
            envs.check_game(g)
    except (suites.UnknownSuite, envs.UnknownGame) as e:
        p.error(str(e))
    if not games:
        p.error("give --game GAME or --suite NAME")
    torch.set_num_threads(1)
    print(f"uniform-random policy, first {a.episodes} finished episodes, {a.num_envs} envs, seed {a.seed}")
    for g in games:
        mean, se, n, steps = random_score(g, a.episodes, a.num_envs, a.seed, a.max_steps)
        print(f"{g:28s} mean return {mean:10.4f} +- {se:.4f} (SE)  episodes {n:5d}  env_steps {steps:,}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
