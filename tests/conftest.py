"""Shared test fixtures: a scripted gymnasium env with known returns, and a tiny NaN agent."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest


class ScriptedEnv(gym.Env):
    """obs = [t, episode index]; reward at step t (1-based) is t; terminates after ``length``
    steps, where episode k of this env lasts 3 + (k + offset) % 4 steps. Return of an episode of
    length L is L(L+1)/2, so every accounting figure is known in closed form."""

    metadata: dict = {"render_modes": []}

    def __init__(self, offset: int = 0):
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.offset, self.k, self.t = offset, -1, 0

    def length(self, k: int) -> int:
        return 3 + (k + self.offset) % 4

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.k += 1
        self.t = 0
        return np.array([0, self.k], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, self.k], np.float32), float(self.t), self.t >= self.length(self.k), False, {}


gym.register("Scripted-v0", entry_point=ScriptedEnv)
# Same env cut by a time limit at 4 steps: episodes of length >= 4 are truncated at 4.
gym.register("ScriptedTL-v0", entry_point=ScriptedEnv, max_episode_steps=4)


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"
