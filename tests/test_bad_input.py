"""Bad input as a hostile user would type it (issue 14): every malformed invocation of every
command prints one line and exits 2, before any training starts, never a traceback, and changes
nothing in the folders it was pointed at. Plus the run-folder integrity rules: foreign folders
refused untouched, damaged ledgers refused at resume, a torn last row dropped at resume, damaged
runs listed (never aggregated) by `bench report`.

The table runs in-process through ``bench.cli.main`` (fast: one torch import for all of it); a
few cases go through a real subprocess to prove no traceback reaches a terminal."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main as cli
from bench.config import RunConfig
from bench.harness import train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--agent", "random", "--game", "gym:CartPole-v1", "--steps", "1k"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder the commands are pointed at: a finished tiny run, a file, a foreign folder, an
    orphaned run (files, no config.json), a run with an unreadable config, a compare tree with a
    stray file, a run whose metrics.csv is garbage. Sweep files live elsewhere."""
    root = tmp_path_factory.mktemp("world")
    assert cli(["run", *TINY, "--out", str(root / "done_run")]) == 0
    (root / "afile").write_text("not a folder\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine\n")
    (root / "orphan").mkdir()
    for name in ("metrics.csv", "checkpoint.pt", "compute.json"):
        shutil.copy(root / "done_run" / name, root / "orphan" / name)
    shutil.copytree(root / "done_run", root / "badcfg")
    (root / "badcfg" / "config.json").write_text("{not json")
    (root / "badcfg" / "done").unlink()
    stray = root / "cmp" / "random" / "gym_CartPole-v1" / "seed1"
    stray.mkdir(parents=True)
    (stray / "x.txt").write_text("stray\n")
    shutil.copytree(root / "done_run", root / "damaged" / "r1")
    (root / "damaged" / "r1" / "metrics.csv").write_text("abc,xyz\n1,2\n")
    (root / "baseline.json").write_text("{garbage")
    sweeps = tmp_path_factory.mktemp("sweeps")
    return root, sweeps


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file and folder under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(d) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size if p.is_file() else 0)
    return out


SWEEP_HEAD = 'agents = ["ppo"]\ngames = ["gym:CartPole-v1"]\n'
SWEEP_OK = SWEEP_HEAD + 'steps = "1k"\n'

# (argv with {R} = world folder, {S} = sweep file written from `toml`, toml or None, expected text)
RUN = ["run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--steps", "1k", "--out", "{R}/new"]
RB = ["run", "--agent", "rainbow", "--game", "gym:CartPole-v1", "--steps", "1k", "--out", "{R}/new"]
PERF = ["perf", "--agent", "ppo", "--game", "gym:CartPole-v1", "--seconds", "1"]
CMP = ["compare", "--agents", "random", "ppo", "--game", "gym:CartPole-v1", "--steps", "1k"]
CMPO = [*CMP, "--out", "{R}/newc"]
CMPP = ["compare", "--agents", "ppo", "--game", "gym:CartPole-v1", "--steps", "1k", "--out", "{R}/newc"]
REP = ["report", "{R}/done_run"]

CASES = [
    # bench run: agent options out of their declared range
    (RUN + ["--lr", "-1"], None, "--lr -1.0 must be > 0"),
    (RUN + ["--lr", "nan"], None, "--lr nan must be finite"),
    (RUN + ["--adam-beta1", "1.5"], None, "--adam-beta1 1.5 must be in [0, 1)"),
    (RUN + ["--encoder", "bogus"], None, "--encoder 'bogus' is not one of auto, mlp, nature, impala"),
    (RUN + ["--gamma", "2"], None, "--gamma 2.0 must be in [0, 1]"),
    (RUN + ["--gamma", "-0.5"], None, "--gamma -0.5 must be in [0, 1]"),
    (RUN + ["--gae-lambda", "1.5"], None, "--gae-lambda 1.5 must be in [0, 1]"),
    (RUN + ["--hidden", "0"], None, "--hidden 0 must be >= 1"),
    (RUN + ["--clip-coef", "-1"], None, "--clip-coef -1.0 must be >= 0"),
    (RUN + ["--max-grad-norm", "inf"], None, "--max-grad-norm inf must be finite"),
    (RUN + ["--mlp-layers", "-1"], None, "--mlp-layers -1 must be >= 0"),
    (RUN + ["--lr-schedule", "bogus"], None, "--lr-schedule 'bogus' is not one of"),
    (RUN + ["--lstm-hidden", "8", "--minibatches", "16"], None, "num_envs (8) >= minibatches (16)"),
    (RUN + ["--num-envs", "many"], None, "--num-envs 'many'"),
    (RB + ["--batch-size", "0"], None, "--batch-size 0 must be >= 1"),
    (RB + ["--batch-size", "-3"], None, "--batch-size -3 must be >= 1"),
    (RB + ["--replay-ratio", "0"], None, "--replay-ratio 0.0 must be > 0"),
    (RB + ["--gamma", "2"], None, "--gamma 2.0 must be in [0, 1]"),
    (RB + ["--q-loss", "l1"], None, "--q-loss 'l1' is not one of huber, mse"),
    (["run", "--agent", "btr", "--game", "gym:CartPole-v1", "--steps", "1k", "--kappa", "0"], None,
     "--kappa 0.0 must be > 0"),
    # bench run: budgets, counts and run options
    (RUN[:6] + ["1_", "--out", "{R}/new"], None, "--steps '1_' is not a step count"),
    (RUN[:6] + ["1e99", "--out", "{R}/new"], None, "more than 1e+13 env steps"),
    (RUN[:6] + ["0", "--out", "{R}/new"], None, "--steps '0' must be a positive whole number"),
    (RUN + ["--time", "100000d"], None, "--time '100000d' is more than a year"),
    (RUN + ["--eval-episodes", "-1"], None, "--eval-episodes -1 must be in [0, 1000000]"),
    (RUN + ["--eval-every", "0"], None, "--eval-every '0'"),
    (RUN + ["--log-every", "1_"], None, "--log-every '1_'"),
    (RUN + ["--checkpoint-every", "0s"], None, "--checkpoint-every '0s'"),
    (RUN + ["--threads", "0"], None, "--threads 0 must be in [1, 4096]"),
    (RUN + ["--seed", "-1"], None, "--seed -1 must be in [0, 2147483647]"),
    (RUN + ["--device", "bogus"], None, "--device 'bogus'"),
    (RUN + ["--protocol", "bogus"], None, "invalid choice: 'bogus'"),
    (["run", "--agent", "nosuch", "--game", "gym:CartPole-v1", "--steps", "1k"], None, "unknown agent 'nosuch'"),
    (["run", "--agent", "ppo", "--game", "nosuch_game", "--steps", "1k"], None, "unknown game 'nosuch_game'"),
    (["run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--out", "{R}/new"], None, "give a budget"),
    # bench run: run folders and paths
    (["run", *TINY, "--out", ""], None, "--out '': empty path"),
    (["run", *TINY, "--out", "{R}/afile"], None, "afile: exists and is a file"),
    (["run", *TINY, "--out", "{R}/afile/sub"], None, "cannot be created, {R}/afile is a file"),
    (["run", *TINY, "--out", "{R}/foreign"], None, "is a non-empty folder that is not a run (notes.txt)"),
    (["run", *TINY, "--out", "{R}/orphan"], None, "holds run files (checkpoint.pt, compute.json, metrics.csv)"),
    (["run", *TINY, "--out", "{R}/badcfg"], None, "unreadable config.json"),
    (["run", *TINY, "--seed", "9", "--out", "{R}/done_run"], None, "holds a different run (differs in: seed)"),
    (["run", *TINY, "--out", "/proc/nosuch/run"], None, "cannot create the run folder"),
    # bench envs
    (["envs", "--game", "gym:CartPole-v1", "--threads", "0"], None, "--threads 0 must be in [1, 4096]"),
    (["envs", "--game", "gym:CartPole-v1", "--num-envs", "0"], None, "--num-envs 0 must be in"),
    (["envs", "--game", "nosuch_game"], None, "unknown game 'nosuch_game'"),
    (["envs", "--game", "gym:CartPole-v1", "--seconds", "0"], None, "--seconds '0' must be a positive duration"),
    (["envs", "--game", "gym:CartPole-v1", "--seconds", "banana"], None, "--seconds 'banana' is not a duration"),
    # bench perf: both configurations checked before the first measurement
    (PERF + ["--baseline", "nosuch=1"], None, "--baseline nosuch=1: ppo has no option 'nosuch'"),
    (PERF + ["--baseline", "lr=-1"], None, "--baseline lr=-1.0 must be > 0"),
    (PERF + ["--baseline", "lr"], None, "--baseline 'lr': expected KEY=VALUE"),
    (PERF + ["--baseline", "norm_adv=maybe"], None, "--baseline norm_adv=maybe: expected true or false"),
    (PERF + ["--baseline", "hidden=1.5"], None, "--baseline hidden=1.5: expected an int"),
    (PERF + ["--lr", "-1"], None, "--lr -1.0 must be > 0"),
    (PERF[:6] + ["0"], None, "--seconds '0' must be a positive duration"),
    (PERF + ["--threads", "0"], None, "--threads 0 must be in [1, 4096]"),
    # bench compare: every run's config resolved before any starts
    (CMPO + ["--reps", "0"], None, "--reps 0 must be >= 1"),
    (CMPO + ["--eval-episodes", "-1"], None, "--eval-episodes -1 must be in [0, 1000000]"),
    (CMPO + ["--workers", "0"], None, "--workers 0 must be in [1, "),
    (CMPO + ["--seeds", "0"], None, "--seeds 0 must be >= 1"),
    (CMPO + ["--seeds", "100000"], None, "200,000 runs is more than --max-runs 1,000"),
    (CMPO + ["--agent-option", "ppo.nosuch=1"], None, "--agent-option ppo.nosuch=1: ppo has no option 'nosuch'"),
    (CMPO + ["--agent-option", "ppo.lr=-1"], None, "--agent-option ppo.lr=-1.0 must be > 0"),
    (CMPO + ["--agent-option", "ppo.lr=abc"], None, "--agent-option ppo.lr=abc: expected a float"),
    (CMPO + ["--agent-option", "lr=1"], None, "expected AGENT.KEY=VALUE"),
    (CMPO + ["--agent-option", "rainbow.lr=1"], None, "'rainbow' is not among --agents"),
    (CMPP + ["--reuse", "0"], None, "--reuse 0: ppo needs a positive whole number"),
    (CMPP + ["--reuse", "1.5"], None, "--reuse 1.5: ppo needs a positive whole number"),
    (CMPP + ["--horizon", "0"], None, "--horizon 0: must be >= 1"),
    (CMPP + ["--reuse", "2", "--agent-option", "ppo.minibatches=0"], None,
     "--agent-option ppo.minibatches=0 must be >= 1"),
    (CMP[:6] + ["--steps", "1e99", "--out", "{R}/newc"], None, "more than 1e+13 env steps"),
    (CMP + ["--out", ""], None, "--out '': empty path"),
    (CMP + ["--out", "{R}/afile"], None, "--out {R}/afile: exists and is a file"),
    (CMP + ["--out", "{R}/afile/sub"], None, "cannot be created"),
    (CMP + ["--out", "{R}/done_run"], None, "is a run folder"),
    (CMP + ["--out", "/proc/nosuch/cmp"], None, "--out /proc/nosuch/cmp: cannot create it"),
    (["compare", "--agents", "random", "--game", "gym:CartPole-v1", "--steps", "1k", "--out", "{R}/cmp"], None,
     "is a non-empty folder that is not a run (x.txt)"),
    # bench sweep: the file's types, ranges and size
    (["sweep", "{SWEEPS}"], None, "is a folder; give a sweep file"),
    (["sweep", "{SWEEPS}/nosuch.toml"], None, "no such sweep file"),
    (["sweep", "{S}"], "agents = [\n", "malformed TOML"),
    (["sweep", "{S}"], SWEEP_OK + "reuse = []\n", "reuse = [] must be a non-empty list"),
    (["sweep", "{S}"], SWEEP_OK + "horizon = [0]\n", "horizon = [0] must be a non-empty list"),
    (["sweep", "{S}"], SWEEP_HEAD + "steps = true\n", "steps = True is not a step count"),
    (["sweep", "{S}"], SWEEP_HEAD + 'steps = "1e99"\n', "more than 1e+13 env steps"),
    (["sweep", "{S}"], SWEEP_HEAD + "time = true\n", "time = True is not a duration"),
    (["sweep", "{S}"], SWEEP_OK + "workers = 0\n", "workers = 0 must be a whole number >= 1"),
    (["sweep", "{S}"], SWEEP_OK + "eval_episodes = -1\n", "eval_episodes = -1 must be a whole number >= 0"),
    (["sweep", "{S}"], SWEEP_OK + 'eval_episodes = "x"\n', "eval_episodes = 'x' must be a whole number"),
    (["sweep", "{S}"], SWEEP_OK + "seeds = true\n", "seeds = True must be a positive count"),
    (["sweep", "{S}"], SWEEP_OK + "seeds = 100000\n", "100,000 runs is more than --max-runs 1,000"),
    (["sweep", "{S}"], SWEEP_OK + "[options.ppo]\nnosuch = 1\n", "[options.ppo] nosuch = 1: ppo has no option"),
    (["sweep", "{S}"], SWEEP_OK + "[options.ppo]\nlr = -1.0\n", "[options.ppo] lr = -1.0 must be > 0"),
    (["sweep", "{S}"], SWEEP_OK + '[options.ppo]\nlr = "abc"\n', "[options.ppo] lr = 'abc': expected a float"),
    (["sweep", "{S}"], SWEEP_OK + "[options.ppo]\nhidden = 1.5\n", "[options.ppo] hidden = 1.5: expected an int"),
    (["sweep", "{S}"], SWEEP_OK + "[grid.ppo]\ngamma = [0.9, 2.0]\n", "[grid.ppo] gamma = 2.0 must be in [0, 1]"),
    (["sweep", "{S}", "--workers", "0"], SWEEP_OK, "--workers 0 must be >= 1"),
    (["sweep", "{S}", "--out", "{R}/afile"], SWEEP_OK, "--out {R}/afile: exists and is a file"),
    (["sweep", "{S}", "--out", ""], SWEEP_OK, "--out '': empty path"),
    (["sweep", "{S}", "--out", "{R}/afile/sub"], SWEEP_OK, "cannot be created, {R}/afile is a file"),
    (["sweep", "{S}", "--out", "/proc/nosuch/sw"], SWEEP_OK, "--out /proc/nosuch/sw: cannot create it"),
    # bench report
    (["report", "{R}/nosuch"], None, "no such file or folder"),
    (["report", "{R}/afile"], None, "not a folder"),
    (REP + ["--out", "{R}/afile"], None, "--out {R}/afile: exists and is a file"),
    (REP + ["--out", "{R}/afile/sub"], None, "cannot be created"),
    (REP + ["--out", ""], None, "--out '': empty path"),
    (REP + ["--out", "/proc/nosuch/report"], None, "cannot create the report folder"),
    (REP + ["--reps", "0"], None, "--reps 0 must be >= 1"),
    (REP + ["--last-episodes", "0"], None, "--last-episodes 0 must be >= 1"),
    (REP + ["--formats", "gif"], None, "--formats 'gif'"),
    (["report", "{R}/damaged"], None, "no usable run: all 1 run folder(s) are damaged"),
    # bench regress: the cases that fail before its suite starts (its own checks are tested in
    # tests/test_regress.py)
    (["regress", "--agent-option", "ppo.lr"], None, "expected AGENT.KEY=VALUE"),
    (["regress", "--agent-option", "dqn.lr=1"], None, "'dqn'"),
    (["regress", "--baseline", "{R}/nosuch.json"], None, "missing baseline"),
    (["regress", "--baseline", "{R}/baseline.json"], None, "unreadable baseline"),
    (["regress", "--suite", "nosuch"], None, "invalid choice: 'nosuch'"),
    (["regress", "--seeds", "abc"], None, "invalid int value: 'abc'"),
    (["regress", "--agent-option", "ppo.nosuch=1"], None, "ppo.nosuch=1"),
    (["regress", "--agent-option", "ppo.lr=-1"], None, "ppo.lr=-1"),
    (["regress", "--seeds", "0"], None, "--seeds 0"),
    (["regress", "--threads", "0"], None, "--threads 0"),
    (["regress", "--out", ""], None, "--out ''"),
]


def _argv(argv: list[str], root: Path, sweeps: Path, sweep_file: Path) -> list[str]:
    return [a.replace("{SWEEPS}", str(sweeps)).replace("{S}", str(sweep_file)).replace("{R}", str(root)) for a in argv]


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    assert {c[0][0] for c in CASES} == {"run", "envs", "perf", "compare", "sweep", "report", "regress"}


@pytest.mark.parametrize("argv, toml, message", CASES, ids=[f"{c[0][0]}: {c[2][:50]}" for c in CASES])
def test_bad_input_one_line_exit_2_nothing_changed(world, tmp_path, monkeypatch, capsys, argv, toml, message):
    root, sweeps = world
    sweep_file = tmp_path / "s.toml"
    if toml is not None:
        sweep_file.write_text(toml)
    monkeypatch.chdir(root)  # a default output folder (runs/...) would land in the snapshot
    before = snapshot(root)
    capsys.readouterr()
    code = cli(_argv(argv, root, sweeps, sweep_file))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message.replace("{R}", str(root)) in err, err
    if "--baseline" not in argv:
        assert "--baseline" not in err, err  # the error names what the user typed, not another option
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--steps", "1k", "--lr", "-1"], "--lr -1.0 must be > 0"),
        (["sweep", "{SWEEPS}"], "is a folder"),
        (CMP + ["--reps", "0", "--out", "{R}/newc"], "--reps 0 must be >= 1"),
    ],
)
def test_no_traceback_reaches_the_terminal(world, argv, message):
    root, sweeps = world
    r = subprocess.run([sys.executable, "-m", "bench.cli", *_argv(argv, root, sweeps, root / "none")], cwd=root,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (root / "newc").exists() and not (root / "runs").exists()


# ---------------------------------------------------------------- run-folder integrity


def _rows(path: Path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f))


def _partial_run(out: Path) -> None:
    """A finished tiny run made unfinished again (its last checkpoint is at the end)."""
    assert cli(["run", *TINY[:-1], "2k", "--out", str(out), "--checkpoint-every", "1h"]) == 0
    (out / "done").unlink()


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_folder_with_run_files_but_no_config_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    _partial_run(out)
    (out / "config.json").unlink()  # the case that used to start over and overwrite the ledger
    before = _bytes(out)
    capsys.readouterr()
    assert cli(["run", *TINY[:-1], "2k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "but no config.json" in err and len(err.strip().splitlines()) == 1
    assert _bytes(out) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda lines: lines[:2] + ["abc,xyz,,,,,,,,"] + lines[2:], "holds 'abc', not a number"),
        (lambda lines: lines[:2] + ["1.5,1000,1000"] + lines[2:], "has 3 fields, the header 10"),
        (lambda lines: ["wall_s,steps"] + lines[1:], "unexpected header"),
        (lambda lines: lines[:-1], "the checkpoint counted"),
    ],
    ids=["garbage-row", "torn-middle-row", "wrong-header", "lost-rows"],
)
def test_damaged_ledger_is_refused_at_resume(tmp_path, capsys, damage, message):
    out = tmp_path / "run"
    _partial_run(out)
    lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(damage(lines)) + "\n")
    before = _bytes(out)
    capsys.readouterr()
    assert cli(["run", *TINY[:-1], "2k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "metrics.csv" in err and len(err.strip().splitlines()) == 1, err
    assert _bytes(out) == before


def test_torn_last_row_is_dropped_at_resume(tmp_path):
    """A SIGKILL mid-write leaves the last row cut mid-line after the last checkpoint: resume
    drops it and continues from the checkpoint; the finished ledger is whole."""
    out = tmp_path / "run"
    run = RunConfig(agent="random", game="gym:CartPole-v1", steps=4000, log_every=500, checkpoint_every_s=3600)

    def stop_after_two(row):
        if row["env_steps"] >= 1000:
            raise KeyboardInterrupt  # the harness checkpoints on it, as on Ctrl-C / SIGTERM

    with pytest.raises(KeyboardInterrupt):
        train(run, out=out, on_row=stop_after_two)
    text = (out / "metrics.csv").read_text()
    kept = text.splitlines()
    assert len(kept) == 3  # header + the two rows the checkpoint counts
    last = kept[-1]
    # After the checkpoint: one more row, then one cut mid-line by the kill (no final newline).
    (out / "metrics.csv").write_text(text + last + "\n" + last[: len(last) // 2])
    summary = train(run, out=out)
    assert summary["env_steps"] == 4000 and (out / "done").exists()
    rows = _rows(out / "metrics.csv")
    assert rows[0][:2] == ["wall_s", "env_steps"] and all(len(r) == 10 for r in rows)
    steps = [int(r[1]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 4000
    assert rows[1:3] == [r.split(",") for r in kept[1:]]  # rows before the checkpoint kept as they were
    assert (out / "metrics.csv").read_text().endswith("\n")


def test_report_lists_damaged_runs_and_never_aggregates_them(tmp_path, capsys):
    good = tmp_path / "runs" / "good"
    assert cli(["run", *TINY, "--out", str(good)]) == 0
    metrics = (good / "metrics.csv").read_text()
    damage = {
        "garbage": ("metrics.csv", metrics + "abc,xyz,,,,,,,,\n"),
        "empty": ("metrics.csv", ""),
        "columns": ("metrics.csv", "a,b,c\n1,2,3\n"),
        "compute": ("compute.json", "{garbage"),
    }
    for name, (file, text) in damage.items():
        shutil.copytree(good, tmp_path / "runs" / name)
        (tmp_path / "runs" / name / file).write_text(text)
    capsys.readouterr()
    assert cli(["report", str(tmp_path / "runs"), "--reps", "20", "--formats", "png"]) == 0
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("bench: warning:")]
    assert len(warned) == 4 and all("damaged" in ln for ln in warned), err
    for name in damage:
        assert any(f"runs/{name}:" in ln for ln in warned)
    summary = json.loads((tmp_path / "runs" / "report" / "summary.json").read_text())
    assert len(summary["runs"]) == 1 and len(summary["skipped"]) == 4
    md = (tmp_path / "runs" / "report" / "summary.md").read_text()
    assert md.count("| damaged |") == 4
    # Nothing usable at all: exit 2, one line.
    shutil.rmtree(good)
    shutil.rmtree(tmp_path / "runs" / "report")
    assert cli(["report", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no usable run: all 4 run folder(s) are damaged" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- declared ranges


UNBOUNDED = {"v_min", "v_max"}  # any finite float (their order is a cross-field check)


def test_every_agent_option_declares_its_range_and_defaults_and_presets_are_in_it():
    import dataclasses
    import typing

    import agents
    from agents.api import check_ranges
    from bench.config import _unwrap

    for name in agents.available():
        mod = agents.load(name)
        hints = typing.get_type_hints(mod.Config)
        for f in dataclasses.fields(mod.Config):
            tp, _ = _unwrap(hints[f.name])
            if tp is bool or f.name in UNBOUNDED:
                continue
            declared = [k for k in ("ge", "gt", "le", "lt", "choices") if f.metadata.get(k) is not None]
            assert declared, f"{name}.{f.name} declares no range: add ge=/gt=/le=/lt=/choices= to its opt()"
        assert check_ranges(mod.Config()) == []
        for family, preset in getattr(mod, "PRESETS", {}).items():
            assert check_ranges(mod.Config(**preset)) == [], (name, family)


def test_help_shows_each_option_range(capsys):
    assert cli(["run", "--agent", "rainbow", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size INT transitions per gradient step" in out and "valid: >= 1)" in out
    assert "valid: one of huber, mse" in out and "valid: in [0, 1]" in out
