"""``bench``: the command-line front door. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``main(args) -> int``; this file only dispatches and turns
:class:`UserError` into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import signal
import sys
import threading

from bench.errors import RunFailed, UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.run_cmd", "train one agent on one game with one seed into a run folder"),
    "envs": ("bench.envs_cmd", "measure raw backend SPS vs harness SPS for a game"),
    "perf": ("bench.perf", "train briefly and print SPS split into env / act / learn"),
    "report": ("bench.report", "figures, summary.md, summary.json and index.html from run folders"),
    "compare": ("bench.compare", "run agents side by side under equal budgets, then report"),
    "sweep": ("bench.sweep", "run a declarative grid of runs from a TOML file"),
    "paper": ("bench.paper", "run the studies of experiments/paper/, archive their runs in results/, write "
                             "docs/paper/ (resumable)"),
    "tune": ("bench.tune", "tune an agent's options under a tuning budget (Optuna); writes a preset file"),
    "regress": ("bench.regress", "CI regression check of score per (machine-normalised) hour"),
    "demo": ("bench.demo", "the embedded default job that `make demo` runs"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) and exit 2, and values like ``-5m`` are
    read as (bad) values rather than unknown options, so the budget check can name them."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._negative_number_matcher = re.compile(r"^-[0-9.]")

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(prog="bench", description="onoff-bench: on-policy vs off-policy RL under one compute meter.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module) is None:
            continue
        p = sub.add_parser(name, help=text, description=text)
        # Only the chosen subcommand's module is imported (cheap --help, no torch for `bench --help`).
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p, argv[1:])
    return parser


def _interrupt(signum, frame) -> None:
    """SIGINT or SIGTERM (what schedulers and `kill` send): unwind as for Ctrl-C, so a run
    checkpoints and a compare stops its runs. Later signals are ignored, so a second one cannot
    cut the checkpoint being written."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    on_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    for s in previous:
        signal.signal(s, _interrupt)
    try:
        return _main(argv)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _main(argv: list[str]) -> int:
    try:
        try:
            parser = build_parser(argv)
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse's own exit (--help, or an error already printed)
            return int(e.code or 0)
        if not args.command:
            parser.print_help()
            return 2
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.main(args) or 0)
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"bench: run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
