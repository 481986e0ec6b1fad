"""The machine's matmul throughput: the denominator of model FLOP utilisation (MFU).

``MFU = achieved FLOP/s / peak FLOP/s``, where achieved FLOP/s is the meter's count (matmuls and
convolutions only, from ``torch.utils.flop_counter``, once per run) times the samples taken,
divided by the seconds of the phase that ran them, and the peak is what one large square matmul
of the run's dtype reaches on the run's threads and device. So MFU says how much of the
hardware's dense-matmul capacity the agent's network arithmetic uses; it does not count
elementwise ops, optimizer steps, data movement or the environment, which is why an agent can be
slow at a low MFU (the usual case for small networks: overhead, not arithmetic, bounds them).

The peak is measured once per (CPU or GPU model, vector ISA, threads, dtype, device) and cached
in ``$ONOFF_CACHE`` (default ``~/.cache/onoff-bench``)/``matmul_peak.json``, so it costs about a
second the first time on a machine and nothing after. It is measured before a run's clock starts.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, UTC
from pathlib import Path

import torch

SIZE = {"cpu": 1024, "cuda": 8192}  # large enough to reach the steady matmul rate, small enough to be quick


def cache_file() -> Path:
    return Path(os.environ.get("ONOFF_CACHE") or Path.home() / ".cache" / "onoff-bench") / "matmul_peak.json"


def machine_key(threads: int, dtype: torch.dtype, device: torch.device) -> str:
    from bench.fingerprint import cpu_model

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | {dev} | {threads} threads | "
            f"{str(dtype).removeprefix('torch.')} | torch {torch.__version__}")  # fmt: skip


def measure(threads: int, dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
            seconds: float = 1.0, size: int | None = None) -> float:  # fmt: skip
    """Best FLOP/s of ``size x size`` matmuls (``2 size^3`` FLOPs each) over ``seconds``."""
    n = size or SIZE.get(device.type, 1024)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)  # [n, n]
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)  # [n, n]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(3):  # warm-up: thread pool, caches, kernel selection
            a @ b
        sync()
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            sync()
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(before)


def matmul_peak(threads: int, dtype: torch.dtype = torch.float32,
                device: torch.device = torch.device("cpu")) -> dict:  # fmt: skip
    """``{"flops_per_s", "key", "size", "measured_at"}`` from the cache, measured on a miss."""
    key = machine_key(threads, dtype, device)
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("flops_per_s"), (int, float)) and hit["flops_per_s"] > 0:
        return {**hit, "key": key}
    entry = {"flops_per_s": measure(threads, dtype, device), "size": SIZE.get(device.type, 1024),
             "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    cache[key] = entry
    try:  # a cache that cannot be written only costs a re-measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return {**entry, "key": key}


def utilisation(flops: float, seconds: float, peak_flops_per_s: float) -> tuple[float, float]:
    """(achieved FLOP/s, MFU) for ``flops`` done in ``seconds`` against a peak; NaN when undefined."""
    if seconds <= 0 or not peak_flops_per_s or peak_flops_per_s <= 0:
        return float("nan"), float("nan")
    rate = flops / seconds
    return rate, rate / peak_flops_per_s
