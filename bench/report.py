"""``bench report DIR...``: figures, summary.md, summary.json and index.html from run folders.

Run folders are found recursively (any folder holding config.json). The numbers and the
definitions behind them are in :mod:`plots.report`; this module only parses options, calls it,
and prints a compact table and the files written. A single DIR holding ``study.toml`` is a
``bench paper`` study's archive: its analysis runs too (:func:`bench.paper.analyse_study`).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from bench.errors import UserError


def add_arguments(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    p.add_argument(
        "dirs", nargs="+", metavar="DIR", help="run folders, or folders holding them (searched recursively)"
    )
    p.add_argument("--out", default=None, help="report folder (default: DIR/report for the first DIR)")
    p.add_argument("--reps", type=int, default=2000,
                   help="bootstrap draws per confidence interval (default 2000)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap RNG (default 0)")
    p.add_argument("--last-episodes", type=int, default=100,
                   help="final score = mean return of a run's last N training episodes (default 100)")  # fmt: skip
    p.add_argument("--score", choices=["auto", "train", "eval"], default="auto",
                   help="final-score source: auto = evaluation where every run of a game has one, else training "
                        "episodes (default auto)")  # fmt: skip
    p.add_argument(
        "--formats", default="png,pdf", help="figure files to write, comma-separated (default png,pdf)"
    )
    p.add_argument("--suite", default=None,
                   help="aggregate over this named suite's games only (minatar, ocean, atari5, atari57) and "
                        "say which of its games have no runs")  # fmt: skip
    p.add_argument("--allow-mixed", action="store_true",
                   help="pool runs with different protocols or hardware fingerprints (marked MIXED)")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from bench.results import check_target_dir
    from plots.report import Options, build_report

    if args.out == "":
        raise UserError("--out '': empty path (give a folder, or leave --out out for DIR/report)")
    if "" in args.dirs:
        raise UserError("DIR '': empty path (give run folders, or folders holding them)")
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    if args.out:  # the default, DIR/report, is checked with DIR (and on creation)
        check_target_dir(out, "--out")
    if args.suite is not None:
        from envs.suites import UnknownSuite, get

        try:
            get(args.suite)
        except UnknownSuite as e:
            raise UserError(f"--suite: {e}") from None
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"--formats {args.formats!r}: choose from png, pdf, svg")
    opts = Options(out=out, reps=args.reps, seed=args.seed, last_episodes=args.last_episodes,
                   allow_mixed=args.allow_mixed, score=args.score, formats=formats, suite=args.suite,
                   command="bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))  # fmt: skip
    if len(args.dirs) == 1 and (Path(args.dirs[0]) / "study.toml").is_file():
        # A bench paper study's archive: the same report plus the study's analysis, as bench paper
        # writes it (summary.json's "study" section), so the numbers can be checked from the archive.
        from bench.paper import analyse_study

        num, files, section = analyse_study(Path(args.dirs[0]), opts)
        print(f"study {section['name']}: {section['answer']}")
    else:
        num, files = build_report(args.dirs, opts)
    for p, why in num.skipped:  # damaged runs are listed in the report too (summary.md, summary.json)
        print(f"bench: warning: {p}: {why}; left out of the report", file=sys.stderr)
    _print_table(num)
    print(f"wrote {len(files)} files to {out}:")
    for f in files:
        print(f"  {f}")
    return 0


def _print_table(num) -> None:
    from rich.console import Console
    from rich.table import Table

    from plots.report import _pct, fmt, fmt_est

    t = Table(title=f"final score: IQM over seeds [95% CI] ({num.opts.reps} bootstrap draws)"
              + ("  MIXED" if num.mixed else ""), title_justify="left")  # fmt: skip
    for col in ("agent", "game", "runs", "final score", "normalised", "SPS", "reuse", "wall s", "FLOPs", "MFU"):
        t.add_column(col, justify="left" if col in ("agent", "game") else "right")
    for row in num.rows:
        ok = sum(r.status == "ok" for r in row.runs)
        runs = f"{ok}/{len(row.runs)}" if ok != len(row.runs) else str(ok)
        t.add_row(row.label, row.game, runs, fmt_est(row.final, row.scored), fmt_est(row.normalized, row.scored),
                  fmt(row.sps), fmt(row.reuse_ratio), fmt(row.wall_s),
                  fmt(row.train_flops) if math.isfinite(row.train_flops) else "n/a",
                  _pct(row.mfu.get("mfu", math.nan)))  # fmt: skip
    console = Console(width=max(Console().width, 140))
    console.print(t)
    for m in num.mixed:
        console.print(f"[bold red]MIXED[/]: {m}")
    bad = [r for r in num.runs if r.status != "ok"]
    if bad:
        console.print(f"{len(bad)} run(s) not finished cleanly (listed in summary.md): "
                      + ", ".join(f"{r.path} ({r.status})" for r in bad[:5]) + (" ..." if len(bad) > 5 else ""))  # fmt: skip
    for p, why in num.skipped:
        console.print(f"skipped {p}: {why}")
