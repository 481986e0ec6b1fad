"""bench regress: the statistics, the calibration's normalisation, and the check catching a
slowed learner (on norm_sps) and a broken one (lr 0, on score)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main as cli
from bench.regress import bootstrap_change, run_figures, verdict


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


@pytest.fixture(scope="module")
def smoke_baseline(tmp_path_factory):
    base = tmp_path_factory.mktemp("regress") / "smoke.json"
    assert cli(["regress", "--suite", "smoke", "--update-baseline", "--baseline", str(base)]) == 0
    return base


def _run(base: Path, tmp: Path, *extra: str) -> tuple[int, dict]:
    out = tmp / "r.json"
    code = cli(["regress", "--suite", "smoke", "--baseline", str(base), "--json", str(out),
                "--markdown", str(tmp / "r.md"), *extra])  # fmt: skip
    return code, json.loads(out.read_text())


def test_slowed_learner_fails_on_norm_sps(smoke_baseline, tmp_path):
    code, res = _run(smoke_baseline, tmp_path, "--test-sleep-in-update", "5.0")
    ch = res["agents"]["ppo"]["changes"]
    assert code == 1 and ch["norm_sps"]["regressed"] and ch["norm_sps"]["change"] < -0.2
    assert "regressed" in (tmp_path / "r.md").read_text()


def test_broken_learner_fails_on_score(smoke_baseline, tmp_path):
    code, res = _run(smoke_baseline, tmp_path, "--agent-option", "ppo.lr=0")
    ch = res["agents"]["ppo"]["changes"]
    assert code == 1 and ch["score_at_budget"]["regressed"]
    assert not ch["norm_sps"]["regressed"]  # it is as fast as ever: the line must say "score"


OTHER = "Another CPU (family 6 model 1) | AVX2 | 2 threads"


def _as_other_machine(base: Path, tmp: Path) -> tuple[Path, dict]:
    """The smoke baseline, filed under another machine's key."""
    ((_, entry),) = json.loads(base.read_text())["machines"].items()
    other = tmp / "other.json"
    other.write_text(json.dumps({"suite": "smoke", "machines": {OTHER: entry}}))
    return other, entry


def test_other_machine_gates_score_only(smoke_baseline, tmp_path):
    other, _ = _as_other_machine(smoke_baseline, tmp_path)
    # Slower than the baseline beyond noise, but on hardware the baseline never saw: reported only.
    code, res = _run(other, tmp_path, "--seeds", "1", "--test-sleep-in-update", "1.0")
    ch = res["agents"]["ppo"]["changes"]
    assert code == 0 and not res["same_machine"] and res["baseline_machine"] == OTHER
    assert res["gated"] == ["score_at_budget"]
    assert ch["norm_sps"]["below_baseline"] and not ch["norm_sps"]["regressed"] and ch["norm_sps"]["change"] < -0.2
    assert "not gated" in (tmp_path / "r.md").read_text()
    # Learning per sample is hardware-free, so a broken learner still fails there.
    code, res = _run(other, tmp_path, "--seeds", "1", "--agent-option", "ppo.lr=0")
    assert code == 1 and res["agents"]["ppo"]["changes"]["score_at_budget"]["regressed"]


def test_update_baseline_adds_this_machine_and_keeps_others(smoke_baseline, tmp_path):
    other, entry = _as_other_machine(smoke_baseline, tmp_path)
    assert cli(["regress", "--suite", "smoke", "--baseline", str(other), "--update-baseline", "--seeds", "1"]) == 0
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
