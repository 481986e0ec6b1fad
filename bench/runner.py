"""Run many runs: expansion into run specs, fair CPU shares, a live overview, two backends.

Every run is a ``bench run`` subprocess writing its own folder, so a crash or a kill loses at
most that run's progress since its last checkpoint, and rerunning the same grid skips finished
runs (``done``) and resumes unfinished ones (the harness's resume rules).

Fairness: with W workers on C allowed cores, each run is pinned (``sched_setaffinity``) to its
own C // W cores and uses that many torch / ALE threads; the share is recorded in the run's
config (``run.threads`` and the fingerprint's ``cores_allowed``/``affinity``). ``--workers 1``
gives each run the whole machine.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.results import RunDir


@dataclass(frozen=True)
class RunSpec:
    agent: str
    game: str
    seed: int
    out: str
    label: str
    steps: int | None = None
    time_s: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 0
    eval_every: int | None = None

    def argv(self, threads: int) -> list[str]:
        a = ["run", "--agent", self.agent, "--game", self.game, "--seed", str(self.seed), "--out", self.out,
             "--label", self.label, "--threads", str(threads), "--eval-episodes", str(self.eval_episodes)]  # fmt: skip
        if self.steps is not None:
            a += ["--steps", str(self.steps)]
        if self.time_s is not None:
            a += ["--time", f"{self.time_s}s"]
        if self.eval_every is not None:
            a += ["--eval-every", str(self.eval_every)]
        for k, v in sorted(self.overrides.items()):
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                a.append(flag if v else "--no-" + k.replace("_", "-"))
            else:
                a += [flag, str(v)]
        return a


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_shares(workers: int) -> list[list[int]]:
    cpus = allowed_cpus()
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    if workers > len(cpus):
        raise UserError(f"--workers {workers}: only {len(cpus)} cores are available; equal pinned shares need "
                        f"workers <= cores")  # fmt: skip
    k = len(cpus) // workers
    return [cpus[i * k:(i + 1) * k] for i in range(workers)]


def status_of(spec: RunSpec) -> str:
    return RunDir(spec.out).status


def progress_of(spec: RunSpec) -> tuple[float, str]:
    """(fraction done, 'score / sps' text) from the run's own metrics.csv (tail only)."""
    path = Path(spec.out) / "metrics.csv"
    if not path.exists():
        return 0.0, ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0.0, ""
    last = next((ln.split(",") for ln in reversed(lines) if ln and not ln.startswith("wall_s") and ln.count(",") == 9), None)
    if last is None:
        return 0.0, ""
    wall_s, env_steps, sps = float(last[0]), int(last[1]), float(last[7])
    # Over the rows in the tail (dozens), not the last row alone: see bench.meter.RecentRate.
    first = next((ln.split(",") for ln in lines[1:] if ln and not ln.startswith("wall_s") and ln.count(",") == 9), None)
    if first is not None and wall_s > float(first[0]):
        sps = (env_steps - int(first[1])) / (wall_s - float(first[0]))
    score = next((float(ln.split(",")[8]) for ln in reversed(lines)
                  if ln.count(",") == 9 and not ln.startswith("wall_s") and ln.split(",")[8]), None)  # fmt: skip
    frac = max(env_steps / spec.steps if spec.steps else 0.0, wall_s / spec.time_s if spec.time_s else 0.0)
    text = f"{env_steps:,} env_steps  {sps:,.0f} sps" + ("" if score is None else f"  score {score:.1f}")
    return min(frac, 1.0), text


class Overview:
    """Live table of every run (rich, on a terminal); one line per start/finish otherwise."""

    def __init__(self, specs: list[RunSpec]):
        self.specs = specs
        self.tty = sys.stdout.isatty()
        self._live = None
        if self.tty:
            from rich.live import Live

            self._live = Live(self._table({}), refresh_per_second=2, transient=False)
            self._live.start()

    def _table(self, states: dict[str, str]):
        from rich.table import Table

        t = Table(title="runs", show_lines=False)
        for col in ("run", "state", "progress", "latest"):
            t.add_column(col)
        for s in self.specs:
            frac, text = progress_of(s)
            state = states.get(s.out) or status_of(s)
            t.add_row(f"{s.label} {s.game} seed {s.seed}", state, f"{100 * frac:5.1f}%", text)
        return t

    def update(self, states: dict[str, str]) -> None:
        if self._live is not None:
            self._live.update(self._table(states))

    def event(self, spec: RunSpec, what: str) -> None:
        if self._live is None:
            print(f"[{time.strftime('%H:%M:%S')}] {spec.label} {spec.game} seed {spec.seed}: {what}", flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def run_local(specs: list[RunSpec], workers: int, log_dir: Path) -> dict[str, str]:
    """Run every unfinished spec in a pool of ``workers`` pinned subprocesses.
    Returns {out: 'done' | 'skipped' | 'failed (...)'}."""
    shares = cpu_shares(workers)
    todo = []
    results: dict[str, str] = {}
    for s in specs:
        if status_of(s) == "done":
            results[s.out] = "skipped (done)"
        else:
            todo.append(s)
    view = Overview(specs)
    for s in specs:
        if s.out in results:
            view.event(s, "already finished, skipped")
    running: dict[int, tuple[subprocess.Popen, RunSpec, Any]] = {}
    free = list(range(len(shares)))
    states: dict[str, str] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        while todo or running:
            while todo and free:
                slot = free.pop(0)
                spec = todo.pop(0)
                cpus = shares[slot]
                log = open(log_dir / f"{Path(spec.out).relative_to(log_dir.parent).as_posix().replace('/', '_')}.log", "a")
                cmd = [sys.executable, "-m", "bench.cli", *spec.argv(len(cpus))]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c))
                                        if hasattr(os, "sched_setaffinity") else None)  # fmt: skip
                running[slot] = (proc, spec, log)
                states[spec.out] = f"running (cpus {','.join(map(str, cpus))})"
                view.event(spec, f"started on cpus {cpus}")
            time.sleep(0.5)
            for slot, (proc, spec, log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[slot]
                free.append(slot)
                if rc == 0:
                    results[spec.out] = states[spec.out] = "done"
                else:
                    tail = (Path(log.name).read_text().strip().splitlines() or ["?"])[-1]
                    results[spec.out] = states[spec.out] = f"failed (exit {rc}: {tail})"
                view.event(spec, results[spec.out])
            view.update(states)
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group, but a SIGTERM (kill, a scheduler) reaches only
        # this process: pass it on, so every `bench run` writes its checkpoint and stops (runs
        # that already got the Ctrl-C ignore the second signal).
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        view.close()
        raise
    view.close()
    return results


def run_ray(specs: list[RunSpec], address: str | None, cpus_per_run: int, gpus_per_run: float, log_dir: Path) -> dict[str, str]:
    """One Ray task per run, each requesting ``cpus_per_run`` CPUs (and GPUs): the task runs the
    same ``bench run`` subprocess, so results land in the same folders under the same rules."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'onoff-bench[ray]'") from None

    @ray.remote
    def _one(argv: list[str], log_path: str, threads: int) -> int:
        with open(log_path, "a") as log:
            return subprocess.call([sys.executable, "-m", "bench.cli", *argv], stdout=log, stderr=subprocess.STDOUT)

    log_dir.mkdir(parents=True, exist_ok=True)
    started_here = not ray.is_initialized()
    if started_here:
        kw = {"address": address} if address and address != "local" else {"num_cpus": len(allowed_cpus())}
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}}, **kw)  # fmt: skip
    results: dict[str, str] = {}
    futures = {}
    for s in specs:
        if status_of(s) == "done":
            results[s.out] = "skipped (done)"
            continue
        log = str(log_dir / f"{Path(s.out).relative_to(log_dir.parent).as_posix().replace('/', '_')}.log")
        task = _one.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
        # Absolute paths: a Ray worker's working directory need not be ours.
        s_abs = dataclasses.replace(s, out=str(Path(s.out).resolve()))
        futures[task.remote(s_abs.argv(cpus_per_run), str(Path(log).resolve()), cpus_per_run)] = s
        print(f"submitted {s.label} {s.game} seed {s.seed} ({cpus_per_run} CPU)", flush=True)
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            s = futures[ref]
            rc = ray.get(ref)
            results[s.out] = "done" if rc == 0 else f"failed (exit {rc})"
            print(f"{s.label} {s.game} seed {s.seed}: {results[s.out]}", flush=True)
    if started_here:
        ray.shutdown()
    return results


def spec_dict(s: RunSpec) -> dict:
    return dataclasses.asdict(s)
