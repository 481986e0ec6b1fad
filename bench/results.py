"""One folder per run: tidy, append-only files (STYLE.md principle 10).

    config.json    resolved run + agent config, env protocol card, fingerprint, command line
    metrics.csv    one row per logging interval, appended and flushed
    learner.csv    the agent's own update diagnostics (columns fixed by its first report)
    eval.csv       evaluation rows: finished episodes and their return mean/std, plus the
                   episodes cut by the evaluation's step cap (count, mean partial return)
    compute.json   totals and per-phase seconds (rewritten atomically at each checkpoint/end), and
                   what the wall clock bought: cpu_s, cpu_share, cpu_wait_s, load_1m_mean/max
                   (bench.meter.CpuMeter; README, Units)
    checkpoint.pt  latest checkpoint (atomic replace)
    packages.txt   every installed distribution, ``name==version`` a line (written with config.json)
    code.diff      only when the code ran from a git tree with changes: ``git diff HEAD`` plus the
                   untracked files as new-file hunks, so ``git apply`` on the commit rebuilds it
    wandb.json     the W&B run id (``--wandb``), so a resumed run continues the same W&B run
    videos/        ``--capture-video``: evaluation clips ``eval_<env_steps>_ep<k>.mp4`` and their
                   ``.json`` sidecars (bench.video)
    done | failed  written last: `done` for a finished run, `failed` (with reason and step) for a
                   run stopped by a NaN/inf loss

Every write that replaces a file goes through a temporary file and ``os.replace``, so a crash
leaves either the old or the new version, never half of one. Rows are appended, so a SIGKILL
mid-write can leave a torn last row (no final newline): resume drops it. Any other damage to a
ledger (a row with the wrong field count or a non-number, a wrong header, fewer rows than the
checkpoint counts) is refused at resume with one line, never trained on.

A folder given as a run folder is either new (absent or empty), a run (a valid ``config.json``),
or refused (:meth:`RunDir.check`): files the tool cannot account for are never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from bench.errors import UserError

METRIC_COLUMNS = ["wall_s", "env_steps", "frames", "episodes", "grad_steps", "grad_samples",
                  "reuse_ratio", "sps", "episode_return", "episode_length"]  # fmt: skip
EVAL_COLUMNS = ["wall_s", "env_steps", "frames", "grad_samples", "eval_episodes", "eval_return_mean",
                "eval_return_std", "eval_episodes_capped", "eval_capped_return_mean"]  # fmt: skip
SCHEMA = 1
# What a run folder may hold besides config.json (tb/: TensorBoard events; wandb/: W&B's local
# files unless WANDB_DIR says otherwise); the leftover of an atomic write cut by a kill
# (atomic_write_bytes's temporary name) does not make a folder foreign.
_ATOMIC_TMP = re.compile(r"\..+\.tmp[0-9]+")
RUN_FILES = {"metrics.csv", "eval.csv", "learner.csv", "compute.json", "checkpoint.pt", "done", "failed", "tb",
             "packages.txt", "code.diff", "wandb", "wandb.json", "videos"}  # fmt: skip


def check_target_dir(path: Path, what: str = "") -> None:
    """UserError (one line) unless ``path`` is a writable folder or can be created as one (its
    nearest existing ancestor is a writable folder; missing parents are created)."""
    name = f"{what} {path}" if what else str(path)
    if str(path) == "":
        raise UserError(f"{what or 'folder'} '': empty path")
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{name}: exists and is a file, not a folder")
        anc = path
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise UserError(f"{name}: cannot be created, {anc} is a file")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise UserError(f"{name}: {anc} is not writable")
    except OSError as e:
        raise UserError(f"{name}: {e.strerror or e}") from None


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return v in ("True", "False")  # a bool diagnostic in learner.csv


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
        self.rows = 0  # complete rows in the file
        self.torn = False  # the file ends in a torn row (a writer killed mid-line); truncate drops it
        if path.exists():
            header, self.rows = self._scan()
            self.columns = header or columns

    def _scan(self) -> tuple[list[str] | None, int]:
        """(header, complete rows), refusing any damage but a torn last row. A file without a
        complete header (killed right after creating it) has header None and no rows."""
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path}: unreadable ({e.__class__.__name__}): the ledger is damaged") from None
        lines = text.split("\n")
        complete, self.torn = lines[:-1], bool(lines[-1])  # lines[-1]: what follows the last newline
        if not complete:
            return None, 0
        header = next(csv.reader([complete[0]]))
        if self.columns is not None and header != self.columns:
            raise UserError(f"{self.path}: unexpected header {header} (expected {self.columns}): the ledger is damaged")
        for i, line in enumerate(complete[1:], start=2):
            row = line.split(",")  # rows are plain numbers, written unquoted
            if len(row) != len(header):
                raise UserError(f"{self.path}: line {i} has {len(row)} fields, the header {len(header)}: "
                                "the ledger is damaged")  # fmt: skip
            bad = next((v for v in row if v and not _is_number(v)), None)
            if bad is not None:
                raise UserError(f"{self.path}: line {i} holds {bad[:20]!r}, not a number: the ledger is damaged")
        return header, len(complete) - 1

    def check_rows(self, rows: int) -> None:
        """UserError unless the file still holds the ``rows`` complete rows a checkpoint counted."""
        if rows > self.rows:
            raise UserError(f"{self.path}: {self.rows} complete rows, the checkpoint counted {rows}: "
                            "the ledger lost rows")  # fmt: skip

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
        """Keep the header and the first ``rows`` rows: rows written after a checkpoint, and a torn
        last row, are dropped. A file without a complete header is removed (rewritten on first use)."""
        self.close()
        if not self.path.exists():
            self.rows = 0
            return
        self.check_rows(rows)
        lines = self.path.read_text().split("\n")[:-1]  # complete lines
        if not lines:
            self.path.unlink()
        else:
            atomic_write_bytes(self.path, "".join(ln + "\n" for ln in lines[: rows + 1]).encode())
        self.rows, self.torn = rows, False

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class RunDir:
    def __init__(self, path: str | os.PathLike):
        if str(path) == "":
            raise UserError("--out '': empty path (give a run folder)")
        self.path = Path(path)
        self._logs: dict[str, CsvLog] | None = None  # scanned by check(), handed out by logs()

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def status(self) -> str:
        """'new' (absent, or an empty folder), 'done', 'failed', 'partial' (a config.json, no marker
        yet), or 'foreign' (a file, or a folder holding files but no config.json: see check())."""
        try:
            if not self.path.is_dir():
                return "foreign" if self.path.exists() else "new"
            if self.file("config.json").exists():
                return "done" if self.file("done").exists() else "failed" if self.file("failed").exists() else "partial"
            return "foreign" if any(not _ATOMIC_TMP.fullmatch(p.name) for p in self.path.iterdir()) else "new"
        except OSError:
            return "foreign"

    def check(self) -> str:
        """The status, once the folder is known to be usable; else UserError with a one-line
        reason. new: it can be created here; done / failed / partial: config.json is a valid run
        config; partial: its ledgers are intact too (scanned once, kept for :meth:`logs`)."""
        status = self.status
        if status == "new":
            check_target_dir(self.path)
        elif status == "foreign":
            if not self.path.is_dir():
                raise UserError(f"{self.path}: exists and is a file, not a run folder")
            names = sorted(p.name for p in self.path.iterdir() if not _ATOMIC_TMP.fullmatch(p.name))
            ours = [n for n in names if n in RUN_FILES]
            if ours:
                raise UserError(f"{self.path} holds run files ({', '.join(ours[:4])}) but no config.json, so they "
                                "cannot be resumed or attributed; move them away or choose another --out")  # fmt: skip
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise UserError(f"{self.path} is a non-empty folder that is not a run ({shown}); choose another --out")
        else:
            self.config()
            if status == "partial":
                check_target_dir(self.path)
                self._logs = self._open_logs()
        return status

    def create(self, config: dict) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.file("config.json"), {"schema": SCHEMA, **config})
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the run folder ({e.strerror or e})") from None

    def config(self) -> dict:
        cfg = read_json(self.file("config.json"), "config.json")
        if "run" not in cfg or "agent" not in cfg:
            raise UserError(f"{self.file('config.json')}: not an onoff-bench run config (no 'run'/'agent')")
        return cfg

    def logs(self) -> dict[str, CsvLog]:
        """The three ledgers, scanned (damage refused, see :class:`CsvLog`)."""
        logs, self._logs = self._logs, None
        return logs or self._open_logs()

    def _open_logs(self) -> dict[str, CsvLog]:
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
