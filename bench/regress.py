"""``bench regress``: fail CI when learning per unit of (machine-normalised) time regresses.

The metric
----------
CI machines differ and are noisy, so raw wall clock is not comparable between runs. Each run
is therefore preceded by a **calibration** measured in the same job, on the same cores, with the
same thread count:

* ``env_sps``: raw steps per second of the game's backend (the env workload);
* ``learner_sps``: samples per second of a fixed learner workload (Adam steps of a fixed MLP on
  a fixed batch; the act/learn workload).

The meter splits each run's training time into phases; **normalised seconds** convert each phase
into the reference machine's seconds (the baseline's calibration)::

    norm_s = env_s * env_sps / env_sps_ref + (act_s + learn_s + other_s) * learner_sps / learner_sps_ref

A machine twice as fast at stepping envs has half the env seconds and twice the env rate, so the
product is unchanged; contention that slows both the run and its calibration cancels the same
way. From that clock:

* ``score_per_hour``: the score reached at a fixed budget of normalised training time
  (``T_ref``, set with the baseline), divided by that budget in hours. It is the headline.
* its two factors, so a failure says which one moved:
  ``score_at_budget`` (mean full-game return over the last 10% of a fixed env-step budget: did
  learning per sample change?) and ``norm_sps`` (env steps per normalised second: did the
  code get slower?).

Hardware: the calibration maps seconds between machines of one kind well (a busy core, a
slower clock), but not between CPU generations: its fixed learner workload (big matmuls) sped up
4x from an AVX2 EPYC to an AVX-512 Xeon while the agents' mix of small ops sped up 2.4-3x. The
baseline file therefore keeps one entry per machine (:func:`machine_key`: CPU model, family/model numbers,
vector ISA, threads). On a machine with an entry every metric is gated; on a machine without one
the speed metrics (``score_per_hour``, ``norm_sps``) are still computed against the newest entry
through the calibration and printed, but only ``score_at_budget`` can fail the check, and the
output says how to add this machine (``--update-baseline`` adds or replaces only its own entry).

Robustness: every agent runs several seeds; each metric's relative change against the baseline
gets a seeded bootstrap CI over seeds (both sides resampled). A metric **regresses** only when
the whole 90% CI lies below zero *and* the point estimate drops by more than a minimum effect
(``MIN_EFFECT``): seed noise and timer jitter pass, real regressions fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import RunConfig
from bench.errors import UserError
from bench.results import atomic_write_bytes, atomic_write_json, read_json

# Smallest relative drop that counts as a regression, per metric (beyond the CI test).
MIN_EFFECT = {"score_per_hour": 0.25, "score_at_budget": 0.25, "norm_sps": 0.20}
METRICS = ("score_per_hour", "score_at_budget", "norm_sps")
# Gated against another machine's entry: learning per sample does not depend on the clock.
HARDWARE_FREE = ("score_at_budget",)
ENTRY_KEYS = ("reference", "t_ref", "agents")


@dataclass(frozen=True)
class SuiteEntry:
    agent: str
    game: str
    steps: int  # fixed env-step budget per seed
    seeds: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


# A few minutes in all on 2 CPU cores: PPO and Rainbow on puffer_breakout, 3 seeds each.
SUITES: dict[str, list[SuiteEntry]] = {
    "ci": [
        SuiteEntry("ppo", "puffer_breakout", 1_500_000, (1, 2, 3)),
        SuiteEntry("rainbow", "puffer_breakout", 150_000, (1, 2, 3)),
    ],
    # The tests' own suite: the same machinery at a tenth of the cost (PPO only).
    "smoke": [SuiteEntry("ppo", "puffer_breakout", 500_000, (1, 2))],
}


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--suite", default="ci", choices=sorted(SUITES), help="which fixed suite to run (default ci)")
    p.add_argument("--baseline", default=None, help="baseline file (default baselines/<suite>.json)")
    p.add_argument("--update-baseline", action="store_true", help="write this run as the new baseline")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full result as JSON")
    p.add_argument("--markdown", default=None, metavar="OUT", help="write a summary for a CI job page")
    p.add_argument("--out", default=None, help="keep the suite's run folders here (default: a temp folder)")
    p.add_argument("--agent-option", action="append", default=[], metavar="AGENT.KEY=VALUE",
                   help="override an agent option in the suite (e.g. to check the check: ppo.lr=0)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: all cores allowed)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions (default 2000)")
    p.add_argument("--seeds", type=int, default=None, help="run only the first N seeds of each entry")
    # Test-only: sleep this long after every learning update (a deliberately slowed learner).
    p.add_argument("--test-sleep-in-update", type=float, default=0.0, help=argparse.SUPPRESS)


# ---------------------------------------------------------------- machines and baselines


def machine_key(threads: int) -> str:
    """What must match for two suites' speeds to be compared directly. Virtual machines often
    hide the CPU's name ("Intel(R) Xeon(R) Processor"), so family/model and the vector ISA torch
    dispatches to are part of the key."""
    from bench.fingerprint import cpu_model, cpuinfo

    return (f"{cpu_model()} (family {cpuinfo('cpu family') or '?'} model {cpuinfo('model') or '?'}) | "
            f"{torch.backends.cpu.get_cpu_capability()} | {threads} threads")  # fmt: skip


def load_baselines(path: Path) -> dict[str, dict]:
    """The file's entries by machine key; one line and exit 2 (UserError) when it is missing or
    malformed."""
    data = read_json(path, "baseline")
    machines = data.get("machines") if isinstance(data, dict) else None
    if not isinstance(machines, dict) or not machines:
        raise UserError(f"{path}: malformed baseline (no 'machines'); regenerate with --update-baseline")
    for key, entry in machines.items():
        missing = [k for k in ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise UserError(f"{path}: malformed baseline (machine {key!r} has no {missing[0]!r}); "
                            "regenerate with --update-baseline")  # fmt: skip
    return machines


def pick_baseline(machines: dict[str, dict], key: str) -> tuple[str, dict, bool]:
    """(key, entry, same_machine): this machine's entry, else the newest one."""
    if key in machines:
        return key, machines[key], True
    other = max(machines, key=lambda k: str(machines[k].get("created", "")))
    return other, machines[other], False


# ---------------------------------------------------------------- calibration


def calibrate(game: str, threads: int, seconds: float = 1.5) -> dict[str, float]:
    """Env-only SPS of ``game`` and a fixed learner workload's samples/s, on this process's cores."""
    import envs

    torch.set_num_threads(threads)
    env = envs.make(game, 1024, num_threads=threads)
    env.reset(0)
    step = env.raw_step_fn()
    for _ in range(5):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    env_sps = n * 1024 / (time.perf_counter() - t0)
    env.close()

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 8))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(4096, 128, generator=g)
    y = torch.randn(4096, 8, generator=g)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with torch.inference_mode():
            net(x)  # an acting pass, like act()
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        n += 1
    learner_sps = n * 4096 / (time.perf_counter() - t0)
    return {"env_sps": env_sps, "learner_sps": learner_sps}


# ---------------------------------------------------------------- per-run figures


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def _score_between(rows: list[dict], lo: float, hi: float, key: str) -> float | None:
    """Episode-weighted mean return of rows whose ``key`` lies in (lo, hi]."""
    tot, w, prev_eps = 0.0, 0, 0
    for r in rows:
        eps = int(r["episodes"])
        k = eps - prev_eps
        prev_eps = eps
        if r["episode_return"] and lo < float(r[key]) <= hi and k > 0:
            tot += float(r["episode_return"]) * k
            w += k
    return tot / w if w else None


def run_figures(run_dir: Path, cal: dict, ref: dict, t_ref: float | None) -> dict[str, float]:
    comp = read_json(run_dir / "compute.json", "compute.json")
    rows = _rows(run_dir / "metrics.csv")
    ph = comp["phase_s"]
    wall = comp["train_wall_s"]
    other = max(wall - ph["env"] - ph["act"] - ph["learn"], 0.0)
    f_env = cal["env_sps"] / ref["env_sps"]
    f_learn = cal["learner_sps"] / ref["learner_sps"]
    norm_s = ph["env"] * f_env + (ph["act"] + ph["learn"] + other) * f_learn
    steps = comp["env_steps"]
    score_budget = _score_between(rows, 0.9 * steps, steps, "env_steps")
    # Map wall clock to normalised clock with the run's overall factor (phases are not per row).
    scale = norm_s / wall if wall > 0 else 1.0
    for r in rows:
        r["norm_s"] = float(r["wall_s"]) * scale
    t = t_ref if t_ref is not None else norm_s
    end = min(t, norm_s)  # no extrapolation: a run faster than T_ref is scored at its end
    score_t = _score_between(rows, 0.9 * end, end, "norm_s")
    if score_t is None:
        score_t = score_budget
    return {
        "score_at_budget": float(score_budget if score_budget is not None else float("nan")),
        "norm_sps": steps / norm_s,
        "score_at_t_ref": float(score_t if score_t is not None else float("nan")),
        "score_per_hour": float(score_t if score_t is not None else float("nan")) * 3600.0 / t,
        "norm_s": norm_s,
        "wall_s": wall,
        "sps": comp["sps"],
        "env_steps": steps,
    }


# ---------------------------------------------------------------- statistics


def bootstrap_change(base: list[float], cur: list[float], reps: int, seed: int) -> tuple[float, float, float]:
    """Relative change mean(cur)/mean(base) - 1 and its 90% stratified-bootstrap CI (each side
    resampled with replacement over its seeds)."""
    b, c = np.asarray(base, float), np.asarray(cur, float)
    point = c.mean() / b.mean() - 1.0 if b.mean() != 0 else float("nan")
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, len(b), (reps, len(b)))
    ci = rng.integers(0, len(c), (reps, len(c)))
    bm = b[bi].mean(1)
    cm = c[ci].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = cm / bm - 1.0
    d = d[np.isfinite(d)]
    lo, hi = (np.quantile(d, [0.05, 0.95]) if d.size else (float("nan"), float("nan")))
    return float(point), float(lo), float(hi)


def verdict(point: float, hi: float, metric: str) -> bool:
    """True when ``metric`` regressed beyond noise."""
    return bool(hi < 0.0 and point < -MIN_EFFECT[metric])


# ---------------------------------------------------------------- the command


def _suite(name: str, options: dict[str, dict], seeds: int | None) -> list[SuiteEntry]:
    out = []
    for e in SUITES[name]:
        s = e.seeds[:seeds] if seeds else e.seeds
        out.append(SuiteEntry(e.agent, e.game, e.steps, s, {**e.options, **options.get(e.agent, {})}))
    return out


def run_suite(entries: list[SuiteEntry], out: Path, threads: int, sleep_s: float, progress: bool = True) -> dict:
    from bench.harness import load_agent_module, train
    from bench.perf import _typed

    results: dict[str, list[dict]] = {}
    for e in entries:
        overrides = _typed(load_agent_module(e.agent).Config, e.options)
        for seed in e.seeds:
            cal = calibrate(e.game, threads)
            d = out / e.agent / f"seed{seed}"
            if d.exists():
                shutil.rmtree(d)
            run = RunConfig(agent=e.agent, game=e.game, seed=seed, steps=e.steps, threads=threads, device="cpu",
                            checkpoint_every_s=1e9, debug_update_sleep_s=sleep_s)  # fmt: skip
            t0 = time.perf_counter()
            train(run, overrides, out=d)
            cal_after = calibrate(e.game, threads)
            # Contention may come and go during the run: average the calibrations around it.
            cal_mean = {k: (cal[k] + cal_after[k]) / 2 for k in cal}
            results.setdefault(e.agent, []).append({"seed": seed, "dir": str(d), "calibration": cal_mean,
                                                    "elapsed_s": time.perf_counter() - t0})  # fmt: skip
            if progress:
                print(f"  {e.agent} seed {seed}: {time.perf_counter() - t0:.0f} s "
                      f"(env {cal_mean['env_sps']:,.0f} sps, learner {cal_mean['learner_sps']:,.0f} samples/s)",
                      flush=True)  # fmt: skip
    return results


def main(args: argparse.Namespace) -> int:
    from bench.compare import parse_agent_options
    from bench.fingerprint import fingerprint

    entries_all = SUITES[args.suite]
    options = parse_agent_options(args.agent_option, [e.agent for e in entries_all])
    entries = _suite(args.suite, options, args.seeds)
    base_path = Path(args.baseline or Path(__file__).resolve().parent.parent / "baselines" / f"{args.suite}.json")
    threads = args.threads or len(os.sched_getaffinity(0))
    key = machine_key(threads)
    baseline, base_key, same_machine = None, None, True
    if not args.update_baseline:
        base_key, baseline, same_machine = pick_baseline(load_baselines(base_path), key)
    gated = METRICS if same_machine else HARDWARE_FREE
    tmp = None
    out = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="bench-regress-"))
    print(f"bench regress: suite {args.suite} ({', '.join(f'{e.agent} x{len(e.seeds)} seeds, {e.steps:,} env_steps' for e in entries)}) "
          f"on {threads} threads", flush=True)  # fmt: skip
    print(f"  machine: {key}", flush=True)
    if baseline is not None and not same_machine:
        print(f"  no baseline entry for this machine; comparing with {base_key!r} through the calibration.\n"
              f"  Speed metrics ({', '.join(m for m in METRICS if m not in gated)}) are reported, not gated; "
              f"to gate them here run `bench regress --update-baseline` and commit {base_path.name}.", flush=True)  # fmt: skip
    try:
        raw = run_suite(entries, out, threads, args.test_sleep_in_update)
        ref = baseline["reference"] if baseline else None
        if ref is None:  # a new baseline: this machine's mean calibration is the reference
            cals = [r["calibration"] for rs in raw.values() for r in rs]
            ref = {k: float(np.mean([c[k] for c in cals])) for k in cals[0]}
        t_ref = dict(baseline["t_ref"]) if baseline else {}
        figures: dict[str, list[dict]] = {}
        for agent, rs in raw.items():
            if agent not in t_ref:
                # T_ref: 90% of the median normalised duration, so every normal run reaches it.
                norm = [run_figures(Path(r["dir"]), r["calibration"], ref, None)["norm_s"] for r in rs]
                t_ref[agent] = 0.9 * float(np.median(norm))
            figures[agent] = [run_figures(Path(r["dir"]), r["calibration"], ref, t_ref[agent]) | {"seed": r["seed"]}
                              for r in rs]  # fmt: skip
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {"suite": args.suite, "machine": key, "baseline_machine": base_key,
                              "same_machine": same_machine, "gated": list(gated), "reference": ref, "t_ref": t_ref,
                              "agents": {}, "fingerprint": fingerprint(torch.device("cpu")), "min_effect": MIN_EFFECT}  # fmt: skip
    failed = False
    lines = []
    for agent, fs in figures.items():
        entry: dict[str, Any] = {m: [f[m] for f in fs] for m in METRICS}
        entry["seeds"] = [f["seed"] for f in fs]
        entry["wall_s"] = [f["wall_s"] for f in fs]
        entry["sps"] = [f["sps"] for f in fs]
        if baseline:
            b = baseline["agents"].get(agent)
            if b is None:
                raise UserError(f"{base_path}: no baseline for agent {agent!r}; regenerate with --update-baseline")
            changes = {}
            for i, m in enumerate(METRICS):
                point, lo, hi = bootstrap_change(b[m], entry[m], args.reps, seed=i)
                below = verdict(point, hi, m)
                changes[m] = {"change": point, "ci90": [lo, hi], "regressed": below and m in gated,
                              "below_baseline": below, "gated": m in gated,
                              "baseline_mean": float(np.mean(b[m])), "mean": float(np.mean(entry[m]))}  # fmt: skip
            entry["changes"] = changes
            bad = [m for m in METRICS if changes[m]["regressed"]]
            failed |= bool(bad)
            parts = "  ".join(f"{m} {100 * changes[m]['change']:+.0f}% [{100 * changes[m]['ci90'][0]:+.0f}%, "
                              f"{100 * changes[m]['ci90'][1]:+.0f}%]{'' if m in gated else ' (not gated)'}"
                              for m in METRICS)  # fmt: skip
            why = f"REGRESSION in {', '.join(bad)}" if bad else "pass"
            lines.append(f"{agent}: {why}  |  {parts}")
        else:
            lines.append(f"{agent}: baseline  score_per_hour {np.mean(entry['score_per_hour']):.1f}  "
                         f"score_at_budget {np.mean(entry['score_at_budget']):.1f}  "
                         f"norm_sps {np.mean(entry['norm_sps']):,.0f}")  # fmt: skip
        result["agents"][agent] = entry
    result["passed"] = not failed
    print("\n".join(lines))
    if args.update_baseline:
        # Only this machine's entry is replaced: the other machines' baselines stay valid.
        machines: dict[str, dict] = {}
        if base_path.exists():
            try:
                machines = load_baselines(base_path)
            except UserError as err:
                print(f"  {err}: replaced by this machine's entry alone", flush=True)
        keep = {k: result[k] for k in ("reference", "t_ref", "agents", "fingerprint", "min_effect")}
        keep["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
        keep["python"] = platform.python_version()
        machines[key] = keep
        base_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(base_path, {"suite": args.suite, "machines": machines})
        print(f"baseline for this machine written to {base_path} ({len(machines)} machine(s))")
    if args.json:
        atomic_write_json(Path(args.json), result)
    if args.markdown:
        atomic_write_bytes(Path(args.markdown), markdown(result).encode())
    print("bench regress: " + ("FAILED" if failed else "passed"))
    return 1 if failed else 0


def markdown(result: dict) -> str:
    lines = [f"## bench regress — suite `{result['suite']}`: {'✅ passed' if result['passed'] else '❌ regression'}", "",
             f"Machine: `{result['machine']}`." + ("" if result["same_machine"] or not result["baseline_machine"] else
             f" No baseline entry for it: compared with `{result['baseline_machine']}`, speed metrics not gated."), "",
             "| agent | metric | baseline | now | change | 90% CI | verdict |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for agent, e in result["agents"].items():
        for m in METRICS:
            c = e.get("changes", {}).get(m)
            if c is None:
                lines.append(f"| {agent} | {m} | — | {np.mean(e[m]):.4g} | — | — | baseline |")
                continue
            lines.append(f"| {agent} | {m} | {c['baseline_mean']:.4g} | {c['mean']:.4g} | {100 * c['change']:+.1f}% "
                         f"| [{100 * c['ci90'][0]:+.1f}%, {100 * c['ci90'][1]:+.1f}%] "
                         f"| {'**regressed**' if c['regressed'] else 'ok' if c['gated'] else 'not gated'} |")  # fmt: skip
    lines += ["", f"T_ref (normalised s): {json.dumps({k: round(v, 1) for k, v in result['t_ref'].items()})}; "
              f"minimum effects: {json.dumps(result['min_effect'])}."]  # fmt: skip
    return "\n".join(lines) + "\n"

