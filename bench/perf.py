"""``bench perf``: train briefly and report steady-state speed, split into env / act / learn.

Steady state starts at the second metric row after the agent's first gradient step (replay
warm-up, PPO's first rollout and a compiling agent's first steps, which compile its update, are
excluded); the phase split covers the same window. Agents with ``compile = "auto"`` (Rainbow,
BTR) are measured compiled, as a run long enough to turn it on would run (``--compile off`` to
measure the eager path). With
``--baseline key=value ...`` a second configuration of the same agent is measured in the same
command (e.g. the CleanRL-style single-env Rainbow) and the speed-up is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from bench.config import RunConfig, parse_duration
from bench.errors import UserError
from bench.run_cmd import add_agent_options


def add_arguments(p: argparse.ArgumentParser, argv: list[str]) -> None:
    p.add_argument("--agent", required=True, help="agent name")
    p.add_argument("--game", required=True, help="game name")
    p.add_argument("--seconds", default="30", help="training wall clock per measured configuration (default 30)")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores allowed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--baseline", nargs="+", metavar="KEY=VALUE", default=None,
                   help="also measure the agent with these option overrides and print the speed-up, "
                        "e.g. --baseline num_envs=1 batch_size=32 replay_ratio=8")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_agent_options(p, argv)


_KEYS = {"agent", "game", "seconds", "seed", "threads", "device", "baseline", "json", "command"}


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--baseline {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def _typed(cls, overrides: dict, spell=None) -> dict:
    """Convert KEY=VALUE strings to the config field types; values that are not strings (TOML)
    are kept for :func:`bench.config.resolve_agent_config` to check. Errors name the option as
    ``spell(key, value)`` gives it (default ``--agent-option AGENT.KEY=VALUE``)."""
    import dataclasses
    import typing

    from bench.config import _converter, _unwrap

    owner = cls.__module__.rsplit(".", 1)[-1]
    spell = spell or (lambda k, v: f"--agent-option {owner}.{k}={v}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in overrides.items():
        if k not in names:
            import difflib

            close = difflib.get_close_matches(k, sorted(names), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else f" (see bench run --agent {owner} --help)"
            raise UserError(f"{spell(k, v)}: {owner} has no option {k!r}{hint}")
        tp, optional = _unwrap(hints[k])
        if not isinstance(v, str):  # already typed (TOML): resolve_agent_config checks it
            out[k] = v
        elif tp is bool:
            if v.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise UserError(f"{spell(k, v)}: expected true or false")
            out[k] = v.lower() in ("1", "true", "yes", "on")
        else:
            try:
                out[k] = _converter(tp, optional, k)(v)
            except argparse.ArgumentTypeError:
                raise UserError(f"{spell(k, v)}: expected {'an int' if tp is int else 'a ' + tp.__name__}") from None
    return out


def _baseline_spelling(k: str, v) -> str:
    return f"--baseline {k}={v}"


def measure(agent: str, game: str, overrides: dict, seconds: float, seed: int, threads, device) -> dict:
    from bench.harness import resolve, train

    run0 = RunConfig(agent=agent, game=game, seed=seed)
    _, cfg = resolve(run0, overrides)
    if getattr(cfg, "compile", None) == "auto":  # as a long run resolves it (agents.fused)
        overrides = {**overrides, "compile": "on"}
    n = cfg.num_envs
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        run = RunConfig(agent=agent, game=game, seed=seed, time_s=seconds, threads=threads, device=device,
                        log_every=max(n, (4096 // n) * n), checkpoint_every_s=1e9)  # fmt: skip
        summary = train(run, overrides, out=tmp, on_row=rows.append)
    learning = [r for r in rows if r["grad_steps"] > 0]
    start = learning[min(1, len(learning) - 2)] if len(learning) >= 2 else (rows[0] if rows else None)
    end = rows[-1]
    span = end["wall_s"] - start["wall_s"]
    if span <= 0:
        start = {"wall_s": 0.0, "env_steps": 0, "grad_samples": 0, "phase_s": dict.fromkeys(end["phase_s"], 0.0)}
        span = end["wall_s"]
    d = {k: end["phase_s"][k] - start["phase_s"][k] for k in ("env", "act", "learn")}
    steps = end["env_steps"] - start["env_steps"]
    from bench.peak import utilisation

    fa, fg = summary["flops_per_act_sample"] or 0.0, summary["flops_per_grad_sample"] or 0.0
    grads = end["grad_samples"] - start["grad_samples"]
    peak = summary.get("peak_flops_per_s") or 0.0
    rate, mfu = utilisation(fa * steps + fg * grads, span, peak)
    learn_rate, learn_mfu = utilisation(fg * grads, d["learn"], peak)
    return {
        "agent": agent, "game": game, "num_envs": n, "overrides": {k: str(v) for k, v in overrides.items()},
        "sps": steps / span,
        "env_s": d["env"], "act_s": d["act"], "learn_s": d["learn"], "window_s": span,
        "reuse_ratio": (end["grad_samples"] - start["grad_samples"]) / max(steps, 1),
        "params": summary["params"],
        "steady_from_env_steps": start["env_steps"],
        "learning_started": len(learning) >= 2,
        "total_env_steps": summary["env_steps"], "total_wall_s": summary["train_wall_s"],
        "flops_per_grad_sample": summary["flops_per_grad_sample"],
        "flops_per_act_sample": summary["flops_per_act_sample"],
        # Meter FLOPs (matmuls and convolutions) per second of the steady window, and that over the
        # machine's calibrated float32 matmul peak (bench.peak); the learn phase's own rate beside it.
        "flops_per_s": rate, "mfu": mfu, "learn_flops_per_s": learn_rate, "mfu_learn": learn_mfu,
        "peak_flops_per_s": peak or None,
        "peak_dtype": "bfloat16" if "bfloat16" in (summary.get("peak_key") or "") else "float32",
    }  # fmt: skip


def _line(r: dict) -> str:
    tot = r["env_s"] + r["act_s"] + r["learn_s"]
    pct = {k: 100 * r[f"{k}_s"] / tot if tot else 0 for k in ("env", "act", "learn")}
    warn = "" if r["learning_started"] else "  (learning never started: whole run measured)"
    opts = " ".join(f"{k}={v}" for k, v in r["overrides"].items() if k != "num_envs")
    return (f"{r['agent']} {r['game']} num_envs={r['num_envs']} {opts}\n"
            f"  {r['sps']:,.0f} env_steps/s steady (from env_steps {r['steady_from_env_steps']:,}, {r['window_s']:.1f} s)"
            f"{warn}\n  env {r['env_s']:.1f}s ({pct['env']:.0f}%)  act {r['act_s']:.1f}s ({pct['act']:.0f}%)  "
            f"learn {r['learn_s']:.1f}s ({pct['learn']:.0f}%)\n"
            f"  reuse_ratio {r['reuse_ratio']:.2f}  params {r['params']:,}  "
            f"{r['flops_per_grad_sample'] / 1e6:.2f} MFLOP/grad_sample\n"
            f"  {r['flops_per_s'] / 1e9:.2f} GFLOP/s = MFU {100 * r['mfu']:.1f}% of the {(r['peak_flops_per_s'] or float('nan')) / 1e9:.0f} "
            f"GFLOP/s {r['peak_dtype']} matmul peak (learn phase: MFU {100 * r['mfu_learn']:.1f}%; matmuls and convolutions "
            "only)")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from bench.config import check_run_config
    from bench.harness import load_agent_module, pick_device, resolve

    seconds = parse_duration(args.seconds, "--seconds")
    overrides = {k: v for k, v in vars(args).items() if k not in _KEYS}
    # Everything both measurements need is checked before the first one starts.
    run0 = check_run_config(RunConfig(agent=args.agent, game=args.game, seed=args.seed, time_s=seconds,
                                      threads=args.threads, device=args.device),
                            spell=lambda k, v: f"{'--seconds' if k == 'time_s' else '--' + k.replace('_', '-')} {v}")  # fmt: skip
    pick_device(args.device)
    resolve(run0, overrides)
    base_over = None
    if args.baseline:
        typed = _typed(load_agent_module(args.agent).Config, _parse_kv(args.baseline), _baseline_spelling)
        base_over = {**overrides, **typed}
        resolve(run0, base_over, lambda k, v: _baseline_spelling(k, v) if k in typed else f"--{k.replace('_', '-')} {v}")
    res = measure(args.agent, args.game, overrides, seconds, args.seed, args.threads, args.device)
    out = dict(res)
    if base_over is not None:
        base = measure(args.agent, args.game, base_over, seconds, args.seed, args.threads, args.device)
        out["baseline"] = base
        out["speedup"] = res["sps"] / base["sps"] if base["sps"] else None
    if args.json:
        print(json.dumps(out))
        return 0
    print(_line(res))
    if args.baseline:
        print("baseline:\n" + _line(out["baseline"]))
        print(f"speed-up: {out['speedup']:.1f}x env_steps/s")
    return 0
