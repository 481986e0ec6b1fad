"""Rainbow (Hessel et al. 2018, "Rainbow: Combining Improvements in Deep Reinforcement Learning"),
vectorised over ``num_envs`` environments, with every component an ablation switch.

Components and their switches (all on by default, as in the paper):

* double Q-learning, ``--no-double`` (van Hasselt et al. 2016): the online net picks the
  bootstrap action ``argmax_a Q_online(s', a)``, the target net evaluates it; off, the target net
  does both (Mnih et al. 2015).
* dueling streams, ``--no-dueling`` (Wang et al. 2016): ``Q = V + A - mean A``, applied to the C51
  logits as in Hessel et al. 2018 (sec. 3).
* prioritised replay, ``--no-per`` (Schaul et al. 2016): proportional, sum tree, ``alpha = 0.5``,
  ``beta`` annealed linearly ``0.4 -> 1`` over the run (Hessel et al. 2018, Table 1: over the fraction
  of whichever budget ends first, env steps or training time, so under a time budget it depends on
  the machine's speed; ``AgentContext.budget_used``); priorities are
  the per-sample KL divergence between the projected target and the predicted distribution
  (Hessel et al. 2018, eq. 3 and "Prioritized replay"), or ``|TD error|`` without C51; new
  transitions enter at the maximum priority seen.
* n-step returns, ``--n-step N`` (Sutton 1988; ``n = 3`` in Hessel et al. 2018); ``1`` turns
  multi-step off. Windows stop per env at episode ends: ``terminated`` means no bootstrap,
  ``truncated`` bootstraps from the true final observation (:mod:`agents.replay`). A resumed
  run's envs restart mid-episode: its first act (``first`` all True, :mod:`agents.api`) cuts the
  windows there (:meth:`agents.replay.Replay.cut`: the last stored step, whose next observation
  is lost, is dropped and the step before it truncated), so no window joins two trajectories.
* distributional C51, ``--no-distributional`` (Bellemare et al. 2017): 51 atoms on
  ``[v_min, v_max] = [-10, 10]``, cross-entropy to the categorical projection
  (:func:`agents.heads.categorical_projection`); off, a scalar Q head trained with the Huber
  loss (``--q-loss mse`` for squared error), as in DQN (Mnih et al. 2015).
* noisy nets, ``--no-noisy`` (Fortunato et al. 2018): factorised Gaussian layers in both streams,
  ``sigma0 = 0.5``, exploration by noise alone (epsilon 0); new noise for every acting step and
  every gradient step (online and target nets). Off, epsilon-greedy decays linearly from 1 to 0.01
  over 250K frames (62.5K env steps), the schedule Hessel et al. 2018 give for agents without
  noisy nets.

Network: a torso (MLP for vectors; the NatureCNN or ImpalaCNN *convolutions* for images, taken
from :mod:`agents.nets` without their fully connected layer) feeding the dueling streams, each with
a hidden layer of ``head_hidden`` units (512 in the paper) and the output layer; all stream layers
noisy (the paper makes every linear layer noisy; its torso is convolutional, so an MLP torso here
stays plain). The target network is a hard copy every ``target_update`` gradient steps.

Vectorisation and sample reuse (the deviation that is the point of this file). The paper steps one
env and does one update of 32 samples every 4 steps: 8 gradient samples per env step. Here each
vector step adds ``num_envs * replay_ratio / batch_size`` updates of credit once ``learning_starts``
env steps have been collected; ``update()`` runs ``floor(credit)`` updates, so gradient samples per
env step (the ledger's ``reuse_ratio``) equals ``replay_ratio`` however the batch and env count are
chosen. The paper's setting is ``--num-envs 1 --batch-size 32 --replay-ratio 8``.

Defaults below are the paper's Atari values (Hessel et al. 2018, Table 1) with units converted to
env steps (4 frames each) and gradient steps:

* Adam, lr 6.25e-5, eps 1.5e-4; batch 32; gamma 0.99; replay ratio 8 (32 samples / 4 steps);
* learning starts after 80K frames = 20K env steps;
* target period 32K frames = 8K env steps = 2K gradient steps at the paper's 1 update / 4 steps;
  we count it in gradient steps so it does not change meaning when ``replay_ratio`` changes;
* replay capacity: the paper's 1M transitions would hold 28 GB of stacked 84x84 uint8 frames
  (this buffer stores each stacked observation once); the CPU default is 100K transitions
  (2.8 GB for Atari, 47 MB for a 118-float PufferLib observation); ``--buffer-size`` to change;
* gradient-norm clipping at 10 (CleanRL ``rainbow_atari.py``; the paper does not clip);
* rewards clipped to [-1, 1] for Atari (Mnih et al. 2015) in the learner, never in the env.

Evaluation (``explore=False``) uses the noise-free mean weights and epsilon 0.001 (Dopamine's
``epsilon_eval``), and never touches replay or schedules.

PRESETS: ``ale`` is the paper adapted to 8 envs (same replay ratio 8, so 2 updates of 32 per
vector step); ``puffer`` and ``gym`` are tuned for fast CPU learning, with the reasoning next to
them; ``minatar`` follows "Revisiting Rainbow" (Obando-Ceron & Castro 2021) on MinAtar's torso.

Speed (CPU). A vector step costs one acting forward on ``N`` observations plus
``N * replay_ratio / batch_size`` updates, each three forwards (online at s, online and target at
s') and a backward on ``batch_size`` samples; so the learner's cost per env step is set by
``replay_ratio`` and the network, and everything else (Python dispatch, sum-tree ops, noise draws)
is amortised over ``N`` envs and ``batch_size`` samples. The hot path keeps to tensor ops on
preallocated storage (no per-item loops); the only host syncs are one ``float()`` per ``update()``
for the reported loss and one ``any()`` per vector step when truncations need final observations.
The online net's parameters live in one flat tensor (:func:`agents.nets.flatten_parameters`) and
each net's noise in another (:func:`agents.heads.bind_noise`), so Adam, the gradient clip, the
zeroing and the noise draws are a few ops per update instead of a few per layer. What is left is
the Python dispatch of ~200 small ops per update. ``--compile`` (``auto`` by default: on for runs
of at least 2M env steps or 5 minutes, where ~20 s of compiling pays back) writes the whole
gradient step (noise draws, replay draw, loss, gradient, clip, Adam, priority update) as one pure
function and hands it to ``torch.compile`` as one graph (:mod:`agents.fused`), plus the acting
forward: on the 2-core CPU of our measurement that is 1.6x the env steps/s at the ``puffer``
preset (BTR: 1.4-1.7x; README, "Speed"). The eager step stays the reference: same maths, tested
to give the same updates (``tests/test_rainbow.py::test_fused_compiled_step_matches_eager``), but
inductor's fused kernels and random streams differ from eager in the last bits, so runs with and
without it are not bitwise comparable.
On a shared machine give torch one thread (``--threads 1``): intra-op threads competing with other
processes for the same cores made these small matmuls several times slower in our measurements.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agents.api import PRECISION_HELP, PRECISIONS, AgentContext, Param, opt
from agents.fused import FusedStep, resolve_compile
from agents.heads import QHead, bind_noise, categorical_projection, reset_noise
from agents.nets import ENCODERS, MLP, ConvTorso, encoder_kind, flatten_parameters, make_encoder
from agents.replay import Batch, Replay
from envs.base import EnvSpec, EnvStep


@dataclass(frozen=True)
class Config:
    # Vectorisation and reuse
    num_envs: int = opt(8, "parallel environments (the paper: 1)", ge=1)
    batch_size: int = opt(32, "transitions per gradient step (Hessel et al. 2018)", ge=1)
    replay_ratio: float = opt(8.0, "gradient samples per env step; paper: 32 every 4 steps = 8", gt=0)
    learning_starts: int = opt(20_000, "env steps before learning (80K frames, Hessel et al. 2018)", ge=0)
    buffer_size: int = opt(100_000, "replay capacity in transitions (paper 1M; CPU default, see docs)", ge=1)
    # Optimisation
    lr: float = opt(6.25e-5, "Adam step size (Hessel et al. 2018)", gt=0)
    adam_eps: float = opt(1.5e-4, "Adam epsilon (Hessel et al. 2018)", gt=0)
    max_grad_norm: float = opt(10.0, "global gradient-norm clip, 0 = off (CleanRL rainbow_atari)", ge=0)
    gamma: float = opt(0.99, "discount per env step", ge=0, le=1)
    target_update: int = opt(2_000, "gradient steps between target-net copies (32K frames in the paper)",
                             ge=1)  # fmt: skip
    # Components (each an ablation switch)
    double: bool = opt(True, "double Q-learning target (van Hasselt et al. 2016)")
    dueling: bool = opt(True, "dueling value/advantage streams (Wang et al. 2016)")
    per: bool = opt(True, "prioritised replay (Schaul et al. 2016); off = uniform")
    n_step: int = opt(3, "multi-step return length; 1 = one-step (Hessel et al. 2018: 3)", ge=1)
    distributional: bool = opt(True, "C51 distributional head (Bellemare et al. 2017); off = scalar Q")
    noisy: bool = opt(True, "noisy linear layers (Fortunato et al. 2018); off = epsilon-greedy")
    # Component settings
    per_alpha: float = opt(0.5, "priority exponent alpha (Hessel et al. 2018)", ge=0)
    per_beta0: float = opt(0.4, "initial importance-sampling exponent, annealed to 1 (Hessel et al. 2018)",
                           ge=0, le=1)  # fmt: skip
    atoms: int = opt(51, "C51 support size (Bellemare et al. 2017)", ge=2)
    v_min: float = opt(-10.0, "lowest return on the C51 support")
    v_max: float = opt(10.0, "highest return on the C51 support")
    q_loss: str = opt("huber", "loss without C51: huber (Mnih et al. 2015) or mse", choices=("huber", "mse"))
    noisy_sigma0: float = opt(0.5, "initial noise scale sigma0 (Fortunato et al. 2018, factorised)", ge=0)
    eps_start: float = opt(1.0, "epsilon-greedy start (only with --no-noisy)", ge=0, le=1)
    eps_end: float = opt(0.01, "epsilon-greedy floor (only with --no-noisy)", ge=0, le=1)
    eps_decay_steps: int = opt(62_500, "env steps of linear epsilon decay (250K frames)", ge=0)
    eval_epsilon: float = opt(0.001, "epsilon when acting with explore=False (Dopamine)", ge=0, le=1)
    # Rewards as the learner sees them (the env never clips)
    reward_clip: float = opt(1.0, "clip rewards to [-c, c] before storing; 0 = off (Mnih et al. 2015)", ge=0)
    reward_scale: float = opt(1.0, "multiply (clipped) rewards by this before storing", gt=0)
    # Network
    encoder: str = opt("auto", "torso: auto (mlp for vectors, minatar for images up to 16x16, nature for "
                       "larger), mlp, nature, impala, minatar", choices=ENCODERS)  # fmt: skip
    hidden: int = opt(512, "MLP torso width", ge=1)
    mlp_layers: int = opt(2, "MLP torso depth", ge=0)
    head_hidden: int = opt(512, "hidden units in each value/advantage stream; 0 = one layer", ge=0)
    # Speed
    compile: str = opt("auto", "torch.compile each gradient step into one graph (agents.fused) and the "
                       "acting forward: on, off, or auto (on for runs of >= 2M env steps or >= 5 min)",
                       choices=("auto", "on", "off"))  # fmt: skip
    precision: str = opt("fp32", PRECISION_HELP, choices=PRECISIONS)

    def __post_init__(self):
        # Single-field ranges are declared above and checked by bench.config before this runs.
        if self.distributional and not (self.atoms >= 2 and self.v_max > self.v_min):
            raise ValueError("C51 needs atoms >= 2 and v_max > v_min")


# What `bench tune` searches (agents.api.Param): the knobs the equal-compute comparison turns on,
# with ranges wide enough to hold every preset below and the paper's values.
SEARCH_SPACE: tuple[Param, ...] = (
    # 3e-5 (half the paper's 6.25e-5) to 3e-3 (3x the gym preset's 1e-3), log.
    Param("lr", 3e-5, 3e-3, log=True),
    # the reuse knob: 1 to 16 gradient samples per env step (paper and gym preset: 8; puffer: 4), log.
    Param("replay_ratio", 1.0, 16.0, log=True),
    # the horizon knob: 1-step (DQN) to 10 (the paper: 3; longer n helps short budgets).
    Param("n_step", 1, 10, kind="int"),
    # target copies every 100 (gym preset) to 8000 (4x the paper's 2000) updates, log.
    Param("target_update", 100, 8000, log=True, kind="int"),
    # exploration: noisy nets' initial scale, 0.1 to 1.0 around Fortunato et al.'s 0.5.
    Param("noisy_sigma0", 0.1, 1.0),
    # network width of the MLP torso: the presets' 64 / 128 and the default 512, as powers of two.
    Param("hidden", choices=(64, 128, 256, 512)),
)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Atari agent on 8 envs: replay ratio 8 as in the paper -> 2 updates per vector step.
    "ale": {"num_envs": 8},
    # PufferLib Ocean (breakout: 118 floats, bricks worth 1-7 points). 64 envs and batch 256 at
    # replay ratio 4 give one update per vector step, which amortises the learner's per-op overhead
    # over 64 env steps on CPU. MLP 2x128 torso, single-layer noisy dueling streams: 84K parameters
    # (58K weights in use per forward). lr 5e-4 (8x the paper's, usual for MLP Q-learners on vector
    # states; the paper's value is tuned for conv nets on pixels) and a target copy every 250
    # updates (16K env steps; 1000 learned visibly slower in 3-minute trials). Rewards are clipped
    # to 1 as for Atari: every brick counts, and the C51 support [-10, 10] covers the discounted
    # returns.
    "puffer": {
        "num_envs": 64, "batch_size": 256, "replay_ratio": 4.0, "learning_starts": 10_000,
        "buffer_size": 1_000_000, "lr": 5e-4, "target_update": 250,
        "hidden": 128, "head_hidden": 0,
    },  # fmt: skip
    # gymnasium classic control, tuned on CartPole (+1 per step, 500-step cap): a small net (64 units),
    # a small recent buffer, 4 envs, a replay ratio of 8 (the paper's), lr 1e-3 and a target copy
    # every 100 updates (as in small-control Rainbow/DQN setups, e.g. Curt-Park's
    # rainbow-is-all-you-need); rewards scaled by 0.1 so discounted returns (<= 10 at gamma 0.99)
    # sit inside the C51 support [-10, 10] without clipping. Solves (mean >= 475) in ~70-150K steps.
    "gym": {
        "num_envs": 4, "batch_size": 64, "replay_ratio": 8.0, "learning_starts": 1_000,
        "buffer_size": 50_000, "lr": 1e-3, "target_update": 100, "reward_clip": 0.0,
        "reward_scale": 0.1, "hidden": 64, "head_hidden": 64, "eps_decay_steps": 20_000,
    },  # fmt: skip
    # MinAtar (10x10 boards): "Revisiting Rainbow" (Obando-Ceron & Castro 2021), its MinAtar
    # configs (JohanSamir/revisiting_rainbow, Configs/rainbow_breakout.gin), on MinAtar's torso
    # (encoder auto: one 3x3 conv, 16 channels) with all Rainbow components on.
    "minatar": {
        "num_envs": 16,  # ours: vectorised for CPU (the paper: 1)
        "batch_size": 64,  # ours, 2x the paper's 32: half the updates, same samples, for CPU
        "replay_ratio": 8.0,  # Obando-Ceron & Castro 2021: batch 32 every 4 env steps
        "learning_starts": 1_000,  # Obando-Ceron & Castro 2021: min_replay_history 1000
        "buffer_size": 100_000,  # Obando-Ceron & Castro 2021: replay_capacity 100000
        "lr": 1e-4,  # Obando-Ceron & Castro 2021: Adam 1e-4
        "adam_eps": 3.125e-4,  # Obando-Ceron & Castro 2021
        "gamma": 0.99,  # Obando-Ceron & Castro 2021
        "n_step": 3,  # Obando-Ceron & Castro 2021: update_horizon 3
        "target_update": 125,  # Obando-Ceron & Castro 2021: every 1000 env steps = 125 updates of 64 here
        "v_min": -100.0, "v_max": 100.0,  # Obando-Ceron & Castro 2021: vmax 100 (clipped rewards, gamma 0.99)
        "reward_clip": 1.0,  # Dopamine's agents clip rewards to [-1, 1], on MinAtar too
        "encoder": "minatar",  # Young & Tian 2019's torso (Obando-Ceron & Castro 2021: the same conv)
        "head_hidden": 128,  # Young & Tian 2019: the 128-unit layer, here in each stream
    },  # fmt: skip
}


def inactive_options(cfg: Config, spec: EnvSpec) -> list[str]:
    """The options that change nothing with ``cfg`` on ``spec``'s observations (the harness warns
    and records them): the MLP's sizes under a conv torso, whose FC layer is not used (the
    streams' hidden layers are ``head_hidden``). ValueError where the encoder cannot take them."""
    return [] if encoder_kind(cfg.encoder, spec.obs_shape) == "mlp" else ["hidden", "mlp_layers"]


class QNetwork(nn.Module):
    """obs [B, *obs_shape] -> [B, A, K]: C51 logits (K = atoms) or Q-values (K = 1)."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__()
        kind = encoder_kind(cfg.encoder, spec.obs_shape)  # ValueError where it cannot take the obs
        if kind == "mlp":
            self.torso: nn.Module = MLP(spec.obs_shape, cfg.hidden, cfg.mlp_layers)
        else:
            self.torso = ConvTorso(make_encoder(kind, spec.obs_shape, cfg.hidden))
        atoms = cfg.atoms if cfg.distributional else 1
        head = dict(hidden=cfg.head_hidden, dueling=cfg.dueling, noisy=cfg.noisy, sigma0=cfg.noisy_sigma0)
        self.head = QHead(self.torso.out_dim, spec.num_actions, atoms, **head)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs)).float()  # [B, A, K]; float32 under --precision bf16


def q_values(out: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    """Network output [B, A, K] -> Q [B, A]: the mean of the C51 distribution, or the scalar."""
    if support is None:
        return out.squeeze(-1)
    return (out.softmax(-1) * support).sum(-1)


def bootstrap_actions(
    next_online: torch.Tensor | None, next_target: torch.Tensor, support: torch.Tensor | None
) -> torch.Tensor:
    """a* [B] for the target: argmax of the online net's Q(s') when double Q-learning
    (``next_online`` given; van Hasselt et al. 2016), else of the target net's."""
    return q_values(next_online if next_online is not None else next_target, support).argmax(-1)


def c51_loss(
    logits: torch.Tensor,
    next_target: torch.Tensor,
    a_star: torch.Tensor,
    reward: torch.Tensor,
    discount: torch.Tensor,
    support: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C51 loss for the taken actions' ``logits`` [B, K] against the target net's logits at s'
    ``next_target`` [B, A, K] and bootstrap actions ``a_star`` [B]. Returns per-sample
    cross-entropy to the projected target [B] (Bellemare et al. 2017), the KL divergence used as
    priority [B] (Hessel et al. 2018: same gradient, zero when the prediction matches), and the
    predicted Q of the taken action [B] (a diagnostic)."""
    b = torch.arange(logits.shape[0], device=logits.device)
    with torch.no_grad():
        p_next = next_target[b, a_star].softmax(-1)  # [B, K]
        m = categorical_projection(p_next, reward, discount, support)  # [B, K]
    logp = logits.log_softmax(-1)  # [B, K]
    ce = -(m * logp).sum(-1)  # [B]
    kl = (torch.special.xlogy(m, m).sum(-1) + ce).detach()  # [B] = CE - H(m) >= 0
    q = (logp.detach().exp() * support).sum(-1)  # [B]
    return ce, kl, q


def q_loss(
    q: torch.Tensor,
    next_target: torch.Tensor,
    a_star: torch.Tensor,
    reward: torch.Tensor,
    discount: torch.Tensor,
    kind: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scalar TD loss for the taken actions' ``q`` [B] against the target net's Q at s'
    ``next_target`` [B, A] and bootstrap actions ``a_star`` [B]. Returns per-sample loss [B],
    ``|TD error|`` [B] (the priority) and ``q`` detached [B]."""
    b = torch.arange(q.shape[0], device=q.device)
    target = (reward + discount * next_target[b, a_star]).detach()  # [B]
    loss = F.smooth_l1_loss(q, target, reduction="none") if kind == "huber" else 0.5 * (q - target) ** 2
    return loss, (q - target).abs().detach(), q.detach()


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.ctx, self.spec, self.device, self.n = cfg, ctx, ctx.spec, ctx.device, ctx.num_envs
        self.online = QNetwork(ctx.spec, cfg).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self._noise_online, self._noise_target = bind_noise(self.online), bind_noise(self.target)
        self.flat = flatten_parameters(self.online)  # [P] all online parameters; .grad [P]
        self.opt = torch.optim.Adam([self.flat], lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        # [K] C51 atoms z_i; None for the scalar head
        support = torch.linspace(cfg.v_min, cfg.v_max, cfg.atoms, device=self.device)
        self.support = support if cfg.distributional else None
        self.replay = Replay(
            cfg.buffer_size, self.n, ctx.spec.obs_shape, ctx.spec.obs_dtype, n_step=cfg.n_step,
            gamma=cfg.gamma, prioritized=cfg.per, alpha=cfg.per_alpha, device=self.device,
        )  # fmt: skip
        self.updates_per_step = self.n * cfg.replay_ratio / cfg.batch_size  # gradient steps of credit
        self.env_steps = 0
        self.grad_steps = 0
        self.credit = 0.0
        self._action: torch.Tensor | None = None
        # The fused, compiled step (agents.fused) where compiling pays back; the eager step below
        # is the reference it is tested against, and what the meter's FLOP count runs.
        self.compiled = resolve_compile(cfg.compile, ctx.total_env_steps, ctx.time_budget_s)
        self._greedy = torch.compile(self._greedy_eager) if self.compiled else self._greedy_eager
        self._step = FusedStep(
            self.online, self.flat, self.opt, self._sample_loss_eager, self.replay.update_priorities,
            [self._noise_online, self._noise_target], cfg.max_grad_norm, compile=self.compiled,
        )  # fmt: skip

    # --- schedules: epsilon over env steps (the paper's), beta over the run's budget ----------
    def epsilon(self) -> float:
        if self.cfg.noisy:
            return 0.0
        frac = min(1.0, self.env_steps / max(1, self.cfg.eps_decay_steps))
        return self.cfg.eps_start + frac * (self.cfg.eps_end - self.cfg.eps_start)

    def beta(self) -> float:
        """IS exponent, linear in the fraction of the run's budget spent (steps or time)."""
        return self.cfg.per_beta0 + self.ctx.budget_used(self.env_steps) * (1.0 - self.cfg.per_beta0)

    # --- acting ---------------------------------------------------------------------------------
    def _greedy_eager(self, obs: torch.Tensor) -> torch.Tensor:
        return q_values(self.online(obs), self.support).argmax(-1)  # [N]

    def _greedy_or_random(self, obs: torch.Tensor, eps: float) -> torch.Tensor:
        action = self._greedy(obs)  # [N]
        if eps > 0:
            n = obs.shape[0]
            explore = torch.rand(n, device=self.device) < eps  # [N]
            random = torch.randint(self.spec.num_actions, (n,), device=self.device)  # [N]
            action = torch.where(explore, random, action)
        return action

    def act(self, obs: torch.Tensor, explore: bool = True, first: torch.Tensor | None = None) -> torch.Tensor:
        if not explore:
            self.online.eval()  # noisy layers use their mean weights
            with torch.inference_mode():
                action = self._greedy_or_random(obs, self.cfg.eval_epsilon)
            self.online.train()
            return action
        if first is not None:  # the envs were reset without an episode end (agents.api)
            if not bool(first.all()):
                raise ValueError("in training, act's first must be all True (the envs were reset) or None")
            self.replay.cut()
        reset_noise(self._noise_online)
        with torch.inference_mode():
            action = self._greedy_or_random(obs, self.epsilon())
        self.replay.store_obs(obs)
        self._action = action
        return action

    def observe(self, step: EnvStep) -> None:
        reward = step.reward
        if self.cfg.reward_clip > 0:
            reward = reward.clamp(-self.cfg.reward_clip, self.cfg.reward_clip)
        reward = reward * self.cfg.reward_scale
        self.replay.store_outcome(self._action, reward, step.terminated, step.truncated, step.final_obs)
        self.env_steps += self.n
        if self.env_steps >= self.cfg.learning_starts and self.replay.num_samplable > 0:
            self.credit += self.updates_per_step

    # --- learning -------------------------------------------------------------------------------
    def bootstrap(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-net output at s' [B, A, K] and the bootstrap action a* [B]: chosen by the
        online net under double Q-learning, by the target net otherwise. Uses the current noise."""
        with torch.no_grad():
            next_target = self.target(next_obs)  # [B, A, K]
            next_online = self.online(next_obs) if self.cfg.double else None  # [B, A, K]
            return next_target, bootstrap_actions(next_online, next_target, self.support)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(importance-weighted mean loss, per-sample priority [B], predicted Q of the taken
        actions [B])."""
        out = self.online(batch.obs)  # [B, A, K]
        next_target, a_star = self.bootstrap(batch.next_obs)
        taken = out[torch.arange(out.shape[0], device=self.device), batch.action]  # [B, K]
        if self.support is not None:
            per_sample, priority, q = c51_loss(
                taken, next_target, a_star, batch.reward, batch.discount, self.support
            )
        else:
            q_taken, q_next = taken.squeeze(-1), next_target.squeeze(-1)  # [B], [B, A]
            kind = self.cfg.q_loss
            per_sample, priority, q = q_loss(q_taken, q_next, a_star, batch.reward, batch.discount, kind)
        return (batch.weight * per_sample).mean(), priority, q  # IS-weighted (Schaul et al. 2016)

    def _sample_loss_eager(self, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Draw a batch and compute :meth:`loss` on it: (loss, priority [B], q [B], slot ids [B]).
        ``beta`` is a 0-d tensor so a compiled graph does not specialise on its value."""
        batch = self.replay.sample(self.cfg.batch_size, beta)
        return *self.loss(batch), batch.idx

    def _learn_step(self, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        beta_t = torch.tensor(beta, dtype=torch.float64, device=self.device)
        loss, q = self._step(beta_t)  # noise, draw, loss, gradient, clip, Adam, priorities
        self.grad_steps += 1
        if self.grad_steps % cfg.target_update == 0:
            self.target.load_state_dict(self.online.state_dict())
        return loss.detach(), q.mean()

    def update(self) -> dict[str, Any] | None:
        steps = int(self.credit)
        if steps == 0:
            return None
        self.credit -= steps
        # progress: what beta anneals over, read with it
        beta, progress = self.beta(), self.ctx.budget_used(self.env_steps)
        loss = q_mean = torch.zeros((), device=self.device)
        for _ in range(steps):
            step_loss, step_q = self._learn_step(beta)
            loss, q_mean = loss + step_loss, q_mean + step_q
        metrics = {
            "grad_steps": steps,
            "grad_samples": steps * self.cfg.batch_size,
            "loss": float(loss) / steps,  # one host sync per update() call
            "q_mean": float(q_mean) / steps,  # predicted Q of the sampled actions
            "beta": beta if self.cfg.per else 0.0,
            "epsilon": self.epsilon(),
            "progress": progress,
        }
        return metrics

    # --- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "opt": self.opt.state_dict(),
            "replay": self.replay.state_dict(),
            "counters": {"env_steps": self.env_steps, "grad_steps": self.grad_steps, "credit": self.credit},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        # Optimizer.load_state_dict keeps the given tensors when dtype and device match: copy them
        # so a state taken from a live agent is not shared with it.
        self.opt.load_state_dict(copy.deepcopy(state["opt"]))
        self.replay.load_state_dict(state["replay"])
        c = state["counters"]
        self.env_steps, self.grad_steps = int(c["env_steps"]), int(c["grad_steps"])
        self.credit = float(c["credit"])
