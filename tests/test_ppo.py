"""PPO (agents.ppo): loss pieces by hand, the agent's bookkeeping on scripted steps, each variant's
effect, and (slow) CartPole learning through the real harness."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from agents import ppo
from agents.api import AgentContext
from envs.base import EnvSpec, EnvStep

SPEC = EnvSpec(game="fake", family="gym", obs_shape=(3,), obs_dtype=torch.float32, num_actions=3, frameskip=1)


def make_agent(N: int = 2, T: int = 4, total: int | None = 10_000, **kw) -> ppo.Agent:
    kw = {"epochs": 2, "minibatches": 2, "encoder": "mlp", "hidden": 16, "reward_clip": 0.0, **kw}
    cfg = ppo.Config(num_envs=N, segment_length=T, **kw)
    return ppo.Agent(cfg, AgentContext(SPEC, N, torch.device("cpu"), total))


def fake_step(N: int, reward=None, term=(), trunc=(), final_obs=None) -> EnvStep:
    t, tr = torch.zeros(N, dtype=torch.bool), torch.zeros(N, dtype=torch.bool)
    t[list(term)], tr[list(trunc)] = True, True
    obs = torch.randn(N, 3)
    return EnvStep(obs=obs, reward=torch.ones(N) if reward is None else reward, terminated=t, truncated=tr,
                   done=t | tr, final_obs=obs if final_obs is None else final_obs)  # fmt: skip


def play(agent: ppo.Agent, vector_steps: int, **step_kw) -> list[dict]:
    """Drive the agent with random observations; return the metrics of every update."""
    out = []
    obs = torch.randn(agent.n, 3)
    for _ in range(vector_steps):
        agent.act(obs)
        step = fake_step(agent.n, **step_kw)
        agent.observe(step)
        m = agent.update()
        if m is not None:
            out.append(m)
        obs = step.obs
    return out


# -- pure pieces -------------------------------------------------------------------------------


def test_clipped_surrogate_on_and_off_by_hand():
    ratio = torch.tensor([0.5, 1.5, 1.05, 0.7])
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    # -A r = [-.5, -1.5, 1.05, 1.4]; -A clip(r, .8, 1.2) = [-.8, -1.2, 1.05, 1.6]; max per sample:
    loss, frac = ppo.clipped_surrogate(ratio, adv, 0.2)
    torch.testing.assert_close(loss, torch.tensor((-0.5 - 1.2 + 1.05 + 1.6) / 4))
    assert frac.item() == pytest.approx(3 / 4)  # |r - 1| > 0.2 for 0.5, 1.5, 0.7
    loss, frac = ppo.clipped_surrogate(ratio, adv, 0.0)  # clipping off: plain -A r
    torch.testing.assert_close(loss, torch.tensor((-0.5 - 1.5 + 1.05 + 1.4) / 4))
    assert frac.item() == pytest.approx(3 / 4)  # still reported, at the reference eps 0.2
    loss, frac = ppo.clipped_surrogate(ratio, adv, 0.6)
    torch.testing.assert_close(loss, torch.tensor((-0.5 - 1.5 + 1.05 + 1.4) / 4))  # nothing clipped
    assert frac.item() == 0.0


def test_value_loss_by_hand():
    new, old, ret = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0])
    # unclipped (V - R)^2 = [1, 9]; clipped V = [0.5, 0.5] -> [2.25, 0.25]; max = [2.25, 9]
    torch.testing.assert_close(ppo.value_loss(new, old, ret, 0.5), torch.tensor(0.5 * (2.25 + 9) / 2))
    torch.testing.assert_close(ppo.value_loss(new, old, ret, 0.0), torch.tensor(0.5 * (1 + 9) / 2))


def test_munchausen_bonus_by_hand():
    logp = torch.tensor([[0.0, -1.0], [-10.0, -50.0]])
    # tau * logp = [[0, -.03], [-.3, -1.5]] -> clipped below at -1 -> times alpha 0.9
    expected = torch.tensor([[0.0, -0.027], [-0.27, -0.9]])
    torch.testing.assert_close(ppo.munchausen_bonus(logp, 0.9, 0.03, -1.0), expected)
    torch.testing.assert_close(
        ppo.munchausen_bonus(logp, 0.9, 0.03, -0.1), torch.tensor([[0.0, -0.027], [-0.09, -0.09]])
    )


def test_prioritised_segment_weights_by_hand():
    torch.manual_seed(0)
    # Column sums of |A|: 1, 2, 3, 4 -> with alpha 1, P = [.1, .2, .3, .4] (up to the 1e-6 floor).
    adv = torch.tensor([[1.0, -1.0, 2.0, 4.0], [0.0, 1.0, -1.0, 0.0]])
    cols, w = ppo.prioritised_segments(adv, 4, alpha=1.0, beta=0.5)
    assert sorted(cols.tolist()) == [0, 1, 2, 3]  # without replacement
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(w, (4 * p[cols]) ** -0.5, rtol=1e-4, atol=1e-6)
    # alpha 2 sharpens: P proportional to [1, 4, 9, 16] / 30
    cols, w = ppo.prioritised_segments(adv, 2, alpha=2.0, beta=1.0)
    p2 = torch.tensor([1.0, 4.0, 9.0, 16.0]) / 30
    torch.testing.assert_close(w, 1 / (4 * p2[cols]), rtol=1e-4, atol=1e-6)
    # alpha 0 is uniform: every weight is 1
    _, w = ppo.prioritised_segments(adv, 3, alpha=0.0, beta=0.7)
    torch.testing.assert_close(w, torch.ones(3))


def test_prioritised_sampling_frequencies_follow_priorities():
    torch.manual_seed(1)
    adv = torch.tensor([[1.0, 3.0, 0.0, 6.0]])  # P = [.1, .3, 0(+eps), .6]
    counts = torch.zeros(4)
    for _ in range(4000):
        cols, _ = ppo.prioritised_segments(adv, 1, alpha=1.0, beta=0.0)
        counts[cols] += 1
    torch.testing.assert_close(counts / 4000, torch.tensor([0.1, 0.3, 0.0, 0.6]), atol=0.025, rtol=0)


def test_running_norm_matches_batch_statistics():
    torch.manual_seed(3)
    norm = ppo.RunningNorm((2,))
    chunks = [torch.randn(n, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0]) for n in (5, 17, 40)]
    for c in chunks:
        norm.update(c)
    x = torch.cat(chunks)
    torch.testing.assert_close(norm.mean, x.mean(0), atol=1e-4, rtol=1e-4)  # up to the 1e-4 prior count
    torch.testing.assert_close(norm.var, x.var(0, unbiased=False), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        norm(x[:3]), ((x[:3] - x.mean(0)) / x.std(0, unbiased=False)), atol=1e-3, rtol=1e-3
    )
    assert norm(torch.full((1, 2), 1e6)).max() == 10.0  # clipped


def test_gumbel_max_sampling_matches_softmax():
    torch.manual_seed(2)
    logits = torch.log(torch.tensor([0.2, 0.5, 0.3])).expand(20_000, 3)
    freq = torch.bincount(ppo.sample(logits), minlength=3) / 20_000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.015, rtol=0)


# -- the agent's bookkeeping --------------------------------------------------------------------


def test_update_schedule_and_ledger():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, epochs=3, minibatches=2)
    ms = play(agent, 4 * 3)
    assert len(ms) == 3  # one update per completed segment, None in between
    for m in ms:
        assert m["grad_steps"] == 3 * 2
        assert m["grad_samples"] == 3 * 4 * 2  # epochs x the whole batch
        assert all(math.isfinite(v) for v in m.values())
    # The lr anneals linearly from lr over total_env_steps, measured at each segment's start.
    assert ms[1]["lr"] == pytest.approx(2.5e-4 * (1 - 8 / 10_000))


def _targets_after_one_segment(agent: ppo.Agent, t_event: int, **event):
    """Play one segment with an event at step t_event; return (targets, stored values)."""
    obs = torch.randn(agent.n, 3)
    for t in range(agent.cfg.segment_length):
        agent.act(obs)
        step = fake_step(
            agent.n, reward=torch.full((agent.n,), float(t + 1)), **(event if t == t_event else {})
        )
        agent.observe(step)
        obs = step.obs
    agent.filled = 1  # what update() sets before computing targets
    return agent._targets(fresh=0), agent.values.clone()


def test_truncation_bootstraps_from_final_obs():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, gamma=0.9, gae_lambda=0.8)
    final = torch.full((2, 3), 5.0)
    tg, values = _targets_after_one_segment(agent, 1, trunc=(1,), final_obs=final)
    with torch.no_grad():
        v_final = agent.net.step(final[1:], None)[1][0]
    assert agent.trunc_values[1, 1] == pytest.approx(v_final.item())
    # A cut step: A = r + gamma V(final_obs) - V(s), no credit from the next episode.
    assert tg["adv"][1, 1].item() == pytest.approx(2.0 + 0.9 * v_final.item() - values[1, 1].item(), abs=1e-5)
    # The env beside it was not cut: its advantage carries the next step's.
    d = 2.0 + 0.9 * values[2, 0] - values[1, 0]
    assert tg["adv"][1, 0].item() == pytest.approx((d + 0.72 * tg["adv"][2, 0]).item(), abs=1e-5)


def test_termination_does_not_bootstrap():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, gamma=0.9, gae_lambda=0.8)
    tg, values = _targets_after_one_segment(agent, 2, term=(0,))
    assert tg["adv"][2, 0].item() == pytest.approx(3.0 - values[2, 0].item(), abs=1e-5)


def test_metrics_have_the_same_keys_for_every_variant():
    # learner.csv takes its columns from the first row, so every configuration reports the same keys.
    keys = None
    for kw in ({}, {"clip_coef": 0.0}, {"kl_coef": 1.0}, {"munchausen_alpha": 0.9},
               {"munchausen_alpha": 0.9, "munchausen_mode": "current"}, {"prio_alpha": 0.9},
               {"replay_factor": 2}, {"lstm_hidden": 8}):  # fmt: skip
        torch.manual_seed(0)
        m = play(make_agent(**kw), 8)[-1]
        keys = keys or set(m)
        assert set(m) == keys, kw


# -- variants -------------------------------------------------------------------------------------


def test_clipping_off_changes_the_update_and_still_reports_clip_frac():
    def first_update(clip):
        torch.manual_seed(0)
        return play(make_agent(clip_coef=clip, lr=0.05, epochs=8), 4)[0]

    on, off = first_update(0.2), first_update(0.0)
    assert 0.0 < on["clip_frac"] <= 1.0 and 0.0 < off["clip_frac"] <= 1.0  # big steps leave the trust region
    assert on["pg_loss"] != off["pg_loss"]


def test_kl_penalty_is_logged_and_added():
    torch.manual_seed(0)
    m = play(make_agent(kl_coef=3.0, lr=0.05, epochs=4), 4)[0]
    assert m["kl"] > 0
    assert m["kl_pen"] == pytest.approx(3.0 * m["kl"])
    torch.manual_seed(0)
    assert play(make_agent(lr=0.05, epochs=4), 4)[0]["kl_pen"] == 0.0


def test_munchausen_behaviour_bonus_enters_rewards():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, munchausen_alpha=0.9, munchausen_tau=0.03)
    tg, values = _targets_after_one_segment(agent, 3, term=(0, 1))
    bonus = ppo.munchausen_bonus(agent.logp, 0.9, 0.03, -1.0)  # from the behaviour log-probs
    assert tg["bonus_mean"].item() == pytest.approx(bonus.mean().item())
    assert bonus.mean().item() == pytest.approx(0.9 * 0.03 * agent.logp.mean().item())  # no clip at l0 here
    # At the terminal step: A = r + bonus - V.
    torch.testing.assert_close(tg["adv"][3], 4.0 + bonus[3] - values[3])


def test_munchausen_current_mode_reports_the_loss_bonus():
    torch.manual_seed(0)
    m = play(make_agent(munchausen_alpha=0.9, munchausen_mode="current"), 4)[0]
    # A near-uniform initial policy over 3 actions: bonus ~ 0.9 * 0.03 * log(1/3).
    assert m["munchausen_bonus_mean"] == pytest.approx(0.9 * 0.03 * math.log(1 / 3), rel=0.05)


def test_prioritised_variant_logs_weights():
    torch.manual_seed(0)
    ms = play(make_agent(N=4, prio_alpha=1.0, prio_beta0=0.5), 8)
    m = ms[0]
    assert m["prio_weight_min"] <= m["prio_weight_mean"] <= m["prio_weight_max"]
    assert m["prio_weight_min"] < m["prio_weight_max"]  # unequal priorities, unequal weights
    assert m["prio_beta"] == pytest.approx(0.5)  # beta0 at the start, annealing towards 1
    assert ms[1]["prio_beta"] == pytest.approx(0.5 + 0.5 * 16 / 10_000)  # 4 envs x 4 steps done


def test_replay_factor_doubles_grad_samples_per_env_step():
    def ledger(k):
        torch.manual_seed(0)
        return play(make_agent(replay_factor=k), 4 * 4)

    plain, replay = ledger(1), ledger(2)
    assert [m["grad_samples"] for m in plain] == [16] * 4
    assert [m["grad_samples"] for m in replay] == [16, 32, 32, 32]  # K = 2 once two rollouts are held
    assert [m["replay_rollouts"] for m in replay] == [1, 2, 2, 2]
    # The first update sees only fresh data: it is plain PPO, bit for bit.
    assert replay[0]["loss"] == plain[0]["loss"]
    # Later ones train on stale data, whose importance ratios V-trace uses.
    assert replay[1]["vtrace_rho_mean"] != 1.0 and plain[1]["vtrace_rho_mean"] == 1.0


# -- LSTM and checkpoints -------------------------------------------------------------------------


def test_lstm_training_unroll_reproduces_acting():
    torch.manual_seed(0)
    agent = make_agent(N=3, T=6, lstm_hidden=8)
    obs = torch.randn(3, 3)
    for t in range(6):
        agent.act(obs)
        step = fake_step(3, term=(1,) if t == 2 else (), trunc=(2,) if t == 3 else ())
        agent.observe(step)
        obs = step.obs
    starts = torch.zeros_like(agent.dones)
    starts[1:] = agent.dones[:-1]
    with torch.no_grad():
        logits, values, _ = agent.net.unroll(agent.obs, (agent.h0, agent.c0), starts)
    torch.testing.assert_close(values, agent.values)
    torch.testing.assert_close(logits, agent.logits)
    assert agent.update() is not None


def test_lstm_eval_state_resets_where_an_episode_starts():
    # Evaluation marks new episodes with `first`: those envs start from a zero LSTM state (as in
    # training), the others carry their state on.
    torch.manual_seed(0)
    agent = make_agent(N=3, lstm_hidden=8)
    obs = torch.randn(3, 3)
    agent.act(obs, explore=False, first=torch.ones(3, dtype=torch.bool))
    fresh = tuple(x.clone() for x in agent.eval_state)  # state after one step from zeros
    agent.act(obs, explore=False, first=torch.tensor([True, False, True]))
    h, c = agent.eval_state
    torch.testing.assert_close(h[[0, 2]], fresh[0][[0, 2]])  # reset, then the same obs again
    torch.testing.assert_close(c[[0, 2]], fresh[1][[0, 2]])
    assert not torch.allclose(h[1], fresh[0][1])  # carried: a second step from a non-zero state


def test_state_dict_roundtrip_resumes_identically():
    torch.manual_seed(0)
    a = make_agent(lstm_hidden=8, replay_factor=2)
    play(a, 6)  # mid-segment, one rollout held
    b = make_agent(lstm_hidden=8, replay_factor=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as if through torch.save / torch.load
    torch.manual_seed(7)
    ma = play(a, 6)
    torch.manual_seed(7)
    mb = play(b, 6)
    assert ma == mb


# -- learning (slow) ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_learns(seed, tmp_path):
    import csv

    from bench.config import RunConfig
    from bench.harness import train

    train(RunConfig(agent="ppo", game="gym:CartPole-v1", seed=seed, steps=300_000, threads=1), out=tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last = [float(r["episode_return"]) for r in rows[-5:] if r["episode_return"]]
    assert sum(last) / len(last) >= 475, last
