"""The batched, torch-native environment interface shared by every family.

Every adapter (ALE, PufferLib Ocean, gymnasium, MinAtar) exposes the same three things:

* ``spec``: an :class:`EnvSpec` (shapes, action count, frameskip, the protocol card);
* ``reset(seed) -> obs``: ``[N, *obs_shape]``;
* ``step(actions) -> EnvStep``: one step of all ``N`` environments.

Semantics every adapter guarantees (STYLE.md principle 9):

* ``terminated`` and ``truncated`` are kept apart. ``terminated`` means "do not bootstrap"
  (game over, or a life loss when the protocol signals it to the learner); ``truncated``
  means the time limit cut the episode and the learner should bootstrap from ``final_obs``.
* ``done`` marks a full-game episode boundary: the environment was reset, ``obs`` is the first
  observation of a new episode and ``final_obs`` holds the true last observation of the old one.
  A life loss under the ``dqn`` protocol is ``terminated`` but not ``done``.
* ``reward`` is the raw game reward. Clipping belongs in the learner.
* Tensors returned by ``reset``/``step`` may be views of the backend's buffers, valid only until
  the next ``step``: whoever keeps them must copy (the agents' storage does so anyway, which keeps
  the harness free of a per-step copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a batched environment."""

    game: str  # canonical game name: "breakout", "puffer_breakout", "gym:CartPole-v1"
    family: str  # "ale" | "puffer" | "gym" | "minatar"
    obs_shape: tuple[int, ...]  # per-env observation shape, e.g. (4, 84, 84) or (118,)
    obs_dtype: torch.dtype  # torch.uint8 for Atari frames, torch.bool for MinAtar boards, torch.float32 for vectors
    num_actions: int  # size of the discrete action set
    frameskip: int  # emulator frames per env step: frames = env_steps * frameskip
    protocol: dict[str, Any] = field(default_factory=dict)  # the protocol card, stored per run


@dataclass
class EnvStep:
    """The outcome of one batched step. Shapes: ``N`` envs."""

    obs: torch.Tensor  # [N, *obs_shape] next observation to act on (post-reset where done)
    reward: torch.Tensor  # [N] float32 raw (unclipped) reward
    terminated: torch.Tensor  # [N] bool: no bootstrap (game over; life loss under `dqn`)
    truncated: torch.Tensor  # [N] bool: time limit; bootstrap from final_obs
    done: torch.Tensor  # [N] bool: full-game episode ended and the env was reset
    final_obs: torch.Tensor  # [N, *obs_shape] == obs except where done|truncated: the true last obs


class VecEnv(Protocol):
    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int) -> torch.Tensor: ...

    def step(self, actions: torch.Tensor) -> EnvStep: ...

    def close(self) -> None: ...


class Recorder(Protocol):
    """What ``--capture-video`` films (optional: an adapter that can show its screen has a method
    ``recorder(seed) -> Recorder``; the Ocean adapter has none). It follows env 0 of the batch from
    the ``reset(seed)`` just made and only reads: the batch's observations, actions and RNG streams
    are the same with or without it, so the evaluation's returns are too."""

    fps: float  # playback rate of the clip (real time where the game has one)

    def frame(self, action: int, step: EnvStep) -> np.ndarray:
        """``[H, W, 3]`` uint8: env 0's screen after ``step`` (the last screen of its episode where
        ``step.done[0]``), given the ``action`` env 0 took. RuntimeError if it lost track of env 0."""
        ...

    def close(self) -> None: ...
