"""The MFU denominator (bench.peak) and the utilisation figures in compute.json and bench perf."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import peak
from bench.meter import count_flops


def test_utilisation_arithmetic():
    rate, mfu = peak.utilisation(6e9, 2.0, 1.2e10)
    assert rate == pytest.approx(3e9) and mfu == pytest.approx(0.25)
    assert all(math.isnan(x) for x in peak.utilisation(1e9, 0.0, 1e10))
    assert all(math.isnan(x) for x in peak.utilisation(1e9, 1.0, 0.0))


def test_a_known_matmul_workload_is_counted_exactly_and_calibrates_positive():
    n = 128
    a, b = torch.randn(n, n), torch.randn(n, n)
    _, flops = count_flops(lambda: a @ b)
    assert flops == 2 * n**3  # the meter's count of the calibration workload
    p = peak.measure(threads=1, seconds=0.2, size=n)
    assert math.isfinite(p) and p > 1e6  # any CPU does more than a MFLOP/s
    # MFU of k such matmuls done in t seconds is k 2n^3 / t / peak
    _, mfu = peak.utilisation(10 * flops, 10 * 2 * n**3 / p, p)
    assert mfu == pytest.approx(1.0)


def test_peak_is_cached_per_machine_threads_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("ONOFF_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(peak, "measure", lambda threads, dtype, device: calls.append((threads, dtype)) or 1e9 * threads)
    one = peak.matmul_peak(1)
    assert one["flops_per_s"] == 1e9 and "1 threads" in one["key"] and "float32" in one["key"]
    assert peak.matmul_peak(1)["flops_per_s"] == 1e9 and len(calls) == 1  # second call: from the cache
    assert peak.matmul_peak(2)["flops_per_s"] == 2e9 and len(calls) == 2  # other threads: measured
    assert peak.matmul_peak(1, torch.bfloat16) and len(calls) == 3  # other dtype: measured
    assert len(json.loads(peak.cache_file().read_text())) == 3
    peak.cache_file().write_text("{not json")  # a damaged cache is re-measured, not an error
    assert peak.matmul_peak(1)["flops_per_s"] == 1e9 and len(calls) == 4


def test_run_records_flops_per_s_and_mfu(tmp_path):
    from bench.cli import main as cli

    out = tmp_path / "r"
    assert cli(["run", "--agent", "ppo", "--game", "gym:CartPole-v1", "--steps", "8k", "--seed", "1",
                "--out", str(out)]) == 0  # fmt: skip
    c = json.loads((out / "compute.json").read_text())
    assert c["peak_flops_per_s"] > 0 and c["peak_key"]
    learn = c["flops_per_grad_sample"] * c["grad_samples"] / c["phase_s"]["learn"]
    assert c["learn_flops_per_s"] == pytest.approx(learn)
    assert c["mfu_learn"] == pytest.approx(learn / c["peak_flops_per_s"])
    assert c["flops_per_s"] == pytest.approx(c["train_flops"] / c["train_wall_s"])
    assert 0 < c["mfu"] < 1.5 and 0 < c["mfu_act"]
    # the report shows it per agent
    assert cli(["report", str(out), "--out", str(tmp_path / "rep"), "--reps", "50", "--formats", "png"]) == 0
    row = json.loads((tmp_path / "rep" / "summary.json").read_text())["per_agent_game"][0]
    assert row["mfu"] == pytest.approx(c["mfu"]) and row["mfu_learn"] == pytest.approx(c["mfu_learn"])
    assert "MFU run / learn" in (tmp_path / "rep" / "summary.md").read_text()


def test_perf_json_has_mfu_and_flops_per_s(capsys):
    from bench.cli import main as cli

    assert cli(["perf", "--agent", "ppo", "--game", "gym:CartPole-v1", "--seconds", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["flops_per_s"] > 0 and 0 < r["mfu"] < 1.5 and r["peak_flops_per_s"] > 0
    assert r["mfu"] == pytest.approx(r["flops_per_s"] / r["peak_flops_per_s"])
