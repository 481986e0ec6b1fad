"""plots.paper_findings: per-study numbers, figure and answer from synthetic run folders whose
scores are known in closed form (every metric row closes 100 episodes, so with the default
last-100-episode window a run's score at a row is exactly that row's return)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bench.errors import UserError
from plots import load
from plots.normalize import normalize, normalizer
from plots.paper_findings import analyse, score_at_frames, second_half_mean, split_label
from plots.report import compute
from tests.test_report import opts, write_run

EPISODES = 100  # episodes per metric row = the score window
HARDWARE = "Test CPU (family 6 model 1), 1 core per run"
SEEDS = (1, 2, 3)


def make_run(root: Path, label: str, agent: str, game: str, seed: int, returns, *, rows: int, steps_per_row: int,
             time_s: float = 60.0, episodes_per_row: int = EPISODES, **kw) -> Path:  # fmt: skip
    """write_run's folder with the return of row i (1-based) set to ``returns(i)``, a wall-clock
    budget of ``time_s`` (write_run spends SECONDS_PER_ROW[agent] per row) and MinAtar games
    recorded as family minatar (write_run knows only puffer and ale)."""
    path = write_run(root / label, agent, game, seed, rows=rows, steps_per_row=steps_per_row,
                     label=None if label == agent else label, episodes_per_row=episodes_per_row, **kw)  # fmt: skip
    lines = (path / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("episode_return")
    out = [lines[0]]
    for i, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        fields[col] = repr(float(returns(i)))
        out.append(",".join(fields))
    (path / "metrics.csv").write_text("\n".join(out) + "\n")
    cfg = json.loads((path / "config.json").read_text())
    cfg["run"].update(time_s=time_s, steps=None)
    if game.startswith("minatar:"):
        cfg["env"]["family"] = "minatar"
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def write_learner(path: Path, columns: dict, rows: int, gz: bool = False) -> None:
    """Replace a run's learner.csv with one row per second of wall clock (wall_s = 1..rows) and
    the given columns, each ``f(wall_s)``; ``gz``: as an archive keeps it (learner.csv.gz only)."""
    names = ["wall_s", "env_steps", "grad_steps", *columns]
    lines = [",".join(names)]
    for w in range(1, rows + 1):
        lines.append(",".join([repr(float(w)), str(1000 * w), str(10 * w)] + [repr(float(f(w))) for f in columns.values()]))
    text = "\n".join(lines) + "\n"
    (path / "learner.csv").unlink()
    if gz:
        (path / "learner.csv.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        (path / "learner.csv").write_text(text)


def numbers_of(root: Path):
    runs, skipped = load.load_runs([root])
    return compute(runs, skipped, opts(root / "report"))


def iqm(values) -> float:
    """25% trimmed mean, by hand: drop floor(n/4) from each end."""
    v = sorted(values)
    k = len(v) // 4
    return float(np.mean(v[k : len(v) - k]))


# equal_compute -----------------------------------------------------------------------------

# PPO: 2000 env steps per 1 s row, 60 rows = 60 s, return 5 i (+ seed), ends at 300.
# Rainbow: 1000 env steps per 3 s row, 20 rows = 60 s, return 10 i (+ seed), ends at 200.
# At the budget PPO is ahead; at Rainbow's 80,000 frames (PPO's row 10) PPO has only 50.
SCALE = {"puffer_breakout": 1.0, "minatar:breakout": 0.05}  # keeps MinAtar returns in its range


@pytest.fixture(scope="module")
def equal_compute_num(tmp_path_factory):
    root = tmp_path_factory.mktemp("equal_compute")
    for g, s in SCALE.items():
        for seed in SEEDS:
            make_run(root, "ppo", "ppo", g, seed, lambda i, s=s, k=seed: s * (5 * i + k), rows=60, steps_per_row=2000)
            make_run(root, "rainbow", "rainbow", g, seed, lambda i, s=s, k=seed: s * (10 * i + k), rows=20,
                     steps_per_row=1000)  # fmt: skip
    return numbers_of(root)


STUDY = {"name": "equal-compute", "title": "Equal compute", "kind": "equal_compute", "agents": ["ppo", "rainbow"],
         "games": list(SCALE), "seeds": 3, "time": "1m"}  # fmt: skip


def test_equal_compute_names_the_per_second_and_the_per_sample_winner(equal_compute_num, tmp_path):
    num = equal_compute_num
    res = analyse("equal_compute", STUDY, num, tmp_path / "figs", HARDWARE)
    n = res.numbers
    assert n["scope"]["games"] == sorted(SCALE) and n["scope"]["normalised"]
    assert n["scope"]["n_runs"] == {lab: {g: 3 for g in sorted(SCALE)} for lab in ("ppo", "rainbow")}
    assert n["scope"]["budget_s"] == 60.0

    # At the wall-clock budget: the report's own aggregate, PPO ahead, every PPO run above every Rainbow run.
    for lab in ("ppo", "rainbow"):
        assert n["wall"]["iqm"][lab]["point"] == pytest.approx(num.aggregates[lab]["iqm"].point)
    expect_wall = {
        "ppo": iqm([normalize(g, SCALE[g] * (300 + k)) for g in SCALE for k in SEEDS]),
        "rainbow": iqm([normalize(g, SCALE[g] * (200 + k)) for g in SCALE for k in SEEDS]),
    }
    for lab, v in expect_wall.items():
        assert n["wall"]["iqm"][lab]["point"] == pytest.approx(v)
    assert n["wall"]["lead"]["leader"] == "ppo" and n["wall"]["lead"]["resolved"]
    (pair,) = n["wall"]["poi"]
    assert (pair["x"], pair["y"], pair["p_x_better"]["point"], pair["resolved"]) == ("ppo", "rainbow", 1.0, True)

    # At equal frames: F_g is Rainbow's end (20 rows x 1000 steps x frameskip 4), PPO read at its row 10.
    for g in SCALE:
        assert n["per_game"][g]["frames"] == 80_000
        assert n["per_game"][g]["limited_by"].startswith("rainbow seed")
    expect_frames = {
        "ppo": iqm([normalize(g, SCALE[g] * (50 + k)) for g in SCALE for k in SEEDS]),
        "rainbow": expect_wall["rainbow"],  # read at its own last row: exactly its final score
    }
    for lab, v in expect_frames.items():
        assert n["frames"]["iqm"][lab]["point"] == pytest.approx(v)
    assert n["frames"]["lead"]["leader"] == "rainbow" and n["frames"]["lead"]["resolved"]
    assert n["frames"]["poi"][0]["p_x_better"]["point"] == 0.0
    assert n["per_game"]["puffer_breakout"]["raw_iqm_at_frames"]["ppo"] == pytest.approx(52.0)

    # What the budget bought: SPS and frames from the synthetic meter.
    assert n["compute"]["ppo"]["sps"] == pytest.approx(2000.0)
    assert n["compute"]["rainbow"]["sps"] == pytest.approx(1000 / 3)
    assert n["compute"]["ppo"]["frames"] == pytest.approx(480_000)
    assert n["compute"]["rainbow"]["frames"] == pytest.approx(80_000)

    a = res.answer
    assert "2 games (1 MinAtar: breakout; 1 Ocean: breakout)" in a and "1 minute of training per run" in a
    assert HARDWARE in a and "3 runs per agent and game" in a
    assert "on-policy PPO leads per second" in a and "off-policy Rainbow leads per sample" in a
    assert "P(PPO > Rainbow) = 1.00" in a and "resolved (95% CIs do not overlap)" in a
    assert "PPO ran 6.0x Rainbow's env steps per second" in a and "6.0x its env frames" in a
    assert res.change == "More seeds (now 3 runs per agent and game) would narrow the CIs; a longer budget or " \
        "other hardware (a GPU speeds the learners far more than the environments) changes how many samples " \
        "each family gets per second."  # fmt: skip
    assert sorted(p.name for p in res.figures) == ["equal-compute.pdf", "equal-compute.png"]
    assert all(p.stat().st_size > 0 for p in res.figures)


def test_equal_compute_numbers_are_deterministic_json(equal_compute_num, tmp_path):
    a = analyse("equal_compute", STUDY, equal_compute_num, tmp_path / "a", HARDWARE)
    b = analyse("equal_compute", {**STUDY, "change": "A GPU.\n  Or a longer budget."}, equal_compute_num,
                tmp_path / "b", HARDWARE)  # fmt: skip
    text = json.dumps(a.numbers, sort_keys=True, allow_nan=False)  # JSON-ready: no NaN, no NumPy types
    assert text == json.dumps(b.numbers, sort_keys=True, allow_nan=False)
    assert a.answer == b.answer
    assert b.change == "A GPU. Or a longer budget."  # the study file's `change`, on one line


def test_equal_compute_says_when_the_difference_is_not_resolved(tmp_path):
    # Two agents with overlapping scores: the text names the higher point estimate but not a winner.
    for seed in SEEDS:
        make_run(tmp_path, "ppo", "ppo", "puffer_breakout", seed, lambda i, k=seed: 100 + 10 * k, rows=60,
                 steps_per_row=1000)  # fmt: skip
        make_run(tmp_path, "rainbow", "rainbow", "puffer_breakout", seed, lambda i, k=seed: 95 + 10 * k, rows=20,
                 steps_per_row=1000)  # fmt: skip
    res = analyse("equal_compute", STUDY, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)
    assert res.numbers["wall"]["lead"]["leader"] == "ppo"
    assert not res.numbers["wall"]["lead"]["resolved"]
    assert "but the difference is not resolved (95% CIs overlap)" in res.answer


def test_score_at_frames_cuts_the_final_window_at_a_row(tmp_path):
    path = make_run(tmp_path, "ppo", "ppo", "puffer_breakout", 1, lambda i: float(i), rows=10, steps_per_row=100,
                    episodes_per_row=50)  # fmt: skip
    (run,), _ = load.load_runs([path])
    # 50 episodes per row, window 100: the last two rows at or before the frame count.
    assert score_at_frames(run, 4 * 100 * 6, 100) == pytest.approx((5 + 6) / 2)
    assert score_at_frames(run, 4 * 100 * 6 + 399, 100) == pytest.approx((5 + 6) / 2)
    assert score_at_frames(run, 4 * 100 * 10, 100) == pytest.approx((9 + 10) / 2)
    assert np.isnan(score_at_frames(run, 399, 100))  # before the first row: no episode yet


# reuse / horizon ---------------------------------------------------------------------------

PPO_REUSE = {1: 100.0, 2: 200.0, 4: 400.0, 8: 250.0}  # peaks at 4
RAINBOW_REUSE = {1: 300.0, 2: 200.0, 4: 100.0, 8: 50.0}  # falls with reuse


def test_reuse_finds_each_familys_optimum(tmp_path):
    for r in (1, 2, 4, 8):
        for seed in SEEDS:
            # More reuse, fewer env steps per second: 4000 / r steps per row.
            make_run(tmp_path, f"ppo-reuse{r}", "ppo", "puffer_breakout", seed,
                     lambda i, v=PPO_REUSE[r], k=seed: v + k, rows=60, steps_per_row=4000 // r, reuse=float(r),
                     agent_config={"num_envs": 8, "segment_length": 64, "epochs": r})  # fmt: skip
            make_run(tmp_path, f"rainbow-reuse{r}", "rainbow", "puffer_breakout", seed,
                     lambda i, v=RAINBOW_REUSE[r], k=seed: v + k, rows=20, steps_per_row=4000 // r, reuse=float(r),
                     agent_config={"num_envs": 8, "n_step": 3, "replay_ratio": float(r)})  # fmt: skip
    study = {"name": "sample-reuse", "kind": "reuse", "agents": ["ppo", "rainbow"], "games": ["puffer_breakout"],
             "reuse": [1, 2, 4, 8]}  # fmt: skip
    res = analyse("reuse", study, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)
    s = res.numbers["series"]
    assert sorted(s) == ["ppo", "rainbow"]
    ppo, rainbow = s["ppo"], s["rainbow"]
    assert [p["value"] for p in ppo["points"]] == [1.0, 2.0, 4.0, 8.0]
    assert [p["measured"] for p in ppo["points"]] == [1.0, 2.0, 4.0, 8.0]
    assert ppo["knob"] == "epochs" and rainbow["knob"] == "replay_ratio"
    assert ppo["best"]["value"] == 4.0 and ppo["best"]["label"] == "ppo-reuse4"
    assert ppo["best"]["iqm"]["point"] == pytest.approx(normalize("puffer_breakout", 402.0))  # mean of 3 runs = their IQM
    assert ppo["resolved_above_lowest"] and ppo["highest_resolved_below_best"]
    assert ppo["within_ci_of_best"] == [4.0]
    assert ppo["sps_highest_over_lowest"] == pytest.approx(500 / 4000)
    assert rainbow["best"]["value"] == 1.0 and not rainbow["resolved_above_lowest"]
    a = res.answer
    assert "PPO (epochs) peaks at reuse 4" in a and "more reuse pays for its compute up to 4" in a
    assert "reuse 8 is resolved below the optimum" in a
    assert "Rainbow (replay ratio) scores best at the lowest reuse, 1" in a and "more reuse does not pay" in a
    assert "with reuse 8 at 0.12x the SPS of reuse 1" in a
    assert tmp_path / "figs" / "sample-reuse.png" in res.figures


PPO_H = {8: 10.0, 16: 20.0, 32: 90.0, 64: 100.0, 128: 95.0}
RAINBOW_H = {1: 50.0, 3: 80.0, 5: 79.0, 10: 60.0, 20: 30.0}


def test_horizon_on_a_game_without_normaliser_uses_raw_scores_and_checks_the_claim(tmp_path):
    game = "puffer_tetris"  # Ocean game with a random mean but no maximum: no normaliser
    for seed in SEEDS:
        for h, v in PPO_H.items():
            make_run(tmp_path, f"ppo-h{h}", "ppo", game, seed, lambda i, v=v, k=seed: v + k, rows=60,
                     steps_per_row=1000, agent_config={"num_envs": 8, "segment_length": h, "epochs": 4})  # fmt: skip
        for h, v in RAINBOW_H.items():
            make_run(tmp_path, f"rainbow-h{h}", "rainbow", game, seed, lambda i, v=v, k=seed: v + k, rows=20,
                     steps_per_row=1000, agent_config={"num_envs": 8, "n_step": h, "replay_ratio": 8.0})  # fmt: skip
    study = {"name": "bootstrap-horizon", "kind": "horizon", "games": [game]}
    res = analyse("horizon", study, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)
    n = res.numbers
    assert n["score"] == "raw" and not n["scope"]["normalised"]
    ppo, rainbow = n["series"]["ppo"], n["series"]["rainbow"]
    assert ppo["best"]["value"] == 64 and ppo["best"]["iqm"]["point"] == pytest.approx(102.0)
    assert ppo["within_ci_of_best"] == [64.0]
    assert rainbow["best"]["value"] == 3 and rainbow["within_ci_of_best"] == [3.0, 5.0]
    assert ppo["claim"]["verdict"] == "consistent" and rainbow["claim"]["verdict"] == "consistent"
    a = res.answer
    assert "PPO's best segment length is 64 (102 [" in a and "and every other value is resolved below it" in a
    assert "Rainbow's best n-step is 3" in a and "n-step 3 and 5 are within its CI" in a
    assert "Scores are raw returns: puffer_tetris has no normaliser." in a
    assert "PPO: consistent (every segment below 32 is resolved below the best, 64)" in a
    assert "Rainbow: consistent (the best n-step is 3)" in a


def test_horizon_claim_is_inconsistent_when_short_segments_do_as_well(tmp_path):
    for seed in SEEDS:
        for h in (8, 64):
            make_run(tmp_path, f"ppo-h{h}", "ppo", "puffer_breakout", seed, lambda i, k=seed: 100 + 10 * k, rows=60,
                     steps_per_row=1000, agent_config={"num_envs": 8, "segment_length": h, "epochs": 4})  # fmt: skip
    res = analyse("horizon", {"name": "h"}, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)
    claim = res.numbers["series"]["ppo"]["claim"]
    assert claim["verdict"] == "inconsistent" and claim["why"].startswith("the best segment is 8")


def test_split_label():
    assert split_label("ppo-reuse4", "reuse") == ("ppo", 4.0)
    assert split_label("rainbow-reuse0.5", "reuse") == ("rainbow", 0.5)
    assert split_label("rainbow-h3", "horizon") == ("rainbow", 3.0)
    assert split_label("ppo-tuned-reuse2-h8", "reuse") == ("ppo-tuned-h8", 2.0)
    assert split_label("ppo-hand", "horizon") == ("ppo-hand", None)
    # per-agent grids of the knob itself (bench sweep's [grid.AGENT] labels)
    assert split_label("ppo-segment_length16", "horizon") == ("ppo", 16.0)
    assert split_label("btr-n_step10", "horizon") == ("btr", 10.0)
    assert split_label("pqn-epochs2", "reuse") == ("pqn", 2.0)
    assert split_label("rainbow-replay_ratio8", "reuse") == ("rainbow", 8.0)


# arms --------------------------------------------------------------------------------------


def test_arms_compare_score_and_throughput(tmp_path):
    for seed in SEEDS:
        make_run(tmp_path, "rainbow-cleanrl", "rainbow", "puffer_breakout", seed, lambda i, k=seed: 50 + k, rows=20,
                 steps_per_row=500, reuse=8.0)  # fmt: skip
        make_run(tmp_path, "rainbow-vectorised", "rainbow", "puffer_breakout", seed, lambda i, k=seed: 150 + k,
                 rows=20, steps_per_row=2000, reuse=4.0)  # fmt: skip
    study = {"name": "data-pipeline", "kind": "arms", "games": ["puffer_breakout"],
             "arms": {"rainbow-cleanrl": {"agent": "rainbow", "num_envs": 1},
                      "rainbow-vectorised": {"agent": "rainbow", "num_envs": 64}}}  # fmt: skip
    res = analyse("arms", study, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)
    n = res.numbers
    assert n["scope"]["labels"] == ["rainbow-cleanrl", "rainbow-vectorised"]
    assert n["iqm"]["rainbow-vectorised"]["point"] == pytest.approx(normalize("puffer_breakout", 152.0))
    assert n["lead"]["leader"] == "rainbow-vectorised" and n["lead"]["resolved"]
    (r,) = n["ratios"]
    assert (r["x"], r["y"]) == ("rainbow-cleanrl", "rainbow-vectorised")
    assert r["sps"] == pytest.approx(0.25) and r["frames"] == pytest.approx(0.25)
    assert r["grad_samples"] == pytest.approx(0.5)
    a = res.answer
    assert "rainbow-vectorised leads by" in a and "over rainbow-cleanrl" in a
    assert "4.0x rainbow-cleanrl's" in a and "2.0x its gradient samples" in a
    assert res.change == "Other hardware or a longer budget, which change the throughput ratio between the arms."
    assert tmp_path / "figs" / "data-pipeline.png" in res.figures


# ablation ----------------------------------------------------------------------------------

# All BTR arms log 1000 env steps per 2 s row; the full agent and most ablations run 30 rows
# (120k frames), btr-no-noisy only 15 (60k frames), so F_g = 60k frames = row 15 for every arm.
# Return at row i (+ seed k):                 at equal frames (row 15)  at the budget (last row)
#   btr (full)          10 i                  150                       300
#   btr-no-impala        5 i                   75  drop  75             150  drop 150
#   btr-no-munchausen  140                    140  drop  10             140  drop 160
#   btr-no-noisy        10 i + 10             160  drop -10  (row 15)   160  drop 140
#   rainbow              5 i (20 rows x 3 s)   75  drop  75             100  drop 200
ABLATION = {  # label: (agent, returns(i), rows)
    "btr": ("btr", lambda i: 10 * i, 30),
    "btr-no-impala": ("btr", lambda i: 5 * i, 30),
    "btr-no-munchausen": ("btr", lambda i: 140, 30),
    "btr-no-noisy": ("btr", lambda i: 10 * i + 10, 15),
    "rainbow": ("rainbow", lambda i: 5 * i, 20),
}
DROPS = {"btr-no-impala": (75, 150), "btr-no-munchausen": (10, 160), "btr-no-noisy": (-10, 140), "rainbow": (75, 200)}


@pytest.fixture(scope="module")
def ablation_num(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    for label, (agent, f, rows) in ABLATION.items():
        for seed in SEEDS:
            make_run(root, label, agent, "puffer_breakout", seed, lambda i, f=f, k=seed: f(i) + k, rows=rows,
                     steps_per_row=1000)  # fmt: skip
    return numbers_of(root)


ABLATION_STUDY = {"name": "btr-ablations", "title": "BTR ablations", "kind": "ablation", "games": ["puffer_breakout"],
                  "arms": {lab: {"agent": a, **({"impala": False} if lab == "btr-no-impala" else {})}
                           for lab, (a, _, _) in ABLATION.items()}}  # fmt: skip


def test_ablation_ranks_the_drops_at_equal_frames_and_at_equal_wall_clock(ablation_num, tmp_path):
    res = analyse("ablation", ABLATION_STUDY, ablation_num, tmp_path / "figs", HARDWARE)
    n = res.numbers
    g = "puffer_breakout"
    assert n["reference"]["label"] == "btr" and n["frames"]["per_game"][g] == 60_000
    assert n["reference"]["iqm_wall"]["point"] == pytest.approx(normalize(g, 302.0))
    assert n["reference"]["iqm_frames"]["point"] == pytest.approx(normalize(g, 152.0))
    for lab, (d_frames, d_wall) in DROPS.items():
        a = n["arms"][lab]
        # The same seed offsets in every arm: the IQM difference is the return difference, normalised.
        assert a["drop_frames"]["point"] == pytest.approx(normalize(g, 200.0 + d_frames) - normalize(g, 200.0))
        assert a["drop_wall"]["point"] == pytest.approx(normalize(g, 200.0 + d_wall) - normalize(g, 200.0))
        assert a["drop_wall"]["lo"] <= a["drop_wall"]["point"] <= a["drop_wall"]["hi"]
        assert a["resolved_wall"] and a["resolved_frames"]
    assert n["arms"]["btr-no-impala"]["options"] == {"impala": False}
    assert n["arms"]["rainbow"]["role"] == "comparison" and n["arms"]["rainbow"]["rank_wall"] is None
    rk = n["ranking"]
    assert rk["frames"] == ["btr-no-impala", "btr-no-munchausen", "btr-no-noisy"]
    assert rk["wall"] == ["btr-no-munchausen", "btr-no-impala", "btr-no-noisy"]
    assert rk["ranking_differs"] and rk["top_differs"]
    assert n["arms"]["btr-no-munchausen"]["rank_wall"] == 1 and n["arms"]["btr-no-munchausen"]["rank_frames"] == 2
    assert n["claim"]["verdict"] == "consistent"
    assert n["compute"]["btr-no-noisy"]["frames"] == pytest.approx(60_000)
    a = res.answer
    assert "The ranking differs between the two readings" in a and "the largest contributor differs too" in a
    assert "Impala CNN and Munchausen are the largest contributors: consistent at equal frames" in a
    assert "For comparison, the drop from full btr to rainbow (rainbow)" in a
    assert res.change == "A GPU or longer budgets, which change what each component costs in wall clock and how " \
        "long training runs for the components that stabilise it to matter."  # fmt: skip
    assert sorted(p.name for p in res.figures) == ["btr-ablations.pdf", "btr-ablations.png"]


def test_ablation_without_the_claimed_arms_says_not_tested(ablation_num, tmp_path):
    study = {**ABLATION_STUDY, "arms": {k: v for k, v in ABLATION_STUDY["arms"].items() if k != "btr-no-impala"}}
    runs = [r for r in ablation_num.runs if r.label != "btr-no-impala"]
    root = tmp_path / "runs"
    for r in runs:  # the same runs without one arm
        dst = root / r.label / r.game / f"seed{r.seed}"
        dst.mkdir(parents=True)
        for f in r.path.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    res = analyse("ablation", study, numbers_of(root), tmp_path / "figs", HARDWARE)
    assert res.numbers["claim"]["verdict"] == "not tested"
    assert "largest contributors is not tested here (no arm btr-no-impala)" in res.answer
    assert not res.numbers["ranking"]["ranking_differs"]  # munchausen above noisy at both readings


# variants ----------------------------------------------------------------------------------

# clip_frac at learner row w (wall_s = w, 60 rows, 60 s of training): (w + k) / 100 for ppo,
# twice that for ppo-noclip; the second half is w = 31..60, mean (45.5 + k) / 100 per run.
# kl is logged by ppo-noclip only, approx_kl by nobody.
VARIANTS_STUDY = {"name": "ppo-trust-region", "kind": "variants", "games": ["puffer_breakout"],
                  "diagnostics": ["clip_frac", "kl", "approx_kl"],
                  "arms": {"ppo": {"agent": "ppo"}, "ppo-noclip": {"agent": "ppo", "clip_coef": 0.0}}}  # fmt: skip


@pytest.fixture(scope="module")
def variants_num(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    for seed in SEEDS:
        path = make_run(root, "ppo", "ppo", "puffer_breakout", seed, lambda i, k=seed: 100 + k, rows=60,
                        steps_per_row=1000)  # fmt: skip
        write_learner(path, {"clip_frac": lambda w, k=seed: (w + k) / 100}, 60, gz=seed == 1)
        path = make_run(root, "ppo-noclip", "ppo", "puffer_breakout", seed, lambda i, k=seed: 150 + k, rows=60,
                        steps_per_row=1000)  # fmt: skip
        write_learner(path, {"clip_frac": lambda w, k=seed: 2 * (w + k) / 100, "kl": lambda w: 0.01 * w}, 60)
    return numbers_of(root)


def test_second_half_mean():
    wall = np.arange(1.0, 11.0)
    assert second_half_mean(wall, wall, 10.0) == pytest.approx(8.0)  # rows 6..10
    assert second_half_mean(wall, wall, float("nan")) == pytest.approx(8.0)  # the last row's wall_s
    y = wall.copy()
    y[-1] = np.nan
    assert second_half_mean(wall, y, 10.0) == pytest.approx(7.5)  # empty fields are skipped


def test_variants_summarise_the_diagnostics_as_second_half_means(variants_num, tmp_path):
    res = analyse("variants", VARIANTS_STUDY, variants_num, tmp_path / "figs", HARDWARE)
    n = res.numbers
    g = "puffer_breakout"
    assert n["baseline"] == "ppo" and n["scope"]["labels"] == ["ppo", "ppo-noclip"]
    v = n["vs_baseline"]["ppo-noclip"]
    assert v["diff"]["point"] == pytest.approx(normalize(g, 152.0) - normalize(g, 102.0))
    assert v["better"] and v["resolved"] and v["poi"]["point"] == 1.0
    clip = n["diagnostics"]["clip_frac"]["arms"]
    assert clip["ppo"]["status"] == "ok" and clip["ppo"]["runs"] == 3  # seed 1 read from learner.csv.gz
    assert sorted(clip["ppo"]["per_run"][g]) == pytest.approx([(45.5 + k) / 100 for k in SEEDS])
    assert clip["ppo"]["iqm"]["point"] == pytest.approx(0.475)
    assert clip["ppo-noclip"]["iqm"]["point"] == pytest.approx(0.95)
    assert clip["ppo-noclip"]["per_game"][g]["point"] == pytest.approx(0.95)
    assert clip["ppo-noclip"]["vs_baseline"]["point"] == pytest.approx(0.475) and clip["ppo-noclip"]["resolved"]
    kl = n["diagnostics"]["kl"]
    assert kl["status"] == "ok" and kl["arms"]["ppo"] == {"status": "not logged", "runs": 0, "runs_missing": 3}
    assert kl["arms"]["ppo-noclip"]["iqm"]["point"] == pytest.approx(0.455)
    assert n["diagnostics"]["approx_kl"]["status"] == "not logged"
    a = res.answer
    assert "ppo-noclip beats the baseline, resolved" in a
    assert "clip_frac: ppo 0.47 [" in a and "(above ppo, resolved)" in a
    assert "kl: ppo not logged, ppo-noclip 0.46" in a and "approx_kl: not logged" in a
    assert sorted(p.name for p in res.figures) == ["ppo-trust-region.pdf", "ppo-trust-region.png"]


def test_variants_numbers_are_deterministic_json(variants_num, tmp_path):
    a = analyse("variants", VARIANTS_STUDY, variants_num, tmp_path / "a", HARDWARE)
    b = analyse("variants", VARIANTS_STUDY, variants_num, tmp_path / "b", HARDWARE)
    text = json.dumps(a.numbers, sort_keys=True, allow_nan=False)
    assert text == json.dumps(b.numbers, sort_keys=True, allow_nan=False) and a.answer == b.answer


# Refusals ----------------------------------------------------------------------------------


def test_unknown_kind_and_unpoolable_raw_games_are_one_line_errors(tmp_path, equal_compute_num):
    with pytest.raises(UserError, match="unknown kind 'speed'"):
        analyse("speed", STUDY, equal_compute_num, tmp_path, HARDWARE)
    for game in ("puffer_tetris", "puffer_snake"):
        make_run(tmp_path, "ppo", "ppo", game, 1, lambda i: 1.0, rows=10, steps_per_row=100)
    with pytest.raises(UserError, match="raw returns of different games do not pool"):
        analyse("equal_compute", STUDY, numbers_of(tmp_path), tmp_path / "figs", HARDWARE)


def test_a_tie_made_of_clean_wins_each_way_is_split_by_game_and_unscored_games_are_named(tmp_path):
    # PPO beats every Rainbow run on Ocean breakout, Rainbow beats every PPO run on MinAtar
    # breakout, by mirror-image margins: the aggregate is a tie with P = 0.50 and a zero-width CI,
    # and the answer must say it is two clean wins, not noise. Rainbow finishes no episode on
    # MinAtar asterix, so that game leaves the aggregates and the answer says why.
    def ret(game: str, norm: float) -> float:  # the return whose min-max normalised score is `norm`
        n = normalizer(game, game.split(":")[0] if ":" in game else "puffer")
        return n.lo + norm * (n.hi - n.lo)

    for seed in SEEDS:
        for agent, ocean, minatar in (("ppo", 0.4, 0.1), ("rainbow", 0.1, 0.4)):
            for g, v in (("puffer_breakout", ocean), ("minatar:breakout", minatar)):
                make_run(tmp_path, agent, agent, g, seed, lambda i, g=g, v=v, k=seed: ret(g, v + 0.001 * k), rows=20,
                         steps_per_row=1000)  # fmt: skip
        make_run(tmp_path, "ppo", "ppo", "minatar:asterix", seed, lambda i: 5.0, rows=20, steps_per_row=1000)
        make_run(tmp_path, "rainbow", "rainbow", "minatar:asterix", seed, lambda i: float("nan"), rows=20,
                 steps_per_row=1000, episodes_per_row=0)  # fmt: skip
    num = numbers_of(tmp_path)
    assert num.agg_games == ["minatar:breakout", "puffer_breakout"]
    res = analyse("equal_compute", STUDY, num, tmp_path / "figs", HARDWARE)
    assert not res.numbers["wall"]["lead"]["resolved"]
    poi = res.numbers["wall"]["poi"][0]["p_x_better"]
    assert (poi["point"], poi["lo"], poi["hi"]) == (0.5, 0.5, 0.5)
    assert "PPO and Rainbow are level per second (IQM difference 0.000" in res.answer
    assert ("every PPO run beats every Rainbow run on puffer_breakout; every Rainbow run beats every PPO run on "
            "minatar:breakout.") in res.answer  # fmt: skip
    assert "minatar:asterix has no score for Rainbow (3 runs, none with a finished episode)" in res.answer
