"""The compute meter: named phases, harness-kept counters, FLOPs measured once.

Phases (``env``, ``act``, ``learn``, ``eval``) are timed with ``time.perf_counter`` and, on
CUDA, a ``torch.cuda.synchronize`` at each boundary so asynchronous kernels are charged to the
phase that launched them (PufferLib's profiler skips this, and its phase times lie on GPU).
Counters are incremented by the harness from what it observes (vector steps, episode ends) and
from the ``grad_steps`` / ``grad_samples`` an agent's ``update`` reports, so
``reuse_ratio = grad_samples / env_steps`` needs no knowledge of the algorithm.
:class:`CpuMeter` says what that wall clock bought: the CPU time the process got during it.
"""

from __future__ import annotations

import math
import os
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


def allowed_cores() -> int:
    """Cores this process may run on: its affinity (a runner's pinned share, or taskset's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_share(cpu_s: float, wall_s: float, cores: int) -> float | None:
    """CPU seconds got over CPU seconds offered: ``cpu_s / (wall_s * cores)``; None when no wall
    clock was measured (a run resumed from an older checkpoint and stopped at once)."""
    return cpu_s / (wall_s * cores) if wall_s > 0 and cores > 0 else None


def _load_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this OS
        return None


def _thread_sched() -> dict[str, int] | None:
    """{thread id: nanoseconds it has waited on a run queue} for this process's live threads
    (Linux's /proc/self/task/*/schedstat, second field); None where the kernel does not expose it."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we read, or the field is not there
    return out or None


class CpuMeter:
    """What the training wall clock bought: the CPU seconds the process got while it ran and the
    machine's load meanwhile (compute.json ``cpu_s``, ``cpu_share``, ``load_1m_*``; README, Units).

    An equal-wall-clock comparison is fair only when every run got the cores it was given: a run
    sharing its core with another process trains at half speed on the same clock, and nothing in
    its rows says so. ``cpu_s`` is ``time.process_time()``, user + system time of every thread of
    the process (torch's intra-op pool, ALE's env threads). No env backend runs subprocesses
    (PufferLib Ocean and MinAtar step in-process, ALE in threads of its own, gymnasium's sync
    vector env in the caller), so children's time is not counted. It is measured over the same
    interval as the training wall clock: paused (:meth:`untimed`) for evaluation and checkpoint
    writes. It carries over a resume in the checkpoint; a checkpoint written before it was recorded
    carries none, and then it covers the training wall clock since that resume only
    (``cpu_wall_s`` < ``train_wall_s``), never a guess for the part before.

    ``cpu_wait_s`` (Linux): the seconds the process's threads were ready to run but waited on a
    run queue, read at the same points: direct evidence of contention, whatever the share says.
    """

    def __init__(self) -> None:
        self.cpu_s = 0.0  # process CPU seconds of the timed intervals that have ended
        self.wait_s: float | None = 0.0  # run-queue wait of those intervals (None: not exposed here)
        self.wall_from = 0.0  # the training wall clock (train_wall_s) at which measuring began
        self.load_sum, self.load_n, self.load_max = 0.0, 0, -math.inf
        # the readings at the start of the interval being timed (None: paused)
        self._mark: tuple[float, dict[str, int] | None] | None = None

    def start(self) -> None:
        self._mark = (time.process_time(), _thread_sched())

    def _current(self) -> tuple[float, float | None]:
        """(cpu_s, wait_s) so far, the running interval included."""
        if self._mark is None:
            return self.cpu_s, self.wait_s
        c0, s0 = self._mark
        cpu, s1 = self.cpu_s + time.process_time() - c0, _thread_sched()
        if self.wait_s is None or s0 is None or s1 is None:
            return cpu, None
        # Per thread: one that started since counts from zero; one that ended is lost (torch's and
        # ALE's pools live as long as the process, so in practice none).
        return cpu, self.wait_s + sum(w - s0.get(t, 0) for t, w in s1.items()) / 1e9

    @contextmanager
    def untimed(self):
        """Stop counting for a block the training wall clock leaves out (evaluation, checkpoints)."""
        running = self._mark is not None
        self.cpu_s, self.wait_s = self._current()
        self._mark = None
        try:
            yield
        finally:
            if running:
                self.start()

    def sample_load(self) -> None:
        """Note the machine's 1-minute load average (cheap: one syscall); called at each metric row."""
        load = _load_1m()
        if load is not None:
            self.load_sum, self.load_n = self.load_sum + load, self.load_n + 1
            self.load_max = max(self.load_max, load)

    def record(self, wall_s: float, threads: int) -> dict[str, Any]:
        """compute.json's CPU fields at training wall clock ``wall_s`` for a run of ``threads`` threads."""
        cpu, wait = self._current()
        cores = allowed_cores()
        # The denominator: the cores the run can keep busy, its threads (--threads: torch's
        # intra-op pool, ALE's env threads) on the cores it may use. Between parallel regions
        # torch's idle workers spin rather than sleep, so a quiet run keeps all of them busy:
        # measured 0.98-1.0 for PPO and Rainbow at 1 and 2 threads (README, Units).
        busy = min(threads, cores)
        covered = wall_s - self.wall_from
        return {"cpu_s": cpu, "cpu_wall_s": covered, "cpu_wait_s": wait, "cores": cores,
                "cpu_share_cores": busy, "cpu_share": cpu_share(cpu, covered, busy),
                "load_1m_mean": self.load_sum / self.load_n if self.load_n else None,
                "load_1m_max": self.load_max if self.load_n else None,
                "machine_cpus": os.cpu_count()}  # fmt: skip

    def state_dict(self, wall_s: float) -> dict[str, Any]:
        """What a checkpoint at training wall clock ``wall_s`` keeps (taken while :meth:`untimed`)."""
        cpu, wait = self._current()
        return {"cpu_s": cpu, "wait_s": wait, "wall_s": wall_s - self.wall_from, "load_sum": self.load_sum,
                "load_n": self.load_n, "load_max": self.load_max}  # fmt: skip

    def load_state_dict(self, s: dict[str, Any] | None, wall_s: float) -> None:
        """Continue from a checkpoint at training wall clock ``wall_s``; ``s`` None (a checkpoint
        written before CPU time was recorded): measure from here, over the rest of the run only."""
        if s is None:
            self.wall_from = wall_s
            return
        self.cpu_s, self.wait_s = float(s["cpu_s"]), s.get("wait_s")
        self.wall_from = wall_s - float(s["wall_s"])
        self.load_sum, self.load_n = float(s["load_sum"]), int(s["load_n"])
        self.load_max = float(s["load_max"])


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
