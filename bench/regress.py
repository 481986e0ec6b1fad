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

Noise: the calibration cancels load that is steady over a run, not load that comes and goes
during it (other jobs on a shared CI machine). Each run is bracketed by two calibrations and
normalised with their mean, so the load during the run is known only to lie around the range
they span: its normalised seconds are uncertain by about half their disagreement, more if the
load also moved inside the run. When the two disagree by more than ``CAL_DRIFT_MAX`` (20%:
``max/min - 1`` of either workload's rate), that uncertainty (±10% and up) reaches half the
smallest speed change the check fails on (``MIN_EFFECT["norm_sps"]``, 20%), so a pass or a fail
on speed would be a verdict on the neighbours' jobs. Then the agent's speed metrics
(``score_per_hour``, ``norm_sps``) are printed but marked "machine too noisy to judge speed" and
cannot fail; ``score_at_budget`` (learning per env step, no clock in it) is still judged, and
``--update-baseline`` writes nothing. Figures from the 2-core machine this was written on, shared
with other jobs: with light sharing (load average ~1) the two calibrations around a smoke-suite
run disagreed by 0-2% on most runs and 13-17% on some (the normalised SPS still agreed within
5%), and back-to-back learner calibrations spread by up to 25%; with one core taken by another
process they swung between 17K and 265K samples/s (two OpenMP threads, one waiting for a busy
core). So a lightly shared machine usually gets a speed verdict and a busy one often does not,
which is the point. Load that rises and falls inside a run without showing at either end is not
caught this way; it spreads the seeds apart, and the widened CI then straddles zero (no fail).
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
# Speed metrics: they read the (normalised) clock, so an unreliable calibration voids them.
SPEED = tuple(m for m in METRICS if m not in HARDWARE_FREE)
ENTRY_KEYS = ("reference", "t_ref", "agents")
# Fewer bootstrap draws than this and the 5% / 95% quantiles are just the extreme draws.
MIN_REPS = 20
# Calibrations around one run that disagree by more than this (max/min - 1 of either workload's
# rate) leave the run's speed unjudgeable: "Noise" above says why 20%.
CAL_DRIFT_MAX = 0.20


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
                   help="override an agent option in the suite (e.g. to check the check: ppo.lr=1e-9)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="threads per run, >= 1 (default: all cores allowed)")
    p.add_argument("--reps", type=int, default=2000,
                   help=f"bootstrap repetitions, >= {MIN_REPS} (default 2000)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=None, help="run only the first N (>= 1) seeds of each entry")
    # Test-only: sleep this long after every learning update (a deliberately slowed learner).
    p.add_argument("--test-sleep-in-update", type=float, default=0.0, help=argparse.SUPPRESS)


# ---------------------------------------------------------------- machines and baselines


class WrongSuite(UserError):
    """A baseline file made for another suite: never compared with, never overwritten."""


def machine_key(threads: int) -> str:
    """What must match for two suites' speeds to be compared directly. Virtual machines often
    hide the CPU's name ("Intel(R) Xeon(R) Processor"), so family/model and the vector ISA torch
    dispatches to are part of the key."""
    from bench.fingerprint import cpu_model, cpuinfo

    return (f"{cpu_model()} (family {cpuinfo('cpu family') or '?'} model {cpuinfo('model') or '?'}) | "
            f"{torch.backends.cpu.get_cpu_capability()} | {threads} threads")  # fmt: skip


def load_baselines(path: Path, suite: str | None = None) -> dict[str, dict]:
    """The file's entries by machine key; one line naming the bad field and exit 2 (UserError)
    when it is missing or malformed, or was made for another suite than ``suite``."""
    data = read_json(path, "baseline")
    made_for = data.get("suite")
    if suite is not None and made_for is not None and made_for != suite:
        # Another suite's budgets: every figure would differ (and --update-baseline would mix suites).
        raise WrongSuite(f"{path}: a baseline for suite {made_for!r}, not {suite!r}; "
                        f"pass --baseline a file made with --suite {suite}")  # fmt: skip
    machines = data.get("machines")
    if not isinstance(machines, dict) or not machines:
        raise UserError(f"{path}: malformed baseline (no 'machines'); regenerate with --update-baseline")
    for key, entry in machines.items():
        problem = _entry_problem(entry)
        if problem:
            raise UserError(f"{path}: malformed baseline (machine {key!r}: {problem}); "
                            "regenerate with --update-baseline")  # fmt: skip
    return machines


def _brief(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one machine's baseline entry (the first field found), or None."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__}, expected an object"
    for k in ENTRY_KEYS:
        if k not in entry:
            return f"no {k!r}"
        if not isinstance(entry[k], dict):
            return f"{k} is {_brief(entry[k])}, expected an object"
    for k in ("env_sps", "learner_sps"):
        v = entry["reference"].get(k)
        if not (_number(v) and np.isfinite(v) and v > 0):
            return f"reference.{k} is {_brief(v)}, expected a positive number"
    for agent, v in entry["t_ref"].items():
        if not (_number(v) and np.isfinite(v) and v > 0):
            return f"t_ref.{agent} is {_brief(v)}, expected a positive number of seconds"
    for agent, figs in entry["agents"].items():
        if not isinstance(figs, dict):
            return f"agents.{agent} is {_brief(figs)}, expected an object"
        for m in METRICS:
            v = figs.get(m)
            # NaN is allowed: a run with no finished episode in its window scores NaN (never regresses).
            if not (isinstance(v, list) and v and all(_number(x) for x in v)):
                return f"agents.{agent}.{m} is {_brief(v)}, expected a non-empty list of numbers"
    return None


def kept_entries(path: Path, suite: str) -> dict[str, dict]:
    """For ``--update-baseline``: the other machines' entries, kept as they are. A file made for
    another suite is refused; an unreadable or malformed one is replaced (and said so up front)."""
    if not path.exists():
        return {}
    try:
        return load_baselines(path, suite)
    except WrongSuite:
        raise
    except UserError as err:
        print(f"  {err}: it will be replaced by this machine's entry alone", flush=True)
        return {}


def pick_baseline(machines: dict[str, dict], key: str) -> tuple[str, dict, bool]:
    """(key, entry, same_machine): this machine's entry, else the newest one."""
    if key in machines:
        return key, machines[key], True
    other = max(machines, key=lambda k: str(machines[k].get("created", "")))
    return other, machines[other], False


# ---------------------------------------------------------------- calibration


def _rate(work, seconds: float, warmup_s: float) -> float:
    """Calls of ``work`` per second over ``seconds``, after ``warmup_s`` of unmeasured calls."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup_s:
        work()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        work()
        n += 1
    return n / (time.perf_counter() - t0)


FIRST_WARMUP_S = 2.0  # the first calibration of a process warms up this long (see calibrate)
_warmed = False


def calibrate(game: str, threads: int, seconds: float = 1.5, warmup_s: float = 0.25) -> dict[str, float]:
    """Env-only SPS of ``game`` and a fixed learner workload's samples/s, on this process's cores.
    Each workload first runs ``warmup_s`` unmeasured (in a fresh process the learner's first
    quarter second ran ~13% slower than the rest), and the first calibration of a process
    ``FIRST_WARMUP_S``: on a quiet machine the calibrations around the suite's first run still
    read 25% apart with 0.25 s, enough to withhold the speed verdict."""
    global _warmed
    import envs

    if not _warmed:
        warmup_s, _warmed = max(warmup_s, FIRST_WARMUP_S), True

    torch.set_num_threads(threads)
    env = envs.make(game, 1024, num_threads=threads)
    env.reset(0)
    env_sps = _rate(env.raw_step_fn(), seconds, warmup_s) * 1024
    env.close()

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 8))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(4096, 128, generator=g)
    y = torch.randn(4096, 8, generator=g)

    def learn() -> None:
        with torch.inference_mode():
            net(x)  # an acting pass, like act()
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()

    learner_sps = _rate(learn, seconds, warmup_s) * 4096
    return {"env_sps": env_sps, "learner_sps": learner_sps}


def calibration_drift(before: dict[str, float], after: dict[str, float]) -> tuple[float, str]:
    """How far two calibrations of one machine disagree: ``max/min - 1`` of the workload that
    moved most, and its name. Above :data:`CAL_DRIFT_MAX` the machine is too noisy to judge speed."""
    worst, name = 0.0, ""
    for k in before:
        lo, hi = sorted((before[k], after[k]))
        d = hi / lo - 1.0 if lo > 0 else float("inf")
        if not d <= worst:  # NaN counts as the worst
            worst, name = d, k
    return worst, name


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


def _run_config(e: SuiteEntry, seed: int, threads: int, sleep_s: float) -> RunConfig:
    return RunConfig(agent=e.agent, game=e.game, seed=seed, steps=e.steps, threads=threads, device="cpu",
                     checkpoint_every_s=1e9, debug_update_sleep_s=sleep_s)  # fmt: skip


def check_suite(entries: list[SuiteEntry], threads: int, sleep_s: float) -> dict[str, dict[str, Any]]:
    """Every run's config checked before any run starts; each agent's typed overrides. Errors are
    one line naming the option as typed (``--agent-option ppo.lr=-1.0``)."""
    import dataclasses
    import typing

    from bench.config import _unwrap, check_run_config
    from bench.harness import load_agent_module, resolve
    from bench.perf import _typed

    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        cls = load_agent_module(e.agent).Config
        names = {f.name for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)

        def spell(k: str, v: Any, agent: str = e.agent) -> str:
            return f"--agent-option {agent}.{k}={v}"

        overrides: dict[str, Any] = {}
        for k, v in e.options.items():
            if k in names and isinstance(v, str):  # --agent-option text -> the field's type
                try:
                    v = _typed(cls, {k: v})[k]
                except UserError:
                    raise UserError(f"{spell(k, v)}: expected {_unwrap(hints[k])[0].__name__}") from None
            overrides[k] = v  # unknown names go on as typed, for resolve to name them
        runs = [check_run_config(_run_config(e, seed, threads, sleep_s)) for seed in e.seeds]
        resolve(runs[0], overrides, spell)  # names, types and ranges of the agent options
        out[e.agent] = overrides
    return out


def run_suite(entries: list[SuiteEntry], overrides: dict[str, dict[str, Any]], out: Path, threads: int,
              sleep_s: float, progress: bool = True) -> dict:  # fmt: skip
    """Train every entry's seeds into ``out``, each run bracketed by a calibration before and after."""
    from bench.harness import train
    from bench.peak import matmul_peak

    # The runs' MFU denominator is measured on a machine's first run (about a second of full-load
    # matmuls): do it here, before the first calibration, so it never sits between a run's two.
    matmul_peak(threads)
    results: dict[str, list[dict]] = {}
    for e in entries:
        for seed in e.seeds:
            cal = calibrate(e.game, threads)
            d = out / e.agent / f"seed{seed}"
            if d.exists():  # a previous regress run's folder (check_out refused anything else)
                shutil.rmtree(d)
            t0 = time.perf_counter()
            train(_run_config(e, seed, threads, sleep_s), overrides[e.agent], out=d)
            cal_after = calibrate(e.game, threads)
            # Contention may come and go during the run: average the calibrations around it, and
            # note how far they disagree (too far: the machine is too noisy to judge speed).
            cal_mean = {k: (cal[k] + cal_after[k]) / 2 for k in cal}
            drift, moved = calibration_drift(cal, cal_after)
            results.setdefault(e.agent, []).append({"seed": seed, "dir": str(d), "calibration": cal_mean,
                                                    "calibration_before": cal, "calibration_after": cal_after,
                                                    "calibration_drift": drift, "drift_workload": moved,
                                                    "elapsed_s": time.perf_counter() - t0})  # fmt: skip
            if progress:
                noisy = "" if drift <= CAL_DRIFT_MAX else f"; calibration moved {100 * drift:.0f}% ({moved}): too noisy"
                print(f"  {e.agent} seed {seed}: {time.perf_counter() - t0:.0f} s "
                      f"(env {cal_mean['env_sps']:,.0f} sps, learner {cal_mean['learner_sps']:,.0f} samples/s{noisy})",
                      flush=True)  # fmt: skip
    return results


def check_args(args: argparse.Namespace) -> None:
    """The command's own numbers, before anything is read or run."""
    most = max(len(e.seeds) for e in SUITES[args.suite])
    if args.seeds is not None and not 1 <= args.seeds <= most:
        raise UserError(f"--seeds {args.seeds}: must be between 1 and {most} "
                        f"(the {args.suite} suite's seeds per agent)")  # fmt: skip
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be >= 1")
    if args.reps < MIN_REPS:
        raise UserError(f"--reps {args.reps}: must be >= {MIN_REPS} (a 90% CI needs more draws than that)")
    if not (np.isfinite(args.test_sleep_in_update) and args.test_sleep_in_update >= 0):
        raise UserError(f"--test-sleep-in-update {args.test_sleep_in_update}: must be a finite number >= 0")
    known = [e.agent for e in SUITES[args.suite]]
    for it in args.agent_option:
        agent = it.split(".", 1)[0] if "=" in it and "." in it.split("=", 1)[0] else None
        if agent is not None and agent not in known:
            raise UserError(f"--agent-option {it!r}: the {args.suite} suite has no agent {agent!r} "
                            f"(agents: {', '.join(known)})")  # fmt: skip


def check_output(text: str | None, flag: str, folder: bool) -> Path | None:
    """An output path the command may create or replace: one line (UserError) when it is empty,
    a file where a folder is wanted or the reverse, under a file, or not writable."""
    if text is None:
        return None
    if not text:
        raise UserError(f"{flag} '': empty path")
    path = Path(text)
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{flag} {text}: is a file, not a folder")
        if not folder and path.is_dir():
            raise UserError(f"{flag} {text}: is a folder, not a file")
        if not os.access(path if folder else path.parent, os.W_OK):
            raise UserError(f"{flag} {text}: not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {text}: {parent} is not writable")
    return path


def make_folders(paths: dict[str, Path]) -> None:
    """Create the output folders once everything is checked, so a folder that passed the
    permission check and still refuses a mkdir (/proc, a read-only mount) stops us before the
    suite runs, not after it."""
    for flag, folder in paths.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag} {folder}: cannot create it ({e.strerror or e})") from None


def check_out(out: Path, entries: list[SuiteEntry]) -> None:
    """``--out`` may hold earlier regress runs (replaced), never anything else that a run would
    delete: each ``AGENT/seedN`` must be absent or a run folder of that agent."""
    for e in entries:
        for seed in e.seeds:
            d = out / e.agent / f"seed{seed}"
            if not d.exists() and not d.is_symlink():
                continue
            try:
                agent = json.loads((d / "config.json").read_text())["run"]["agent"]
            except (OSError, ValueError, KeyError, TypeError):
                agent = None
            if agent != e.agent:
                raise UserError(f"--out {out}: {d} exists and is not a {e.agent} run folder; use another --out")


def main(args: argparse.Namespace) -> int:
    from bench.compare import parse_agent_options
    from bench.fingerprint import fingerprint

    check_args(args)
    out_arg = check_output(args.out, "--out", folder=True)
    json_path = check_output(args.json, "--json", folder=False)
    md_path = check_output(args.markdown, "--markdown", folder=False)
    entries_all = SUITES[args.suite]
    options = parse_agent_options(args.agent_option, [e.agent for e in entries_all])
    entries = _suite(args.suite, options, args.seeds)
    threads = args.threads or len(os.sched_getaffinity(0))
    overrides = check_suite(entries, threads, args.test_sleep_in_update)
    if out_arg is not None:
        check_out(out_arg, entries)
    base_path = Path(args.baseline or Path(__file__).resolve().parent.parent / "baselines" / f"{args.suite}.json")
    key = machine_key(threads)
    baseline, base_key, same_machine = None, None, True
    kept: dict[str, dict] = {}  # --update-baseline: the other machines' entries
    if args.update_baseline:
        check_output(str(base_path), "--baseline", folder=False)
        kept = kept_entries(base_path, args.suite)
    else:
        base_key, baseline, same_machine = pick_baseline(load_baselines(base_path, args.suite), key)
        missing = [e.agent for e in entries if e.agent not in baseline["agents"]]
        if missing:
            raise UserError(f"{base_path}: no baseline for agent {missing[0]!r} on machine {base_key!r}; "
                            "regenerate with --update-baseline")  # fmt: skip
    make_folders({flag: path for flag, path in (("--out", out_arg), ("--json", json_path and json_path.parent),
                  ("--markdown", md_path and md_path.parent), ("--baseline", base_path.parent)) if path})  # fmt: skip
    gated = METRICS if same_machine else HARDWARE_FREE
    tmp = None
    out = out_arg if out_arg is not None else Path(tmp := tempfile.mkdtemp(prefix="bench-regress-"))
    print(f"bench regress: suite {args.suite} ({', '.join(f'{e.agent} x{len(e.seeds)} seeds, {e.steps:,} env_steps' for e in entries)}) "
          f"on {threads} threads", flush=True)  # fmt: skip
    print(f"  machine: {key}", flush=True)
    if baseline is not None and not same_machine:
        print(f"  no baseline entry for this machine; comparing with {base_key!r} through the calibration.\n"
              f"  Speed metrics ({', '.join(m for m in METRICS if m not in gated)}) are reported, not gated; "
              f"to gate them here run `bench regress --update-baseline` and commit {base_path.name}.", flush=True)  # fmt: skip
    try:
        raw = run_suite(entries, overrides, out, threads, args.test_sleep_in_update)
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
            figures[agent] = [run_figures(Path(r["dir"]), r["calibration"], ref, t_ref[agent])
                              | {k: r[k] for k in ("seed", "calibration_drift", "drift_workload")} for r in rs]  # fmt: skip
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {"suite": args.suite, "machine": key, "baseline_machine": base_key,
                              "same_machine": same_machine, "gated": list(gated), "reference": ref, "t_ref": t_ref,
                              "agents": {}, "fingerprint": fingerprint(torch.device("cpu")), "min_effect": MIN_EFFECT,
                              "calibration_drift_max": CAL_DRIFT_MAX}  # fmt: skip
    failed = False
    lines = []
    noisy_agents = []
    for agent, fs in figures.items():
        entry: dict[str, Any] = {m: [f[m] for f in fs] for m in METRICS}
        entry["seeds"] = [f["seed"] for f in fs]
        entry["wall_s"] = [f["wall_s"] for f in fs]
        entry["sps"] = [f["sps"] for f in fs]
        entry["calibration_drift"] = [f["calibration_drift"] for f in fs]
        worst = max(fs, key=lambda f: np.nan_to_num(f["calibration_drift"], nan=np.inf))
        noisy = not worst["calibration_drift"] <= CAL_DRIFT_MAX
        entry["speed_judged"] = not noisy
        if noisy:
            noisy_agents.append(agent)
            lines.append(f"{agent}: machine too noisy to judge speed: the calibration moved "
                         f"{100 * worst['calibration_drift']:.0f}% ({worst['drift_workload']}) around seed "
                         f"{worst['seed']} (limit {100 * CAL_DRIFT_MAX:.0f}%); {', '.join(SPEED)} not judged")  # fmt: skip
        if baseline:
            b = baseline["agents"][agent]
            changes = {}
            for i, m in enumerate(METRICS):
                point, lo, hi = bootstrap_change(b[m], entry[m], args.reps, seed=i)
                below = verdict(point, hi, m)
                void = noisy and m in SPEED
                changes[m] = {"change": point, "ci90": [lo, hi], "regressed": below and m in gated and not void,
                              "below_baseline": below, "gated": m in gated, "too_noisy": void,
                              "baseline_mean": float(np.mean(b[m])), "mean": float(np.mean(entry[m]))}  # fmt: skip
            entry["changes"] = changes
            bad = [m for m in METRICS if changes[m]["regressed"]]
            failed |= bool(bad)
            parts = "  ".join(f"{m} {100 * changes[m]['change']:+.0f}% [{100 * changes[m]['ci90'][0]:+.0f}%, "
                              f"{100 * changes[m]['ci90'][1]:+.0f}%]{_tag(changes[m])}" for m in METRICS)  # fmt: skip
            why = f"REGRESSION in {', '.join(bad)}" if bad else "pass"
            lines.append(f"{agent}: {why}  |  {parts}")
        else:
            lines.append(f"{agent}: baseline  score_per_hour {np.mean(entry['score_per_hour']):.1f}  "
                         f"score_at_budget {np.mean(entry['score_at_budget']):.1f}  "
                         f"norm_sps {np.mean(entry['norm_sps']):,.0f}")  # fmt: skip
        result["agents"][agent] = entry
    result["passed"] = not failed
    result["speed_judged"] = not noisy_agents
    print("\n".join(lines))
    if args.update_baseline and noisy_agents:
        # A baseline's speed figures are what every later run is judged against: never from noise.
        failed = True
        result["baseline_written"] = False
        print(f"baseline NOT written: machine too noisy to measure speed ({', '.join(noisy_agents)}); "
              "rerun --update-baseline when the machine is quieter")  # fmt: skip
    elif args.update_baseline:
        # Only this machine's entry is replaced: the other machines' baselines stay valid.
        machines = dict(kept)
        entry_out = {k: result[k] for k in ("reference", "t_ref", "agents", "fingerprint", "min_effect")}
        entry_out["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
        entry_out["python"] = platform.python_version()
        machines[key] = entry_out
        atomic_write_json(base_path, {"suite": args.suite, "machines": machines})
        print(f"baseline for this machine written to {base_path} ({len(machines)} machine(s))")
    if json_path is not None:
        atomic_write_json(json_path, result)
    if md_path is not None:
        atomic_write_bytes(md_path, markdown(result).encode())
    unjudged = f" (speed not judged for {', '.join(noisy_agents)}: machine too noisy)" if noisy_agents else ""
    print("bench regress: " + ("FAILED" if failed else "passed") + unjudged)
    return 1 if failed else 0


def _tag(change: dict) -> str:
    """How a metric's line is qualified: a verdict withheld for noise, or a metric not gated here."""
    if change["too_noisy"]:
        return " (too noisy)"
    return "" if change["gated"] else " (not gated)"


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
                         f"| {_md_verdict(c)} |")  # fmt: skip
    noisy = [a for a, e in result["agents"].items() if not e.get("speed_judged", True)]
    if noisy:
        lines += ["", f"**Machine too noisy to judge speed** for {', '.join(noisy)}: the calibrations before and "
                  f"after a run disagreed by more than {100 * result['calibration_drift_max']:.0f}%, so "
                  f"{', '.join(SPEED)} were not judged; score_at_budget was."]  # fmt: skip
    lines += ["", f"T_ref (normalised s): {json.dumps({k: round(v, 1) for k, v in result['t_ref'].items()})}; "
              f"minimum effects: {json.dumps(result['min_effect'])}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _md_verdict(c: dict) -> str:
    if c["regressed"]:
        return "**regressed**"
    if c.get("too_noisy"):
        return "too noisy to judge"
    return "ok" if c["gated"] else "not gated"

