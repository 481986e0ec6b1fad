"""Drive an on-policy agent (PPO, PQN) by hand with random vector observations of width 3."""

from __future__ import annotations

from typing import Any

import torch

from envs.base import EnvStep


def fake_step(N: int, reward=None, term=(), trunc=(), final_obs=None) -> EnvStep:
    """One vector step: reward 1 unless given, ``term``/``trunc`` the envs that end there."""
    t, tr = torch.zeros(N, dtype=torch.bool), torch.zeros(N, dtype=torch.bool)
    t[list(term)], tr[list(trunc)] = True, True
    obs = torch.randn(N, 3)
    return EnvStep(obs=obs, reward=torch.ones(N) if reward is None else reward, terminated=t, truncated=tr,
                   done=t | tr, final_obs=obs if final_obs is None else final_obs)  # fmt: skip


def play(agent: Any, vector_steps: int, **step_kw) -> list[dict]:
    """Act, observe and update ``vector_steps`` times; return the metrics of every update."""
    out = []
    obs = torch.randn(agent.n, 3)
    for _ in range(vector_steps):
        agent.act(obs)
        step = fake_step(agent.n, **step_kw)
        agent.observe(step)
        m = agent.update()
        if m is not None:
            out.append(m)
        obs = step.obs
    return out
