"""ALE Atari games through ale-py's C++-threaded ``AtariVectorEnv``.

Preprocessing follows the standard DQN pipeline inside ale-py: 84x84 greyscale, max-pool over
the last two frames, 4-frame stack, frameskip 4, up to 30 no-op starts. Two protocols:

* ``machado`` (the default; Machado et al. 2018, "Revisiting the ALE"): sticky actions with
  p = 0.25, no life-loss signal, episodes capped at 108K frames (30 min of play). It is the
  default because sticky actions make the emulator stochastic, so an agent cannot memorise an
  open-loop action sequence, and it is what recent off-policy work (e.g. BTR) reports.
* ``dqn`` (Mnih et al. 2015 / Hessel et al. 2018): no sticky actions, FIRE pressed on reset, a
  life loss is signalled to the learner as ``terminated`` (no bootstrap) while episodes and
  returns stay full games, 108K-frame cap.

Both use the minimal action set and leave rewards unclipped: every reported score is the real
game score, and clipping (a learner choice) happens in the agents.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import EnvSpec, EnvStep

PROTOCOLS: dict[str, dict] = {
    "machado": dict(repeat_action_probability=0.25, use_fire_reset=False, life_loss_terminal=False),
    "dqn": dict(repeat_action_probability=0.0, use_fire_reset=True, life_loss_terminal=True),
}
DEFAULT_PROTOCOL = "machado"
VIDEO_FPS = 60.0 / 4  # --capture-video: the emulator's 60 Hz over frameskip 4, i.e. real time


def games() -> list[str]:
    """Every ALE ROM id ale-py ships, e.g. ``breakout``, ``ms_pacman``."""
    try:
        from ale_py import roms
    except ImportError:
        return []
    return sorted(roms.get_all_rom_ids())


class AtariEnv:
    def __init__(
        self,
        game: str,
        num_envs: int,
        device: torch.device = torch.device("cpu"),
        protocol: str = DEFAULT_PROTOCOL,
        num_threads: int = 0,
    ):
        import ale_py
        from ale_py.vector_env import AtariVectorEnv

        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown Atari protocol {protocol!r}: choose {', '.join(PROTOCOLS)}")
        p = PROTOCOLS[protocol]
        ctor = dict(
            num_envs=num_envs,
            num_threads=num_threads,
            max_num_frames_per_episode=108_000,
            repeat_action_probability=p["repeat_action_probability"],
            full_action_space=False,
            autoreset_mode="SameStep",
            img_height=84,
            img_width=84,
            grayscale=True,
            stack_num=4,
            frameskip=4,
            maxpool=True,
            noop_max=30,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=p["use_fire_reset"],
        )
        self._env = AtariVectorEnv(game, **ctor)
        self._game, self._ctor = game, ctor
        self._life_loss = p["life_loss_terminal"]
        self.num_envs, self.device = num_envs, device
        n_act = int(self._env.single_action_space.n)
        self.spec = EnvSpec(
            game=game,
            family="ale",
            obs_shape=tuple(self._env.single_observation_space.shape),
            obs_dtype=torch.uint8,
            num_actions=n_act,
            frameskip=4,
            protocol={
                "name": protocol,
                "backend": f"ale-py {ale_py.__version__} AtariVectorEnv",
                "constructor": ctor,
                "frameskip": 4,
                "sticky_actions": p["repeat_action_probability"],
                "action_set": f"minimal ({n_act} actions)",
                "life_loss": "terminal for the learner, episode continues" if self._life_loss else "none",
                "reward_clipping": "none in env (learner's choice)",
                "episode_cap": "108000 frames",
                "fire_on_reset": p["use_fire_reset"],
                "noop_max": 30,
                "observation": "84x84 grey, max-pool of last 2 frames, 4-frame stack, uint8",
                "final_obs": "true final observation (info['final_obs'])",
            },
        )
        self._lives = np.zeros(num_envs, np.int64)

    def reset(self, seed: int) -> torch.Tensor:
        obs, info = self._env.reset(seed=int(seed))
        self._lives = np.asarray(info["lives"]).copy()
        return torch.from_numpy(obs).to(self.device)

    def step(self, actions: torch.Tensor) -> EnvStep:
        obs, rew, term, trunc, info = self._env.step(actions.cpu().numpy())
        done = term | trunc
        learner_term = term.copy()
        lives = np.asarray(info["lives"])
        if self._life_loss:
            learner_term |= (lives < self._lives) & ~done  # a life lost mid-game: no bootstrap
        self._lives = lives.copy()
        obs_t = torch.from_numpy(obs).to(self.device)
        final = obs_t
        if done.any():
            final = obs_t.clone()
            idx = np.flatnonzero(done)
            final[idx] = torch.from_numpy(np.asarray(info["final_obs"])[idx]).to(self.device)
        return EnvStep(
            obs=obs_t,
            reward=torch.from_numpy(rew.astype(np.float32)).to(self.device),
            terminated=torch.from_numpy(learner_term).to(self.device),
            truncated=torch.from_numpy(trunc).to(self.device),
            done=torch.from_numpy(done).to(self.device),
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

    def recorder(self, seed: int) -> _ScreenRecorder:
        """--capture-video (:class:`envs.base.Recorder`): env 0's RGB screen, through a twin."""
        return _ScreenRecorder(self._game, self._ctor, seed)

    def close(self) -> None:
        self._env.close()


class _ScreenRecorder:
    """Films env 0 of an :class:`AtariEnv` through a one-env twin: the same constructor, but with the
    emulator's own RGB screen as observation (210x160, no resize, grey, max-pool or stack), which
    the batch's preprocessed 84x84 frames cannot give back. Seeded as env 0 (ale-py seeds env i of
    ``reset(seed)`` with ``seed + i``) and stepped with env 0's actions, it plays env 0's game: the
    emulator, sticky actions and no-op starts draw only from the env's own seeded RNG. Each step's
    reward and episode end are checked against env 0's, so a twin that drifted raises rather than
    filming another game. It costs one extra emulator for one episode; the batch is untouched."""

    fps = VIDEO_FPS

    def __init__(self, game: str, ctor: dict, seed: int):
        from ale_py.vector_env import AtariVectorEnv

        screen = dict(num_envs=1, num_threads=1, img_height=210, img_width=160, grayscale=False, stack_num=1,
                      maxpool=False)  # fmt: skip
        self._env = AtariVectorEnv(game, **{**ctor, **screen})
        self._env.reset(seed=int(seed))

    def frame(self, action: int, step: EnvStep) -> np.ndarray:
        obs, rew, term, trunc, info = self._env.step(np.array([action], np.int64))
        done = bool(term[0] or trunc[0])
        if float(rew[0]) != float(step.reward[0]) or done != bool(step.done[0]):
            raise RuntimeError(f"the screen twin drifted from env 0 (reward {float(rew[0])} vs "
                               f"{float(step.reward[0])}, done {done} vs {bool(step.done[0])})")  # fmt: skip
        screen = np.asarray(info["final_obs"])[0] if done else obs[0]  # [1, 210, 160, 3]: stack of one
        return screen[-1]

    def close(self) -> None:
        self._env.close()
