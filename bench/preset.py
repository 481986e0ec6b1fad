"""Preset files: the option values ``bench tune`` chose, for ``bench run``, ``bench compare`` and
sweep files (``--preset-file FILE`` / ``preset_files = [...]``).

A preset file is TOML, written atomically at the end of a tune::

    [tune]                      # what was tuned, how, and what the tuning cost
    agent = "ppo"
    games = ["gym:CartPole-v1"] # suite = "minatar" when tuned over a suite
    seeds = 1                   # runs per game per trial
    run_time_s = 3.0            # each trial run's training wall clock: the budget the score is taken at
    wall_s = 21.4               # tuning wall clock spent (every session of the tune, trials included)
    trials = 3                  # trials finished (complete + pruned); trials_failed apart
    ...
    [values]                    # the best trial's values: what a run with this file uses
    lr = 0.0012
    epochs = 7

    [[trials]]                  # the trial table, one per trial
    number = 0
    state = "COMPLETE"
    value = 131.2
    wall_s = 6.9
    params = { lr = 0.0012, epochs = 7 }

Where it sits: the agent's dataclass defaults < its ``PRESETS[family]`` < the file's ``[values]``
< options given explicitly (``--lr``, ``--agent-option ppo.lr=``, ``[options.ppo]``, ``--reuse``).
A run records the file, its values and the tuning budget in ``config.json`` (``preset``), and the
report notes, per agent, which ran a tuned preset and with what budget.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

# What a run keeps of the file's [tune] table in its config.json (the tuning budget and its scope).
RECORDED = ("games", "suite", "seeds", "run_time_s", "wall_s", "trials", "trials_pruned", "trials_failed", "sampler",
            "best_trial", "best_value", "objective", "date", "hardware")  # fmt: skip


@dataclass(frozen=True)
class Preset:
    path: str  # as given (resolved against a sweep file's folder when it came from one)
    agent: str
    values: dict[str, Any]
    tune: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps under ``preset``."""
        return {"file": self.path, "agent": self.agent, "values": dict(self.values),
                "tuning": {k: self.tune[k] for k in RECORDED if k in self.tune}}  # fmt: skip

    def budget_text(self) -> str:
        """'3 trials, 21 s of tuning wall clock on gym:CartPole-v1 (3 s runs, 1 seed)'."""
        t = self.tune
        where = f"suite {t['suite']}" if t.get("suite") else ", ".join(t.get("games") or []) or "?"
        wall = t.get("wall_s")
        wall_txt = f"{wall:,.0f} s" if isinstance(wall, (int, float)) else "? s"
        run = t.get("run_time_s")
        run_txt = f"{run:g} s runs, " if isinstance(run, (int, float)) else ""
        return (f"{t.get('trials', '?')} trials, {wall_txt} of tuning wall clock on {where} "
                f"({run_txt}{t.get('seeds', '?')} seed(s))")  # fmt: skip


def load_preset(path: str | Path, what: str = "--preset-file") -> Preset:
    """Read and check a preset file: TOML, a [tune] table naming a known agent, a [values] table of
    that agent's options with the right types and in range. Any problem is one line (UserError)."""
    from bench.config import resolve_agent_config
    from bench.harness import load_agent_module

    text = str(path)
    if text == "":
        raise UserError(f"{what} '': empty path")
    p = Path(text)
    try:
        with open(p, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {text}: no such preset file") from None
    except IsADirectoryError:
        raise UserError(f"{what} {text}: is a folder; give a preset file (bench tune writes <tune folder>/preset.toml)") from None
    except OSError as e:
        raise UserError(f"{what} {text}: cannot read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {text}: malformed TOML ({str(e).splitlines()[0]})") from None
    tune, values = doc.get("tune"), doc.get("values")
    if not isinstance(tune, dict) or not isinstance(tune.get("agent"), str):
        raise UserError(f"{what} {text}: no [tune] table with agent = \"NAME\" (not a preset file from bench tune?)")
    if not isinstance(values, dict) or not values:
        raise UserError(f"{what} {text}: no [values] table, or an empty one: nothing to preset")
    bad = [k for k, v in values.items() if isinstance(v, (dict, list))]
    if bad:
        raise UserError(f"{what} {text}: [values] {bad[0]} must be a single value, not a table or list")
    try:
        mod = load_agent_module(tune["agent"])
    except UserError as e:
        raise UserError(f"{what} {text}: [tune] agent: {e}") from None
    family = ""
    games = tune.get("games")
    if isinstance(games, list) and games and all(isinstance(g, str) for g in games):
        import envs

        family = envs.family_of(games[0])  # a pure prefix test: the family whose PRESETS were tuned over
    try:
        resolve_agent_config(mod.Config, getattr(mod, "PRESETS", None), family, dict(values),
                             lambda k, v: f"{what} {text}: [values] {k} = {v!r}")  # fmt: skip
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(f"{what} {text}") else f"{what} {text}: {msg}") from None
    return Preset(path=text, agent=tune["agent"], values=dict(values), tune=dict(tune))


def presets_by_agent(paths: list[str], agents: list[str], what: str = "--preset-file") -> dict[str, Preset]:
    """{agent: preset} for ``bench compare`` / sweep files: each file names its agent; a file for
    an agent not compared, or two files for one agent, is an error."""
    out: dict[str, Preset] = {}
    for path in paths:
        pre = load_preset(path, what)
        if pre.agent not in agents:
            raise UserError(f"{what} {path}: a preset for {pre.agent}, which is not among the agents compared "
                            f"({', '.join(agents)})")  # fmt: skip
        if pre.agent in out:
            raise UserError(f"{what} {path}: a second preset for {pre.agent} (first: {out[pre.agent].path})")
        out[pre.agent] = pre
    return out


# Writing -------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _table(d: dict[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_toml_value(v)}" for k, v in d.items() if v is not None]


def preset_text(tune: dict[str, Any], values: dict[str, Any], trials: list[dict[str, Any]], header: str = "") -> str:
    lines = [f"# {ln}" for ln in header.splitlines()] + ["", "[tune]"] + _table(tune) + ["", "[values]"] + _table(values)
    for t in trials:
        lines += ["", "[[trials]]"] + _table(t)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_preset(path: Path, tune: dict[str, Any], values: dict[str, Any], trials: list[dict[str, Any]],
                 header: str = "") -> None:  # fmt: skip
    """Write the preset file atomically (a reader never sees half of one); checked by reading it back."""
    from bench.results import atomic_write_bytes

    text = preset_text(tune, values, trials, header)
    tomllib.loads(text)  # what we write must read back
    atomic_write_bytes(Path(path), text.encode())
