"""The compute meter: named phases, harness-kept counters, FLOPs measured once.

Phases (``env``, ``act``, ``learn``, ``eval``) are timed with ``time.perf_counter`` and, on
CUDA, a ``torch.cuda.synchronize`` at each boundary so asynchronous kernels are charged to the
phase that launched them (PufferLib's profiler skips this, and its phase times lie on GPU).
Counters are incremented by the harness from what it observes (vector steps, episode ends) and
from the ``grad_steps`` / ``grad_samples`` an agent's ``update`` reports, so
``reuse_ratio = grad_samples / env_steps`` needs no knowledge of the algorithm.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Callable

import torch

# Imported eagerly: its first import pulls in sympy (~0.5 s), which must not land in a timed phase.
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula


# The fused LSTM kernel on CPU (oneDNN; PPO's ``lstm_unroll fused``, nn.LSTM) has no formula in
# torch's counter, which would count its matmuls as 0. One layer over ``T`` steps of ``B`` rows is
# the same matmuls as ``T`` LSTMCell steps: gates = x W_ih^T + h W_hh^T, ``2 T B 4H (In + H)``
# FLOPs forward; backward twice that (gradients of the inputs and of the weights), as for mm.
def _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape) -> int:
    steps_rows = input_shape[0] * input_shape[1]  # T * B, either layout
    return 2 * steps_rows * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


@register_flop_formula(torch.ops.aten.mkldnn_rnn_layer)
def _mkldnn_rnn_layer_flop(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return _lstm_layer_flops(input_shape, w_ih, w_hh)


@register_flop_formula(torch.ops.aten.mkldnn_rnn_layer_backward)
def _mkldnn_rnn_layer_backward_flop(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return 2 * _lstm_layer_flops(input_shape, w_ih, w_hh)

PHASES = ("env", "act", "learn", "eval", "checkpoint")
# Timed, but not charged to the training budget: evaluation, and checkpoint writes (an off-policy
# agent's replay buffer makes a checkpoint ~0.5 GB, ~5 s each, which would otherwise come out of
# its time budget and not PPO's).
UNTIMED_BY_BUDGET = ("eval", "checkpoint")


class RecentRate:
    """Env steps per second over the last ``window_s`` seconds of metric rows: what a progress
    line shows. One row's own rate swings with the agent's schedule (PPO: rows inside a rollout
    run at ~4x the average, the row holding the update at a tenth of it), so a single row says
    little about the run's speed."""

    def __init__(self, wall_s: float, env_steps: int, window_s: float = 30.0):
        self.window_s = window_s
        self.points: deque[tuple[float, int]] = deque([(wall_s, env_steps)])

    def add(self, wall_s: float, env_steps: int) -> float:
        self.points.append((wall_s, env_steps))
        # Drop the oldest point while the next one still spans the whole window.
        while len(self.points) > 2 and wall_s - self.points[1][0] >= self.window_s:
            self.points.popleft()
        w0, s0 = self.points[0]
        return (env_steps - s0) / (wall_s - w0) if wall_s > w0 else 0.0


@dataclass
class Counters:
    env_steps: int = 0  # agent-environment interactions, summed over the batch
    frames: int = 0  # emulator frames: env_steps * frameskip
    episodes: int = 0  # full-game episodes finished
    grad_steps: int = 0  # optimizer steps
    grad_samples: int = 0  # transitions consumed by those steps, counted per use

    @property
    def reuse_ratio(self) -> float:
        return self.grad_samples / self.env_steps if self.env_steps else 0.0


@dataclass
class Meter:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    counters: Counters = field(default_factory=Counters)
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    flops_per_act_sample: float | None = None
    flops_per_grad_sample: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.phase_s[name] += time.perf_counter() - t0

    @property
    def train_s(self) -> float:
        """Training wall clock as charged to phases, evaluation and checkpoints excluded."""
        return sum(v for k, v in self.phase_s.items() if k not in UNTIMED_BY_BUDGET)

    def state_dict(self) -> dict[str, Any]:
        return {"counters": asdict(self.counters), "phase_s": dict(self.phase_s),
                "flops_per_act_sample": self.flops_per_act_sample,
                "flops_per_grad_sample": self.flops_per_grad_sample}  # fmt: skip

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.counters = Counters(**s["counters"])
        self.phase_s = dict.fromkeys(PHASES, 0.0) | dict(s["phase_s"])  # older checkpoints lack a phase
        self.flops_per_act_sample = s["flops_per_act_sample"]
        self.flops_per_grad_sample = s["flops_per_grad_sample"]


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every FLOP is attributed to "Global"."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` once under ``torch.utils.flop_counter`` and return (its result, total FLOPs).

    The counter sees matmuls/convolutions (the dominant cost); elementwise ops are not counted,
    so the figure is a slight underestimate, the same way for every agent.
    """
    mode = FlopCounterMode(display=False)
    # Count the global total only. FlopCounterMode's per-module tracker hooks every module call
    # whose inputs require grad, and under an agent's inference_mode that hook fails on a
    # parametrisation's weight (spectral norm: BTR's Impala torso); its breakdown is not used here.
    mode.mod_tracker = _GlobalOnly()
    # Agents that torch.compile parts of themselves run them eagerly here (the same ops): a first
    # compile under the counter's dispatch mode makes dynamo fall back to eager for those frames
    # for the rest of the run (measured: Rainbow --compile at 5.3K instead of 7.2K env_steps/s).
    with torch.compiler.set_stance("force_eager"), mode:
        out = fn()
    return out, int(mode.get_total_flops())


def trainable_params(obj: Any) -> int:
    """Parameters the agent's optimizers update (target networks excluded), counted once."""
    seen: set[int] = set()
    total = 0
    for v in vars(obj).values():
        if isinstance(v, torch.optim.Optimizer):
            for g in v.param_groups:
                for p in g["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel()
    return total
