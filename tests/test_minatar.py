"""MinAtar (issue 16): the adapter against minatar.Environment driven by hand, the small-image
torsos, and inactive agent options recorded instead of silently ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from minatar import Environment

import envs
from agents import btr, ppo, rainbow
from agents.nets import MinAtarCNN, SmallImpalaCNN, encoder_kind, make_encoder
from bench.config import RunConfig, resolve_agent_config
from bench.errors import UserError
from bench.harness import EpisodeTracker, train
from envs.base import EnvSpec
from envs.minatar import GAMES, MinAtarEnv, env_seeds

CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}


def reference(game: str, seed: int, n: int) -> list[Environment]:
    """``n`` minatar.Environment as the adapter seeds them for run seed ``seed``."""
    refs = []
    for s in env_seeds(seed, n):
        e = Environment(game)
        e.seed(s)
        e.reset()
        refs.append(e)
    return refs


def chw(e: Environment) -> torch.Tensor:
    return torch.from_numpy(e.state().transpose(2, 0, 1).copy())  # [C, 10, 10]


@pytest.mark.parametrize("game", GAMES)
def test_spaces_dtypes_and_channel_order(game):
    env = envs.make(f"minatar:{game}", 3)
    c = CHANNELS[game]
    s = env.spec
    assert (s.family, s.obs_shape, s.obs_dtype) == ("minatar", (c, 10, 10), torch.bool)
    assert (s.num_actions, s.frameskip) == (6, 1)
    obs = env.reset(4)
    assert obs.shape == (3, c, 10, 10) and obs.dtype == torch.bool
    for i, e in enumerate(reference(game, 4, 3)):  # channels-first copy of minatar's [10, 10, C]
        assert torch.equal(obs[i], chw(e))
    step = env.step(torch.tensor([0, 1, 2]))
    assert step.obs.shape == step.final_obs.shape == (3, c, 10, 10) and step.reward.dtype == torch.float32
    for m in (step.terminated, step.truncated, step.done):
        assert m.dtype == torch.bool and m.shape == (3,)


def test_protocol_card():
    p = envs.make("minatar:breakout", 1).spec.protocol
    assert p["sticky_actions"] == 0.1 and p["difficulty_ramping"] is True and p["frameskip"] == 1
    assert p["action_set"].startswith("full (6 actions") and p["minimal_action_set"] == [0, 1, 3]
    assert p["episode_cap"].startswith("27000 env steps, as truncation")


@pytest.mark.parametrize("game", ["minatar:breakout", "minatar:seaquest"])
def test_same_seed_same_observations(game):
    def rollout(seed):
        env = envs.make(game, 4)
        obs = [env.reset(seed).clone()]
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            obs.append(env.step(torch.randint(6, (4,), generator=g)).obs.clone())
        return torch.stack(obs)

    a = rollout(7)
    assert torch.equal(a, rollout(7)) and not torch.equal(a, rollout(8))
    env = envs.make(game, 4)  # a seeded reset starts over, whatever ran before
    env.reset(3)
    for _ in range(20):
        env.step(torch.full((4,), 5))
    assert torch.equal(env.reset(7), a[0])


@pytest.mark.parametrize("p", [0.1, 0.0])
def test_sticky_actions_repeat_the_previous_action(p):
    # Ask every step for an action other than the one last executed (minatar's last_action): the
    # env executes the previous one instead with probability p, which last_action then shows.
    env = MinAtarEnv("minatar:space_invaders", 64, sticky_action_prob=p)
    assert env.spec.protocol["sticky_actions"] == p
    env.reset(0)
    repeats = draws = 0
    for _ in range(100):
        want = torch.tensor([(e.last_action + 1) % 6 for e in env._envs])
        env.step(want)
        repeats += sum(e.last_action != a for e, a in zip(env._envs, want.tolist()))
        draws += 64
    # 6400 Bernoulli(p) draws: sd 0.0038 at p = 0.1; 0.02 is over 5 sd.
    assert abs(repeats / draws - p) < 0.02


def test_truncation_at_the_cap_is_not_termination():
    # Freeway only ends itself after 2500 steps: a 20-step cap truncates every env at step 20.
    env = MinAtarEnv("minatar:freeway", 3, max_episode_steps=20)
    env.reset(1)
    refs = reference("freeway", 1, 3)
    for t in range(1, 21):
        step = env.step(torch.full((3,), 2))  # "up"
        for e in refs:
            e.act(2)
        if t < 20:
            assert not step.done.any()
    assert step.truncated.all() and not step.terminated.any() and step.done.all()
    for i, e in enumerate(refs):
        assert torch.equal(step.final_obs[i], chw(e))  # the true last observation before the cut
        assert not torch.equal(step.obs[i], step.final_obs[i])  # obs already starts a new episode
        e.reset()
        assert torch.equal(step.obs[i], chw(e))


def test_episode_accounting_against_minatar_by_hand():
    n, seed = 3, 5
    env = envs.make("minatar:breakout", n)
    tracker = EpisodeTracker(n)
    env.reset(seed)
    refs = reference("breakout", seed, n)
    ret, by_hand = [0.0] * n, [[] for _ in range(n)]
    g = torch.Generator().manual_seed(1)
    saw_term = False
    for _ in range(400):
        a = torch.randint(6, (n,), generator=g)
        step = env.step(a)
        tracker.update(step.reward, step.done)
        for i, e in enumerate(refs):
            r, terminal = e.act(int(a[i]))
            ret[i] += r
            assert step.reward[i].item() == r and step.terminated[i].item() == terminal
            if terminal:
                assert torch.equal(step.final_obs[i], chw(e))
                by_hand[i].append(ret[i])
                ret[i] = 0.0
                e.reset()
                saw_term = True
            assert torch.equal(step.obs[i], chw(e))
        assert not step.truncated.any()
    got = np.concatenate(tracker._returns) if tracker._returns else np.zeros(0)
    assert saw_term and sorted(got.tolist()) == sorted(r for rs in by_hand for r in rs)


def test_unknown_minatar_game_one_line(capsys, tmp_path):
    with pytest.raises(envs.UnknownGame, match="did you mean minatar:breakout"):
        envs.check_game("minatar:brekout")
    from bench.cli import main

    argv = ["run", "--agent", "ppo", "--game", "minatar:brekout", "--steps", "10", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean minatar:breakout" in err


# --- small-image torsos -------------------------------------------------------------------------


def test_encoder_auto_and_refusals():
    assert encoder_kind("auto", (4, 10, 10)) == "minatar"
    assert encoder_kind("auto", (4, 84, 84)) == "nature" and encoder_kind("auto", (118,)) == "mlp"
    with pytest.raises(ValueError, match="at least 36x36"):
        encoder_kind("nature", (4, 10, 10))
    with pytest.raises(ValueError, match="needs \\[C, H, W\\] image"):
        encoder_kind("impala", (118,))
    with pytest.raises(ValueError, match="does not shrink"):
        SmallImpalaCNN((4, 10, 10), pool=6)


def test_minatar_cnn_is_the_papers_network():
    net = make_encoder("auto", (4, 10, 10), 128)
    assert isinstance(net, MinAtarCNN)
    x = torch.zeros(5, 4, 10, 10, dtype=torch.bool)
    assert net.conv(x.float()).shape == (5, 16 * 8 * 8) and net(x).shape == (5, 128)
    # 3x3x4x16 + 16 conv, 1024 x 128 + 128 FC
    assert sum(p.numel() for p in net.parameters()) == 3 * 3 * 4 * 16 + 16 + 1024 * 128 + 128


def test_small_impala_shapes():
    x = torch.zeros(2, 6, 10, 10, dtype=torch.bool)
    assert SmallImpalaCNN((6, 10, 10)).conv(x.float()).shape == (2, 32 * 5 * 5)
    assert SmallImpalaCNN((6, 10, 10), width=2, pool=3).conv(x.float()).shape == (2, 64 * 3 * 3)
    assert isinstance(make_encoder("impala", (6, 10, 10), 64), SmallImpalaCNN)


def _btr_net(**kw) -> btr.QNetwork:
    spec = envs.make("minatar:breakout", 1).spec
    return btr.QNetwork(spec, resolve_agent_config(btr.Config, btr.PRESETS, "minatar", kw))


def test_btr_switches_change_the_minatar_network():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    impala, nature = _btr_net(), _btr_net(impala=False)
    assert isinstance(nature.torso.conv[0], torch.nn.Conv2d) and nature.torso.out_dim == 1024  # MinAtarCNN's
    assert impala.torso.out_dim == 32 * 3 * 3 and count(impala) != count(nature)
    assert count(_btr_net(maxpool=False)) != count(impala)  # 32 x 5 x 5 features into the head
    # Spectral norm keeps the parameter count and changes the forward on the same weights.
    torch.manual_seed(0)
    plain = _btr_net(spectral_norm=False)
    sn = _btr_net(spectral_norm=True)
    state = {k.replace("parametrizations.weight.original", "weight"): v for k, v in sn.state_dict().items()
             if "_u" not in k and "_v" not in k}  # fmt: skip
    plain.load_state_dict(state)
    assert count(plain) == count(sn)
    x, taus = torch.rand(4, 4, 10, 10) > 0.5, torch.full((4, 8), 0.5)
    plain.eval(), sn.eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x, taus), sn(x, taus))


# --- inactive options ---------------------------------------------------------------------------


def _spec(shape) -> EnvSpec:
    return EnvSpec(game="g", family="gym", obs_shape=shape, obs_dtype=torch.float32, num_actions=2,
                   frameskip=1)  # fmt: skip


def test_inactive_options_pure_functions():
    vec, board = _spec((4,)), _spec((4, 10, 10))
    b = btr.Config()
    assert btr.inactive_options(b, vec) == ["impala", "impala_width", "maxpool", "pool_size", "spectral_norm"]
    assert btr.inactive_options(b, board) == ["hidden", "mlp_layers"]
    assert "spectral_norm" in btr.inactive_options(btr.Config(impala=False), board)
    assert btr.inactive_options(btr.Config(maxpool=False), board)[-1] == "pool_size"
    assert rainbow.inactive_options(rainbow.Config(), vec) == []
    assert rainbow.inactive_options(rainbow.Config(), board) == ["hidden", "mlp_layers"]
    assert ppo.inactive_options(ppo.Config(), board) == ["mlp_layers"]
    with pytest.raises(ValueError, match="image observations"):
        ppo.inactive_options(ppo.Config(encoder="nature"), vec)


def test_inactive_options_warned_recorded_and_reported(tmp_path, capsys):
    run = RunConfig(agent="btr", game="gym:CartPole-v1", steps=64, device="cpu", threads=1)
    train(run, {"num_envs": 8, "learning_starts": 1000}, out=tmp_path / "btr")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "impala" in err
    assert "impala_width" not in err  # recorded below, but nobody chose it: not warned
    cfg = json.loads((tmp_path / "btr" / "config.json").read_text())
    assert {"impala", "maxpool", "spectral_norm"} <= set(cfg["inactive_options"])
    from plots.load import load_run
    from plots.report import inactive_option_notes

    notes = inactive_option_notes([load_run(tmp_path / "btr")])
    assert len(notes) == 1 and "btr on gym:CartPole-v1" in notes[0] and "impala" in notes[0]
    # On images the unused MLP keeps its default depth: recorded, not warned; a typed depth is warned.
    for layers, warned in ((2, False), (3, True)):
        out = tmp_path / f"ppo_board{layers}"
        train(RunConfig(agent="ppo", game="minatar:breakout", steps=64, device="cpu", threads=1),
              {"num_envs": 8, "segment_length": 8, "minibatches": 2, "mlp_layers": layers}, out=out)  # fmt: skip
        assert ("mlp_layers" in capsys.readouterr().err) == warned
        assert json.loads((out / "config.json").read_text())["inactive_options"] == ["mlp_layers"]
    with pytest.raises(UserError, match="ppo on gym:CartPole-v1: encoder 'nature' needs"):
        train(RunConfig(agent="ppo", game="gym:CartPole-v1", steps=64, device="cpu", threads=1),
              {"encoder": "nature"}, out=tmp_path / "ppo")  # fmt: skip


# --- every agent end to end on MinAtar ------------------------------------------------------------

SMOKE = {
    "ppo": {"num_envs": 8, "segment_length": 64, "minibatches": 4},
    "rainbow": {"num_envs": 8, "batch_size": 32, "learning_starts": 256},
    "btr": {"num_envs": 8, "batch_size": 32, "learning_starts": 256},
}


@pytest.mark.parametrize("agent", ["ppo", "rainbow", "btr"])
def test_agents_run_on_minatar_breakout(agent, tmp_path):
    run = RunConfig(agent=agent, game="minatar:breakout", steps=2048, device="cpu", threads=1)
    summary = train(run, SMOKE[agent], out=tmp_path / agent)
    assert summary["status"] == "done" and summary["env_steps"] == 2048
    assert summary["grad_steps"] > 0 and summary["episodes"] > 0
    cfg = json.loads((tmp_path / agent / "config.json").read_text())
    assert cfg["env"]["protocol"]["sticky_actions"] == 0.1 and cfg["env"]["obs_dtype"] == "bool"
