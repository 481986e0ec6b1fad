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
just finished one), so an agent with recurrent state resets it there; others ignore it. In
training the same information arrives through ``observe`` (``step.done``).

An agent never creates environments, seeds RNGs, reads the clock, writes files or logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from envs.base import EnvSpec, EnvStep


@dataclass(frozen=True)
class AgentContext:
    """What the harness tells an agent at construction."""

    spec: EnvSpec  # the training environment
    num_envs: int  # N, the batch the agent acts on (== cfg.num_envs)
    device: torch.device  # where the agent keeps its nets and storage
    total_env_steps: int | None  # budget for schedules (lr annealing, beta, epsilon); None if time-only


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
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + f"{lo[1]:g}"
    if hi:
        return ("<= " if hi[0] == "]" else "< ") + f"{hi[1]:g}"
    return ""


def check_ranges(cfg: Any) -> list[tuple[str, str]]:
    """[(field name, problem)] for every field of the dataclass ``cfg`` outside its declared range."""
    import dataclasses
    import math

    problems = []
    for f in dataclasses.fields(cfg):
        v, m = getattr(cfg, f.name), f.metadata
        if v is None or isinstance(v, bool) or not m:
            continue
        if m.get("choices") is not None:
            if v not in m["choices"]:
                problems.append((f.name, f"{v!r} is not {range_text(m)}"))
            continue
        if not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and m.get("finite", True) and not math.isfinite(v):
            problems.append((f.name, f"{v!r} must be finite"))
            continue
        bad = (
            (m.get("ge") is not None and not v >= m["ge"])
            or (m.get("gt") is not None and not v > m["gt"])
            or (m.get("le") is not None and not v <= m["le"])
            or (m.get("lt") is not None and not v < m["lt"])
        )
        if bad:
            problems.append((f.name, f"{v!r} must be {range_text(m)}"))
    return problems
