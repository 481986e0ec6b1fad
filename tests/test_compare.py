"""bench compare / bench sweep: expansion, resume after a kill, Ray backend, bad input."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main as cli
from bench.compare import expand

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_expand_labels_knobs_and_equal_budgets(tmp_path):
    specs = expand(["random"], "puffer_breakout", 3, tmp_path, None, 60.0, {"random": {"num_envs": "64"}}, None, None)
    assert [s.seed for s in specs] == [1, 2, 3] and {s.time_s for s in specs} == {60.0}
    assert all(s.overrides == {"num_envs": 64} and s.label == "random" for s in specs)
    assert specs[0].out == str(tmp_path / "random" / "puffer_breakout" / "seed1")


def test_expand_reuse_and_horizon_knobs(tmp_path):
    specs = expand(["ppo", "rainbow"], "gym:CartPole-v1", 1, tmp_path, 1000, None, {}, [1, 4], [3, 32])
    got = {(s.label, tuple(sorted(s.overrides.items()))) for s in specs}
    assert ("ppo-reuse4-h32", (("epochs", 4), ("segment_length", 32))) in got
    assert ("rainbow-reuse1-h3", (("n_step", 3), ("replay_ratio", 1.0))) in got
    assert len(specs) == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--agents", "random", "nosuch", "--game", "puffer_breakout"], "unknown agent 'nosuch'"),
        (["--agents", "--game", "puffer_breakout"], "--agents is empty"),
        (["--agents", "random", "--game", "puffer_breakout", "--steps", "-3"], "--steps '-3'"),
        (["--agents", "random", "--game", "puffer_breakout", "--agent-option", "ppo.epochs=2"], "not among --agents"),
        (["--agents", "random", "--game", "puffer_breakout", "--workers", "64", "--time", "1s"], "--workers 64"),
    ],
)
def test_compare_bad_input(capsys, tmp_path, argv, message):
    assert cli(["compare", *argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_compare_conflicting_budgets_refused(capsys, tmp_path):
    out = str(tmp_path / "c")
    base = ["compare", "--agents", "random", "--game", "gym:CartPole-v1", "--seeds", "1", "--no-report", "--out", out]
    assert cli(base + ["--steps", "2k", "--workers", "1"]) == 0
    capsys.readouterr()
    assert cli(base + ["--steps", "3k", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "conflicting budgets" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("agents = [\n", "malformed TOML"),
        ('agents = ["random"]\ngames = ["puffer_breakout"]\n', "give a budget"),
        ('agents = ["random"]\ngames = ["puffer_breakout"]\nsteps = "1k"\nbogus = 1\n', "unknown key(s) bogus"),
        ('agents = []\ngames = ["puffer_breakout"]\nsteps = "1k"\n', "'agents' must be a non-empty list"),
        ('agents = ["random"]\ngames = ["nosuch_game"]\nsteps = "1k"\n', "unknown game 'nosuch_game'"),
        ('agents = ["random"]\ngames = ["gym:CartPole-v1"]\nsteps = "1k"\n[grid.random]\nnum_envs = 4\n', "non-empty list"),
    ],
)
def test_sweep_malformed_file(capsys, tmp_path, text, message):
    f = tmp_path / "s.toml"
    f.write_text(text)
    assert cli(["sweep", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _mtime_and_text(p: Path):
    return p.stat().st_mtime_ns, p.read_text()


def test_compare_killed_then_rerun_skips_finished_runs(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "bench.cli", "compare", "--agents", "random", "--game", "puffer_breakout",
           "--seeds", "3", "--steps", "3M", "--workers", "1", "--no-report", "--out", str(out),
           "--agent-option", "random.num_envs=256"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seed1 = out / "random" / "puffer_breakout" / "seed1"
    deadline = time.time() + 120
    while time.time() < deadline and not (seed1 / "done").exists():
        time.sleep(0.1)
    assert (seed1 / "done").exists(), "first run never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # the compare and its running child, mid-way
    proc.wait()
    assert not (out / "random" / "puffer_breakout" / "seed3" / "done").exists()
    before = _mtime_and_text(seed1 / "metrics.csv")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed 1: already finished, skipped" in r.stdout
    assert _mtime_and_text(seed1 / "metrics.csv") == before  # not rerun
    for k in (1, 2, 3):
        assert (out / "random" / "puffer_breakout" / f"seed{k}" / "done").exists()


def test_sigterm_to_compare_stops_its_runs_with_checkpoints(tmp_path):
    # `kill PID` (or a scheduler's SIGTERM) reaches only the compare process: it must pass the
    # signal on, so no run keeps going orphaned, and each run checkpoints and resumes later.
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "bench.cli", "compare", "--agents", "random", "--game", "puffer_breakout",
           "--seeds", "2", "--steps", "40M", "--workers", "2", "--no-report", "--out", str(out),
           "--agent-option", "random.num_envs=256"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = [out / "random" / "puffer_breakout" / f"seed{k}" for k in (1, 2)]
    deadline = time.time() + 120
    while time.time() < deadline and not all((r / "metrics.csv").exists() for r in runs):
        time.sleep(0.1)
    time.sleep(1.0)
    children = [int(x) for x in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]  # fmt: skip
    assert len(children) == 2, "expected two running `bench run` children"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 130
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped (and reaped), not orphaned
    for r in runs:
        assert (r / "checkpoint.pt").exists() and not (r / "done").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (make install adds it)")
def test_sweep_on_local_ray_runs_a_4_run_grid(tmp_path):
    f = tmp_path / "grid.toml"
    f.write_text('agents = ["random"]\ngames = ["gym:CartPole-v1"]\nseeds = 2\nsteps = "2k"\n'
                 "[grid.random]\nnum_envs = [2, 4]\n")  # fmt: skip
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bench.cli", "sweep", str(f), "--backend", "ray", "--out", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4/4 runs finished" in r.stdout
    done = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("done"))
    assert done == [f"random-num_envs{n}/gym_CartPole-v1/seed{s}" for n in (2, 4) for s in (1, 2)]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_example_sweep_files_expand(path, tmp_path):
    from bench.sweep import load_sweep, specs_from

    specs = specs_from(load_sweep(str(path)), tmp_path, str(path))
    assert specs and len({s.out for s in specs}) == len(specs)  # every run has its own folder
