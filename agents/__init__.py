"""Agent registry: name -> module. Each module defines ``Config`` (a frozen dataclass with a
``num_envs`` field), ``Agent`` (the five-method contract in :mod:`agents.api`) and optionally
``PRESETS`` (env family -> config overrides, e.g. PufferLib-tuned settings for Ocean games).

Modules are imported lazily so that ``bench envs`` never pays for torch.nn code it does not use.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

AGENTS: dict[str, str] = {
    "random": "agents.random",
    "ppo": "agents.ppo",
    "rainbow": "agents.rainbow",
    "btr": "agents.btr",
    "pqn": "agents.pqn",
}


def available() -> list[str]:
    """Registered agents whose module exists in this checkout."""
    return [n for n, m in AGENTS.items() if importlib.util.find_spec(m) is not None]


def load(name: str) -> ModuleType:
    """The agent module for ``name``; raises KeyError for an unknown name."""
    if name not in AGENTS or importlib.util.find_spec(AGENTS[name]) is None:
        raise KeyError(name)
    return importlib.import_module(AGENTS[name])
