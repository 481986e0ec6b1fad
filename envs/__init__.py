"""Environment registry: a game name picks its family by prefix, and the family's adapter is
imported lazily (PufferLib only ever from :mod:`envs.puffer`).

* ``puffer_<name>``: PufferLib Ocean C env (``puffer_breakout``, ``puffer_pong``, ...);
* ``gym:<id>``: any gymnasium id (``gym:CartPole-v1``);
* ``minatar:<game>``: a MinAtar game (``minatar:breakout``; :mod:`envs.minatar`);
* anything else: an ALE ROM id (``breakout``, ``ms_pacman``, ...).
"""

from __future__ import annotations

import difflib

import torch

from envs.base import EnvSpec, EnvStep, VecEnv

__all__ = ["EnvSpec", "EnvStep", "VecEnv", "UnknownGame", "family_of", "make", "known_games", "check_game",
           "video_refusal"]


class UnknownGame(ValueError):
    pass


def family_of(game: str) -> str:
    if game.startswith("puffer_"):
        return "puffer"
    if game.startswith("gym:"):
        return "gym"
    if game.startswith("minatar:"):
        return "minatar"
    return "ale"


def known_games(family: str) -> list[str]:
    if family == "puffer":
        from envs import puffer

        return puffer.games()
    if family == "ale":
        from envs import ale

        return ale.games()
    if family == "minatar":
        from envs import minatar

        return minatar.games()
    import gymnasium as gym

    return [f"gym:{k}" for k in gym.registry]


def check_game(game: str) -> None:
    """Raise :class:`UnknownGame` with the closest valid names if ``game`` does not exist."""
    fam = family_of(game)
    names = known_games(fam)
    if game in names:
        if fam == "puffer":
            from envs import puffer

            why = puffer.refusal(game)
            if why:
                raise UnknownGame(f"{game} is refused: {why}")
        return
    pool = names if fam != "ale" else names + known_games("puffer")
    close = difflib.get_close_matches(game, pool, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    kinds = "ALE ids like breakout, puffer_<ocean env>, minatar:<game>, or gym:<gymnasium id>"
    raise UnknownGame(f"unknown game {game!r}{hint} (games are {kinds})")


def video_refusal(game: str) -> str | None:
    """Why ``--capture-video`` cannot film ``game`` (None: its adapter has a ``recorder``,
    :class:`envs.base.Recorder`). ALE and MinAtar always can; gymnasium ids with an rgb_array
    render mode can; PufferLib Ocean games cannot."""
    fam = family_of(game)
    if fam == "puffer":
        from envs.puffer import VIDEO_REFUSAL

        return VIDEO_REFUSAL
    if fam == "gym":
        from envs.gym import video_refusal as gym_refusal

        return gym_refusal(game)
    return None


def make(
    game: str,
    num_envs: int,
    device: torch.device | str = "cpu",
    protocol: str | None = None,
    num_threads: int = 0,
) -> VecEnv:
    """Build the batched env for ``game``. ``protocol`` applies to ALE games only (MinAtar's is
    fixed: :mod:`envs.minatar`)."""
    check_game(game)
    device = torch.device(device)
    fam = family_of(game)
    if fam == "puffer":
        from envs.puffer import PufferEnv

        return PufferEnv(game, num_envs, device)
    if fam == "gym":
        from envs.gym import GymEnv

        return GymEnv(game, num_envs, device)
    if fam == "minatar":
        from envs.minatar import MinAtarEnv

        return MinAtarEnv(game, num_envs, device)
    from envs.ale import DEFAULT_PROTOCOL, AtariEnv

    return AtariEnv(game, num_envs, device, protocol or DEFAULT_PROTOCOL, num_threads)
