"""PufferLib Ocean environments (C, vectorised in-process). The only file that imports pufferlib.

The Ocean C envs write observations, rewards, terminals and truncations into numpy buffers that
they own; this adapter wraps those buffers once as zero-copy torch views, so a step costs one C
call plus a few vector ops. Ocean envs reset themselves inside C when an episode ends, so the
true final observation of a finished episode is not available: ``final_obs`` equals the reset
observation (recorded in the protocol card). The games we accept end by termination, where no
bootstrap is needed, so this costs nothing there.

Not every Ocean game of the PufferLib 3.0 build reports its episodes in a way a harness can count:
:data:`REFUSED` lists the single-agent discrete games we refuse and why (read from the C sources;
the symptoms that can be observed are checked in ``tests/test_envs.py``). Multi-agent games and
continuous or multi-discrete action spaces are refused when the env is built.

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


# Paths are under pufferlib/ocean/ of the 3.0 build. PufferLib's vector code never passes
# truncations to the C envs (env_binding.h: the line is commented out) and no game writes them, so
# a time limit either counts as a terminal (accepted games: pacman and tetris at 10,000 steps/ticks, where
# the learner then does not bootstrap, a small bias at the cap) or resets the game silently (refused).
REFUSED: dict[str, str] = {
    "puffer_enduro": "episodes never end: a failed day sets the terminal flag and reset_round() clears it in "
                     "the same step (enduro.h), so no return can be counted",
    "puffer_go": "episodes never end: both endings call c_reset(), which clears the terminal flag (go.h)",
    "puffer_tower_climb": "episodes never end: the only write to terminals sets 0, and the 60-step limit resets "
                          "silently (tower_climb.h)",
    "puffer_blastar": "the terminal flag is never cleared after the first game over (blastar.h writes only 1), "
                      "so every later step would count as an episode",
    "puffer_grid": "time-outs (2*w*h steps) reset the maze without a terminal or truncation flag (grid.h), so "
                   "timed-out episodes merge into the next one",
    "puffer_tripletriad": "the 30-step limit resets the game without a terminal or truncation flag "
                          "(tripletriad.h), so timed-out episodes merge into the next one",
    "puffer_cartpole": "the 200-step limit resets without a terminal or truncation flag (cartpole.h computes "
                       "truncated but writes only terminals), so successful episodes merge; use gym:CartPole-v1",
    "puffer_checkers": "not reproducible: the scripted opponent calls srand(time(NULL)) on every move "
                       "(checkers.h), and its move overwrites the agent's reward",
}
# Multi-agent games (several agents per env: the harness counts one agent per env row and one episode
# per env) and non-discrete action spaces; PufferEnv also checks both when it builds an env.
_MULTI = {"snake": 256, "school": 1024, "trash_pickup": 3, "rware": 4, "target": 8, "moba": 5, "convert": 1024,
          "cpr": 8, "terraform": 8, "nmmo3": 1024}  # fmt: skip
REFUSED.update({f"puffer_{g}": f"multi-agent ({n} agents per env by default); the harness runs single-agent games"
                for g, n in _MULTI.items()})  # fmt: skip
REFUSED.update({
    "puffer_drone": "continuous action space (Box(4)); the agents here are discrete-action",
    "puffer_boids": "multi-discrete action space (MultiDiscrete([5, 5])); the agents here are single-discrete",
    "puffer_tactical": "not a working env in this build (its reset() calls the C setup with the wrong arguments)",
    "puffer_gpudrive": "multi-agent driving (num_agents=512 cars shared across maps) that reads map binaries "
                       "from resources/gpudrive/, which the build does not ship",
    "puffer_template": "PufferLib's template for writing a new env, not a game",
})


# --capture-video: every Ocean game of this build draws only into a raylib window (c_render opens
# one with InitWindow; the binding's vec_render returns None), and none renders to an array.
VIDEO_REFUSAL = ("PufferLib Ocean envs render only into a raylib window (c_render; vec_render returns no "
                 "array), so there are no frames to record")


def refusal(game: str) -> str | None:
    """Why ``game`` is refused (None: it is accepted or unknown)."""
    return REFUSED.get(game)


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
    def __init__(self, game: str, num_envs: int, device: torch.device = torch.device("cpu"), allow_refused=False):
        if game in REFUSED and not allow_refused:
            raise ValueError(f"{game} is refused: {REFUSED[game]}")
        _, environment = _ocean()
        name = game.removeprefix("puffer_")
        make = environment.env_creator(game)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = make(num_envs=num_envs)
        e = self._env
        # Returns are summed by the harness, so PufferLib's periodic log is never read; pushing its
        # interval out of reach also skips connect4.py's log read, which raises KeyError
        # 'episode_length' whenever no game ended since the last read.
        if hasattr(e, "report_interval"):
            e.report_interval = 1 << 62
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
