"""Score normalisation: Atari-57 human-normalised scores, and stated min-max references.

Human-normalised score (Mnih et al. 2015, "Human-level control through deep reinforcement
learning", Nature 518): ``(score - random) / (human - random)``, so 0 is a uniform-random policy
and 1 a professional human games tester. The random and human scores below are the standard
Atari-57 table (evaluation returns with up to 30 no-op starts, episodes capped at 108K frames)
as distributed in google-deepmind/dqn_zoo, ``dqn_zoo/atari_data.py`` (Apache-2.0), the table
also used by the Agent57 paper (Badia et al. 2020, appendix) and rliable's Atari-57 data. Game
keys are ale-py ROM ids, the names ``bench run --game`` takes for ALE games.

Other games have no human reference. Where a game has a known score range or a published score
we give a min-max normalisation ``(score - lo) / (hi - lo)`` against a stated reference (below,
with where the numbers come from): for MinAtar and the Ocean suite's games, ``lo`` is the
uniform-random policy's mean measured on this harness and ``hi`` a published score (MinAtar) or the
game's maximum (Ocean). Elsewhere only raw scores are reported and the game is left out of the
cross-game aggregates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# game: (random, human). Source: dqn_zoo/atari_data.py (see module docstring).
ATARI_57: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "asteroids": (719.1, 47388.7),
    "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4),
    "bowling": (23.1, 160.7),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "centipede": (2090.9, 12017.0),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "defender": (2874.5, 18688.9),
    "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4),
    "enduro": (0.0, 860.5),
    "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4),
    "hero": (1027.0, 30826.4),
    "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "montezuma_revenge": (0.0, 4753.3),
    "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0),
    "phoenix": (761.4, 7242.6),
    "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0),
    "road_runner": (11.5, 7845.0),
    "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7),
    "skiing": (-17098.1, -4336.9),
    "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7),
    "star_gunner": (664.0, 10250.0),
    "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3),
    "time_pilot": (3568.0, 5229.2),
    "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2),
    "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5),
    "yars_revenge": (3092.9, 54576.9),
    "zaxxon": (32.5, 9173.3),
}
ATARI_SOURCE = (
    "Atari-57 random/human table (Mnih et al. 2015) as in google-deepmind/dqn_zoo dqn_zoo/atari_data.py"
)

# game: (lo, hi, where the range comes from).
MIN_MAX: dict[str, tuple[float, float, str]] = {
    # Ocean Breakout: 6 rows x 18 bricks worth 7/7/4/4/1/1 points, and the wall is rebuilt once
    # after it is cleared (pufferlib/ocean/breakout/breakout.h: max_score = 2 * half_max_score
    # = 2 * 432); the observation also scales score by 1/864. A uniform-random policy scores
    # about 1 point, so 0 is used as the floor.
    "puffer_breakout": (
        0.0,
        864.0,
        "[0, 864]: 0 to the maximum of a full Ocean Breakout game (2 walls of 432 points)",
    ),
    # CartPole-v1 pays +1 per step and truncates at 500 steps (gymnasium registration).
    "gym:CartPole-v1": (0.0, 500.0, "[0, 500]: 0 to the 500-step time limit of CartPole-v1 (+1 per step)"),
}

# Random-policy means (lo of the MinAtar and Ocean normalisers), measured on this harness's own
# adapters with `scripts/random_scores.py --episodes 1000` (uniform actions, seed 0, 8 envs; the
# first 1000 finished episodes; +- is the standard error over episodes), 2026-12-02. MinAtar
# breakout's 0.536 +- 0.024 agrees with the 0.5 +- 0.023 that MinAtar's README quotes for its own
# random_play.py (1000 episodes).
RANDOM_MEASURED = "uniform-random mean of 1000 episodes on this harness (scripts/random_scores.py, seed 0)"
RANDOM: dict[str, float] = {
    "minatar:asterix": 0.452,  # +- 0.026
    "minatar:breakout": 0.536,  # +- 0.024
    "minatar:freeway": 0.139,  # +- 0.012
    "minatar:seaquest": 0.122,  # +- 0.013
    "minatar:space_invaders": 2.851,  # +- 0.074
    "puffer_breakout": 0.805,  # +- 0.035
    "puffer_pong": -19.448,  # +- 0.008
    "puffer_pacman": 20.442,  # +- 0.260
    "puffer_freeway": -0.112,  # +- 0.003
    "puffer_tetris": 1.823,  # +- 0.012
    "puffer_squared": -0.754,  # +- 0.021
    "puffer_connect4": -1.0,  # +- 0 (every random game is lost or ends on an illegal move)
}

# MinAtar hi: a published score per game. The MinAtar paper (Young & Tian 2019) and Revisiting
# Rainbow (Obando-Ceron & Castro 2021) publish MinAtar results as learning curves; no numerical
# table of theirs could be opened offline, so hi is the one numerical per-game table found: the
# PPO checkpoint returns of gymnax's README (RobertTLange/gymnax README.md, table "Implemented
# Accelerated Environments", column "Ckpt (Return)": Asterix "(R: 15)", Breakout "(R: 28)", Freeway
# "(R: 58)", SpaceInvaders "(R: 131)"; gymnax-blines trained them for 10M steps). Their protocol
# differs from ours (gymnax: minimal action sets, no sticky actions), so 1.0 means "gymnax's PPO
# checkpoint level", a scale, not a like-for-like baseline. gymnax lists no Seaquest return;
# Seaquest's hi is an interim reference, stated beside it, until a published number is found.
_GYMNAX = "PPO checkpoint return in gymnax's README table (RobertTLange/gymnax), gymnax protocol"
MINATAR_HI: dict[str, tuple[float, str]] = {
    "minatar:asterix": (15.0, _GYMNAX),
    "minatar:breakout": (28.0, _GYMNAX),
    "minatar:freeway": (58.0, _GYMNAX),
    "minatar:space_invaders": (131.0, _GYMNAX),
    # INTERIM, self-referenced: the best final score of any run in this project's MinAtar suite
    # study (results/minatar-suite-2m: PPO seed 3, 2 minutes on one core, 2026-12-02). It makes
    # Seaquest read "fraction of the best 2-minute run here", which flatters whichever agent made
    # that run; replace it with a published number when one is found.
    "minatar:seaquest": (3.04, "INTERIM, self-referenced: the best final score in results/minatar-suite-2m "
                               "(PPO seed 3, 2 min on one core); no published Seaquest number was found"),
}

# Ocean hi: the game's maximum where the C source defines one, else a stated reference (paths under
# pufferlib/ocean/ of the 3.0 build).
OCEAN_HI: dict[str, tuple[float, str]] = {
    "puffer_breakout": (864.0, "maximum: 2 walls of 432 points (breakout.h max_score)"),
    "puffer_pong": (21.0, "21 points won, the winning score (pong.py max_score; +0.1 per paddle hit comes on top)"),
    "puffer_pacman": (260.0, "maximum: 244 pickups + 16 frightened ghosts at +1 each (pacman.h)"),
    "puffer_freeway": (50.0, "25 crossings at 2.0 each (1.0 + 10 lanes x 0.1), the best of the game's "
                             "HUMAN_HIGH_SCORE table (freeway_levels.h)"),
    "puffer_squared": (1.0, "maximum: +1 for reaching the target (squared.h)"),
    "puffer_connect4": (1.0, "maximum: +1 for a win against the scripted depth-3 negamax opponent (connect4.h)"),
}
for _g, (_hi, _src) in {**MINATAR_HI, **OCEAN_HI}.items():
    MIN_MAX[_g] = (RANDOM[_g], _hi, f"[random {RANDOM[_g]:g}, {_hi:g}]: lo = {RANDOM_MEASURED}; hi = {_src}")


@dataclass(frozen=True)
class Normalizer:
    """A per-game affine map ``(score - lo) / (hi - lo)``."""

    game: str
    kind: str  # "human" (Atari-57 human-normalised) | "min-max"
    lo: float  # the score mapped to 0 (random for "human")
    hi: float  # the score mapped to 1 (human for "human")
    source: str

    def __call__(self, score):
        return (score - self.lo) / (self.hi - self.lo)


def normalizer(game: str, family: str | None = None) -> Normalizer | None:
    """The normaliser for ``game``, or None when it has no stated reference.

    ALE games are looked up by ROM id (``breakout``, also ``ale:breakout`` / ``ALE/Breakout-v5``
    spellings); ``family`` only rules out a puffer/gym game that happens to share an ALE name."""
    if game in MIN_MAX:
        lo, hi, src = MIN_MAX[game]
        return Normalizer(game, "min-max", lo, hi, src)
    if family not in (None, "ale"):
        return None
    key = _ale_key(game)
    if key in ATARI_57:
        rnd, hum = ATARI_57[key]
        return Normalizer(game, "human", rnd, hum, ATARI_SOURCE)
    return None


def _ale_key(game: str) -> str:
    g = game.strip()
    for prefix in ("ale:", "ALE/", "ale/"):
        g = g.removeprefix(prefix)
    g = g.split("-v")[0].removesuffix("NoFrameskip")
    # CamelCase ROM names (MsPacman) -> snake_case (ms_pacman)
    out = "".join("_" + ch.lower() if ch.isupper() and i else ch.lower() for i, ch in enumerate(g))
    return out


def normalize(game: str, score: float, family: str | None = None) -> float:
    """The normalised score, NaN when the game has no normaliser."""
    n = normalizer(game, family)
    return float(n(score)) if n is not None else math.nan
