"""The environment adapters: spaces, dtypes, episode semantics, seeding, frames, protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from bench.harness import EpisodeTracker


@pytest.mark.parametrize(
    "game, shape, dtype, actions, frameskip",
    [
        ("puffer_breakout", (118,), torch.float32, 3, 4),
        ("gym:CartPole-v1", (4,), torch.float32, 2, 1),
        ("breakout", (4, 84, 84), torch.uint8, 4, 4),
        ("minatar:breakout", (4, 10, 10), torch.bool, 6, 1),
    ],
)
def test_spaces_and_dtypes(game, shape, dtype, actions, frameskip):
    env = envs.make(game, 3)
    assert env.spec.obs_shape == shape and env.spec.obs_dtype == dtype
    assert env.spec.num_actions == actions and env.spec.frameskip == frameskip
    obs = env.reset(0)
    assert obs.shape == (3, *shape) and obs.dtype == dtype
    step = env.step(torch.zeros(3, dtype=torch.int64))
    assert step.obs.shape == (3, *shape) and step.final_obs.shape == (3, *shape)
    assert step.reward.shape == (3,) and step.reward.dtype == torch.float32
    for mask in (step.terminated, step.truncated, step.done):
        assert mask.shape == (3,) and mask.dtype == torch.bool
    env.close()


def test_termination_final_obs_and_reset():
    env = envs.make("gym:Scripted-v0", 1)
    obs = env.reset(0)
    assert obs[0].tolist() == [0, 0]
    for _ in range(3):  # episode 0 lasts 3 steps
        step = env.step(torch.zeros(1, dtype=torch.int64))
    assert step.terminated.item() and step.done.item() and not step.truncated.item()
    assert step.final_obs[0].tolist() == [3, 0]  # the true last observation of episode 0
    assert step.obs[0].tolist() == [0, 1]  # already the first observation of episode 1
    assert step.reward.item() == 3.0


def test_truncation_is_not_termination():
    env = envs.make("gym:ScriptedTL-v0", 1)
    env.reset(0)
    for _ in range(3):  # episode 0: length 3, terminates before the limit
        step = env.step(torch.zeros(1, dtype=torch.int64))
    assert step.terminated.item() and not step.truncated.item()
    for _ in range(4):  # episode 1: length 4 == limit; gymnasium reports termination first
        step = env.step(torch.zeros(1, dtype=torch.int64))
    for _ in range(4):  # episode 2: length 5 > limit 4: truncated at 4, not terminated
        step = env.step(torch.zeros(1, dtype=torch.int64))
    assert step.truncated.item() and not step.terminated.item() and step.done.item()
    assert step.final_obs[0].tolist() == [4, 2] and step.obs[0].tolist() == [0, 3]


def test_episode_accounting_known_returns():
    # Three envs with different episode lengths; every finished return must be L(L+1)/2.
    env = envs.make("gym:Scripted-v0", 3)
    tracker = EpisodeTracker(3)
    env.reset(0)
    finished = 0
    for _ in range(40):
        step = env.step(torch.zeros(3, dtype=torch.int64))
        finished += tracker.update(step.reward, step.done)
    rets = np.concatenate(tracker._returns)
    lens = np.concatenate(tracker._lengths)
    assert finished == len(rets) > 0
    np.testing.assert_array_equal(rets, lens * (lens + 1) / 2)
    # All three envs start with offset 0: lengths cycle 3,4,5,6 → 40 steps hold 2 full cycles
    # (36 steps) + one 3-step episode per env = 9 episodes each.
    assert finished == 27
    mean_ret, mean_len = tracker.drain()
    assert mean_ret == pytest.approx(rets.mean()) and tracker.drain() == (None, None)


@pytest.mark.parametrize("game", ["puffer_breakout", "gym:CartPole-v1", "breakout", "minatar:breakout"])
def test_same_seed_same_observations(game):
    def rollout(seed):
        env = envs.make(game, 2)
        obs = [env.reset(seed).clone()]
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            obs.append(env.step(torch.randint(env.spec.num_actions, (2,), generator=g)).obs.clone())
        env.close()
        return torch.stack(obs)

    a, b = rollout(7), rollout(7)
    assert torch.equal(a, b)


def test_unknown_game_names_closest():
    with pytest.raises(envs.UnknownGame, match="puffer_breakout"):
        envs.make("puffer_brakout", 1)
    with pytest.raises(envs.UnknownGame, match="did you mean breakout"):
        envs.make("breakot", 1)
    with pytest.raises(envs.UnknownGame, match="did you mean minatar:space_invaders"):
        envs.make("minatar:space_invader", 1)


def test_ale_protocols_recorded_and_life_loss():
    machado = envs.make("breakout", 2)
    p = machado.spec.protocol
    assert p["name"] == "machado" and p["sticky_actions"] == 0.25 and p["life_loss"] == "none"
    assert p["constructor"]["reward_clipping"] is False and p["episode_cap"] == "108000 frames"
    machado.close()
    dqn = envs.make("breakout", 4, protocol="dqn")
    assert dqn.spec.protocol["sticky_actions"] == 0.0 and dqn.spec.protocol["fire_on_reset"] is True
    dqn.reset(3)
    g = torch.Generator().manual_seed(0)
    saw_life_loss = False
    for _ in range(400):
        s = dqn.step(torch.randint(4, (4,), generator=g))
        if bool((s.terminated & ~s.done).any()):
            saw_life_loss = True  # life lost: no bootstrap for the learner, but the game goes on
            break
    dqn.close()
    assert saw_life_loss


def test_puffer_protocol_card():
    env = envs.make("puffer_breakout", 2)
    p = env.spec.protocol
    assert p["frameskip"] == 4 and "final_obs" in p and p["constructor"]["frameskip"] == 4
    env.close()


# Ocean games: each single-agent discrete game of the build is accepted (and runs PPO end to end)
# or refused with a reason; the refusals that can be observed from outside are checked here, so a
# PufferLib build that fixes them fails this test and the game can be accepted.
OCEAN_ACCEPTED = ["puffer_breakout", "puffer_pong", "puffer_pacman", "puffer_freeway", "puffer_tetris",
                  "puffer_squared", "puffer_connect4"]  # fmt: skip


def test_every_ocean_game_is_accepted_or_refused_with_a_reason():
    from envs import puffer

    names = set(envs.known_games("puffer"))
    assert set(OCEAN_ACCEPTED) <= names
    unclassified = sorted(names - set(OCEAN_ACCEPTED) - set(puffer.REFUSED))
    assert not unclassified, f"Ocean games neither tested nor refused: {unclassified}"
    for g in names & set(puffer.REFUSED):
        with pytest.raises(envs.UnknownGame, match=f"{g} is refused: "):
            envs.check_game(g)


def _random_dones(game, num_envs, steps, seed=0):
    from envs.puffer import PufferEnv

    env = PufferEnv(game, num_envs, allow_refused=True)
    env.reset(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append(env.step(torch.randint(0, env.spec.num_actions, (num_envs,), generator=gen)).done.clone())
    env.close()
    return torch.stack(out)  # [steps, N]


@pytest.mark.parametrize("game, steps", [("puffer_enduro", 15_000), ("puffer_go", 3_000), ("puffer_tower_climb", 3_000)])
def test_refused_ocean_games_never_end_an_episode(game, steps):
    # enduro: a day is ~13,920 steps; go and tower_climb hit their 147 / 60-step limits many times over
    assert not _random_dones(game, 2, steps).any()


def test_refused_blastar_terminal_flag_sticks():
    d = _random_dones("puffer_blastar", 2, 20_000)
    first = int(torch.nonzero(d[:, 0]).min())
    assert d[first:, 0].all()  # once game over, every later step reads as an episode end


@pytest.mark.parametrize("game", OCEAN_ACCEPTED)
def test_accepted_ocean_games_run_ppo_end_to_end(game, tmp_path):
    from bench.cli import main as cli

    out = tmp_path / "r"
    assert cli(["run", "--agent", "ppo", "--game", game, "--steps", "12k", "--seed", "1", "--out", str(out),
                "--num-envs", "4", "--minibatches", "2", "--segment-length", "256", "--log-every", "1"]) == 0  # fmt: skip
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[-1]["env_steps"]) >= 12_000
    assert float(rows[-1]["grad_samples"]) > 0
    assert float(rows[-1]["episodes"]) > 0  # full games finished and were counted
    assert any(r["episode_return"] not in ("", "nan") for r in rows)
