"""Schedules over the run's budget (agents.api ``AgentContext.budget_used``): the harness gives
the fraction of whichever budget ends first, steps or time; PPO's lr and prioritised-segment beta
and Rainbow's / BTR's importance-sampling beta follow it, epsilon follows env steps. By hand with
a fake fraction, then through the harness under step and time budgets, and across a resume."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch

from agents import btr, ppo, rainbow
from agents.api import AgentContext
from bench.config import RunConfig
from bench.harness import train
from envs.base import EnvSpec, EnvStep

SPEC = EnvSpec(game="fake", family="gym", obs_shape=(3,), obs_dtype=torch.float32, num_actions=3, frameskip=1)


def rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _step(n: int) -> EnvStep:
    obs, no = torch.randn(n, 3), torch.zeros(n, dtype=torch.bool)
    return EnvStep(obs=obs, reward=torch.ones(n), terminated=no, truncated=no, done=no, final_obs=obs)


def test_budget_used_is_the_harness_fraction_or_the_step_count():
    p = [0.3]
    ctx = AgentContext(SPEC, 2, torch.device("cpu"), 10_000, progress=lambda: p[0])
    assert ctx.budget_used(9_999) == 0.3  # the harness's fraction wins over the agent's count
    p[0] = 1.7
    assert ctx.budget_used(0) == 1.0
    steps_only = AgentContext(SPEC, 2, torch.device("cpu"), 10_000)  # no harness: a unit test
    assert steps_only.budget_used(2_500) == 0.25 and steps_only.budget_used(20_000) == 1.0
    assert AgentContext(SPEC, 2, torch.device("cpu"), None).budget_used(2_500) == 0.0


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ppo_lr_and_beta_follow_the_fraction_at_each_rollout_start(schedule):
    torch.manual_seed(0)
    p = [0.25]
    cfg = ppo.Config(num_envs=2, segment_length=4, epochs=1, minibatches=2, encoder="mlp", hidden=8, lr=1e-3,
                     lr_schedule=schedule, prio_alpha=0.5, prio_beta0=0.2)  # fmt: skip
    agent = ppo.Agent(cfg, AgentContext(SPEC, 2, torch.device("cpu"), None, progress=lambda: p[0]))
    metrics = []
    for start in (0.25, 0.6):
        p[0] = start
        for _ in range(4):
            agent.act(torch.randn(2, 3))
            p[0] = 0.99  # later reads inside the rollout do not count: the schedule is set at its start
            agent.observe(_step(2))
            m = agent.update()
        metrics.append(m)
    for m, frac in zip(metrics, (0.25, 0.6)):
        lr = 1e-3 * (1 - frac) if schedule == "linear" else 1e-3 * 0.5 * (1 + math.cos(math.pi * frac))
        assert m["progress"] == frac and m["lr"] == pytest.approx(lr, rel=1e-12)
        assert m["prio_beta"] == pytest.approx(0.2 + 0.8 * frac)
    assert agent.opt.param_groups[0]["lr"] == metrics[-1]["lr"]  # what Adam stepped with


def _drive(agent, vector_steps: int) -> dict | None:
    m = None
    for _ in range(vector_steps):
        agent.act(torch.randn(agent.n, 3))
        agent.observe(_step(agent.n))
        m = agent.update() or m
    return m


def test_rainbow_beta_follows_the_fraction_and_epsilon_the_env_steps():
    torch.manual_seed(0)
    p = [0.5]
    cfg = dataclasses.replace(rainbow.Config(), num_envs=2, batch_size=8, learning_starts=0, buffer_size=400,
                              hidden=16, head_hidden=16, noisy=False, eps_decay_steps=40)  # fmt: skip
    agent = rainbow.Agent(cfg, AgentContext(SPEC, 2, torch.device("cpu"), None, progress=lambda: p[0]))
    m = _drive(agent, 10)  # 20 env steps
    assert m["progress"] == 0.5 and m["beta"] == pytest.approx(0.4 + 0.6 * 0.5)
    # epsilon: 1 -> 0.01 linearly over eps_decay_steps env steps (Hessel et al. 2018), whatever
    # the budget: at 20 of 40 env steps it is half way.
    assert m["epsilon"] == pytest.approx(1 + 0.5 * (0.01 - 1))
    p[0] = 0.9
    assert agent.beta() == pytest.approx(0.4 + 0.6 * 0.9) and agent.epsilon() == pytest.approx(0.505)


def test_btr_annealed_beta_follows_the_fraction():
    torch.manual_seed(0)
    p = [0.5]
    kw = dict(num_envs=2, batch_size=8, learning_starts=0, buffer_size=400, hidden=16, head_hidden=16)
    ctx = AgentContext(SPEC, 2, torch.device("cpu"), None, progress=lambda: p[0])
    annealed = btr.Agent(dataclasses.replace(btr.Config(), per_beta_anneal=True, **kw), ctx)
    assert annealed.beta() == pytest.approx(0.45 + 0.55 * 0.5)
    p[0] = 1.0
    assert annealed.beta() == pytest.approx(1.0)
    assert btr.Agent(dataclasses.replace(btr.Config(), **kw), ctx).beta() == 0.2  # fixed unless annealed


PPO_SMALL = {"num_envs": 4, "segment_length": 16, "epochs": 1, "minibatches": 1, "hidden": 16, "lr": 1e-3,
             "lr_schedule": "linear"}  # fmt: skip


def test_step_budget_progress_is_the_env_steps_before_each_rollout(tmp_run):
    run = RunConfig(agent="ppo", game="gym:CartPole-v1", seed=0, steps=640, device="cpu", threads=1)
    train(run, dict(PPO_SMALL), out=tmp_run)
    learner = rows(tmp_run / "learner.csv")
    assert len(learner) == 10  # 640 env steps = 10 rollouts of 4 x 16
    for r in learner:
        frac = (int(r["env_steps"]) - 64) / 640
        assert float(r["progress"]) == pytest.approx(frac, abs=1e-6)
        assert float(r["lr"]) == pytest.approx(1e-3 * (1 - frac), abs=1e-6)


def test_time_only_run_anneals_lr(tmp_run):
    run = RunConfig(agent="ppo", game="gym:CartPole-v1", seed=0, time_s=2.0, device="cpu", threads=1)
    train(run, dict(PPO_SMALL), out=tmp_run)
    learner = rows(tmp_run / "learner.csv")
    prog, lr = [float(r["progress"]) for r in learner], [float(r["lr"]) for r in learner]
    assert len(learner) >= 5
    assert all(a < b for a, b in zip(prog, prog[1:])) and all(a > b for a, b in zip(lr, lr[1:]))
    for r, f in zip(learner, prog):
        assert 0.0 <= f <= float(r["wall_s"]) / 2.0 + 1e-6  # read at the rollout's start, before the row
        assert float(r["lr"]) == pytest.approx(1e-3 * (1 - f), abs=1e-6)
    assert prog[-1] > 0.7 and lr[-1] < 0.3 * lr[0]


def test_time_budget_fraction_continues_across_a_resume(tmp_run):
    run = RunConfig(agent="ppo", game="gym:CartPole-v1", seed=0, time_s=2.0, log_every=64, device="cpu",
                    threads=1, checkpoint_every_s=3600.0)  # fmt: skip

    def stop_at_a_third(row: dict) -> None:
        if row["wall_s"] >= 2.0 / 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run, dict(PPO_SMALL), out=tmp_run, on_row=stop_at_a_third)
    ckpt = torch.load(tmp_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    before = len(rows(tmp_run / "learner.csv"))
    s = train(run, dict(PPO_SMALL), out=tmp_run)
    learner = rows(tmp_run / "learner.csv")
    prog = [float(r["progress"]) for r in learner]
    assert 0 < before < len(learner) - 2
    assert all(a < b for a, b in zip(prog, prog[1:]))  # one schedule, not restarted at 0
    # Rollouts begun after the resume start where the wall clock stopped, not at 0.
    assert min(prog[before + 1 :]) >= ckpt["train_wall_s"] / 2.0
    assert s["train_wall_s"] >= 2.0 and prog[-1] > 0.7
