"""plots.load / plots.report / `bench report`: synthetic run folders in the exact format the
harness writes, ragged and failed runs, the mixed-protocol refusal, and every figure built
headless."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.errors import UserError
from plots import load, stats
from plots.report import Options, build_report, compute, final_score

REPS = 100  # bootstrap draws: enough to exercise the CIs (plots/stats tests check them exactly)

PUFFER_PROTOCOL = {"backend": "pufferlib 3.0.0 ocean/breakout (C, in-process)", "frameskip": 4,
                   "sticky_actions": 0.0, "action_set": "native (3 actions)", "life_loss": "none (episode = full game)",
                   "reward_clipping": "none in env (learner's choice)", "episode_cap": "game's own"}  # fmt: skip
ALE_PROTOCOL = {"name": "machado", "frameskip": 4, "sticky_actions": 0.25, "action_set": "minimal (4 actions)",
                "life_loss": "none", "reward_clipping": "none in env (learner's choice)",
                "episode_cap": "108000 frames"}  # fmt: skip
AGENT_CONFIGS = {
    "ppo": {"num_envs": 8, "segment_length": 64, "epochs": 4},
    "rainbow": {"num_envs": 8, "n_step": 3, "replay_ratio": 8.0},
    "btr": {"num_envs": 8, "n_step": 3, "replay_ratio": 2.0},
    "random": {"num_envs": 8},
}
REUSE = {"ppo": 4.0, "rainbow": 8.0, "btr": 2.0, "random": 0.0}
SKILL = {
    "ppo": 300.0,
    "rainbow": 200.0,
    "btr": 250.0,
    "random": 1.0,
}  # score reached at the end of a full run
SECONDS_PER_ROW = {"ppo": 1.0, "rainbow": 3.0, "btr": 2.0, "random": 0.1}


def write_run(root: Path, agent: str, game: str = "puffer_breakout", seed: int = 1, *, rows: int = 40,
              steps_per_row: int = 1000, status: str = "ok", label: str | None = None, eval_rows: int = 0,
              protocol: dict | None = None, cpu: str = "Test CPU", agent_config: dict | None = None,
              reuse: float | None = None, torn_tail: bool = False, compute_json: bool = True,
              episodes_per_row: int = 3, budget_rows: int | None = None, eval_capped: int = 0) -> Path:  # fmt: skip
    """A run folder exactly as `bench run` writes it (config.json, metrics.csv, eval.csv,
    learner.csv, compute.json, done/failed); returns learn linearly towards SKILL[agent]."""
    family = "puffer" if game.startswith("puffer_") else "ale"
    path = root / agent / game / f"seed{seed}"
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cfg = dict(AGENT_CONFIGS[agent] if agent_config is None else agent_config)
    reuse = REUSE[agent] if reuse is None else reuse
    config = {
        "schema": 1,
        "run": {"agent": agent, "game": game, "seed": seed, "steps": (budget_rows or rows) * steps_per_row, "time_s": None,
                "eval_every": None, "eval_episodes": 0, "log_every": steps_per_row, "checkpoint_every_s": 60.0,
                "device": "cpu", "threads": 2, "protocol": None, "label": label, "tensorboard": False,
                "out": str(path)},
        "agent": cfg,
        "env": {"game": game, "family": family, "obs_shape": [118], "obs_dtype": "float32", "num_actions": 3,
                "frameskip": 4, "num_envs": 8,
                "protocol": protocol or (PUFFER_PROTOCOL if family == "puffer" else ALE_PROTOCOL)},
        "fingerprint": {"cpu": cpu, "cores": 2, "cores_allowed": 2, "gpu": None, "torch": "2.13.0", "cuda": None,
                        "ale_py": "0.12", "pufferlib": "3.0.0", "numpy": "2.4", "python": "3.11",
                        "git_commit": "abc"},
        "command": f"bench run --agent {agent} --game {game} --seed {seed}",
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2))
    lines = [",".join(load.METRIC_COLUMNS)]
    episodes = 0
    for r in range(1, rows + 1):
        steps = r * steps_per_row
        episodes += episodes_per_row
        ret = SKILL[agent] * r / rows + rng.normal(0, 5)
        wall = r * SECONDS_PER_ROW[agent]
        lines.append(f"{wall},{steps},{steps * 4},{episodes},{int(steps * reuse / 32)},{int(steps * reuse)},"
                     f"{reuse},{steps_per_row / SECONDS_PER_ROW[agent]},{ret},{100 + r}")  # fmt: skip
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += "12.5,99000,396"  # a writer killed mid-line
    (path / "metrics.csv").write_text(text)
    ev = [",".join(load.EVAL_COLUMNS)]
    for k in range(1, eval_rows + 1):
        s = rows * steps_per_row * k // eval_rows
        capped = f"{eval_capped},{2.0 if eval_capped else ''}"  # episodes cut by the cap, partial mean
        ev.append(f"{k},{s},{s * 4},{int(s * reuse)},10,{SKILL[agent] * k / eval_rows + 1},3.0,{capped}")
    (path / "eval.csv").write_text("\n".join(ev) + "\n")
    (path / "learner.csv").write_text("wall_s,env_steps,grad_steps,loss\n1.0,1000,10,0.5\n")
    n_steps = rows * steps_per_row
    wall = rows * SECONDS_PER_ROW[agent]
    if compute_json:
        fa, fg = (0.0, 0.0) if agent == "random" else (2e5, 6e5)
        (path / "compute.json").write_text(json.dumps({
            "status": "done" if status == "ok" else "partial", "env_steps": n_steps, "frames": n_steps * 4,
            "episodes": episodes, "grad_steps": int(n_steps * reuse / 32), "grad_samples": int(n_steps * reuse),
            "reuse_ratio": reuse, "train_wall_s": wall, "eval_wall_s": 0.5, "sps": n_steps / wall,
            "phase_s": {"env": 0.5 * wall, "act": 0.2 * wall, "learn": 0.3 * wall, "eval": 0.5},
            "params": 1000, "flops_per_act_sample": fa, "flops_per_grad_sample": fg,
            "train_flops": fa * n_steps + fg * n_steps * reuse}))  # fmt: skip
    if status == "ok":
        (path / "done").write_text(json.dumps({"status": "ok", "env_steps": n_steps, "wall_s": wall}))
    elif status == "failed":
        (path / "failed").write_text(json.dumps({"status": "failed", "reason": "non-finite loss = nan",
                                                 "env_steps": n_steps}))  # fmt: skip
    return path


def synthetic_set(root: Path, games=("puffer_breakout",), seeds=(1, 2, 3), agents=("ppo", "rainbow", "random"),
                  single_seed_agents=()) -> Path:  # fmt: skip
    for game in games:
        for agent in agents:
            for s in seeds:
                # One crashed rainbow run, shorter than the others, with a torn last line.
                crashed = agent == "rainbow" and s == seeds[-1] and len(seeds) > 1
                write_run(root, agent, game, s, rows=25 if crashed else 40, budget_rows=40,
                          status="incomplete" if crashed else "ok", torn_tail=crashed)  # fmt: skip
        for agent in single_seed_agents:
            write_run(root, agent, game, seeds[0])
    return root


def opts(out: Path, **kw) -> Options:
    return Options(out=out, reps=REPS, seed=0, grid_points=50, **kw)


# Loading -----------------------------------------------------------------------------------


def test_columns_match_the_harness():
    from bench import results
    from bench.fingerprint import hardware_key

    assert load.METRIC_COLUMNS == results.METRIC_COLUMNS
    assert load.EVAL_COLUMNS == results.EVAL_COLUMNS
    fp = {"cpu": "X", "cores": 4, "cores_allowed": 2, "gpu": None}
    assert load.hardware_key(fp) == hardware_key(fp)


def test_loading_keeps_ragged_failed_and_crashed_runs(tmp_path):
    write_run(tmp_path, "ppo", seed=1)
    write_run(tmp_path, "ppo", seed=2, rows=10, status="failed")
    write_run(tmp_path, "ppo", seed=3, rows=7, status="incomplete", torn_tail=True, compute_json=False)
    (tmp_path / "junk" / "x").mkdir(parents=True)
    (tmp_path / "junk" / "x" / "config.json").write_text("{not json")
    runs, skipped = load.load_runs([tmp_path])
    assert [(r.seed, r.status) for r in runs] == [(1, "ok"), (2, "failed"), (3, "incomplete")]
    assert skipped == [(tmp_path / "junk" / "x", "config.json unreadable")]
    failed, crashed = runs[1], runs[2]
    assert "non-finite loss" in failed.reason and "10,000" in failed.reason
    assert crashed.torn_rows == 1 and len(crashed.metrics["env_steps"]) == 7  # the torn line is not used
    assert crashed.total("env_steps") == 7000  # from the rows, as there is no compute.json
    assert math.isnan(crashed.train_flops) and any("compute.json" in n for n in crashed.notes)
    table = load.tidy(runs)
    assert len(table) == 40 + 10 + 7
    assert {"agent", "game", "seed", "protocol", "hardware", "status", *load.METRIC_COLUMNS} <= set(
        table.columns
    )
    assert set(table[table.seed == 3].status) == {"incomplete"}


def test_final_score_last_n_episodes_and_eval(tmp_path):
    p = write_run(tmp_path, "ppo", rows=4, episodes_per_row=50, eval_rows=2)
    (p / "metrics.csv").write_text(",".join(load.METRIC_COLUMNS) + "\n"
                                   "1,1000,4000,50,0,0,0,1000,10,100\n"
                                   "2,2000,8000,100,0,0,0,1000,,\n"
                                   "3,3000,12000,150,0,0,0,1000,30,100\n"
                                   "4,4000,16000,170,0,0,0,1000,60,100\n")  # fmt: skip
    run = load.load_run(p)
    s = final_score(run, 100, "train")
    # Last 100 episodes: 20 at 60, 50 at 30, 30 of the first row's 50 at 10.
    assert s.final == pytest.approx((20 * 60 + 50 * 30 + 30 * 10) / 100) and s.episodes == 100
    assert s.normalized == pytest.approx((s.final - 0.805) / (864 - 0.805))  # lo: random's measured mean
    e = final_score(run, 100, "eval")
    assert e.final == pytest.approx(SKILL["ppo"] + 1) and e.episodes == 10 and e.source == "eval"


def test_capped_evaluation_episodes_give_a_warning_line(tmp_path):
    from plots.report import capped_eval_warning, compute, summary_md

    clean = load.load_run(write_run(tmp_path / "a", "ppo", eval_rows=2))
    assert capped_eval_warning(clean, True) is None
    capped = load.load_run(write_run(tmp_path / "b", "ppo", eval_rows=2, eval_capped=3))
    assert capped.evals["eval_episodes_capped"].tolist() == [3, 3]
    line = capped_eval_warning(capped, True)
    assert line.startswith("WARNING") and "2 of 2 evaluation(s) including the last" in line
    assert "6 episode(s) unfinished" in line
    num = compute([capped], [], opts(tmp_path / "out", score="eval"))
    assert line in num.notes and line in summary_md(num, tmp_path / "out")


# Mixed protocols / hardware ----------------------------------------------------------------


def test_mixed_protocol_is_refused_unless_allowed(tmp_path):
    write_run(tmp_path / "a", "ppo", "breakout", seed=1)
    write_run(
        tmp_path / "b",
        "ppo",
        "breakout",
        seed=2,
        protocol={**ALE_PROTOCOL, "name": "dqn", "sticky_actions": 0.0},
    )
    runs, skipped = load.load_runs([tmp_path])
    with pytest.raises(UserError) as e:
        compute(runs, skipped, opts(tmp_path / "r"))
    msg = str(e.value)
    assert "breakout has 2 protocols" in msg and "sticky_actions" in msg and "--allow-mixed" in msg
    assert "\n" not in msg  # the CLI prints it as one line
    num = compute(runs, skipped, opts(tmp_path / "r", allow_mixed=True))
    assert num.mixed and "breakout has 2 protocols" in num.mixed[0]


def test_mixed_hardware_is_refused_and_different_games_are_not_mixed(tmp_path):
    write_run(tmp_path, "ppo", "puffer_breakout", seed=1)
    write_run(tmp_path, "ppo", "breakout", seed=1)  # another game, another protocol: fine
    runs, skipped = load.load_runs([tmp_path])
    assert compute(runs, skipped, opts(tmp_path / "r")).mixed == []
    write_run(tmp_path, "ppo", "puffer_breakout", seed=2, cpu="Other CPU")
    runs, skipped = load.load_runs([tmp_path])
    with pytest.raises(UserError, match="2 hardware fingerprints"):
        compute(runs, skipped, opts(tmp_path / "r"))


# The whole report --------------------------------------------------------------------------

EXPECTED_FIGURES = {"curves_puffer_breakout", "curves_breakout", "curves_aggregate", "final_vs_reuse",
                    "final_vs_horizon", "aggregate_intervals", "performance_profile",
                    "probability_of_improvement", "compute"}  # fmt: skip


def test_every_figure_builds_headless_from_synthetic_runs(tmp_path):
    # Two games, three agents with 3 seeds (one crashed rainbow run per game) and a single-seed
    # agent (btr), so the no-CI drawing paths run too.
    root = synthetic_set(
        tmp_path / "runs", games=("puffer_breakout", "breakout"), single_seed_agents=("btr",)
    )
    out = tmp_path / "report"
    num, files = build_report([root], opts(out))
    pngs = {p.stem for p in files if p.suffix == ".png"}
    pdfs = {p.stem for p in files if p.suffix == ".pdf"}
    assert pngs == pdfs == EXPECTED_FIGURES, num.figures_skipped
    for p in files:
        assert p.exists() and p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-"
    # The crashed runs are included and reported, not dropped.
    assert len(num.runs) == 20 and sum(r.status == "incomplete" for r in num.runs) == 2
    md = (out / "summary.md").read_text()
    assert "incomplete" in md and "ragged runs" in md and "figures/curves_aggregate.png" in md
    assert "CleanRL PPO" in md  # the ALE breakout reference is listed with its source
    assert "| btr | breakout | 1 (1 ok) | train |" in md and "(single seed, no CI)" in md
    doc = json.loads((out / "summary.json").read_text())
    assert len(doc["runs"]) == 20 and doc["settings"]["last_episodes"] == 100
    assert {a for a in doc["aggregates"]} == {"ppo", "rainbow", "random", "btr"}
    assert doc["aggregates"]["btr"]["iqm"]["lo"] is None  # single seed: CI absent, not zero-width
    # Ordering matches the synthetic skills on every aggregate.
    iqm = {lab: doc["aggregates"][lab]["iqm"]["point"] for lab in doc["aggregates"]}
    assert iqm["ppo"] > iqm["btr"] > iqm["rainbow"] > iqm["random"]
    pair = next(p for p in doc["probability_of_improvement"] if (p["x"], p["y"]) == ("ppo", "random"))
    assert pair["estimate"]["point"] == 1.0
    # Reuse ratios 2, 4 and 8 (random's 0 has no gradient samples) and horizons 64 and 3 were swept.
    xs = sorted(p["x"] for p in doc["sweeps"]["reuse"]["puffer_breakout"])
    assert xs == [2.0, 4.0, 8.0]
    assert sorted({p["x"] for p in doc["sweeps"]["horizon"]["puffer_breakout"]}) == [3.0, 64.0]


def test_sweep_settings_of_one_agent_form_one_series(tmp_path):
    # A --reuse study labels runs per setting (ppo-reuse1, ppo-reuse4): the figure draws one line
    # per agent through its settings, so the points carry the agent as their series.
    for label, reuse, epochs in (("ppo-reuse1", 1.0, 1), ("ppo-reuse4", 4.0, 4)):
        for seed in (1, 2):
            write_run(tmp_path / label, "ppo", seed=seed, label=label, reuse=reuse,
                      agent_config={**AGENT_CONFIGS["ppo"], "epochs": epochs})  # fmt: skip
    runs, skipped = load.load_runs([tmp_path])
    num = compute(runs, skipped, opts(tmp_path / "r"))
    pts = sorted(num.sweeps["reuse"]["puffer_breakout"], key=lambda p: p.x)
    assert [(p.label, p.series, p.x, p.n) for p in pts] == [("ppo-reuse1", "ppo", 1.0, 2), ("ppo-reuse4", "ppo", 4.0, 2)]
    from plots.report import draw

    written = draw(num, tmp_path / "figs")
    assert tmp_path / "figs" / "final_vs_reuse.png" in written


def test_report_numbers_equal_direct_computation(tmp_path):
    root = synthetic_set(tmp_path / "runs")
    runs, skipped = load.load_runs([root])
    num = compute(runs, skipped, opts(tmp_path / "r"))
    ppo = [r for r in runs if r.label == "ppo"]
    finals = np.array([final_score(r, 100, "train").final for r in ppo]).reshape(-1, 1)
    row = next(x for x in num.rows if x.label == "ppo")
    assert row.final == stats.iqm_estimate(finals, REPS, 0)
    assert row.sps == pytest.approx(1000.0)  # 1000 env steps per synthetic second
    assert row.reuse_ratio == pytest.approx(4.0) and row.horizon == 64
    # Curves: every ppo run on the same grid, IQM at the last grid point = IQM of final windows.
    c = num.curves["puffer_breakout"]["frames"]["ppo"]
    assert c.grid[-1] == 160_000 and c.n[-1] == 3
    assert c.iqm[-1] == pytest.approx(stats.nan_iqm(finals[:, 0]))
    # The crashed rainbow run stops contributing after its 25 rows (100k frames).
    r = num.curves["puffer_breakout"]["frames"]["rainbow"]
    assert r.n[r.grid <= 100_000].max() == 3 and r.n[r.grid > 100_000].max() == 2
    assert "random" not in num.curves["puffer_breakout"]["grad"]
    assert num.curve_missing["puffer_breakout"]["grad"]["random"] == "no gradient samples"


def test_single_seed_report_says_no_ci(tmp_path):
    from plots.report import summary_md

    root = synthetic_set(tmp_path / "runs", seeds=(1,))
    runs, skipped = load.load_runs([root])
    num = compute(runs, skipped, opts(tmp_path / "report"))
    md = summary_md(num, tmp_path / "report")
    assert "| ppo | puffer_breakout | 1 (1 ok) | train | 179 (single seed, no CI) |" in md
    assert all(not e.has_ci for agg in num.aggregates.values() for e in agg.values())
    assert all(np.isnan(c.lo).all() for c in num.curves["puffer_breakout"]["frames"].values())


def test_bench_report_cli(tmp_path, capsys):
    from bench.cli import main

    root = synthetic_set(tmp_path / "runs", seeds=(1, 2), agents=("ppo", "random"))
    assert main(["report", str(root), "--formats", "gif"]) == 2
    assert "--formats" in capsys.readouterr().err
    assert main(["report", str(root), "--reps", "50", "--last-episodes", "30", "--formats", "png"]) == 0
    out = capsys.readouterr().out
    assert "final score" in out and "summary.md" in out and "ppo" in out
    assert (root / "report" / "figures" / "compute.png").exists()
    doc = json.loads((root / "report" / "summary.json").read_text())
    assert doc["settings"]["reps"] == 50 and doc["settings"]["last_episodes"] == 30
    # User errors are one line and exit code 2.
    write_run(tmp_path / "runs2", "ppo", seed=1)
    write_run(tmp_path / "runs2", "ppo", seed=2, cpu="Other CPU")
    assert main(["report", str(tmp_path / "runs2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hardware" in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_sweep_groups_by_config_and_count_axes_go_log_when_runs_end_far_apart(tmp_path):
    # Measured reuse varies a little between runs of one setting (warm-up, a budget ending
    # mid-rollout): one point per (label, config), x = median, the range as an error bar.
    write_run(tmp_path, "ppo", seed=1, reuse=0.96)
    write_run(tmp_path, "ppo", seed=2, reuse=1.0)
    write_run(tmp_path, "rainbow", seed=1, reuse=3.3)
    write_run(tmp_path, "rainbow", seed=2, reuse=3.4)
    # A time-budgeted random agent steps 100x further than the learners.
    write_run(tmp_path, "random", seed=1, steps_per_row=100_000)
    runs, skipped = load.load_runs([tmp_path])
    num = compute(runs, skipped, opts(tmp_path / "r"))
    pts = {p.label: p for p in num.sweeps["reuse"]["puffer_breakout"]}
    assert set(pts) == {"ppo", "rainbow"}  # random has no gradient samples
    assert (pts["ppo"].x, pts["ppo"].x_lo, pts["ppo"].x_hi, pts["ppo"].n) == (
        pytest.approx(0.98),
        0.96,
        1.0,
        2,
    )
    assert num.curve_log["puffer_breakout"] == {"wall": False, "frames": True, "grad": False}
    grid = num.curves["puffer_breakout"]["frames"]["ppo"].grid
    assert grid[0] == 4000 and grid[-1] == 40 * 100_000 * 4  # from the first logged row to the furthest end
    np.testing.assert_allclose(np.diff(np.log(grid)), np.log(grid[1] / grid[0]))  # log-spaced


def test_number_formatting():
    from plots.report import fmt, fmt_est

    cases = {0.00098: "0.00098", 6.56: "6.56", 1626.0: "1,626", 65123.0: "65.1k", 999_999.0: "1M",
             1.32e6: "1.32M", 2.94e11: "294G", 3e18: "3E", -65123.0: "-65.1k", math.nan: "n/a"}  # fmt: skip
    assert {v: fmt(v) for v in cases} == cases
    assert fmt_est(stats.Estimate(2.0, 1.0, 3.0), 3) == "2 [1, 3]"
    assert fmt_est(stats.Estimate(2.0, math.nan, math.nan), 1) == "2 (single seed, no CI)"
