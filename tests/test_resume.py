"""The resume boundary (agents.api, ``first`` in training): after a resume the envs restart
mid-episode, and no advantage, value target or n-step window may reach across the break.

Replay and PPO's LSTM by hand, then PPO, Rainbow and BTR through the real harness: interrupted in the middle of a
rollout (a KeyboardInterrupt from ``on_row`` makes the harness checkpoint and stop), resumed, and
their stored data checked against the checkpoint taken at the interruption."""

from __future__ import annotations

import shutil

import pytest
import torch

import envs
from agents import ppo
from agents.api import AgentContext
from agents.replay import Replay
from bench.config import RunConfig
from bench.harness import resolve, train
from envs.base import EnvSpec, EnvStep


def _store(rb: Replay, obs: list[float], reward: list[float], term=(), trunc=(), final=None) -> None:
    n = len(obs)
    t, tr = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    t[list(term)], tr[list(trunc)] = True, True
    rb.store_obs(torch.tensor(obs).view(n, 1))
    rb.store_outcome(torch.zeros(n, dtype=torch.int64), torch.tensor(reward), t, tr,
                     None if final is None else torch.tensor(final).view(n, 1))  # fmt: skip


def test_replay_cut_drops_the_last_step_and_truncates_the_one_before():
    g = 0.5
    rb = Replay(40, 2, (1,), torch.float32, n_step=3, gamma=g)
    # Two envs, obs = 10 * row + env, reward = row + 1. Env 1 terminates at row 2.
    for row in range(4):
        _store(rb, [10.0 * row, 10.0 * row + 1], [row + 1.0, row + 1.0], term=(1,) if row == 2 else ())
    rb.cut()  # a resume: the envs restart; the observation after row 3 is lost
    for row in range(4):  # the new episodes: obs 100 + ...
        _store(rb, [100.0 + row, 200.0 + row], [50.0, 50.0])
    assert rb.steps == 7  # row 3 was dropped and rewritten
    assert rb.obs[3].flatten().tolist() == [100.0, 200.0]
    assert rb.truncated[2].tolist() == [True, False]  # env 1 had ended there already: left alone
    b = rb.gather(torch.tensor([0, 2, 4, 1, 3]))  # slots row * 2 + env
    # Env 0, row 0: rows 0, 1, 2 then the cut: r = 1 + g 2 + g^2 3, bootstrap g^3 from obs 30.
    assert b.reward[0].item() == pytest.approx(1 + g * 2 + g**2 * 3)
    assert b.discount[0].item() == pytest.approx(g**3) and b.next_obs[0].item() == 30.0
    # Row 1: stops at the cut after 2 steps; row 2: one step; both bootstrap from obs 30.
    assert b.reward[1].item() == pytest.approx(2 + g * 3) and b.discount[1].item() == pytest.approx(g**2)
    assert b.reward[2].item() == pytest.approx(3) and b.discount[2].item() == pytest.approx(g)
    assert b.next_obs[1].item() == 30.0 and b.next_obs[2].item() == 30.0
    # Env 1 terminated at row 2: no bootstrap, the cut changes nothing.
    assert b.reward[3].item() == pytest.approx(1 + g * 2 + g**2 * 3) and b.discount[3].item() == 0.0
    assert b.discount[4].item() == 0.0
    # The new episode's windows start at row 3 and never look back.
    b = rb.gather(torch.tensor([6, 7]))
    assert b.reward.tolist() == pytest.approx([50 * (1 + g + g**2)] * 2)
    assert b.next_obs.flatten().tolist() == [103.0, 203.0]


def test_replay_cut_at_the_start_is_a_no_op_and_one_step_is_just_dropped():
    rb = Replay(40, 1, (1,), torch.float32, n_step=3)
    rb.cut()
    assert rb.steps == 0
    _store(rb, [7.0], [1.0])
    rb.cut()
    assert rb.steps == 0 and not rb.truncated.any()


def test_ppo_cut_restarts_the_lstm_state_and_refuses_a_partial_mask():
    torch.manual_seed(0)
    spec = EnvSpec("fake", "gym", (3,), torch.float32, 2, 1)
    cfg = ppo.Config(num_envs=2, segment_length=4, minibatches=2, encoder="mlp", hidden=8, lstm_hidden=4)
    agent = ppo.Agent(cfg, AgentContext(spec, 2, torch.device("cpu"), None))
    no = torch.zeros(2, dtype=torch.bool)
    for _ in range(2):
        obs = torch.randn(2, 3)
        agent.act(obs)
        agent.observe(EnvStep(obs, torch.ones(2), no, no, no, obs))
    assert agent.state[0].abs().sum() > 0
    obs = torch.randn(2, 3)
    agent.act(obs, first=torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        fresh = agent.net.step(obs, (torch.zeros(2, 4), torch.zeros(2, 4)))[2]
    torch.testing.assert_close(agent.state, fresh)  # as if the episode had just begun
    assert agent.t == 1 and agent.dones[0].all() and agent.truncated[0].all()  # unroll restarts at t = 1
    with pytest.raises(ValueError, match="all True"):
        agent.act(obs, first=torch.tensor([True, False]))


def _interrupt_at_first_row(row: dict) -> None:
    raise KeyboardInterrupt


def _run(tmp_run, agent: str, steps: int, log_every: int, over: dict, interrupt: bool) -> None:
    run = RunConfig(agent=agent, game="gym:Scripted-v0", seed=0, steps=steps, log_every=log_every,
                    device="cpu", threads=1, checkpoint_every_s=3600.0)  # fmt: skip
    train(run, over, out=tmp_run, on_row=_interrupt_at_first_row if interrupt else None)


def _interrupted_then_resumed(tmp_path, agent: str, steps: int, log_every: int, over: dict):
    """(agent state at the interruption, agent state at the end of the resumed run)."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(out, agent, steps, log_every, over, interrupt=True)
    shutil.copy(out / "checkpoint.pt", tmp_path / "mid.pt")
    _run(out, agent, steps, log_every, over, interrupt=False)
    assert (out / "done").exists()
    return _agent_state(tmp_path / "mid.pt"), _agent_state(out / "checkpoint.pt")


def _agent_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["agent"]


def test_ppo_resume_mid_rollout_does_not_bootstrap_across(tmp_path):
    # Scripted env: obs [t, episode], episodes of 3, 4, 5, ... steps. 2 envs, segments of 8 steps.
    # Interrupted after 3 vector steps (stored t = 0, 1, 2), resumed, the segment completed (the
    # budget of 18 = 3 + 6 vector steps; the resumed run's first step rewrites t = 2).
    over = {"num_envs": 2, "segment_length": 8, "epochs": 1, "minibatches": 1, "encoder": "mlp", "hidden": 8,
            "gamma": 0.9, "gae_lambda": 0.8, "reward_clip": 0.0}  # fmt: skip
    mid, end = _interrupted_then_resumed(tmp_path, "ppo", steps=18, log_every=6, over=over)
    assert mid["counters"]["t"] == 3 and end["counters"]["env_steps"] == 18
    m, e = mid["storage"], end["storage"]
    assert m["obs"][2].tolist() == [[2.0, 0.0]] * 2  # the last stored step, whose successor is lost
    assert e["obs"][2].tolist() == [[0.0, 0.0]] * 2  # rewritten by the restarted envs' first obs
    assert torch.equal(e["obs"][:2], m["obs"][:2]) and torch.equal(e["values"][:2], m["values"][:2])
    # Step 1 ended the stream: truncated, bootstrapped from V of the observation it led to (the
    # value stored when acting on it, before the interruption); the LSTM would restart at t = 2.
    assert e["truncated"][1].all() and e["dones"][1].all() and not e["terminated"][1].any()
    assert torch.equal(e["trunc_values"][1], m["values"][2])

    # The targets of the resumed rollout, by hand at steps 0 and 1.
    _, cfg = resolve(RunConfig(agent="ppo", game="gym:Scripted-v0"), over)  # with the gym preset, as run
    env = envs.make("gym:Scripted-v0", 2, torch.device("cpu"))
    agent = ppo.Agent(cfg, AgentContext(env.spec, 2, torch.device("cpu"), 18))
    env.close()
    agent.load_state_dict(end)
    agent.filled = 1
    tg = agent._targets(fresh=0)
    r, v, g, lam = e["rewards"], e["values"], 0.9, 0.8
    adv1 = r[1] + g * m["values"][2] - v[1]  # no credit from the new episode
    torch.testing.assert_close(tg["adv"][1], adv1)
    torch.testing.assert_close(tg["adv"][0], r[0] + g * v[1] - v[0] + g * lam * adv1)
    torch.testing.assert_close(tg["returns"][1], r[1] + g * m["values"][2])


@pytest.mark.parametrize("name", ["rainbow", "btr"])
def test_replay_agents_resume_cuts_the_n_step_windows(tmp_path, name):
    # Rows 0-2: episode 0 (3 steps, terminated at row 2); rows 3-5 act on episode 1's obs
    # [0, 1], [1, 1], [2, 1] (rewards 1, 2, 3). Interrupted after 6 vector steps, resumed: row 5
    # (whose next observation was lost) is rewritten by the new episode, and row 4 becomes a
    # truncation bootstrapped from the observation it led to, [2, 1]. No learning (starts at 64).
    over = {"num_envs": 2, "batch_size": 8, "learning_starts": 64, "buffer_size": 64, "hidden": 8,
            "head_hidden": 8, "n_step": 3, "gamma": 0.5, "reward_clip": 0.0, "reward_scale": 1.0}  # fmt: skip
    mid, end = _interrupted_then_resumed(tmp_path, name, steps=24, log_every=12, over=over)
    assert mid["replay"]["steps"] == 6 and end["replay"]["steps"] == 11  # 6 - 1 dropped + 6
    assert mid["replay"]["obs"][5].tolist() == [[2.0, 1.0]] * 2
    assert end["replay"]["obs"][5].tolist() == [[0.0, 0.0]] * 2  # the restarted envs' first obs

    env = envs.make("gym:Scripted-v0", 2, torch.device("cpu"))
    mod, cfg = resolve(RunConfig(agent=name, game="gym:Scripted-v0"), over)
    agent = mod.Agent(cfg, AgentContext(env.spec, 2, torch.device("cpu"), 24))
    env.close()
    agent.load_state_dict(end)
    rb = agent.replay
    assert rb.truncated[4].all() and not rb.truncated[3].any()
    b = rb.gather(torch.tensor([3 * 2, 3 * 2 + 1, 4 * 2]))  # row 3 (both envs), row 4 (env 0)
    # Row 3: rewards 1 and 2, then the cut: bootstrap from [2, 1], the observation row 4's step
    # led to, never from the new episode in row 5 (which would have given 1 + 0.5 * 2 + 0.25 * 1).
    assert b.reward[:2].tolist() == pytest.approx([1 + 0.5 * 2] * 2)
    assert b.discount[:2].tolist() == pytest.approx([0.25] * 2)
    assert b.next_obs[:2].tolist() == [[2.0, 1.0]] * 2
    assert b.reward[2].item() == pytest.approx(2) and b.discount[2].item() == pytest.approx(0.5)
    assert (rb.tree.leaves.view(-1, 2)[3:5] > 0).all()  # both still drawn
