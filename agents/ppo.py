"""Proximal Policy Optimisation (Schulman et al. 2017, arXiv:1707.06347), with switches for the
on-/off-policy experiments this suite runs.

Read top to bottom: the config and its presets, the pure sampling / loss functions, the network,
then the agent (act -> observe -> update). Shared pieces live elsewhere: GAE / V-trace in
:mod:`agents.returns`, encoders in :mod:`agents.nets`.

Implementation details (numbered as in Huang et al. 2022, "The 37 implementation details of
PPO", ICLR blog track, which CleanRL's ``ppo_atari.py`` follows):

* vectorised rollouts of ``segment_length`` T steps per env, then ``epochs`` passes over the
  batch in ``minibatches`` shuffled minibatches (details 1, 6); transitions are shuffled
  individually, except with an LSTM core or prioritised sampling, which draw whole env segments
  of T steps (PufferLib 3.0 ``pufferl.py``);
* GAE(gamma, lambda) (detail 5), bootstrapped from V(s_T) at the segment end and from
  V(final_obs) where an episode was truncated (Pardo et al. 2018, arXiv:1712.00378; CleanRL treats
  truncation as termination); terminated steps do not bootstrap;
* per-minibatch advantage normalisation (7), clipped surrogate (8), clipped value loss (9, with
  its own coefficient as in PufferLib; CleanRL reuses ``clip_coef``), entropy bonus (10), global
  gradient-norm clipping (11), orthogonal init with gains sqrt(2) / 0.01 / 1 (2, in
  :mod:`agents.nets` and below), Adam (3), learning rate annealed to 0 (4) over the harness's
  ``total_env_steps`` (linear as CleanRL or cosine as PufferLib; constant for time-only budgets,
  whose length the agent cannot know);
* one encoder shared by policy and value heads (CleanRL's Atari nets; CleanRL's classic-control
  script uses two separate tanh MLPs, we keep the shared ReLU MLP everywhere);
* reward clipping in the learner, ``clamp(r, -c, c)``: on Atari's integer rewards c = 1 equals
  CleanRL's ``sign(r)``; it is also PufferLib's ``clamp(r, -1, 1)``;
* optional LSTM core (CleanRL ``ppo_atari_lstm.py``): state zeroed where an episode ended, the
  state at each segment's start stored, back-propagation through the whole segment;
* optional observation normalisation by running mean / variance, clipped to [-10, 10] (detail 4
  of the continuous-action list; SB3's ``VecNormalize``), updated from each rollout after the
  update so a rollout is acted and trained with one normaliser;
* actions sampled by the Gumbel-max trick (exact; cheaper than ``torch.multinomial``).

Variants (each a config field, so each is recorded in the run's config.json):

* ``clip_coef 0``: unclipped surrogate; ``clip_frac`` then reports the fraction of samples with
  |ratio - 1| > 0.2 (the PPO paper's epsilon), i.e. what clipping would have touched;
* ``kl_coef``: loss += C * KL(pi_old || pi_new), exact over the discrete action set (PPO paper
  section 4, fixed coefficient); ``kl`` is logged whether or not it is penalised;
* ``munchausen_alpha/tau/l0``: Munchausen bonus alpha * clip(tau * log pi(a|s), l0, 0)
  (Vieillard et al. 2020, arXiv:2007.14430, eq. 4; their alpha 0.9, tau 0.03, l0 -1). Mode
  ``behaviour`` adds it to rewards before GAE from the acting policy's log-probabilities; mode
  ``current`` recomputes it inside the loss from the policy being trained and adds it to that
  sample's advantage (the immediate term only: later terms of the GAE sum belong to other
  samples; the value targets then carry no bonus);
* ``prio_alpha/prio_beta0``: PufferLib 3.0's prioritised segments: P(segment) proportional to
  (sum_t |A_t|)^alpha, importance weights (M * P)^-beta multiply the normalised advantages;
  beta anneals from beta0 to 1 over ``total_env_steps`` and stays at beta0 for time-only budgets
  (PufferLib's schedule ends at beta0 + (1 - beta0) * alpha; we follow Schaul et al. 2016);
* ``replay_factor K``: keep the last K rollouts and train on all of them. At the start of each
  update the stored rollouts are re-evaluated with the current parameters theta_0 (values,
  logits); advantages and value targets become V-trace (Espeholt et al. 2018) with
  rho = min(pi_theta_0 / mu, rho_bar) and c = min(pi_theta_0 / mu, c_bar), mu the behaviour
  policy. The surrogate's ratio is pi_theta / pi_theta_0, a trust region around the policy the
  update starts from (as GePPO, Queeney et al. 2021). K = 1 is plain PPO: no correction at all
  (PufferLib instead clips its first-use ratio 1 to rho_bar, shrinking every delta).

Deviations from PufferLib 3.0's tuned ``puffer_breakout`` (``config/ocean/breakout.ini``; the
``puffer`` preset marks every value as PufferLib's or ours):

* Adam instead of its default Muon optimizer, so the learning rate (1e-2) and the number of
  minibatches (8 of 8192, not 2 of 32768) are ours;
* a feed-forward MLP instead of its 128-unit LSTM (``--lstm-hidden 128`` adds one), with running
  observation normalisation: the Ocean env reports ball velocities as ~0.007, which an MLP does
  not see unscaled;
* gamma 0.99, lambda 0.95, entropy 0.01 (CleanRL's) instead of its 0.9997 / 0.75 / 5.7e-4. With
  its values, with raw observations, or with Adam at lr <= 3e-3, every 3M-step run we made
  settled on "always run to one wall" (score ~6, the ball launches towards a bottom corner);
  the preset learns to track the ball instead (score ~20 at 2.6M env steps, ~460 after 40M);
* advantages are computed once per update rather than before every minibatch, and the last step
  of a segment bootstraps from V(s_T) (PufferLib gives it zero advantage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.api import AgentContext, opt
from agents.nets import layer_init, make_encoder
from agents.returns import gae
from envs.base import EnvStep

CLIP_FRAC_REF = 0.2  # |ratio - 1| threshold clip_frac reports when clipping is off (PPO paper's eps)


@dataclass(frozen=True)
class Config:
    # Defaults: CleanRL ppo_atari.py (Huang et al. 2022) for ALE games.
    num_envs: int = opt(8, "parallel environments")
    segment_length: int = opt(128, "env steps per env per rollout: T, the on-policy bootstrap horizon")
    epochs: int = opt(4, "passes over the batch per update")
    minibatches: int = opt(4, "minibatches per epoch")
    lr: float = opt(2.5e-4, "Adam step size at the start of training")
    lr_schedule: str = opt("linear", "linear | cosine | constant decay to 0 over the env-step budget")
    adam_beta1: float = opt(0.9, "Adam beta1")
    adam_beta2: float = opt(0.999, "Adam beta2")
    adam_eps: float = opt(1e-5, "Adam epsilon (CleanRL: 1e-5, not torch's 1e-8)")
    gamma: float = opt(0.99, "discount")
    gae_lambda: float = opt(0.95, "GAE lambda")
    clip_coef: float = opt(0.1, "surrogate clipping epsilon; 0 turns clipping off")
    vf_clip_coef: float = opt(0.1, "value clipping around the old value; 0 turns it off")
    ent_coef: float = opt(0.01, "entropy bonus coefficient")
    vf_coef: float = opt(0.5, "value loss coefficient")
    max_grad_norm: float = opt(0.5, "global gradient-norm clip")
    norm_adv: bool = opt(True, "normalise advantages per minibatch")
    reward_clip: float = opt(1.0, "clamp rewards to [-c, c] in the learner; 0 = raw rewards")
    norm_obs: bool = opt(False, "normalise float observations by running mean / std (updated per rollout)")
    encoder: str = opt("auto", "auto | mlp | nature | impala (auto: MLP for vectors, NatureCNN for images)")
    hidden: int = opt(512, "encoder output width (NatureCNN's 512 FC; MLP hidden width)")
    mlp_layers: int = opt(2, "hidden layers of the MLP encoder")
    lstm_hidden: int = opt(0, "LSTM core width between encoder and heads; 0 = feed-forward")
    greedy_eval: bool = opt(False, "evaluate with argmax actions instead of sampling the policy")
    kl_coef: float = opt(0.0, "coefficient of an explicit KL(old || new) penalty; 0 = off")
    munchausen_alpha: float = opt(0.0, "Munchausen bonus scale alpha (paper: 0.9); 0 = off")
    munchausen_tau: float = opt(0.03, "Munchausen temperature tau (paper: 0.03)")
    munchausen_l0: float = opt(-1.0, "lower clip of tau * log pi (paper: -1)")
    munchausen_mode: str = opt("behaviour", "behaviour: bonus in rewards before GAE | current: in the loss")
    prio_alpha: float = opt(0.0, "prioritised segment sampling exponent on sum|A|; 0 = uniform")
    prio_beta0: float = opt(0.2, "initial importance-weight exponent, annealed to 1")
    replay_factor: int = opt(1, "train on the last K rollouts with V-trace corrections; 1 = plain PPO")
    vtrace_rho_clip: float = opt(1.0, "V-trace rho-bar (replay_factor > 1)")
    vtrace_c_clip: float = opt(1.0, "V-trace c-bar (replay_factor > 1)")

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: choose linear, cosine or constant")
        if self.munchausen_mode not in ("behaviour", "current"):
            raise ValueError(f"munchausen_mode {self.munchausen_mode!r}: choose behaviour or current")
        if min(self.num_envs, self.segment_length, self.epochs, self.minibatches, self.replay_factor) < 1:
            raise ValueError("num_envs, segment_length, epochs, minibatches and replay_factor must be >= 1")
        if self.segments and self.num_envs < self.minibatches:
            raise ValueError(
                f"segment minibatches need num_envs ({self.num_envs}) >= minibatches ({self.minibatches})"
            )

    @property
    def segments(self) -> bool:
        """Minibatches are whole env segments (LSTM needs sequences; priorities are per segment)."""
        return self.lstm_hidden > 0 or self.prio_alpha > 0


PRESETS: dict[str, dict[str, Any]] = {
    # PufferLib 3.0's tuned puffer_breakout (config/ocean/breakout.ini over config/default.ini),
    # where it carries over to an Adam-trained MLP; the rest re-tuned on puffer_breakout (see the
    # module docstring: with PufferLib's gamma/lambda/entropy, with raw observations or with Adam
    # at lr <= 3e-3, PPO settles on "always move to one wall", which scores ~6).
    "puffer": {
        "num_envs": 1024,  # PufferLib: env.num_envs 1024
        "segment_length": 64,  # PufferLib: bptt_horizon 64 -> batch 65536
        "epochs": 1,  # PufferLib: update_epochs 1
        "minibatches": 8,  # ours: 8192 per minibatch (PufferLib: 2 x 32768, enough for Muon)
        # ours, for Adam (PufferLib: 0.0445 for Muon). For the 2.5x wider --hidden 320 (142K
        # params, PufferLib's policy size) halve it: at 1e-2 that net scored ~370 by minute 3.5,
        # then collapsed to ~6 and ended a 10-minute run at 120; at 5e-3 it ended at 810 (README).
        "lr": 1e-2,
        "lr_schedule": "cosine",  # PufferLib: cosine annealing
        "adam_beta1": 0.8946507418260217,  # PufferLib (its Muon's momentum pair)
        "adam_beta2": 0.9,  # PufferLib
        "adam_eps": 1e-4,  # PufferLib
        "gamma": 0.99,  # ours (PufferLib: 0.9997)
        "gae_lambda": 0.95,  # ours (PufferLib: 0.7477)
        "clip_coef": 0.19696765958267629,  # PufferLib
        "vf_clip_coef": 2.178492167689251,  # PufferLib
        "ent_coef": 0.01,  # ours, CleanRL's (PufferLib: 5.7e-4)
        "vf_coef": 1.6832989594296321,  # PufferLib
        "max_grad_norm": 2.2356112188495723,  # PufferLib
        "reward_clip": 1.0,  # PufferLib's trainer: clamp(r, -1, 1)
        "norm_obs": True,  # ours: ball velocities arrive as ~0.007, invisible to an MLP unscaled
        "encoder": "mlp",
        "hidden": 128,  # PufferLib: hidden_size 128 (its LSTM: --lstm-hidden 128)
        "mlp_layers": 2,
        "prio_alpha": 0.98967001208896,  # PufferLib
        "prio_beta0": 0.09999999999999998,  # PufferLib
        "vtrace_rho_clip": 0.7876748061547312,  # PufferLib (acts only with replay_factor > 1)
        "vtrace_c_clip": 2.878171091654008,  # PufferLib
    },
    # rl-baselines3-zoo's tuned CartPole-v1 PPO (hyperparams/ppo.yml: 8 envs x 32 steps, 20 epochs
    # of one 256 minibatch, lr 1e-3 annealed, gamma 0.98, lambda 0.8, clip 0.2, no entropy bonus),
    # with segments twice as long and half the epochs; raw rewards, 64-unit MLP, no value clipping
    # (SB3's default). CleanRL's ppo.py settings (4 x 128, lr 2.5e-4) reach ~240 in 300K steps here.
    "gym": {
        "num_envs": 8,
        "segment_length": 64,
        "epochs": 10,
        "minibatches": 2,
        "lr": 1e-3,
        "gamma": 0.98,
        "gae_lambda": 0.8,
        "clip_coef": 0.2,
        "vf_clip_coef": 0.0,
        "ent_coef": 0.0,
        "reward_clip": 0.0,
        "encoder": "mlp",
        "hidden": 64,
        "mlp_layers": 2,
    },
}


# ---------------------------------------------------------------------------------------------
# Pure pieces of the loss and the sampler (tested by hand in tests/test_ppo.py)


def sample(logits: torch.Tensor) -> torch.Tensor:
    """One action per row of ``logits [N, A]`` by the Gumbel-max trick, ``argmax(logits - log E)``
    with E ~ Exp(1): exact, and a few times cheaper than ``torch.multinomial`` at these sizes."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)  # [N]


def munchausen_bonus(logp: torch.Tensor, alpha: float, tau: float, l0: float) -> torch.Tensor:
    """``alpha * clip(tau * log pi(a|s), l0, 0)`` (Vieillard et al. 2020, eq. 4)."""
    return alpha * (tau * logp).clamp(min=l0, max=0.0)


def clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, clip_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's policy loss ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` (plain ``-A r`` when
    ``clip_coef == 0``) and the fraction of samples with ``|r - 1| > eps``."""
    loss = -adv * ratio
    if clip_coef > 0:
        loss = torch.max(loss, -adv * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef))
    thresh = clip_coef if clip_coef > 0 else CLIP_FRAC_REF
    return loss.mean(), ((ratio - 1.0).abs() > thresh).float().mean()


def value_loss(new: torch.Tensor, old: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``; plain MSE if c = 0."""
    loss = (new - returns) ** 2
    if clip > 0:
        clipped = old + (new - old).clamp(-clip, clip)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * loss.mean()


def prioritised_segments(
    adv: torch.Tensor, num: int, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PufferLib 3.0's segment sampler: draw ``num`` of the M columns of ``adv [T, M]`` without
    replacement with P proportional to ``(sum_t |A|)^alpha``; return (columns [num], importance
    weights ``(M * P)^-beta`` [num])."""
    prio = torch.nan_to_num(adv.abs().sum(0).pow(alpha)) + 1e-6  # [M]; eps keeps every segment drawable
    p = prio / prio.sum()  # [M]
    cols = torch.multinomial(p, num, replacement=False)  # [num]
    return cols, (adv.shape[1] * p[cols]).pow(-beta)  # [num], [num]


# ---------------------------------------------------------------------------------------------
# Network


class RunningNorm(nn.Module):
    """Observation normalisation ``clip((x - mean) / sqrt(var + 1e-8), -10, 10)`` with running
    statistics (Chan et al.'s parallel update, as SB3 / CleanRL's ``NormalizeObservation``).
    The statistics are buffers, so they travel with the network's state_dict."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4))
        self.register_buffer("scale", torch.ones(shape))  # 1 / sqrt(var + 1e-8), kept for act's speed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) * self.scale).clamp(-10.0, 10.0)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of a batch ``x [B, *shape]``."""
        n, mean = x.shape[0], x.mean(0)
        var = (x - mean).square().mean(0)  # two passes: faster than x.var(0) on CPU, as stable
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)
        self.scale.copy_(torch.rsqrt(self.var + 1e-8))


class ActorCritic(nn.Module):
    """(Optional observation normalisation) -> encoder -> (optional LSTM) -> policy logits and
    value, one torso for both heads."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: Config):
        super().__init__()
        self.norm = RunningNorm(obs_shape) if cfg.norm_obs else None
        kind = cfg.encoder if cfg.encoder != "auto" else ("mlp" if len(obs_shape) == 1 else "nature")
        kw = {"layers": cfg.mlp_layers} if kind == "mlp" else {}
        self.encoder = make_encoder(kind, obs_shape, cfg.hidden, **kw)
        feat = self.encoder.out_dim
        self.lstm: nn.LSTMCell | None = None
        if cfg.lstm_hidden:
            self.lstm = nn.LSTMCell(feat, cfg.lstm_hidden)
            for name, p in self.lstm.named_parameters():  # CleanRL ppo_atari_lstm.py init
                if "weight" in name:
                    nn.init.orthogonal_(p, 1.0)
                else:
                    nn.init.constant_(p, 0.0)
            feat = cfg.lstm_hidden
        self.actor = layer_init(nn.Linear(feat, num_actions), gain=0.01)  # near-uniform initial policy
        self.critic = layer_init(nn.Linear(feat, 1), gain=1.0)

    def step(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """One step for ``obs [N, *]``: logits [N, A], value [N], next LSTM state (or None)."""
        x = self.encoder(obs if self.norm is None else self.norm(obs))  # [N, F]
        if self.lstm is not None:
            state = self.lstm(x, state)
            x = state[0]  # [N, H]
        return self.actor(x), self.critic(x).squeeze(-1), state

    def unroll(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, starts: torch.Tensor
    ):
        """``obs [L, B, *]`` from ``state``, zeroing the LSTM state where ``starts [L, B]`` (a new
        episode begins): logits [L, B, A], values [L, B], final state."""
        L, B = obs.shape[:2]
        obs = obs.flatten(0, 1)  # [L*B, *]
        x = self.encoder(obs if self.norm is None else self.norm(obs))  # [L*B, F]
        if self.lstm is not None:
            x, (h, c) = x.view(L, B, -1), state
            hs = []
            for t in range(L):
                keep = (~starts[t]).unsqueeze(-1).to(h.dtype)  # [B, 1]
                h, c = self.lstm(x[t], (h * keep, c * keep))
                hs.append(h)
            x, state = torch.cat(hs), (h, c)  # [L*B, H]
        return self.actor(x).view(L, B, -1), self.critic(x).view(L, B), state


# ---------------------------------------------------------------------------------------------
# Agent


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.ctx = cfg, ctx
        self.device, self.n = ctx.device, ctx.num_envs
        self.net = ActorCritic(ctx.spec.obs_shape, ctx.spec.num_actions, cfg).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                    eps=cfg.adam_eps)  # fmt: skip

        # Rollout storage: K rollouts side by side, slot k in columns [k*N, (k+1)*N).
        T, M, A, dev = cfg.segment_length, cfg.replay_factor * self.n, ctx.spec.num_actions, self.device
        self.obs = torch.zeros(T, M, *ctx.spec.obs_shape, dtype=ctx.spec.obs_dtype, device=dev)
        self.actions = torch.zeros(T, M, dtype=torch.int64, device=dev)
        self.logits = torch.zeros(T, M, A, device=dev)  # behaviour logits; re-evaluated when stale
        self.logp = torch.zeros(T, M, device=dev)  # behaviour log mu(a|s), never overwritten
        self.values = torch.zeros(T, M, device=dev)  # V(s_t); re-evaluated when stale
        self.rewards = torch.zeros(T, M, device=dev)  # clipped rewards
        self.terminated = torch.zeros(T, M, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(T, M, dtype=torch.bool, device=dev)
        self.dones = torch.zeros(T, M, dtype=torch.bool, device=dev)  # env reset: LSTM state resets
        self.trunc_values = torch.zeros(T, M, device=dev)  # V(final_obs) where truncated
        self.next_obs = torch.zeros(cfg.replay_factor, self.n, *ctx.spec.obs_shape, dtype=ctx.spec.obs_dtype,
                                    device=dev)  # fmt: skip
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None  # acting LSTM state [N, H] x 2
        self.eval_state: tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.lstm_hidden:
            self.h0 = torch.zeros(M, cfg.lstm_hidden, device=dev)  # state at each segment's start
            self.c0 = torch.zeros(M, cfg.lstm_hidden, device=dev)
            self.state = (
                torch.zeros(self.n, cfg.lstm_hidden, device=dev),
                torch.zeros(self.n, cfg.lstm_hidden, device=dev),
            )
        self.t = 0  # step within the rollout being collected
        self.slot = 0  # replay slot being collected
        self.filled = 0  # rollouts held (<= K)
        self.env_steps = 0  # env steps observed (for the lr / beta schedules)

    # -- acting ---------------------------------------------------------------------------------

    def _cols(self, slot: int) -> slice:
        return slice(slot * self.n, (slot + 1) * self.n)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, first: torch.Tensor | None = None) -> torch.Tensor:
        if not explore:
            if self.net.lstm is not None:
                if self.eval_state is None or self.eval_state[0].shape[0] != obs.shape[0]:
                    zeros = torch.zeros(obs.shape[0], self.cfg.lstm_hidden, device=self.device)
                    self.eval_state = (zeros, zeros.clone())
                if first is not None:  # a new episode starts from a zero LSTM state, as in training
                    keep = (~first.to(self.device)).float().unsqueeze(1)  # [N, 1]
                    self.eval_state = (self.eval_state[0] * keep, self.eval_state[1] * keep)
            logits, _, self.eval_state = self.net.step(obs, self.eval_state)
            return logits.argmax(-1) if self.cfg.greedy_eval else sample(logits)
        t, cols = self.t, self._cols(self.slot)
        if self.state is not None and t == 0:
            self.h0[cols], self.c0[cols] = self.state
        logits, value, self.state = self.net.step(obs, self.state)  # [N, A], [N]
        action = sample(logits)  # [N]
        self.obs[t, cols] = obs
        self.actions[t, cols] = action
        self.logits[t, cols] = logits
        self.logp[t, cols] = logits.log_softmax(-1).gather(1, action[:, None]).squeeze(1)
        self.values[t, cols] = value
        return action

    @torch.no_grad()
    def observe(self, step: EnvStep) -> None:
        t, cols, c = self.t, self._cols(self.slot), self.cfg.reward_clip
        self.rewards[t, cols] = step.reward.clamp(-c, c) if c > 0 else step.reward
        self.terminated[t, cols] = step.terminated
        self.truncated[t, cols] = step.truncated
        self.dones[t, cols] = step.done
        if step.truncated.any():  # bootstrap a time-limit cut from its true final observation
            idx = step.truncated.nonzero().squeeze(1)  # [n_trunc]
            state = None if self.state is None else (self.state[0][idx], self.state[1][idx])
            self.trunc_values[t, cols.start + idx] = self.net.step(step.final_obs[idx], state)[1]
        if self.state is not None:
            keep = (~step.done).unsqueeze(-1).float()  # [N, 1]
            self.state = (self.state[0] * keep, self.state[1] * keep)
        self.t += 1
        self.env_steps += self.n
        if self.t == self.cfg.segment_length:
            self.next_obs[self.slot] = step.obs

    # -- learning -------------------------------------------------------------------------------

    def _progress(self) -> float:
        """Fraction of the env-step budget used before the rollout just collected."""
        total = self.ctx.total_env_steps
        done = self.env_steps - self.cfg.segment_length * self.n
        return 0.0 if not total else min(max(done / total, 0.0), 1.0)

    def _lr(self, progress: float) -> float:
        if self.cfg.lr_schedule == "linear":
            return self.cfg.lr * (1.0 - progress)
        if self.cfg.lr_schedule == "cosine":
            return self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.cfg.lr

    def update(self) -> dict[str, Any] | None:
        if self.t < self.cfg.segment_length:
            return None
        fresh = self.slot
        self.t, self.slot = 0, (self.slot + 1) % self.cfg.replay_factor
        self.filled = min(self.filled + 1, self.cfg.replay_factor)
        progress = self._progress()
        lr = self._lr(progress)
        for g in self.opt.param_groups:
            g["lr"] = lr
        targets = self._targets(fresh)
        stats = self._train(targets, progress)
        if self.net.norm is not None:
            # After training, so that a rollout is acted on and trained on with one normaliser; from
            # ~8192 of its observations (every k-th step), as a column reduction over all is slow.
            k = max(1, self.cfg.segment_length * self.n // 8192)
            self.net.norm.update(self.obs[::k, self._cols(fresh)].flatten(0, 1).float())
        return {**stats, "lr": lr}

    @torch.no_grad()
    def _targets(self, fresh: int) -> dict[str, torch.Tensor]:
        """Advantages and value targets for the active columns at the current parameters."""
        cfg, n = self.cfg, self.n
        Ma = self.filled * n  # active columns: slots fill in order, so they are the first Ma
        starts = torch.zeros_like(self.dones)  # [T, M] the LSTM state resets before these steps
        starts[1:] = self.dones[:-1]
        last_values = torch.empty(Ma, device=self.device)  # [Ma] V(s_T) per column
        for s in range(self.filled):
            cols = self._cols(s)
            state = self.state
            if s != fresh:  # stale rollout: re-evaluate values and logits at the current parameters
                h0 = None if self.state is None else (self.h0[cols], self.c0[cols])
                logits, values, state = self.net.unroll(self.obs[:, cols], h0, starts[:, cols])
                self.logits[:, cols], self.values[:, cols] = logits, values
                if state is not None:
                    keep = (~self.dones[-1, cols]).unsqueeze(-1).float()  # [N, 1]
                    state = (state[0] * keep, state[1] * keep)
            last_values[cols] = self.net.step(self.next_obs[s], state)[1]

        a = slice(0, Ma)
        values, logp_mu = self.values[:, a], self.logp[:, a]  # [T, Ma]
        rewards, bonus_mean = self.rewards[:, a], torch.zeros((), device=self.device)
        if cfg.munchausen_alpha > 0 and cfg.munchausen_mode == "behaviour":
            bonus = munchausen_bonus(logp_mu, cfg.munchausen_alpha, cfg.munchausen_tau, cfg.munchausen_l0)
            rewards, bonus_mean = rewards + bonus, bonus.mean()  # [T, Ma], []
        next_values = torch.cat([values[1:], last_values[None]])  # [T, Ma]
        next_values = torch.where(self.truncated[:, a], self.trunc_values[:, a], next_values)
        rho = c = None
        logp_old = logp_mu
        if self.filled > 1:
            logp_old = self.logits[:, a].log_softmax(-1).gather(-1, self.actions[:, a, None]).squeeze(-1)
            ratio = (logp_old - logp_mu).exp()  # [T, Ma] pi_theta_0 / mu
            rho, c = ratio.clamp(max=cfg.vtrace_rho_clip), ratio.clamp(max=cfg.vtrace_c_clip)
        adv = gae(rewards, values, next_values, self.terminated[:, a], self.truncated[:, a],
                  cfg.gamma, cfg.gae_lambda, rho, c)  # fmt: skip
        rho_mean = rho.mean() if rho is not None else torch.ones((), device=self.device)
        return {"adv": adv, "returns": adv + values, "logp_old": logp_old, "starts": starts[:, a],
                "bonus_mean": bonus_mean, "rho_mean": rho_mean}  # fmt: skip

    def _minibatches(self, adv: torch.Tensor, beta: float):
        """Yield (rows, cols, importance weights [B] or None) per minibatch, to index ``[T, M]``
        storage as ``x[rows, cols] -> [L, B]``: whole segments (rows = every step, cols [B], L = T)
        in segment mode, else single transitions (rows, cols [1, B], L = 1)."""
        cfg, (T, Ma) = self.cfg, adv.shape
        if cfg.prio_alpha > 0:
            for _ in range(cfg.minibatches):
                cols, w = prioritised_segments(adv, Ma // cfg.minibatches, cfg.prio_alpha, beta)
                yield slice(None), cols, w
        elif cfg.segments:
            for cols in torch.randperm(Ma, device=self.device).tensor_split(cfg.minibatches):
                yield slice(None), cols, None
        else:
            for i in torch.randperm(T * Ma, device=self.device).tensor_split(cfg.minibatches):
                yield (i // Ma)[None], (i % Ma)[None], None

    def _train(self, tg: dict[str, torch.Tensor], progress: float) -> dict[str, Any]:
        cfg = self.cfg
        beta = cfg.prio_beta0 + (1.0 - cfg.prio_beta0) * progress
        a = slice(0, tg["adv"].shape[1])
        values_old, logits_old = self.values[:, a], self.logits[:, a]
        sums: dict[str, list[torch.Tensor]] = {}
        grad_steps = grad_samples = 0
        for _ in range(cfg.epochs):
            for rows, cols, w in self._minibatches(tg["adv"], beta):
                state = None
                if self.net.lstm is not None:
                    state = (self.h0[cols], self.c0[cols])  # segment mode: cols [B]
                new_logits, new_v, _ = self.net.unroll(self.obs[rows, cols], state, tg["starts"][rows, cols])
                logp_all = new_logits.log_softmax(-1)  # [L, B, A]
                logp = logp_all.gather(-1, self.actions[rows, cols, None]).squeeze(-1)  # [L, B]
                logratio = logp - tg["logp_old"][rows, cols]  # [L, B]
                ratio = logratio.exp()
                adv = tg["adv"][rows, cols]  # [L, B]
                bonus = torch.zeros((), device=self.device)
                if cfg.munchausen_alpha > 0 and cfg.munchausen_mode == "current":
                    bonus = munchausen_bonus(
                        logp.detach(), cfg.munchausen_alpha, cfg.munchausen_tau, cfg.munchausen_l0
                    )
                    adv = adv + bonus
                if cfg.norm_adv:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                if w is not None:
                    adv = adv * w
                pg_loss, clip_frac = clipped_surrogate(ratio, adv, cfg.clip_coef)
                v_loss = value_loss(
                    new_v, values_old[rows, cols], tg["returns"][rows, cols], cfg.vf_clip_coef
                )
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                old_all = logits_old[rows, cols].log_softmax(-1)  # [L, B, A]
                kl = (old_all.exp() * (old_all - logp_all)).sum(-1).mean()  # exact KL(old || new)
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy + cfg.kl_coef * kl

                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                self.opt.step()

                grad_steps += 1
                grad_samples += logp.numel()
                with torch.no_grad():
                    approx_kl = ((ratio - 1.0) - logratio).mean()  # k3 estimator (CleanRL)
                    one = torch.ones((), device=self.device)
                    for k, v in (("loss", loss), ("pg_loss", pg_loss), ("v_loss", v_loss), ("entropy", entropy),
                                 ("approx_kl", approx_kl), ("kl", kl), ("clip_frac", clip_frac),
                                 ("grad_norm", grad_norm), ("current_bonus", bonus.mean()),
                                 ("prio_weight_mean", one if w is None else w.mean()),
                                 ("prio_weight_min", one if w is None else w.min()),
                                 ("prio_weight_max", one if w is None else w.max())):  # fmt: skip
                        sums.setdefault(k, []).append(v.detach().float())

        names = list(sums)
        means = torch.stack([torch.stack(sums[k]).mean() for k in names]).tolist()  # one device sync
        out: dict[str, Any] = dict(zip(names, means))
        out["prio_weight_min"] = float(torch.stack(sums["prio_weight_min"]).min())
        out["prio_weight_max"] = float(torch.stack(sums["prio_weight_max"]).max())
        returns, values = tg["returns"], values_old
        var = returns.var()
        current = out.pop("current_bonus")
        return {
            "grad_steps": grad_steps,
            "grad_samples": grad_samples,
            **out,
            "kl_pen": cfg.kl_coef * out["kl"],
            "explained_var": float(1.0 - (returns - values).var() / var) if var > 0 else float("nan"),
            "munchausen_bonus_mean": float(tg["bonus_mean"]) + current,
            "prio_beta": beta if cfg.prio_alpha > 0 else 0.0,
            "vtrace_rho_mean": float(tg["rho_mean"]),
            "replay_rollouts": self.filled,
            "value_mean": float(values.mean()),
        }

    # -- checkpointing --------------------------------------------------------------------------

    _STORAGE = ("obs", "actions", "logits", "logp", "values", "rewards", "terminated", "truncated", "dones",
                "trunc_values", "next_obs")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        s = {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
             "counters": {"t": self.t, "slot": self.slot, "filled": self.filled, "env_steps": self.env_steps},
             "storage": {k: getattr(self, k) for k in self._STORAGE}, "state": self.state}  # fmt: skip
        if self.cfg.lstm_hidden:
            s["storage"].update(h0=self.h0, c0=self.c0)
        return s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
        for k, v in state["storage"].items():
            getattr(self, k).copy_(v)
        self.state = None if state["state"] is None else tuple(x.to(self.device) for x in state["state"])
