"""MinAtar games (Young & Tian 2019, "MinAtar: An Atari-Inspired Testbed for Thorough and
Reproducible Reinforcement Learning Experiments", arXiv:1903.03176) through the ``minatar`` package.

``minatar:breakout``, ``minatar:asterix``, ``minatar:freeway``, ``minatar:seaquest`` and
``minatar:space_invaders``: 10x10 boards with one binary channel per kind of object (4 to 10
channels), 6 actions, frameskip 1.

The protocol is MinAtar's own defaults, the setting of the paper's DQN / AC(lambda) baselines
(``examples/dqn.py``) and of "Revisiting Rainbow" (Obando-Ceron & Castro 2021):

* sticky actions with p = 0.1 (``minatar.Environment(sticky_action_prob=0.1)``): at each step,
  with probability 0.1 the previous executed action is repeated instead of the chosen one. The
  draw comes from the env's own RandomState, the one that also drives the game, and the previous
  action is *not* cleared by ``reset()`` (as in minatar: an episode's first step may repeat the
  last action of the one before); a seeded reset starts from action 0, as a fresh Environment;
* difficulty ramping on (asterix, seaquest, space_invaders speed up as an episode goes on);
* the full action set of 6 (``n l u r d f``), as ``Environment.num_actions()`` and the reference
  DQN use; the games' minimal sets (breakout: 3 actions) are recorded in the protocol card;
* no lives: one loss ends the game, so an episode is a full game and returns are game scores;
* rewards unclipped (clipping is the learner's);
* an episode cap of ``MAX_EPISODE_STEPS = 27_000`` env steps, reported as a *truncation*
  (bootstrap from ``final_obs``). Neither reference caps episodes (MinAtar's DQN loops until the
  game ends; Revisiting Rainbow sets Dopamine's ``max_steps_per_episode`` to 1e8), but breakout
  and space_invaders refill their bricks / aliens, so a player that never loses would never
  finish an episode, and the harness could never report its return. 27,000 is the Atari cap in
  agent decisions (108K frames at frameskip 4) and the harness's evaluation step cap, so a
  greedy evaluation always sees its episodes end. Freeway ends itself after 2,500 steps.

Observations are ``[N, C, 10, 10]`` bool, channels-first (minatar's ``state()`` is ``[10, 10,
C]``); agents cast (``agents.nets`` maps bool to 0./1.).

Speed: every game steps in Python, one ``minatar.Environment`` per env. The adapter loops over
the envs once per step (act, then ``state()`` copied into a preallocated ``[N, 10, 10, C]``
buffer), and does everything else batched: the step counters, the cap, the done mask, and one
transposing copy into the channels-first buffer that the returned tensors view (zero-copy). Only
finished envs take a second pass (final observation, reset). ``raw_step_fn`` is that batched
core with pre-drawn actions; ``bench envs`` compares the harness against it.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import EnvSpec, EnvStep

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
STICKY_ACTION_PROB = 0.1  # minatar.Environment's default (Young & Tian 2019)
MAX_EPISODE_STEPS = 27_000  # truncation cap: see the module docstring
NUM_ACTIONS = 6  # minatar.Environment.num_actions(): the full set n, l, u, r, d, f


def games() -> list[str]:
    """The five MinAtar games, e.g. ``minatar:breakout`` (a fixed list: checking a name never
    imports minatar, which pulls in matplotlib and seaborn for its renderer)."""
    return [f"minatar:{g}" for g in GAMES]


def version() -> str | None:
    try:
        from importlib.metadata import version as v

        return v("minatar")
    except Exception:  # noqa: BLE001 - any metadata failure just means "not installed"
        return None


def env_seeds(seed: int, num_envs: int) -> list[int]:
    """The RandomState seed of each env for run seed ``seed``: distinct per env, and unrelated
    across run seeds (``seed + i`` would make env 1 of seed 0 replay env 0 of seed 1)."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(num_envs, np.uint32)]


VIDEO_SCALE = 16  # --capture-video: a board cell becomes 16x16 pixels (a 160x160 clip)
VIDEO_FPS = 20.0  # minatar's Environment.display_state(time=50): 50 ms a frame


def palette(num_channels: int) -> np.ndarray:
    """``[C + 1, 3]`` uint8: MinAtar's own colours (``minatar/gui.py``, ``display_state``): black for
    an empty cell, then ``seaborn.color_palette("cubehelix", C)``, channel c drawn in colour c + 1.
    That palette samples matplotlib's ``cubehelix`` map at C interior points, which is what this
    computes, without importing seaborn (tests/test_video.py checks the two agree)."""
    import matplotlib

    cols = matplotlib.colormaps["cubehelix"](np.linspace(0, 1, num_channels + 2)[1:-1])[:, :3]  # [C, 3]
    return np.round(np.concatenate([np.zeros((1, 3)), cols]) * 255).astype(np.uint8)


def render_board(board: np.ndarray, colours: np.ndarray, scale: int = VIDEO_SCALE) -> np.ndarray:
    """``[C, 10, 10]`` bool board -> ``[10 scale, 10 scale, 3]`` uint8 image, nearest-neighbour. A
    cell takes the colour of its highest set channel, as minatar draws it (``amax(state * (c + 1))``)."""
    c = board.shape[0]
    idx = (board * np.arange(1, c + 1).reshape(c, 1, 1)).max(0)  # [10, 10] 0: empty
    return colours[idx].repeat(scale, 0).repeat(scale, 1)


class _BoardRecorder:
    """Films env 0 from the observations alone: a MinAtar observation is the whole board."""

    fps = VIDEO_FPS

    def __init__(self, num_channels: int):
        self._colours = palette(num_channels)

    def frame(self, action: int, step: EnvStep) -> np.ndarray:
        # final_obs[0] is env 0's board after the step whether or not its episode ended (step()).
        return render_board(step.final_obs[0].cpu().numpy(), self._colours)

    def close(self) -> None:
        pass


class MinAtarEnv:
    def __init__(
        self,
        game: str,
        num_envs: int,
        device: torch.device = torch.device("cpu"),
        sticky_action_prob: float = STICKY_ACTION_PROB,
        difficulty_ramping: bool = True,
        max_episode_steps: int = MAX_EPISODE_STEPS,
    ):
        try:
            from minatar import Environment
        except ImportError:
            raise ImportError(f"{game} needs the minatar package: pip install minatar") from None
        name = game.removeprefix("minatar:")
        self._envs = [Environment(name, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping)
                      for _ in range(num_envs)]  # fmt: skip
        self.num_envs, self.device, self._cap = num_envs, device, max_episode_steps
        h, w, c = self._envs[0].state_shape()
        n = num_envs
        self._hwc = np.zeros((n, h, w, c), np.bool_)  # [N, 10, 10, C] what state() returns, per env
        self._obs = np.zeros((n, c, h, w), np.bool_)  # [N, C, 10, 10] next observation
        self._final = np.zeros((n, c, h, w), np.bool_)  # [N, C, 10, 10] last observation where done
        self._rew = np.zeros(n, np.float32)  # [N]
        self._term = np.zeros(n, np.bool_)  # [N]
        self._trunc = np.zeros(n, np.bool_)  # [N]
        self._done = np.zeros(n, np.bool_)  # [N]
        self._t = np.zeros(n, np.int64)  # [N] steps into the current episode
        # Zero-copy torch views of the buffers the step loop writes.
        self._views = {k: torch.from_numpy(getattr(self, k)) for k in ("_obs", "_final", "_rew", "_term", "_trunc",
                                                                      "_done")}  # fmt: skip
        self.spec = EnvSpec(
            game=game,
            family="minatar",
            obs_shape=(c, h, w),
            obs_dtype=torch.bool,
            num_actions=NUM_ACTIONS,
            frameskip=1,
            protocol={
                "name": "minatar",
                "backend": f"minatar {version()} (Python; one minatar.Environment per env, stepped in a loop)",
                "frameskip": 1,
                "sticky_actions": sticky_action_prob,
                "sticky_action_memory": "the previous action survives reset() (minatar); a seeded reset clears it",
                "difficulty_ramping": difficulty_ramping,
                "action_set": f"full ({NUM_ACTIONS} actions: n l u r d f; MinAtar's DQN reference)",
                "minimal_action_set": [int(a) for a in self._envs[0].minimal_action_set()],
                "life_loss": "none (no lives: episode = full game)",
                "reward_clipping": "none in env (learner's choice)",
                "episode_cap": f"{max_episode_steps} env steps, as truncation (references: none)",
                "observation": f"[{c}, {h}, {w}] bool, channels-first (minatar state() is [{h}, {w}, {c}])",
                "seeding": "env i: minatar.Environment.seed(SeedSequence(seed).generate_state(N)[i])",
                "final_obs": "true final observation",
            },
        )

    def reset(self, seed: int) -> torch.Tensor:
        for i, (e, s) in enumerate(zip(self._envs, env_seeds(seed, self.num_envs))):
            e.seed(s)  # one RandomState for the sticky draws and the game, as minatar.Environment.seed
            e.last_action = 0  # as a freshly constructed Environment
            e.reset()
            self._hwc[i] = e.state()
        self._t[:] = 0
        np.copyto(self._obs, self._hwc.transpose(0, 3, 1, 2))
        return self._views["_obs"].to(self.device)

    def _step_np(self, actions: list[int]) -> bool:
        """Step every env with ``actions`` (python ints) into the numpy buffers; return whether any
        episode ended (then ``_final`` holds the last observations and ``_done`` says where)."""
        hwc, rew, term = self._hwc, self._rew, self._term
        for i, e in enumerate(self._envs):
            rew[i], term[i] = e.act(actions[i])
            hwc[i] = e.state()
        self._t += 1
        np.greater_equal(self._t, self._cap, out=self._trunc)
        self._trunc &= ~term  # a game that ends on the cap's step terminated: no bootstrap
        np.logical_or(term, self._trunc, out=self._done)
        any_done = bool(self._done.any())
        if any_done:
            np.copyto(self._final, hwc.transpose(0, 3, 1, 2))
            for i in np.flatnonzero(self._done).tolist():
                e = self._envs[i]
                e.reset()
                hwc[i] = e.state()
            self._t[self._done] = 0
        np.copyto(self._obs, hwc.transpose(0, 3, 1, 2))
        return any_done

    def step(self, actions: torch.Tensor) -> EnvStep:
        any_done = self._step_np(actions.tolist())
        v, dev = self._views, self.device
        obs = v["_obs"].to(dev)
        return EnvStep(
            obs=obs,
            reward=v["_rew"].to(dev),
            terminated=v["_term"].to(dev),
            truncated=v["_trunc"].to(dev),
            done=v["_done"].to(dev),
            final_obs=v["_final"].to(dev) if any_done else obs,
        )

    def raw_step_fn(self):
        """The batched core with a fixed action batch: what ``bench envs`` calls raw SPS."""
        acts = np.random.default_rng(0).integers(0, NUM_ACTIONS, (64, self.num_envs)).tolist()
        i = 0

        def step():
            nonlocal i
            self._step_np(acts[i & 63])
            i += 1

        return step

    def recorder(self, seed: int) -> _BoardRecorder:
        """--capture-video (:class:`envs.base.Recorder`): env 0's board, in MinAtar's colours."""
        return _BoardRecorder(self.spec.obs_shape[0])

    def close(self) -> None:
        self._envs = []
