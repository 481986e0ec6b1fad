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
from tests.helpers.rollouts import fake_step, play

SPEC = EnvSpec(game="fake", family="gym", obs_shape=(3,), obs_dtype=torch.float32, num_actions=3, frameskip=1)


def make_agent(N: int = 2, T: int = 4, total: int | None = 10_000, **kw) -> ppo.Agent:
    kw = {"epochs": 2, "minibatches": 2, "encoder": "mlp", "hidden": 16, "reward_clip": 0.0, **kw}
    cfg = ppo.Config(num_envs=N, segment_length=T, **kw)
    return ppo.Agent(cfg, AgentContext(SPEC, N, torch.device("cpu"), total))


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
               {"munchausen_alpha": 0.9, "munchausen_mode": "advantage_bonus"},
               {"munchausen_alpha": 0.9, "munchausen_mode": "munchausen"}, {"prio_alpha": 0.9},
               {"replay_factor": 2}, {"replay_factor": 2, "replay_minibatch": "more", "vtrace_form": "puffer"},
               {"replay_factor": 2, "replay_stale_weight": 0.5}, {"lstm_hidden": 8}):  # fmt: skip
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


def test_munchausen_reward_bonus_enters_rewards():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, munchausen_alpha=0.9, munchausen_tau=0.03)
    tg, values = _targets_after_one_segment(agent, 3, term=(0, 1))
    bonus = ppo.munchausen_bonus(agent.logp, 0.9, 0.03, -1.0)  # from the behaviour log-probs
    assert tg["bonus_mean"].item() == pytest.approx(bonus.mean().item())
    assert bonus.mean().item() == pytest.approx(0.9 * 0.03 * agent.logp.mean().item())  # no clip at l0 here
    # At the terminal step: A = r + bonus - V.
    torch.testing.assert_close(tg["adv"][3], 4.0 + bonus[3] - values[3])


def test_munchausen_advantage_bonus_mode_reports_the_loss_bonus():
    torch.manual_seed(0)
    m = play(make_agent(munchausen_alpha=0.9, munchausen_mode="advantage_bonus"), 4)[0]
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
    # Later ones train on stale data, whose importance ratios V-trace uses; the fresh rollout's are 1.
    assert replay[1]["vtrace_rho_stale"] != 1.0 and replay[1]["vtrace_rho_fresh"] == 1.0
    assert plain[1]["vtrace_rho_stale"] == 1.0 and plain[1]["vtrace_rho_fresh"] == 1.0


def scripted_steps(N: int, T: int, seed: int, trunc_at: int | None = None) -> list[EnvStep]:
    """T env steps for N envs from their own generator, so two agents can see the same ones; env 1
    is truncated at ``trunc_at`` with a final observation of its own."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(T):
        obs = torch.randn(N, 3, generator=g)
        tr = torch.zeros(N, dtype=torch.bool)
        final = obs.clone()
        if t == trunc_at:
            tr[1], final[1] = True, torch.randn(3, generator=g)
        out.append(EnvStep(obs=obs, reward=torch.randn(N, generator=g), terminated=torch.zeros(N, dtype=torch.bool),
                           truncated=tr, done=tr.clone(), final_obs=final))  # fmt: skip
    return out


def feed(agent: ppo.Agent, obs: torch.Tensor, steps: list[EnvStep]) -> torch.Tensor:
    for step in steps:
        agent.act(obs)
        agent.observe(step)
        obs = step.obs
    return obs


def _k1_and_k2(**kw) -> tuple[ppo.Agent, ppo.Agent]:
    """A K = 1 agent and a K = 2 agent with the same parameters, the K = 2 one holding a stale
    rollout (slot 0) whose behaviour log-probs are 0.7 lower than its current policy's, so its
    importance ratios are e^0.7 ~ 2 before clipping, and whose next rollout goes to slot 1."""
    torch.manual_seed(0)
    kw = {"N": 2, "T": 4, "lr": 0.01, "lr_schedule": "constant", "epochs": 3, "minibatches": 2,
          "vtrace_rho_clip": 0.79, "vtrace_c_clip": 0.5, **kw}  # constant lr: k2 has seen more env steps
    k1, k2 = make_agent(**kw), make_agent(replay_factor=2, **kw)
    feed(k2, torch.randn(2, 3), scripted_steps(2, 4, seed=5))  # the stale rollout, never trained on
    k2.logp[:, :2] -= 0.7
    k2.t, k2.slot, k2.filled = 0, 1, 1  # as update() leaves them
    if k2.state is not None:  # the fresh rollout starts from k1's (zero) LSTM state
        k2.state = (torch.zeros_like(k2.state[0]), torch.zeros_like(k2.state[1]))
    k2.net.load_state_dict(k1.net.state_dict())
    return k1, k2


def test_fresh_targets_with_k2_are_the_k1_targets():
    # Issue 15: rho and c on the fresh rollout are 1 (it is on-policy), so with rho-bar = 0.79 the
    # fresh advantages and value targets do not shrink at K = 2: K = 1 and K = 2 differ only in the
    # stale data. Both V-trace forms reduce to GAE there.
    for form in ("impala", "puffer"):
        k1, k2 = _k1_and_k2(vtrace_form=form, gamma=0.9, gae_lambda=0.8)
        obs, steps = torch.randn(2, 3), scripted_steps(2, 4, seed=6)
        torch.manual_seed(1)
        feed(k1, obs, steps)
        torch.manual_seed(1)
        feed(k2, obs, steps)
        k1.filled, k2.filled = 1, 2  # what update() sets before computing targets
        t1, t2 = k1._targets(fresh=0), k2._targets(fresh=1)
        for key in ("adv", "returns", "logp_old"):
            torch.testing.assert_close(t2[key][:, 2:], t1[key], rtol=0, atol=0)
        assert t2["rho_fresh"].item() == 1.0
        assert t2["rho_stale"].item() == pytest.approx(0.79)  # e^0.7 > rho-bar: every stale rho clipped


def test_uncorrected_replay_treats_stale_rollouts_as_on_policy():
    # vtrace_correct off (issue 22's ablation): rho = c = 1 on the stale rollout, so its targets are
    # those it would get had theta_0 acted it, unlike the corrected ones (stale ratios ~2, clipped
    # to rho-bar 0.79); the logged rho_stale is still the rho V-trace would have applied.
    obs, steps = torch.randn(2, 3), scripted_steps(2, 4, seed=6)

    def targets(on_policy_stale: bool, **kw) -> dict:
        _, k2 = _k1_and_k2(gamma=0.9, gae_lambda=0.8, **kw)
        torch.manual_seed(1)
        feed(k2, obs, steps)
        k2.filled = 2
        if on_policy_stale:
            k2.logp[:, :2] = k2._targets(fresh=1)["logp_old"][:, :2]
        return k2._targets(fresh=1)

    # unit: the stale rollout relabelled as theta_0's own, and rho-bar = c-bar = 1, so V-trace is GAE
    off, on = targets(False, vtrace_correct=False), targets(False)
    unit = targets(True, vtrace_rho_clip=1.0, vtrace_c_clip=1.0)
    for key in ("adv", "returns", "logp_old"):
        torch.testing.assert_close(off[key], unit[key])
    assert not torch.allclose(off["adv"][:, :2], on["adv"][:, :2])
    torch.testing.assert_close(off["adv"][:, 2:], on["adv"][:, 2:], rtol=0, atol=0)  # fresh: untouched
    assert off["rho_stale"].item() == pytest.approx(0.79) and unit["rho_stale"].item() == 1.0


@pytest.mark.parametrize("lstm", [0, 8])
def test_zero_weight_stale_rollout_leaves_the_k1_update(lstm):
    # With K = 2 and a stale rollout whose samples weigh 0 in the loss, the update is the K = 1
    # update: same fresh targets (above), the fresh rollout split into the same minibatches from the
    # same random draws ("larger" mode), and weighted means (loss terms, advantage normalisation)
    # over the fresh samples alone. Stale ratios alone (rho = c = 0) would not do it: their samples
    # would still add value and entropy terms and change each minibatch's advantage statistics.
    k1, k2 = _k1_and_k2(lstm_hidden=lstm, replay_stale_weight=0.0, kl_coef=0.5)
    obs, steps = torch.randn(2, 3), scripted_steps(2, 4, seed=6, trunc_at=1)
    before = k1.net.critic.weight.detach().clone()
    torch.manual_seed(1)
    feed(k1, obs, steps)
    m1 = k1.update()
    torch.manual_seed(1)
    feed(k2, obs, steps)
    m2 = k2.update()
    assert m1["grad_steps"] == m2["grad_steps"] == 6
    for (name, p1), p2 in zip(k1.net.named_parameters(), k2.net.parameters()):
        assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-6), name
    assert not torch.allclose(k1.net.critic.weight, before)  # the update did move the parameters
    for k in ("loss", "pg_loss", "v_loss", "entropy", "kl", "clip_frac"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
    # A stale weight of 1 (the default) does train on the stale rollout: a different update.
    k1, k2 = _k1_and_k2(lstm_hidden=lstm)
    torch.manual_seed(1)
    feed(k1, obs, steps)
    k1.update()
    torch.manual_seed(1)
    feed(k2, obs, steps)
    k2.update()
    assert not torch.allclose(k1.net.critic.weight, k2.net.critic.weight)


@pytest.mark.parametrize("kw", [{}, {"lstm_hidden": 8}, {"prio_alpha": 1.0}])
def test_grad_steps_with_k2_in_each_replay_minibatch_mode(kw):
    # epochs 3 x minibatches 2 = 6 optimiser steps per update at K = 1. "larger": still 6 at K = 2,
    # each on twice the samples; "more": 12, each on the K = 1 minibatch size.
    def ledger(**more):
        torch.manual_seed(0)
        return play(make_agent(N=2, T=4, epochs=3, minibatches=2, replay_factor=2, **kw, **more), 3 * 4)

    larger, more = ledger(), ledger(replay_minibatch="more")
    assert [m["grad_steps"] for m in larger] == [6, 6, 6]
    assert [m["grad_steps"] for m in more] == [6, 12, 12]
    # grad_samples counts each use of a transition: 3 epochs x 8, then x 16 once two rollouts are held.
    assert [m["grad_samples"] for m in larger] == [m["grad_samples"] for m in more] == [24, 48, 48]
    assert more[1]["grad_samples"] / more[1]["grad_steps"] == larger[0]["grad_samples"] / larger[0]["grad_steps"]


def test_stale_truncation_bootstraps_from_final_obs_at_current_parameters():
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, lr=0.05, replay_factor=2, gamma=0.9, gae_lambda=0.8)
    final = torch.full((3,), 5.0)
    steps = scripted_steps(2, 4, seed=3, trunc_at=1)
    steps[1].final_obs[1] = final
    obs = feed(agent, torch.randn(2, 3), steps)
    with torch.no_grad():
        v_acting = agent.net.step(final[None], None)[1].item()
    assert agent.trunc_values[1, 1].item() == pytest.approx(v_acting)
    assert agent.update() is not None  # trains on slot 0; it becomes the stale rollout
    feed(agent, obs, scripted_steps(2, 4, seed=4))
    with torch.no_grad():
        logits, v_now, _ = agent.net.step(final[None], None)  # the parameters the next update starts from
    assert abs(v_now.item() - v_acting) > 1e-4  # training moved it: the old value would be stale
    agent.update()
    assert agent.trunc_values[1, 1].item() == pytest.approx(v_now.item(), abs=1e-6)
    assert agent.trunc_entropy[1, 1].item() == pytest.approx(ppo.entropy(logits)[0].item(), abs=1e-6)


def test_stale_truncation_reevaluation_uses_the_lstm_state_of_its_step():
    # At unchanged parameters, re-evaluating a rollout's truncations reproduces the values observe
    # computed while acting: the LSTM state carried to the final observation is the one after its step.
    torch.manual_seed(0)
    agent = make_agent(N=2, T=5, lstm_hidden=8, replay_factor=2)
    feed(agent, torch.randn(2, 3), scripted_steps(2, 5, seed=3, trunc_at=2))
    acting_v, acting_h = agent.trunc_values.clone(), agent.trunc_entropy.clone()
    agent.trunc_values.zero_()
    agent.trunc_entropy.zero_()
    starts = torch.zeros_like(agent.dones)
    starts[1:] = agent.dones[:-1]
    cols = agent._cols(0)
    with torch.no_grad():
        _, _, states = agent.net.unroll(agent.obs[:, cols], (agent.h0[cols], agent.c0[cols]), starts[:, cols],
                                        every_state=True)  # fmt: skip
        agent._reevaluate_truncations(cols, states)
    assert acting_v[2, 1] != 0
    torch.testing.assert_close(agent.trunc_values, acting_v)
    torch.testing.assert_close(agent.trunc_entropy, acting_h)


def test_config_refuses_c_bar_above_rho_bar_unless_asked():
    with pytest.raises(ValueError, match="vtrace-allow-c-above-rho"):
        ppo.Config(vtrace_rho_clip=0.79, vtrace_c_clip=2.88)
    assert ppo.Config(vtrace_rho_clip=0.79, vtrace_c_clip=2.88, vtrace_allow_c_above_rho=True).vtrace_c_clip == 2.88
    assert ppo.Config(**ppo.PRESETS["puffer"]).vtrace_c_clip <= ppo.Config(**ppo.PRESETS["puffer"]).vtrace_rho_clip
    # The old mode names, as recorded in earlier runs' config.json, still load, under the new names.
    assert ppo.Config(munchausen_mode="behaviour").munchausen_mode == "reward_bonus"
    assert ppo.Config(munchausen_mode="current").munchausen_mode == "advantage_bonus"


# p = [.2, .5, .3]: H = .2 ln 5 + .5 ln 2 + .3 ln(10/3) = .32189 + .34657 + .36119 = 1.02965
P_FIXED, H_FIXED = torch.tensor([0.2, 0.5, 0.3]), 1.02965


def test_munchausen_expected_bonus_per_mode_by_hand():
    alpha, tau, gamma = 0.9, 0.03, 0.99
    logp = P_FIXED.log()
    assert ppo.entropy(logp).item() == pytest.approx(H_FIXED, abs=1e-5)
    # reward_bonus and advantage_bonus: E_a[alpha clip(tau log p(a), -1, 0)] = -alpha tau H = -0.027801:
    # an entropy penalty (the clip at -1 is far: tau log p >= -0.05 here).
    expected = (P_FIXED * ppo.munchausen_bonus(logp, alpha, tau, -1.0)).sum()
    assert expected.item() == pytest.approx(-0.9 * 0.03 * H_FIXED, abs=1e-6)
    assert expected.item() == pytest.approx(-0.027801, abs=1e-6)
    # munchausen adds the soft bootstrap gamma tau H(pi(.|s')) = 0.030581 at a non-terminal next
    # state with the same policy: per step (gamma - alpha) tau H = +0.002780, zero at a terminal one.
    soft = ppo.soft_bootstrap(torch.tensor([H_FIXED, H_FIXED]), torch.tensor([False, True]), gamma, tau)
    torch.testing.assert_close(soft, torch.tensor([0.030581, 0.0]), atol=1e-6, rtol=0)
    assert (expected + soft[0]).item() == pytest.approx((0.99 - 0.9) * 0.03 * H_FIXED, abs=1e-6)


@pytest.mark.parametrize("mode", ["reward_bonus", "advantage_bonus", "munchausen"])
def test_munchausen_modes_report_their_bonus_on_a_fixed_policy(mode):
    # A policy that plays p in every state (actor weights 0, bias log p) and barely learns: the
    # logged bonus mean is the sampled -alpha tau H; the soft term is exactly gamma tau H at every
    # non-terminal step (one in four terminates here) and 0 outside the munchausen mode.
    torch.manual_seed(0)
    agent = make_agent(N=64, T=16, lr=1e-9, munchausen_alpha=0.9, munchausen_mode=mode)
    with torch.no_grad():
        agent.net.actor.weight.zero_()
        agent.net.actor.bias.copy_(P_FIXED.log())
    term = tuple(range(0, 64, 4))  # envs 0, 4, ... terminate at every step
    m = play(agent, 16, term=term)[0]
    assert m["munchausen_bonus_mean"] == pytest.approx(-0.9 * 0.03 * H_FIXED, rel=0.05)
    soft = 0.99 * 0.03 * H_FIXED * 0.75 if mode == "munchausen" else 0.0
    assert m["munchausen_soft_mean"] == pytest.approx(soft, abs=1e-6)


def test_munchausen_mode_targets_by_hand():
    # At a segment's last step (not terminal): A = r + alpha clip(tau log pi_0(a|s)) + gamma tau
    # H(pi_0(.|s_T)) + gamma V(s_T) - V(s); lambda plays no part there.
    torch.manual_seed(0)
    agent = make_agent(N=2, T=4, gamma=0.9, gae_lambda=0.8, munchausen_alpha=0.9, munchausen_mode="munchausen")
    tg, values = _targets_after_one_segment(agent, 0)
    with torch.no_grad():
        logits_T, v_T, _ = agent.net.step(agent.next_obs[0], None)
    bonus = ppo.munchausen_bonus(agent.logp[3], 0.9, 0.03, -1.0)
    expected = 4.0 + bonus + 0.9 * 0.03 * ppo.entropy(logits_T) + 0.9 * v_T - values[3]
    torch.testing.assert_close(tg["adv"][3], expected)
    # One step earlier the soft term is the entropy at s_3, from the stored logits.
    soft_2 = 0.9 * 0.03 * ppo.entropy(agent.logits[3])
    delta_2 = 3.0 + ppo.munchausen_bonus(agent.logp[2], 0.9, 0.03, -1.0) + soft_2 + 0.9 * values[3] - values[2]
    torch.testing.assert_close(tg["adv"][2], delta_2 + 0.72 * tg["adv"][3])


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


# -- LSTM: exact and fused training unrolls ------------------------------------------------------------


def _exact_and_fused(**kw) -> tuple[ppo.Agent, ppo.Agent]:
    """Two LSTM agents alike but for ``lstm_unroll``; the same seed gives them the same parameters."""
    kw = {"N": 4, "T": 6, "lstm_hidden": 8, "lr": 1e-3, **kw}
    torch.manual_seed(0)
    exact = make_agent(**kw)
    torch.manual_seed(0)
    fused = make_agent(lstm_unroll="fused", **kw)
    for p, q in zip(exact.net.parameters(), fused.net.parameters(), strict=True):
        assert torch.equal(p, q)
    return exact, fused


def _training_forward(agent: ppo.Agent) -> tuple[torch.Tensor, torch.Tensor]:
    """The update's forward pass over the stored rollout, all segments at once: logits, values."""
    starts = torch.zeros_like(agent.dones)  # [T, N] as _targets builds them
    starts[1:] = agent.dones[:-1]
    with torch.no_grad():
        logits, values, _ = agent.net.unroll(agent.obs, (agent.h0, agent.c0), starts)
    return logits, values


def _same_rollout(agents: tuple[ppo.Agent, ...], obs: torch.Tensor, steps: list[EnvStep], seed: int) -> None:
    for a in agents:
        torch.manual_seed(seed)  # the same action draws
        feed(a, obs, steps)


# Tolerance 1e-5 where no episode ends inside a segment: the two unrolls compute the same function
# in float32, the fused one in oneDNN's kernel (all input projections in one matmul, then the
# recurrence) and the cell step by step, so they differ by summation order, ~1e-7 at these sizes
# (measured). An Adam step turns a gradient difference d into a step difference of at most lr * d /
# eps (1e-3 * 1e-7 / 1e-5 = 1e-5 where a gradient is near 0, much less elsewhere), over 2 x 2 steps.
ATOL_FUSED = 1e-5


def test_fused_lstm_matches_exact_without_episode_ends_inside_segments():
    exact, fused = _exact_and_fused()
    obs, steps = torch.randn(4, 3), scripted_steps(4, 6, seed=3)  # no episode ends
    _same_rollout((exact, fused), obs, steps, seed=1)
    torch.testing.assert_close(fused.logits, exact.logits, rtol=0, atol=0)  # acting is the same cell
    for agent in (exact, fused):  # both training passes reproduce acting
        logits, values = _training_forward(agent)
        torch.testing.assert_close(logits, agent.logits, rtol=0, atol=ATOL_FUSED)
        torch.testing.assert_close(values, agent.values, rtol=0, atol=ATOL_FUSED)
    before = [p.detach().clone() for p in exact.net.parameters()]
    torch.manual_seed(2)  # the same minibatch shuffles
    m_exact = exact.update()
    torch.manual_seed(2)
    m_fused = fused.update()
    assert m_exact["grad_steps"] == m_fused["grad_steps"] == 4
    for (name, p), q, b in zip(exact.net.named_parameters(), fused.net.parameters(), before, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=ATOL_FUSED, msg=name)
        assert not torch.equal(p, b), name  # the update moved every parameter, the LSTM's included
    # A second rollout starts from the carried, non-zero state: the fused pass starts from the same
    # stored segment-start state.
    _same_rollout((exact, fused), steps[-1].obs, scripted_steps(4, 6, seed=4), seed=5)
    assert exact.h0.abs().sum(-1).gt(0).all()
    torch.testing.assert_close(fused.h0, exact.h0, rtol=0, atol=ATOL_FUSED)
    torch.testing.assert_close(_training_forward(fused)[0], fused.logits, rtol=0, atol=ATOL_FUSED)
    torch.manual_seed(6)
    exact.update()
    torch.manual_seed(6)
    fused.update()
    for (name, p), q in zip(exact.net.named_parameters(), fused.net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=ATOL_FUSED, msg=name)


def test_fused_lstm_keeps_memory_across_an_episode_end():
    # Env 1 terminates at step 2. Exact restarts it from a zero state at step 3; fused (PufferLib's
    # way) carries the old episode's state on, in acting and in training alike: each mode's
    # training pass reproduces its own acting, and the two modes part from step 3 of env 1 only.
    exact, fused = _exact_and_fused()
    torch.manual_seed(3)
    obs = torch.randn(4, 3)
    steps = [fake_step(4, reward=torch.randn(4), term=(1,) if t == 2 else ()) for t in range(6)]
    _same_rollout((exact, fused), obs, steps, seed=1)
    for agent in (exact, fused):
        logits, values = _training_forward(agent)
        torch.testing.assert_close(logits, agent.logits, rtol=0, atol=ATOL_FUSED)
        torch.testing.assert_close(values, agent.values, rtol=0, atol=ATOL_FUSED)
    other = torch.ones(6, 4, dtype=torch.bool)  # [T, N] steps the episode end does not reach
    other[3:, 1] = False
    torch.testing.assert_close(fused.logits[other], exact.logits[other], rtol=0, atol=ATOL_FUSED)
    gap = (fused.logits[3:, 1] - exact.logits[3:, 1]).abs().amax(-1)  # [3] per step after the end
    assert (gap > 1e-4).all(), gap  # far above the rounding tolerance, at every step after the end
    assert ((fused.values[3:, 1] - exact.values[3:, 1]).abs() > 1e-4).all()
    torch.manual_seed(2)
    exact.update()
    torch.manual_seed(2)
    fused.update()
    diff = max((p - q).abs().max().item() for p, q in zip(exact.net.parameters(), fused.net.parameters()))
    assert diff > 10 * ATOL_FUSED, diff


def test_fused_lstm_shares_the_cells_weights():
    exact, fused = _exact_and_fused()
    cell, seq = fused.net.lstm, fused.net.lstm_seq
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert getattr(seq, f"{name}_l0") is getattr(cell, name)
    assert exact.net.lstm_seq is None
    # One set of weights: the optimiser holds as many as the exact mode's; the exact mode's
    # checkpoint keys are unchanged, the fused one adds the aliases.
    n = [sum(p.numel() for g in a.opt.param_groups for p in g["params"]) for a in (exact, fused)]
    assert n[0] == n[1]
    keys_e, keys_f = set(exact.net.state_dict()), set(fused.net.state_dict())
    assert "lstm.weight_ih" in keys_e and not any(k.startswith("lstm_seq.") for k in keys_e)
    assert keys_f - keys_e == {f"lstm_seq.{k}_l0" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    # An optimiser step on one moves the other.
    with torch.no_grad():
        cell.weight_hh.add_(1.0)
    assert torch.equal(seq.weight_hh_l0, cell.weight_hh)


def test_lstm_unroll_inactive_without_an_lstm():
    vec = EnvSpec(game="g", family="gym", obs_shape=(4,), obs_dtype=torch.float32, num_actions=2, frameskip=1)
    assert ppo.inactive_options(ppo.Config(), vec) == []
    assert ppo.inactive_options(ppo.Config(lstm_unroll="fused"), vec) == ["lstm_unroll"]
    assert ppo.inactive_options(ppo.Config(lstm_unroll="fused", lstm_hidden=8), vec) == []


def test_fused_lstm_runs_end_to_end_on_puffer_breakout(tmp_path):
    import csv
    import json

    from bench.cli import main as cli

    out = tmp_path / "r"
    assert cli(["run", "--agent", "ppo", "--game", "puffer_breakout", "--steps", "1024", "--seed", "1",
                "--out", str(out), "--num-envs", "8", "--minibatches", "2", "--segment-length", "32",
                "--hidden", "32", "--lstm-hidden", "16", "--lstm-unroll", "fused", "--log-every", "1",
                "--threads", "1"]) == 0  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["agent"]["lstm_unroll"] == "fused" and cfg["agent"]["lstm_hidden"] == 16
    assert cfg["inactive_options"] == []
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[-1]["env_steps"]) >= 1024
    assert float(rows[-1]["grad_steps"]) > 0
    assert all(math.isfinite(float(r["loss"])) for r in rows if r.get("loss") not in (None, "", "nan"))


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


def test_meter_counts_the_fused_lstm_like_the_cell():
    """The meter's FLOP count of a training pass is the same whichever way the LSTM is unrolled:
    the fused oneDNN kernel (and its backward) is counted with the cell's matmul FLOPs. The one
    difference: the fused backward also computes the gradient of the initial state (one
    ``h0 W_hh`` product, 2 * B * 4H * H), which the cell's autograd skips (h0 needs no grad)."""
    from bench.meter import count_flops

    exact, fused = _exact_and_fused()
    obs, steps = torch.randn(4, 3), scripted_steps(4, 6, seed=3)
    _same_rollout((exact, fused), obs, steps, seed=1)
    counts = []
    def training_pass(agent: ppo.Agent) -> None:
        starts = torch.zeros_like(agent.dones)
        logits, values, _ = agent.net.unroll(agent.obs, (agent.h0, agent.c0), starts)
        (logits.sum() + values.sum()).backward()

    for agent in (exact, fused):
        counts.append(count_flops(lambda a=agent: training_pass(a))[1])
    H, B = exact.cfg.lstm_hidden, exact.obs.shape[1]
    assert counts[1] - counts[0] == 2 * B * 4 * H * H and counts[0] > 50 * 2 * B * 4 * H * H
