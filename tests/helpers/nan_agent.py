"""A test agent whose 'loss' turns NaN after a set number of updates (harness NaN handling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.api import AgentContext, opt


@dataclass(frozen=True)
class Config:
    num_envs: int = opt(4, "parallel environments")
    nan_after: int = opt(5, "updates before the loss becomes NaN")


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.n_act, self.updates = cfg, ctx.spec.num_actions, 0
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.opt = torch.optim.SGD([self.w], lr=0.1)

    def act(self, obs, explore=True, first=None):
        return torch.zeros(obs.shape[0], dtype=torch.int64)

    def observe(self, step):
        pass

    def update(self):
        self.updates += 1
        loss = float("nan") if self.updates > self.cfg.nan_after else 1.0
        return {"grad_steps": 1, "grad_samples": 8, "loss": loss}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, s):
        self.updates = s["updates"]
