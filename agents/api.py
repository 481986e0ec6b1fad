"""The agent contract: five methods, no base class (STYLE.md principle 3).

An agent is constructed as ``Agent(cfg, ctx)`` where ``cfg`` is the agent's own frozen config
dataclass and ``ctx`` an :class:`AgentContext` built by the harness. Then, for every vector step,
the harness calls::

    actions = agent.act(obs)          # [N] int64; explore=True: the agent may keep obs (copy it)
    step = env.step(actions)
    agent.observe(step)               # the outcome of the last act(explore=True)
    metrics = agent.update()          # None when the agent's schedule says "not now"

When ``update`` does learn, ``metrics`` holds ``grad_steps`` (optimizer steps taken in this call)
and ``grad_samples`` (transitions consumed by those steps, counted once per use: a minibatch of
256 seen in 4 epochs is 1024), plus any float diagnostics (``loss`` is checked for NaN/inf by the
harness). The harness keeps the counters; it never asks what algorithm is running.

Evaluation calls ``act(obs, explore=False, first=mask)`` on a separate environment: that must
not touch the agent's training state (storage, schedules). ``first`` [N] bool marks the envs
whose ``obs`` begins a new episode (all of them on an evaluation's first step, then the envs that
just finished one), so an agent with recurrent state resets it there; others ignore it.

In training, episode ends arrive through ``observe`` (``step.done``), and ``first`` is None,
except on the first ``act(obs, explore=True, first=all True)`` after the harness (re)sets the
envs: at the start of a run and after every resume. There the stream of every env breaks
*without* an episode end: the outcome the agent last observed leads to an observation it will
never see (``obs`` is a new episode's first), so the agent must not link the two. It drops or
closes what spans the break and resets recurrent state: PPO drops the last stored step and makes
the one before it a truncation bootstrapped from the observation it led to; Rainbow and BTR do the
same in replay (:meth:`agents.replay.Replay.cut`). At a run's start there is nothing stored, and
nothing to do. The harness only ever resets all envs together; agents may refuse a partial mask.

Schedules that anneal over the run (learning rate, importance-sampling beta) read
:meth:`AgentContext.budget_used`: the fraction of the run's budget spent, of whichever budget ends
first (env steps or training wall clock). The harness owns the clock and computes it; under a time
budget a schedule therefore depends on the machine's speed (a slower machine anneals over fewer
env steps). Schedules defined in env steps by their papers (Rainbow's and BTR's epsilon) stay so.

An agent never creates environments, seeds RNGs, reads the clock, writes files or logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from envs.base import EnvSpec, EnvStep


# Every learning agent's ``precision`` field; the harness applies it (bench.precision: autocast to
# bfloat16 around act/observe/update, float32 weights and optimizer state; refused without native
# bf16 hardware).
PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("matmul precision: fp32, or bf16 (autocast in act and update; float32 weights and optimizer "
                  "state; needs AVX512-BF16/AMX or a bf16 GPU)")  # fmt: skip


@dataclass(frozen=True)
class AgentContext:
    """What the harness tells an agent at construction."""

    spec: EnvSpec  # the training environment
    num_envs: int  # N, the batch the agent acts on (== cfg.num_envs)
    device: torch.device  # where the agent keeps its nets and storage
    total_env_steps: int | None  # env-step budget (rounded up to whole vector steps); None if time-only
    # The harness's budget_used(): fraction in [0, 1] of the run's budget spent so far (the larger
    # of env_steps / steps budget and train wall_s / time budget), read at call time; valid from
    # the first act. None where no harness runs (a context built by hand in a test).
    progress: Callable[[], float] | None = None
    time_budget_s: float | None = None  # training wall-clock budget; None if step-only (or no harness)

    def budget_used(self, env_steps: int) -> float:
        """Fraction of the run's budget spent, in [0, 1], for schedules that anneal over the run.

        ``progress()`` when the harness gave it; otherwise ``env_steps / total_env_steps`` from
        the agent's own count (the same number under a step budget), and 0 (no annealing) with
        neither."""
        if self.progress is not None:
            return min(max(float(self.progress()), 0.0), 1.0)
        if not self.total_env_steps:
            return 0.0
        return min(max(env_steps / self.total_env_steps, 0.0), 1.0)


class Agent(Protocol):
    def act(self, obs: torch.Tensor, explore: bool = True, first: torch.Tensor | None = None) -> torch.Tensor: ...

    def observe(self, step: EnvStep) -> None: ...

    def update(self) -> dict[str, Any] | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def opt(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    finite: bool = True,
) -> Any:
    """A config field with its help line and valid range: ``lr: float = opt(2.5e-4, "Adam step
    size", gt=0)``.

    The CLI turns every field into ``--field-name`` (bools into ``--name/--no-name``) with
    this text as its help, so every agent option is documented where it is defined. The range
    (``ge``/``gt``/``le``/``lt`` bounds, ``choices``, and ``finite`` for floats: no nan/inf) is
    checked once, before anything runs, by :func:`check_ranges`, so a bad value is reported
    against the option the user typed.
    """
    from dataclasses import field

    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "finite": finite}
    return field(default=default, metadata=meta)


def range_text(meta: dict) -> str:
    """The valid range of a field as text for --help and errors, e.g. 'in (0, 1]'."""
    if meta.get("choices") is not None:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    lo = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta["gt"]) if meta.get("gt") is not None else None
    hi = ("]", meta["le"]) if meta.get("le") is not None else (")", meta["lt"]) if meta.get("lt") is not None else None

    def num(x: float) -> str:  # whole bounds in full (a seed's 2147483647, not 2.14748e+09)
        return str(x) if isinstance(x, int) else f"{x:g}"

    if lo and hi:
        return f"in {lo[0]}{num(lo[1])}, {num(hi[1])}{hi[0]}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + num(lo[1])
    if hi:
        return ("<= " if hi[0] == "]" else "< ") + num(hi[1])
    return ""


def value_problem(meta: Any, v: Any) -> str | None:
    """Why ``v`` is outside the range declared in a field's ``opt(...)`` metadata ``meta``; None
    when it is inside (or the field declares none)."""
    import math

    if v is None or isinstance(v, bool) or not meta:
        return None
    m = meta
    if m.get("choices") is not None:
        return None if v in m["choices"] else f"{v!r} is not {range_text(m)}"
    if not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and m.get("finite", True) and not math.isfinite(v):
        return f"{v!r} must be finite"
    bad = (
        (m.get("ge") is not None and not v >= m["ge"])
        or (m.get("gt") is not None and not v > m["gt"])
        or (m.get("le") is not None and not v <= m["le"])
        or (m.get("lt") is not None and not v < m["lt"])
    )
    return f"{v!r} must be {range_text(m)}" if bad else None


def check_ranges(cfg: Any) -> list[tuple[str, str]]:
    """[(field name, problem)] for every field of the dataclass ``cfg`` outside its declared range."""
    import dataclasses

    problems = []
    for f in dataclasses.fields(cfg):
        problem = value_problem(f.metadata, getattr(cfg, f.name))
        if problem:
            problems.append((f.name, problem))
    return problems


@dataclass(frozen=True)
class Param:
    """One tuned option of an agent's search space (``SEARCH_SPACE`` next to its ``Config``, read
    by ``bench tune``): ``name`` is a ``Config`` field; a number range [``low``, ``high``] drawn
    on a log scale when ``log`` (``kind`` "float" or "int"), or one of ``choices`` (``kind``
    "choice", implied by giving choices). :func:`check_search_space` checks it against the Config."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    kind: str = "float"  # "float" | "int" | "choice"
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices and self.kind == "float":
            object.__setattr__(self, "kind", "choice")


def _is_type(v: Any, tp: type) -> bool:
    """``v`` can be a value of a field typed ``tp`` (a bool is not a number; an int is a float)."""
    if tp is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if tp is float:
        return isinstance(v, (int, float))
    return isinstance(v, tp)


def check_search_space(cls: type, space: Any) -> list[str]:
    """Problems (empty: none) of a search space ``space`` (a tuple of :class:`Param`) for the
    config dataclass ``cls``: unknown or repeated names, kinds, empty or reversed ranges, log
    scales reaching 0, values of the wrong type for the field or outside its declared range."""
    import dataclasses
    import math
    import typing

    if not isinstance(space, (tuple, list)) or not space:
        return ["the search space must be a non-empty tuple of Param"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    seen: set[str] = set()
    for p in space:
        if not isinstance(p, Param):
            out.append(f"{p!r} is not a Param")
            continue
        if p.name not in fields:
            out.append(f"{p.name}: not an option of {cls.__module__}.{cls.__name__}")
            continue
        if p.name in seen:
            out.append(f"{p.name}: given twice")
        seen.add(p.name)
        tp = hints[p.name]
        if typing.get_origin(tp) is not None:  # Optional: the non-None type
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if p.kind not in ("float", "int", "choice"):
            out.append(f"{p.name}: kind {p.kind!r} is not float, int or choice")
            continue
        if p.kind == "choice":
            if not p.choices or len(set(p.choices)) != len(p.choices):
                out.append(f"{p.name}: choices must be distinct values, at least one")
                continue
            values = list(p.choices)
        else:
            numeric = (int,) if p.kind == "int" else (int, float)
            if not all(isinstance(v, numeric) and not isinstance(v, bool) for v in (p.low, p.high)):
                out.append(f"{p.name}: {p.kind} range needs numeric low and high, got {p.low!r}, {p.high!r}")
                continue
            if not (math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high):
                out.append(f"{p.name}: range [{p.low}, {p.high}] must be finite with low < high")
                continue
            if p.log and p.low <= 0:
                out.append(f"{p.name}: a log-scale range must have low > 0, got {p.low}")
                continue
            if p.kind == "float" and tp is not float:
                out.append(f"{p.name}: float range for a {getattr(tp, '__name__', tp)} option")
                continue
            if p.kind == "int" and tp is not int:
                out.append(f"{p.name}: int range for a {getattr(tp, '__name__', tp)} option")
                continue
            values = [p.low, p.high]
        for v in values:
            if not _is_type(v, tp):
                out.append(f"{p.name}: {v!r} is not a {getattr(tp, '__name__', tp)}")
                break
            problem = value_problem(fields[p.name].metadata, v)
            if problem:
                out.append(f"{p.name}: {problem} (the option's declared range)")
                break
    return out
