"""Run configuration, budget parsing, and agent configs as command-line options.

Agent options come straight from each agent's frozen ``Config`` dataclass: every field becomes
``--field-name`` with the help line given in its ``opt(...)`` metadata; booleans become
``--name/--no-name``. Presets per env family (``PRESETS`` in the agent module) sit between the
dataclass defaults and what the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError

_STEP_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Budgets beyond these are typos, not experiments: 1e13 env steps is over 400x Agent57's 90B frames
# (22.5B env steps), a year of training wall clock longer than any run this benchmark is for.
MAX_STEPS = 10**13
MAX_SECONDS = 365 * 86400.0


def parse_steps(text: str | int | None, what: str = "--steps") -> int | None:
    """'2M' -> 2_000_000, '500k', '1.5e6', '2_000_000'. Must be a positive whole number of env
    steps, at most ``MAX_STEPS``. Underscores only between digits, as in Python ('1_' is refused)."""
    if text is None:
        return None
    if isinstance(text, bool):  # TOML `steps = true`: a bool is not a count
        raise UserError(f"{what} {text!r} is not a step count (use e.g. 2M, 500k, 300000)")
    if isinstance(text, int):
        value: float = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:_[0-9]+)*(?:\.[0-9]+)?(?:e\+?[0-9]+)?)\s*([kmgb]?)\s*", str(text).lower())
        if not m:
            raise UserError(f"{what} {text!r} is not a step count (use e.g. 2M, 500k, 300000)")
        value = float(m.group(1).replace("_", "")) * _STEP_UNITS[m.group(2)]
    if value > MAX_STEPS:  # inf too (a literal like 1e400)
        raise UserError(f"{what} {text!r} is more than {MAX_STEPS:.0e} env steps: not a budget this benchmark can run")
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise UserError(f"{what} {text!r} must be a positive whole number of env steps")
    return int(value)


def parse_duration(text: str | float | None, what: str = "--time") -> float | None:
    """'10m' -> 600.0, '90s', '1h30m', '45' (seconds). Must be positive, at most a year."""
    if text is None:
        return None
    if isinstance(text, bool):  # TOML `time = true`
        raise UserError(f"{what} {text!r} is not a duration (use e.g. 10m, 90s, 1h30m)")
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
    if seconds > MAX_SECONDS:
        raise UserError(f"{what} {text!r} is more than a year: not a budget this benchmark can run")
    return seconds


def _field(default: Any, help: str, **limits: Any) -> Any:
    """A RunConfig field with its valid range, in the metadata layout of :func:`agents.api.opt`
    (so :func:`agents.api.check_ranges` reads both; this module stays importable without torch)."""
    meta = {"help": help, "ge": None, "gt": None, "le": None, "lt": None, "choices": None, "finite": True, **limits}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything the harness needs besides the agent's own config. Ranges are checked by
    :func:`check_run_config` before anything runs; None means "not set" and is never checked."""

    agent: str
    game: str
    seed: int = _field(1, "run seed", ge=0, le=2**31 - 1)
    steps: int | None = _field(None, "env-step budget (rounded up to whole vector steps)", ge=1, le=MAX_STEPS)
    time_s: float | None = _field(None, "training wall-clock budget, evaluation excluded", gt=0, le=MAX_SECONDS)
    eval_every: int | None = _field(None, "env steps between evaluations (None: only at the end)", ge=1, le=MAX_STEPS)
    eval_episodes: int = _field(0, "full-game episodes per evaluation (0: no evaluation)", ge=0, le=1_000_000)
    log_every: int | None = _field(None, "env steps between metric rows (None: budget/200, at least 10K)", ge=1,
                                   le=MAX_STEPS)  # fmt: skip
    checkpoint_every_s: float = _field(120.0, "wall seconds between checkpoints (replay buffers make them large)",
                                       gt=0)  # fmt: skip
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" (checked by bench.harness.pick_device)
    threads: int | None = _field(None, "torch intra-op threads (None: every core this process may use)", ge=1,
                                 le=4096)  # fmt: skip
    protocol: str | None = _field(None, "ALE protocol preset; None: the default", choices=("machado", "dqn"))
    label: str | None = None  # a name for this run in reports (sweeps); None: the agent name
    tensorboard: bool = False  # also write TensorBoard events from the same rows
    capture_video: bool = False  # also film each evaluation's first episode of env 0 into videos/ (bench.video)
    wandb: bool = False  # also send the same rows to Weights & Biases (bench.wandb_sink)
    wandb_project: str = "onoff-bench"  # W&B project
    wandb_entity: str | None = None  # W&B entity (user or team); None: the account's default
    wandb_group: str | None = None  # W&B group; bench compare / sweep set their name
    debug_update_sleep_s: float = _field(0.0, "test-only: sleep after each learning update (bench regress)", ge=0)

    def identity(self) -> dict[str, Any]:
        """The fields that define *which* run this is: a resumed run must match them."""
        d = dataclasses.asdict(self)
        for k in ("checkpoint_every_s", "tensorboard", "capture_video", "threads", "device", "log_every",
                  "debug_update_sleep_s", "wandb", "wandb_project", "wandb_entity", "wandb_group"):
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
    """Add one option per dataclass field. Defaults are SUPPRESSed so only typed options show up.
    The help line ends with the field's valid range (``opt(..., gt=0)``)."""
    from agents.api import range_text

    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"agent options ({cls.__module__}.{cls.__name__})")
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        pre = {fam: p[f.name] for fam, p in (presets or {}).items() if f.name in p}
        default = f.default if f.default is not dataclasses.MISSING else None
        valid = range_text(f.metadata) if f.metadata and tp is not bool else ""
        extra = (f" (default {default!r}" + "".join(f"; {fam}: {v!r}" for fam, v in pre.items())
                 + (f"; valid: {valid}" if valid else "") + ")")  # fmt: skip
        text = (text + extra).replace("%", "%%")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)  # fmt: skip
        else:
            group.add_argument(flag, dest=f.name, type=_converter(tp, optional, flag[2:]),
                               default=argparse.SUPPRESS, metavar=tp.__name__.upper(), help=text)  # fmt: skip


Spell = Callable[[str, Any], str]  # (field, value) -> the option as the user typed it


def cli_spelling(field: str, value: Any) -> str:
    """``--lr -1.0``: how ``bench run`` / ``bench perf`` name an agent option."""
    return f"--{field.replace('_', '-')} {_show(value)}"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _range_errors(obj: Any, given: dict[str, Any], spell: Spell, owner: str) -> list[str]:
    """One text per field of ``obj`` outside its declared range (agents.api.check_ranges)."""
    from agents.api import check_ranges

    out = []
    for name, problem in check_ranges(obj):
        value = getattr(obj, name)
        rest = problem.removeprefix(repr(value)).strip()
        who = spell(name, value) if name in given else f"{owner} {name} = {_show(value)} (preset)"
        out.append(f"{who} {rest}")
    return out


def _typed_value(value: Any, tp: Any, optional: bool) -> Any:
    """``value`` as the field type, or raise TypeError. bool is not an int (TOML ``steps = true``);
    an int is a float."""
    if value is None and optional:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, tp):
        return value
    raise TypeError(f"expected {'a ' + tp.__name__ if tp is not int else 'an int'}"
                    f"{' or none' if optional else ''}, got {type(value).__name__}")  # fmt: skip


def resolve_agent_config(cls: type, presets: dict[str, dict] | None, family: str, overrides: dict[str, Any],
                         spell: Spell | None = None):  # fmt: skip
    """dataclass defaults < PRESETS[family] < user overrides, checked once: option names, types,
    every field's declared range (``opt(..., gt=0)``) and the config's cross-field checks. Errors
    are one line naming the option as the user typed it: ``spell(field, value)`` ("--lr -1.0"
    for the CLI, "--agent-option ppo.lr=-1.0" for compare, "[options.ppo] lr = -1.0" in sweep files)."""
    import difflib

    spell = spell or cli_spelling
    owner = cls.__module__.rsplit(".", 1)[-1]
    names = [f.name for f in dataclasses.fields(cls)]
    for k in sorted(set(overrides) - set(names)):
        close = difflib.get_close_matches(k, names, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else f" (see bench run --agent {owner} --help)"
        raise UserError(f"{spell(k, overrides[k])}: {owner} has no option {k!r}{hint}")
    hints = typing.get_type_hints(cls)
    typed = {}
    for k, v in overrides.items():
        try:
            typed[k] = _typed_value(v, *_unwrap(hints[k]))
        except TypeError as e:
            raise UserError(f"{spell(k, v)}: {e}") from None
    values = {**(presets or {}).get(family, {}), **typed}
    # Ranges first, on the values alone (a dataclass shell without __post_init__), so that a value
    # out of range is reported against its option rather than by whatever check trips on it first.
    shell = object.__new__(cls)
    for f in dataclasses.fields(cls):
        object.__setattr__(shell, f.name, values.get(f.name, f.default))
    bad = _range_errors(shell, typed, spell, owner)
    if bad:
        raise UserError("; ".join(bad))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{owner} options: {e}") from None


RUN_FLAGS = {"steps": "--steps", "time_s": "--time", "eval_every": "--eval-every", "eval_episodes": "--eval-episodes",
             "log_every": "--log-every", "checkpoint_every_s": "--checkpoint-every", "threads": "--threads",
             "seed": "--seed", "protocol": "--protocol", "device": "--device", "label": "--label",
             "debug_update_sleep_s": "--test-sleep-in-update"}  # fmt: skip


def check_run_config(run: RunConfig, spell: Spell | None = None) -> RunConfig:
    """UserError (one line) unless every field of ``run`` is in its declared range; a budget is
    required. Returns ``run``."""
    spell = spell or (lambda k, v: f"{RUN_FLAGS.get(k, k)} {_show(v)}")
    if run.steps is None and run.time_s is None:
        raise UserError("give a budget: --steps N and/or --time T")
    given = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    for k in ("seed", "steps", "eval_every", "eval_episodes", "log_every", "threads"):
        v = given[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise UserError(f"{spell(k, v)}: expected a whole number")
    bad = _range_errors(run, given, spell, "run")
    if bad:
        raise UserError("; ".join(bad))
    check_sinks(run.tensorboard, run.wandb, run.wandb_project)
    if run.capture_video:  # the game's own refusal (Ocean) is bench.video.check's: it needs the env modules
        if not run.eval_episodes:
            raise UserError("--capture-video films the greedy evaluation episodes: give --eval-episodes N (N >= 1)")
        if any(importlib.util.find_spec(m) is None for m in ("imageio", "imageio_ffmpeg")):
            raise UserError("--capture-video needs imageio and imageio-ffmpeg: pip install 'onoff-bench[video]'")
    return run


def check_sinks(tensorboard: bool, wandb: bool, wandb_project: str | None = "onoff-bench") -> None:
    """The optional sinks are extras: one line naming the missing package, before any run folder
    is touched (``bench compare`` / ``sweep`` check them once, before the first run starts)."""
    for flag, on, module in (("--tensorboard", tensorboard, "tensorboard"), ("--wandb", wandb, "wandb")):
        if on and importlib.util.find_spec(module) is None:
            raise UserError(f"{flag} needs the {module} package: pip install 'onoff-bench[{module}]'")
    if wandb and wandb_project is not None and not wandb_project.strip():
        raise UserError("--wandb-project '': give a W&B project name")
