"""Watching an agent: greedy episodes rendered to a GIF (Pillow) or an MP4 (imageio-ffmpeg).

``classic-rl eval RUN_DIR --video OUT.gif`` (or ``OUT.mp4``) calls :func:`record_video`. The
episodes are seeded like :func:`classic_rl.evaluation.evaluate_episodes`'s (``seed, seed + 1,
...``), so the clip shows the evaluation's first episodes. Each episode gives one frame per
observation: the first one after the reset and one after every step (``length + 1`` frames), each
with a caption strip (episode, step, return so far). The caption also keeps every frame distinct:
GIF writers fold a frame identical to the previous one into it, which would make the frame count
stop matching the steps.

A GIF holds a 256-colour palette taken from the first frame and needs only Pillow (a dependency);
frames are kept palettised (one byte a pixel) until the file is written. An MP4 (H.264) streams
its frames to the ffmpeg that the ``video`` extra's imageio-ffmpeg ships. Either is written under a
temporary name beside ``OUT`` and renamed onto it at the end, so ``OUT`` is never half a video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from classic_rl.env_utils import make_env
from classic_rl.evaluation import DEFAULT_MAX_STEPS
from classic_rl.safe_io import UserError

__all__ = ["VIDEO_SUFFIXES", "VideoResult", "check_video_path", "record_video"]

VIDEO_SUFFIXES = (".gif", ".mp4")
CAPTION_HEIGHT = 22
DEFAULT_FPS = 30


@dataclass
class VideoResult:
    """What :func:`record_video` wrote."""

    path: Path
    frames: int
    lengths: list[int]
    returns: list[float]


def check_video_path(path: str | Path) -> Path:
    """The output path, once its suffix names a format we write and (for MP4) the encoder is there."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise UserError(f"--video {path}: use a file name ending in .gif or .mp4")
    if suffix == ".mp4":
        _ffmpeg()
    if not path.parent.is_dir():
        raise UserError(f"--video {path}: the folder {path.parent} does not exist")
    return path


def _ffmpeg() -> Any:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise UserError('--video .mp4 needs an H.264 encoder: pip install "rl-course-toolkit[video]" '
                        "(imageio-ffmpeg), or write a .gif") from None
    return imageio_ffmpeg


class _GifWriter:
    """Palettised frames in memory, one GIF at :meth:`close`."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.duration = path, max(20, round(1000 / fps))  # browsers slow delays under 20 ms
        self.frames: list[Image.Image] = []

    def add(self, frame: Image.Image) -> None:
        if not self.frames:  # one palette for the clip: no colour flicker between frames
            self.frames.append(frame.quantize(colors=256))
        else:
            self.frames.append(frame.quantize(palette=self.frames[0], dither=Image.Dither.NONE))

    def close(self) -> None:
        first, *rest = self.frames
        first.save(self.path, save_all=True, append_images=rest, duration=self.duration, loop=0)


class _Mp4Writer:
    """Frames streamed to ffmpeg (H.264, yuv420p: even sizes, so frames are padded to them)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.stream: Any = None

    def add(self, frame: Image.Image) -> None:
        w, h = frame.size
        if self.stream is None:
            self.size = (w + w % 2, h + h % 2)
            self.stream = _ffmpeg().write_frames(str(self.path), self.size, fps=self.fps, macro_block_size=2)
            self.stream.send(None)
        if frame.size != self.size:
            padded = Image.new("RGB", self.size, "white")
            padded.paste(frame, (0, 0))
            frame = padded
        self.stream.send(np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)))

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _captioned(frame: np.ndarray, text: str, font: Any) -> Image.Image:
    image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    canvas = Image.new("RGB", (image.width, image.height + CAPTION_HEIGHT), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((6, image.height + 4), text, fill="black", font=font)
    return canvas


def record_video(agent: Any, path: str | Path, episodes: int = 1, seed: int = 123,
                 max_steps: int | None = None) -> VideoResult:
    """Render ``episodes`` greedy episodes of ``agent`` on its own env into ``path`` (.gif or .mp4)."""
    path = check_video_path(path)
    if episodes < 1:
        raise UserError(f"--video-episodes must be a positive integer, got {episodes}")
    # pygame (gymnasium's renderer) only draws into arrays here; on a machine without a display or a
    # sound card its start prints errors for both, so it gets SDL's dummy drivers unless set already
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env_kwargs = getattr(agent, "env_kwargs", None)
    modes = make_env(agent.env_id, env_kwargs).metadata.get("render_modes", [])
    if "rgb_array" not in modes:
        raise UserError(f"--video: {agent.env_id} cannot render frames (its render modes: "
                        f"{', '.join(modes) or 'none'}); evaluate it without --video")
    env = make_env(agent.env_id, env_kwargs, render_mode="rgb_array")
    if max_steps is None and (env.spec is None or env.spec.max_episode_steps is None):
        max_steps = DEFAULT_MAX_STEPS
    fps = float(env.metadata.get("render_fps") or DEFAULT_FPS)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells ffmpeg the format
    writer = _GifWriter(partial, fps) if path.suffix.lower() == ".gif" else _Mp4Writer(partial, fps)
    font = ImageFont.load_default(size=14)
    frames, lengths, returns = 0, [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, steps, done = 0.0, 0, False
            label = f"{agent.algo} on {agent.env_id}  |  episode {i + 1}/{episodes}"
            writer.add(_captioned(env.render(), f"{label}  |  step 0  |  return 0", font))
            frames += 1
            while not done:
                obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
                total += float(reward)
                steps += 1
                done = terminated or truncated or (max_steps is not None and steps >= max_steps)
                writer.add(_captioned(env.render(), f"{label}  |  step {steps}  |  return {total:g}", font))
                frames += 1
            lengths.append(steps)
            returns.append(total)
    finally:
        env.close()
    writer.close()
    os.replace(partial, path)
    return VideoResult(path, frames, lengths, returns)
