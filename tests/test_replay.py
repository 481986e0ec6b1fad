"""Replay memory: sum tree arithmetic and sampling law, n-step windows across episode ends
(per env), ring wrap-around against a brute-force reference, prioritised weights."""

from __future__ import annotations

import pytest
import torch

from agents.replay import Replay, SumTree, n_step_return

# Chi-square critical values at p = 0.001 (any statistics table, e.g. NIST/SEMATECH e-Handbook
# 1.3.6.7.4), so the test fails by chance about once in a thousand runs with a fresh seed and
# deterministically never with the fixed seeds below.
CHI2_CRIT_P001 = {7: 24.322, 8: 26.124, 9: 27.877, 15: 37.697}


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def assert_tree_consistent(tree: SumTree) -> None:
    k = tree.fanout
    for lvl in range(len(tree.levels) - 1):
        sums = tree.levels[lvl + 1].view(-1, k).sum(-1)
        torch.testing.assert_close(tree.levels[lvl][: sums.numel()], sums)
        assert not tree.levels[lvl][sums.numel() :].any()  # padding stays empty


# --- sum tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity,fanout", [(1, 2), (7, 2), (1000, 8), (4096, 32), (33, 32)])
def test_sum_tree_sums_and_updates(capacity, fanout):
    g = torch.Generator().manual_seed(0)
    tree = SumTree(capacity, fanout)
    values = torch.rand(capacity, generator=g, dtype=torch.float64)
    tree.update(torch.arange(capacity), values)
    assert_tree_consistent(tree)
    torch.testing.assert_close(tree.total, values.sum())
    # Overwrite a random subset (with repeats of equal values) and check again.
    idx = torch.randint(capacity, (max(1, capacity // 3),), generator=g)
    new = idx.double() * 0.5
    tree.update(idx, new)
    values[idx] = new
    assert_tree_consistent(tree)
    torch.testing.assert_close(tree.leaves, values)
    torch.testing.assert_close(tree.total, values.sum())


@pytest.mark.parametrize("capacity,fanout", [(7, 2), (1000, 8), (4096, 32)])
def test_sum_tree_range_update_equals_indexed_update(capacity, fanout):
    g = torch.Generator().manual_seed(2)
    tree = SumTree(capacity, fanout)
    values = torch.rand(capacity, generator=g, dtype=torch.float64)
    tree.update(torch.arange(capacity), values)
    for start, length in [(0, 1), (0, capacity), (capacity - 3, 3), (capacity // 3, capacity // 2 + 1)]:
        new = torch.rand(length, generator=g, dtype=torch.float64)
        tree.update_range(start, new)
        values[start : start + length] = new
        assert_tree_consistent(tree)
        torch.testing.assert_close(tree.leaves, values)
        torch.testing.assert_close(tree.total, values.sum())


def test_sum_tree_find_matches_prefix_sums():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(500, generator=g, dtype=torch.float64)
    values[values < 0.3] = 0.0  # zero leaves must never be found
    tree = SumTree(500, fanout=4)
    tree.update(torch.arange(500), values)
    mass = torch.rand(20_000, generator=g, dtype=torch.float64) * tree.total
    expect = torch.searchsorted(values.cumsum(0), mass, right=True)
    got = tree.find(mass)
    assert torch.equal(got, expect)
    # Masses at and past the total (rounding) land on the last positive leaf, never a zero one.
    last_pos = int(values.nonzero().max())
    edge = tree.find(torch.stack([tree.total, tree.total * (1 + 1e-9)]))
    assert edge.tolist() == [last_pos, last_pos]


def test_sum_tree_sampling_proportions_chi_square():
    torch.manual_seed(0)
    prio = torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 7.0, 0.0, 8.0, 0.5], dtype=torch.float64)
    tree = SumTree(prio.numel(), fanout=4)
    tree.update(torch.arange(prio.numel()), prio)
    draws = torch.cat([tree.sample(1000) for _ in range(100)])  # 10^5 draws
    counts = torch.bincount(draws, minlength=prio.numel()).double()
    assert counts[prio == 0].sum() == 0
    pos = prio > 0
    probs = prio[pos] / prio.sum()
    stat = chi_square(counts[pos], probs)
    df = int(pos.sum()) - 1
    assert stat < CHI2_CRIT_P001[df], stat
    # The same statistic rejects a law the tree does not follow (the test has power).
    uniform = torch.full_like(probs, 1.0 / probs.numel())
    assert chi_square(counts[pos], uniform) > 100 * CHI2_CRIT_P001[df]


# --- n-step returns ------------------------------------------------------------------------


def test_n_step_return_pure_function():
    r = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    term = torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    trunc = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    ret, disc, last = n_step_return(r, term, trunc, gamma=0.5)
    torch.testing.assert_close(ret, torch.tensor([1 + 1 + 1.0, 1 + 1.0, 1.0, 1.0]))
    torch.testing.assert_close(disc, torch.tensor([0.125, 0.0, 0.5, 0.0]))
    assert last.tolist() == [2, 1, 0, 0]


def _obs(t: int, e: int) -> float:
    return 10.0 * t + e  # the observation acted on at step t in env e


def _final(t: int, e: int) -> float:
    return 1000.0 + 10.0 * t + e  # the true final observation of an episode cut at step t


def test_n_step_windows_three_envs_terminate_truncate():
    """n=3, gamma=0.5, 8 vector steps. env0 never ends; env1 terminates at t=2; env2 is
    truncated at t=1 (bootstrap from its final obs) and terminated+truncated at t=4 (terminal
    wins). Every value below is worked out by hand."""
    n_envs, steps = 3, 8
    rb = Replay(3 * 20, n_envs, (1,), torch.float32, n_step=3, gamma=0.5)
    term = torch.zeros(steps, n_envs, dtype=torch.bool)
    trunc = torch.zeros(steps, n_envs, dtype=torch.bool)
    term[2, 1] = True
    trunc[1, 2] = True
    term[4, 2] = trunc[4, 2] = True
    rewards = torch.tensor([[t + 1.0, 1.0, 2.0] for t in range(steps)])  # env0: 1,2,3..; env1: 1; env2: 2
    for t in range(steps):
        rb.store_obs(torch.tensor([[_obs(t, e)] for e in range(n_envs)]))
        ended = term[t] | trunc[t]
        final = torch.tensor([[_final(t, e) if ended[e] else _obs(t + 1, e)] for e in range(n_envs)])
        rb.store_outcome(torch.full((n_envs,), t), rewards[t], term[t], trunc[t], final)

    def slot(t, e):
        return t * n_envs + e

    # Windows complete once the observation n rows later is stored: rows 0..4 after 8 steps.
    live = rb.tree.leaves.view(-1, n_envs)[:steps] > 0
    assert live[:5].all() and not live[5:].any()
    assert rb.num_samplable == 5 * n_envs

    cases = {  # (t, env): (return, discount, bootstrap obs or None when discount == 0)
        (0, 0): (1 + 0.5 * 2 + 0.25 * 3, 0.125, _obs(3, 0)),
        (4, 0): (5 + 0.5 * 6 + 0.25 * 7, 0.125, _obs(7, 0)),
        (0, 1): (1 + 0.5 + 0.25, 0.0, None),
        (1, 1): (1 + 0.5, 0.0, None),
        (2, 1): (1.0, 0.0, None),
        (3, 1): (1 + 0.5 + 0.25, 0.125, _obs(6, 1)),  # new episode after the termination
        (0, 2): (2 + 1.0, 0.25, _final(1, 2)),  # truncation: true final obs, not the reset obs
        (1, 2): (2.0, 0.5, _final(1, 2)),
        (2, 2): (2 + 1 + 0.5, 0.0, None),  # terminated and truncated at t=4: no bootstrap
        (4, 2): (2.0, 0.0, None),
    }
    idx = torch.tensor([slot(t, e) for t, e in cases])
    b = rb.gather(idx)
    for i, ((t, e), (ret, disc, boot)) in enumerate(cases.items()):
        assert b.obs[i, 0] == _obs(t, e)
        assert b.action[i] == t
        assert b.reward[i].item() == pytest.approx(ret), (t, e)
        assert b.discount[i].item() == pytest.approx(disc), (t, e)
        if boot is not None:
            assert b.next_obs[i, 0] == boot, (t, e)


def _reference(history, t, e, n, gamma):
    """Brute-force n-step transition from the full history (python lists)."""
    ret, k = 0.0, 0
    while True:
        r, term, trunc, final = history[t + k][e][1:]
        ret += gamma**k * r
        if term:
            return ret, 0.0, None
        if trunc:
            return ret, gamma ** (k + 1), final
        if k == n - 1:
            return ret, gamma**n, history[t + n][e][0]
        k += 1


@pytest.mark.parametrize("final_capacity", [400, 4 * 4])
def test_ring_wraparound_matches_reference(final_capacity):
    """Random episode ends, a ring that wraps several times and (second case) a final-obs store
    at its minimum size so it evicts: every samplable slot must equal the reference, and every
    slot whose window is incomplete or lost must be unsamplable."""
    g = torch.Generator().manual_seed(3)
    n_envs, n, gamma, rows = 4, 3, 0.9, 30
    lost = 0
    rb = Replay(rows * n_envs, n_envs, (2,), torch.float32, n_step=n, gamma=gamma,
                final_capacity=final_capacity)  # fmt: skip
    history = []
    for t in range(100):
        obs = torch.tensor([[_obs(t, e), -e] for e in range(n_envs)])
        rb.store_obs(obs)
        term = torch.rand(n_envs, generator=g) < 0.15
        trunc = torch.rand(n_envs, generator=g) < 0.3
        rew = torch.randn(n_envs, generator=g)
        final = torch.tensor([[_final(t, e), -e] for e in range(n_envs)])
        rb.store_outcome(torch.zeros(n_envs, dtype=torch.int64), rew, term, trunc, final)
        history.append([(obs[e], float(rew[e]), bool(term[e]), bool(trunc[e]), final[e])
                        for e in range(n_envs)])  # fmt: skip
        if t < n + 2:
            continue
        live = (rb.tree.leaves > 0).nonzero().squeeze(1)
        b = rb.gather(live)
        for i, s in enumerate(live.tolist()):
            row, e = divmod(s, n_envs)
            # the step this row holds: the latest t' <= t with t' % rows == row
            t0 = t - ((t - row) % rows)
            assert t0 + n <= t + 1, "an incomplete window is samplable"
            ret, disc, boot = _reference(history, t0, e, n, gamma)
            assert b.obs[i, 0] == _obs(t0, e)
            assert b.reward[i].item() == pytest.approx(ret, abs=1e-5)
            assert b.discount[i].item() == pytest.approx(disc, abs=1e-6)
            if boot is not None:
                assert torch.equal(b.next_obs[i], boot)
        lost = max(lost, rb.num_samplable - live.numel())
    # Nothing is lost with a large final store; the minimal one evicts and retires windows.
    assert (lost == 0) == (final_capacity == 400), lost


def test_uint8_observations_stay_uint8():
    rb = Replay(64, 2, (4, 84, 84), torch.uint8, n_step=1)
    for t in range(5):
        rb.store_obs(torch.full((2, 4, 84, 84), t, dtype=torch.uint8))
        no = torch.zeros(2, dtype=torch.bool)
        rb.store_outcome(torch.zeros(2, dtype=torch.int64), torch.zeros(2), no, no)
    assert rb.obs.dtype == torch.uint8
    b = rb.sample(8)
    assert b.obs.dtype == torch.uint8 and b.next_obs.dtype == torch.uint8
    assert torch.equal(b.next_obs[:, 0, 0, 0].long(), b.obs[:, 0, 0, 0].long() + 1)


# --- prioritised replay --------------------------------------------------------------------


def _fill(rb: Replay, steps: int) -> None:
    n_envs = rb.num_envs
    for t in range(steps):
        rb.store_obs(torch.full((n_envs, 1), float(t)))
        no = torch.zeros(n_envs, dtype=torch.bool)
        rb.store_outcome(torch.zeros(n_envs, dtype=torch.int64), torch.ones(n_envs), no, no)


def test_prioritised_sampling_weights_and_max_priority():
    torch.manual_seed(0)
    rb = Replay(2 * 16, 2, (1,), torch.float32, n_step=1, prioritized=True, alpha=0.5, priority_eps=0.0)
    _fill(rb, 5)  # rows 0..3 complete -> 8 slots, all at the initial max priority 1
    live = (rb.tree.leaves > 0).nonzero().squeeze(1)
    assert live.tolist() == list(range(8))
    prio = torch.tensor([1.0, 4.0, 9.0, 16.0, 1.0, 1.0, 1.0, 1.0])
    rb.update_priorities(live, prio)
    torch.testing.assert_close(rb.tree.leaves[:8], prio.double().sqrt())  # alpha = 0.5
    assert rb.max_priority.item() == 16.0
    b = rb.sample(64, beta=0.5)
    p = rb.tree.leaves[b.idx] / rb.tree.total
    w = p.pow(-0.5)
    torch.testing.assert_close(b.weight, (w / w.max()).float())
    # A new window enters at the largest priority seen so far, 16 -> leaf 16**0.5 = 4.
    _fill(rb, 1)
    assert rb.tree.leaves[8].item() == 4.0
    # Sampling follows the priorities: chi-square over 10^5 draws.
    draws = torch.cat([rb.sample(1000).idx for _ in range(100)])  # 10^5 draws
    counts = torch.bincount(draws, minlength=rb.capacity).double()
    leaves = rb.tree.leaves
    pos = leaves > 0
    assert counts[~pos].sum() == 0
    stat = chi_square(counts[pos], leaves[pos] / leaves.sum())
    assert stat < CHI2_CRIT_P001[int(pos.sum()) - 1], stat


def test_uniform_replay_ignores_priorities():
    rb = Replay(2 * 16, 2, (1,), torch.float32, n_step=1, prioritized=False)
    _fill(rb, 5)
    before = rb.tree.leaves.clone()
    rb.update_priorities(torch.arange(4), torch.full((4,), 100.0))
    assert torch.equal(rb.tree.leaves, before)
    assert torch.equal(rb.sample(16).weight, torch.ones(16))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    rb = Replay(2 * 16, 2, (1,), torch.float32, n_step=2, prioritized=True)
    _fill(rb, 9)
    rb.update_priorities(torch.arange(6), torch.arange(6).double())
    rb2 = Replay(2 * 16, 2, (1,), torch.float32, n_step=2, prioritized=True)
    rb2.load_state_dict(rb.state_dict())
    assert_tree_consistent(rb2.tree)
    torch.testing.assert_close(rb2.tree.levels[0], rb.tree.levels[0])
    torch.manual_seed(5)
    a = rb.sample(8, beta=0.4)
    torch.manual_seed(5)
    b = rb2.sample(8, beta=0.4)
    assert torch.equal(a.idx, b.idx) and torch.equal(a.next_obs, b.next_obs)
