"""Beyond The Rainbow (Clark et al. 2024, "Beyond The Rainbow: High Performance Deep Reinforcement
Learning on a Desktop PC", arXiv 2411.03820): Rainbow (:mod:`agents.rainbow`) with six changes,
vectorised over ``num_envs`` environments, with every change an ablation switch.

What BTR changes in Rainbow (all on by default, as in the paper):

* Impala torso, ``--no-impala`` (Espeholt et al. 2018): the IMPALA ResNet convolutions with the
  channels scaled ``x2`` (``--impala-width``); off, the NatureCNN convolutions (Mnih et al. 2015).
  On small images (MinAtar's 10x10) the Impala torso is :class:`agents.nets.SmallImpalaCNN` and
  "off" is MinAtar's one-conv torso (:class:`agents.nets.MinAtarCNN`). On vector observations the
  torso is an MLP and these three switches do nothing: :func:`inactive_options` lists them, and
  the harness warns and records them in config.json.
* adaptive max-pooling, ``--no-maxpool``: the last Impala feature map is max-pooled to 6x6
  (``--pool-size``), which fixes the feature size whatever the frame size (Clark et al. 2024).
* spectral normalisation, ``--no-spectral-norm`` (Miyato et al. 2018; Gogianu et al. 2021): on the
  residual convolutions of the Impala torso (:class:`agents.nets.ImpalaCNN`).
* IQN, ``--no-iqn`` (Dabney et al. 2018, "Implicit Quantile Networks"): the head maps features and
  a quantile level ``tau ~ U(0, 1)`` to the return quantile of every action. ``tau`` enters through
  64 cosines ``cos(pi i tau), i = 1..64`` (Dopamine's indexing; the paper's ``i = 0`` term is a
  constant the bias already gives), a linear layer + ReLU to the feature width and a Hadamard
  product with the torso features; the dueling noisy streams follow. ``N = N' = 8`` samples for
  the online and target nets, and 8 for acting (Clark et al. 2024). Loss: the quantile Huber loss
  with ``kappa = 1`` (Dabney et al. 2018, eq. 3), summed over online quantiles and averaged over
  target quantiles. Priority (``--priority``): ``abs_td``, the default, is BTR's
  ``sum_i mean_j |delta_ij|`` (:func:`quantile_td_priority`); ``loss`` the per-sample quantile
  Huber loss. Off: C51 as in Rainbow (Bellemare et al. 2017: 51 atoms on [-10, 10],
  cross-entropy to the projection, KL divergence as priority whatever ``--priority`` says).
* Munchausen, ``--no-munchausen`` (Vieillard et al. 2020, "Munchausen Reinforcement Learning",
  eq. 2 and its M-IQN variant): the target adds the scaled log-policy of the taken action,
  ``alpha * clip(tau_m * log pi(a|s), l0, 0)``, and bootstraps with the soft (log-sum-exp) value
  ``sum_a' pi(a'|s') (z(s', a') - tau_m log pi(a'|s'))`` per target quantile, where
  ``pi = softmax(q / tau_m)`` of a Q (the mean over the quantiles): at s' the target net's; at s,
  for the bonus, the online net's (``--munchausen-logpi online``, BTR's code) or the target
  net's (``target``, Vieillard et al. 2020 and Dopamine's M-IQN). ``tau_m = 0.03``,
  ``alpha = 0.9``, ``l0 = -1`` (Vieillard et al. 2020; Clark et al. 2024). The clip is on
  ``tau_m * log pi`` as in Vieillard et al. (eq. 2: ``[tau ln pi]_{l0}^0``). With n-step returns
  the bonus is that of the *first* action of the window only, and the soft bootstrap is taken
  ``n`` steps later (as BTR does); the actions inside the window get no entropy term. The soft
  bootstrap replaces Rainbow's double-Q max; off, IQN bootstraps from the double-Q action
  (``--double``, as Rainbow). With ``--no-iqn`` the same target is built for C51: the soft
  bootstrap is the ``pi``-mixture of the per-action target distributions, each shifted by
  ``-tau_m log pi(a'|s')``, projected onto the support one action at a time.
* vectorised acting and replay ratio: 64 envs, batch 256, one gradient step per 64 env steps
  (256 samples / 64 env steps = replay ratio 4), target copy every 500 gradient steps (Clark et
  al. 2024). The credit scheme and ledger are Rainbow's, unchanged.

Kept from Rainbow: dueling noisy streams (512 units, ``sigma0 = 0.5``), prioritised replay (now
``alpha = 0.2`` and a fixed importance-sampling exponent 0.2, see below), 3-step returns, reward
clipping to [-1, 1]
for Atari, gradient-norm clip 10, the torso/stream split (the 512-unit layers belong to the
streams; the Impala torso's FC layer is not used), the n-step windows cut at a resume
(:meth:`agents.replay.Replay.cut`).

Network: torso (MLP for vectors: PufferLib and gymnasium; Impala or NatureCNN convolutions for
images) -> [IQN tau embedding, Hadamard product] -> dueling noisy streams -> ``[B, T, A]``
quantiles (IQN) or ``[B, A, K]`` logits (C51).

Defaults are the paper's Atari values (Clark et al. 2024, appendix hyper-parameter table and the
released code, github.com/VIPTankz/BTR), in env steps (4 frames each) and gradient steps:

* Adam, lr 1e-4, eps 0.005 / batch = 1.95e-5; batch 256; gamma 0.997; 64 envs; replay ratio 4;
* learning starts after 100K env steps, not BTR's 200K: see the replay capacity below;
* epsilon-greedy on top of the noisy nets, decayed geometrically with ``S = 2M`` env steps (8M
  frames; 0.374 at 2M, 0.06 at 6M), switched off after 100M frames (25M env steps); without noisy
  nets it decays on towards the floor;
* replay capacity: the paper's 1M transitions would hold 28 GB of stacked 84x84 uint8 frames; the
  CPU default is 100K transitions (as Rainbow's); ``--buffer-size`` to change. BTR fills 200K of
  its 1M before learning; 200K into 100K would overwrite the first 100K transitions before any
  gradient step used them, so the default waits for 100K (one full buffer) and a config with
  ``learning_starts > buffer_size`` is refused. The ring keeps whole vector steps
  (``buffer_size // num_envs`` rows), so at most one vector step is overwritten at the start.

Details checked against BTR's code (github.com/VIPTankz/BeyondTheRainbowICML, ``Agent.py`` at
commit 67ce0fd and ``PER.py`` at 195fe22), each a switch whose other setting is what this file
did before:

* epsilon decay, ``--eps-decay geometric`` (default; ``EpsilonGreedy.update_eps``, once per
  stored transition: ``eps <- eps - (eps - 0.01) / 2M``, so ``0.01 + 0.99 (1 - 1/S)**t``,
  :func:`epsilon_schedule`) or ``linear`` (1 -> 0.01 over ``S``, as Rainbow). The paper's text
  reads as linear ("decayed over the first 8M frames"); the code is geometric.
* importance-sampling weights: BTR's ``PER.sample`` computes ``(N P(i))**-alpha`` normalised by the
  batch maximum, the exponent being the priority exponent 0.2, fixed (its comment: "originally this
  was an accident but actually performed better"): ``--per-beta 0.2`` (default). The paper's table
  lists beta annealed 0.45 -> 1, kept as ``--per-beta-anneal`` (``--per-beta0``; over the fraction
  of the run's budget spent, steps or time, as Rainbow's beta). Weights are
  normalised by the batch maximum either way (:func:`agents.replay.importance_weights`).
* IQN priority, ``--priority abs_td`` (default; ``loss_v = |td_error|.sum(1).mean(1)`` in
  ``learn_call``) or ``loss``. New transitions enter at the largest priority seen, priorities get
  ``+1e-6`` and the exponent alpha, as BTR's ``update_priorities``.
* Munchausen log-policy at s, ``--munchausen-logpi online`` (default; BTR's M-IQN branch calls
  ``self.net.qvals(states)``, the online net) or ``target`` (Vieillard et al. 2020). The online
  Q(s) is the mean of the quantiles the loss already computed (same noise, same tau samples):
  BTR's code draws fresh taus in a second online pass, an estimate of the same Q that costs one
  more forward.
* C51 support under ``--no-iqn``: BTR's code keeps ``[-10, 10]`` and 51 atoms with gamma 0.997
  (``Vmin, Vmax``), and so does the default. With rewards clipped to [-1, 1] a return can reach
  ``1 / (1 - 0.997) = 333`` in principle and the Munchausen bonus alone adds down to
  ``0.9 * -1 / (1 - 0.997) = -300``; the projection clamps such targets to the edge atoms, so
  values beyond +-10 saturate. Games whose discounted returns pass 10 want a wider support
  (``--v-min/--v-max``; at 51 atoms, +-100 gives 4 per atom) or IQN, which has no support.

Remaining deviations from BTR's code, each a choice made here:

* noise: the online net's noise is redrawn before every gradient step and every acting step;
  BTR redraws it only when acting (its update uses the last acting step's noise). The target
  net's noise is redrawn per update in both.
* epsilon is switched off at a fixed ``eps_off_steps`` (25M env steps); BTR switches it off at
  half the run's frame budget (the same 25M for its 200M-frame runs).
* evaluation epsilon 0.001 (Dopamine), where BTR's evaluation uses 0.01.
* ``--no-iqn`` priority: the KL divergence (Hessel et al. 2018); BTR's C51 branch uses the
  IS-weighted cross-entropy.
* ``learning_starts`` 100K instead of 200K (above) and replay 100K instead of 1M transitions
  (``--buffer-size 1000000 --learning-starts 200000`` restores BTR's where memory allows).

Evaluation (``explore=False``) uses the noise-free mean weights and epsilon 0.001 (Dopamine's
``epsilon_eval``, as Rainbow), and never touches replay or schedules.

PRESETS: ``ale`` is the paper; ``puffer`` and ``gym`` are tuned for fast CPU learning, with the
reasoning next to them; ``minatar`` is BTR's scheme on the small Impala torso, with MinAtar's
discount and replay size.

Speed: as :mod:`agents.rainbow` (flat parameters and noise; ``--compile``, ``auto`` by default,
makes each gradient step one compiled graph, :mod:`agents.fused`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agents.api import PRECISION_HELP, PRECISIONS, AgentContext, Param, opt
from agents.fused import FusedStep, resolve_compile
from agents.heads import QHead, bind_noise, categorical_projection, reset_noise
from agents.nets import MLP, ConvTorso, encoder_kind, flatten_parameters, make_encoder
from agents.replay import Batch, Replay
from envs.base import EnvSpec, EnvStep


@dataclass(frozen=True)
class Config:
    # Vectorisation and reuse
    num_envs: int = opt(64, "parallel environments (Clark et al. 2024: 64)", ge=1)
    batch_size: int = opt(256, "transitions per gradient step (Clark et al. 2024)", ge=1)
    replay_ratio: float = opt(4.0, "gradient samples per env step; BTR: 256 every 64 env steps = 4", gt=0)
    learning_starts: int = opt(
        100_000, "env steps before learning, at most buffer_size (BTR: 200K into a 1M buffer; see docs)", ge=0
    )
    buffer_size: int = opt(100_000, "replay capacity in transitions (paper 1M; CPU default, see docs)", ge=1)
    # Optimisation
    lr: float = opt(1e-4, "Adam step size (Clark et al. 2024)", gt=0)
    adam_eps: float = opt(0.005 / 256, "Adam epsilon, 0.005 / batch (Clark et al. 2024)", gt=0)
    max_grad_norm: float = opt(10.0, "global gradient-norm clip, 0 = off (Clark et al. 2024)", ge=0)
    gamma: float = opt(0.997, "discount per env step (Clark et al. 2024)", ge=0, le=1)
    target_update: int = opt(500, "gradient steps between target-net copies (Clark et al. 2024)", ge=1)
    # Components (each an ablation switch)
    impala: bool = opt(True, "Impala ResNet torso for images (Espeholt et al. 2018); off = NatureCNN")
    spectral_norm: bool = opt(True, "spectral norm on the Impala residual convs (Clark et al. 2024)")
    maxpool: bool = opt(True, "adaptive max-pool of the last Impala feature map (Clark et al. 2024)")
    iqn: bool = opt(True, "implicit quantile head (Dabney et al. 2018); off = C51 (Rainbow)")
    munchausen: bool = opt(True, "Munchausen target, soft bootstrap (Vieillard et al. 2020)")
    double: bool = opt(True, "double Q-learning bootstrap action, only with --no-munchausen (Rainbow)")
    dueling: bool = opt(True, "dueling value/advantage streams (Wang et al. 2016)")
    per: bool = opt(True, "prioritised replay (Schaul et al. 2016); off = uniform")
    n_step: int = opt(3, "multi-step return length; 1 = one-step (Clark et al. 2024: 3)", ge=1)
    noisy: bool = opt(True, "noisy linear layers (Fortunato et al. 2018)")
    # Component settings
    impala_width: int = opt(2, "Impala channel multiplier (Clark et al. 2024: 2)", ge=1)
    pool_size: int = opt(6, "side of the adaptive max-pool output (Clark et al. 2024: 6)", ge=1)
    num_taus: int = opt(8, "IQN quantile samples, online N = target N' = acting K (Clark et al. 2024)", ge=1)
    num_cosines: int = opt(64, "IQN cosine embedding size (Dabney et al. 2018)", ge=1)
    kappa: float = opt(1.0, "quantile Huber threshold (Dabney et al. 2018)", gt=0)
    munchausen_tau: float = opt(0.03, "Munchausen entropy temperature (Vieillard et al. 2020)", gt=0)
    munchausen_alpha: float = opt(0.9, "Munchausen log-policy scale (Vieillard et al. 2020)", ge=0)
    munchausen_l0: float = opt(-1.0, "lower clip of tau * log pi (Vieillard et al. 2020)", le=0)
    munchausen_logpi: str = opt(
        "online", "net whose Q(s) gives the bonus's log pi(a|s): online (BTR's code) or target "
        "(Vieillard et al. 2020)", choices=("online", "target"),
    )  # fmt: skip
    per_alpha: float = opt(0.2, "priority exponent alpha (Clark et al. 2024)", ge=0)
    per_beta: float = opt(0.2, "fixed importance-sampling exponent (BTR's code: 0.2, its alpha)", ge=0, le=1)
    per_beta_anneal: bool = opt(False, "anneal the IS exponent per_beta0 -> 1 (Clark et al. 2024, table)")
    per_beta0: float = opt(0.45, "initial IS exponent with --per-beta-anneal (Clark et al. 2024)", ge=0, le=1)
    priority: str = opt(
        "abs_td", "IQN priority: abs_td = sum_i mean_j |delta_ij| (BTR's code), loss = quantile Huber loss",
        choices=("abs_td", "loss"),
    )  # fmt: skip
    atoms: int = opt(51, "C51 support size, only with --no-iqn (Bellemare et al. 2017)", ge=2)
    v_min: float = opt(-10.0, "lowest return on the C51 support (--no-iqn; BTR's code, see docs for gamma)")
    v_max: float = opt(10.0, "highest return on the C51 support (--no-iqn; BTR's code, see docs for gamma)")
    noisy_sigma0: float = opt(0.5, "initial noise scale sigma0 (Fortunato et al. 2018, factorised)", ge=0)
    eps_start: float = opt(1.0, "epsilon-greedy start (BTR keeps it with noisy nets)", ge=0, le=1)
    eps_end: float = opt(0.01, "epsilon-greedy floor (Clark et al. 2024)", ge=0, le=1)
    eps_decay: str = opt(
        "geometric", "epsilon decay: geometric per transition (BTR's code) or linear to the floor (Rainbow)",
        choices=("geometric", "linear"),
    )  # fmt: skip
    eps_decay_steps: int = opt(
        2_000_000, "env steps S: geometric time constant or linear length (8M frames, Clark et al. 2024)", ge=1
    )
    eps_off_steps: int = opt(25_000_000, "env steps after which epsilon is 0 with noisy nets (100M frames)",
                             ge=0)  # fmt: skip
    eval_epsilon: float = opt(0.001, "epsilon when acting with explore=False (Dopamine)", ge=0, le=1)
    # Rewards as the learner sees them (the env never clips)
    reward_clip: float = opt(1.0, "clip rewards to [-c, c] before storing; 0 = off (Mnih et al. 2015)", ge=0)
    reward_scale: float = opt(1.0, "multiply (clipped) rewards by this before storing", gt=0)
    # Network
    hidden: int = opt(512, "MLP torso width (vector observations)", ge=1)
    mlp_layers: int = opt(2, "MLP torso depth", ge=0)
    head_hidden: int = opt(512, "hidden units in each value/advantage stream; 0 = one layer", ge=0)
    # Speed
    compile: str = opt("auto", "torch.compile each gradient step into one graph (agents.fused) and the "
                       "acting forward: on, off, or auto (on for runs of >= 2M env steps or >= 5 min)",
                       choices=("auto", "on", "off"))  # fmt: skip
    precision: str = opt("fp32", PRECISION_HELP, choices=PRECISIONS)

    def __post_init__(self):
        if self.n_step < 1:
            raise ValueError("n_step must be >= 1")
        if self.num_taus < 1 or self.num_cosines < 1:
            raise ValueError("IQN needs num_taus >= 1 and num_cosines >= 1")
        if self.munchausen and self.munchausen_tau <= 0:
            raise ValueError("munchausen_tau must be > 0")
        if not self.iqn and not (self.atoms >= 2 and self.v_max > self.v_min):
            raise ValueError("C51 needs atoms >= 2 and v_max > v_min")
        if self.learning_starts > self.buffer_size:
            # The ring would overwrite the first transitions before a single gradient step used them.
            raise ValueError(
                f"learning_starts {self.learning_starts} > buffer_size {self.buffer_size}: the first "
                f"{self.learning_starts - self.buffer_size} transitions would be overwritten before "
                "learning starts"
            )


# What `bench tune` searches (agents.api.Param): the knobs the equal-compute comparison turns on,
# with ranges wide enough to hold every preset below and the paper's values.
SEARCH_SPACE: tuple[Param, ...] = (
    # 3e-5 (below the paper's 1e-4) to 3e-3 (3x the gym preset's 1e-3), log.
    Param("lr", 3e-5, 3e-3, log=True),
    # the reuse knob: 1 to 16 gradient samples per env step (the paper and every preset: 4), log.
    Param("replay_ratio", 1.0, 16.0, log=True),
    # the horizon knob: 1-step to 10 (the paper: 3).
    Param("n_step", 1, 10, kind="int"),
    # target copies every 30 (gym preset) to 4000 (8x the paper's 500) updates, log.
    Param("target_update", 30, 4000, log=True, kind="int"),
    # epsilon schedule: geometric time constant 10K env steps to the paper's 2M, log.
    Param("eps_decay_steps", 10_000, 2_000_000, log=True, kind="int"),
    # network width of the MLP torso (vector observations): the presets' 128 and the default 512.
    Param("hidden", choices=(64, 128, 256, 512)),
)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Atari agent: the Config defaults.
    "ale": {},
    # PufferLib Ocean (breakout: 118 floats, bricks worth 1-7 points): BTR's own 64 envs, batch
    # 256 and replay ratio 4 (one update per vector step, the target copy every 500 updates =
    # 32K env steps), with Rainbow's puffer adjustments for an MLP on vector states: lr 5e-4,
    # learning after 10K env steps, a 1M buffer (472 MB of float32 observations), single-layer
    # streams (head_hidden 0: IQN runs the head on batch x 8 quantile rows, and the 128-unit
    # hidden layers doubled the update's cost on this CPU). gamma 0.99 as Rainbow's preset: a brick
    # is tens of steps away. Epsilon decays geometrically with time constant 100K env steps (0.37
    # at 100K, 0.06 at 300K) and is off after 1M, where noise alone explores (the paper's schedule
    # scaled to a minutes-long run). The other BTR details (fixed IS exponent, |delta| priority,
    # online log-policy) are the defaults', not tuned here.
    "puffer": {
        "num_envs": 64, "batch_size": 256, "replay_ratio": 4.0, "learning_starts": 10_000,
        "buffer_size": 1_000_000, "lr": 5e-4, "gamma": 0.99, "hidden": 128, "head_hidden": 0,
        "eps_decay_steps": 100_000, "eps_off_steps": 1_000_000,
    },  # fmt: skip
    # gymnasium classic control (CartPole: +1 per step, 500-step cap): Rainbow's gym preset, with
    # rewards scaled by 0.1 (Q near 10 at gamma 0.99, the scale tau_m = 0.03 was set for: clipped
    # Atari rewards). At one update of 128 per 32 env steps, a target copy every 30 updates (~1K
    # env steps) lets the value propagate over CartPole's 100-step horizon within ~50K env steps;
    # Rainbow's 250 left it at a ~160-step plateau at 100K (seed 1). Epsilon decays geometrically
    # with time constant 20K env steps (0.37 at 20K, 0.02 at 100K), off after 100K.
    "gym": {
        "num_envs": 8, "batch_size": 128, "replay_ratio": 4.0, "learning_starts": 5_000,
        "buffer_size": 100_000, "lr": 1e-3, "gamma": 0.99, "target_update": 30, "reward_clip": 0.0,
        "reward_scale": 0.1, "hidden": 128, "head_hidden": 128, "eps_decay_steps": 20_000,
        "eps_off_steps": 100_000,
    },  # fmt: skip
    # MinAtar (10x10 boards): BTR's acting and replay scheme with the Impala torso sized for small
    # images (agents.nets.SmallImpalaCNN), scaled to a CPU and to MinAtar's shorter horizons.
    "minatar": {
        "num_envs": 64, "batch_size": 256, "replay_ratio": 4.0,  # Clark et al. 2024
        "impala_width": 1,  # ours (BTR: 2): SmallImpalaCNN x1 is ~2.4M MACs per sample, x2 four times that
        "pool_size": 3,  # ours: the 5x5 map max-pooled to 3x3 (BTR pools Atari's 11x11 to 6x6)
        "head_hidden": 128,  # Young & Tian 2019: the 128-unit layer, here in each stream
        "gamma": 0.99,  # Young & Tian 2019; Obando-Ceron & Castro 2021 (BTR: 0.997 for Atari)
        "buffer_size": 100_000,  # Obando-Ceron & Castro 2021: replay_capacity 100000
        "learning_starts": 10_000,  # ours: as the puffer preset (BTR: 200K of 1M)
        "eps_decay_steps": 100_000, "eps_off_steps": 1_000_000,  # ours: the puffer preset's scaled schedule
    },  # fmt: skip
}


def inactive_options(cfg: Config, spec: EnvSpec) -> list[str]:
    """The options that change nothing with ``cfg`` on ``spec``'s observations (the harness warns
    and records them): on vectors the torso is an MLP, so every image-torso switch; on images the
    MLP's sizes (the conv torsos' FC layer is not used, see ``ConvTorso``), the Impala settings
    without the Impala torso, and the pool size without max-pooling."""
    if encoder_kind("auto", spec.obs_shape) == "mlp":
        return ["impala", "impala_width", "maxpool", "pool_size", "spectral_norm"]
    out = ["hidden", "mlp_layers"]
    if not cfg.impala:
        out += ["impala_width", "maxpool", "pool_size", "spectral_norm"]
    elif not cfg.maxpool:
        out.append("pool_size")
    return out


def cosine_embedding(taus: torch.Tensor, num_cosines: int) -> torch.Tensor:
    """IQN's embedding of quantile levels (Dabney et al. 2018, eq. 4): ``taus`` [B, T] ->
    ``cos(pi i tau)`` for ``i = 1..num_cosines`` (Dopamine's indexing), [B, T, C]."""
    i = torch.arange(1, num_cosines + 1, device=taus.device, dtype=taus.dtype)  # [C]
    return torch.cos(math.pi * i * taus.unsqueeze(-1))  # [B, T, C]


class QuantileHead(nn.Module):
    """IQN head: features [B, D] and quantile levels [B, T] -> return quantiles [B, T, A].

    ``phi(tau) = ReLU(Linear(cos(pi i tau)))`` has the feature width ``D``; the Hadamard product
    ``features * phi(tau)`` feeds Rainbow's (dueling, noisy) :class:`agents.heads.QHead` with one
    output per action (Dabney et al. 2018, sec. 3.1; the streams as Clark et al. 2024)."""

    def __init__(
        self,
        in_dim: int,
        num_actions: int,
        hidden: int,
        dueling: bool,
        noisy: bool,
        sigma0: float,
        num_cosines: int,
    ):
        super().__init__()
        self.num_cosines = num_cosines
        self.tau_embed = nn.Sequential(nn.Linear(num_cosines, in_dim), nn.ReLU())
        self.q = QHead(in_dim, num_actions, 1, hidden, dueling, noisy, sigma0)

    def forward(self, x: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        phi = self.tau_embed(cosine_embedding(taus, self.num_cosines))  # [B, T, D]
        return self.q(x.unsqueeze(1) * phi).squeeze(-1)  # [B, T, A]


class QNetwork(nn.Module):
    """obs [B, *obs_shape] (and taus [B, T] for IQN) -> IQN quantiles [B, T, A] or C51 logits
    [B, A, K]."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__()
        if encoder_kind("auto", spec.obs_shape) == "mlp":  # not an image
            self.torso: nn.Module = MLP(spec.obs_shape, cfg.hidden, cfg.mlp_layers)
        elif cfg.impala:  # ImpalaCNN; SmallImpalaCNN on small images (MinAtar)
            pool = cfg.pool_size if cfg.maxpool else 0
            kw = {"width": cfg.impala_width, "pool": pool, "spectral_norm": cfg.spectral_norm}
            self.torso = ConvTorso(make_encoder("impala", spec.obs_shape, cfg.hidden, **kw))
        else:  # NatureCNN; MinAtarCNN on small images
            self.torso = ConvTorso(make_encoder("auto", spec.obs_shape, cfg.hidden))
        d, a = self.torso.out_dim, spec.num_actions
        if cfg.iqn:
            self.head: nn.Module = QuantileHead(
                d, a, cfg.head_hidden, cfg.dueling, cfg.noisy, cfg.noisy_sigma0, cfg.num_cosines
            )
        else:
            self.head = QHead(d, a, cfg.atoms, cfg.head_hidden, cfg.dueling, cfg.noisy, cfg.noisy_sigma0)

    def forward(self, obs: torch.Tensor, taus: torch.Tensor | None = None) -> torch.Tensor:
        x = self.torso(obs)  # [B, D]
        out = self.head(x) if taus is None else self.head(x, taus)  # [B, A, K] or [B, T, A]
        return out.float()  # float32 under --precision bf16 (bench.precision)


def q_values(out: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    """Network output -> Q [B, A]: the mean over the IQN quantiles [B, T, A] (``support`` None),
    or the mean of the C51 distribution [B, A, K]."""
    if support is None:
        return out.mean(1)
    return (out.softmax(-1) * support).sum(-1)


def at_action(z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """IQN quantiles [B, T, A] of the actions ``action`` [B] -> [B, T]."""
    return z.gather(2, action.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(2)


def bootstrap_actions(
    next_online: torch.Tensor | None, next_target: torch.Tensor, support: torch.Tensor | None
) -> torch.Tensor:
    """a* [B] for the hard (non-Munchausen) target: argmax of the online net's Q(s') when double
    Q-learning (``next_online`` given; van Hasselt et al. 2016), else of the target net's."""
    return q_values(next_online if next_online is not None else next_target, support).argmax(-1)


def quantile_huber_loss(
    pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Per-sample quantile Huber loss (Dabney et al. 2018, eq. 3). ``pred`` [B, N] online
    quantiles at levels ``taus`` [B, N]; ``target`` [B, N'] target samples. With
    ``delta_ij = target_j - pred_i``: ``sum_i mean_j |tau_i - 1{delta_ij < 0}| L_kappa(delta_ij) / kappa``,
    ``L_kappa`` the Huber loss. Returns [B] (also the priority)."""
    delta = target.unsqueeze(1) - pred.unsqueeze(2)  # [B, N, N']
    abs_delta = delta.abs()
    huber = torch.where(abs_delta <= kappa, 0.5 * delta**2, kappa * (abs_delta - 0.5 * kappa))  # [B, N, N']
    weight = (taus.unsqueeze(2) - (delta.detach() < 0).to(delta.dtype)).abs()  # [B, N, N']
    return (weight * huber / kappa).mean(2).sum(1)  # [B]


def munchausen_bonus(
    q: torch.Tensor, action: torch.Tensor, tau: float, alpha: float, l0: float
) -> torch.Tensor:
    """``alpha * clip(tau * log pi(a|s), l0, 0)`` [B] with ``pi = softmax(q / tau)`` from the
    target net's Q ``q`` [B, A] (Vieillard et al. 2020, eq. 2)."""
    log_pi = F.log_softmax(q / tau, dim=-1)  # [B, A]
    return alpha * (tau * log_pi.gather(1, action.unsqueeze(1)).squeeze(1)).clamp(l0, 0.0)  # [B]


def munchausen_iqn_target(
    reward: torch.Tensor,
    discount: torch.Tensor,
    action: torch.Tensor,
    q: torch.Tensor,
    next_z: torch.Tensor,
    tau: float,
    alpha: float,
    l0: float,
) -> torch.Tensor:
    """M-IQN target samples [B, N'] (Vieillard et al. 2020, eq. 2 per quantile):
    ``reward + bonus(a|s) + discount * sum_a' pi(a'|s') (z_j(s', a') - tau log pi(a'|s'))``.
    ``reward`` [B] the n-step return, ``discount`` [B] (``gamma**n``, 0 after termination),
    ``q`` [B, A] target-net Q at s, ``next_z`` [B, N', A] target-net quantiles at s'."""
    log_pi = F.log_softmax(next_z.mean(1) / tau, dim=-1).unsqueeze(1)  # [B, 1, A]
    soft = (log_pi.exp() * (next_z - tau * log_pi)).sum(-1)  # [B, N'] soft (log-sum-exp) value
    bonus = munchausen_bonus(q, action, tau, alpha, l0)  # [B]
    return (reward + bonus).unsqueeze(1) + discount.unsqueeze(1) * soft  # [B, N']


def munchausen_c51_target(
    reward: torch.Tensor,
    discount: torch.Tensor,
    action: torch.Tensor,
    q: torch.Tensor,
    next_logits: torch.Tensor,
    support: torch.Tensor,
    tau: float,
    alpha: float,
    l0: float,
) -> torch.Tensor:
    """Munchausen target distribution for C51 [B, K] (``--no-iqn``). The soft bootstrap
    ``sum_a' pi(a') (Z(s', a') - tau log pi(a'))`` is a mixture: action ``a'`` contributes its
    target distribution shifted by ``-tau log pi(a')`` with weight ``pi(a')``. Each component is
    projected with :func:`agents.heads.categorical_projection` and the projections mixed.
    ``next_logits`` [B, A, K] target-net logits at s'; ``q`` [B, A] target-net Q at s."""
    b, a, k = next_logits.shape
    log_pi = F.log_softmax(q_values(next_logits, support) / tau, dim=-1)  # [B, A]
    base = reward + munchausen_bonus(q, action, tau, alpha, l0)  # [B]
    shift = base.unsqueeze(1) - discount.unsqueeze(1) * tau * log_pi  # [B, A] returns per component
    m = categorical_projection(
        next_logits.softmax(-1).reshape(b * a, k), shift.reshape(-1), discount.repeat_interleave(a), support
    ).view(b, a, k)  # [B, A, K]
    return (log_pi.exp().unsqueeze(-1) * m).sum(1)  # [B, K]


def c51_loss(
    logits: torch.Tensor, target: torch.Tensor, support: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``--no-iqn``: C51 loss for the taken actions' ``logits`` [B, K] against the projected
    ``target`` distribution [B, K] (Munchausen or plain). Returns per-sample cross-entropy [B]
    (Bellemare et al. 2017), the KL divergence used as priority [B] (Hessel et al. 2018), and the
    predicted Q of the taken action [B] (a diagnostic)."""
    logp = logits.log_softmax(-1)  # [B, K]
    ce = -(target * logp).sum(-1)  # [B]
    kl = (torch.special.xlogy(target, target).sum(-1) + ce).detach()  # [B] = CE - H(target) >= 0
    q = (logp.detach().exp() * support).sum(-1)  # [B]
    return ce, kl, q


def quantile_td_priority(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BTR's priority (``--priority abs_td``): ``sum_i mean_j |delta_ij|`` with ``delta_ij =
    target_j - pred_i``, the mean absolute quantile TD error summed over the online quantiles.
    ``pred`` [B, N], ``target`` [B, N'] -> [B] (BTR's code, Agent.learn_call ``loss_v``)."""
    return (target.unsqueeze(1) - pred.unsqueeze(2)).abs().mean(2).sum(1)  # [B]


# --- schedules: pure functions of env steps (transitions summed over the envs) ------------------
def epsilon_schedule(env_steps: int, start: float, end: float, decay_steps: int, decay: str) -> float:
    """Exploration epsilon after ``env_steps`` transitions.

    ``geometric`` (BTR's code, ``EpsilonGreedy.update_eps`` once per stored transition:
    ``eps <- eps - (eps - end) / S``): ``end + (start - end) * (1 - 1/S)**env_steps``, so at
    ``env_steps = S`` it has covered ``1 - 1/e`` of the way (1 -> 0.374 at 2M for BTR's S = 2M)
    and it never quite reaches the floor. ``linear`` (Rainbow, Dopamine): ``start -> end`` over
    ``S`` env steps, then the floor."""
    if decay == "geometric":
        return end + (start - end) * (1.0 - 1.0 / decay_steps) ** env_steps
    frac = min(1.0, env_steps / decay_steps)
    return start + frac * (end - start)


def beta_schedule(progress: float, beta0: float) -> float:
    """Importance-sampling exponent annealed linearly ``beta0 -> 1`` over the run (Schaul et al.
    2016; ``--per-beta-anneal``): ``progress`` is the fraction of the run's budget spent, of
    whichever ends first, env steps or training time (``AgentContext.budget_used``)."""
    return beta0 + progress * (1.0 - beta0)


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.ctx, self.spec, self.device, self.n = cfg, ctx, ctx.spec, ctx.device, ctx.num_envs
        self.online = QNetwork(ctx.spec, cfg).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self._noise_online, self._noise_target = bind_noise(self.online), bind_noise(self.target)
        self.flat = flatten_parameters(self.online)  # [P] all online parameters; .grad [P]
        self.opt = torch.optim.Adam([self.flat], lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        # [K] C51 atoms z_i (--no-iqn); None for the IQN head
        support = torch.linspace(cfg.v_min, cfg.v_max, cfg.atoms, device=self.device)
        self.support = None if cfg.iqn else support
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

    # --- schedules (functions of env steps) ---------------------------------------------------
    def epsilon(self) -> float:
        cfg = self.cfg
        if cfg.noisy and self.env_steps >= cfg.eps_off_steps:
            return 0.0  # noise alone explores from here (Clark et al. 2024)
        return epsilon_schedule(self.env_steps, cfg.eps_start, cfg.eps_end, cfg.eps_decay_steps, cfg.eps_decay)

    def beta(self) -> float:
        """The importance-sampling exponent: fixed ``per_beta`` (BTR's code), or annealed."""
        if not self.cfg.per_beta_anneal:
            return self.cfg.per_beta
        return beta_schedule(self.ctx.budget_used(self.env_steps), self.cfg.per_beta0)

    def taus(self, batch: int) -> torch.Tensor | None:
        """Quantile levels [batch, num_taus] ~ U(0, 1) for IQN, None for C51."""
        return torch.rand(batch, self.cfg.num_taus, device=self.device) if self.cfg.iqn else None

    # --- acting ---------------------------------------------------------------------------------
    def _greedy_eager(self, obs: torch.Tensor) -> torch.Tensor:
        return q_values(self.online(obs, self.taus(obs.shape[0])), self.support).argmax(-1)  # [N]

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
    def bootstrap(self, batch: Batch, q_online: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target, computed without gradients: samples [B, N'] for IQN, a distribution on the
        support [B, K] for C51; and the Munchausen bonus of the taken actions [B] (zeros without
        Munchausen), a diagnostic. Munchausen: the soft value at s' from the target net, and the
        bonus's log pi(a|s) from ``q_online`` [B, A] (the online net's Q(s), detached: BTR's code)
        or, with ``--munchausen-logpi target``, from the target net's Q(s) in the same pass as s'.
        Without Munchausen: the double-Q (or target-net) action at s'. Uses the current noise."""
        cfg, bsz = self.cfg, batch.obs.shape[0]
        r, d = batch.reward, batch.discount  # [B] n-step return, gamma**n (0 after a termination)
        with torch.no_grad():
            if cfg.munchausen:
                m = cfg.munchausen_tau, cfg.munchausen_alpha, cfg.munchausen_l0
                if cfg.munchausen_logpi == "target":
                    both = self.target(torch.cat([batch.obs, batch.next_obs]), self.taus(2 * bsz))  # [2B, ...]
                    q_s, next_target = q_values(both[:bsz], self.support), both[bsz:]  # [B, A]; s' outputs
                else:
                    q_s, next_target = q_online, self.target(batch.next_obs, self.taus(bsz))  # [B, A]; s'
                bonus = munchausen_bonus(q_s, batch.action, *m)  # [B]
                if cfg.iqn:
                    return munchausen_iqn_target(r, d, batch.action, q_s, next_target, *m), bonus  # [B, N']
                target = munchausen_c51_target(r, d, batch.action, q_s, next_target, self.support, *m)
                return target, bonus  # [B, K], [B]
            no_bonus = torch.zeros_like(r)  # [B]
            next_target = self.target(batch.next_obs, self.taus(bsz))  # [B, N', A] or [B, A, K]
            next_online = self.online(batch.next_obs, self.taus(bsz)) if cfg.double else None
            a_star = bootstrap_actions(next_online, next_target, self.support)  # [B]
            if cfg.iqn:
                return r.unsqueeze(1) + d.unsqueeze(1) * at_action(next_target, a_star), no_bonus  # [B, N']
            p_next = next_target[torch.arange(bsz, device=self.device), a_star].softmax(-1)  # [B, K]
            return categorical_projection(p_next, r, d, self.support), no_bonus  # [B, K]

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(importance-weighted mean loss, per-sample priority [B], diagnostics [4]: means of the
        predicted Q of the taken actions, the priority, the IS weight and the Munchausen bonus)."""
        taus = self.taus(batch.obs.shape[0])  # [B, N] (None for C51)
        out = self.online(batch.obs, taus)  # [B, N, A] or [B, A, K]
        target, bonus = self.bootstrap(batch, q_values(out.detach(), self.support))  # online Q(s) [B, A]
        if self.cfg.iqn:
            taken = at_action(out, batch.action)  # [B, N]
            per_sample = quantile_huber_loss(taken, target, taus, self.cfg.kappa)  # [B]
            q = taken.detach().mean(1)  # [B]
            if self.cfg.priority == "abs_td":
                priority = quantile_td_priority(taken.detach(), target)  # [B] BTR's code
            else:
                priority = per_sample.detach()  # [B]
        else:
            taken = out[torch.arange(out.shape[0], device=self.device), batch.action]  # [B, K]
            per_sample, priority, q = c51_loss(taken, target, self.support)
        diag = torch.stack([q.mean(), priority.mean(), batch.weight.mean(), bonus.mean()])  # [4]
        return (batch.weight * per_sample).mean(), priority, diag  # IS-weighted (Schaul et al. 2016)

    def _sample_loss_eager(self, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Draw a batch and compute :meth:`loss` on it: (loss, priority [B], diagnostics [4], slot
        ids [B]). ``beta`` is a 0-d tensor so a compiled graph does not specialise on its value."""
        batch = self.replay.sample(self.cfg.batch_size, beta)
        return *self.loss(batch), batch.idx

    def _learn_step(self, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        beta_t = torch.tensor(beta, dtype=torch.float64, device=self.device)
        loss, diag = self._step(beta_t)  # noise, draw, loss, gradient, clip, Adam, priorities
        self.grad_steps += 1
        if self.grad_steps % cfg.target_update == 0:
            self.target.load_state_dict(self.online.state_dict())
        return loss.detach(), diag

    def update(self) -> dict[str, Any] | None:
        steps = int(self.credit)
        if steps == 0:
            return None
        self.credit -= steps
        # progress: what an annealed beta follows, read with it
        beta, progress = self.beta(), self.ctx.budget_used(self.env_steps)
        loss, diag = torch.zeros((), device=self.device), torch.zeros(4, device=self.device)
        for _ in range(steps):
            step_loss, step_diag = self._learn_step(beta)
            loss, diag = loss + step_loss, diag + step_diag
        means = (torch.cat([loss.view(1), diag]) / steps).tolist()  # this call's one host sync
        loss_mean, q_mean, priority_mean, weight_mean, bonus_mean = means
        metrics = {
            "grad_steps": steps,
            "grad_samples": steps * self.cfg.batch_size,
            "loss": loss_mean,
            "q_mean": q_mean,  # predicted Q of the sampled actions
            "epsilon": self.epsilon(),
            "progress": progress,
        }
        if self.cfg.per:
            metrics |= {"beta": beta, "is_weight_mean": weight_mean, "priority_mean": priority_mean}
        if self.cfg.munchausen:
            metrics["munchausen_bonus"] = bonus_mean  # mean alpha * clip(tau log pi(a|s), l0, 0)
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
