"""The harness, meter and results store: files, ledger arithmetic, resume, determinism, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agents
from bench.cli import main as cli
from bench.config import RunConfig, parse_duration, parse_steps
from bench.errors import RunFailed, UserError
from bench.harness import train

BENCH = [sys.executable, "-m", "bench.cli"]


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_random_run_writes_every_file_and_columns_add_up(tmp_run):
    run = RunConfig(agent="random", game="puffer_breakout", seed=3, steps=300_000, eval_every=150_000, eval_episodes=2)
    s = train(run, {"num_envs": 256}, out=tmp_run)
    for name in ("config.json", "metrics.csv", "eval.csv", "compute.json", "checkpoint.pt", "done", "learner.csv"):
        if name != "learner.csv":  # random never learns: no learner rows
            assert (tmp_run / name).exists(), name
    cfg = json.loads((tmp_run / "config.json").read_text())
    assert cfg["env"]["protocol"]["frameskip"] == 4 and cfg["fingerprint"]["torch"]
    assert cfg["agent"]["num_envs"] == 256 and cfg["run"]["seed"] == 3
    m = rows(tmp_run / "metrics.csv")
    assert len(m) >= 10
    for r in m:
        assert int(r["frames"]) == 4 * int(r["env_steps"])
        assert int(r["grad_samples"]) == 0 and float(r["reuse_ratio"]) == 0.0
    assert int(m[-1]["env_steps"]) == s["env_steps"] == 300_032  # budget rounded up to whole vector steps
    assert s["frames"] == 4 * s["env_steps"] and s["reuse_ratio"] == 0.0
    assert int(m[-1]["episodes"]) == s["episodes"] > 0
    ev = rows(tmp_run / "eval.csv")
    assert [int(r["env_steps"]) for r in ev] == [150_016, 300_032] and all(int(r["eval_episodes"]) == 2 for r in ev)
    comp = json.loads((tmp_run / "compute.json").read_text())
    assert set(comp["phase_s"]) == {"env", "act", "learn", "eval", "checkpoint"}
    assert comp["phase_s"]["checkpoint"] > 0  # the final checkpoint, at least
    assert json.loads((tmp_run / "done").read_text())["status"] == "ok"


def test_episode_returns_in_rows_match_the_script(tmp_run):
    # Scripted env: episode lengths 3..6, return L(L+1)/2; one env, one row per 4 steps would be
    # fiddly, so log every 12 steps = 1 row per 3-, 4-, 5-length episodes... check the mean instead.
    run = RunConfig(agent="random", game="gym:Scripted-v0", seed=0, steps=18, log_every=18)
    train(run, {"num_envs": 1}, out=tmp_run)
    (r,) = rows(tmp_run / "metrics.csv")
    # 18 steps = episodes of 3, 4, 5, 6 steps: returns 6, 10, 15, 21.
    assert int(r["episodes"]) == 4
    assert float(r["episode_return"]) == pytest.approx((6 + 10 + 15 + 21) / 4)
    assert float(r["episode_length"]) == pytest.approx(4.5)


def test_evaluation_reports_episodes_cut_by_the_cap():
    # Scripted env, one env, quota 3: episodes of 3, 4, 5 steps (returns 6, 10, 15). With a cap of
    # 10 vector steps the first two finish at steps 3 and 7, the third has run 3 of its 5 steps
    # (partial return 1 + 2 + 3 = 6); with a cap of 12 all three finish.
    import torch

    import envs
    from bench.harness import evaluate

    class Zero:
        def act(self, obs, explore=True, first=None):
            return torch.zeros(obs.shape[0], dtype=torch.int64)

    for cap, returns, capped in ((10, [6.0, 10.0], [6.0]), (12, [6.0, 10.0, 15.0], [])):
        env = envs.make("gym:Scripted-v0", 1, torch.device("cpu"))
        res = evaluate(Zero(), env, episodes=3, seed=0, max_vector_steps=cap)
        env.close()
        assert (res.returns, res.capped) == (returns, capped)


def test_reuse_ratio_is_grad_samples_over_env_steps(tmp_run, monkeypatch):
    monkeypatch.setitem(agents.AGENTS, "nan", "tests.helpers.nan_agent")
    run = RunConfig(agent="nan", game="gym:CartPole-v1", seed=0, steps=16, log_every=4)
    s = train(run, {"num_envs": 4, "nan_after": 100}, out=tmp_run)
    assert s["grad_steps"] == 4 and s["grad_samples"] == 32 and s["reuse_ratio"] == pytest.approx(2.0)
    assert [float(r["reuse_ratio"]) for r in rows(tmp_run / "metrics.csv")] == [2.0] * 4
    assert len(rows(tmp_run / "learner.csv")) == 4


def test_nan_loss_marks_run_failed_and_keeps_files(tmp_run, monkeypatch):
    monkeypatch.setitem(agents.AGENTS, "nan", "tests.helpers.nan_agent")
    run = RunConfig(agent="nan", game="gym:CartPole-v1", seed=0, steps=400, log_every=8)
    with pytest.raises(RunFailed, match="loss"):
        train(run, {"num_envs": 4, "nan_after": 20}, out=tmp_run)
    failed = json.loads((tmp_run / "failed").read_text())
    assert failed["env_steps"] == 84 and "loss" in failed["reason"]  # the 21st update, at 21 vector steps
    assert not (tmp_run / "done").exists() and len(rows(tmp_run / "metrics.csv")) == 10
    with pytest.raises(UserError, match="failed run"):  # not silently restarted
        train(run, {"num_envs": 4, "nan_after": 20}, out=tmp_run)


def _strip_time(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "sps")} for r in rows(path)]


def test_same_seed_same_metrics(tmp_path):
    for d in ("a", "b"):
        run = RunConfig(agent="random", game="puffer_breakout", seed=11, steps=200_000, log_every=20_000)
        train(run, {"num_envs": 128}, out=tmp_path / d)
    a, b = _strip_time(tmp_path / "a" / "metrics.csv"), _strip_time(tmp_path / "b" / "metrics.csv")
    assert a == b and len(a) == 10
    run = RunConfig(agent="random", game="puffer_breakout", seed=12, steps=200_000, log_every=20_000)
    train(run, {"num_envs": 128}, out=tmp_path / "c")
    assert _strip_time(tmp_path / "c" / "metrics.csv") != a


def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    cmd = BENCH + ["run", "--agent", "random", "--game", "puffer_breakout", "--steps", "8M", "--num-envs", "512",
                   "--checkpoint-every", "0.3s", "--log-every", "50k", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # let it run past the checkpoint, writing rows that must be dropped
    assert proc.poll() is None, "run finished before it could be killed; raise --steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "done").exists()
    before = rows(out / "metrics.csv")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    after = rows(out / "metrics.csv")
    steps = [int(x["env_steps"]) for x in after]
    assert all(a < b for a, b in zip(steps, steps[1:])), "env_steps must strictly increase (no duplicates)"
    assert steps[-1] == 8_000_000  # == an uninterrupted run's budget (8M is a whole number of 512-env steps)
    assert len(before) > 0 and (out / "done").exists()
    comp = json.loads((out / "compute.json").read_text())
    assert comp["env_steps"] == 8_000_000 and comp["frames"] == 4 * 8_000_000
    walls = [float(x["wall_s"]) for x in after]
    assert all(a <= b for a, b in zip(walls, walls[1:])), "training wall clock continues across the resume"
    r2 = subprocess.run(cmd, env=env, capture_output=True, text=True)  # finished: not rerun
    assert r2.returncode == 0 and "already finished" in r2.stdout
    assert rows(out / "metrics.csv") == after


def test_budget_parsing():
    assert parse_steps("2M") == 2_000_000 and parse_steps("500k") == 500_000 and parse_steps("1.5e6") == 1_500_000
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    for bad in ("banana", "-5", "0", "1.5", ""):
        with pytest.raises(UserError):
            parse_steps(bad)
    for bad in ("-5m", "0s", "10x", "m"):
        with pytest.raises(UserError):
            parse_duration(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "banana"], "--steps 'banana'"),
        (["--time", "-5m"], "--time '-5m'"),
        (["--steps", "1k", "--no-such-option", "3"], "unrecognized arguments: --no-such-option"),
        (["--steps", "1k", "--num-envs", "many"], "--num-envs 'many'"),
        ([], "give a budget"),
    ],
)
def test_bad_cli_input_one_line_exit_2(capsys, tmp_run, argv, message):
    code = cli(["run", "--agent", "random", "--game", "puffer_breakout", "--out", str(tmp_run), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not tmp_run.exists()


def test_unknown_agent_and_game(capsys):
    assert cli(["run", "--agent", "ppp", "--game", "puffer_breakout", "--steps", "1k"]) == 2
    assert "unknown agent 'ppp'" in capsys.readouterr().err
    assert cli(["run", "--agent", "random", "--game", "puffer_breakot", "--steps", "1k"]) == 2
    assert "did you mean puffer_breakout" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["config", "metrics"])
def test_damaged_run_folder_is_refused_untouched(capsys, tmp_run, damage):
    args = ["run", "--agent", "random", "--game", "gym:CartPole-v1", "--steps", "2k", "--out", str(tmp_run)]
    assert cli(args[:-4] + ["--steps", "4k", "--out", str(tmp_run), "--checkpoint-every", "1h"]) == 0
    (tmp_run / "done").unlink()  # pretend it was interrupted
    target = tmp_run / ("config.json" if damage == "config" else "metrics.csv")
    text = target.read_text()
    target.write_text(text[: len(text) // 2])  # truncated mid-file
    snapshot = {p.name: p.read_bytes() for p in tmp_run.iterdir()}
    capsys.readouterr()
    assert cli(args[:-4] + ["--steps", "4k", "--out", str(tmp_run), "--checkpoint-every", "1h"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and target.name in err
    assert {p.name: p.read_bytes() for p in tmp_run.iterdir()} == snapshot


def test_out_folder_of_another_run_is_refused(capsys, tmp_run):
    base = ["run", "--agent", "random", "--game", "gym:CartPole-v1", "--steps", "1k", "--out", str(tmp_run)]
    assert cli(base) == 0
    assert cli(base[:-2] + ["--seed", "9", "--out", str(tmp_run)]) == 2
    assert "holds a different run" in capsys.readouterr().err


def test_progress_rate_is_a_window_not_the_last_row(tmp_path):
    from bench.meter import RecentRate
    from bench.runner import RunSpec, progress_of

    # PPO-like rows: 9 fast rollout rows (1,000 steps in 0.01 s) then one row holding a 0.91 s
    # update: 10,000 steps a second on average, while single rows read 100,000 or ~1,100.
    pts, w, s = [], 0.0, 0
    for _ in range(100):
        for k in range(10):
            w += 0.91 if k == 9 else 0.01
            s += 1000
            pts.append((w, s))
    rate = RecentRate(0.0, 0, window_s=30.0)  # ~30 update cycles: within a cycle of the mean
    got = [rate.add(*p) for p in pts]
    assert min(got[400:]) > 9_500 and max(got[400:]) < 10_500
    assert rate.points[-1][0] - rate.points[0][0] < 30.0 + 1.0  # the window stays bounded

    d = tmp_path / "run"
    d.mkdir()
    lines = ["wall_s,env_steps,frames,episodes,grad_steps,grad_samples,reuse_ratio,sps,episode_return,episode_length"]
    prev = (0.0, 0)
    for wi, si in pts[-40:]:
        lines.append(f"{wi},{si},{si},1,0,0,0,{(si - prev[1]) / (wi - prev[0]) if prev[0] else 0},2.5,10")
        prev = (wi, si)
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    frac, text = progress_of(RunSpec("ppo", "puffer_breakout", 1, str(d), "x", steps=2_000_000))
    shown = int(text.split(" sps")[0].split()[-1].replace(",", ""))
    assert frac == 0.5 and 9_000 < shown < 11_500 and "score 2.5" in text


def test_checkpoint_writes_are_not_charged_to_the_time_budget(tmp_run, monkeypatch):
    # A replay buffer makes an off-policy agent's checkpoint ~0.5 GB: writing it must not eat
    # into its training-time budget (nor the SPS computed from it), as evaluation does not.
    from bench.results import RunDir

    save = RunDir.save_checkpoint

    def slow_save(self, state):
        time.sleep(0.3)
        save(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", slow_save)
    run = RunConfig(agent="random", game="gym:CartPole-v1", seed=0, time_s=1.5, checkpoint_every_s=0.25)
    t0 = time.perf_counter()
    s = train(run, {"num_envs": 4}, out=tmp_run)
    elapsed = time.perf_counter() - t0
    ck = s["phase_s"]["checkpoint"]
    assert ck >= 0.3 * 4  # several periodic checkpoints and the final one, each >= 0.3 s
    assert 1.5 <= s["train_wall_s"] < 1.5 + 0.3  # the budget is training time alone
    assert elapsed > s["train_wall_s"] + ck - 0.1
    assert s["sps"] == pytest.approx(s["env_steps"] / s["train_wall_s"])
    # The training phases fill the budget: no checkpoint seconds hide in it.
    ph = s["phase_s"]
    assert ph["env"] + ph["act"] + ph["learn"] > 0.7 * s["train_wall_s"], ph
