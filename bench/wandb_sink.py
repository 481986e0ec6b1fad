"""Weights & Biases as an optional sink (``bench run --wandb``), fed from the same rows the harness
writes to the CSVs, which stay the record (STYLE.md principle 10).

What a W&B run holds:

* config: the run folder's ``config.json`` (run and agent config, env protocol card,
  fingerprint, command line);
* history: one entry per ``metrics.csv`` row (``train/<column>``, with the agent's latest
  ``learner.csv`` row at that point as ``learner/<column>``) and one per ``eval.csv`` row
  (``eval/<column>``). Every entry carries ``env_steps``, the x axis of every chart
  (``define_metric``); empty cells are left out.

Identity: the W&B run id is drawn once and kept in the run folder's ``wandb.json``, so rerunning
the command on an unfinished folder continues the same W&B run (``resume="allow"``). A resume
drops the CSV rows written after the last checkpoint; W&B keeps what it was sent, so its history
can hold that stretch of env_steps twice. W&B's local files go to ``WANDB_DIR`` when set, else to
``wandb/`` in the run folder (an offline run is synced later with ``wandb sync``).

wandb is imported here only, and only when ``--wandb`` is given: the tests and CI never need it.
W&B's own process (system metrics, uploads) shares the machine with the run, so wall-clock
numbers of runs with and without ``--wandb`` are not strictly comparable; its system-metrics
sampling is switched off to keep that small.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.errors import UserError
from bench.results import RunDir, atomic_write_json, read_json

ID_FILE = "wandb.json"


def run_id(rd: RunDir) -> str:
    """The W&B run id of this run folder: read from ``wandb.json``, or drawn and stored there."""
    path = rd.file(ID_FILE)
    if path.exists():
        rid = read_json(path, ID_FILE).get("id")
        if not isinstance(rid, str) or not rid:
            raise UserError(f"{path}: no W&B run id in it; remove the file to start a new W&B run")
        return rid
    rid = uuid.uuid4().hex[:16]
    atomic_write_json(path, {"id": rid})
    return rid


def history_entry(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    """``{prefix/column: value}`` for the row's non-empty cells (``env_steps`` kept bare: the x axis)."""
    return {(k if k == "env_steps" else f"{prefix}/{k}"): v for k, v in row.items() if v is not None}


class WandbSink:
    """One W&B run for one run folder; a context manager whose exit finishes it with the run's exit
    status, so W&B's process never outlives the run, whether it ends, fails or is interrupted."""

    def __init__(self, rd: RunDir, run: RunConfig):
        try:
            import wandb
        except ImportError as e:
            raise UserError(f"--wandb: cannot import wandb ({e}); pip install 'onoff-bench[wandb]'") from None
        self._wandb = wandb
        rid = run_id(rd)
        settings: dict[str, Any] = {"console": "off"}  # the run's own stdout/stderr stay untouched
        for key in ("x_disable_stats", "_disable_stats"):  # the name moved between wandb versions
            if key in getattr(wandb.Settings, "model_fields", {}) or hasattr(wandb.Settings, key):
                settings[key] = True
                break
        try:
            self.run = wandb.init(
                project=run.wandb_project, entity=run.wandb_entity, group=run.wandb_group,
                name=f"{run.label or run.agent}-{run.game}-s{run.seed}", id=rid, resume="allow",
                config=rd.config(), dir=str(_wandb_dir(rd.path)), job_type="train",
                settings=wandb.Settings(**settings),
            )  # fmt: skip
        except wandb.Error as e:
            raise UserError(f"--wandb: W&B refused the run ({str(e).splitlines()[0] if str(e) else e.__class__.__name__})"
                            "; WANDB_MODE=offline runs without an account") from None  # fmt: skip
        self.run.define_metric("env_steps")
        for prefix in ("train", "learner", "eval"):
            self.run.define_metric(f"{prefix}/*", step_metric="env_steps")

    def log_row(self, row: dict[str, Any], learner: dict[str, Any] | None) -> None:
        """A metrics.csv row, with the latest learner.csv row (None: no update reported yet)."""
        entry = history_entry("train", row)
        if learner:
            entry.update(history_entry("learner", {k: v for k, v in learner.items() if k != "env_steps"}))
        self.run.log(entry)

    def log_eval(self, row: dict[str, Any]) -> None:
        self.run.log(history_entry("eval", row))

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> WandbSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Finish with the status the run ends with: 0, 130 (interrupted, resumable) or 1."""
        self.close(0 if exc_type is None else 130 if issubclass(exc_type, KeyboardInterrupt) else 1)
        return False


def _wandb_dir(run_path: Path) -> Path:
    d = Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else run_path
    d.mkdir(parents=True, exist_ok=True)
    return d
