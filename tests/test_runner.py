"""The runners' shared pieces: CPU pinning recorded in each run, a failed run's log tail, the
optional sinks passed on to every run; the same from the local pool and from Ray."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.run_cmd import sink_flags
from bench.runner import (PINNING_ENV, RunSpec, allowed_cpus, failure_text, log_tail, pinning_env, pinning_record,
                          run_local, run_ray)  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (make install adds it)")


def spec(root: Path, name: str, agent: str = "random") -> RunSpec:
    return RunSpec(agent=agent, game="gym:CartPole-v1", seed=1, out=str(root / name / "seed1"), label=name, steps=200,
                   overrides={"num_envs": 2})  # fmt: skip


def test_log_tail_is_the_last_non_empty_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("started\n" + "x" * 10_000 + "\nbench: error: it broke\n\n")
    assert log_tail(log) == "bench: error: it broke"
    assert failure_text(2, log_tail(log)) == "failed (exit 2: bench: error: it broke)"
    assert log_tail(tmp_path / "missing.log") == "?"
    (tmp_path / "empty.log").write_text("")
    assert log_tail(tmp_path / "empty.log") == "?"


def test_pinning_round_trips_through_the_environment():
    assert pinning_record({}) == {"pinned": None, "pinning": None}  # a plain `bench run`
    assert pinning_record({PINNING_ENV: "garbage"}) == {"pinned": None, "pinning": None}
    on = pinning_record(pinning_env([2, 3], "local pool"))
    assert on == {"pinned": True, "pinning": "pinned to cpus 2,3 by the local pool"}
    off = pinning_record(pinning_env(None, "Ray backend", "a cluster"))
    assert off == {"pinned": False, "pinning": "not pinned by the Ray backend: a cluster"}


def test_sinks_are_passed_on_to_every_run():
    def ns(**kw):
        return argparse.Namespace(**{"tensorboard": False, "wandb": False, "wandb_project": None, "wandb_entity": None,
                                     "wandb_group": None, **kw})  # fmt: skip

    assert sink_flags(ns(), "cmp") == ()
    assert sink_flags(ns(wandb=True), "cmp") == ("--wandb", "--wandb-group", "cmp")
    assert sink_flags(ns(wandb=True, wandb_project="p", wandb_group="g"), "cmp") == (
        "--wandb", "--wandb-project", "p", "--wandb-group", "g")  # fmt: skip
    with pytest.raises(UserError, match="--wandb-entity without --wandb"):
        sink_flags(ns(wandb_entity="me"), "cmp")
    s = RunSpec("ppo", "gym:CartPole-v1", 1, "o", "ppo", steps=10, run_flags=("--wandb", "--wandb-group", "cmp"))
    assert s.argv(1)[-3:] == ["--wandb", "--wandb-group", "cmp"]


def _pinning(run: Path) -> tuple[dict, list[int]]:
    cfg = json.loads((run / "config.json").read_text())
    return {k: cfg["run"][k] for k in ("pinned", "pinning")}, cfg["fingerprint"]["affinity"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU pinning on this OS")
def test_local_pool_records_pinning_and_a_failed_runs_log_tail(tmp_path):
    good, bad = spec(tmp_path, "good"), spec(tmp_path, "bad", agent="nosuch")
    res = run_local([good, bad], 1, tmp_path / "logs")
    assert res[good.out] == "done"
    assert res[bad.out].startswith("failed (exit 2: bench run: error: unknown agent 'nosuch'"), res[bad.out]
    share = allowed_cpus()  # one worker: the whole machine
    rec, affinity = _pinning(Path(good.out))
    assert rec == {"pinned": True, "pinning": f"pinned to cpus {','.join(map(str, share))} by the local pool"}
    assert affinity == share


@needs_ray
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU pinning on this OS")
def test_ray_pins_like_the_local_pool_and_reports_a_failed_runs_log_tail(tmp_path, capsys):
    good, bad = spec(tmp_path, "good"), spec(tmp_path, "bad", agent="nosuch")
    res = run_ray([good, bad], None, 1, 0.0, tmp_path / "logs")
    assert res[good.out] == "done"
    assert res[bad.out].startswith("failed (exit 2: bench run: error: unknown agent 'nosuch'"), res[bad.out]
    rec, affinity = _pinning(Path(good.out))
    assert rec["pinned"] is True and len(affinity) == 1 and affinity[0] in allowed_cpus()
    assert rec["pinning"] == f"pinned to cpus {affinity[0]} by the Ray backend"
    assert "started on cpus [" in capsys.readouterr().out


@needs_ray
def test_ray_on_a_cluster_says_runs_are_not_pinned_and_records_it(tmp_path, capsys):
    import ray

    # A Ray this process did not start stands in for a cluster: its cores are not ours to hand out.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        good = spec(tmp_path, "good")
        assert run_ray([good], None, 1, 0.0, tmp_path / "logs") == {good.out: "done"}
    finally:
        ray.shutdown()
    assert "ray: runs are not pinned to cores" in capsys.readouterr().out
    rec, _ = _pinning(Path(good.out))
    assert rec["pinned"] is False and rec["pinning"].startswith("not pinned by the Ray backend: Ray was already running")
