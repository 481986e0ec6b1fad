"""Named game suites: ``--suite minatar`` wherever a game is accepted.

A suite is a fixed list of games with a normalisation reference for every member
(:mod:`plots.normalize`), so that a report can aggregate over the suite (IQM, median, mean,
optimality gap of normalised scores, with stratified-bootstrap CIs). The lists are fixed here, not
discovered at run time, so that "the ocean suite" means the same games in every report.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class UnknownSuite(ValueError):
    pass


@dataclass(frozen=True)
class Suite:
    name: str
    games: tuple[str, ...]
    about: str  # what the suite is, how its games were chosen, and where the list comes from


def _atari57() -> tuple[str, ...]:
    from plots.normalize import ATARI_57

    return tuple(sorted(ATARI_57))


# Ocean: the single-agent discrete Ocean games of the PufferLib 3.0 build on which PPO (this
# harness's puffer preset, one core, 5 minutes of training wall clock, seed 1) scored at least 3x a
# uniform-random policy's mean return, both counted from the game's lowest possible return, and
# which have a normalisation reference (docs/ocean_suite.md: the commands, every candidate's PPO and
# random score, and why tetris and the refused games are out).
OCEAN_GAMES: tuple[str, ...] = (
    "puffer_breakout",
    "puffer_connect4",
    "puffer_freeway",
    "puffer_pacman",
    "puffer_pong",
    "puffer_squared",
)

SUITES: dict[str, Suite] = {
    "minatar": Suite(
        "minatar",
        ("minatar:asterix", "minatar:breakout", "minatar:freeway", "minatar:seaquest", "minatar:space_invaders"),
        "the five MinAtar games (Young & Tian 2019, arXiv:1903.03176), MinAtar's default protocol",
    ),
    "ocean": Suite(
        "ocean",
        OCEAN_GAMES,
        "PufferLib Ocean games on which PPO reaches >= 3x the random score (above the game's floor) within "
        "5 minutes on one core, and that have a normalisation reference (docs/ocean_suite.md)",
    ),
    "atari5": Suite(
        "atari5",
        ("battle_zone", "double_dunk", "name_this_game", "phoenix", "qbert"),
        "Atari-5 (Aitchison, Sweetser & Hutter 2022, 'Atari-5: Distilling the Arcade Learning Environment "
        "down to Five Games', ICML): the 5 games whose scores best predict the Atari-57 median",
    ),
}


def names() -> list[str]:
    return sorted([*SUITES, "atari57"])


def get(name: str) -> Suite:
    """The suite called ``name``; :class:`UnknownSuite` (with close names) otherwise."""
    if name == "atari57":
        return Suite("atari57", _atari57(), "the 57 Atari games of the Atari-57 human-normalised table "
                     "(Mnih et al. 2015; Badia et al. 2020)")  # fmt: skip
    if name in SUITES:
        return SUITES[name]
    close = difflib.get_close_matches(name, names(), n=2, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownSuite(f"unknown suite {name!r}{hint} (suites: {', '.join(names())})")


def suite_of(games: list[str] | set[str]) -> str | None:
    """The name of a suite whose games are exactly ``games`` (None when none is)."""
    g = set(games)
    for n in names():
        if set(get(n).games) == g:
            return n
    return None
