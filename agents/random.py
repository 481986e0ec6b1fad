"""Uniform-random agent: the env baseline and the harness's test double. It never learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.api import AgentContext, opt
from envs.base import EnvStep


@dataclass(frozen=True)
class Config:
    num_envs: int = opt(8, "parallel environments", ge=1)


PRESETS: dict[str, dict[str, Any]] = {"puffer": {"num_envs": 1024}}


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.n = cfg, ctx.num_envs
        self.num_actions = ctx.spec.num_actions
        self.device = ctx.device
        self._block = torch.empty(0, self.n, dtype=torch.int64)
        self._i = 0

    def act(self, obs: torch.Tensor, explore: bool = True, first: torch.Tensor | None = None) -> torch.Tensor:
        # Draw 64 steps of actions at a time: one RNG call per step would cost more than the
        # whole harness overhead we measure against (bench envs).
        if self._i >= self._block.shape[0] or self._block.shape[1] != obs.shape[0]:
            self._block = torch.randint(self.num_actions, (64, obs.shape[0]), device=self.device)  # [64, N]
            self._i = 0
        self._i += 1
        return self._block[self._i - 1]  # [N]

    def observe(self, step: EnvStep) -> None:
        pass

    def update(self) -> dict[str, Any] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
