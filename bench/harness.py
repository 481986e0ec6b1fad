"""The one training loop. It runs every agent the same way (STYLE.md principle 2):

    act -> env step -> observe -> update

and owns everything around it: seeding, devices, environments, the compute meter, episode
accounting, evaluation, checkpoints and result rows. There is no per-agent branch here; what an
agent needs from the loop is in the contract (:mod:`agents.api`).

Units: ``env_steps`` count agent-environment interactions summed over the batch (one vector
step of N envs is N env steps); ``frames = env_steps * frameskip``; ``grad_samples`` counts
transitions consumed by gradient steps, once per use; ``wall_s`` is training wall clock with
evaluation and checkpoint writes excluded (their seconds are recorded separately).

Budgets: ``steps`` (env steps, rounded up to whole vector steps) and/or ``time_s`` (training
wall clock); whichever ends first. Agents' annealing schedules read the fraction of it spent
(``AgentContext.progress``, the larger of the two fractions): the harness keeps the clock, the
agents see a number. Under a time budget that number, and so each schedule, depends on the
machine's speed.

Resume: a checkpoint holds the agent, the meter, the RNG states and how many rows each log had.
Rerunning on an unfinished folder loads it, drops rows written after it, resets the envs with a
seed derived from the run seed and the step count (episodes in flight at the checkpoint are
abandoned: their partial returns are never reported) and continues counters and wall clock, so
the budget fraction continues too. The first ``act`` after the reset gets ``first`` all True, so
the agent closes what it had stored across the break (:mod:`agents.api`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch

import agents
import envs
from agents.api import AgentContext
from bench.config import RunConfig, Spell, check_run_config, resolve_agent_config
from bench.errors import RunFailed, UserError
from bench.fingerprint import fingerprint, write_record
from bench.meter import UNTIMED_BY_BUDGET, CpuMeter, Meter, RecentRate, count_flops, trainable_params
from bench.results import RunDir
from bench.runner import pinning_record

EVAL_MAX_VECTOR_STEPS = 27_000  # 108K frames at frameskip 4: the Atari episode cap


class EpisodeTracker:
    """Full-game returns and lengths, summed by the harness from raw rewards, per env.

    Kept in numpy (zero-copy views of CPU tensors): a dozen vector ops per step on a few thousand
    envs cost ~20 us this way against ~100 us as torch ops, which is the harness's overhead budget.
    """

    def __init__(self, n: int):
        self.ret = np.zeros(n, np.float64)
        self.length = np.zeros(n, np.int64)
        self._returns: list[np.ndarray] = []  # finished since the last drain
        self._lengths: list[np.ndarray] = []

    def update(self, reward: torch.Tensor, done: torch.Tensor) -> int:
        """Add one step; return how many episodes finished in it."""
        d = done.cpu().numpy()
        self.ret += reward.cpu().numpy()
        self.length += 1
        if not d.any():
            return 0
        finished = self.ret[d]
        self._returns.append(finished)
        self._lengths.append(self.length[d])
        self.ret[d] = 0.0
        self.length[d] = 0
        return len(finished)

    def drain(self) -> tuple[float | None, float | None]:
        """Mean return and length of the episodes finished since the last drain."""
        if not self._returns:
            return None, None
        r, n = float(np.concatenate(self._returns).mean()), float(np.concatenate(self._lengths).mean())
        self._returns.clear()
        self._lengths.clear()
        return r, n


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_agent_module(name: str):
    try:
        return agents.load(name)
    except KeyError:
        import difflib

        names = agents.available()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown agent {name!r}{hint} (agents: {', '.join(names)})") from None


def resolve(run: RunConfig, overrides: dict[str, Any], spell: Spell | None = None):
    """(agent module, resolved agent config) for a run; raises UserError on bad names/options,
    naming each option as ``spell(field, value)`` does (default: ``--lr -1.0``)."""
    mod = load_agent_module(run.agent)
    try:
        envs.check_game(run.game)
    except envs.UnknownGame as e:
        raise UserError(str(e)) from None
    cfg = resolve_agent_config(mod.Config, getattr(mod, "PRESETS", None), envs.family_of(run.game), overrides, spell)
    return mod, cfg


def inactive_options(mod, cfg, spec) -> list[str]:
    """The agent options that change nothing on this env with this config, from the agent
    module's own pure ``inactive_options(cfg, spec)`` (none if it has none): warned about and
    recorded in config.json, so a switch is never silently off (e.g. BTR's ``--impala`` on vector
    observations). A ValueError says the config cannot take the env at all."""
    fn = getattr(mod, "inactive_options", None)
    return sorted(fn(cfg, spec)) if fn is not None else []


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _finite(metrics: dict) -> str | None:
    for k, v in metrics.items():
        if isinstance(v, (float, int)) and not math.isfinite(v):
            return k
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not torch.isfinite(v).item():
            return k
    return None


@dataclasses.dataclass
class EvalResult:
    """What one evaluation saw: ``returns`` of the episodes that finished within the cap, and
    ``capped``, the partial returns of the episodes still running when the cap was hit (one per env
    short of its quota; episodes that never started are in neither)."""

    returns: list[float]
    capped: list[float]


def evaluate(agent, env, episodes: int, seed: int, max_vector_steps: int = EVAL_MAX_VECTOR_STEPS,
             video=None) -> EvalResult:  # fmt: skip
    """Greedy (explore=False) full-game returns. Each env plays a fixed quota of episodes, so
    short episodes are not over-represented. Episodes still running after ``max_vector_steps``
    vector steps cannot be scored: they are left out of ``returns``, which favours short episodes,
    and reported in ``capped`` at their partial return (a lower bound when rewards are >= 0).

    ``video`` (:class:`bench.video.EpisodeClip`, ``--capture-video``) films env 0's first episode;
    it only reads the actions and steps, so the returns and every RNG stream are the same without it."""
    n = env.num_envs
    quota = torch.full((n,), math.ceil(episodes / n), dtype=torch.int64)
    quota[: n * int(quota[0]) - episodes] -= 1  # exactly `episodes` in total
    ret = torch.zeros(n, dtype=torch.float64)
    done_count = torch.zeros(n, dtype=torch.int64)
    returns: list[float] = []
    obs = env.reset(seed)
    if video is not None:
        video.start(env, seed)
    first = torch.ones(n, dtype=torch.bool)  # [N] envs whose obs starts an episode
    for _ in range(max_vector_steps):
        actions = agent.act(obs, explore=False, first=first)
        step = env.step(actions)
        if video is not None:
            video.add(actions, step)
        first = step.done.cpu()
        done = first
        ret += step.reward.cpu()
        if done.any():
            for i in done.nonzero().squeeze(1).tolist():
                if done_count[i] < quota[i]:
                    returns.append(float(ret[i]))
                done_count[i] += 1
            ret[done] = 0.0
        if bool((done_count >= quota).all()):
            break
        obs = step.obs
    capped = [float(ret[i]) for i in (done_count < quota).nonzero().squeeze(1).tolist()]
    if video is not None:
        video.close()
    return EvalResult(returns, capped)


class _Progress:
    """A rich progress bar on a terminal; a line every ~10% of the budget otherwise (CI logs)."""

    def __init__(self, enabled: bool, title: str, total: float, unit: str):
        self.enabled, self.total, self.unit = enabled, total, unit
        self.tty = enabled and sys.stderr.isatty()
        self._next_pct = 10
        self._bar = None
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(title, total=total, info="")
        elif enabled:
            print(f"{title}: started", file=sys.stderr, flush=True)
        self.title = title

    def update(self, done: float, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=min(done, self.total), info=info)
        elif self.enabled and self.total and 100 * done / self.total >= self._next_pct:
            print(f"{self.title}: {100 * done / self.total:3.0f}%  {info}", file=sys.stderr, flush=True)
            self._next_pct = 10 * (int(100 * done / self.total) // 10 + 1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def train(
    run: RunConfig,
    overrides: dict[str, Any] | None = None,
    out: str | os.PathLike = "runs/run",
    command: str | None = None,
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
    preset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training run into ``out``; return its compute summary.

    ``preset``: a tuned preset file's record (:meth:`bench.preset.Preset.record`) whose values are
    already in ``overrides``; kept in config.json as ``preset`` (null without one).

    Raises UserError for bad input, RunFailed when a loss goes NaN/inf (files kept, marked). An
    optional sink that keeps a process of its own (W&B) is finished however the run ends."""
    with contextlib.ExitStack() as cleanup:
        return _train(run, overrides, out, command, progress, on_row, cleanup, preset)


def _train(run: RunConfig, overrides: dict[str, Any] | None, out: str | os.PathLike, command: str | None,
           progress: bool, on_row: Callable[[dict], None] | None, cleanup: contextlib.ExitStack,
           preset: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    check_run_config(run)
    overrides = dict(overrides or {})
    mod, cfg = resolve(run, overrides)
    if run.capture_video:
        from bench import video

        video.check(run.game)  # a game that cannot be filmed, or no encoder: refused before any file
    rd = RunDir(out)
    status = rd.check()  # new, or a run whose config and ledgers are intact; else one-line UserError
    device = pick_device(run.device)
    threads = run.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)

    identity = {"run": run.identity(), "agent": dataclasses.asdict(cfg)}
    # ``compile`` changes speed, not the maths (agents.fused, tested): a run may resume either way.
    identity["agent"].pop("compile", None)
    if status != "new":
        prev = rd.config()
        prev_agent = dict(prev.get("agent") or {})
        prev_agent.pop("compile", None)
        # A field added since the run was made counts as its default (e.g. precision fp32).
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for k, v in identity["agent"].items():
            if k not in prev_agent and v == defaults.get(k):
                prev_agent[k] = v
        prev_id = {"run": {k: prev["run"].get(k) for k in identity["run"]}, "agent": prev_agent}
        if prev_id != identity:
            diff = [k for k in identity["run"] if prev_id["run"].get(k) != identity["run"][k]]
            diff += [f"agent.{k}" for k in identity["agent"] if (prev_id["agent"] or {}).get(k) != identity["agent"][k]]
            raise UserError(f"{rd.path} holds a different run (differs in: {', '.join(diff) or 'config'}); "
                            "choose another --out")  # fmt: skip
        if status == "done":
            return {"status": "done", "already_finished": True, **_read_compute(rd)}
        if status == "failed":
            raise UserError(f"{rd.path} is a failed run ({rd.file('failed').read_text().strip()}); "
                            "remove the folder to start over")  # fmt: skip

    seed_everything(run.seed)
    env = envs.make(run.game, cfg.num_envs, device, protocol=run.protocol, num_threads=threads)
    spec, n = env.spec, env.num_envs
    total = None if run.steps is None else math.ceil(run.steps / n) * n
    # progress: budget_used() below, which reads the clock; agents see only the fraction.
    ctx = AgentContext(spec=spec, num_envs=n, device=device, total_env_steps=total,
                       progress=lambda: budget_used(), time_budget_s=run.time_s)  # fmt: skip
    try:
        inactive = inactive_options(mod, cfg, spec)
        agent = mod.Agent(cfg, ctx)
    except ValueError as e:  # the config cannot take this env, e.g. a conv torso on vector observations
        env.close()
        raise UserError(f"{run.agent} on {run.game}: {e}") from None
    # All are recorded; the warning names the ones someone chose: a switch that is on, or a value
    # a preset or the user set (not every image run warning that the unused MLP keeps its depth).
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    chosen = [k for k in inactive if getattr(cfg, k) is True or getattr(cfg, k) != defaults.get(k)]
    if chosen:
        print(f"bench: warning: {run.agent} options with no effect on {run.game} (observation "
              f"{list(spec.obs_shape)}): {', '.join(chosen)} (config.json: inactive_options)",
              file=sys.stderr, flush=True)  # fmt: skip
    meter = Meter(device=device)
    # Reduced precision (bench.precision): the agent's field, applied here around act/observe/update.
    from bench import precision as prec

    amp_name = getattr(cfg, "precision", "fp32")
    try:
        prec.check(amp_name, device)
    except UserError:
        env.close()
        raise

    def amp():
        return prec.autocast(amp_name, device)

    # The MFU denominator, from the per-machine cache (measured there once, before any clock runs),
    # for the dtype the matmuls run in.
    from bench.peak import matmul_peak

    peak = matmul_peak(threads, prec.matmul_dtype(amp_name), device)

    if status == "new":
        rd.create({
            # pinned / pinning: the cores a runner (bench compare / sweep) gave the run, or why none
            "run": {**dataclasses.asdict(run), "out": str(rd.path), "threads": threads, "device": str(device),
                    **pinning_record()},
            "agent": dataclasses.asdict(cfg),
            "env": {"game": spec.game, "family": spec.family, "obs_shape": list(spec.obs_shape),
                    "obs_dtype": str(spec.obs_dtype).removeprefix("torch."), "num_actions": spec.num_actions,
                    "frameskip": spec.frameskip, "num_envs": n, "protocol": spec.protocol},
            "inactive_options": inactive,
            # what an "auto" option resolved to for this run (compile: agents.fused)
            "resolved": {"compile": agent.compiled} if hasattr(agent, "compiled") else {},
            "fingerprint": fingerprint(device),
            "command": command,
            # a tuned preset file (bench.preset): its path, values and the tuning budget behind them
            "preset": preset,
        })  # fmt: skip
        write_record(rd.path)  # packages.txt, and code.diff when the code has uncommitted changes
    logs = rd.logs()
    log_every = run.log_every or max(10_000, (total or 0) // 200)
    log_every = math.ceil(log_every / n) * n
    eval_every = run.eval_every and math.ceil(run.eval_every / n) * n
    next_log, next_eval, wall_prior, resumes = log_every, eval_every, 0.0, 0
    cpu = CpuMeter()
    ckpt = rd.load_checkpoint() if status == "partial" else None
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        meter.load_state_dict(ckpt["meter"])
        cpu.load_state_dict(ckpt.get("cpu"), ckpt["train_wall_s"])  # absent in checkpoints made before it
        _set_rng_state(ckpt["rng"])
        for name, log in logs.items():  # every ledger checked before any is cut
            log.check_rows(ckpt["rows"].get(name, 0))
        for name, log in logs.items():
            log.truncate(ckpt["rows"].get(name, 0))
        next_log, next_eval, wall_prior = ckpt["next_log"], ckpt["next_eval"], ckpt["train_wall_s"]
        resumes = ckpt["resumes"] + 1
    else:
        for log in logs.values():
            log.truncate(0)
    logs["eval"].ensure_header()
    c = meter.counters
    tb = _tensorboard(rd.path) if run.tensorboard else None
    if run.wandb:
        from bench.wandb_sink import WandbSink

        wb = cleanup.enter_context(WandbSink(rd, run))
    else:
        wb = None
    tracker = EpisodeTracker(n)
    eval_env = None
    untimed_prior = sum(meter.phase_s[p] for p in UNTIMED_BY_BUDGET)

    # A resumed run restarts its envs from a seed that depends on where it resumed.
    obs = env.reset(run.seed + 1_000_003 * resumes)
    if meter.flops_per_act_sample is None:
        with amp():
            _, f = count_flops(lambda: agent.act(obs, explore=False))
        meter.flops_per_act_sample = f / n
    # FLOPs per gradient sample are counted on the second update that learns: the first may pay
    # one-off costs (lazy init), and wrapping only calls after it keeps the counter's overhead off
    # agents that never learn. ``armed`` turns on after the first learning update.
    measure_update, armed = meter.flops_per_grad_sample is None, False
    params = trainable_params(agent)

    def wall() -> float:
        untimed = sum(meter.phase_s[p] for p in UNTIMED_BY_BUDGET) - untimed_prior
        return wall_prior + (time.perf_counter() - t_start) - untimed

    def budget_left() -> bool:
        if total is not None and c.env_steps >= total:
            return False
        return run.time_s is None or wall() < run.time_s

    def budget_used() -> float:
        """Fraction of the budget spent, of whichever budget ends first (the larger fraction), in
        [0, 1]: what agents' schedules anneal over (``AgentContext.progress``). It continues across
        a resume, as the counters and wall clock do. Under a time budget it depends on the
        machine's speed."""
        frac = 0.0 if total is None else c.env_steps / total
        if run.time_s is not None:
            frac = max(frac, wall() / run.time_s)
        return min(frac, 1.0)

    def checkpoint() -> None:
        w = wall()
        with cpu.untimed(), meter.phase("checkpoint"):
            for log in logs.values():
                if log._f is not None:
                    log._f.flush()
            rd.save_checkpoint({"agent": agent.state_dict(), "meter": meter.state_dict(), "rng": _rng_state(),
                                "rows": {k: v.rows for k, v in logs.items()}, "next_log": next_log,
                                "next_eval": next_eval, "train_wall_s": w, "resumes": resumes,
                                "cpu": cpu.state_dict(w)})  # fmt: skip
            rd.write_compute(_compute(meter, w, params, status="partial", peak=peak,
                                      cpu=cpu.record(w, threads)))  # fmt: skip

    def run_eval() -> None:
        nonlocal eval_env
        with cpu.untimed(), meter.phase("eval"):
            if eval_env is None:
                eval_env = envs.make(run.game, min(run.eval_episodes, 16), device, protocol=run.protocol,
                                     num_threads=threads)  # fmt: skip
            clip = None
            if run.capture_video:  # inside the eval phase: capture and encoding are never training wall clock
                from bench.video import VIDEO_DIR, EpisodeClip

                clip = EpisodeClip(rd.path / VIDEO_DIR, c.env_steps, run.game)
            with amp():
                res = evaluate(agent, eval_env, run.eval_episodes, seed=run.seed + 7_777_777 + c.env_steps,
                               video=clip)  # fmt: skip
        rets = res.returns
        row = {"wall_s": wall(), "env_steps": c.env_steps, "frames": c.frames, "grad_samples": c.grad_samples,
               "eval_episodes": len(rets), "eval_return_mean": float(np.mean(rets)) if rets else None,
               "eval_return_std": float(np.std(rets)) if rets else None,
               "eval_episodes_capped": len(res.capped),
               "eval_capped_return_mean": float(np.mean(res.capped)) if res.capped else None}  # fmt: skip
        logs["eval"].write(row)
        if tb is not None and rets:
            tb.add_scalar("eval/return", row["eval_return_mean"], c.env_steps)
        if wb is not None:
            wb.log_eval(row)

    last_row_wall, last_row_steps = wall_prior, c.env_steps
    recent = RecentRate(wall_prior, c.env_steps)
    bar = _Progress(progress, f"{run.agent} {run.game} seed {run.seed}",
                    total if total is not None else run.time_s, "env_steps" if total is not None else "s")  # fmt: skip
    last_ret: float | None = None
    last_learner: dict[str, Any] | None = None  # the latest learner.csv row (the W&B sink sends it)
    t_start = time.perf_counter()
    cpu.start()  # with the wall clock, and paused where it leaves time out (eval, checkpoints)
    t_ckpt = t_start
    # [N] the envs were just reset: at a resume every env's stream breaks without an episode end,
    # and the agent must not join what it stored before to what comes now (agents.api).
    first: torch.Tensor | None = torch.ones(n, dtype=torch.bool, device=obs.device)
    try:
        while budget_left():
            with meter.phase("act"), amp():
                actions = agent.act(obs, first=first)
                first = None
            with meter.phase("env"):
                step = env.step(actions)
                c.env_steps += n
                c.frames += n * spec.frameskip
                c.episodes += tracker.update(step.reward, step.done)
            with meter.phase("learn"), amp():
                agent.observe(step)
                if armed:
                    metrics, flops = count_flops(agent.update)
                else:
                    metrics = agent.update()
                if metrics and run.debug_update_sleep_s:
                    time.sleep(run.debug_update_sleep_s)
            obs = step.obs
            if metrics:
                gs = int(metrics.get("grad_samples", 0))
                if armed and gs > 0:
                    meter.flops_per_grad_sample = flops / gs
                    measure_update = armed = False
                elif measure_update and gs > 0:
                    armed = True
                c.grad_steps += int(metrics.get("grad_steps", 0))
                c.grad_samples += gs
                bad = _finite(metrics)
                if bad is not None:
                    rd.mark_failed({"reason": f"non-finite {bad} = {metrics[bad]}", "env_steps": c.env_steps,
                                    "grad_steps": c.grad_steps, "wall_s": wall()})  # fmt: skip
                    w = wall()
                    rd.write_compute(_compute(meter, w, params, status="failed", peak=peak,
                                              cpu=cpu.record(w, threads)))  # fmt: skip
                    raise RunFailed(f"{bad} became {metrics[bad]} at env_steps={c.env_steps}; run marked failed "
                                    f"in {rd.path}")  # fmt: skip
                last_learner = {"wall_s": wall(), "env_steps": c.env_steps, "grad_steps": c.grad_steps,
                                **{k: _scalar(v) for k, v in metrics.items()
                                   if k not in ("grad_steps", "grad_samples")}}  # fmt: skip
                logs["learner"].write(last_learner)
            if c.env_steps >= next_log or not budget_left():
                w = wall()
                ret, length = tracker.drain()
                last_ret = ret if ret is not None else last_ret
                row = {"wall_s": w, "env_steps": c.env_steps, "frames": c.frames, "episodes": c.episodes,
                       "grad_steps": c.grad_steps, "grad_samples": c.grad_samples, "reuse_ratio": c.reuse_ratio,
                       "sps": (c.env_steps - last_row_steps) / max(w - last_row_wall, 1e-9),
                       "episode_return": ret, "episode_length": length}  # fmt: skip
                logs["metrics"].write(row)
                cpu.sample_load()
                last_row_wall, last_row_steps = w, c.env_steps
                while next_log <= c.env_steps:
                    next_log += log_every
                if tb is not None:
                    for k, v in row.items():
                        if v is not None and k != "env_steps":
                            tb.add_scalar(f"train/{k}", v, c.env_steps)
                if wb is not None:
                    wb.log_row(row, last_learner)
                if on_row is not None:
                    on_row({**row, "phase_s": dict(meter.phase_s)})
                score = "-" if last_ret is None else f"{last_ret:.1f}"
                bar.update(c.env_steps if total is not None else w,
                           f"{c.env_steps:,} env_steps  {recent.add(w, c.env_steps):,.0f} sps  score {score}  "
                           f"reuse {c.reuse_ratio:.2f}")  # fmt: skip
            if eval_every and run.eval_episodes and c.env_steps >= next_eval:
                run_eval()
                while next_eval <= c.env_steps:
                    next_eval += eval_every
            if time.perf_counter() - t_ckpt >= run.checkpoint_every_s:
                checkpoint()
                t_ckpt = time.perf_counter()
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        raise
    bar.close()
    if run.eval_episodes and (not eval_every or logs["eval"].rows == 0 or next_eval - eval_every != c.env_steps):
        run_eval()  # a final evaluation at the budget, unless one just happened
    checkpoint()
    w = wall()  # after it: its seconds are recorded
    summary = _compute(meter, w, params, status="done", peak=peak, cpu=cpu.record(w, threads))
    rd.write_compute(summary)
    for log in logs.values():
        log.close()
    if tb is not None:
        tb.close()
    env.close()
    if eval_env is not None:
        eval_env.close()
    rd.mark_done({"env_steps": c.env_steps, "wall_s": summary["train_wall_s"]})
    return summary


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else None
    return v


def _utilisation(meter: Meter, wall_s: float, peak: dict | None) -> dict[str, Any]:
    """Achieved FLOP/s and MFU overall and per phase (bench.peak says what they count)."""
    from bench.peak import utilisation

    c = meter.counters
    fa, fg = meter.flops_per_act_sample or 0.0, meter.flops_per_grad_sample or 0.0
    p = (peak or {}).get("flops_per_s") or 0.0
    out: dict[str, Any] = {"peak_flops_per_s": p or None, "peak_key": (peak or {}).get("key")}
    for name, flops, secs in (("", fa * c.env_steps + fg * c.grad_samples, wall_s),
                              ("act_", fa * c.env_steps, meter.phase_s["act"]),
                              ("learn_", fg * c.grad_samples, meter.phase_s["learn"])):  # fmt: skip
        rate, mfu = utilisation(flops, secs, p)
        out[f"{name}flops_per_s"] = rate if rate == rate else None  # NaN -> null in JSON
        out[f"mfu{'_' + name.rstrip('_') if name else ''}"] = mfu if mfu == mfu else None
    return out


def _compute(meter: Meter, wall_s: float, params: int, status: str, peak: dict | None = None,
             cpu: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """compute.json; ``cpu``: :meth:`bench.meter.CpuMeter.record`'s fields (what the wall clock bought)."""
    c = meter.counters
    fa, fg = meter.flops_per_act_sample or 0.0, meter.flops_per_grad_sample or 0.0
    return {
        "status": status,
        "env_steps": c.env_steps,
        "frames": c.frames,
        "episodes": c.episodes,
        "grad_steps": c.grad_steps,
        "grad_samples": c.grad_samples,
        "reuse_ratio": c.reuse_ratio,
        "train_wall_s": wall_s,
        "eval_wall_s": meter.phase_s["eval"],
        "sps": c.env_steps / wall_s if wall_s > 0 else 0.0,
        "phase_s": dict(meter.phase_s),
        "params": params,
        "flops_per_act_sample": fa,
        "flops_per_grad_sample": fg,
        "train_flops": fa * c.env_steps + fg * c.grad_samples,
        **_utilisation(meter, wall_s, peak),
        **(cpu or {}),
    }


def _read_compute(rd: RunDir) -> dict:
    from bench.results import read_json

    p = rd.file("compute.json")
    return read_json(p, "compute.json") if p.exists() else {}


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'onoff-bench[tensorboard]'") from None
    return SummaryWriter(str(path / "tb"))
