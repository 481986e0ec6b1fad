"""--precision bf16 (bench.precision): refused without native bf16 hardware, recorded in
config.json, autocast to bfloat16 for the matmuls with float32 weights, optimizer state and
network outputs; its updates follow float32's within bfloat16's rounding."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from agents import rainbow
from agents.api import AgentContext
from bench import precision
from bench.cli import main as cli
from envs.base import EnvSpec, EnvStep

NATIVE_BF16 = precision.bf16_support(torch.device("cpu"))[0]
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")
SPEC = EnvSpec(game="toy", family="gym", obs_shape=(6,), obs_dtype=torch.float32, num_actions=3, frameskip=1)


def test_refused_without_native_bf16(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpuinfo", lambda field: "fpu sse avx2 avx512f")  # no bf16 flags
    assert precision.bf16_support(torch.device("cpu")) == (False, "this CPU has none of the flags avx512_bf16, amx_bf16")
    out = tmp_path / "r"
    code = cli(["run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--steps", "2k", "--out", str(out),
                "--precision", "bf16"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--precision bf16 refused on cpu" in err[0], err
    assert not (out / "metrics.csv").exists()  # nothing ran
    monkeypatch.setattr(precision, "cpuinfo", lambda field: "fpu avx512f avx512_bf16")
    assert precision.bf16_support(torch.device("cpu"))[0]
    precision.check("fp32", torch.device("cpu"))  # float32 is never refused


def test_unknown_precision_is_one_line(capsys):
    code = cli(["run", "--agent", "rainbow", "--game", "gym:CartPole-v1", "--steps", "1k", "--precision", "fp8"])
    err = capsys.readouterr().err
    assert code == 2 and "fp8" in err and "Traceback" not in err


@needs_bf16
def test_autocast_runs_matmuls_in_bf16_and_keeps_float32_state():
    torch.manual_seed(0)
    cfg = dataclasses.replace(rainbow.Config(), num_envs=2, batch_size=8, learning_starts=0, buffer_size=200,
                              hidden=16, head_hidden=16)  # fmt: skip
    agent = rainbow.Agent(cfg, AgentContext(SPEC, 2, torch.device("cpu"), 10_000))
    obs = torch.randn(2, 6)
    with precision.autocast("bf16", torch.device("cpu")):
        assert agent.online.torso(obs).dtype == torch.bfloat16  # the matmuls ran in bf16
        assert agent.online(obs).dtype == torch.float32  # outputs (and so the losses) float32
        for _ in range(12):
            agent.act(obs)
            z = torch.zeros(2, dtype=torch.bool)
            agent.observe(EnvStep(obs=obs, reward=torch.ones(2), terminated=z, truncated=z, done=z, final_obs=obs))
            agent.update()
    assert agent.grad_steps > 0
    assert agent.flat.dtype == torch.float32 and all(p.dtype == torch.float32 for p in agent.online.parameters())
    assert all(v.dtype == torch.float32 for v in agent.opt.state[agent.flat].values())


@needs_bf16
def test_bf16_ppo_update_follows_float32_within_bf16_rounding():
    """The same rollout and minibatch order: the bf16 update's loss matches float32's to bfloat16's
    ~3 significant digits (rtol 3e-2), and the parameters move the same way (cosine of the two
    updates > 0.99), while not being bitwise equal (the bf16 path really ran)."""
    from tests.test_ppo import feed, make_agent, scripted_steps

    torch.manual_seed(0)
    a32 = make_agent(N=4, T=8)
    torch.manual_seed(0)
    a16 = make_agent(N=4, T=8)
    before = torch.cat([p.detach().reshape(-1).clone() for p in a32.net.parameters()])
    steps = scripted_steps(4, 8, seed=1)
    obs = torch.randn(4, 3)
    ms = []
    for agent, prec in ((a32, "fp32"), (a16, "bf16")):
        with precision.autocast(prec, torch.device("cpu")):
            torch.manual_seed(1)
            feed(agent, obs, steps)
            torch.manual_seed(2)
            ms.append(agent.update())
    assert ms[1]["loss"] == pytest.approx(ms[0]["loss"], rel=3e-2, abs=1e-3)
    d32 = torch.cat([p.detach().reshape(-1) for p in a32.net.parameters()]) - before
    d16 = torch.cat([p.detach().reshape(-1) for p in a16.net.parameters()]) - before
    assert not torch.equal(d32, d16)
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.99


@needs_bf16
def test_bf16_run_end_to_end_records_precision(tmp_path):
    out = tmp_path / "r"
    assert cli(["run", "--agent", "ppo", "--game", "puffer_breakout", "--steps", "4096", "--seed", "1",
                "--out", str(out), "--num-envs", "16", "--hidden", "32", "--threads", "1",
                "--precision", "bf16"]) == 0  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["agent"]["precision"] == "bf16"
    compute = json.loads((out / "compute.json").read_text())
    assert "bfloat16" in compute["peak_key"]  # MFU against the bf16 matmul peak
    assert compute["grad_samples"] > 0
