"""``bench tune`` (issue 20): a tiny random-search tune on CartPole writes a preset file that
``bench run --preset-file`` uses; a rerun continues the study without repeating finished trials;
a tune killed mid-trial resumes (the killed trial marked failed and its values tried again);
bad search spaces, preset files and budgets are one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import agents
from agents.api import Param, check_search_space
from bench.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
GAME = "gym:CartPole-v1"


def tune_argv(out: Path, trials: int) -> list[str]:
    # 2 s runs, rows every 500 env steps (so the pruner and the score see several), one thread:
    # the machine runs other tests too. No pruner: trial counts must not depend on the machine's speed.
    return ["tune", "--agent", "ppo", "--game", GAME, "--trials", str(trials), "--run-time", "2s", "--sampler",
            "random", "--pruner", "none", "--log-every", "500", "--threads", "1", "--out", str(out)]  # fmt: skip


def trial_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "trials").iterdir())


def study_trials(out: Path) -> list:
    import optuna

    return optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """2 trials, then the same command with --trials 3: exactly one more trial runs."""
    out = tmp_path_factory.mktemp("tune") / "t"
    assert cli(tune_argv(out, 2)) == 0
    assert trial_dirs(out) == ["0000", "0001"]
    first = {d: (out / "trials" / d / "gym_CartPole-v1" / "seed1" / "metrics.csv").stat().st_mtime_ns
             for d in ("0000", "0001")}  # fmt: skip
    assert cli(tune_argv(out, 3)) == 0
    assert trial_dirs(out) == ["0000", "0001", "0002"]
    for d, mtime in first.items():  # finished trials are not run again
        assert (out / "trials" / d / "gym_CartPole-v1" / "seed1" / "metrics.csv").stat().st_mtime_ns == mtime
    return out


def test_tiny_tune_writes_preset_state_and_report(tuned):
    preset = tomllib.loads((tuned / "preset.toml").read_text())
    assert preset["tune"]["agent"] == "ppo" and preset["tune"]["games"] == [GAME]
    assert preset["tune"]["trials"] == 3 and preset["tune"]["wall_s"] > 0
    assert [t["number"] for t in preset["trials"]] == [0, 1, 2]
    assert all(t["state"] == "COMPLETE" and t["wall_s"] > 0 for t in preset["trials"])
    best = max(preset["trials"], key=lambda t: t["value"])
    assert preset["values"] == best["params"] and preset["tune"]["best_trial"] == best["number"]
    space = {p.name for p in agents.load("ppo").SEARCH_SPACE}
    assert set(preset["values"]) == space
    state = json.loads((tuned / "tune.json").read_text())
    assert state["trials"]["complete"] == 3 and state["budget"]["trials"] == 3
    # the tune's wall clock holds its trials' wall clocks, which hold the runs' training wall clock
    assert state["wall_s"] >= state["trials_wall_s"] >= state["train_wall_s"] >= 3 * 2.0
    assert state["fingerprint"]["cpu"] and state["commands"]
    for name in ("tune.md", "figures/tune_progress.png", "figures/tune_importance.png"):
        assert (tuned / name).stat().st_size > 0
    md = (tuned / "tune.md").read_text()
    assert "| trial | state | value |" in md and md.count("| complete |") == 3
    # every trial run is an ordinary run folder, labelled by its trial
    cfg = json.loads((tuned / "trials/0002/gym_CartPole-v1/seed1/config.json").read_text())
    assert cfg["run"]["label"] == "ppo-trial2" and cfg["run"]["time_s"] == 2.0
    assert {k: cfg["agent"][k] for k in preset["trials"][2]["params"]} == preset["trials"][2]["params"]


def test_bench_run_uses_the_preset_file(tuned, tmp_path, capsys):
    values = tomllib.loads((tuned / "preset.toml").read_text())["values"]
    epochs = 1 if values["epochs"] != 1 else 2
    out = tmp_path / "run"
    assert cli(["run", "--agent", "ppo", "--game", GAME, "--time", "1s", "--threads", "1", "--out", str(out),
                "--preset-file", str(tuned / "preset.toml"), "--epochs", str(epochs)]) == 0  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    for k, v in values.items():  # the preset's values, except the option given explicitly
        assert cfg["agent"][k] == (epochs if k == "epochs" else v)
    assert cfg["preset"]["file"] == str(tuned / "preset.toml") and cfg["preset"]["values"] == values
    assert cfg["preset"]["tuning"]["trials"] == 3 and cfg["preset"]["tuning"]["wall_s"] > 0
    # the report says which agent ran a tuned preset, with its tuning budget
    from plots.load import load_runs
    from plots.report import tuned_preset_notes

    runs, _ = load_runs([out])
    (note,) = tuned_preset_notes(runs)
    assert note.startswith("ppo: tuned preset ") and "3 trials" in note and "given explicitly instead: epochs" in note


def test_killed_tune_resumes_from_its_storage(tuned, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *tune_argv(out, 4)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "trials/0003/gym_CartPole-v1/seed1/metrics.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "trial 3 never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no checkpoint, no tell: trial 3 stays RUNNING in optuna.db
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [t.state.name for t in study_trials(out)][3] == "RUNNING"
    assert cli(tune_argv(out, 4)) == 0
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    assert trials[4].user_attrs["retry_of"] == 3 and trials[4].params == trials[3].params
    assert trial_dirs(out) == ["0000", "0001", "0002", "0003", "0004"]  # 0-2 not repeated
    state = json.loads((out / "tune.json").read_text())
    assert state["killed_trials"] == [3] and state["trials"]["complete"] == 4 and state["trials"]["failed"] == 1


def test_tune_report_rebuilds_from_folders(tuned, tmp_path):
    out = tmp_path / "rep"
    assert cli(["tune", "--report", str(tuned), str(tuned), "--out", str(out)]) == 0
    assert (out / "figures/tune_progress.png").exists() and (out / "figures/tune_importance.png").exists()
    assert (out / "tune.md").read_text().count("## ppo on gym:CartPole-v1") == 2


def test_compare_and_sweep_refuse_a_preset_for_an_agent_not_compared(tuned, tmp_path, capsys):
    preset = str(tuned / "preset.toml")
    argv = ["compare", "--agents", "rainbow", "--game", GAME, "--time", "1s", "--out", str(tmp_path / "c"),
            "--preset-file", preset]  # fmt: skip
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a preset for ppo, which is not among the agents compared (rainbow)" in err
    assert not (tmp_path / "c").exists()
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'agents = ["rainbow"]\ngames = ["{GAME}"]\ntime = "1s"\npreset_files = ["{preset}"]\n')
    assert cli(["sweep", str(sweep), "--out", str(tmp_path / "s")]) == 2
    assert "not among the agents compared" in capsys.readouterr().err
    # and the run a compare starts gets the file, under the explicit options
    from bench.compare import expand
    from bench.preset import load_preset

    (spec,) = expand(["ppo"], GAME, 1, tmp_path / "e", None, 1.0, {"ppo": {"epochs": "1"}}, None, None,
                     presets={"ppo": load_preset(preset)})  # fmt: skip
    argv = spec.argv(1)
    assert argv[argv.index("--preset-file") + 1] == preset and argv[argv.index("--epochs") + 1] == "1"


def test_every_agent_search_space_is_valid():
    for name in ("ppo", "pqn", "rainbow", "btr"):
        mod = agents.load(name)
        assert check_search_space(mod.Config, mod.SEARCH_SPACE) == [], name


@pytest.mark.parametrize("space, message", [
    ((Param("lrr", 1e-4, 1e-2, log=True),), "lrr: not an option of agents.ppo.Config"),
    ((Param("lr", 1e-2, 1e-4),), "lr: range [0.01, 0.0001] must be finite with low < high"),
    ((Param("ent_coef", 0.0, 0.1, log=True),), "ent_coef: a log-scale range must have low > 0"),
    ((Param("lr", -1.0, 1.0),), "lr: -1.0 must be > 0 (the option's declared range)"),
    ((Param("epochs", 1.0, 4.0),), "epochs: float range for a int option"),
    ((Param("lr", 1, 4, kind="int"),), "lr: int range for a float option"),
    ((Param("hidden", choices=(64, "wide")),), "hidden: 'wide' is not a int"),
    ((Param("epochs", 1, 4, kind="int"), Param("epochs", 1, 8, kind="int")), "epochs: given twice"),
    ((Param("lr", 1e-4, 1e-2, kind="exp"),), "lr: kind 'exp' is not float, int or choice"),
    ((), "the search space must be a non-empty tuple of Param"),
])  # fmt: skip
def test_bad_search_space_is_one_line_exit_2(monkeypatch, capsys, tmp_path, space, message):
    monkeypatch.setattr(agents.load("ppo"), "SEARCH_SPACE", space)
    out = tmp_path / "t"
    assert cli(["tune", "--agent", "ppo", "--game", GAME, "--trials", "1", "--run-time", "1s", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bench: error: ppo.SEARCH_SPACE: ") and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("x = \n", "malformed TOML"),
    ("[values]\nlr = 0.001\n", "no [tune] table with agent"),
    ('[tune]\nagent = "ppo"\n', "no [values] table"),
    ('[tune]\nagent = "ppo"\n[values]\nlrr = 0.001\n', "[values] lrr = 0.001: ppo has no option 'lrr' (did you mean lr?)"),
    ('[tune]\nagent = "ppo"\n[values]\nlr = -1.0\n', "[values] lr = -1.0 must be > 0"),
    ('[tune]\nagent = "ppo"\n[values]\nepochs = 2.5\n', "[values] epochs = 2.5: expected an int"),
    ('[tune]\nagent = "ppo"\n[values]\nlr = [1, 2]\n', "[values] lr must be a single value"),
    ('[tune]\nagent = "ppx"\n[values]\nlr = 0.001\n', "[tune] agent: unknown agent 'ppx'"),
    ('[tune]\nagent = "rainbow"\n[values]\nlr = 0.001\n', "a preset for rainbow, not for --agent ppo"),
])  # fmt: skip
def test_bad_preset_file_is_one_line_exit_2(capsys, tmp_path, text, message):
    f = tmp_path / "p.toml"
    f.write_text(text)
    out = tmp_path / "run"
    assert cli(["run", "--agent", "ppo", "--game", GAME, "--time", "1s", "--out", str(out), "--preset-file", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--run-time", "1s"], "give a tuning budget: --trials N and/or --tune-time T"),
    (["--trials", "0", "--run-time", "1s"], "--trials 0 must be >= 1"),
    (["--trials", "2"], "give --run-time T"),
    (["--tune-time", "-5m", "--run-time", "1s"], "--tune-time '-5m'"),
    (["--trials", "2", "--run-time", "soon"], "--run-time 'soon' is not a duration"),
    (["--trials", "2", "--run-time", "1s", "--seeds", "0"], "--seeds 0 must be >= 1"),
])  # fmt: skip
def test_bad_tune_input_is_one_line_exit_2(capsys, tmp_path, extra, message):
    out = tmp_path / "t"
    assert cli(["tune", "--agent", "ppo", "--game", GAME, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()


def test_tune_refuses_other_folders_and_agents(tuned, capsys, tmp_path):
    base = ["tune", "--game", GAME, "--trials", "3", "--run-time", "2s"]
    for argv, message in [
        (["--agent", "random"], "agent random has no SEARCH_SPACE"),
        (["--agent", "ppx"], "unknown agent 'ppx'"),
        (["--agent", "ppo", "--out", str(tuned), "--run-time", "3s"], "holds another tune (differs in: run_time_s)"),
    ]:  # fmt: skip
        assert cli(base + argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert cli(base + ["--agent", "ppo", "--out", str(tmp_path / "other")]) == 2
    assert "not a tune folder" in capsys.readouterr().err
    assert cli(["tune", "--report", str(tmp_path / "other")]) == 2
    assert "no tune.json" in capsys.readouterr().err


class FakeTrial:
    number = 0

    def __init__(self, prune_at: int | None):
        self.reports: list[tuple[int, float]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][0] >= self.prune_at


def test_pruner_sees_score_so_far_once_per_tenth_of_the_budget(tmp_path):
    import optuna

    from bench.tune import Plan, Reporter

    plan = Plan(agent="ppo", games=(GAME,), suite=None, seeds=2, run_time_s=10.0, trials=1, tune_time_s=None,
                out=tmp_path, sampler="random", pruner="median", seed=0, log_every=None, threads=1, device="cpu",
                backend="local", space=())  # fmt: skip

    def row(wall_s, episodes, ret):
        return {"wall_s": wall_s, "episodes": episodes, "episode_return": ret}

    trial = FakeTrial(prune_at=None)
    rep = Reporter(trial, plan, 1, GAME, [100.0], lambda: None)  # run 1; run 0 scored 100
    rep(row(0.5, 0, None))  # no episode yet: nothing to report
    rep(row(1.2, 2, 20.0))  # tenth 1: mean of run 0's 100 and this run's 20 so far
    rep(row(1.5, 4, 40.0))  # same tenth: not reported again
    rep(row(9.9, 6, 60.0))  # tenth 9 (the last)
    assert trial.reports == [(11, 60.0), (19, (100.0 + 40.0) / 2)]
    trial = FakeTrial(prune_at=13)
    rep = Reporter(trial, plan, 1, GAME, [100.0], lambda: None)
    rep(row(1.0, 1, 10.0))
    with pytest.raises(optuna.TrialPruned):
        rep(row(3.0, 2, 10.0))


def test_tune_help_names_the_budget_options(capsys):
    assert cli(["tune", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--trials", "--tune-time", "--run-time", "--seeds", "--sampler", "--pruner", "--backend", "--report"):
        assert flag in out
    assert os.path.exists(ROOT / "bench" / "tune.py")
