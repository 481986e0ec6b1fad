"""Rainbow: the C51 projection by hand, the double-Q target, every ablation switch changing the
computation it names, replay-ratio accounting, checkpoint round trip, and (slow) CartPole."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents import rainbow
from agents.api import AgentContext
from agents.heads import NoisyLinear, QHead, bind_noise, categorical_projection, reset_noise
from agents.nets import ConvTorso, clip_grad_norm, flatten_parameters
from envs.base import EnvSpec, EnvStep


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    threads fighting other processes make these tests 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SPEC = EnvSpec(game="toy", family="gym", obs_shape=(4,), obs_dtype=torch.float32, num_actions=3, frameskip=1)


def make_agent(n_envs: int = 2, spec: EnvSpec = SPEC, **over) -> rainbow.Agent:
    base = {"num_envs": n_envs, "batch_size": 8, "learning_starts": 0, "buffer_size": 400, "hidden": 16,
            "head_hidden": 16, "replay_ratio": 4.0}  # fmt: skip
    cfg = dataclasses.replace(rainbow.Config(), **{**base, **over})
    return rainbow.Agent(cfg, AgentContext(spec, n_envs, torch.device("cpu"), 10_000))


def toy_step(n: int, t: int, obs_dim: int = 4) -> EnvStep:
    """A deterministic stream: obs depend on t, reward 1, env 0 terminates every 5 steps, env 1
    is truncated every 7."""
    obs = torch.arange(n * obs_dim, dtype=torch.float32).view(n, obs_dim) * 0.01 + t * 0.1
    term = torch.zeros(n, dtype=torch.bool)
    trunc = torch.zeros(n, dtype=torch.bool)
    term[0] = t % 5 == 4
    if n > 1:
        trunc[1] = t % 7 == 6
    return EnvStep(
        obs=obs, reward=torch.ones(n), terminated=term, truncated=trunc, done=term | trunc, final_obs=obs + 5
    )


def drive(agent: rainbow.Agent, steps: int) -> list[dict]:
    n = agent.n
    obs = toy_step(n, 0).obs
    out = []
    for t in range(steps):
        agent.act(obs)
        step = toy_step(n, t + 1)
        agent.observe(step)
        obs = step.obs
        m = agent.update()
        if m is not None:
            out.append(m)
    return out


# --- C51 projection ------------------------------------------------------------------------

SUPPORT = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])


def dense_projection(p, r, d, z):
    """Reference: each shifted atom gives p_j * max(0, 1 - |Tz_j - z_i| / dz) to point i."""
    tz = (r[:, None] + d[:, None] * z).clamp(z[0], z[-1])
    w = (1 - (tz[:, None, :] - z[None, :, None]).abs() / (z[1] - z[0])).clamp(min=0)
    return (w * p[:, None, :]).sum(-1)


def test_categorical_projection_hand_computed():
    p = torch.tensor(
        [[0.1, 0.2, 0.3, 0.2, 0.2], [0.1, 0.2, 0.3, 0.2, 0.2], [0.1, 0.2, 0.3, 0.2, 0.2], [0.2] * 5]
    )
    r = torch.tensor([0.5, -3.0, 0.3, 1.0])
    d = torch.tensor([1.0, 0.5, 0.0, 1.0])
    expect = torch.tensor([
        # Tz = [-1.5, -0.5, 0.5, 1.5, 2.5 -> 2]: each of the first four splits half/half
        [0.05, 0.05 + 0.1, 0.1 + 0.15, 0.15 + 0.1, 0.1 + 0.2],
        # Tz = [-4, -3.5, -3, -2.5, -2]: all below v_min, clipped onto -2
        [1.0, 0.0, 0.0, 0.0, 0.0],
        # terminal (discount 0): every atom at r = 0.3 -> 0.7 on 0, 0.3 on 1
        [0.0, 0.0, 0.7, 0.3, 0.0],
        # Tz = [-1, 0, 1, 2, 3 -> 2]: atoms exactly on support points (l == u) keep all their mass
        [0.0, 0.2, 0.2, 0.2, 0.4],
    ])  # fmt: skip
    got = categorical_projection(p, r, d, SUPPORT)
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got, dense_projection(p, r, d, SUPPORT))


def test_categorical_projection_matches_dense_reference_and_keeps_mass():
    g = torch.Generator().manual_seed(0)
    z = torch.linspace(-10, 10, 51)
    p = torch.rand(64, 51, generator=g).softmax(-1)
    r = torch.randn(64, generator=g) * 8
    d = torch.rand(64, generator=g) * (torch.rand(64, generator=g) > 0.2)
    got = categorical_projection(p, r, d, z)
    torch.testing.assert_close(got, dense_projection(p, r, d, z))
    torch.testing.assert_close(got.sum(-1), torch.ones(64))
    # The projected mean equals the shifted mean wherever no atom was clipped.
    inside = ((r[:, None] + d[:, None] * z).abs() <= 10).all(-1)
    torch.testing.assert_close(
        (got * z).sum(-1)[inside], (r + d * (p * z).sum(-1))[inside], atol=1e-4, rtol=0
    )


# --- double Q ------------------------------------------------------------------------------


def test_bootstrap_actions_double_uses_online_argmax():
    online = torch.tensor([[1.0, 5.0, 0.0], [0.0, 0.0, 2.0]]).unsqueeze(-1)  # [B, A, 1]
    target = torch.tensor([[9.0, 0.0, 0.0], [3.0, 0.0, 0.0]]).unsqueeze(-1)
    assert rainbow.bootstrap_actions(online, target, None).tolist() == [1, 2]  # double
    assert rainbow.bootstrap_actions(None, target, None).tolist() == [0, 0]  # plain DQN
    # The TD target then evaluates the *target* net at the online argmax.
    a_star = torch.tensor([1, 2])
    loss, td, _ = rainbow.q_loss(
        torch.zeros(2), target.squeeze(-1), a_star, torch.ones(2), torch.full((2,), 0.5), "mse"
    )
    torch.testing.assert_close(td, torch.tensor([1.0, 1.0]))  # 1 + 0.5 * 0 for both


@pytest.mark.parametrize("double", [True, False])
def test_agent_double_switch(double):
    torch.manual_seed(0)
    agent = make_agent(double=double, noisy=False)
    drive(agent, 10)
    with torch.no_grad():  # make online and target disagree
        for p in agent.target.parameters():
            p.add_(torch.randn_like(p))
    batch = agent.replay.sample(64)
    _, a_star = agent.bootstrap(batch.next_obs)
    q_on = rainbow.q_values(agent.online(batch.next_obs), agent.support).argmax(-1)
    q_tg = rainbow.q_values(agent.target(batch.next_obs), agent.support).argmax(-1)
    assert not torch.equal(q_on, q_tg)  # the switch is observable on this batch
    assert torch.equal(a_star, q_on if double else q_tg)


# --- each switch changes the computation it names ------------------------------------------


def test_dueling_switch():
    torch.manual_seed(0)
    duel = QHead(8, 3, atoms=5, hidden=4, dueling=True, noisy=False)
    plain = QHead(8, 3, atoms=5, hidden=4, dueling=False, noisy=False)
    x = torch.randn(6, 8)
    out = duel(x)
    assert out.shape == plain(x).shape == (6, 3, 5)
    assert plain.value is None
    # Q = V + A - mean_a A  =>  mean over actions of Q is exactly V.
    torch.testing.assert_close(out.mean(-2), duel.value(x))
    assert make_agent(dueling=False).online.head.value is None


def test_noisy_switch():
    torch.manual_seed(0)
    noisy, plain = make_agent(noisy=True), make_agent(noisy=False)
    assert any(isinstance(m, NoisyLinear) for m in noisy.online.modules())
    assert not any(isinstance(m, NoisyLinear) for m in plain.online.modules())
    assert noisy.epsilon() == 0.0 and plain.epsilon() == 1.0
    plain.env_steps = plain.cfg.eps_decay_steps // 2
    assert plain.epsilon() == pytest.approx((1.0 + 0.01) / 2)
    # Noise changes the net between acting steps; evaluation uses the noise-free mean weights.
    obs = torch.randn(64, 4)
    q1 = noisy.online(obs)
    reset_noise(noisy.online)
    assert not torch.allclose(q1, noisy.online(obs))
    noisy.online.eval()
    e1 = noisy.online(obs)
    reset_noise(noisy.online)
    torch.testing.assert_close(e1, noisy.online(obs))
    noisy.online.train()


def test_distributional_switch():
    torch.manual_seed(0)
    dist, scalar = make_agent(distributional=True), make_agent(distributional=False)
    obs = torch.randn(5, 4)
    assert dist.online(obs).shape == (5, 3, 51) and scalar.online(obs).shape == (5, 3, 1)
    for agent in (dist, scalar):
        drive(agent, 12)
    # C51: the loss is the cross-entropy to the projected target; scalar: Huber on the TD error.
    batch = dist.replay.sample(8)
    torch.manual_seed(3)
    loss, prio, _ = dist.loss(batch)
    torch.manual_seed(3)
    out = dist.online(batch.obs)
    next_target, a_star = dist.bootstrap(batch.next_obs)
    b = torch.arange(8)
    m = categorical_projection(next_target[b, a_star].softmax(-1), batch.reward, batch.discount, dist.support)
    ce = -(m * out[b, batch.action].log_softmax(-1)).sum(-1)
    torch.testing.assert_close(loss, (batch.weight * ce).mean())
    kl = (m * (m.clamp(min=1e-30).log() - out[b, batch.action].log_softmax(-1))).sum(-1)
    torch.testing.assert_close(prio, kl.detach(), atol=1e-5, rtol=1e-4)
    batch = scalar.replay.sample(8)
    loss, prio, _ = scalar.loss(batch)
    out = scalar.online(batch.obs)
    next_target, a_star = scalar.bootstrap(batch.next_obs)
    target = batch.reward + batch.discount * next_target[b, a_star, 0]
    td = out[b, batch.action, 0] - target
    huber = torch.where(td.abs() < 1, 0.5 * td**2, td.abs() - 0.5)
    torch.testing.assert_close(loss, (batch.weight * huber).mean())
    torch.testing.assert_close(prio, td.abs().detach())


def test_per_switch():
    torch.manual_seed(0)
    per, uni = make_agent(per=True), make_agent(per=False)
    for agent in (per, uni):
        drive(agent, 30)
    live = per.replay.tree.leaves > 0
    assert per.replay.tree.leaves[live].unique().numel() > 1  # priorities from the losses
    assert per.replay.sample(16, beta=0.4).weight.min() < 1.0
    assert uni.replay.tree.leaves[uni.replay.tree.leaves > 0].unique().tolist() == [1.0]
    assert torch.equal(uni.replay.sample(16, beta=0.4).weight, torch.ones(16))
    # beta anneals 0.4 -> 1 over the budget (10K env steps here)
    per.env_steps = 5_000
    assert per.beta() == pytest.approx(0.7)


@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_switch(n_step):
    torch.manual_seed(0)
    agent = make_agent(n_envs=1, n_step=n_step, gamma=0.9, reward_clip=0.0)
    drive(agent, 3)  # toy stream: reward 1, env 0 terminates at steps 4, 9, ...
    batch = agent.replay.gather(torch.tensor([0]))
    assert batch.reward.item() == pytest.approx(sum(0.9**k for k in range(n_step)))
    assert batch.discount.item() == pytest.approx(0.9**n_step)


def test_reward_clip_and_scale():
    agent = make_agent(n_envs=1, reward_clip=0.5, reward_scale=3.0, n_step=1)
    drive(agent, 3)
    assert agent.replay.reward[:3, 0].tolist() == [1.5, 1.5, 1.5]


# --- vectorisation and reuse accounting ---------------------------------------------------


@pytest.mark.parametrize("n_envs,batch,ratio", [(4, 8, 3.0), (1, 32, 8.0), (16, 8, 0.5)])
def test_replay_ratio_accounting(n_envs, batch, ratio):
    torch.manual_seed(0)
    starts = 40
    agent = make_agent(
        n_envs=n_envs, batch_size=batch, replay_ratio=ratio, learning_starts=starts, buffer_size=2000
    )
    steps = 100
    metrics = drive(agent, steps)
    samples = sum(m["grad_samples"] for m in metrics)
    assert all(m["grad_samples"] == m["grad_steps"] * batch for m in metrics)
    first = -(-starts // n_envs)  # vector steps before learning starts
    learned_env_steps = (steps - first + 1) * n_envs
    # == R up to one batch (credit left over, or the first step with no complete window yet)
    assert abs(samples - ratio * learned_env_steps) <= batch
    if n_envs == 1:  # the CleanRL setting: one update of 32 every 4 env steps
        assert all(m["grad_steps"] == 1 for m in metrics)
        assert len(metrics) == learned_env_steps // 4


def test_eval_act_does_not_touch_training_state():
    torch.manual_seed(0)
    agent = make_agent()
    drive(agent, 5)
    steps, leaves = agent.replay.steps, agent.replay.tree.leaves.clone()
    a = agent.act(torch.randn(2, 4), explore=False)
    assert a.shape == (2,) and a.dtype == torch.int64
    assert agent.replay.steps == steps and torch.equal(agent.replay.tree.leaves, leaves)
    assert agent.online.training


def test_uint8_frames_stay_uint8_and_conv_torso():
    spec = EnvSpec(
        game="toy-img", family="ale", obs_shape=(4, 84, 84), obs_dtype=torch.uint8, num_actions=4, frameskip=4
    )
    agent = make_agent(spec=spec, encoder="nature", head_hidden=32, buffer_size=64)
    obs = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    agent.act(obs)
    assert agent.replay.obs.dtype == torch.uint8
    assert isinstance(agent.online.torso, ConvTorso) and agent.online.torso.out_dim == 3136


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    a = make_agent()
    drive(a, 20)
    b = make_agent()
    b.load_state_dict(a.state_dict())
    assert (b.env_steps, b.grad_steps, b.credit) == (a.env_steps, a.grad_steps, a.credit)
    torch.manual_seed(7)
    ma = drive(a, 5)
    torch.manual_seed(7)
    mb = drive(b, 5)
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]


def test_flat_parameters_same_forward_gradients_and_adam_steps():
    """flatten_parameters changes where parameters live, not what the net or Adam computes."""
    torch.manual_seed(0)
    ref = rainbow.QNetwork(SPEC, dataclasses.replace(rainbow.Config(), hidden=16, head_hidden=8))
    net = rainbow.QNetwork(SPEC, dataclasses.replace(rainbow.Config(), hidden=16, head_hidden=8))
    net.load_state_dict(ref.state_dict())
    x = torch.randn(5, 4)
    expect = ref(x)
    flat = flatten_parameters(net)
    assert flat.numel() == sum(p.numel() for p in ref.parameters())
    torch.testing.assert_close(net(x), expect, rtol=0, atol=0)
    for p in net.parameters():  # every parameter is a view into flat, its gradient into flat.grad
        assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt = torch.optim.Adam([flat], lr=1e-2)
    for _ in range(3):
        opt_ref.zero_grad()
        loss = ref(x).square().mean()
        loss.backward()
        norm_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
        opt_ref.step()
        flat.grad.zero_()
        net(x).square().mean().backward()
        norm = clip_grad_norm(flat.grad, 0.01)
        opt.step()
        torch.testing.assert_close(norm, norm_ref)
        assert norm > 0.01  # the clip was active
    for (name, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    net.load_state_dict({k: v + 1 for k, v in ref.state_dict().items()})  # loads into the views
    torch.testing.assert_close(flat, torch.cat([p.detach().reshape(-1) + 1 for p in ref.parameters()]))


def test_bound_noise_equals_per_layer_noise():
    """reset_noise on bind_noise's flat tensor draws what reset_noise on the net draws."""
    a = QHead(8, 3, atoms=5, hidden=6, dueling=True, noisy=True)
    b = QHead(8, 3, atoms=5, hidden=6, dueling=True, noisy=True)
    b.load_state_dict(a.state_dict())
    flat = bind_noise(b)
    assert flat.numel() == sum(m.in_features + m.out_features for m in a.modules() if isinstance(m, NoisyLinear))
    torch.manual_seed(3)
    reset_noise(a)
    torch.manual_seed(3)
    reset_noise(flat)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    h = torch.randn(4, 8)
    torch.testing.assert_close(a(h), b(h))


def test_fused_compiled_step_matches_eager():
    """The fused, compiled gradient step (agents.fused) runs the eager step's maths: with inductor
    drawing random numbers as eager does, it draws the same noise and batches, takes the same Adam
    steps and writes the same priorities, for 100 vector steps (~45 updates, four target copies). Tolerance rtol 1e-4 / atol 1e-5: the fused kernels sum in another order (float32
    reassociation, ~1e-7 per op), and Adam's step m / (sqrt(v) + eps) amplifies a tiny difference
    in a near-zero gradient coordinate up to lr-sized changes only where sqrt(v) ~ eps."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    over = {"n_envs": 2, "batch_size": 16, "buffer_size": 200, "target_update": 10}
    torch.manual_seed(0)
    eager = make_agent(**over)
    torch.manual_seed(0)
    comp = make_agent(compile="on", **over)
    assert comp._step.compiled and not eager._step.compiled
    with inductor_config.patch(fallback_random=True):
        for t in range(100):
            metrics = []
            for agent in (eager, comp):
                torch.manual_seed(t)
                obs = toy_step(2, t).obs
                agent.act(obs)
                agent.observe(toy_step(2, t + 1))
                metrics.append(agent.update())
            if metrics[0]:
                assert metrics[1]["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-4, abs=1e-6)
                torch.testing.assert_close(comp.flat, eager.flat, rtol=1e-4, atol=1e-5)
    assert comp.grad_steps == eager.grad_steps > 40
    torch.testing.assert_close(comp.replay.tree.leaves, eager.replay.tree.leaves, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(comp.target.state_dict(), eager.target.state_dict(), rtol=1e-4, atol=1e-5)
    s_c, s_e = comp.opt.state[comp.flat], eager.opt.state[eager.flat]  # one Adam state for both paths
    assert float(s_c["step"]) == float(s_e["step"]) == comp.grad_steps
    torch.testing.assert_close(s_c["exp_avg_sq"], s_e["exp_avg_sq"], rtol=1e-3, atol=1e-9)
    torch._dynamo.reset()


def test_compile_auto_only_for_long_runs():
    """compile=auto compiles where ~20 s of compiling pays back: every budget given long enough."""
    from agents.fused import resolve_compile

    assert resolve_compile("auto", 2_000_000, None) and resolve_compile("auto", None, 600.0)
    assert not resolve_compile("auto", 50_000, None) and not resolve_compile("auto", None, 60.0)
    assert not resolve_compile("auto", 10_000_000, 60.0)  # the 60 s budget ends the run first
    assert not resolve_compile("auto", None, None)  # driven by hand
    assert resolve_compile("on", 1, None) and not resolve_compile("off", 10**9, 10**5)
    assert not make_agent()._step.compiled  # tests' hand-driven agents stay eager


def test_learns_on_real_env_smoke():
    """A few hundred CartPole steps through the real env: finite losses, reuse ratio as asked."""
    import envs

    torch.manual_seed(0)
    env = envs.make("gym:CartPole-v1", 4)
    cfg = dataclasses.replace(
        rainbow.Config(), **{**rainbow.PRESETS["gym"], "num_envs": 4, "learning_starts": 200}
    )
    agent = rainbow.Agent(cfg, AgentContext(env.spec, 4, torch.device("cpu"), 2_000))
    obs, samples = env.reset(0), 0
    for _ in range(150):
        step = env.step(agent.act(obs))
        agent.observe(step)
        obs = step.obs
        m = agent.update()
        if m:
            assert torch.isfinite(torch.tensor(m["loss"]))
            samples += m["grad_samples"]
    env.close()
    assert abs(samples - cfg.replay_ratio * (600 - 200 + 4)) <= cfg.batch_size


@pytest.mark.slow
def test_cartpole_solves():
    """The issue's bar: mean return >= 475 within 300K env steps (here one seed, the harness's
    own loop and rolling mean of the last 20 episodes)."""
    import envs

    torch.manual_seed(1)
    cfg = dataclasses.replace(rainbow.Config(), **rainbow.PRESETS["gym"])
    env = envs.make("gym:CartPole-v1", cfg.num_envs)
    agent = rainbow.Agent(cfg, AgentContext(env.spec, cfg.num_envs, torch.device("cpu"), 300_000))
    obs = env.reset(1)
    ret = torch.zeros(cfg.num_envs)
    finished: list[float] = []
    best = 0.0
    for _ in range(300_000 // cfg.num_envs):
        step = env.step(agent.act(obs))
        agent.observe(step)
        agent.update()
        obs = step.obs
        ret += step.reward
        for i in step.done.nonzero().flatten().tolist():
            finished.append(float(ret[i]))
            ret[i] = 0
        if len(finished) >= 20:
            best = max(best, sum(finished[-20:]) / 20)
            if best >= 475:
                break
    env.close()
    assert best >= 475, best
