"""PQN, Parallelised Q-Network (Gallici et al. 2024, "Simplifying Deep Temporal Difference
Learning", arXiv:2407.04811): Q-learning with PPO's data pipeline. No replay buffer, no target
network; LayerNorm keeps the bootstrapped regression stable without them.

Read top to bottom: the config and its presets, the pure epsilon schedule, the network, then the
agent (act -> observe -> update). The Q(lambda) recursion is :func:`agents.returns.q_lambda`;
encoders (with their LayerNorm switch) are :mod:`agents.nets`.

Implementation details, each with its source (CleanRL ``cleanrl/pqn.py`` for classic control,
``cleanrl/pqn_atari_envpool.py`` for Atari; the authors' purejaxql ``purejaxql/pqn_gymnax.py``,
``pqn_atari.py``, ``pqn_minatar.py`` and ``config/alg/pqn_*.yaml``):

* Q-network: the encoder with a LayerNorm before every ReLU, then a linear layer to one value
  per action (CleanRL ``QNetwork``: MLP 120-84 or NatureCNN, LayerNorm after every hidden layer,
  convolutions included, normalised over [C, H, W]; purejaxql ``pqn_minatar.py``: one 3x3 conv and
  a 128 dense layer, :class:`agents.nets.MinAtarCNN`); orthogonal init with gain sqrt(2) on every
  layer, the output layer included (CleanRL's ``layer_init``); ``--no-layer-norm`` is the paper's
  ablation;
* rollouts of ``segment_length`` T steps from ``num_envs`` N envs, acted epsilon-greedily on the
  current network, which is not updated during the rollout; ``max_a Q(s_t, a)`` is stored while
  acting, so the targets need one extra forward only, on s_T (both references);
* Peng's Q(lambda) targets computed backwards once per rollout,
  ``G_t = r_t + gamma (1 - term_t) ((1 - lambda) max_a Q(s_{t+1}, a) + lambda G_{t+1})``,
  ``G_{T-1}`` bootstrapping from ``max_a Q(s_T, a)`` (purejaxql ``_get_target``, CleanRL's
  "Compute Q(lambda) targets");
* ``epochs`` passes over the T x N transitions in ``minibatches`` shuffled minibatches, each
  transition used once per epoch (CleanRL; purejaxql ``_learn_epoch``);
* loss ``0.5 * mean((Q(s_t, a_t) - G_t)^2)``, the squared error of purejaxql's ``_loss_fn``
  (CleanRL's ``F.mse_loss`` has no 0.5: the same direction, twice the gradient norm, which matters
  only against the clip); no Huber loss in either reference;
* global gradient-norm clip 10 before RAdam (purejaxql: ``optax.chain(clip_by_global_norm,
  radam)``, CleanRL: ``clip_grad_norm_`` then ``optim.RAdam``), RAdam's default epsilon 1e-8
  (CleanRL docs, detail 4); ``--optimizer adam`` for an Adam comparison;
* learning rate annealed linearly to 0 over the run's budget, set at each rollout's start
  (CleanRL ``anneal_lr``; purejaxql ``LR_LINEAR_DECAY``, off in its Atari config: ``--lr-schedule
  constant``); the budget fraction is ``AgentContext.budget_used``, so under a time budget the
  schedule depends on the machine's speed;
* epsilon annealed linearly from ``eps_start`` to ``eps_end`` over the first ``eps_fraction`` of
  the budget, then held (CleanRL ``linear_schedule``; purejaxql ``eps_scheduler``), read at each
  rollout's start as purejaxql does (CleanRL reads it every vector step); one draw per env
  chooses random or greedy; greedy evaluation (purejaxql ``EPS_TEST`` 0);
* rewards clipped to [-1, 1] in the learner for Atari (CleanRL / purejaxql ask envpool for
  ``reward_clip=True``), then scaled by ``reward_scale`` (purejaxql ``REW_SCALE``, 0.1 for
  CartPole).

Deviations from the references:

* a truncated step bootstraps from ``max_a Q(final_obs, a)`` and lets no lambda-credit cross the
  cut; both references treat a truncation as a termination (no bootstrap);
* a resumed run's first act (``first`` all True, :mod:`agents.api`) drops the last stored step,
  whose next observation the restarted envs lost, and makes the step before it a truncation
  bootstrapped from the max Q of the observation it led to (stored when acting on it), as PPO;
* Atari life loss reaches the learner as ``terminated`` only under the ``dqn`` protocol
  (envpool's ``episodic_life=True`` in both references ends the episode for the agent too);
* the MLP has ``mlp_layers`` equal widths (CleanRL: 120 then 84; purejaxql: 2 x 128 or 256);
* purejaxql normalises conv outputs per position over the channels (flax ``LayerNorm`` on
  [B, H, W, C]) and inits with He normal; we follow CleanRL ([C, H, W], orthogonal);
* optional running observation normalisation (``--norm-obs``, :class:`agents.nets.RunningNorm`,
  as PPO's): PufferLib Ocean's Breakout reports ball velocities of ~0.007, which an MLP does not
  see unscaled; updated from each rollout after the update, as PPO.

PRESETS: ``gym`` is CleanRL ``pqn.py`` (CartPole) with lr and lambda re-tuned, ``ale`` the defaults (CleanRL
``pqn_atari_envpool.py``), ``minatar`` purejaxql's ``pqn_minatar.yaml``, ``puffer`` ours for
PufferLib Ocean on a CPU; each value's source is beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.api import PRECISION_HELP, PRECISIONS, AgentContext, Param, opt
from agents.nets import RunningNorm, encoder_kind, layer_init, make_encoder
from agents.returns import q_lambda
from envs.base import EnvStep


@dataclass(frozen=True)
class Config:
    # Defaults: CleanRL pqn_atari_envpool.py (Breakout-v5, 10M env steps).
    num_envs: int = opt(8, "parallel environments", ge=1)
    segment_length: int = opt(128, "env steps per env per rollout: T, the Q(lambda) horizon", ge=1)
    epochs: int = opt(4, "passes over the rollout per update", ge=1)
    minibatches: int = opt(4, "minibatches per epoch", ge=1)
    lr: float = opt(2.5e-4, "optimizer step size at the start of training", gt=0)
    lr_schedule: str = opt("linear", "linear: decay to 0 over the budget (steps or time) | constant",
                           choices=("linear", "constant"))  # fmt: skip
    optimizer: str = opt("radam", "radam (both references) | adam", choices=("radam", "adam"))
    adam_eps: float = opt(1e-8, "(R)Adam epsilon (the references: the optimizer's default 1e-8)", gt=0)
    max_grad_norm: float = opt(10.0, "global gradient-norm clip", gt=0)
    gamma: float = opt(0.99, "discount", ge=0, le=1)
    q_lambda: float = opt(0.65, "lambda of the Q(lambda) targets (CleanRL, purejaxql Atari)", ge=0, le=1)
    eps_start: float = opt(1.0, "epsilon-greedy start", ge=0, le=1)
    eps_end: float = opt(0.01, "epsilon-greedy floor (CleanRL Atari: 0.01)", ge=0, le=1)
    eps_fraction: float = opt(0.1, "fraction of the budget over which epsilon decays linearly", ge=0, le=1)
    eval_epsilon: float = opt(0.0, "epsilon with explore=False (purejaxql EPS_TEST: 0)", ge=0, le=1)
    reward_clip: float = opt(1.0, "clamp rewards to [-c, c] in the learner; 0 = raw rewards", ge=0)
    reward_scale: float = opt(1.0, "multiply (clipped) rewards by this (purejaxql REW_SCALE)", gt=0)
    norm_obs: bool = opt(False, "normalise float observations by running mean / std (updated per rollout)")
    layer_norm: bool = opt(True, "LayerNorm before every hidden ReLU (PQN); off = the paper's ablation")
    encoder: str = opt("auto", "auto | mlp | nature | minatar, each layer-normalised (auto: MLP for vectors, "
                       "MinAtarCNN for images up to 16x16, NatureCNN for larger)",
                       choices=("auto", "mlp", "nature", "minatar"))  # fmt: skip
    hidden: int = opt(512, "encoder output width (NatureCNN's 512 FC; MinAtarCNN's FC; MLP width)", ge=1)
    mlp_layers: int = opt(2, "hidden layers of the MLP encoder", ge=1)
    precision: str = opt("fp32", PRECISION_HELP, choices=PRECISIONS)

    def __post_init__(self) -> None:
        if self.minibatches > self.num_envs * self.segment_length:
            raise ValueError(
                f"minibatches ({self.minibatches}) > transitions per rollout "
                f"({self.num_envs} x {self.segment_length}): some minibatches would be empty"
            )


# What `bench tune` searches (agents.api.Param): the knobs the equal-compute comparison turns on,
# with ranges wide enough to hold every preset below and the references' values.
SEARCH_SPACE: tuple[Param, ...] = (
    # 1e-4 (below CleanRL Atari's 2.5e-4) to 3e-3 (3x the gym / puffer presets' 1e-3), log.
    Param("lr", 1e-4, 3e-3, log=True),
    # the reuse knob: 1 to 8 epochs (references: 2 in purejaxql Atari, 4 in CleanRL).
    Param("epochs", 1, 8, kind="int"),
    # the horizon knob: 16 to 256 env steps per env per rollout (presets: 64, 128), log.
    Param("segment_length", 16, 256, log=True, kind="int"),
    # Q(lambda): 0.5 to 0.99 around CleanRL's 0.65 and purejaxql CartPole's 0.95.
    Param("q_lambda", 0.5, 0.99),
    # epsilon schedule: decay over 5% to 50% of the budget (CleanRL Atari 10%, CleanRL CartPole 50%).
    Param("eps_fraction", 0.05, 0.5),
    # network width: the presets' 128 and NatureCNN's 512, as powers of two.
    Param("hidden", choices=(64, 128, 256, 512)),
)


PRESETS: dict[str, dict[str, Any]] = {
    # CleanRL pqn.py (CartPole-v1, 500K env steps; docs: 495 +- 7) with a 4x larger step size and
    # purejaxql's lambda: at CleanRL's lr 2.5e-4 and lambda 0.65, 1 of 3 seeds reached a mean of
    # 475 within 300K env steps (IQM 340); with these, 3 of 3 by 140K (README).
    "gym": {
        "num_envs": 4,  # CleanRL
        "segment_length": 128,  # CleanRL num_steps
        "epochs": 4,  # CleanRL update_epochs
        "minibatches": 4,  # CleanRL num_minibatches
        "lr": 1e-3,  # ours (CleanRL: 2.5e-4), annealed linearly as CleanRL
        "eps_end": 0.05,  # CleanRL end_e
        "eps_fraction": 0.5,  # CleanRL exploration_fraction
        "q_lambda": 0.95,  # purejaxql pqn_cartpole.yaml (CleanRL: 0.65)
        "reward_clip": 0.0,  # CleanRL: raw rewards
        "encoder": "mlp",
        "hidden": 128,  # ours: 2 x 128 (CleanRL: 120, 84; purejaxql: 2 x 256)
        "mlp_layers": 2,
    },
    # PufferLib Ocean (puffer_breakout: 118 floats, ~1M env steps/s in C): PPO's puffer preset
    # sets the rollout (1024 envs x 64 steps), the rest is purejaxql's Atari config where it
    # carried over. Tuned on puffer_breakout, seed 1, 5M env steps: with lambda 0.65 and 8
    # minibatches of 8192 (PPO's), PQN settled at a score of ~7 ("run to one wall", as PPO did
    # with PufferLib's values); lambda 0.95 or 64 minibatches alone reached ~12-16, both ~60 and
    # rising (PPO's preset: ~20 at 2.6M env steps).
    "puffer": {
        "num_envs": 1024,  # PPO's puffer preset (PufferLib: env.num_envs 1024)
        "segment_length": 64,  # PPO's puffer preset (PufferLib: bptt_horizon 64)
        "epochs": 2,  # purejaxql pqn_atari.yaml NUM_EPOCHS
        "minibatches": 64,  # ours: 1024 per minibatch (purejaxql Atari: 32 of 128; PPO's: 8 of 8192)
        "lr": 1e-3,  # ours (purejaxql Atari: 2.5e-4)
        "lr_schedule": "linear",  # CleanRL
        "eps_end": 0.01,  # CleanRL Atari end_e
        "eps_fraction": 0.1,  # purejaxql / CleanRL Atari
        "q_lambda": 0.95,  # ours, PPO's GAE lambda (purejaxql / CleanRL Atari: 0.65)
        "reward_clip": 1.0,  # as PPO's puffer preset (PufferLib's trainer: clamp(r, -1, 1))
        "norm_obs": True,  # as PPO's puffer preset: ball velocities arrive as ~0.007
        "encoder": "mlp",
        "hidden": 128,  # PPO's puffer preset (PufferLib: hidden_size 128)
        "mlp_layers": 2,
    },
    # CleanRL pqn_atari_envpool.py: the defaults above (8 envs x 128 steps, 4 epochs x 4
    # minibatches, lr 2.5e-4 annealed, epsilon 1 -> 0.01 over 10%, lambda 0.65, clip 10).
    "ale": {},
    # purejaxql config/alg/pqn_minatar.yaml; its network is agents.nets.MinAtarCNN (16-channel 3x3
    # conv, 128 dense, both layer-normalised), which "auto" picks for MinAtar's 10x10 boards.
    "minatar": {
        "num_envs": 128,  # purejaxql NUM_ENVS
        "segment_length": 32,  # purejaxql NUM_STEPS
        "epochs": 2,  # purejaxql NUM_EPOCHS
        "minibatches": 32,  # purejaxql NUM_MINIBATCHES
        "lr": 5e-4,  # purejaxql LR, LR_LINEAR_DECAY True
        "eps_end": 0.05,  # purejaxql EPS_FINISH
        "eps_fraction": 0.1,  # purejaxql EPS_DECAY
        "q_lambda": 0.65,  # purejaxql LAMBDA
        "reward_clip": 0.0,  # purejaxql: raw MinAtar rewards
        "hidden": 128,  # purejaxql dense 128
    },
}


def epsilon_at(progress: float, start: float, end: float, fraction: float) -> float:
    """Linear from ``start`` at progress 0 to ``end`` at ``fraction`` of the budget, then ``end``
    (CleanRL ``linear_schedule``; ``fraction`` 0: ``end`` from the start)."""
    if fraction <= 0:
        return end
    return start + (end - start) * min(1.0, progress / fraction)


# ---------------------------------------------------------------------------------------------
# Network


class QNetwork(nn.Module):
    """(Optional observation normalisation) -> encoder with LayerNorm -> Q [B, A]. No target copy."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: Config):
        super().__init__()
        self.norm = RunningNorm(obs_shape) if cfg.norm_obs else None
        kind = encoder_kind(cfg.encoder, obs_shape)
        kw: dict[str, Any] = {"layer_norm": cfg.layer_norm}
        if kind == "mlp":
            kw["layers"] = cfg.mlp_layers
        self.encoder = make_encoder(kind, obs_shape, cfg.hidden, **kw)
        self.head = layer_init(nn.Linear(self.encoder.out_dim, num_actions))  # CleanRL: gain sqrt(2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # float32 out: losses and targets stay float32 under --precision bf16 (bench.precision)
        return self.head(self.encoder(obs if self.norm is None else self.norm(obs))).float()  # [B, A]


# ---------------------------------------------------------------------------------------------
# Agent


class Agent:
    def __init__(self, cfg: Config, ctx: AgentContext):
        self.cfg, self.ctx = cfg, ctx
        self.device, self.n, self.num_actions = ctx.device, ctx.num_envs, ctx.spec.num_actions
        self.net = QNetwork(ctx.spec.obs_shape, self.num_actions, cfg).to(self.device)
        optim = torch.optim.RAdam if cfg.optimizer == "radam" else torch.optim.Adam
        self.opt = optim(self.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps)

        T, N, dev = cfg.segment_length, self.n, self.device
        self.obs = torch.zeros(T, N, *ctx.spec.obs_shape, dtype=ctx.spec.obs_dtype, device=dev)
        self.actions = torch.zeros(T, N, dtype=torch.int64, device=dev)
        self.q_max = torch.zeros(T, N, device=dev)  # max_a Q(s_t, a) when acting on s_t
        self.rewards = torch.zeros(T, N, device=dev)  # clipped and scaled
        self.terminated = torch.zeros(T, N, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(T, N, dtype=torch.bool, device=dev)
        self.trunc_q = torch.zeros(T, N, device=dev)  # max_a Q(final_obs, a) where truncated
        self.next_obs = torch.zeros(N, *ctx.spec.obs_shape, dtype=ctx.spec.obs_dtype, device=dev)  # s_T
        self.t = 0  # step within the rollout being collected
        self.env_steps = 0  # env steps observed
        self.seg_progress = 0.0  # budget fraction spent when this rollout began (lr, epsilon)
        self.epsilon = cfg.eps_start

    # -- acting ---------------------------------------------------------------------------------

    def _epsilon_greedy(self, q: torch.Tensor, eps: float) -> torch.Tensor:
        action = q.argmax(-1)  # [N]
        if eps > 0:
            n = q.shape[0]
            explore = torch.rand(n, device=self.device) < eps  # [N]
            action = torch.where(explore, torch.randint(self.num_actions, (n,), device=self.device), action)
        return action

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, first: torch.Tensor | None = None) -> torch.Tensor:
        if not explore:
            return self._epsilon_greedy(self.net(obs), self.cfg.eval_epsilon)
        if first is not None:
            self._cut(first)
        t = self.t
        if t == 0:
            cfg = self.cfg
            self.seg_progress = self.ctx.budget_used(self.env_steps)
            self.epsilon = epsilon_at(self.seg_progress, cfg.eps_start, cfg.eps_end, cfg.eps_fraction)
        q = self.net(obs)  # [N, A]
        action = self._epsilon_greedy(q, self.epsilon)
        self.obs[t] = obs
        self.actions[t] = action
        self.q_max[t] = q.max(-1).values
        return action

    def _cut(self, first: torch.Tensor) -> None:
        """The envs were reset without an episode end (a resume; ``first`` in :mod:`agents.api`):
        the observation after the last stored step is lost and ``obs`` begins new episodes. Drop
        that step (this act rewrites it) and make the step before it a truncation bootstrapped
        from max Q of the observation it did lead to (stored when acting on it), unless it
        already ended its episode; so no target reaches across the break."""
        if not bool(first.all()):
            raise ValueError("in training, act's first must be all True (the envs were reset) or None")
        self.t = max(self.t - 1, 0)
        if self.t == 0:
            return  # nothing stored before the dropped step in this rollout
        t = self.t
        open_ = ~(self.terminated[t - 1] | self.truncated[t - 1])  # [N] episodes the cut ends
        self.trunc_q[t - 1] = torch.where(open_, self.q_max[t], self.trunc_q[t - 1])
        self.truncated[t - 1] |= open_

    @torch.no_grad()
    def observe(self, step: EnvStep) -> None:
        t, c = self.t, self.cfg.reward_clip
        reward = step.reward.clamp(-c, c) if c > 0 else step.reward
        self.rewards[t] = reward * self.cfg.reward_scale
        self.terminated[t] = step.terminated
        self.truncated[t] = step.truncated
        if step.truncated.any():  # bootstrap a time-limit cut from its true final observation
            idx = step.truncated.nonzero().squeeze(1)  # [n_trunc]
            self.trunc_q[t, idx] = self.net(step.final_obs[idx]).max(-1).values
        self.t += 1
        self.env_steps += self.n
        if self.t == self.cfg.segment_length:
            self.next_obs.copy_(step.obs)

    # -- learning -------------------------------------------------------------------------------

    def _lr(self, progress: float) -> float:
        return self.cfg.lr * (1.0 - progress) if self.cfg.lr_schedule == "linear" else self.cfg.lr

    @torch.no_grad()
    def targets(self) -> torch.Tensor:
        """Q(lambda) targets ``[T, N]`` of the stored rollout at the current parameters."""
        cfg = self.cfg
        last = self.net(self.next_obs).max(-1).values  # [N] max_a Q(s_T, a)
        next_q = torch.cat([self.q_max[1:], last[None]])  # [T, N] max_a Q(s_{t+1}, a)
        next_q = torch.where(self.truncated, self.trunc_q, next_q)  # of final_obs where cut
        return q_lambda(self.rewards, next_q, self.terminated, self.truncated, cfg.gamma, cfg.q_lambda)

    def update(self) -> dict[str, Any] | None:
        if self.t < self.cfg.segment_length:
            return None
        cfg = self.cfg
        self.t = 0
        lr = self._lr(self.seg_progress)  # at the rollout's start, as CleanRL anneals per iteration
        for g in self.opt.param_groups:
            g["lr"] = lr
        returns = self.targets().flatten()  # [T*N]
        obs, actions = self.obs.flatten(0, 1), self.actions.flatten()  # [T*N, *], [T*N]
        losses, q_means, norms = [], [], []
        grad_steps = grad_samples = 0
        for _ in range(cfg.epochs):
            for mb in torch.randperm(returns.numel(), device=self.device).tensor_split(cfg.minibatches):
                q = self.net(obs[mb]).gather(1, actions[mb, None]).squeeze(1)  # [B]
                loss = 0.5 * (q - returns[mb]).square().mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                norms.append(nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm))
                self.opt.step()
                grad_steps += 1
                grad_samples += mb.numel()  # each transition counted once per epoch that uses it
                losses.append(loss.detach())
                q_means.append(q.detach().mean())
        if self.net.norm is not None:
            # After training, so a rollout is acted on and trained on with one normaliser; from
            # ~8192 of its observations (every k-th step), as PPO.
            k = max(1, cfg.segment_length * self.n // 8192)
            self.net.norm.update(self.obs[::k].flatten(0, 1).float())
        means = [torch.stack(x).mean() for x in (losses, q_means, norms)] + [returns.mean()]
        loss, q_mean, grad_norm, target_mean = torch.stack(means).tolist()  # one device sync
        return {
            "grad_steps": grad_steps,
            "grad_samples": grad_samples,
            "loss": loss,
            "q_mean": q_mean,
            "target_mean": target_mean,
            "grad_norm": grad_norm,
            "lr": lr,
            "epsilon": self.epsilon,
            "progress": self.seg_progress,
        }

    # -- checkpointing --------------------------------------------------------------------------

    _STORAGE = ("obs", "actions", "q_max", "rewards", "terminated", "truncated", "trunc_q", "next_obs")

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "counters": {"t": self.t, "env_steps": self.env_steps, "seg_progress": self.seg_progress,
                             "epsilon": self.epsilon},
                "storage": {k: getattr(self, k) for k in self._STORAGE}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
        for k, v in state["storage"].items():
            getattr(self, k).copy_(v)
