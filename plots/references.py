"""Published reference scores, drawn on a game's figures when the game matches.

Each entry is a score someone published, where in training it was reached, under which protocol,
and where it is written. They are context, not baselines run by this harness: protocols differ
(the CleanRL numbers use ``BreakoutNoFrameskip-v4``: no sticky actions, life loss as episode
end for the learner, returns of full games during training), so read them as "the same game, a
well-known implementation", never as a like-for-like comparison. Add an entry only with a source
a reader can open.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    game: str  # our game name (ALE ROM id, puffer_*, gym:*)
    name: str  # what the legend says
    score: float  # raw game score
    env_steps: float  # training env steps (agent steps) at which it was reported
    frames: float  # the same in emulator frames
    protocol: str  # how it was measured
    source: str  # where it is published


REFERENCES: tuple[Reference, ...] = (
    Reference(
        game="breakout",
        name="CleanRL PPO (10M steps)",
        score=414.66,
        env_steps=10e6,
        frames=40e6,
        protocol="BreakoutNoFrameskip-v4, frameskip 4, no sticky actions; mean training episodic return, 3 seeds",
        source="CleanRL docs, ppo_atari.py results table: docs.cleanrl.dev/rl-algorithms/ppo/#ppo_ataripy "
        "(vwxyzjn/cleanrl docs/rl-algorithms/ppo.md), 414.66 +- 28.09",
    ),
    Reference(
        game="breakout",
        name="CleanRL C51 (10M steps)",
        score=467.00,
        env_steps=10e6,
        frames=40e6,
        protocol="BreakoutNoFrameskip-v4, frameskip 4, no sticky actions; mean training episodic return, 3 seeds",
        source="CleanRL docs, c51_atari.py results table: docs.cleanrl.dev/rl-algorithms/c51/#c51_ataripy "
        "(vwxyzjn/cleanrl docs/rl-algorithms/c51.md at 04377c8), 467.00 +- 96.11",
    ),
)


def references_for(game: str) -> list[Reference]:
    return [r for r in REFERENCES if r.game == game]
