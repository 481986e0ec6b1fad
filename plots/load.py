"""Run folders -> :class:`Run` records and one tidy table.

A run folder is any folder holding a ``config.json`` (``bench run`` writes one; ``bench compare``
nests them as ``OUT/<agent>/<game>/seed<k>/``), so :func:`find_runs` walks the given folders
recursively and stops descending at the first ``config.json``.

Nothing is dropped silently. A run is ``ok`` (``done`` marker), ``failed`` (``failed`` marker,
with its reason) or ``incomplete`` (neither: crashed, killed or still running); all three are
loaded with the rows they have. The torn last line of a killed writer (no final newline) is not
used and is counted in ``Run.torn_rows``. A folder whose ``config.json`` cannot be read cannot
be attributed to an agent or a game, and a run whose ledgers are damaged (metrics.csv or
eval.csv empty, with the wrong columns or with a row that is not numbers; compute.json that is
not JSON; a finished run without metrics.csv) cannot be trusted: both are returned in the
``skipped`` list with the reason ("damaged: ..."), never aggregated, and the report lists them.
"""

from __future__ import annotations

import hashlib
import gzip
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

# The columns `bench run` writes (bench/results.py METRIC_COLUMNS / EVAL_COLUMNS); kept here as
# well so that loading runs does not import torch. tests/test_report.py checks they agree.
METRIC_COLUMNS = ["wall_s", "env_steps", "frames", "episodes", "grad_steps", "grad_samples",
                  "reuse_ratio", "sps", "episode_return", "episode_length"]  # fmt: skip
EVAL_COLUMNS = ["wall_s", "env_steps", "frames", "grad_samples", "eval_episodes", "eval_return_mean",
                "eval_return_std", "eval_episodes_capped", "eval_capped_return_mean"]  # fmt: skip
PHASES = ("env", "act", "learn", "eval")

# Agent config fields that set the bootstrap horizon, first match wins: PPO's rollout segment
# (GAE bootstraps from the value at its end), Rainbow/BTR's n-step return.
HORIZON_FIELDS = ("segment_length", "n_step")


def read_ledger(path: Path, required: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int, str | None]:
    """(numeric columns, torn rows, damage) of a result CSV. Empty fields become NaN. A torn last
    row (no final newline: a writer killed mid-line) is not used and is counted; any other damage
    is returned as a one-line reason, with no columns. ``required``: columns the header must
    hold. A missing file is no damage (a run that has not written it yet)."""
    name = path.name
    gz = path.with_name(path.name + ".gz")  # results archives keep ledgers gzipped (bench.paper)
    try:
        text = path.read_text() if path.exists() or not gz.exists() else gzip.decompress(gz.read_bytes()).decode()
    except FileNotFoundError:
        return {}, 0, None
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        return {}, 0, f"{name} unreadable ({e.__class__.__name__})"
    lines = text.split("\n")
    body, tail = lines[1:-1], lines[-1]
    header = lines[0].split(",") if len(lines) > 1 and lines[0].strip() else []
    if not header:
        return {}, 0, f"{name} is empty (no header)"
    missing = [c for c in required if c not in header]
    if missing:
        return {}, 0, f"{name} has the wrong columns (no {', '.join(missing[:3])})"
    rows: list[list[float]] = []
    for i, line in enumerate(body, start=2):
        fields = line.split(",")
        try:
            if len(fields) != len(header):
                raise ValueError
            rows.append([float(f) if f.strip() else math.nan for f in fields])
        except ValueError:
            return {}, 0, f"{name} line {i} is not a row of {len(header)} numbers ({line[:30]!r})"
    arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return {h: arr[:, j] for j, h in enumerate(header)}, 1 if tail.strip() else 0, None


def _json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def hardware_key(fp: dict) -> str:
    """What must match for wall-clock numbers to be pooled: CPU model (with its family/model id
    where recorded; runs made before it was recorded keep their old key), core share, GPU."""
    cpu = f"{fp.get('cpu')} [{fp['cpu_id']}]" if fp.get("cpu_id") else f"{fp.get('cpu')}"
    return f"{cpu} x{fp.get('cores_allowed') or fp.get('cores')} | gpu={fp.get('gpu')}"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    status: str  # "ok" | "failed" | "incomplete"
    reason: str  # why it is not ok; "" when ok
    metrics: dict[str, np.ndarray]  # metrics.csv columns, [rows] each
    evals: dict[str, np.ndarray]  # eval.csv columns, [eval rows] each (may be empty)
    compute: dict[str, Any]  # compute.json ({} when missing)
    torn_rows: int = 0  # rows of metrics.csv / eval.csv that could not be parsed
    notes: list[str] = field(default_factory=list)

    # Identity -----------------------------------------------------------------------------
    @property
    def agent(self) -> str:
        return str(self.config["run"]["agent"])

    @property
    def label(self) -> str:
        """The name reports group by: ``--label`` when given (sweeps), else the agent name."""
        return str(self.config["run"].get("label") or self.agent)

    @property
    def game(self) -> str:
        return str(self.config["run"]["game"])

    @property
    def seed(self) -> int:
        return int(self.config["run"].get("seed", 0))

    @property
    def env(self) -> dict[str, Any]:
        return self.config.get("env") or {}

    @property
    def family(self) -> str:
        return str(self.env.get("family") or _family_from_name(self.game))

    @property
    def protocol(self) -> dict[str, Any]:
        return self.env.get("protocol") or {}

    @property
    def protocol_name(self) -> str:
        return str(self.protocol.get("name") or self.family)

    @property
    def protocol_id(self) -> str:
        """Short hash of everything that defines the environment's rules for this game."""
        card = {"family": self.family, "frameskip": self.env.get("frameskip"), "protocol": self.protocol}
        return hashlib.sha1(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.config.get("fingerprint") or {}

    @property
    def hardware(self) -> str:
        return hardware_key(self.fingerprint)

    @property
    def agent_config(self) -> dict[str, Any]:
        return self.config.get("agent") or {}

    @property
    def horizon(self) -> float | None:
        """Bootstrap horizon in env steps (PPO segment length, n-step return), None if neither."""
        for k in HORIZON_FIELDS:
            v = self.agent_config.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    # Totals -------------------------------------------------------------------------------
    def last(self, column: str) -> float:
        col = self.metrics.get(column)
        return float(col[-1]) if col is not None and len(col) else math.nan

    def _compute_is_current(self) -> bool:
        """compute.json is rewritten at checkpoints; a crashed run's rows may be further along."""
        c_steps = self.compute.get("env_steps")
        return c_steps is not None and not (self.last("env_steps") > float(c_steps))

    def total(self, key: str) -> float:
        """``env_steps``, ``frames``, ``grad_samples``, ``episodes``, ``reuse_ratio``, ``wall_s``:
        from compute.json unless the metric rows are further along (a crashed run)."""
        ckey = "train_wall_s" if key == "wall_s" else key
        if self._compute_is_current() and self.compute.get(ckey) is not None:
            return float(self.compute[ckey])
        return self.last(key)

    @property
    def sps(self) -> float:
        steps, wall = self.total("env_steps"), self.total("wall_s")
        return steps / wall if wall > 0 else math.nan

    @property
    def train_flops(self) -> float:
        """Estimated training FLOPs: per-sample act and update costs (measured once by the
        meter) times the env steps and gradient samples actually taken."""
        fa, fg = self.compute.get("flops_per_act_sample"), self.compute.get("flops_per_grad_sample")
        if fa is None or fg is None:
            return math.nan
        return float(fa) * self.total("env_steps") + float(fg) * self.total("grad_samples")

    @property
    def mfu(self) -> dict[str, float]:
        """Model FLOP utilisation overall and of the learn phase, from compute.json (NaN for runs
        made before the meter recorded it; bench.peak says what it counts)."""
        return {k: float(self.compute[k]) if isinstance(self.compute.get(k), (int, float)) else math.nan
                for k in ("mfu", "mfu_learn")}  # fmt: skip

    @property
    def cpu_share(self) -> float | None:
        """compute.json ``cpu_share``: the CPU time the process got over what its training wall
        clock offered its cores (bench.meter.CpuMeter); None for runs made before it was recorded."""
        v = self.compute.get("cpu_share")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def phase_s(self) -> dict[str, float]:
        ph = self.compute.get("phase_s") or {}
        return {p: float(ph[p]) if ph.get(p) is not None else math.nan for p in PHASES}

    @property
    def budget(self) -> str:
        r = self.config["run"]
        parts = []
        if r.get("steps"):
            parts.append(f"{int(r['steps']):,} env_steps")
        if r.get("time_s"):
            parts.append(f"{float(r['time_s']):g} s")
        return " / ".join(parts) or "?"


def _family_from_name(game: str) -> str:
    # Mirrors envs.family_of without importing envs (the report runs without torch envs).
    if game.startswith("puffer_"):
        return "puffer"
    if game.startswith("gym:"):
        return "gym"
    if game.startswith("minatar:"):
        return "minatar"
    return "ale"


def find_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """Every run folder (one holding config.json) under ``paths``, in a stable order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if not p.is_dir():
            raise UserError(f"{p}: not a folder (give run folders or folders holding them)")
        if (p / "config.json").is_file():
            found.append(p)
            continue
        for root, dirs, files in os.walk(p):
            if "config.json" in files:
                found.append(Path(root))
                dirs[:] = []  # a run folder's subfolders (e.g. tb/) are not runs
            else:
                dirs.sort()
    seen: set[Path] = set()
    unique = []
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


def load_run(path: Path) -> Run | str:
    """The run in ``path``, or the reason it cannot be used at all."""
    cfg = _json(path / "config.json")
    if cfg is None:
        return "config.json unreadable"
    run = cfg.get("run")
    if not isinstance(run, dict) or not run.get("agent") or not run.get("game"):
        return "config.json has no run.agent / run.game (not an onoff-bench run)"
    metrics, torn_m, bad_m = read_ledger(path / "metrics.csv", tuple(METRIC_COLUMNS))
    evals, torn_e, bad_e = read_ledger(path / "eval.csv", ("env_steps", "eval_episodes", "eval_return_mean"))
    compute = _json(path / "compute.json") or {}
    damage = bad_m or bad_e
    if not damage and (path / "compute.json").exists() and not compute:
        damage = "compute.json is not a JSON object"
    if not damage and (path / "done").exists() and not any((path / f).exists() for f in ("metrics.csv", "metrics.csv.gz")):
        damage = "finished, but metrics.csv is missing"
    if damage:
        return f"damaged: {damage}"
    if (path / "done").exists():
        status, reason = "ok", ""
    elif (path / "failed").exists():
        info = _json(path / "failed") or {}
        status = "failed"
        at = (
            f" at env_steps={int(info['env_steps']):,}"
            if isinstance(info.get("env_steps"), (int, float))
            else ""
        )
        reason = f"{info.get('reason', 'failed marker without reason')}{at}"
    else:
        status, reason = "incomplete", "no done marker (crashed, killed or still running)"
    r = Run(path=path, config=cfg, status=status, reason=reason, metrics=metrics, evals=evals,
            compute=compute, torn_rows=torn_m + torn_e)  # fmt: skip
    if not metrics or len(metrics.get("env_steps", ())) == 0:
        r.notes.append("no metric rows")
    if r.torn_rows:
        r.notes.append(f"{r.torn_rows} unparseable row(s) ignored")
    if not compute:
        r.notes.append("no compute.json: totals from the last metric row, no FLOPs or phase times")
    return r


def load_runs(paths: list[str | os.PathLike]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """(runs, skipped): every run folder under ``paths``; folders that cannot be attributed to an
    agent and a game are returned in ``skipped`` with the reason."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for p in find_runs(paths):
        r = load_run(p)
        if isinstance(r, str):
            skipped.append((p, r))
        else:
            runs.append(r)
    runs.sort(key=lambda r: (r.game, r.label, r.seed, str(r.path)))
    return runs, skipped


def tidy(runs: list[Run]):
    """One long table: a row per metric row of every run, with the run's identity columns
    (agent, label, game, seed, status, protocol, hardware, path) and every meter column.
    A run without metric rows still gets one row (meter columns empty)."""
    import pandas as pd

    frames = []
    for r in runs:
        n = len(r.metrics.get("env_steps", ()))
        cols = {c: r.metrics.get(c, np.full(n, np.nan)) for c in METRIC_COLUMNS}
        if n == 0:
            cols = {c: np.array([np.nan]) for c in METRIC_COLUMNS}
            n = 1
        ident = {
            "agent": r.agent,
            "label": r.label,
            "game": r.game,
            "seed": r.seed,
            "status": r.status,
            "protocol": f"{r.protocol_name}#{r.protocol_id}",
            "hardware": r.hardware,
            "path": str(r.path),
        }
        frames.append(pd.DataFrame({**{k: [v] * n for k, v in ident.items()}, **cols}))
    if not frames:
        return pd.DataFrame(columns=["agent", "label", "game", "seed", "status", "protocol", "hardware", "path",
                                     *METRIC_COLUMNS])  # fmt: skip
    return pd.concat(frames, ignore_index=True)
