"""Replay memory for vectorised off-policy agents (Rainbow, BTR): STYLE.md principle 4.

Three pieces, all torch tensors on one device, no per-item Python loop in the hot path:

* :func:`n_step_return`: the pure n-step target function (Sutton 1988; Hessel et al. 2018 eq. 2)
  over a window of rewards, stopping at the first episode end.
* :class:`SumTree`: a *wide* sum tree (fan-out ``K``, 128 by default) stored as one tensor per
  level. Proportional sampling (Schaul et al. 2016, sec. 3.3 and appendix B.2.1) descends it for a
  whole batch at once: at each level a ``[B, K]`` gather, a cumsum and a ``searchsorted``. With
  ``K = 128`` two million leaves need 3 levels, so an update or a batched draw is a few dozen
  small tensor ops whatever the capacity (on CPU the number of ops is what costs time). Parent
  sums are recomputed from their children (not patched with deltas), so float64 sums never drift.
* :class:`Replay`: a ring of ``T = capacity // num_envs`` rows by ``num_envs`` columns. Row ``t``
  holds, for every env, the observation the agent acted on at vector step ``t``
  (:meth:`Replay.store_obs`, called from ``act``) and the outcome of that step (action, reward,
  terminated, truncated; :meth:`Replay.store_outcome`, called from ``observe``). A transition is
  identified by its slot ``row * num_envs + env``; its n-step window is the next ``n`` rows of
  the same column, so n-step returns are assembled at sample time and *each observation is
  stored once*. Where an episode ends inside the window the return stops there (per env):
  ``terminated`` gives discount 0, ``truncated`` bootstraps from the true final observation.
  Those final observations are the only thing that cannot live in the ring (the next row holds
  the reset observation of the new episode), so they go to a small ring of their own
  (``final_capacity``, by default ``capacity // 16`` plus a safety margin): the memory cost is
  about ``(1 + 1/16) x`` one copy of the observations, where storing ``next_obs`` explicitly would
  cost ``2 x``. If that small ring wraps before the main one, the transitions whose window ends at
  the evicted final observation get priority 0 (never sampled again) rather than a wrong target.
  Observations keep their dtype: Atari frames stay ``uint8``.

Sampling, uniform or prioritised, always goes through the tree: a transition is samplable iff its
leaf is positive. A slot gets its priority when its window is complete (the observation ``n``
rows later has been stored), and priority 0 the moment its row is overwritten, so incomplete and
stale windows are never drawn. Uniform replay stores 1 for every complete slot; prioritised replay
stores ``p**alpha`` with new transitions at the largest priority seen so far (Schaul et al. 2016,
Algorithm 1 line 6). Draws are stratified: ``B`` equal segments of the total mass, one uniform
draw in each (Schaul et al. 2016, appendix B.2.1). Importance weights ``(P(i))**-beta`` are
normalised by the batch maximum (as Dopamine and CleanRL do; the paper normalises by the global
maximum, which needs a min-tree and only rescales the step size).

Typical use inside an agent::

    rb = Replay(capacity, num_envs, spec.obs_shape, spec.obs_dtype, n_step=3, gamma=0.99,
                prioritized=True, alpha=0.5, device=device)
    rb.cut()                                             # in act, first all True: envs reset (resume)
    rb.store_obs(obs)                                    # in act(explore=True): copies obs
    rb.store_outcome(action, reward, step.terminated, step.truncated, step.final_obs)  # observe
    if rb.num_samplable > 0:
        batch = rb.sample(256, beta=0.4)                 # Batch of [B, ...] tensors
        ...
        rb.update_priorities(batch.idx, per_sample_loss)  # no-op for uniform replay
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def n_step_return(
    rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n-step discounted return over a window that stops at the first episode end.

    ``rewards``, ``terminated``, ``truncated``: [B, n] for steps ``t .. t+n-1`` of one env.
    Returns ``(ret, discount, last)``, each [B]:

    * ``ret = sum_{k <= last} gamma**k * r_{t+k}``;
    * ``last``: index of the step the window stops at: the first ``k`` with ``terminated`` or
      ``truncated``, else ``n - 1``;
    * ``discount``: the bootstrap factor ``gamma**(last + 1)``, or 0 if the window stops at a
      termination. The bootstrap observation is the one after step ``last``: the next stored
      observation, or the true final observation when the window stopped at a truncation.
    """
    n = rewards.shape[1]
    ended = terminated | truncated  # [B, n]
    ended_i = ended.to(torch.int64)
    included = (ended_i.cumsum(1) - ended_i) == 0  # [B, n] no episode end strictly before k
    pows = gamma ** torch.arange(n, device=rewards.device, dtype=torch.float32)  # [n]
    ret = (rewards.float() * included * pows).sum(1)  # [B]
    has_end = ended.any(1)  # [B]
    last = torch.where(has_end, ended_i.argmax(1), n - 1)  # [B] argmax returns the first end
    term_last = terminated.gather(1, last.unsqueeze(1)).squeeze(1)  # [B]
    discount = (gamma ** (last.float() + 1.0)) * (~term_last)  # [B]
    return ret, discount, last


def importance_weights(prob: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Importance-sampling weights ``P(i)**-beta / max_batch P(j)**-beta`` [B] float32 for the
    sampling probabilities ``prob`` [B] of a drawn batch (Schaul et al. 2016, sec. 3.4, normalised
    by the batch maximum as Dopamine, CleanRL and BTR's code do). The paper's ``(N P(i))**-beta``
    differs by the factor ``N**-beta``, which the normalisation cancels."""
    w = prob.pow(-beta)  # [B]
    return (w / w.max()).float()


class SumTree:
    """Sum tree with fan-out ``fanout`` over ``capacity`` non-negative leaves (float64).

    ``levels[0]`` is the root ``[1]``, ``levels[-1]`` the leaves, each level padded to a multiple
    of ``fanout`` so that ``levels[l].view(-1, fanout)[j]`` are the children of node ``j`` of
    level ``l - 1``.
    """

    def __init__(self, capacity: int, fanout: int = 128, device: torch.device | str = "cpu"):
        if capacity < 1 or fanout < 2:
            raise ValueError("SumTree needs capacity >= 1 and fanout >= 2")
        self.capacity, self.fanout = capacity, fanout
        sizes = []
        n = capacity
        while True:
            sizes.append(math.ceil(n / fanout) * fanout)
            n = math.ceil(n / fanout)
            if n == 1:
                break
        sizes.append(1)
        self.levels = [torch.zeros(s, dtype=torch.float64, device=device) for s in reversed(sizes)]

    @property
    def leaves(self) -> torch.Tensor:
        return self.levels[-1][: self.capacity]

    @property
    def total(self) -> torch.Tensor:
        """Sum of all leaves, a 0-d tensor (no host sync)."""
        return self.levels[0][0]

    def update(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Set leaves ``idx`` [M] to ``values`` [M] and recompute their ancestors. With repeated
        indices one of the values wins (callers pass equal values for equal indices)."""
        self.levels[-1][idx] = values.to(torch.float64)
        k = self.fanout
        for lvl in range(len(self.levels) - 2, -1, -1):
            idx = idx // k
            self.levels[lvl][idx] = self.levels[lvl + 1].view(-1, k)[idx].sum(-1)  # [M]

    def update_range(self, start: int, values: torch.Tensor) -> None:
        """Set the contiguous leaves ``start .. start + M - 1`` to ``values`` [M] and recompute
        their ancestors, with slices instead of gathers (the ring writes whole rows: a third of
        the time of :meth:`update` for one row on CPU)."""
        end = start + values.shape[0]
        self.levels[-1][start:end] = values
        k = self.fanout
        for lvl in range(len(self.levels) - 2, -1, -1):
            start, end = start // k, (end - 1) // k + 1
            self.levels[lvl][start:end] = self.levels[lvl + 1].view(-1, k)[start:end].sum(-1)

    def find(self, mass: torch.Tensor) -> torch.Tensor:
        """Leaf index for each prefix mass in ``mass`` [B] (``0 <= mass < total``): the ``i`` with
        ``sum(leaves[:i]) <= mass < sum(leaves[:i+1])``. Never returns a zero leaf while
        ``total > 0``: a mass at or past the end (rounding) is clamped into the last positive leaf.
        """
        k = self.fanout
        mass = mass.to(torch.float64)
        zero = mass.new_zeros(())
        node = torch.zeros(mass.shape, dtype=torch.int64, device=mass.device)  # [B]
        for lvl in range(1, len(self.levels)):
            children = self.levels[lvl].view(-1, k)[node]  # [B, K]
            cums = children.cumsum(-1)  # [B, K]
            # Keep mass strictly below this subtree's total so searchsorted picks a positive child.
            mass = torch.minimum(mass, torch.nextafter(cums[:, -1], zero))
            j = torch.searchsorted(cums, mass.unsqueeze(-1), right=True)  # [B, 1]
            mass = mass - (cums - children).gather(1, j).squeeze(1)  # minus the mass left of j
            node = node * k + j.squeeze(1)
        return node

    def sample(self, batch_size: int) -> torch.Tensor:
        """Stratified proportional draw of ``batch_size`` leaf indices [B] (Schaul et al. 2016,
        appendix B.2.1): one uniform draw in each of ``B`` equal segments of the total mass.
        Uses the global torch RNG."""
        dev = self.levels[0].device
        strata = torch.arange(batch_size, device=dev, dtype=torch.float64)  # [B]
        u = (strata + torch.rand(batch_size, device=dev, dtype=torch.float64)) / batch_size  # [B]
        return self.find(u * self.total)

    def state_dict(self) -> dict[str, Any]:
        return {"leaves": self.levels[-1].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        leaves = state["leaves"].to(self.levels[-1].device)
        self.update(torch.arange(leaves.numel(), device=leaves.device), leaves)


_STORAGE = ("obs", "action", "reward", "terminated", "truncated", "final_slot", "final_obs", "final_owner")


@dataclass
class Batch:
    """A sampled minibatch; ``B`` transitions, each an n-step window of one env."""

    idx: torch.Tensor  # [B] int64 slot ids (row * num_envs + env), for update_priorities
    obs: torch.Tensor  # [B, *obs_shape] storage dtype (uint8 frames stay uint8)
    action: torch.Tensor  # [B] int64
    reward: torch.Tensor  # [B] float32 n-step discounted return sum_k gamma**k r_{t+k}
    discount: torch.Tensor  # [B] float32 bootstrap factor gamma**k, 0 after a termination
    next_obs: torch.Tensor  # [B, *obs_shape] bootstrap observation (true final obs on truncation)
    weight: torch.Tensor  # [B] float32 importance weights, max 1 (all ones for uniform replay)


class Replay:
    """Ring-buffer replay for ``num_envs`` parallel envs with per-env n-step windows.

    Args:
        capacity: transitions kept (rounded down to a multiple of ``num_envs``).
        num_envs: columns; every store call carries one entry per env.
        obs_shape, obs_dtype: per-env observation shape and storage dtype.
        n_step: window length ``n`` (1 = one-step targets).
        gamma: discount used by :func:`n_step_return`.
        prioritized: proportional prioritised replay (Schaul et al. 2016) instead of uniform.
        alpha: priority exponent; leaves hold ``(priority + eps)**alpha``.
        priority_eps: added to priorities so no sampled transition becomes unreachable.
        final_capacity: slots for true final observations of truncated steps; default
            ``max(capacity // 16, num_envs * (n_step + 1))``; at least ``num_envs * (n_step + 1)``
            so a final observation always outlives the windows that are completed with it.
        fanout: sum tree fan-out.
        device: where every tensor lives.
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.5,
        priority_eps: float = 1e-6,
        final_capacity: int | None = None,
        fanout: int = 128,
        device: torch.device | str = "cpu",
    ):
        rows = capacity // num_envs
        if rows <= n_step + 1:
            raise ValueError(
                f"replay capacity {capacity} gives {rows} rows per env; need more than n_step + 1"
            )
        min_final = num_envs * (n_step + 1)
        final_capacity = max(capacity // 16, min_final) if final_capacity is None else final_capacity
        if final_capacity < min_final:
            raise ValueError(f"final_capacity must be at least num_envs * (n_step + 1) = {min_final}")
        self.rows, self.num_envs, self.n_step, self.gamma = rows, num_envs, n_step, gamma
        self.prioritized, self.alpha, self.priority_eps = prioritized, alpha, priority_eps
        self.device = torch.device(device)
        dev = self.device
        self.obs = torch.zeros(rows, num_envs, *obs_shape, dtype=obs_dtype, device=dev)
        self.action = torch.zeros(rows, num_envs, dtype=torch.int64, device=dev)
        self.reward = torch.zeros(rows, num_envs, dtype=torch.float32, device=dev)
        self.terminated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        self.final_slot = torch.full((rows, num_envs), -1, dtype=torch.int64, device=dev)  # -1: none
        self.final_obs = torch.zeros(final_capacity, *obs_shape, dtype=obs_dtype, device=dev)
        self.final_owner = torch.full((final_capacity,), -1, dtype=torch.int64, device=dev)  # slot id
        self.tree = SumTree(rows * num_envs, fanout, dev)
        self.max_priority = torch.ones((), dtype=torch.float64, device=dev)  # Schaul: p_1 = 1
        self.steps = 0  # vector steps stored (rows written, counting wrap-arounds)
        self._final_ptr = 0
        self._window = torch.arange(n_step, device=dev)
        self._window_offsets = self._window * num_envs  # slot offsets of a window's rows
        self._zeros = torch.zeros(num_envs, dtype=torch.float64, device=dev)

    @property
    def capacity(self) -> int:
        return self.rows * self.num_envs

    @property
    def num_samplable(self) -> int:
        """Transitions with a complete window (a host-side count, no sync). Slots dropped after
        a final-observation eviction are still counted; they are just never drawn."""
        return min(max(self.steps - self.n_step, 0), self.rows - self.n_step) * self.num_envs

    def _new_priority(self) -> torch.Tensor:
        if not self.prioritized:
            return self._zeros + 1.0
        return self.max_priority.pow(self.alpha).expand(self.num_envs)

    def store_obs(self, obs: torch.Tensor) -> None:
        """Copy the observations ``[N, *obs_shape]`` acted on at this vector step into the ring.
        Overwriting a row retires its old transitions; the window that started ``n`` rows ago
        is now complete and becomes samplable. Calling it twice before :meth:`store_outcome`
        just overwrites the same row."""
        row = self.steps % self.rows
        self.obs[row].copy_(obs)
        self.final_slot[row] = -1
        self.tree.update_range(row * self.num_envs, self._zeros)  # slots of row: retired
        if self.steps >= self.n_step:
            done_row = (self.steps - self.n_step) % self.rows
            self.tree.update_range(done_row * self.num_envs, self._new_priority())  # window complete

    def store_outcome(
        self,
        action: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        final_obs: torch.Tensor | None = None,
    ) -> None:
        """Record the outcome of this vector step (all ``[N]``; ``final_obs`` [N, *obs_shape] is
        read only where ``truncated & ~terminated``) and advance to the next row. ``reward`` is
        whatever the learner trains on (already clipped or scaled)."""
        row = self.steps % self.rows
        self.action[row] = action
        self.reward[row] = reward
        self.terminated[row] = terminated
        self.truncated[row] = truncated
        need = truncated & ~terminated  # [N]
        if final_obs is not None and bool(need.any()):
            self._store_final(row, need.nonzero().squeeze(1), final_obs)
        self.steps += 1

    def cut(self) -> None:
        """Break every env's stream after the stored steps: the envs were reset without an episode
        end (a resumed run), so the observation that followed the last stored step is lost and the
        next :meth:`store_obs` begins a new episode. The last step is dropped (the next
        :meth:`store_obs` rewrites its row) and the step before it becomes a truncation that
        bootstraps from the observation it led to (still in the dropped row; copied to the final
        observations), where it did not already end an episode. So no n-step window spans the
        break and none loses its true next observation; the cost is one vector step of
        transitions. The window that the rewritten row completes re-enters at the maximum
        priority (its target is unchanged)."""
        if self.steps == 0:
            return
        self.steps -= 1
        if self.steps == 0:
            return
        row, prev = self.steps % self.rows, (self.steps - 1) % self.rows
        open_ = ~(self.terminated[prev] | self.truncated[prev])  # [N] streams the cut ends
        if bool(open_.any()):
            self.truncated[prev] |= open_
            self._store_final(prev, open_.nonzero().squeeze(1), self.obs[row])

    def _store_final(self, row: int, envs: torch.Tensor, final_obs: torch.Tensor) -> None:
        cap = self.final_obs.shape[0]
        slots = (self._final_ptr + torch.arange(envs.numel(), device=self.device)) % cap  # [M]
        owner = self.final_owner[slots]  # [M] previous owners' slot ids
        live = owner >= 0
        live &= self.final_slot.view(-1)[owner.clamp(min=0)] == slots  # still referenced
        if bool(live.any()):
            # Windows ending at an evicted final obs would bootstrap from garbage: retire them.
            owner = owner[live]
            o_row, o_env = owner // self.num_envs, owner % self.num_envs
            rows = (o_row.unsqueeze(1) - self._window) % self.rows  # [M', n]
            dead = (rows * self.num_envs + o_env.unsqueeze(1)).reshape(-1)
            self.tree.update(dead, torch.zeros_like(dead, dtype=torch.float64))
            self.final_slot.view(-1)[owner] = -1
        self.final_obs[slots] = final_obs[envs]
        self.final_owner[slots] = row * self.num_envs + envs
        self.final_slot[row, envs] = slots
        self._final_ptr = (self._final_ptr + envs.numel()) % cap

    def gather(self, idx: torch.Tensor) -> Batch:
        """Assemble the n-step transitions for slot ids ``idx`` [B] (weights are ones)."""
        n_envs, size = self.num_envs, self.rows * self.num_envs
        # Flat slot arithmetic: slot + k * num_envs is the same env k rows later (mod the ring).
        window = (idx.unsqueeze(1) + self._window_offsets) % size  # [B, n]
        rewards = self.reward.view(-1)[window]  # [B, n]
        terminated, truncated = self.terminated.view(-1)[window], self.truncated.view(-1)[window]  # [B, n]
        ret, discount, last = n_step_return(rewards, terminated, truncated, self.gamma)
        end = (idx + last * n_envs) % size  # [B] slot the window stops at
        obs = self.obs.view(size, *self.obs.shape[2:])
        next_obs = obs[(end + n_envs) % size]  # [B, *obs_shape]
        fslot = self.final_slot.view(-1)[end]  # [B] >= 0 only where that step was truncated
        # fslot >= 0 already implies truncated & ~terminated at `end` (see store_outcome); the
        # window stops there only if it ended there, which `last` says. Always computed (no
        # "any truncation?" branch): no host sync, and one graph under torch.compile.
        use_final = (fslot >= 0) & self.truncated.view(-1)[end]  # [B]
        final = self.final_obs[fslot.clamp(min=0)]  # [B, *obs_shape]
        next_obs = torch.where(use_final.view(-1, *([1] * (next_obs.dim() - 1))), final, next_obs)
        return Batch(
            idx=idx,
            obs=obs[idx],
            action=self.action.view(-1)[idx],
            reward=ret,
            discount=discount,
            next_obs=next_obs,
            weight=torch.ones(idx.shape[0], device=self.device),
        )

    def sample(self, batch_size: int, beta: float | torch.Tensor = 0.0) -> Batch:
        """Draw ``batch_size`` transitions (proportionally to priority, or uniformly) with
        importance weights ``(P(i))**-beta / max`` (ones for uniform replay). Requires
        ``num_samplable > 0``."""
        idx = self.tree.sample(batch_size)  # [B]
        batch = self.gather(idx)
        if self.prioritized:
            prob = self.tree.levels[-1][idx] / self.tree.total  # [B]
            batch.weight = importance_weights(prob, beta)
        return batch

    def update_priorities(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        """Set raw priorities [B] (e.g. |TD error| or the distributional loss) for slots ``idx``.
        No-op for uniform replay."""
        if not self.prioritized:
            return
        p = priorities.detach().to(torch.float64) + self.priority_eps  # [B]
        self.max_priority = torch.maximum(self.max_priority, p.max())
        self.tree.update(idx, p.pow(self.alpha))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in _STORAGE}
        return state | {
            "tree": self.tree.state_dict(),
            "max_priority": self.max_priority,
            "steps": self.steps,
            "final_ptr": self._final_ptr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in _STORAGE:
            getattr(self, name).copy_(state[name])
        self.tree.load_state_dict(state["tree"])
        self.max_priority = state["max_priority"].to(self.device, torch.float64).clone()
        self.steps, self._final_ptr = int(state["steps"]), int(state["final_ptr"])
