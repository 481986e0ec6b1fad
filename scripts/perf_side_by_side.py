"""Steady-state env_steps/s of two source trees, side by side in one command (issue 18).

Runs ``bench perf --json`` from each tree in turn (interleaved, ``--repeats`` rounds, so drift of
the machine hits both alike) and prints each configuration's median with the speed-up of the
first tree over the second. The reference tree is any checkout of the code to compare against,
e.g. the commit before a speed change::

    mkdir -p /tmp/ref && git archive <commit> | tar -x -C /tmp/ref
    python scripts/perf_side_by_side.py --ref /tmp/ref --agents rainbow btr --game puffer_breakout

Both trees run with this interpreter (the same torch and PufferLib); each is put first on
``PYTHONPATH`` and used as the working directory. Run nothing else meanwhile: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def perf(tree: Path, agent: str, game: str, seconds: float, threads: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.cli", "perf", "--agent", agent, "--game", game,
           "--seconds", str(seconds), "--threads", str(threads), "--json", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"perf_side_by_side: {tree}: {' '.join(cmd[2:])} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, type=Path, help="the reference source tree (e.g. the old commit)")
    p.add_argument("--new", type=Path, default=HERE, help="the tree to measure (default: this checkout)")
    p.add_argument("--agents", nargs="+", default=["rainbow", "btr"], help="agents (default rainbow btr)")
    p.add_argument("--game", default="puffer_breakout", help="game (default puffer_breakout)")
    p.add_argument("--seconds", type=float, default=60, help="training seconds per measurement (default 60)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to measure (default 1 2)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement to this file")
    args = p.parse_args()
    for tree in (args.ref, args.new):
        if not (tree / "bench" / "perf.py").is_file():
            print(f"perf_side_by_side: {tree} is not an onoff-bench source tree (no bench/perf.py)", file=sys.stderr)
            return 2
    if args.repeats < 1 or args.seconds <= 0:
        print("perf_side_by_side: --repeats must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    results: dict[tuple[str, int, str], list[dict]] = {}
    for r in range(args.repeats):
        for agent in args.agents:
            for threads in args.threads:
                for label, tree in (("ref", args.ref), ("new", args.new)):
                    res = perf(tree, agent, args.game, args.seconds, threads, [])
                    results.setdefault((agent, threads, label), []).append(res)
                    print(f"  round {r + 1}: {label} {agent} threads={threads}: {res['sps']:,.0f} env_steps/s "
                          f"(learn {res['learn_s']:.1f} s of {res['window_s']:.1f} s, MFU {100 * res['mfu']:.1f}%)",
                          flush=True)  # fmt: skip
    print(f"\n{args.game}, steady env_steps/s, median of {args.repeats} ({args.seconds:.0f} s each); "
          f"ref = {args.ref}, new = {args.new}")  # fmt: skip
    print(f"{'agent':10} {'threads':>7} {'ref':>10} {'new':>10} {'speed-up':>9} {'learn MFU':>9}")
    for agent in args.agents:
        for threads in args.threads:
            ref = statistics.median(x["sps"] for x in results[(agent, threads, "ref")])
            new = statistics.median(x["sps"] for x in results[(agent, threads, "new")])
            mfu = statistics.median(x["mfu_learn"] for x in results[(agent, threads, "new")])
            print(f"{agent:10} {threads:>7} {ref:>10,.0f} {new:>10,.0f} {new / ref:>8.2f}x {100 * mfu:>8.1f}%")
    if args.json:
        rows = [{"agent": a, "threads": t, "tree": lab, **x} for (a, t, lab), xs in results.items() for x in xs]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
