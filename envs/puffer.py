"""PufferLib Ocean environments (C, vectorised in-process). The only file that imports pufferlib.

The Ocean C envs write observations, rewards, terminals and truncations into numpy buffers that
they own; this adapter wraps those buffers once as zero-copy torch views, so a step costs one C
call plus a few vector ops. Ocean envs reset themselves inside C when an episode ends, so the
true final observation of a finished episode is not available: ``final_obs`` equals the reset
observation (recorded in the protocol card). The games we use (breakout, pong, enduro) end by
termination, where no bootstrap is needed, so this costs nothing there.

Episode returns are summed by the harness from the raw per-step rewards, not read from
PufferLib's aggregated logs, so every family reports returns the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings

import numpy as np
import torch

from envs.base import EnvSpec, EnvStep


def _ocean():
    # pufferlib.spaces imports the unmaintained `gym`, which prints a deprecation banner to stderr
    # on import; it says nothing about our use (only the Ocean C envs), so keep it off the console.
    # pufferlib/__init__.py also symlinks its render assets as ./resources into the current
    # folder (and fails to import where that folder is read-only). We never render: keep every
    # bench command, even a typo'd game name, from writing into the user's folder.
    import os

    symlink = os.symlink
    os.symlink = lambda *a, **kw: None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import pufferlib
            from pufferlib.ocean import environment
    finally:
        os.symlink = symlink

    return pufferlib, environment


def games() -> list[str]:
    """Ocean env names this build provides, e.g. ``puffer_breakout``."""
    try:
        _, environment = _ocean()
    except ImportError:
        return []
    import importlib.util

    names = []
    for n, maker in environment.MAKE_FUNCTIONS.items():
        # Strings name C envs (callables are Python sanity envs); a missing binding means the
        # build left it out (impulse_wars needs box2d).
        if isinstance(maker, str) and importlib.util.find_spec(f"pufferlib.ocean.{n}") is not None \
                and importlib.util.find_spec(f"pufferlib.ocean.{n}.binding") is not None:
            names.append(f"puffer_{n}")
    return sorted(names)


def version() -> str | None:
    try:
        from importlib.metadata import version as v

        return v("pufferlib")
    except Exception:  # noqa: BLE001 - any metadata failure just means "not installed"
        return None


class PufferEnv:
    def __init__(self, game: str, num_envs: int, device: torch.device = torch.device("cpu")):
        _, environment = _ocean()
        name = game.removeprefix("puffer_")
        make = environment.env_creator(game)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = make(num_envs=num_envs)
        e = self._env
        if e.num_agents != num_envs:
            raise ValueError(f"{game} has {e.num_agents // num_envs} agents per env; only single-agent games are supported")
        space = e.single_action_space
        if not hasattr(space, "n"):
            raise ValueError(f"{game} has a {type(space).__name__} action space; only discrete games are supported")
        self.num_envs = num_envs
        self.device = device
        init = inspect.signature(type(e).__init__).parameters
        frameskip = int(getattr(e, "frameskip", init["frameskip"].default if "frameskip" in init else 1))
        kwargs = {k: p.default for k, p in init.items() if k not in ("self", "buf", "num_envs") and p.default is not inspect.Parameter.empty}
        self.spec = EnvSpec(
            game=game,
            family="puffer",
            obs_shape=tuple(e.single_observation_space.shape),
            obs_dtype=torch.from_numpy(np.zeros(0, e.observations.dtype)).dtype,
            num_actions=int(space.n),
            frameskip=frameskip,
            protocol={
                "backend": f"pufferlib {version()} ocean/{name} (C, in-process)",
                "constructor": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
                "frameskip": frameskip,
                "sticky_actions": 0.0,
                "action_set": f"native ({int(space.n)} actions)",
                "life_loss": "none (episode = full game)",
                "reward_clipping": "none in env (learner's choice)",
                "episode_cap": "game's own",
                "final_obs": "unavailable (C auto-reset): equals the reset observation",
            },
        )
        # Zero-copy views over the buffers the C code writes into.
        self._obs = torch.from_numpy(e.observations)
        self._rew = torch.from_numpy(e.rewards)
        self._term = torch.from_numpy(e.terminals.view(np.bool_))
        self._trunc = torch.from_numpy(e.truncations.view(np.bool_))


    def reset(self, seed: int) -> torch.Tensor:
        self._env.reset(seed=int(seed))
        return self._obs.to(self.device)

    def step(self, actions: torch.Tensor) -> EnvStep:
        self._env.step(actions.cpu().numpy())
        obs = self._obs.to(self.device)
        term = self._term.to(self.device)
        return EnvStep(
            obs=obs,
            reward=self._rew.to(self.device),
            terminated=term,
            truncated=self._trunc.to(self.device),
            done=term | self._trunc.to(self.device),
            final_obs=obs,
        )

    def raw_step_fn(self):
        """The backend's own step with a fixed action batch: what ``bench envs`` calls raw SPS."""
        env = self._env
        acts = np.random.default_rng(0).integers(0, self.spec.num_actions, (64, self.num_envs))
        i = 0

        def step():
            nonlocal i
            env.step(acts[i & 63])
            i += 1

        return step

    def close(self) -> None:
        self._env.close()
