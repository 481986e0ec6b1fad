"""``--capture-video`` (bench/video.py): evaluation clips in <run>/videos, one frame per env step,
the emulator's screen for ALE, MinAtar's colours for MinAtar, refused on Ocean; the evaluation's
returns and RNG streams are the same with or without it."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs
from bench.cli import main as cli

ScriptedEnv = gym.spec("Scripted-v0").entry_point  # tests/conftest.py registers it

HAVE_ENCODER = all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))
needs_encoder = pytest.mark.skipif(not HAVE_ENCODER, reason="--capture-video needs imageio and imageio-ffmpeg "
                                   "(pip install 'onoff-bench[video]'); not installed here")  # fmt: skip


def clips(run: Path) -> list[Path]:
    return sorted((run / "videos").glob("eval_*.mp4"), key=lambda p: int(p.name.split("_")[1]))


def decode(path: Path) -> np.ndarray:
    """[T, H, W, 3] uint8: every frame of an MP4, through imageio's ffmpeg plugin."""
    import imageio

    return np.stack(imageio.mimread(path, format="FFMPEG", memtest=False))


def eval_rows(run: Path) -> list[dict]:
    with open(run / "eval.csv") as f:
        return list(csv.DictReader(f))


def check_clip(clip: Path, height: int, width: int) -> dict:
    """The clip decodes, has one frame per step of its episode, and the sidecar says what it shows."""
    meta = json.loads(clip.with_suffix(".json").read_text())
    frames = decode(clip)
    assert meta["file"] == clip.name and meta["episode"] == 0 and meta["env"] == 0
    assert meta["steps"] >= 1 and frames.shape == (meta["steps"], height, width, 3), (frames.shape, meta)
    assert (meta["height"], meta["width"]) == (height, width)
    assert frames.max() > 0  # not a black clip
    return meta


@needs_encoder
def test_minatar_ppo_clip_has_a_frame_per_step(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--agent", "ppo", "--game", "minatar:breakout", "--steps", "256", "--num-envs", "4",
            "--segment-length", "32", "--eval-episodes", "1", "--capture-video", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    (clip,) = clips(out)
    rows = eval_rows(out)
    assert clip.name == f"eval_{rows[-1]['env_steps']}_ep0.mp4"
    meta = check_clip(clip, 160, 160)  # 10x10 board, 16x nearest
    # One evaluation episode on one env: the filmed episode is the evaluated one.
    assert meta["finished"] and meta["return"] == pytest.approx(float(rows[-1]["eval_return_mean"]))
    assert meta["env_steps"] == int(rows[-1]["env_steps"]) and meta["game"] == "minatar:breakout"
    assert not list((out / "videos").glob(".*"))  # no temporary file left
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run"]["capture_video"] is True


@needs_encoder
def test_capture_changes_no_return_and_no_rng_stream(tmp_path):
    """Same seed with and without the flag, evaluations mid-run: every eval and metrics number is the
    same (the random agent draws its actions from torch's global RNG, so a recorder that used it
    would shift every later action). Clips come at each evaluation."""
    runs = {}
    for name, extra in (("plain", []), ("video", ["--capture-video"])):
        out = tmp_path / name
        argv = ["run", "--agent", "random", "--game", "minatar:breakout", "--steps", "3k", "--eval-every", "1k",
                "--eval-episodes", "3", "--log-every", "500", "--out", str(out), *extra]  # fmt: skip
        assert cli(argv) == 0
        runs[name] = out
    cols = ["env_steps", "eval_episodes", "eval_return_mean", "eval_return_std", "eval_episodes_capped"]
    a, b = eval_rows(runs["plain"]), eval_rows(runs["video"])
    assert len(a) == 3 and [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b]
    for name in ("metrics.csv",):
        with open(runs["plain"] / name) as f1, open(runs["video"] / name) as f2:
            drop = [0, 7]  # wall_s, sps
            rows1 = [[v for i, v in enumerate(r) if i not in drop] for r in csv.reader(f1)]
            rows2 = [[v for i, v in enumerate(r) if i not in drop] for r in csv.reader(f2)]
            assert rows1 == rows2
    assert not (runs["plain"] / "videos").exists()
    assert [c.name for c in clips(runs["video"])] == [f"eval_{r['env_steps']}_ep0.mp4" for r in b]
    for c in clips(runs["video"]):
        check_clip(c, 160, 160)


@needs_encoder
def test_ale_clip_is_the_emulator_screen(tmp_path):
    """Breakout under a random agent (a few hundred steps a game): the clip is the 210x160 RGB
    screen, one frame per env step, and its episode's return is the evaluated one (the screen twin
    followed env 0 to the end: it raises on any drift, and then no clip is written)."""
    out = tmp_path / "run"
    argv = ["run", "--agent", "random", "--game", "breakout", "--num-envs", "1", "--steps", "64",
            "--eval-episodes", "1", "--capture-video", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    (clip,) = clips(out)
    meta = check_clip(clip, 210, 160)
    row = eval_rows(out)[-1]
    assert meta["finished"] and meta["return"] == pytest.approx(float(row["eval_return_mean"]))
    assert meta["fps"] == 15.0


class PaintedEnv(ScriptedEnv):
    """tests/conftest.py's scripted env, drawn: after step t the screen is grey level 40 t, on an
    odd-sized 31x45 picture (the clip pads it to 32x46 rather than rescale it)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode=None):
        super().__init__()
        self.render_mode = render_mode

    def render(self):
        return np.full((31, 45, 3), 40 * self.t % 256, np.uint8)


gym.register("Painted-v0", entry_point=PaintedEnv)


@needs_encoder
def test_gym_clip_through_rgb_array(tmp_path):
    """A gymnasium env is filmed through its rgb_array render, one frame per step, the screen after
    the step: the scripted episode lasts 3 steps, and frame i shows step i + 1."""
    out = tmp_path / "run"
    argv = ["run", "--agent", "random", "--game", "gym:Painted-v0", "--num-envs", "2", "--steps", "8",
            "--eval-episodes", "2", "--capture-video", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    (clip,) = clips(out)
    meta = check_clip(clip, 32, 46)
    assert meta["finished"] and meta["steps"] == 3 and meta["return"] == 6.0 and meta["fps"] == 4.0
    grey = decode(clip)[:, :31, :45].astype(float).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(grey, [40, 80, 120], atol=4)


def test_which_games_can_be_filmed():
    assert "raylib" in envs.video_refusal("puffer_breakout")
    assert envs.video_refusal("minatar:breakout") is None and envs.video_refusal("breakout") is None
    assert envs.video_refusal("gym:Painted-v0") is None
    assert "rgb_array" in envs.video_refusal("gym:Scripted-v0")  # tests/conftest.py: no render modes
    # Classic control draws with pygame, an optional extra of gymnasium's.
    cartpole = envs.video_refusal("gym:CartPole-v1")
    assert cartpole is None if importlib.util.find_spec("pygame") else "pygame" in cartpole


@needs_encoder
def test_ocean_refusal_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys):
    if "puffer_breakout" not in envs.known_games("puffer"):
        pytest.skip("PufferLib Ocean is not built here")
    out = tmp_path / "run"
    argv = ["run", "--agent", "random", "--game", "puffer_breakout", "--steps", "1k", "--eval-episodes", "1",
            "--capture-video", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--capture-video on puffer_breakout" in err and "raylib" in err
    assert not out.exists()
    with pytest.raises(Exception, match="raylib"):  # bench compare refuses it before any run starts
        from bench.compare import expand

        expand(["random"], "puffer_breakout", 1, tmp_path / "cmp", 1000, None, {}, None, None, 1,
               capture_video=True)  # fmt: skip


def test_capture_needs_evaluation_episodes(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["run", "--agent", "random", "--game", "minatar:breakout", "--steps", "1k", "--capture-video",
                "--out", str(out)]) == 2  # fmt: skip
    assert "--eval-episodes" in capsys.readouterr().err and not out.exists()


def test_capture_without_the_encoder_is_one_line(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a):
        return None if name.startswith("imageio") else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "run"
    assert cli(["run", "--agent", "random", "--game", "minatar:breakout", "--steps", "1k", "--eval-episodes", "1",
                "--capture-video", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onoff-bench[video]" in err and not out.exists()


@needs_encoder
def test_compare_and_sweep_pass_the_flag_on(tmp_path):
    from bench.compare import expand
    from bench.errors import UserError
    from bench.sweep import load_sweep, specs_from

    (spec,) = expand(["random"], "minatar:breakout", 1, tmp_path / "cmp", 1000, None, {}, None, None, 1,
                     capture_video=True)  # fmt: skip
    assert spec.capture_video and "--capture-video" in spec.argv(1)
    (plain,) = expand(["random"], "minatar:breakout", 1, tmp_path / "cmp", 1000, None, {}, None, None, 1)
    assert "--capture-video" not in plain.argv(1)
    f = tmp_path / "s.toml"
    f.write_text('agents = ["random"]\ngames = ["minatar:breakout"]\nsteps = 1000\neval_episodes = 1\n'
                 "capture_video = true\n")  # fmt: skip
    (spec,) = specs_from(load_sweep(str(f)), tmp_path / "sw", str(f))
    assert "--capture-video" in spec.argv(1)
    bad_files = (
        ("capture_video = 1", "true or false"),
        ("capture_video = true\neval_episodes = 0", "eval_episodes"),
    )
    for bad, msg in bad_files:
        f.write_text(f'agents = ["random"]\ngames = ["minatar:breakout"]\nsteps = 1000\n{bad}\n')
        with pytest.raises(UserError, match=msg):
            load_sweep(str(f))


def test_minatar_palette_is_minatars_own():
    """MinAtar draws with seaborn's cubehelix palette behind black (minatar/gui.py); ours computes it
    from matplotlib's map, so seaborn need not be imported."""
    from envs.minatar import palette, render_board

    sns = pytest.importorskip("seaborn")
    for c in range(3, 11):
        want = np.asarray([(0.0, 0.0, 0.0), *sns.color_palette("cubehelix", c)])
        np.testing.assert_array_equal(palette(c), np.round(want * 255).astype(np.uint8))
    board = np.zeros((4, 10, 10), bool)
    board[0, 2, 3] = board[1, 2, 3] = True  # two objects on one cell: the higher channel is drawn
    board[3, 9, 9] = True
    img = render_board(board, palette(4), scale=16)
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[2 * 16 + 5, 3 * 16 + 7], palette(4)[2])
    np.testing.assert_array_equal(img[9 * 16, 9 * 16 + 15], palette(4)[4])
    np.testing.assert_array_equal(img[0, 0], [0, 0, 0])
