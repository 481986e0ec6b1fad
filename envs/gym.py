"""Any gymnasium environment id (``gym:CartPole-v1``) through gymnasium's synchronous vector env.

Uses the ``SAME_STEP`` autoreset mode so a finished episode's true final observation arrives in
the same step (``infos["final_obs"]``) and ``obs`` is already the first observation of the next
episode, matching the other families.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from envs.base import EnvSpec, EnvStep


def video_refusal(game: str) -> str | None:
    """Why --capture-video cannot film ``game`` (None: it renders to an array here). An env that
    lists rgb_array may still need a renderer that is not installed (classic control and toy text
    draw with pygame), so one frame is rendered to find out."""
    env_id = game.removeprefix("gym:")
    env = gym.make(env_id)
    modes = env.metadata.get("render_modes") or []
    env.close()
    if "rgb_array" not in modes:
        return f"{game} has no rgb_array render mode (its modes: {', '.join(modes) or 'none'}), so no frames to record"
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        env.render()
    except (gym.error.DependencyNotInstalled, ImportError) as e:
        return f"{game} cannot render here: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    finally:
        env.close()
    return None


class _RenderRecorder:
    """Films env 0 of a :class:`GymEnv` through a twin made with ``render_mode="rgb_array"``:
    seeded as env 0 (gymnasium seeds env i of ``reset(seed)`` with ``seed + i``) and stepped with
    env 0's actions, it replays env 0's episode and renders it, so the batch never renders (a
    vector env autoresets in the step, and would show the next episode's first screen instead of
    the last one). Each step's observation, reward and end are checked against env 0's, so a twin
    that drifted raises rather than filming another episode."""

    def __init__(self, game: str, seed: int):
        self._env = gym.make(game.removeprefix("gym:"), render_mode="rgb_array")
        self.fps = float(self._env.metadata.get("render_fps") or 30)
        self._env.reset(seed=int(seed))

    def frame(self, action: int, step: EnvStep) -> np.ndarray:
        obs, rew, term, trunc, _ = self._env.step(action)
        done = bool(term or trunc)
        same = (float(rew) == float(step.reward[0]) and done == bool(step.done[0])
                and np.allclose(np.asarray(obs, np.float64), step.final_obs[0].cpu().double().numpy()))  # fmt: skip
        if not same:
            raise RuntimeError(f"the render twin drifted from env 0 (reward {float(rew)} vs {float(step.reward[0])}, "
                               f"done {done} vs {bool(step.done[0])})")  # fmt: skip
        return np.asarray(self._env.render(), np.uint8)

    def close(self) -> None:
        self._env.close()


class GymEnv:
    def __init__(self, game: str, num_envs: int, device: torch.device = torch.device("cpu")):
        env_id = game.removeprefix("gym:")
        self._env = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        )
        space = self._env.single_action_space
        if not isinstance(space, gym.spaces.Discrete):
            self._env.close()
            raise ValueError(f"{game} has a {type(space).__name__} action space; only discrete games are supported")
        obs_space = self._env.single_observation_space
        self.num_envs, self.device = num_envs, device
        self._obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        spec_cap = self._env.envs[0].spec.max_episode_steps if self._env.envs[0].spec else None
        self.spec = EnvSpec(
            game=game,
            family="gym",
            obs_shape=tuple(obs_space.shape),
            obs_dtype=self._obs_dtype,
            num_actions=int(space.n),
            frameskip=1,
            protocol={
                "backend": f"gymnasium {gym.__version__} SyncVectorEnv (autoreset SAME_STEP)",
                "frameskip": 1,
                "sticky_actions": 0.0,
                "action_set": f"native ({int(space.n)} actions)",
                "life_loss": "none (episode = full game)",
                "reward_clipping": "none in env (learner's choice)",
                "episode_cap": spec_cap,
                "final_obs": "true final observation (infos['final_obs'])",
            },
        )

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device).to(self._obs_dtype)

    def reset(self, seed: int) -> torch.Tensor:
        obs, _ = self._env.reset(seed=int(seed))
        return self._t(obs)

    def step(self, actions: torch.Tensor) -> EnvStep:
        obs, rew, term, trunc, info = self._env.step(actions.cpu().numpy())
        obs_t = self._t(obs)
        term_t = torch.as_tensor(term, device=self.device)
        trunc_t = torch.as_tensor(trunc, device=self.device)
        done = term_t | trunc_t
        final = obs_t
        if done.any():
            final = obs_t.clone()
            for i in np.flatnonzero(term | trunc):
                final[i] = self._t(info["final_obs"][i])
        return EnvStep(
            obs=obs_t,
            reward=torch.as_tensor(rew, dtype=torch.float32, device=self.device),
            terminated=term_t,
            truncated=trunc_t,
            done=done,
            final_obs=final,
        )

    def raw_step_fn(self):
        env, n = self._env, self.num_envs
        acts = np.random.default_rng(0).integers(0, self.spec.num_actions, (64, n))
        i = 0

        def step():
            nonlocal i
            env.step(acts[i & 63])
            i += 1

        return step

    def recorder(self, seed: int) -> _RenderRecorder:
        """--capture-video (:class:`envs.base.Recorder`): env 0 through gymnasium's rgb_array render."""
        return _RenderRecorder(self.spec.game, seed)

    def close(self) -> None:
        self._env.close()
