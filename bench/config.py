"""Run configuration, budget parsing, and agent configs as command-line options.

Agent options come straight from each agent's frozen ``Config`` dataclass: every field becomes
``--field-name`` with the help line given in its ``opt(...)`` metadata; booleans become
``--name/--no-name``. Presets per env family (``PRESETS`` in the agent module) sit between the
dataclass defaults and what the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError

_STEP_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_steps(text: str | int | None, what: str = "--steps") -> int | None:
    """'2M' -> 2_000_000, '500k', '1.5e6', '2_000_000'. Must be a positive whole number of env steps."""
    if text is None:
        return None
    if isinstance(text, int):
        value: float = text
    else:
        m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmgb]?)\s*", str(text).lower())
        if not m:
            raise UserError(f"{what} {text!r} is not a step count (use e.g. 2M, 500k, 300000)")
        value = float(m.group(1).replace("_", "")) * _STEP_UNITS[m.group(2)]
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise UserError(f"{what} {text!r} must be a positive whole number of env steps")
    return int(value)


def parse_duration(text: str | float | None, what: str = "--time") -> float | None:
    """'10m' -> 600.0, '90s', '1h30m', '45' (seconds). Must be positive."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", s):
            seconds = float(s)
        else:
            parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)([smhd])", s)
            if not parts or "".join(a + b for a, b in parts) != s:
                raise UserError(f"{what} {text!r} is not a duration (use e.g. 10m, 90s, 1h30m)")
            seconds = sum(float(a) * _TIME_UNITS[b] for a, b in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{what} {text!r} must be a positive duration")
    return seconds


@dataclass(frozen=True)
class RunConfig:
    """Everything the harness needs besides the agent's own config."""

    agent: str
    game: str
    seed: int = 1
    steps: int | None = None  # env-step budget (rounded up to whole vector steps)
    time_s: float | None = None  # training wall-clock budget, evaluation excluded
    eval_every: int | None = None  # env steps between evaluations (None: only at the end if eval_episodes)
    eval_episodes: int = 0  # full-game episodes per evaluation (0: no evaluation)
    log_every: int | None = None  # env steps between metric rows (None: budget/200, at least 10K)
    checkpoint_every_s: float = 120.0  # wall seconds between checkpoints (replay buffers make them large)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    threads: int | None = None  # torch intra-op threads (None: every core this process may use)
    protocol: str | None = None  # ALE protocol preset (machado | dqn); None: the default
    label: str | None = None  # a name for this run in reports (sweeps); None: the agent name
    tensorboard: bool = False  # also write TensorBoard events from the same rows
    debug_update_sleep_s: float = 0.0  # test-only: sleep after each learning update (bench regress's check)

    def identity(self) -> dict[str, Any]:
        """The fields that define *which* run this is: a resumed run must match them."""
        d = dataclasses.asdict(self)
        for k in ("checkpoint_every_s", "tensorboard", "threads", "device", "log_every", "debug_update_sleep_s"):
            d.pop(k)
        return d


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(base type, optional?) for annotations like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _converter(tp: Any, optional: bool, name: str):
    def conv(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if tp is int:
                return parse_steps(text, f"--{name}") if re.search(r"[kmgb]$", text.lower()) else int(text)
            if tp is float:
                return float(text)
            return tp(text)
        except (ValueError, UserError) as e:
            raise argparse.ArgumentTypeError(f"--{name} {text!r}: expected {tp.__name__}") from e

    conv.__name__ = getattr(tp, "__name__", "value")
    return conv


def add_config_options(parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict] | None = None) -> None:
    """Add one option per dataclass field. Defaults are SUPPRESSed so only typed options show up."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"agent options ({cls.__module__}.{cls.__name__})")
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        pre = {fam: p[f.name] for fam, p in (presets or {}).items() if f.name in p}
        default = f.default if f.default is not dataclasses.MISSING else None
        extra = f" (default {default!r}" + "".join(f"; {fam}: {v!r}" for fam, v in pre.items()) + ")"
        text = (text + extra).replace("%", "%%")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)  # fmt: skip
        else:
            group.add_argument(flag, dest=f.name, type=_converter(tp, optional, flag[2:]),
                               default=argparse.SUPPRESS, metavar=tp.__name__.upper(), help=text)  # fmt: skip


def resolve_agent_config(cls: type, presets: dict[str, dict] | None, family: str, overrides: dict[str, Any]):
    """dataclass defaults < PRESETS[family] < user overrides."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown agent option(s) for {cls.__module__}: {', '.join(unknown)}")
    values = {**(presets or {}).get(family, {}), **overrides}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad agent option: {e}") from e
