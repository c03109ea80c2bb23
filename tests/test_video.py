"""`classic-rl eval RUN --video OUT.gif|OUT.mp4`: greedy episodes rendered to a clip with one frame
per observation (the frame count matches the reported episode lengths), the demo page shows the PPO
agent's clip, and a bad file name or a missing MP4 encoder is a one-line error."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

import classic_rl
from classic_rl.cli import main
from classic_rl.evaluation import evaluate_episodes

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A tiny PPO run: short greedy episodes, so the clips stay small."""
    out = tmp_path_factory.mktemp("video") / "ppo-cp"
    assert main(["train", "ppo", "CartPole-v1", "--steps", "512", "--set", "num_envs=2", "n_steps=64",
                 "batch_size=64", "--out", str(out), "--quiet", "--eval-episodes", "1"]) == 0
    return out


def _eval(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["eval", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_video_writes_a_gif_with_one_frame_per_observation(cartpole_run, tmp_path, capsys):
    gif = tmp_path / "cartpole.gif"
    result = _eval(capsys, cartpole_run, "--episodes", "3", "--video", gif, "--video-episodes", "2")
    lengths = result["video_episode_lengths"]
    assert len(lengths) == 2 and result["video"] == str(gif)
    # the clip's episodes are the evaluation's first two (same seeds, greedy)
    assert lengths == evaluate_episodes(classic_rl.load(cartpole_run), "CartPole-v1", episodes=2, seed=result["seed"]).lengths
    with Image.open(gif) as clip:
        assert clip.format == "GIF" and clip.is_animated
        assert clip.n_frames == result["video_frames"] == sum(lengths) + 2  # first frame + one per step
        assert clip.info["duration"] == 20  # CartPole renders at 50 fps
    assert not list(tmp_path.glob(".*partial*"))  # written under a temporary name, then renamed


def test_eval_video_writes_an_mp4_with_the_same_frames(cartpole_run, tmp_path, capsys):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="MP4 needs the video extra (imageio-ffmpeg)")
    mp4 = tmp_path / "cartpole.mp4"
    result = _eval(capsys, cartpole_run, "--episodes", "1", "--video", mp4)
    frames = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(frames)
    assert meta["fps"] == 50 and sum(1 for _ in frames) == result["video_frames"] == result["video_episode_lengths"][0] + 1


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_video_name_without_gif_or_mp4_is_a_one_line_error(cartpole_run, tmp_path, capsys):
    assert main(["eval", str(cartpole_run), "--video", str(tmp_path / "clip.avi")]) == 2
    assert "use a file name ending in .gif or .mp4" in _one_line_error(capsys)
    assert not (tmp_path / "clip.avi").exists()


def test_mp4_without_an_encoder_suggests_a_gif(cartpole_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import imageio_ffmpeg now raises ImportError
    assert main(["eval", str(cartpole_run), "--video", str(tmp_path / "clip.mp4")]) == 2
    err = _one_line_error(capsys)
    assert "rl-course-toolkit[video]" in err and "or write a .gif" in err


def test_an_env_that_cannot_render_frames_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "vi"
    assert main(["train", "value_iteration", "GridWorld4x3-v0", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--video", str(tmp_path / "grid.gif")]) == 2
    assert "GridWorld4x3-v0 cannot render frames" in _one_line_error(capsys)


def test_the_demo_page_shows_the_ppo_agents_clip(tmp_path):
    def load(name):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    demo, report = load("demo"), load("demo_report")
    section = demo.ppo_section(tmp_path, steps=512)
    (tmp_path / "demo.json").write_text(json.dumps({"title": "t", "sections": [section]}))
    page = report.build_report(tmp_path).read_text()  # every linked file must exist
    assert 'src="ppo-cartpole/greedy.gif"' in page and "the trained agent, greedy" in page
    with Image.open(tmp_path / "ppo-cartpole" / "greedy.gif") as clip:
        assert clip.n_frames > 1
