"""Reduced precision as an option (``--precision bf16`` on every learning agent).

``bf16`` runs the agent's ``act``, ``observe`` and ``update`` under ``torch.autocast`` with
``torch.bfloat16``: matmuls and convolutions (and what autocast lists with them) compute in
bfloat16, their backward too (autograd follows the forward's dtypes), while the parameters, the
gradients the optimizer sees and its state stay float32 (autocast never changes a parameter's
dtype: the usual "float32 master weights"). The agents return their network outputs as float32,
so losses, targets and softmaxes are computed in float32.

It is refused where the hardware has no native bfloat16 arithmetic: on a CPU without AVX512-BF16
or AMX-BF16 (PyTorch would emulate it, slower than float32), or a GPU where
``torch.cuda.is_bf16_supported()`` is false. ``fp32``, the default, changes nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from bench.errors import UserError
from bench.fingerprint import cpuinfo

PRECISIONS = ("fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(supported, what was found) for native bfloat16 arithmetic on ``device``."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(device)}: torch.cuda.is_bf16_supported() is {ok}"
    flags = set((cpuinfo("flags") or "").split())
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU flags {', '.join(found)}"
    return False, f"this CPU has none of the flags {', '.join(CPU_BF16_FLAGS)}"


def check(precision: str, device: torch.device) -> None:
    """UserError unless ``precision`` is known and the device can run it natively."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        ok, why = bf16_support(device)
        if not ok:
            raise UserError(f"--precision bf16 refused on {device.type}: {why} (bfloat16 would be emulated, "
                            "slower than float32); use --precision fp32")  # fmt: skip


def autocast(precision: str, device: torch.device) -> Any:
    """The context the harness runs the agent in: autocast to bfloat16, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_dtype(precision: str) -> torch.dtype:
    """The dtype whose calibrated matmul peak is the MFU denominator of a run."""
    return torch.bfloat16 if precision == "bf16" else torch.float32
