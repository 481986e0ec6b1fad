"""Named suites: membership, normalisation references, --suite on compare / sweep / report, and the
suite aggregate of a report (end to end on MinAtar with the random agent)."""

from __future__ import annotations

import json
import math

import pytest

import envs
from bench.cli import main as cli
from envs import suites
from plots.normalize import normalizer


@pytest.mark.parametrize("name", suites.names())
def test_every_suite_game_exists_and_has_a_sourced_normaliser(name):
    s = suites.get(name)
    assert s.games and len(set(s.games)) == len(s.games)
    for g in s.games:
        n = normalizer(g, envs.family_of(g))
        assert n is not None, f"{name}: {g} has no normaliser"
        assert n.hi > n.lo and n.source.strip()
        assert n(n.lo) == 0.0 and n(n.hi) == 1.0
    if name in ("minatar", "ocean"):  # ships with the package: every member must be playable here
        for g in s.games:
            envs.check_game(g)


def test_suite_contents():
    assert suites.get("minatar").games == tuple(f"minatar:{g}" for g in
                                                ("asterix", "breakout", "freeway", "seaquest", "space_invaders"))  # fmt: skip
    assert set(suites.get("atari5").games) == {"battle_zone", "double_dunk", "name_this_game", "phoenix", "qbert"}
    assert len(suites.get("atari57").games) == 57
    assert set(suites.get("atari5").games) <= set(suites.get("atari57").games)
    assert all(g.startswith("puffer_") for g in suites.get("ocean").games)
    assert suites.suite_of(list(suites.get("minatar").games)) == "minatar"


def test_unknown_suite_names_close_ones():
    with pytest.raises(suites.UnknownSuite, match="did you mean minatar"):
        suites.get("minatr")


@pytest.mark.parametrize("argv, msg", [
    (["compare", "--agents", "random", "--suite", "nope"], "unknown suite 'nope'"),
    (["compare", "--agents", "random", "--suite", "minatar", "--game", "puffer_breakout"], "not both"),
    (["compare", "--agents", "random"], "give --game GAME"),
    (["compare", "--agents", "random", "--game", "minatar:brekout"], "did you mean minatar:breakout"),
    (["compare", "--agents", "random", "--game", "puffer_breakout", "gym:CartPole-v1"], "--steps and/or --time"),
    (["report", "x", "--suite", "nope"], "unknown suite 'nope'"),
])  # fmt: skip
def test_bad_suite_input_is_one_line_exit_2(argv, msg, tmp_path, capsys):
    assert cli([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_sweep_suite_key(tmp_path, capsys):
    from bench.sweep import load_sweep, run_count

    f = tmp_path / "s.toml"
    f.write_text('agents = ["random"]\nsuite = "minatar"\nseeds = 2\nsteps = "1k"\n')
    cfg = load_sweep(str(f))
    assert cfg["games"] == list(suites.get("minatar").games) and run_count(cfg) == 10
    f.write_text('agents = ["random"]\nsuite = "minatar"\ngames = ["puffer_breakout"]\nsteps = "1k"\n')
    assert cli(["sweep", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    f.write_text('agents = ["random"]\nsuite = "nope"\nsteps = "1k"\n')
    assert cli(["sweep", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_compare_over_a_suite_reports_the_suite_aggregate(tmp_path):
    """Random agent on the 5 MinAtar games, 2 seeds: the report aggregates over exactly the suite's
    games with CIs, and a random policy's normalised IQM sits near 0 (the suites' lo is random)."""
    out = tmp_path / "c"
    code = cli(["compare", "--agents", "random", "--suite", "minatar", "--seeds", "2", "--steps", "6000",
                "--agent-option", "random.num_envs=1", "--out", str(out), "--reps", "200", "--workers", "1"])
    assert code == 0
    doc = json.loads((out / "report" / "summary.json").read_text())
    assert doc["suite"] == "minatar"
    assert doc["aggregate_games"] == sorted(suites.get("minatar").games)
    agg = doc["aggregates"]["random"]
    for k in ("iqm", "median", "mean", "optimality_gap"):
        assert math.isfinite(agg[k]["lo"]) and agg[k]["lo"] <= agg[k]["point"] <= agg[k]["hi"]
    assert abs(agg["mean"]["point"]) < 0.25 and agg["optimality_gap"]["point"] > 0.75
    assert set(doc["normalization"]) == set(suites.get("minatar").games)
    md = (out / "report" / "summary.md").read_text()
    assert "Aggregate over suite minatar: 5 games" in md
    assert (out / "report" / "figures" / "aggregate_intervals.png").exists()
