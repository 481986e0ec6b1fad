"""One folder per run: tidy, append-only files (STYLE.md principle 10).

    config.json    resolved run + agent config, env protocol card, fingerprint, command line
    metrics.csv    one row per logging interval, appended and flushed
    learner.csv    the agent's own update diagnostics (columns fixed by its first report)
    eval.csv       evaluation rows
    compute.json   totals and per-phase seconds (rewritten atomically at each checkpoint/end)
    checkpoint.pt  latest checkpoint (atomic replace)
    done | failed  written last: `done` for a finished run, `failed` (with reason and step) for a
                   run stopped by a NaN/inf loss

Every write that replaces a file goes through a temporary file and ``os.replace``, so a crash
leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from bench.errors import UserError

METRIC_COLUMNS = ["wall_s", "env_steps", "frames", "episodes", "grad_steps", "grad_samples",
                  "reuse_ratio", "sps", "episode_return", "episode_length"]  # fmt: skip
EVAL_COLUMNS = ["wall_s", "env_steps", "frames", "grad_samples", "eval_episodes", "eval_return_mean",
                "eval_return_std"]  # fmt: skip
SCHEMA = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: unreadable {what} ({e.__class__.__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {what} is not a JSON object")
    return obj


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if abs(v) < 1e15 else repr(v)
    return str(v)


class CsvLog:
    """An append-only CSV whose every row is flushed as soon as it is written."""

    def __init__(self, path: Path, columns: list[str] | None):
        self.path, self.columns = path, columns
        self._f: io.TextIOWrapper | None = None
        self.rows = 0
        if path.exists():
            header, self.rows = self._scan()
            if columns is not None and header != columns:
                raise UserError(f"{path}: unexpected header {header} (expected {columns})")
            self.columns = header

    def _scan(self) -> tuple[list[str], int]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path}: unreadable ({e})") from None
        lines = text.splitlines()
        if not lines:
            raise UserError(f"{self.path}: empty file, no header")
        header = next(csv.reader([lines[0]]))
        for i, row in enumerate(csv.reader(lines[1:]), start=2):
            if len(row) != len(header):
                raise UserError(f"{self.path}: line {i} has {len(row)} fields, header has {len(header)} (truncated file?)")
        if not text.endswith("\n"):
            raise UserError(f"{self.path}: last line is incomplete (truncated file?)")
        return header, len(lines) - 1

    def ensure_header(self) -> None:
        """Create the file with just its header (a run without evaluations still has eval.csv)."""
        if self.columns is not None and not self.path.exists():
            atomic_write_bytes(self.path, (",".join(self.columns) + "\n").encode())

    def write(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
        if self._f is None:
            new = not self.path.exists()
            self._f = open(self.path, "a", newline="")
            if new:
                self._f.write(",".join(self.columns) + "\n")
        self._f.write(",".join(_fmt(row.get(c)) for c in self.columns) + "\n")
        self._f.flush()
        self.rows += 1

    def truncate(self, rows: int) -> None:
        """Keep the header and the first ``rows`` rows (rows written after a checkpoint are dropped)."""
        self.close()
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        atomic_write_bytes(self.path, "".join(lines[: rows + 1]).encode())
        self.rows = min(rows, max(len(lines) - 1, 0))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def status(self) -> str:
        """'new' (no config), 'done', 'failed', or 'partial' (started, not finished)."""
        if self.file("done").exists():
            return "done"
        if self.file("failed").exists():
            return "failed"
        if self.file("config.json").exists():
            return "partial"
        return "new"

    def create(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file("config.json"), {"schema": SCHEMA, **config})

    def config(self) -> dict:
        cfg = read_json(self.file("config.json"), "config.json")
        if "run" not in cfg or "agent" not in cfg:
            raise UserError(f"{self.file('config.json')}: not an onoff-bench run config (no 'run'/'agent')")
        return cfg

    def logs(self) -> dict[str, CsvLog]:
        return {
            "metrics": CsvLog(self.file("metrics.csv"), METRIC_COLUMNS),
            "eval": CsvLog(self.file("eval.csv"), EVAL_COLUMNS),
            "learner": CsvLog(self.file("learner.csv"), None),
        }

    def save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.file("checkpoint.pt"), buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        p = self.file("checkpoint.pt")
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable checkpoint
            raise UserError(f"{p}: unreadable checkpoint ({e.__class__.__name__})") from None

    def write_compute(self, compute: dict) -> None:
        atomic_write_json(self.file("compute.json"), compute)

    def mark_done(self, info: dict) -> None:
        atomic_write_json(self.file("done"), {"status": "ok", **info})

    def mark_failed(self, info: dict) -> None:
        atomic_write_json(self.file("failed"), {"status": "failed", **info})
