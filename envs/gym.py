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

    def close(self) -> None:
        self._env.close()
