"""Weights & Biases as an optional sink (bench run --wandb): fed from the same rows as the CSVs.

The refusals run everywhere; the offline-run test needs wandb (an extra) and is skipped without it."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
TINY = ["run", "--agent", "random", "--game", "gym:CartPole-v1", "--steps", "1k"]


def test_wandb_without_the_package_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert cli([*TINY, "--out", str(out), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert err == "bench: error: --wandb needs the wandb package: pip install 'onoff-bench[wandb]'\n"
    assert not out.exists()
    assert cli(["compare", "--agents", "random", "--game", "gym:CartPole-v1", "--steps", "1k", "--seeds", "1",
                "--out", str(tmp_path / "cmp"), "--wandb"]) == 2  # fmt: skip
    assert "--wandb needs the wandb package" in capsys.readouterr().err and not (tmp_path / "cmp").exists()


def test_wandb_options_without_wandb_are_refused(tmp_path, capsys):
    assert cli([*TINY, "--out", str(tmp_path / "run"), "--wandb-project", "p"]) == 2
    assert "--wandb-project without --wandb" in capsys.readouterr().err
    sweep = tmp_path / "s.toml"
    sweep.write_text('agents = ["random"]\ngames = ["gym:CartPole-v1"]\nsteps = "1k"\nwandb_group = "g"\n')
    assert cli(["sweep", str(sweep), "--out", str(tmp_path / "sw")]) == 2
    assert "wandb_group without wandb = true" in capsys.readouterr().err


def offline_records(path: Path) -> list:
    """Every record of an offline W&B run's .wandb file, as wandb's own protobuf ``Record``.

    The file is a LevelDB-style log (wandb dropped its Python reader, ``DataStore``, in 0.2x): a
    7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each a 7-byte header
    (CRC32, length, kind: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block's tail too
    short for a header is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding to the end of the block
            pos += block - pos % block if pos % block else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def history(records: list) -> list[dict]:
    out = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            out.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return out


def csv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_offline_wandb_run_holds_the_csv_rows_and_the_config(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"), WANDB_SILENT="true",
               PYTHONPATH=str(ROOT))  # fmt: skip
    cmd = [sys.executable, "-m", "bench.cli", "run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--steps", "4k",
           "--log-every", "512", "--eval-episodes", "2", "--out", str(out), "--wandb", "--wandb-group", "g"]  # fmt: skip
    # The process ends (W&B finished, its service gone) rather than hanging: the timeout would fail it.
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rid = json.loads((out / "wandb.json").read_text())["id"]
    (path,) = (tmp_path / "wandb").rglob("run-*.wandb")
    records = offline_records(path)
    run = next(rec.run for rec in records if rec.WhichOneof("record_type") == "run")
    assert run.run_id == rid and run.run_group == "g" and run.project == "onoff-bench"
    assert run.display_name == "ppo-gym:CartPole-v1-s1"
    config = {it.key: json.loads(it.value_json) for it in run.config.update}
    stored = json.loads((out / "config.json").read_text())
    assert config["run"] == stored["run"] and config["fingerprint"] == stored["fingerprint"]
    assert config["agent"] == stored["agent"] and config["env"] == stored["env"]

    h = history(records)
    train = [e for e in h if "train/sps" in e]
    metrics = csv_rows(out / "metrics.csv")
    assert [e["env_steps"] for e in train] == [int(m["env_steps"]) for m in metrics] and len(metrics) >= 7
    for e, m in zip(train, metrics):  # episode_return: mean return of the episodes since the last row
        if m["episode_return"]:
            assert math.isclose(e["train/episode_return"], float(m["episode_return"]), rel_tol=1e-6)
        else:
            assert "train/episode_return" not in e
    assert any("learner/loss" in e for e in train)  # the agent's latest learner.csv row rides along
    evals = [e for e in h if "eval/eval_return_mean" in e]
    ev = csv_rows(out / "eval.csv")
    assert [(e["env_steps"], e["eval/eval_return_mean"]) for e in evals] == [
        (int(x["env_steps"]), pytest.approx(float(x["eval_return_mean"]), rel=1e-6)) for x in ev]  # fmt: skip

    # A resumed run (here: its `done` marker removed, so the rerun resumes from the last
    # checkpoint) continues the same W&B run: the id is the run folder's.
    (out / "done").unlink()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "wandb.json").read_text())["id"] == rid
    paths = sorted((tmp_path / "wandb").rglob("run-*.wandb"))
    assert len(paths) == 2
    for p in paths:
        assert next(rec.run.run_id for rec in offline_records(p) if rec.WhichOneof("record_type") == "run") == rid


def test_a_failed_run_finishes_its_wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    import agents
    from bench.config import RunConfig
    from bench.errors import RunFailed
    from bench.harness import train

    for k, v in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path / "wandb")), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(agents.AGENTS, "nan", "tests.helpers.nan_agent")
    run = RunConfig(agent="nan", game="gym:CartPole-v1", seed=0, steps=400, log_every=8, wandb=True)
    with pytest.raises(RunFailed):
        train(run, {"num_envs": 4, "nan_after": 20}, out=tmp_path / "run")
    assert wandb.run is None  # finished, not left open in this process
    (path,) = (tmp_path / "wandb").rglob("run-*.wandb")
    records = offline_records(path)
    (exit_rec,) = [rec.exit for rec in records if rec.WhichOneof("record_type") == "exit"]
    assert exit_rec.exit_code == 1
    assert len([e for e in history(records) if "train/sps" in e]) == len(csv_rows(tmp_path / "run" / "metrics.csv"))
