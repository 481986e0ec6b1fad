"""bench regress: the statistics, the calibration's normalisation, the check catching a slowed
learner (on norm_sps) and a broken one (lr 0, on score), withholding its speed verdict when the
calibration moves around a run, and refusing bad input before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import regress
from bench.cli import main as cli
from bench.regress import (CAL_DRIFT_MAX, METRICS, MIN_EFFECT, bootstrap_change, calibrate, calibration_drift,
                           load_baselines, run_figures, verdict)  # fmt: skip


def test_bootstrap_change_point_and_ci():
    point, lo, hi = bootstrap_change([10, 10, 10], [5, 5, 5], reps=500, seed=0)
    assert point == pytest.approx(-0.5) and lo == pytest.approx(-0.5) and hi == pytest.approx(-0.5)
    point, lo, hi = bootstrap_change([9, 10, 11], [9.5, 10, 10.5], reps=2000, seed=0)
    assert point == pytest.approx(0.0) and lo < 0 < hi


def test_verdict_needs_ci_below_zero_and_min_effect():
    assert verdict(-0.5, -0.3, "norm_sps")
    assert not verdict(-0.5, 0.1, "norm_sps")  # CI straddles zero: noise
    assert not verdict(-0.1, -0.05, "norm_sps")  # confidently lower, but below the minimum effect


def _fake_run(d: Path, env_s: float, learn_s: float, steps: int = 1000):
    d.mkdir(parents=True)
    comp = {"phase_s": {"env": env_s, "act": 0.0, "learn": learn_s, "eval": 0.0}, "train_wall_s": env_s + learn_s,
            "env_steps": steps, "sps": steps / (env_s + learn_s)}
    (d / "compute.json").write_text(json.dumps(comp))
    rows = ["wall_s,env_steps,frames,episodes,grad_steps,grad_samples,reuse_ratio,sps,episode_return,episode_length"]
    for i in range(1, 11):
        rows.append(f"{(env_s + learn_s) * i / 10},{steps * i // 10},0,{i},0,0,0,0,{float(i)},1")
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_normalisation_cancels_machine_speed(tmp_path):
    ref = {"env_sps": 100.0, "learner_sps": 10.0}
    _fake_run(tmp_path / "a", env_s=4.0, learn_s=6.0)
    # A machine twice as fast at both workloads: half the seconds, twice the calibrated rates.
    _fake_run(tmp_path / "b", env_s=2.0, learn_s=3.0)
    fa = run_figures(tmp_path / "a", ref, ref, None)
    fb = run_figures(tmp_path / "b", {"env_sps": 200.0, "learner_sps": 20.0}, ref, None)
    assert fa["norm_s"] == pytest.approx(10.0) and fb["norm_s"] == pytest.approx(10.0)
    assert fa["norm_sps"] == pytest.approx(fb["norm_sps"]) == pytest.approx(100.0)
    assert fa["score_at_budget"] == 10.0  # the last 10% of the env-step budget: the row at 1000
    # Scored at T_ref = 5 normalised s: rows whose normalised time is in (4.5, 5].
    assert run_figures(tmp_path / "a", ref, ref, 5.0)["score_at_t_ref"] == 5.0


# Tests that train inject the calibration (the fixed rates CAL, or ones that move around each
# run), so that other jobs on the machine cannot move the verdict: with CAL on both sides a
# normalised second is a wall second, and the injected slowdown (3 s of sleep after each of PPO's
# 7 updates, against ~3.5 s of compute per seed on a quiet 2-core machine) stays beyond the
# minimum effect unless load slowed the baseline's runs ~5x more than the slowed ones. They train
# on one thread: on two, a second process on one of the two cores made a seed take 40 s instead of
# 3.5 (each OpenMP step waits for the thread whose core is taken). `calibrate` itself is measured
# in test_calibrate_measures_both_workloads.
CAL = {"env_sps": 1e6, "learner_sps": 1e5}
SLEEP = "3.0"
BROKEN = "ppo.lr=1e-9"  # learns nothing in the smoke budget (lr must be > 0)


def _steady(game: str, threads: int, seconds: float = 1.5) -> dict[str, float]:
    return dict(CAL)


class Drifting:
    """A machine whose speed changes under every run: each calibration before a run reads
    ``factor`` times CAL, each one after it reads CAL (drift factor - 1, mean (factor + 1) / 2 x CAL)."""

    def __init__(self, factor: float):
        self.factor, self.calls = factor, 0

    def __call__(self, game: str, threads: int, seconds: float = 1.5) -> dict[str, float]:
        self.calls += 1
        f = self.factor if self.calls % 2 else 1.0
        return {k: v * f for k, v in CAL.items()}


@pytest.fixture(scope="module")
def smoke_baseline(tmp_path_factory):
    base = tmp_path_factory.mktemp("regress") / "smoke.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(regress, "calibrate", _steady)
        assert cli(["regress", "--suite", "smoke", "--update-baseline", "--baseline", str(base), "--threads", "1"]) == 0
    return base


def _run(base: Path, tmp: Path, *extra: str) -> tuple[int, dict]:
    out = tmp / "r.json"
    code = cli(["regress", "--suite", "smoke", "--baseline", str(base), "--json", str(out),
                "--markdown", str(tmp / "r.md"), "--threads", "1", *extra])  # fmt: skip
    return code, json.loads(out.read_text())


def test_slowed_learner_fails_on_norm_sps(smoke_baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(regress, "calibrate", _steady)
    code, res = _run(smoke_baseline, tmp_path, "--test-sleep-in-update", SLEEP)
    ch = res["agents"]["ppo"]["changes"]
    assert code == 1 and res["agents"]["ppo"]["speed_judged"]
    assert ch["norm_sps"]["regressed"] and ch["norm_sps"]["change"] < -0.2 and ch["norm_sps"]["ci90"][1] < 0
    assert not ch["score_at_budget"]["regressed"]  # same seeds, same learning: only the clock moved
    assert "regressed" in (tmp_path / "r.md").read_text()


def test_broken_learner_fails_on_score_even_when_too_noisy_for_speed(smoke_baseline, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(regress, "calibrate", Drifting(1.5))  # calibrations 50% apart around every run
    code, res = _run(smoke_baseline, tmp_path, "--agent-option", BROKEN)
    a = res["agents"]["ppo"]
    assert code == 1 and a["changes"]["score_at_budget"]["regressed"]
    assert not a["speed_judged"] and a["calibration_drift"] == pytest.approx([0.5, 0.5])
    for m in ("norm_sps", "score_per_hour"):
        assert a["changes"][m]["too_noisy"] and not a["changes"][m]["regressed"]
    out = capsys.readouterr().out
    assert "machine too noisy to judge speed" in out and "REGRESSION in score_at_budget  |" in out


def test_too_noisy_machine_gets_no_speed_verdict(smoke_baseline, tmp_path, monkeypatch, capsys):
    # The calibration before each run reads 19x the one after: the mean says the machine was 10x
    # faster than the baseline's, so the run looks 10x slower once normalised.
    monkeypatch.setattr(regress, "calibrate", Drifting(19.0))
    code, res = _run(smoke_baseline, tmp_path, "--seeds", "1")
    ch = res["agents"]["ppo"]["changes"]
    assert ch["norm_sps"]["below_baseline"] and ch["norm_sps"]["change"] < -0.5  # what a verdict would say
    assert code == 0 and not ch["norm_sps"]["regressed"] and ch["norm_sps"]["too_noisy"]
    assert not ch["score_at_budget"]["too_noisy"] and ch["score_at_budget"]["gated"]
    out = capsys.readouterr().out
    assert "calibration moved 1800% (env_sps) around seed 1 (limit 20%)" in out
    assert "passed (speed not judged for ppo: machine too noisy)" in out
    md = (tmp_path / "r.md").read_text()
    assert "Machine too noisy to judge speed" in md and "too noisy to judge |" in md


def test_update_baseline_refused_when_too_noisy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(regress, "calibrate", Drifting(1.3))
    base = tmp_path / "b.json"
    argv = ["regress", "--suite", "smoke", "--update-baseline", "--baseline", str(base), "--seeds", "1", "--threads", "1"]
    assert cli(argv) == 1
    assert not base.exists() and "baseline NOT written: machine too noisy" in capsys.readouterr().out


def test_calibration_drift():
    assert calibration_drift({"env_sps": 100.0, "learner_sps": 10.0}, {"env_sps": 110.0, "learner_sps": 10.0}) == (
        pytest.approx(0.1), "env_sps")  # fmt: skip
    # Symmetric, and the workload that moved most is named.
    assert calibration_drift({"env_sps": 100.0, "learner_sps": 5.0}, {"env_sps": 90.0, "learner_sps": 10.0}) == (
        pytest.approx(1.0), "learner_sps")  # fmt: skip
    assert calibration_drift({"env_sps": 0.0}, {"env_sps": 1.0})[0] == float("inf")
    assert CAL_DRIFT_MAX == MIN_EFFECT["norm_sps"]  # the rationale in bench/regress.py ties them


def test_calibrate_measures_both_workloads():
    cal = calibrate("puffer_breakout", 1, seconds=0.1, warmup_s=0.05)
    assert set(cal) == {"env_sps", "learner_sps"} and all(np.isfinite(v) and v > 0 for v in cal.values())


OTHER = "Another CPU (family 6 model 1) | AVX2 | 2 threads"


def _as_other_machine(base: Path, tmp: Path) -> tuple[Path, dict]:
    """The smoke baseline, filed under another machine's key."""
    ((_, entry),) = json.loads(base.read_text())["machines"].items()
    other = tmp / "other.json"
    other.write_text(json.dumps({"suite": "smoke", "machines": {OTHER: entry}}))
    return other, entry


def test_other_machine_gates_score_only(smoke_baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(regress, "calibrate", _steady)
    other, _ = _as_other_machine(smoke_baseline, tmp_path)
    # Slower than the baseline beyond noise, but on hardware the baseline never saw: reported only.
    code, res = _run(other, tmp_path, "--seeds", "1", "--test-sleep-in-update", SLEEP)
    ch = res["agents"]["ppo"]["changes"]
    assert code == 0 and not res["same_machine"] and res["baseline_machine"] == OTHER
    assert res["gated"] == ["score_at_budget"]
    assert ch["norm_sps"]["below_baseline"] and not ch["norm_sps"]["regressed"] and ch["norm_sps"]["change"] < -0.2
    assert "not gated" in (tmp_path / "r.md").read_text()
    # Learning per sample is hardware-free, so a broken learner still fails there.
    code, res = _run(other, tmp_path, "--seeds", "1", "--agent-option", BROKEN)
    assert code == 1 and res["agents"]["ppo"]["changes"]["score_at_budget"]["regressed"]


def test_update_baseline_adds_this_machine_and_keeps_others(smoke_baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(regress, "calibrate", _steady)
    other, entry = _as_other_machine(smoke_baseline, tmp_path)
    argv = ["regress", "--suite", "smoke", "--baseline", str(other), "--update-baseline", "--seeds", "1", "--threads", "1"]
    assert cli(argv) == 0
    machines = json.loads(other.read_text())["machines"]
    assert len(machines) == 2 and machines[OTHER] == entry
    ((key, mine),) = [(k, v) for k, v in machines.items() if k != OTHER]
    assert "threads" in key and mine["agents"]["ppo"]["seeds"] == [1]


def test_missing_or_malformed_baseline(capsys, tmp_path):
    assert cli(["regress", "--suite", "smoke", "--baseline", str(tmp_path / "none.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"agents": {}}')
    assert cli(["regress", "--suite", "smoke", "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing baseline" in err[0] and "malformed baseline" in err[1]


def test_bootstrap_is_seeded():
    a = bootstrap_change([1, 2, 3], [2, 3, 4], reps=300, seed=5)
    b = bootstrap_change([1, 2, 3], [2, 3, 4], reps=300, seed=5)
    assert a == b and np.isfinite(a).all()


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing run


def _valid_entry() -> dict:
    return {"reference": dict(CAL), "t_ref": {"ppo": 10.0},
            "agents": {"ppo": {**{m: [1.0, 2.0] for m in METRICS}, "seeds": [1, 2]}}}  # fmt: skip


def _with(path: tuple, value) -> dict:
    """A baseline file's content: the valid entry, with the field at ``path`` set to ``value``."""
    entry = _valid_entry()
    d = entry
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return {"suite": "smoke", "machines": {OTHER: entry}}


def test_valid_entry_loads(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(_with(("t_ref", "ppo"), 12.0)))
    assert load_baselines(tmp_path / "b.json")[OTHER]["t_ref"]["ppo"] == 12.0


# Each case: extra arguments ({file}: an existing file, {dir}: an existing folder, {busy}: a folder
# holding something other than a run where a run would go), the baseline file's content (None:
# a valid one), and text the one-line error must contain.
BAD = [
    (["--seeds", "0"], None, "--seeds 0: must be between 1 and 2"),
    (["--seeds", "-1"], None, "--seeds -1: must be between 1 and 2"),
    (["--seeds", "3"], None, "--seeds 3: must be between 1 and 2"),
    (["--seeds", "0", "--update-baseline"], None, "--seeds 0"),
    (["--seeds", "abc"], None, "invalid int value: 'abc'"),
    (["--threads", "0"], None, "--threads 0: must be >= 1"),
    (["--threads", "-2", "--update-baseline"], None, "--threads -2: must be >= 1"),
    (["--reps", "0"], None, "--reps 0: must be >= 20"),
    (["--test-sleep-in-update", "-1"], None, "--test-sleep-in-update -1.0"),
    (["--test-sleep-in-update", "nan"], None, "--test-sleep-in-update nan"),
    (["--agent-option", "ppo.nosuch=1"], None, "--agent-option ppo.nosuch=1: ppo has no option 'nosuch'"),
    (["--agent-option", "ppo.lr=-1"], None, "--agent-option ppo.lr=-1.0"),
    (["--agent-option", "ppo.lr=abc"], None, "--agent-option ppo.lr=abc: expected float"),
    (["--agent-option", "ppo.epochs=0", "--update-baseline"], None, "--agent-option ppo.epochs=0"),
    (["--agent-option", "rainbow.lr=1"], None, "the smoke suite has no agent 'rainbow'"),
    (["--agent-option", "lr=1"], None, "expected AGENT.KEY=VALUE"),
    (["--out", "{file}"], None, "is a file, not a folder"),
    (["--out", "{file}/runs"], None, "is a file, not a folder"),
    (["--out", ""], None, "--out '': empty path"),
    (["--out", "{busy}"], None, "is not a ppo run folder; use another --out"),
    (["--json", "{dir}"], None, "--json {dir}: is a folder, not a file"),
    (["--json", "{file}/r.json"], None, "is a file, not a folder"),
    (["--json", ""], None, "--json '': empty path"),
    (["--markdown", "{file}/sub/r.md"], None, "is a file, not a folder"),
    (["--markdown", "{dir}"], None, "is a folder, not a file"),
    (["--update-baseline", "--baseline", "{file}/b.json"], None, "is a file, not a folder"),
    (["--update-baseline", "--baseline", "{dir}"], None, "is a folder, not a file"),
    # /proc passes root's permission check and still refuses a mkdir (others: "not writable").
    (["--out", "/proc/nosuch/runs"], None, "--out /proc/nosuch/runs"),
    (["--json", "/proc/nosuch/r.json"], None, "--json /proc/nosuch"),
    ([], _with(("t_ref",), "abc"), "t_ref is 'abc', expected an object"),
    ([], _with(("t_ref", "ppo"), "abc"), "t_ref.ppo is 'abc', expected a positive number"),
    ([], _with(("t_ref", "ppo"), -1), "t_ref.ppo is -1"),
    ([], _with(("reference", "env_sps"), "fast"), "reference.env_sps is 'fast'"),
    ([], _with(("reference",), {"env_sps": 1.0}), "reference.learner_sps is None"),
    ([], _with(("agents", "ppo", "norm_sps"), "abc"), "agents.ppo.norm_sps is 'abc', expected a non-empty list"),
    ([], _with(("agents", "ppo", "norm_sps"), [[1.0], [2.0]]), "agents.ppo.norm_sps is [[1.0], [2.0]]"),
    ([], _with(("agents", "ppo", "score_at_budget"), []), "agents.ppo.score_at_budget is []"),
    ([], _with(("agents", "ppo", "score_per_hour"), [1, "2"]), "agents.ppo.score_per_hour"),
    ([], _with(("agents", "ppo"), [1, 2]), "agents.ppo is [1, 2], expected an object"),
    ([], _with(("agents",), {"rainbow": _valid_entry()["agents"]["ppo"]}), "no baseline for agent 'ppo'"),
    ([], {"suite": "smoke", "machines": {OTHER: [1, 2]}}, "entry is list, expected an object"),
    ([], {"suite": "smoke", "machines": {OTHER: "x"}}, "entry is str, expected an object"),
    ([], {"suite": "smoke", "machines": []}, "no 'machines'"),
    ([], [1, 2], "baseline is not a JSON object"),
    ([], {**_with(("t_ref", "ppo"), 10.0), "suite": "ci"}, "a baseline for suite 'ci', not 'smoke'"),
    (["--update-baseline"], {**_with(("t_ref", "ppo"), 10.0), "suite": "ci"}, "a baseline for suite 'ci'"),
]


@pytest.mark.parametrize("extra,content,expect", BAD, ids=[" ".join(c[0]) or c[2][:40] for c in BAD])
def test_bad_input_is_one_line_before_anything_runs(extra, content, expect, tmp_path, monkeypatch, capsys):
    def ran(*a, **k):
        raise AssertionError("bench regress started work on bad input")

    monkeypatch.setattr(regress, "calibrate", ran)
    monkeypatch.setattr("bench.harness.train", ran)
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dir").mkdir()
    (tmp_path / "busy" / "ppo" / "seed1").mkdir(parents=True)
    (tmp_path / "busy" / "ppo" / "seed1" / "notes.txt").write_text("keep")
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_with(("t_ref", "ppo"), 10.0) if content is None else content))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    paths = {"file": str(tmp_path / "file"), "dir": str(tmp_path / "dir"), "busy": str(tmp_path / "busy")}
    extra = [a.format(**paths) for a in extra]
    argv = ["regress", "--suite", "smoke", *([] if "--baseline" in extra else ["--baseline", str(base)]), *extra]
    assert cli(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect.format(**paths) in err and "--baseline:" not in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
