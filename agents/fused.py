"""One gradient step of a replay agent (Rainbow, BTR) as one compiled graph: STYLE.md principle 4.

The eager step is ~15 separate calls: two noise draws, the replay draw and loss (one compiled
region before this module existed), ``backward``, the gradient clip, ``Adam.step`` and the
priority update. Each call is a Python round trip and a boundary no kernel fusion crosses, and on
a 2-core CPU those round trips, not the matmuls, were most of an update (README, "Speed").
:class:`FusedStep` writes the same step as one pure function of tensors and hands it to
``torch.compile(fullgraph=True)``:

* the gradient comes from ``torch.func.grad_and_value`` over the agent's flat parameter tensor
  (:func:`agents.nets.flatten_parameters`): the module's parameters are swapped for views of
  that tensor for the call (``torch.func.functional_call``), so the loss code is the agent's own
  ``sample_loss`` unchanged;
* clipping and Adam are written out (the formulas of :func:`agents.nets.clip_grad_norm` and of
  ``torch.optim.Adam`` with ``fused=True``: ``m <- lerp(m, g, 1 - b1)``,
  ``v <- b2 v + (1 - b2) g^2``, ``p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)``) on the
  optimizer's own state tensors, so ``opt.state_dict()``, checkpoints and the eager path keep
  working and a run may switch between the paths (the meter's FLOP count runs one step eagerly);
* the step counter is a tensor, so nothing in the graph specialises on its value.

What stays outside: the target-net copy (a host-side counter says when) and the reported
metrics. Under a dispatch mode (the meter's FLOP counter) the eager reference path runs instead.

Compiling costs 10-30 s the first time a shape is seen (cached on disk afterwards), so
:func:`resolve_compile` turns ``auto`` on only for runs long enough to repay it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from agents.heads import reset_noise
from agents.nets import clip_grad_norm

# ``auto`` compiles for runs at least this long (either budget): ~20 s of compiling is then at
# most a few percent of the run. Shorter runs (tests, smoke runs) stay eager.
AUTO_MIN_ENV_STEPS = 2_000_000
AUTO_MIN_SECONDS = 300.0


def resolve_compile(choice: str, total_env_steps: int | None, time_budget_s: float | None) -> bool:
    """``on``/``off`` as given; ``auto``: on when the run is long whichever budget ends it: every
    budget given reaches :data:`AUTO_MIN_ENV_STEPS` env steps or :data:`AUTO_MIN_SECONDS` of
    training time (a run with neither, driven by hand, stays eager)."""
    if choice != "auto":
        return choice == "on"
    budgets = [(total_env_steps, AUTO_MIN_ENV_STEPS), (time_budget_s, AUTO_MIN_SECONDS)]
    given = [(b, lo) for b, lo in budgets if b is not None]
    return bool(given) and all(b >= lo for b, lo in given)


class _LossModule(nn.Module):
    """Holds the online net as its only submodule so ``functional_call`` can swap its parameters
    while the agent's ``sample_loss`` runs."""

    def __init__(self, online: nn.Module, sample_loss: Callable[..., tuple[torch.Tensor, ...]]):
        super().__init__()
        self.online = online
        self._sample_loss = [sample_loss]  # a list: not registered as a submodule or attribute

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._sample_loss[0](*args)


def adam_state(opt: torch.optim.Adam, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Adam state of ``flat`` (created as ``torch.optim.Adam`` creates it on its first step:
    a float32 step counter and zero moments), shared by the eager and the fused path."""
    state = opt.state[flat]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=flat.device)
        state["exp_avg"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    return state


class FusedStep:
    """``step(*args) -> (loss, *aux)``: one gradient step of ``online`` on
    ``sample_loss(*args) -> (loss, priority [B], *diagnostics, idx [B])``, then
    ``update_priorities(idx, priority)``; with fresh noise in every tensor of ``noises`` first
    (one sample per net per update, Fortunato et al. 2018). Parameters, Adam state and replay
    priorities change in place; returns ``(loss.detach(), *diagnostics)``. With ``compile``
    the step is one compiled graph; without, the eager reference (:meth:`eager`) runs."""

    def __init__(
        self,
        online: nn.Module,
        flat: nn.Parameter,
        opt: torch.optim.Adam,
        sample_loss: Callable[..., tuple[torch.Tensor, ...]],
        update_priorities: Callable[[torch.Tensor, torch.Tensor], None],
        noises: list[torch.Tensor],
        max_grad_norm: float,
        compile: bool = True,
    ):
        self.compiled = compile
        self.flat, self.opt, self.noises, self.max_grad_norm = flat, opt, noises, max_grad_norm
        self.sample_loss, self.update_priorities = sample_loss, update_priorities
        if not compile:
            return
        group = opt.param_groups[0]
        if len(opt.param_groups) != 1 or group["params"] != [flat] or group["weight_decay"] or group["amsgrad"]:
            raise ValueError("FusedStep needs a plain Adam over the one flat parameter tensor")
        names = [f"online.{n}" for n, _ in online.named_parameters()]
        shapes = [p.shape for p in online.parameters()]
        sizes = [p.numel() for p in online.parameters()]
        if sum(sizes) != flat.numel():
            raise ValueError("the flat tensor must hold exactly the online net's parameters")
        loss_module = _LossModule(online, sample_loss)
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]

        def loss_of(p: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            params = {n: t.view(s) for n, t, s in zip(names, p.split(sizes), shapes)}
            loss, *aux = torch.func.functional_call(loss_module, params, args, strict=False)
            return loss, tuple(aux)

        grad_and_loss = torch.func.grad_and_value(loss_of, has_aux=True)

        def step(
            p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor, noises: list[torch.Tensor],
            *args: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:  # fmt: skip
            for noise in noises:
                reset_noise(noise)
            g, (loss, aux) = grad_and_loss(p, *args)  # g [P]
            priority, *diagnostics, idx = aux
            if max_grad_norm > 0:  # agents.nets.clip_grad_norm
                g = g * (max_grad_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp(max=1.0)
            t.add_(1.0)
            m.lerp_(g, 1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / (1.0 - b2**t).sqrt()).add_(eps)  # [P]
            p.sub_(lr / (1.0 - b1**t) * m / denom)  # p is flat's storage, detached
            update_priorities(idx, priority)
            return (loss.detach(), *diagnostics)

        self._step = torch.compile(step, fullgraph=True)

    def eager(self, *args: torch.Tensor) -> tuple[Any, ...]:
        """The same step op by op: the reference the compiled graph is tested against."""
        for noise in self.noises:
            reset_noise(noise)
        loss, priority, *diagnostics, idx = self.sample_loss(*args)
        self.flat.grad.zero_()
        loss.backward()
        if self.max_grad_norm > 0:
            clip_grad_norm(self.flat.grad, self.max_grad_norm)
        self.opt.step()
        self.update_priorities(idx, priority)
        return (loss.detach(), *diagnostics)

    def __call__(self, *args: torch.Tensor) -> tuple[Any, ...]:
        if not self.compiled:
            return self.eager(*args)
        s = adam_state(self.opt, self.flat)
        return self._step(self.flat.detach(), s["exp_avg"], s["exp_avg_sq"], s["step"], self.noises, *args)
