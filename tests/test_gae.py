"""GAE / V-trace (agents.returns.gae) against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from agents.returns import gae, vtrace

GAMMA, LAM = 0.9, 0.8


def col(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)[:, None]  # [T, 1]


def flags(T: int, *idx: int) -> torch.Tensor:
    f = torch.zeros(T, 1, dtype=torch.bool)
    f[list(idx)] = True
    return f


def test_five_steps_with_termination_and_truncation():
    # One env, 5 steps: the episode terminates at t=1 (no bootstrap), a new one is truncated at
    # t=3 and bootstraps from V(final_obs) = 10, and the segment ends at t=4 with V(s_5) = 3.
    rewards = col(1, 2, 3, 4, 5)
    values = col(0.5, 1.0, 1.5, 2.0, 2.5)
    # next_values: V(s_1), anything (masked by the termination), V(s_3), V(final_obs), V(s_5).
    next_values = col(1.0, 123.0, 2.0, 10.0, 3.0)
    adv = gae(rewards, values, next_values, flags(5, 1), flags(5, 3), GAMMA, LAM)
    # deltas: 1 + .9*1 - .5 = 1.4 | 2 - 1 = 1.0 | 3 + .9*2 - 1.5 = 3.3 | 4 + .9*10 - 2 = 11.0
    #         | 5 + .9*3 - 2.5 = 5.2;  gamma*lambda = 0.72, no credit across t=1 and t=3.
    expected = col(1.4 + 0.72 * 1.0, 1.0, 3.3 + 0.72 * 11.0, 11.0, 5.2)  # 2.12, 1, 11.22, 11, 5.2
    torch.testing.assert_close(adv, expected)


def test_columns_are_independent_and_lambda_one_is_monte_carlo():
    # Column 0 has no episode end: with lambda = 1, A + V is the bootstrapped discounted return.
    T = 4
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[0.3, 0.0], [0.1, 0.0], [-0.2, 0.0], [0.4, 0.0]])
    last = torch.tensor([5.0, 0.0])
    next_values = torch.cat([values[1:], last[None]])
    term = torch.zeros(T, 2, dtype=torch.bool)
    term[3, 1] = True
    adv = gae(rewards, values, next_values, term, torch.zeros_like(term), GAMMA, 1.0)
    ret0 = 1 + 0.9**2 * 2 + 0.9**4 * 5  # r0 + g^2 r2 + g^4 V(s_4)
    torch.testing.assert_close(adv[0, 0] + values[0, 0], torch.tensor(ret0))
    # Column 1: one reward at the terminal step, values 0: returns are discounted 1s.
    torch.testing.assert_close(adv[:, 1], torch.tensor([0.9**3, 0.9**2, 0.9, 1.0]))


def test_lambda_zero_is_one_step_td():
    rewards, values, nv = col(1, 2, 3), col(0.5, 0.25, 1.0), col(2.0, 4.0, 8.0)
    none = flags(3)
    adv = gae(rewards, values, nv, none, none, GAMMA, 0.0)
    torch.testing.assert_close(adv, rewards + GAMMA * nv - values)


def test_vtrace_weights_by_hand():
    # Two steps, no episode end: A_1 = rho_1 d_1 ; A_0 = rho_0 d_0 + g*l*c_0*A_1.
    rewards, values, nv = col(1.0, 2.0), col(0.5, 1.0), col(1.0, 4.0)
    rho, c = col(0.5, 0.8), col(1.0, 0.25)
    none = flags(2)
    adv = gae(rewards, values, nv, none, none, GAMMA, LAM, rho, c)
    d0, d1 = 1 + 0.9 * 1.0 - 0.5, 2 + 0.9 * 4.0 - 1.0  # 1.4, 4.6
    expected = col(0.5 * d0 + 0.72 * 1.0 * (0.8 * d1), 0.8 * d1)
    torch.testing.assert_close(adv, expected)


def test_vtrace_with_unit_ratios_is_gae():
    g = torch.Generator().manual_seed(0)
    T, N = 6, 3
    r, v, nv = (torch.randn(T, N, generator=g) for _ in range(3))
    term = torch.rand(T, N, generator=g) < 0.2
    trunc = (torch.rand(T, N, generator=g) < 0.2) & ~term
    ones = torch.ones(T, N)
    torch.testing.assert_close(
        gae(r, v, nv, term, trunc, 0.99, 0.95, ones, ones), gae(r, v, nv, term, trunc, 0.99, 0.95)
    )


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_truncation_matches_termination_plus_bootstrap_reward(lam):
    # A truncated step is a termination whose reward carries gamma * V(final_obs).
    r, v, nv = col(1, 2, 3), col(0.0, 1.0, 2.0), col(1.0, 7.0, 4.0)
    trunc = flags(3, 1)
    a = gae(r, v, nv, flags(3), trunc, GAMMA, lam)
    b = gae(r + GAMMA * nv * trunc, v, nv, trunc, flags(3), GAMMA, lam)
    torch.testing.assert_close(a, b)


def test_vtrace_impala_and_puffer_forms_by_hand():
    # Four steps, the episode terminates at t=1; rho and c differ (c > rho at t=0 and t=2), so the
    # two policy-gradient forms differ; the value targets are the same recursion in both.
    rewards, values = col(1, 2, 3, 4), col(0.5, 1.0, 1.5, 2.0)
    next_values = col(1.0, 99.0, 2.0, 3.0)  # V(s_1), masked (terminal), V(s_3), bootstrap V(s_4)
    rho, c = col(0.5, 1.0, 0.8, 1.0), col(2.0, 1.0, 1.5, 1.0)
    term, none = flags(4, 1), flags(4)
    # deltas: 1 + .9*1 - .5 = 1.4 | 2 - 1 = 1.0 | 3 + .9*2 - 1.5 = 3.3 | 4 + .9*3 - 2 = 4.7
    # v - V, gamma*lambda = .72: t3: 4.7 | t2: .8*3.3 + .72*1.5*4.7 = 7.716 | t1: 1.0 (terminal)
    #   | t0: .5*1.4 + .72*2*1.0 = 2.14
    targets = col(2.14 + 0.5, 1.0 + 1.0, 7.716 + 1.5, 4.7 + 2.0)
    # impala: rho_t (delta_t + .72 (1 - done_t) (v_{t+1} - V_{t+1})):
    #   t3: 4.7 | t2: .8 (3.3 + .72*4.7) = 5.3472 | t1: 1.0 | t0: .5 (1.4 + .72*1.0) = 1.06
    pg, v = vtrace(rewards, values, next_values, term, none, GAMMA, LAM, rho, c, form="impala")
    torch.testing.assert_close(pg, col(1.06, 1.0, 5.3472, 4.7))
    torch.testing.assert_close(v, targets)
    # puffer: the advantage is v - V itself, continuation weighted by c.
    pg, v = vtrace(rewards, values, next_values, term, none, GAMMA, LAM, rho, c, form="puffer")
    torch.testing.assert_close(pg, col(2.14, 1.0, 7.716, 4.7))
    torch.testing.assert_close(v, targets)


def test_vtrace_impala_form_at_lambda_one_is_the_papers_expression():
    # IMPALA section 4.2: rho_t (r_t + gamma v_{t+1} - V(x_t)), v the V-trace target (v_T = V(s_T)).
    rewards, values = col(1, 2, 3, 4), col(0.5, 1.0, 1.5, 2.0)
    next_values = col(1.0, 99.0, 2.0, 3.0)
    rho, c = col(0.5, 1.0, 0.8, 0.9), col(0.5, 1.0, 0.7, 0.3)
    term, none = flags(4, 1), flags(4)
    pg, v = vtrace(rewards, values, next_values, term, none, GAMMA, 1.0, rho, c)
    v_next = torch.cat([v[1:], col(3.0)])  # v_1, v_2 (masked by the termination), v_3, V(s_4)
    torch.testing.assert_close(pg, rho * (rewards + GAMMA * (~term) * v_next - values))


def test_vtrace_forms_agree_where_rho_equals_c_and_are_gae_at_one():
    g = torch.Generator().manual_seed(1)
    T, N = 6, 3
    r, v, nv = (torch.randn(T, N, generator=g) for _ in range(3))
    term = torch.rand(T, N, generator=g) < 0.2
    trunc = (torch.rand(T, N, generator=g) < 0.2) & ~term
    w = torch.rand(T, N, generator=g)
    a = vtrace(r, v, nv, term, trunc, 0.99, 0.95, w, w, form="impala")
    b = vtrace(r, v, nv, term, trunc, 0.99, 0.95, w, w, form="puffer")
    torch.testing.assert_close(a, b)
    ones = torch.ones(T, N)
    pg, target = vtrace(r, v, nv, term, trunc, 0.99, 0.95, ones, ones)
    adv = gae(r, v, nv, term, trunc, 0.99, 0.95)
    torch.testing.assert_close(pg, adv)
    torch.testing.assert_close(target, adv + v)
