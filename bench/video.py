"""``--capture-video``: greedy evaluation episodes as MP4 clips in the run folder.

    videos/eval_<env_steps>_ep<k>.mp4    the clip of evaluation episode k at <env_steps>
    videos/eval_<env_steps>_ep<k>.json   what it shows: game, env_steps, episode, steps, frames,
                                         return, finished, fps, width, height

What is filmed: at each evaluation (``--eval-every``, and the final one), the first episode of env
0, so k is always 0, and nothing else. An evaluation plays ``--eval-episodes`` episodes on up to
16 envs, and an Atari episode can last 27,000 steps (30 minutes of play at 15 fps), so filming
them all would multiply the files and the capture time by up to 16 for pictures of the same
greedy policy; one clip per evaluation is enough to watch how play changes over training. Env 0's
first episode is no better or worse than any other: every episode of an evaluation is greedy and
seeded the same way.

Frames: one per env step, env 0's screen *after* the step, so the last frame is the episode's
final screen and an episode of T steps gives a clip of T frames (``steps`` and ``frames`` in the
sidecar). Each env family makes its frames its own way (``recorder`` on the adapter,
:class:`envs.base.Recorder`): ALE through a one-env twin that shows the emulator's RGB screen,
MinAtar by drawing the board in MinAtar's colours, gymnasium through a twin with rgb_array render;
PufferLib Ocean games are refused (:func:`envs.video_refusal`). No recorder touches the evaluated
batch or a global RNG, so the evaluation's returns are the same with or without the flag.

Cost: capture and encoding happen inside the evaluation phase, which is not charged to the
training wall clock (:data:`bench.meter.UNTIMED_BY_BUDGET`); they show in ``phase_s.eval``.
Frames go to ffmpeg as they come (a long Atari episode would be gigabytes of RGB in memory).

A clip is written into ``videos/.partial/`` and moved into ``videos/`` when complete, then its
sidecar is written; so ``videos/*.mp4`` only ever holds whole clips, and a kill mid-episode leaves
its part in ``.partial/``. A resumed run that evaluates again at the same env_steps writes the same
names again.

Encoder: imageio's ffmpeg plugin (imageio + imageio-ffmpeg, whose wheel carries an ffmpeg
binary), H.264 in yuv420p, which browsers play. An optional extra: ``pip install
'onoff-bench[video]'``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs
from bench.errors import UserError
from bench.results import atomic_write_json

VIDEO_DIR = "videos"
INSTALL_HINT = "pip install 'onoff-bench[video]' (imageio, imageio-ffmpeg)"


def check(game: str) -> None:
    """One-line UserError unless ``--capture-video`` can film ``game`` here: the game can render
    frames and the encoder is installed. Called before anything runs or is written."""
    why = envs.video_refusal(game)
    if why:
        raise UserError(f"--capture-video on {game}: {why}")
    _imageio()


def _imageio():
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401 - the ffmpeg binary imageio's plugin runs
    except ImportError:
        raise UserError(f"--capture-video needs imageio and imageio-ffmpeg: {INSTALL_HINT}") from None
    return imageio


def clip_name(env_steps: int, episode: int = 0) -> str:
    return f"eval_{env_steps}_ep{episode}"


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row / column where one is odd (rather
    than let ffmpeg rescale the picture)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class EpisodeClip:
    """Films the first episode of env 0 of one evaluation (driven by :func:`bench.harness.evaluate`:
    ``start`` after its reset, ``add`` after every step, ``close`` at its end)."""

    def __init__(self, folder: Path, env_steps: int, game: str, episode: int = 0):
        self.folder, self.env_steps, self.game, self.episode = Path(folder), env_steps, game, episode
        self.name = clip_name(env_steps, episode)
        self.recording = False
        self.steps, self.ret = 0, 0.0
        self._rec: Any = None
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.mp4"

    @property
    def _part(self) -> Path:
        # A folder, not a name: ffmpeg picks the container by the extension, and videos/*.mp4 (a
        # pathlib glob matches dot files) must see only whole clips.
        return self.folder / ".partial" / f"{self.name}.mp4"

    def start(self, env, seed: int) -> None:
        """``env`` was just reset with ``seed``: follow its env 0 from here."""
        self._rec = env.recorder(seed)
        self.recording = True

    def add(self, actions: torch.Tensor, step) -> None:
        """One vector step was taken with ``actions``; film env 0's part of it until its first
        episode ends."""
        if not self.recording:
            return
        try:
            frame = self._rec.frame(int(actions[0]), step)
        except RuntimeError as e:  # the recorder lost track of env 0: no clip rather than a wrong one
            self._drop(str(e))
            return
        if self._writer is None:
            self._open(frame)
        self._writer.append_data(_even(np.ascontiguousarray(frame, np.uint8)))
        self.steps += 1
        self.ret += float(step.reward[0])
        if bool(step.done[0]):
            self._finish(finished=True)

    def close(self) -> None:
        """The evaluation is over: an episode still running was cut by its step cap (kept, with
        ``finished: false``)."""
        if self.recording:
            self._finish(finished=False)

    def _open(self, frame: np.ndarray) -> None:
        imageio = _imageio()
        self._part.parent.mkdir(parents=True, exist_ok=True)
        self._size = (int(frame.shape[0]), int(frame.shape[1]))
        # macro_block_size 2: frames are made even in add(), never rescaled by imageio.
        self._writer = imageio.get_writer(self._part, format="FFMPEG", mode="I", fps=self._rec.fps,
                                          codec="libx264", pixelformat="yuv420p", macro_block_size=2)  # fmt: skip

    def _finish(self, finished: bool) -> None:
        self.recording = False
        self._rec.close()
        if self._writer is None:  # no step was taken
            return
        self._writer.close()
        os.replace(self._part, self.path)
        try:
            self._part.parent.rmdir()
        except OSError:  # another clip's part is there (never, in one process), or it is gone
            pass
        h, w = self._size
        atomic_write_json(self.folder / f"{self.name}.json", {
            "file": self.path.name, "game": self.game, "env_steps": self.env_steps, "episode": self.episode,
            "env": 0, "steps": self.steps, "frames": self.steps, "return": self.ret, "finished": finished,
            "fps": self._rec.fps, "height": h + h % 2, "width": w + w % 2})  # fmt: skip

    def _drop(self, why: str) -> None:
        self.recording = False
        self._rec.close()
        if self._writer is not None:
            self._writer.close()
            self._part.unlink(missing_ok=True)
        print(f"bench: warning: no video for the evaluation at {self.env_steps} env_steps: {why}",
              file=sys.stderr, flush=True)  # fmt: skip
