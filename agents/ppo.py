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
  :mod:`agents.nets` and below), Adam (3), learning rate annealed to 0 (4) over the run's budget
  (linear as CleanRL or cosine as PufferLib), read at each rollout's start as the fraction of
  whichever budget ends first, env steps or training time (``AgentContext.budget_used``; under a
  time budget the schedule thus depends on the machine's speed);
* a resumed run's first act (``first`` all True, :mod:`agents.api`) drops the last stored step,
  whose next observation the restarted envs lost, and truncates the step before it with
  V(s_t) of the observation it led to as bootstrap (Pardo et al.'s treatment of a cut);
* one encoder shared by policy and value heads (CleanRL's Atari nets; CleanRL's classic-control
  script uses two separate tanh MLPs, we keep the shared ReLU MLP everywhere);
* reward clipping in the learner, ``clamp(r, -c, c)``: on Atari's integer rewards c = 1 equals
  CleanRL's ``sign(r)``; it is also PufferLib's ``clamp(r, -1, 1)``;
* optional LSTM core (CleanRL ``ppo_atari_lstm.py``): state zeroed where an episode ended, the
  state at each segment's start stored, back-propagation through the whole segment. Acting steps
  the cell; ``lstm_unroll`` sets how the state treats episode ends and how training unrolls it.
  ``exact`` (the default) zeroes the state where an episode ended, in acting and in a training
  pass that steps the cell with the same resets (tested to reproduce acting). ``fused`` is
  PufferLib 3.0's way: the state is never reset at an episode end (its ``LSTMWrapper.forward_eval``
  ignores ``done``), so a new episode starts with the old one's memory, and training makes one
  ``nn.LSTM`` call per minibatch of segments (cuDNN on CUDA, oneDNN on CPU; ``LSTMWrapper.forward``)
  on the cell's own weights from the stored segment-start state. Training then reproduces acting
  exactly in both modes (tested); what ``fused`` changes is the policy: memory crosses episode
  boundaries. Where no episode ends inside a segment the two modes compute the same updates
  (tested). A resumed run's envs restart with a zero state in both (the fused pass does not see
  that one reset). The meter counts the fused CPU kernel (``aten.mkldnn_rnn_layer``) with the
  cell's matmul FLOPs (:mod:`bench.meter`); CUDA's ``aten._cudnn_rnn`` has no formula yet, so
  on a GPU the fused mode's FLOPs and MFU leave out the LSTM;
* optional observation normalisation by running mean / variance, clipped to [-10, 10] (detail 4
  of the continuous-action list; SB3's ``VecNormalize``), updated from each rollout after the
  update so a rollout is acted and trained with one normaliser;
* actions sampled by the Gumbel-max trick (exact; cheaper than ``torch.multinomial``).

Variants (each a config field, so each is recorded in the run's config.json):

* ``clip_coef 0``: unclipped surrogate; ``clip_frac`` then reports the fraction of samples with
  |ratio - 1| > 0.2 (the PPO paper's epsilon), i.e. what clipping would have touched;
* ``kl_coef``: loss += C * KL(pi_old || pi_new), exact over the discrete action set (PPO paper
  section 4, fixed coefficient); ``kl`` is logged whether or not it is penalised;
* ``munchausen_alpha/tau/l0/mode``: the Munchausen bonus b_t = alpha * clip(tau * log pi(a_t|s_t),
  l0, 0) (Vieillard et al. 2020, arXiv:2007.14430, eq. 4; their alpha 0.9, tau 0.03, l0 -1;
  alpha 0 turns every mode off). Three modes (the first two were named ``behaviour`` and
  ``current`` before issue 15; the old names are still accepted and stored under the new ones):

  - ``reward_bonus``: b_t from the acting policy's log mu(a_t|s_t), added to r_t before GAE /
    V-trace. Alone it is, in expectation over a ~ pi, -alpha * tau * H(pi(.|s)) per step (the
    clip acts only below pi(a|s) = e^(l0/tau), e^-33 at the defaults): an entropy *penalty*
    that works against ``ent_coef``, not M-RL's regulariser.
  - ``advantage_bonus``: b_t from the policy being trained (detached), added to that sample's
    advantage in the loss (the immediate term only: later terms of the GAE sum belong to other
    samples; the value targets carry no bonus); the same expectation.
  - ``munchausen``: M-RL's pair, with pi_0 = pi_theta_0, the policy the update starts from, as
    M-RL's previous iterate. Its target for Q(s_t, a_t) is r_t + alpha tau log pi_0(a_t|s_t) +
    gamma E_{a'~pi_0}[Q(s', a') - tau log pi_0(a'|s')]. Our critic estimates U(s) = E_{a~pi_0}
    Q(s, a), so the next state's soft value is U(s') + tau H(pi_0(.|s')) and the TD error is
    r_t + b_t + gamma (1 - term_t) (U(s') + tau H(pi_0(.|s'))) - U(s_t). The soft term thus
    enters at step t as a reward-like gamma tau H(pi_0(.|s')) (:func:`soft_bootstrap`, the exact
    expectation over a' as M-DQN sums it), s' the true next state (s_{t+1}; final_obs where
    truncated; s_T at the segment end), 0 where terminated. With it in r_t every n-step return
    in GAE / V-trace ends on the soft value of its last state, so lambda needs no other change,
    and V-trace weights it by rho_t like r_t (it follows a_t). The current state's -tau log pi
    is the policy loss's entropy bonus: maximising E_pi[A + alpha tau log pi_0] + tau H(pi) is
    E_pi[A] - alpha tau KL(pi || pi_0) + (1 - alpha) tau H(pi) (M-RL section 3). ``ent_coef``
    plays that tau on normalised advantages, so the two are not tied (a deviation, below).

  ``munchausen_bonus_mean`` logs the mean b_t and ``munchausen_soft_mean`` the mean soft term;
* ``prio_alpha/prio_beta0``: PufferLib 3.0's prioritised segments: P(segment) proportional to
  (sum_t |A_t|)^alpha, importance weights (M * P)^-beta multiply the normalised advantages;
  beta anneals from beta0 to 1 over the run's budget, as the learning rate (PufferLib's
  schedule ends at beta0 + (1 - beta0) * alpha; we follow Schaul et al. 2016);
* ``replay_factor K``: keep the last K rollouts and train on all of them. At the start of each
  update the stale rollouts are re-evaluated with the current parameters theta_0: values,
  logits, and V and H of the final observations of their truncated steps (stored for this);
  advantages and value targets become V-trace (Espeholt et al. 2018, :func:`agents.returns.vtrace`)
  with rho = min(pi_theta_0 / mu, rho_bar) and c = min(pi_theta_0 / mu, c_bar) on the stale
  rollouts, mu the behaviour policy, and rho = c = 1 on the fresh one, which theta_0 itself
  acted: its targets are then exactly K = 1's, so K = 1 and K > 1 differ only in the stale data
  (tested). The surrogate's ratio is pi_theta / pi_theta_0, a trust region around the policy
  the update starts from (as GePPO, Queeney et al. 2021). K = 1 is plain PPO.

  - ``vtrace_form``: the policy-gradient advantage, ``impala`` rho_t (r_t + gamma q_{t+1} - V_t)
    (the default) or ``puffer`` v_t - V_t, whose continuation is weighted by c_t, so with
    c_bar > 1 a trace can grow by c_bar per step. IMPALA's is the default as the published
    estimator, and PufferLib's did not learn better: on ``puffer_breakout`` with K = 2 and
    PufferLib's pair (rho_bar 0.788, c_bar 2.878), 20M env steps, 2 seeds each, final score
    IQM 599 [365, 834] (impala) vs 399 [366, 431] (puffer), level until ~12M env steps (Intel
    Xeon, 2026-12-02; two seeds cannot separate them, P(impala > puffer) 0.5). The two agree
    where rho = c, so with the ``puffer`` preset (c_bar = rho_bar) the switch has no effect.
    c_bar > rho_bar (IMPALA's analysis assumes c_bar <= rho_bar) is refused unless
    ``vtrace_allow_c_above_rho``.
  - ``replay_minibatch``: ``larger`` (the default, and the behaviour before issue 15):
    ``minibatches`` per epoch, each K x larger and holding its share of every rollout, the fresh
    one split exactly as at K = 1; optimiser steps per update do not grow with K. ``more``:
    K x ``minibatches`` of the K = 1 size from one shuffle of everything, so K x the optimiser
    steps. ``grad_steps`` counts the steps taken either way.
  - ``replay_stale_weight``: a stale sample's weight in every loss term and in the advantage
    normalisation (weighted means), relative to a fresh one's 1; 0 reproduces the K = 1 update
    exactly (tested) under uniform sampling. Prioritised sampling (``prio_alpha > 0``, as in the
    ``puffer`` preset) draws segments from all rollouts by priority, so there the stale ones still
    take minibatch slots, and "larger" / "more" only set how many segments each minibatch draws.

  - ``vtrace_correct``: off, rho = c = 1 on the stale rollouts too (GAE over their re-evaluated
    values, as if theta_0 had acted them): the ablation that asks what V-trace itself repairs.

  ``vtrace_rho_fresh`` / ``vtrace_rho_stale`` log the mean rho applied on each (1 where none
  is held; with ``vtrace_correct`` off, the rho V-trace would have applied); ``replay_rollouts``
  the number held.

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
  of a segment bootstraps from V(s_T) (PufferLib gives it zero advantage);
* its LSTM, where we add one: PufferLib acts with an ``nn.LSTMCell`` on its ``nn.LSTM``'s weights
  (``LSTMWrapper.forward_eval``), never resetting at episode ends (the wrapper ignores ``done``),
  and zeroes the state at every rollout's start (``PuffeRL.evaluate``); it trains each segment
  from a zero state (``PuffeRL.train`` passes ``lstm_h=None``) with one ``nn.LSTM`` call, so its
  training pass reproduces its acting and no memory crosses a segment boundary. ``lstm_unroll
  fused`` follows it but carries the state across segments and rollouts (training starts from the
  stored segment-start state, so it still reproduces acting); ``exact`` resets at episode ends. Its LSTM keeps PyTorch's uniform init (LSTMWrapper's
  orthogonal init loop runs before the ``nn.LSTM`` is made); ours is CleanRL's orthogonal one.

Remaining deviations from the references, each with its source:

* CleanRL ``ppo_atari.py``: truncation bootstraps from V(final_obs) (CleanRL: a truncation is a
  termination); the value loss clips with its own ``vf_clip_coef`` (CleanRL reuses ``clip_coef``).
* PufferLib 3.0 ``pufferl.py`` (``PuffeRL.train``): it has no store of past rollouts; its V-trace
  corrects for the drift within one update, with ratios pi_new / mu recorded at each segment's
  last draw (reset to 1 at the update's start, so first use clips 1 to rho_bar) and values
  overwritten by the latest forward pass, recomputing the whole buffer's advantages before every
  minibatch from the ratios recorded so far. Ours (``replay_factor``) re-evaluates K stored rollouts
  once per update at theta_0, leaves the fresh one unclipped, and defaults to IMPALA's
  advantage (``vtrace_form puffer`` is its ``compute_puff_advantage``).
* IMPALA (Espeholt et al. 2018): the policy gradient is PPO's clipped surrogate in
  pi_theta / pi_theta_0 on normalised V-trace advantages, for several epochs (IMPALA: one step of
  rho_t grad log pi times the advantage); targets are computed once per update at theta_0; the
  policy-gradient advantage uses lambda as rlax's ``vtrace_td_error_and_advantage`` (the paper
  writes it for lambda = 1) and the same rho_bar as the value target (rlax allows its own);
  the fresh rollout gets rho = c = 1 where IMPALA would clip to min(1, rho_bar); the value loss
  is PPO's (clipped unless ``vf_clip_coef 0``, then IMPALA's squared error).
* Munchausen-RL (Vieillard et al. 2020): M-RL is value-based, its policy softmax(q / tau) and
  its previous iterate a target network; here the policy is an actor, pi_0 = pi_theta_0 and
  ``mode munchausen`` is our derivation above; the current state's -tau log pi is the entropy
  bonus with coefficient ``ent_coef`` on normalised advantages, not tau; only the bonus is
  clipped at l0, as in M-DQN; ``reward_bonus`` and ``advantage_bonus`` have no reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.api import PRECISION_HELP, PRECISIONS, AgentContext, Param, opt
from agents.nets import ENCODERS, RunningNorm, encoder_kind, layer_init, make_encoder
from agents.returns import gae, vtrace
from envs.base import EnvSpec, EnvStep

CLIP_FRAC_REF = 0.2  # |ratio - 1| threshold clip_frac reports when clipping is off (PPO paper's eps)
MUNCHAUSEN_MODES = ("reward_bonus", "advantage_bonus", "munchausen")
MUNCHAUSEN_ALIASES = {"behaviour": "reward_bonus", "current": "advantage_bonus"}  # names before issue 15


@dataclass(frozen=True)
class Config:
    # Defaults: CleanRL ppo_atari.py (Huang et al. 2022) for ALE games.
    num_envs: int = opt(8, "parallel environments", ge=1)
    segment_length: int = opt(128, "env steps per env per rollout: T, the on-policy bootstrap horizon", ge=1)
    epochs: int = opt(4, "passes over the batch per update", ge=1)
    minibatches: int = opt(4, "minibatches per epoch", ge=1)
    lr: float = opt(2.5e-4, "Adam step size at the start of training", gt=0)
    lr_schedule: str = opt("linear", "linear | cosine | constant decay to 0 over the budget (steps or time)",
                           choices=("linear", "cosine", "constant"))  # fmt: skip
    adam_beta1: float = opt(0.9, "Adam beta1", ge=0, lt=1)
    adam_beta2: float = opt(0.999, "Adam beta2", ge=0, lt=1)
    adam_eps: float = opt(1e-5, "Adam epsilon (CleanRL: 1e-5, not torch's 1e-8)", gt=0)
    gamma: float = opt(0.99, "discount", ge=0, le=1)
    gae_lambda: float = opt(0.95, "GAE lambda", ge=0, le=1)
    clip_coef: float = opt(0.1, "surrogate clipping epsilon; 0 turns clipping off", ge=0)
    vf_clip_coef: float = opt(0.1, "value clipping around the old value; 0 turns it off", ge=0)
    ent_coef: float = opt(0.01, "entropy bonus coefficient", ge=0)
    vf_coef: float = opt(0.5, "value loss coefficient", ge=0)
    max_grad_norm: float = opt(0.5, "global gradient-norm clip", gt=0)
    norm_adv: bool = opt(True, "normalise advantages per minibatch")
    reward_clip: float = opt(1.0, "clamp rewards to [-c, c] in the learner; 0 = raw rewards", ge=0)
    norm_obs: bool = opt(False, "normalise float observations by running mean / std (updated per rollout)")
    encoder: str = opt("auto", "auto | mlp | nature | impala | minatar (auto: MLP for vectors, MinAtarCNN for "
                       "images up to 16x16, NatureCNN for larger)", choices=ENCODERS)  # fmt: skip
    hidden: int = opt(512, "encoder output width (NatureCNN's 512 FC; MinAtar's 128; MLP hidden width)", ge=1)
    mlp_layers: int = opt(2, "hidden layers of the MLP encoder", ge=0)
    lstm_hidden: int = opt(0, "LSTM core width between encoder and heads; 0 = feed-forward", ge=0)
    lstm_unroll: str = opt(
        "exact",
        "LSTM state and training pass: exact: zero the state where an episode ended, step the cell "
        "in training | fused: never reset at episode ends, one nn.LSTM call per segment batch in "
        "training (PufferLib 3.0 models.py LSTMWrapper)",
        choices=("exact", "fused"),
    )
    greedy_eval: bool = opt(False, "evaluate with argmax actions instead of sampling the policy")
    kl_coef: float = opt(0.0, "coefficient of an explicit KL(old || new) penalty; 0 = off", ge=0)
    munchausen_alpha: float = opt(0.0, "Munchausen bonus scale alpha (paper: 0.9); 0 = off", ge=0)
    munchausen_tau: float = opt(0.03, "Munchausen temperature tau (paper: 0.03)", gt=0)
    munchausen_l0: float = opt(-1.0, "lower clip of tau * log pi (paper: -1)", le=0)
    munchausen_mode: str = opt(
        "reward_bonus",
        "reward_bonus: alpha*clip(tau*log mu) in rewards (an entropy penalty in expectation) | "
        "advantage_bonus: the same from the trained policy, on each sample's advantage | munchausen: "
        "bonus from pi_theta_0 plus the soft bootstrap gamma*tau*H(pi(.|s')) (Munchausen-RL); "
        "behaviour and current are the old names of the first two",
        choices=(*MUNCHAUSEN_MODES, *MUNCHAUSEN_ALIASES),
    )
    prio_alpha: float = opt(0.0, "prioritised segment sampling exponent on sum|A|; 0 = uniform", ge=0)
    prio_beta0: float = opt(0.2, "initial importance-weight exponent, annealed to 1", ge=0, le=1)
    replay_factor: int = opt(1, "train on the last K rollouts with V-trace corrections; 1 = plain PPO", ge=1)
    vtrace_rho_clip: float = opt(1.0, "V-trace rho-bar (replay_factor > 1)", gt=0)
    vtrace_c_clip: float = opt(1.0, "V-trace c-bar (replay_factor > 1); above rho-bar only with "
                               "--vtrace-allow-c-above-rho", ge=0)  # fmt: skip
    vtrace_allow_c_above_rho: bool = opt(False, "accept vtrace_c_clip > vtrace_rho_clip (PufferLib's pair); "
                                         "IMPALA's analysis assumes c-bar <= rho-bar")  # fmt: skip
    vtrace_correct: bool = opt(True, "apply V-trace's importance corrections on stale rollouts (replay_factor > 1); "
                               "off: rho = c = 1, plain GAE on them (the ablation)")  # fmt: skip
    vtrace_form: str = opt(
        "impala",
        "policy-gradient advantage under V-trace: impala rho_t (r_t + gamma q_{t+1} - V_t) | "
        "puffer: v_t - V_t, continuation weighted by c (PufferLib 3.0)",
        choices=("impala", "puffer"),
    )
    replay_minibatch: str = opt(
        "larger",
        "with K rollouts held: larger: the same number of K x larger minibatches | more: K x as many "
        "minibatches of the K = 1 size (K x the optimiser steps)",
        choices=("larger", "more"),
    )
    replay_stale_weight: float = opt(
        1.0,
        "loss weight of a stale sample relative to a fresh one (replay_factor > 1); 0 leaves the K = 1 update",
        ge=0,
    )
    precision: str = opt("fp32", PRECISION_HELP, choices=PRECISIONS)

    def __post_init__(self) -> None:
        # Single-field ranges are declared above and checked by bench.config before this runs.
        if self.munchausen_mode in MUNCHAUSEN_ALIASES:  # old names, as recorded in earlier runs' config.json
            object.__setattr__(self, "munchausen_mode", MUNCHAUSEN_ALIASES[self.munchausen_mode])
        if self.vtrace_c_clip > self.vtrace_rho_clip and not self.vtrace_allow_c_above_rho:
            raise ValueError(
                f"vtrace_c_clip {self.vtrace_c_clip} > vtrace_rho_clip {self.vtrace_rho_clip}: IMPALA "
                "assumes c-bar <= rho-bar; pass --vtrace-allow-c-above-rho to run it anyway"
            )
        if self.segments and self.num_envs < self.minibatches:
            raise ValueError(
                f"segment minibatches need num_envs ({self.num_envs}) >= minibatches ({self.minibatches})"
            )

    @property
    def segments(self) -> bool:
        """Minibatches are whole env segments (LSTM needs sequences; priorities are per segment)."""
        return self.lstm_hidden > 0 or self.prio_alpha > 0


# What `bench tune` searches (agents.api.Param): the knobs the equal-compute comparison turns on,
# with ranges wide enough to hold every preset below and the literature's values.
SEARCH_SPACE: tuple[Param, ...] = (
    # 1e-4 (below CleanRL Atari's 2.5e-4) to 3e-2 (above the puffer preset's 1e-2): two decades, log.
    Param("lr", 1e-4, 3e-2, log=True),
    # the reuse knob: 1 (PufferLib) to 10 (rl-zoo CartPole); more epochs trade env steps for grad samples.
    Param("epochs", 1, 10, kind="int"),
    # the horizon knob: 16 to 256 env steps per env per rollout (presets: 64, 128), log: halvings matter.
    Param("segment_length", 16, 256, log=True, kind="int"),
    # entropy bonus: 0 (rl-zoo CartPole) to 0.05 (5x CleanRL's 0.01); linear, so 0 is reachable.
    Param("ent_coef", 0.0, 0.05),
    # GAE lambda: 0.8 (rl-zoo CartPole) to 0.99; PufferLib's 0.75 is just below, CleanRL's 0.95 inside.
    Param("gae_lambda", 0.8, 0.99),
    # network width: the presets' 64 / 128 and NatureCNN's 512, as powers of two.
    Param("hidden", choices=(64, 128, 256, 512)),
)


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
        "vtrace_rho_clip": 0.7876748061547312,  # PufferLib (acts only on stale rollouts, replay_factor > 1)
        # ours: c-bar = rho-bar, the largest IMPALA allows (PufferLib: 2.878, which needs
        # --vtrace-allow-c-above-rho); with rho = c the two vtrace_form choices coincide.
        "vtrace_c_clip": 0.7876748061547312,
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
    # MinAtar (10x10 boards, 6 actions): gymnax-blines' PPO for Breakout-MinAtar
    # (RobertTLange/gymnax-blines, agents/Breakout-MinAtar/ppo.yaml) on MinAtar's own network.
    "minatar": {
        "num_envs": 64,  # gymnax-blines: num_train_envs 64
        "segment_length": 128,  # gymnax-blines: n_steps 128 -> batch 8192
        "epochs": 4,  # gymnax-blines: epoch_ppo 4
        "minibatches": 8,  # gymnax-blines: n_minibatch 8 -> 1024 samples each
        "lr": 5e-4,  # gymnax-blines: 5e-4 (constant after a warm-up there; annealed here, CleanRL)
        "gamma": 0.99,  # MinAtar's DQN (Young & Tian 2019); gymnax-blines: 0.999
        "gae_lambda": 0.95,  # gymnax-blines
        "clip_coef": 0.2,  # gymnax-blines: clip_eps 0.2
        "vf_clip_coef": 0.2,  # CleanRL: the value is clipped with clip_coef
        "ent_coef": 0.01,  # gymnax-blines
        "vf_coef": 0.5,  # gymnax-blines
        "max_grad_norm": 0.5,  # gymnax-blines
        "reward_clip": 0.0,  # MinAtar's DQN: raw rewards (small integers; seaquest's surfacing bonus up to 10)
        "encoder": "minatar",  # Young & Tian 2019: 3x3 conv, 16 channels, stride 1 (gymnax-blines: MLP)
        "hidden": 128,  # Young & Tian 2019: the 128-unit layer
    },
}


def inactive_options(cfg: Config, spec: EnvSpec) -> list[str]:
    """The options that change nothing with ``cfg`` on ``spec``'s observations (the harness warns
    and records them): the MLP's depth under a conv encoder (``hidden`` is the width of every
    encoder's output layer), and ``lstm_unroll`` set to ``fused`` without an LSTM. The latter only
    when moved off its default: ``exact`` is what a feed-forward net does anyway, and listing it
    would put a note on every feed-forward run in ``plots.report``. ValueError where the encoder
    cannot take the observations (e.g. ``--encoder nature`` on vectors)."""
    out = [] if encoder_kind(cfg.encoder, spec.obs_shape) == "mlp" else ["mlp_layers"]
    if cfg.lstm_hidden == 0 and cfg.lstm_unroll != "exact":
        out.append("lstm_unroll")
    return out


# ---------------------------------------------------------------------------------------------
# Pure pieces of the loss and the sampler (tested by hand in tests/test_ppo.py)


def sample(logits: torch.Tensor) -> torch.Tensor:
    """One action per row of ``logits [N, A]`` by the Gumbel-max trick, ``argmax(logits - log E)``
    with E ~ Exp(1): exact, and a few times cheaper than ``torch.multinomial`` at these sizes."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)  # [N]


def munchausen_bonus(logp: torch.Tensor, alpha: float, tau: float, l0: float) -> torch.Tensor:
    """``alpha * clip(tau * log pi(a|s), l0, 0)`` (Vieillard et al. 2020, eq. 4). Where the clip
    does not act its mean over ``a ~ pi`` is ``-alpha * tau * H(pi(.|s))``: on its own, an entropy
    penalty."""
    return alpha * (tau * logp).clamp(min=l0, max=0.0)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(logits)) [...]`` over the last dimension."""
    logp = logits.log_softmax(-1)  # [..., A]
    return -(logp.exp() * logp).sum(-1)


def soft_bootstrap(
    next_entropy: torch.Tensor, terminated: torch.Tensor, gamma: float, tau: float
) -> torch.Tensor:
    """Munchausen-RL's entropy-regularised bootstrap ``-gamma * tau * sum_a' pi(a'|s') log pi(a'|s')
    = gamma * tau * H(pi(.|s'))`` (Vieillard et al. 2020, eq. 4's soft term, in expectation over
    a' as M-DQN computes it), zero where s' is terminal. Added to r_t it makes the critic's target
    the soft value of s' (see the module docstring)."""
    return gamma * tau * (1.0 - terminated.float()) * next_entropy


def wmean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``mean(x)``, or ``sum(w x) / sum(w)`` with per-sample weights ``w`` (0 where all weigh 0)."""
    return x.mean() if w is None else (w * x).sum() / w.sum().clamp(min=1e-8)


def normalise(adv: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``(A - mean) / (std + 1e-8)``, std unbiased (CleanRL); with weights, the frequency-weighted
    mean and ``sum(w (A - mean)^2) / (sum(w) - 1)``, so 0/1 weights give the same as dropping the
    zero-weight samples."""
    if w is None:
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    mean = wmean(adv, w)
    var = (w * (adv - mean) ** 2).sum() / (w.sum() - 1.0).clamp(min=1e-8)
    return (adv - mean) / (var.sqrt() + 1e-8)


def clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, clip_coef: float, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's policy loss ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` (plain ``-A r`` when
    ``clip_coef == 0``) and the fraction of samples with ``|r - 1| > eps``; means weighted by
    ``w`` where given (:func:`wmean`)."""
    loss = -adv * ratio
    if clip_coef > 0:
        loss = torch.max(loss, -adv * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef))
    thresh = clip_coef if clip_coef > 0 else CLIP_FRAC_REF
    return wmean(loss, w), wmean(((ratio - 1.0).abs() > thresh).float(), w)


def value_loss(
    new: torch.Tensor, old: torch.Tensor, returns: torch.Tensor, clip: float, w: torch.Tensor | None = None
) -> torch.Tensor:
    """``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``; plain MSE if c = 0;
    the mean weighted by ``w`` where given."""
    loss = (new - returns) ** 2
    if clip > 0:
        clipped = old + (new - old).clamp(-clip, clip)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * wmean(loss, w)


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
# Network (observation normalisation: agents.nets.RunningNorm, shared with PQN)


class ActorCritic(nn.Module):
    """(Optional observation normalisation) -> encoder -> (optional LSTM) -> policy logits and
    value, one torso for both heads. With ``lstm_unroll fused`` an ``nn.LSTM`` shares the cell's
    weights for the training pass (``unroll``)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: Config):
        super().__init__()
        self.norm = RunningNorm(obs_shape) if cfg.norm_obs else None
        kind = encoder_kind(cfg.encoder, obs_shape)  # ValueError where the torso cannot take obs_shape
        kw = {"layers": cfg.mlp_layers} if kind == "mlp" else {}
        self.encoder = make_encoder(kind, obs_shape, cfg.hidden, **kw)
        feat = self.encoder.out_dim
        self.lstm: nn.LSTMCell | None = None  # acting, and training with lstm_unroll exact
        self.lstm_seq: nn.LSTM | None = None  # training with lstm_unroll fused
        if cfg.lstm_hidden:
            self.lstm = nn.LSTMCell(feat, cfg.lstm_hidden)
            for name, p in self.lstm.named_parameters():  # CleanRL ppo_atari_lstm.py init
                if "weight" in name:
                    nn.init.orthogonal_(p, 1.0)
                else:
                    nn.init.constant_(p, 0.0)
            if cfg.lstm_unroll == "fused":
                # PufferLib 3.0 LSTMWrapper's sharing, the other way round: nn.LSTM runs on the
                # cell's own parameters, so there is one set of weights, the optimiser sees it once,
                # and the cell's state_dict keys stay (the aliases add lstm_seq.* keys). Its own
                # are made on the meta device, as drawing them would shift the heads' random init
                # away from the exact mode's. On CUDA its .to() calls flatten_parameters, which
                # moves the shared ones into one cuDNN weight buffer in place (as PufferLib's).
                self.lstm_seq = nn.LSTM(feat, cfg.lstm_hidden, device="meta")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    setattr(self.lstm_seq, f"{name}_l0", getattr(self.lstm, name))
            feat = cfg.lstm_hidden
        self.actor = layer_init(nn.Linear(feat, num_actions), gain=0.01)  # near-uniform initial policy
        self.critic = layer_init(nn.Linear(feat, 1), gain=1.0)

    def step(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """One step for ``obs [N, *]``: logits [N, A], value [N], next LSTM state (or None)."""
        x = self.encoder(obs if self.norm is None else self.norm(obs))  # [N, F]
        if self.lstm is not None:
            state = self.lstm(x, state)
            x = state[0]  # [N, H]
        # float32 out: losses stay float32 under --precision bf16 (bench.precision)
        return self.actor(x).float(), self.critic(x).squeeze(-1).float(), state

    def unroll(
        self,
        obs: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        starts: torch.Tensor,
        every_state: bool = False,
    ):
        """``obs [L, B, *]`` from ``state``: logits [L, B, A], values [L, B], final state; with
        ``every_state`` the state after every step instead, ``([L, B, H], [L, B, H])`` (None
        without an LSTM). ``lstm_unroll`` exact zeroes the LSTM state where ``starts [L, B]`` (a new
        episode begins); fused ignores ``starts`` and makes one nn.LSTM call, or, for
        ``every_state`` (nn.LSTM returns only the last cell state), steps the cell without resets."""
        L, B = obs.shape[:2]
        obs = obs.flatten(0, 1)  # [L*B, *]
        x = self.encoder(obs if self.norm is None else self.norm(obs))  # [L*B, F]
        if self.lstm is not None:
            x, (h, c) = x.view(L, B, -1), state
            if self.lstm_seq is not None and not every_state:
                x, (h, c) = self.lstm_seq(x, (h[None], c[None]))  # [L, B, H], [1, B, H] x 2
                x = x.flatten(0, 1)  # [L*B, H]
                return self.actor(x).view(L, B, -1).float(), self.critic(x).view(L, B).float(), (h[0], c[0])
            hs, cs = [], []
            for t in range(L):
                if self.lstm_seq is None:  # exact: a new episode starts from a zero state
                    keep = (~starts[t]).unsqueeze(-1).to(h.dtype)  # [B, 1]
                    h, c = h * keep, c * keep
                h, c = self.lstm(x[t], (h, c))
                hs.append(h)
                cs.append(c)
            x, state = torch.cat(hs), (h, c)  # [L*B, H]
            if every_state:
                state = (x.view(L, B, -1), torch.stack(cs))  # [L, B, H] x 2
        return self.actor(x).view(L, B, -1).float(), self.critic(x).view(L, B).float(), state


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
        self.trunc_values = torch.zeros(T, M, device=dev)  # V(final_obs) where truncated; re-evaluated
        self.trunc_entropy = torch.zeros(T, M, device=dev)  # H(pi(.|final_obs)) there (soft bootstrap)
        # final_obs of truncated steps, for re-evaluating the two above once the rollout is stale
        self.final_obs = (torch.zeros(T, M, *ctx.spec.obs_shape, dtype=ctx.spec.obs_dtype, device=dev)
                          if cfg.replay_factor > 1 else None)  # fmt: skip
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
        self.env_steps = 0  # env steps observed
        self.seg_progress = 0.0  # budget fraction spent when this rollout began (lr / beta schedules)

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
                # A new episode starts from a zero LSTM state, as in training; under lstm_unroll
                # fused only a new evaluation does (its acting never resets at episode ends).
                if first is not None and (self.net.lstm_seq is None or bool(first.all())):
                    keep = (~first.to(self.device)).float().unsqueeze(1)  # [N, 1]
                    self.eval_state = (self.eval_state[0] * keep, self.eval_state[1] * keep)
            logits, _, self.eval_state = self.net.step(obs, self.eval_state)
            return logits.argmax(-1) if self.cfg.greedy_eval else sample(logits)
        if first is not None:
            self._cut(first)
        t, cols = self.t, self._cols(self.slot)
        if t == 0:
            self.seg_progress = self.ctx.budget_used(self.env_steps)
            if self.state is not None:
                self.h0[cols], self.c0[cols] = self.state
        logits, value, self.state = self.net.step(obs, self.state)  # [N, A], [N]
        action = sample(logits)  # [N]
        self.obs[t, cols] = obs
        self.actions[t, cols] = action
        self.logits[t, cols] = logits
        self.logp[t, cols] = logits.log_softmax(-1).gather(1, action[:, None]).squeeze(1)
        self.values[t, cols] = value
        return action

    def _cut(self, first: torch.Tensor) -> None:
        """The envs were reset without an episode end (a resume; ``first`` in :mod:`agents.api`):
        the observation after the last stored step is lost and ``obs`` begins new episodes. Drop
        that step (this act rewrites it) and make the step before it a truncation bootstrapped
        from V of the observation it did lead to (stored when acting on it), unless it already
        ended its episode; so no advantage or value target reaches across the break. The LSTM
        state restarts from zero."""
        if not bool(first.all()):
            raise ValueError("in training, act's first must be all True (the envs were reset) or None")
        if self.state is not None:
            self.state = (torch.zeros_like(self.state[0]), torch.zeros_like(self.state[1]))
        self.t = max(self.t - 1, 0)
        if self.t == 0:
            return  # nothing stored before the dropped step in this rollout
        t, cols = self.t, self._cols(self.slot)
        open_ = ~(self.terminated[t - 1, cols] | self.truncated[t - 1, cols])  # [N] episodes the cut ends
        self.trunc_values[t - 1, cols] = torch.where(open_, self.values[t, cols], self.trunc_values[t - 1, cols])
        self.trunc_entropy[t - 1, cols] = torch.where(open_, entropy(self.logits[t, cols]),
                                                      self.trunc_entropy[t - 1, cols])  # fmt: skip
        if self.final_obs is not None:  # to re-evaluate the two above once this rollout is stale
            o = open_.view(-1, *(1,) * (self.obs.dim() - 2))  # [N, 1, ...]
            self.final_obs[t - 1, cols] = torch.where(o, self.obs[t, cols], self.final_obs[t - 1, cols])
        self.truncated[t - 1, cols] |= open_
        self.dones[t - 1, cols] = True  # the LSTM state restarts at step t (unroll's starts)

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
            logits, value, _ = self.net.step(step.final_obs[idx], state)  # [n_trunc, A], [n_trunc]
            self.trunc_values[t, cols.start + idx] = value
            self.trunc_entropy[t, cols.start + idx] = entropy(logits)
            if self.final_obs is not None:
                self.final_obs[t, cols.start + idx] = step.final_obs[idx]
        if self.state is not None and self.net.lstm_seq is None:  # exact: zero state for a new episode
            keep = (~step.done).unsqueeze(-1).float()  # [N, 1]
            self.state = (self.state[0] * keep, self.state[1] * keep)
        self.t += 1
        self.env_steps += self.n
        if self.t == self.cfg.segment_length:
            self.next_obs[self.slot] = step.obs

    # -- learning -------------------------------------------------------------------------------

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
        progress = self.seg_progress  # at the rollout's start, as CleanRL anneals per iteration
        lr = self._lr(progress)
        for g in self.opt.param_groups:
            g["lr"] = lr
        targets = self._targets(fresh)
        stats = self._train(targets, progress, fresh)
        if self.net.norm is not None:
            # After training, so that a rollout is acted on and trained on with one normaliser; from
            # ~8192 of its observations (every k-th step), as a column reduction over all is slow.
            k = max(1, self.cfg.segment_length * self.n // 8192)
            self.net.norm.update(self.obs[::k, self._cols(fresh)].flatten(0, 1).float())
        return {**stats, "lr": lr, "progress": progress}

    @torch.no_grad()
    def _targets(self, fresh: int) -> dict[str, torch.Tensor]:
        """Advantages and value targets for the active columns at the current parameters."""
        cfg, n = self.cfg, self.n
        Ma = self.filled * n  # active columns: slots fill in order, so they are the first Ma
        starts = torch.zeros_like(self.dones)  # [T, M] the LSTM state resets before these steps
        starts[1:] = self.dones[:-1]
        last_values = torch.empty(Ma, device=self.device)  # [Ma] V(s_T) per column
        last_entropy = torch.empty(Ma, device=self.device)  # [Ma] H(pi(.|s_T)) per column
        for s in range(self.filled):
            cols = self._cols(s)
            state = self.state
            if s != fresh:  # stale rollout: re-evaluate logits, values and final observations at theta_0
                h0 = None if self.state is None else (self.h0[cols], self.c0[cols])
                logits, values, states = self.net.unroll(
                    self.obs[:, cols], h0, starts[:, cols], every_state=True
                )  # [T, N, A], [T, N], ([T, N, H] x 2 or None)
                self.logits[:, cols], self.values[:, cols] = logits, values
                self._reevaluate_truncations(cols, states)
                if states is not None:
                    keep = (~self.dones[-1, cols]).unsqueeze(-1).float()  # [N, 1]
                    state = (states[0][-1] * keep, states[1][-1] * keep)
            logits_T, last_values[cols], _ = self.net.step(self.next_obs[s], state)
            last_entropy[cols] = entropy(logits_T)

        a, fc = slice(0, Ma), self._cols(fresh)
        values, logp_mu = self.values[:, a], self.logp[:, a]  # [T, Ma]
        term, trunc = self.terminated[:, a], self.truncated[:, a]
        one = torch.ones((), device=self.device)
        logp_old, rho, c, rho_fresh, rho_stale = logp_mu, None, None, one, one  # K = 1: no correction
        if self.filled > 1:
            logp_all = self.logits[:, a].log_softmax(-1)  # [T, Ma, A]
            logp_old = logp_all.gather(-1, self.actions[:, a, None]).squeeze(-1)  # [T, Ma]
            logp_old[:, fc] = logp_mu[:, fc]  # the fresh rollout was acted on by theta_0 itself
            ratio = (logp_old - logp_mu).exp()  # [T, Ma] pi_theta_0 / mu
            rho, c = ratio.clamp(max=cfg.vtrace_rho_clip), ratio.clamp(max=cfg.vtrace_c_clip)  # [T, Ma]
            # On-policy data needs no correction: unclipped, the fresh targets are exactly K = 1's,
            # so K = 1 and K > 1 differ only in the stale rollouts (issue 15).
            rho[:, fc], c[:, fc] = 1.0, 1.0
            stale = torch.ones(Ma, dtype=torch.bool, device=self.device)  # [Ma]
            stale[fc] = False
            rho_fresh, rho_stale = rho[:, fc].mean(), rho[:, stale].mean()
            if not cfg.vtrace_correct:
                # The ablation: stale rollouts are treated as on-policy (GAE over values re-evaluated
                # at theta_0); rho_stale still logs the rho V-trace would have applied.
                rho, c = None, None

        rewards, bonus_mean, soft_mean = self.rewards[:, a], 0.0 * one, 0.0 * one
        if cfg.munchausen_alpha > 0 and cfg.munchausen_mode != "advantage_bonus":
            # reward_bonus: the acting policy's log mu as recorded; munchausen: log pi_theta_0, the
            # previous iterate M-RL regularises towards (the same on the fresh rollout).
            lp = logp_mu if cfg.munchausen_mode == "reward_bonus" else logp_old
            bonus = munchausen_bonus(lp, cfg.munchausen_alpha, cfg.munchausen_tau, cfg.munchausen_l0)
            rewards, bonus_mean = rewards + bonus, bonus.mean()
            if cfg.munchausen_mode == "munchausen":
                ent = entropy(self.logits[:, a])  # [T, Ma] H(pi_theta_0(.|s_t))
                next_ent = torch.cat([ent[1:], last_entropy[None]])  # [T, Ma] at the true next state
                next_ent = torch.where(trunc, self.trunc_entropy[:, a], next_ent)
                soft = soft_bootstrap(next_ent, term, cfg.gamma, cfg.munchausen_tau)  # [T, Ma]
                rewards, soft_mean = rewards + soft, soft.mean()
        next_values = torch.cat([values[1:], last_values[None]])  # [T, Ma]
        next_values = torch.where(trunc, self.trunc_values[:, a], next_values)
        if rho is None:
            adv = gae(rewards, values, next_values, term, trunc, cfg.gamma, cfg.gae_lambda)  # [T, Ma]
            returns = adv + values
        else:
            adv, returns = vtrace(
                rewards, values, next_values, term, trunc, cfg.gamma, cfg.gae_lambda, rho, c, cfg.vtrace_form
            )  # [T, Ma] x 2
        return {"adv": adv, "returns": returns, "logp_old": logp_old, "starts": starts[:, a],
                "bonus_mean": bonus_mean, "soft_mean": soft_mean, "rho_fresh": rho_fresh,
                "rho_stale": rho_stale}  # fmt: skip

    def _reevaluate_truncations(self, cols: slice, states: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """V and H of the final observations of a stale rollout's truncated steps, at the current
        parameters, from the LSTM state after each step (``states [T, N, H] x 2``, or None)."""
        t, j = self.truncated[:, cols].nonzero(as_tuple=True)  # [n_trunc] each
        if t.numel() == 0:
            return
        col = cols.start + j  # [n_trunc]
        state = None if states is None else (states[0][t, j], states[1][t, j])
        logits, value, _ = self.net.step(self.final_obs[t, col], state)  # [n_trunc, A], [n_trunc]
        self.trunc_values[t, col] = value
        self.trunc_entropy[t, col] = entropy(logits)

    def _minibatches(self, adv: torch.Tensor, beta: float, fresh: int):
        """Yield (rows, cols, importance weights [B] or None) for every minibatch of the update, all
        epochs, to index ``[T, M]`` storage as ``x[rows, cols] -> [L, B]``: whole segments (rows =
        every step, cols [B], L = T) in segment mode, else single transitions (rows, cols [1, B], L = 1).

        With K rollouts held, ``replay_minibatch`` "more" makes K x ``minibatches`` per epoch from one
        shuffle of everything; "larger" keeps ``minibatches`` per epoch, each with its share of the
        fresh rollout, split exactly as at K = 1 (its shuffles are drawn first, from the same random
        stream), and its share of the stale ones."""
        cfg, (T, Ma), seg = self.cfg, adv.shape, self.cfg.segments
        m = cfg.minibatches * (self.filled if cfg.replay_minibatch == "more" else 1)  # minibatches per epoch
        if cfg.prio_alpha > 0:
            for _ in range(cfg.epochs * m):
                cols, w = prioritised_segments(adv, Ma // m, cfg.prio_alpha, beta)
                yield slice(None), cols, w
            return

        def shuffles(cols: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
            """Per epoch, ``m`` chunks of a shuffle of the columns' units, as (rows, cols)."""
            C = cols.numel()
            out = []
            for _ in range(cfg.epochs):
                perm = torch.randperm(C if seg else T * C, device=self.device)
                chunks = perm.tensor_split(m)
                out.append([(u, cols[u]) if seg else ((u // C)[None], cols[u % C][None]) for u in chunks])
            return out

        every = torch.arange(Ma, device=self.device)  # [Ma]
        if self.filled == 1 or cfg.replay_minibatch == "more":
            plan = shuffles(every)
        else:
            fresh_plan = shuffles(every[fresh * self.n : (fresh + 1) * self.n])
            stale_plan = shuffles(every[every // self.n != fresh])
            plan = [[(torch.cat([rf, rs], -1), torch.cat([cf, cs], -1)) for (rf, cf), (rs, cs) in zip(ef, es)]
                    for ef, es in zip(fresh_plan, stale_plan)]  # fmt: skip
        for epoch in plan:
            for rows, cols in epoch:
                yield (slice(None) if seg else rows), cols, None

    def _train(self, tg: dict[str, torch.Tensor], progress: float, fresh: int) -> dict[str, Any]:
        cfg = self.cfg
        beta = cfg.prio_beta0 + (1.0 - cfg.prio_beta0) * progress
        a = slice(0, tg["adv"].shape[1])
        values_old, logits_old = self.values[:, a], self.logits[:, a]
        sums: dict[str, list[torch.Tensor]] = {}
        grad_steps = grad_samples = 0
        weigh_stale = self.filled > 1 and cfg.replay_stale_weight != 1.0
        for rows, cols, w in self._minibatches(tg["adv"], beta, fresh):
            state = None
            if self.net.lstm is not None:
                state = (self.h0[cols], self.c0[cols])  # segment mode: cols [B]
            new_logits, new_v, _ = self.net.unroll(self.obs[rows, cols], state, tg["starts"][rows, cols])
            logp_all = new_logits.log_softmax(-1)  # [L, B, A]
            logp = logp_all.gather(-1, self.actions[rows, cols, None]).squeeze(-1)  # [L, B]
            logratio = logp - tg["logp_old"][rows, cols]  # [L, B]
            ratio = logratio.exp()
            adv = tg["adv"][rows, cols]  # [L, B]
            lw = None  # [L, B] per-sample loss weights: fresh 1, stale replay_stale_weight
            if weigh_stale:
                lw = torch.where(cols // self.n == fresh, 1.0, cfg.replay_stale_weight).expand_as(logp)
            bonus = torch.zeros((), device=self.device)
            if cfg.munchausen_alpha > 0 and cfg.munchausen_mode == "advantage_bonus":
                bonus = munchausen_bonus(
                    logp.detach(), cfg.munchausen_alpha, cfg.munchausen_tau, cfg.munchausen_l0
                )  # [L, B]
                adv = adv + bonus
            if cfg.norm_adv:
                adv = normalise(adv, lw)
            if w is not None:
                adv = adv * w
            pg_loss, clip_frac = clipped_surrogate(ratio, adv, cfg.clip_coef, lw)
            v_old, v_target = values_old[rows, cols], tg["returns"][rows, cols]  # [L, B]
            v_loss = value_loss(new_v, v_old, v_target, cfg.vf_clip_coef, lw)
            ent = wmean(-(logp_all.exp() * logp_all).sum(-1), lw)
            old_all = logits_old[rows, cols].log_softmax(-1)  # [L, B, A]
            kl = wmean((old_all.exp() * (old_all - logp_all)).sum(-1), lw)  # exact KL(old || new)
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent + cfg.kl_coef * kl

            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
            self.opt.step()

            grad_steps += 1  # optimiser steps actually taken (the ledger's grad_steps)
            grad_samples += logp.numel()
            with torch.no_grad():
                approx_kl = ((ratio - 1.0) - logratio).mean()  # k3 estimator (CleanRL)
                one = torch.ones((), device=self.device)
                for k, v in (("loss", loss), ("pg_loss", pg_loss), ("v_loss", v_loss), ("entropy", ent),
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
            "munchausen_bonus_mean": float(tg["bonus_mean"]) + current,  # alpha*clip(tau*log pi), per mode
            "munchausen_soft_mean": float(tg["soft_mean"]),  # gamma*tau*H(pi(.|s')) (mode munchausen)
            "prio_beta": beta if cfg.prio_alpha > 0 else 0.0,
            "vtrace_rho_fresh": float(tg["rho_fresh"]),  # mean rho applied on the fresh rollout: 1 by design
            "vtrace_rho_stale": float(tg["rho_stale"]),  # 1.0 while no stale rollout is held
            "replay_rollouts": self.filled,
            "value_mean": float(values.mean()),
        }

    # -- checkpointing --------------------------------------------------------------------------

    _STORAGE = ("obs", "actions", "logits", "logp", "values", "rewards", "terminated", "truncated", "dones",
                "trunc_values", "trunc_entropy", "next_obs")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        s = {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
             "counters": {"t": self.t, "slot": self.slot, "filled": self.filled, "env_steps": self.env_steps,
                          "seg_progress": self.seg_progress},
             "storage": {k: getattr(self, k) for k in self._STORAGE}, "state": self.state}  # fmt: skip
        if self.cfg.lstm_hidden:
            s["storage"].update(h0=self.h0, c0=self.c0)
        if self.final_obs is not None:
            s["storage"]["final_obs"] = self.final_obs
        return s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
        for k, v in state["storage"].items():
            getattr(self, k).copy_(v)
        self.state = None if state["state"] is None else tuple(x.to(self.device) for x in state["state"])
