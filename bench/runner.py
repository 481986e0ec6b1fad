"""Run many runs: expansion into run specs, fair CPU shares, a live overview, two backends.

Every run is a ``bench run`` subprocess writing its own folder, so a crash or a kill loses at
most that run's progress since its last checkpoint, and rerunning the same grid skips finished
runs (``done``) and resumes unfinished ones (the harness's resume rules).

Fairness: with W workers on C allowed cores, each run is pinned (``sched_setaffinity``) to its
own C // W cores and uses that many torch / ALE threads; the share is recorded in the run's
config (``run.threads``, ``run.pinned`` / ``run.pinning``, and the fingerprint's
``cores_allowed`` / ``affinity``). ``--workers 1`` gives each run the whole machine. The Ray
backend pins the same way when it starts Ray on this machine; on a cluster (``--address``) it
cannot choose cores, says so when it starts, and records ``run.pinned = false`` in every run.
A failed run's line ends in the last line of its log, whichever backend ran it.
"""

from __future__ import annotations

import dataclasses
import json
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
    capture_video: bool = False  # bench run --capture-video (bench.video)
    run_flags: tuple[str, ...] = ()  # more bench run flags, the same for every run (sinks: --wandb ...)
    preset_file: str | None = None  # bench run --preset-file: a tuned preset under the explicit overrides

    def argv(self, threads: int) -> list[str]:
        a = ["run", "--agent", self.agent, "--game", self.game, "--seed", str(self.seed), "--out", self.out,
             "--label", self.label, "--threads", str(threads), "--eval-episodes", str(self.eval_episodes)]  # fmt: skip
        if self.steps is not None:
            a += ["--steps", str(self.steps)]
        if self.time_s is not None:
            a += ["--time", f"{self.time_s}s"]
        if self.eval_every is not None:
            a += ["--eval-every", str(self.eval_every)]
        if self.capture_video:
            a.append("--capture-video")
        if self.preset_file is not None:
            a += ["--preset-file", self.preset_file]
        for k, v in sorted(self.overrides.items()):
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                a.append(flag if v else "--no-" + k.replace("_", "-"))
            else:
                a += [flag, str(v)]
        return a + list(self.run_flags)


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


# How a runner tells the run it starts which cores it was given (config.json run.pinned / pinning).
PINNING_ENV = "ONOFF_BENCH_PINNING"


def pinning_env(cpus: list[int] | None, by: str, why: str = "") -> dict[str, str]:
    """The variable a runner adds to a run's environment: the ``cpus`` it pinned the run to (None:
    not pinned, ``why`` says why), ``by`` which backend."""
    note = f"pinned to cpus {','.join(map(str, cpus))} by the {by}" if cpus else f"not pinned by the {by}: {why}"
    return {PINNING_ENV: json.dumps({"pinned": bool(cpus), "cpus": cpus, "note": note})}


def pinning_record(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"pinned": bool | None, "pinning": note | None}`` for config.json's ``run``: what the
    runner that started this process said (both None for a plain ``bench run``: its cores are the
    fingerprint's ``affinity``, whatever the user gave it)."""
    text = (os.environ if environ is None else environ).get(PINNING_ENV)
    try:
        d = json.loads(text) if text else {}
    except ValueError:
        d = {}
    if not isinstance(d, dict) or "pinned" not in d:
        return {"pinned": None, "pinning": None}
    return {"pinned": bool(d["pinned"]), "pinning": str(d.get("note") or "")}


def pin_to(cpus: list[int]):
    """A ``preexec_fn`` pinning the child to ``cpus`` (None where the OS cannot pin)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def log_tail(path: str | os.PathLike, max_bytes: int = 4096) -> str:
    """The last non-empty line of a run's log (its error, or where it stopped); '?' if none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - max_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "?"
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "?")


def failure_text(rc: int, tail: str) -> str:
    """A failed run's result line, the same from every backend: exit status, last log line."""
    return f"failed (exit {rc}: {tail})"


def log_path(spec: RunSpec, log_dir: Path) -> Path:
    return log_dir / f"{Path(spec.out).relative_to(log_dir.parent).as_posix().replace('/', '_')}.log"


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
                log = open(log_path(spec, log_dir), "a")
                cmd = [sys.executable, "-m", "bench.cli", *spec.argv(len(cpus))]
                pin = pin_to(cpus)
                env = {**os.environ, **pinning_env(cpus if pin else None, "local pool", "this OS has no sched_setaffinity")}
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin, env=env)
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
                    results[spec.out] = states[spec.out] = failure_text(rc, log_tail(log.name))
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
    same ``bench run`` subprocess, so results land in the same folders under the same rules.

    Pinning, as in the local pool: when Ray is started here (no ``--address``), the allowed cores
    are cut into shares of ``cpus_per_run``, at most one run per share is in flight, and each run
    is pinned to its share. On a cluster Ray places tasks on nodes this process does not see and
    does not pin them itself: that is printed once and recorded in every run (``run.pinned`` false).
    Returns {out: 'done' | 'skipped (done)' | 'failed (exit N: last log line)'}."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'onoff-bench[ray]'") from None

    @ray.remote
    def _one(argv: list[str], log: str, cpus: list[int] | None, env: dict[str, str]) -> tuple[int, str]:
        # The log's last line is read where the log is (a cluster node need not share our disk).
        with open(log, "a") as f:
            rc = subprocess.call([sys.executable, "-m", "bench.cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, **env}, preexec_fn=pin_to(cpus) if cpus else None)  # fmt: skip
        return rc, log_tail(log)

    local = address is None or address == "local"
    started_here = not ray.is_initialized()
    cpus = allowed_cpus()
    if not local:
        why = f"Ray at --address {address} places runs on nodes this process does not manage"
    elif not started_here:
        why = "Ray was already running in this process, with cores this process does not manage"
    elif not hasattr(os, "sched_setaffinity"):
        why = "this OS has no sched_setaffinity"
    else:
        why = ""
        if cpus_per_run > len(cpus):
            raise UserError(f"--cpus-per-run {cpus_per_run}: only {len(cpus)} cores are available here")
    shares = [cpus[i * cpus_per_run:(i + 1) * cpus_per_run] for i in range(len(cpus) // cpus_per_run)] if not why else []
    if why:
        print(f"ray: runs are not pinned to cores ({why}); each reserves {cpus_per_run} CPU(s) in Ray and runs "
              f"{cpus_per_run} thread(s); recorded as run.pinned false in each config.json", flush=True)  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    if started_here:
        kw = {"address": address} if not local else {"num_cpus": len(cpus)}
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}}, **kw)  # fmt: skip

    def event(s: RunSpec, what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {s.label} {s.game} seed {s.seed}: {what}", flush=True)

    results: dict[str, str] = {}
    todo = []
    for s in specs:
        if status_of(s) == "done":
            results[s.out] = "skipped (done)"
            event(s, "already finished, skipped")
        else:
            todo.append(s)
    free = list(range(len(shares)))
    running: dict[Any, tuple[RunSpec, int | None]] = {}
    try:
        while todo or running:
            while todo and (free or not shares):
                s = todo.pop(0)
                slot = free.pop(0) if shares else None
                share = shares[slot] if slot is not None else None
                # Absolute paths: a Ray worker's working directory need not be ours.
                s_abs = dataclasses.replace(s, out=str(Path(s.out).resolve()), preset_file=(
                    str(Path(s.preset_file).resolve()) if s.preset_file is not None else None))  # fmt: skip
                task = _one.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
                ref = task.remote(s_abs.argv(cpus_per_run), str(log_path(s, log_dir).resolve()), share,
                                  pinning_env(share, "Ray backend", why))  # fmt: skip
                running[ref] = (s, slot)
                event(s, f"started on cpus {share}" if share else f"submitted ({cpus_per_run} CPU, not pinned)")
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                s, slot = running.pop(ref)
                if slot is not None:
                    free.append(slot)
                try:
                    rc, tail = ray.get(ref)
                except ray.exceptions.RayError as e:  # the task itself died (worker lost, node gone)
                    rc, tail = -1, f"ray: {(str(e).strip().splitlines() or [e.__class__.__name__])[0]}"
                results[s.out] = "done" if rc == 0 else failure_text(rc, tail)
                event(s, results[s.out])
    finally:
        if started_here:
            ray.shutdown()
    return results


def spec_dict(s: RunSpec) -> dict:
    return dataclasses.asdict(s)
