"""`classic-rl train` checkpoints: a run killed at a random instant (SIGKILL) or stopped (SIGTERM,
Ctrl-C) and resumed ends with the uninterrupted run's summary, episode log and weights."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from classic_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Small but real runs: several checkpoints each, a few seconds of training.
CASES = {
    "ppo": (["ppo", "CartPole-v1", "--steps", "6144", "--save-freq", "768",
             "--set", "num_envs=4", "n_steps=128", "n_epochs=2", "batch_size=128"]),
    "dqn": (["dqn", "CartPole-v1", "--steps", "2000", "--save-freq", "300",
             "--set", "hidden=[32,32]", "buffer_size=2000", "learning_starts=200", "train_freq=4",
             "gradient_steps=2", "target_update_interval=100", "batch_size=32"]),
    "sac": (["sac", "Pendulum-v1", "--steps", "600", "--save-freq", "150",
             "--set", "hidden=[32,32]", "learning_starts=100", "batch_size=32", "buffer_size=2000"]),
    "q_learning": (["q_learning", "CliffWalking-v1", "--episodes", "1500", "--save-freq", "1000",
                    "--set", "epsilon=0.2"]),
}
SUMMARY_KEYS = ("algo", "env", "seed", "steps", "episodes", "eval_episodes", "eval_return_mean",
                "eval_return_std", "train_return_last10")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_cmd(args: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "classic_rl", "train", *args, "--seed", "3", "--out", str(out), "--quiet",
            "--eval-episodes", "3", *extra]


def _checkpoint_step(out: Path) -> int:
    try:
        return json.loads((out / "state.json").read_text())["num_timesteps"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _stop_after_a_checkpoint(args: list[str], out: Path, sig: int, rng: random.Random) -> subprocess.CompletedProcess:
    """Start training in a subprocess, wait for its first checkpoint past step 0, then send ``sig``
    at a random instant."""
    proc = subprocess.Popen(_train_cmd(args, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while _checkpoint_step(out) <= 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _episode_rows(out: Path) -> list[list[str]]:
    with open(out / "episodes.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "episode", "return", "length", "wall_s"]
    return [row[:4] for row in rows[1:]]  # wall_s aside


def _tensorboard_curve(out: Path, tag: str = "charts/episodic_return") -> list[tuple[int, float]]:
    """(step, value) of one scalar as TensorBoard shows it (events purged on resume left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def _assert_same_run(resumed: Path, full: Path) -> None:
    a, b = json.loads((resumed / "summary.json").read_text()), json.loads((full / "summary.json").read_text())
    assert {k: a[k] for k in SUMMARY_KEYS} == {k: b[k] for k in SUMMARY_KEYS}
    assert _episode_rows(resumed) == _episode_rows(full)
    # TensorBoard shows each episode once, as in the uninterrupted run (no repeated stretch after a kill)
    assert _tensorboard_curve(resumed) == _tensorboard_curve(full)
    weights_a, weights_b = load_file(str(resumed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert weights_a[key].equal(weights_b[key]), key
    assert json.loads((resumed / "state.json").read_text())["run"]["status"] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_sigkill_then_resume_equals_the_uninterrupted_run(name, tmp_path):
    args = CASES[name]
    assert main(_train_cmd(args, tmp_path / "full")[3:]) == 0  # the reference, in this process

    killed = _stop_after_a_checkpoint(args, tmp_path / "run", signal.SIGKILL, random.Random(name))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["run"]["status"] == "running" and state["num_timesteps"] > 0  # a partial checkpoint

    assert main(["train", *args[:4], "--resume", str(tmp_path / "run"), "--quiet", "--eval-episodes", "3"]) == 0
    _assert_same_run(tmp_path / "run", tmp_path / "full")


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    args = CASES["ppo"]
    stopped = _stop_after_a_checkpoint(args, tmp_path / "run", signal.SIGTERM, random.Random(1))
    assert stopped.returncode == 143
    assert "Resume with: classic-rl train ppo CartPole-v1 --steps 6144 --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["run"]["status"] == "interrupted" and 0 < state["num_timesteps"] < 6144
    # the episode log holds exactly the episodes of the checkpoint
    assert len(_episode_rows(tmp_path / "run")) == state["num_episodes"]

    assert main(["train", *args[:2], "--resume", str(tmp_path / "run"), "--quiet", "--eval-episodes", "3"]) == 0
    assert main(_train_cmd(args, tmp_path / "full")[3:]) == 0
    _assert_same_run(tmp_path / "run", tmp_path / "full")


def test_ctrl_c_in_process_stops_at_a_safe_point_and_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C during an A2C update's rollout: the update finishes, a checkpoint is written, exit 130."""
    from classic_rl.agents import on_policy

    args = ["a2c", "CartPole-v1", "--steps", "3000", "--set", "num_envs=2", "n_steps=5", "--save-freq", "0"]
    collect, calls = on_policy.RolloutCollector.collect, [0]

    def ctrl_c_during_the_40th_rollout(self, *a, **kw):
        calls[0] += 1
        if calls[0] == 40:
            signal.raise_signal(signal.SIGINT)
        return collect(self, *a, **kw)

    monkeypatch.setattr(on_policy.RolloutCollector, "collect", ctrl_c_during_the_40th_rollout)
    assert main(_train_cmd(args, tmp_path / "run")[3:]) == 130
    monkeypatch.setattr(on_policy.RolloutCollector, "collect", collect)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["num_timesteps"] == 400
    assert main(["train", *args[:2], "--resume", str(tmp_path / "run"), "--quiet", "--eval-episodes", "3"]) == 0
    assert main(_train_cmd(args, tmp_path / "full")[3:]) == 0
    _assert_same_run(tmp_path / "run", tmp_path / "full")


@pytest.mark.parametrize("argv, message", [
    (["dqn", "CartPole-v1"], "holds a ppo run on CartPole-v1, not dqn on CartPole-v1"),
    (["ppo", "Acrobot-v1"], "holds a ppo run on CartPole-v1, not ppo on Acrobot-v1"),
    (["ppo", "CartPole-v1", "--seed", "4"], "--seed 4 differs from the resumed run's seed 3"),
    (["ppo", "CartPole-v1", "--set", "gamma=0.5"], "--set cannot change a resumed run"),
])
def test_resume_that_contradicts_the_run_is_refused(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert main(["train", "ppo", "CartPole-v1", "--steps", "256", "--set", "num_envs=2", "n_steps=64",
                 "batch_size=64", "--seed", "3", "--out", str(run), "--quiet", "--eval-episodes", "1"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", *argv, "--steps", "512", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    assert main(["train", "ppo", "CartPole-v1", "--steps", "512", "--resume", str(run),
                 "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "differs from --resume" in capsys.readouterr().err


def test_eval_refuses_a_partial_run_unless_asked(tmp_path, capsys, ctrl_c_at_step):
    undo = ctrl_c_at_step(300)
    assert main(_train_cmd(CASES["dqn"], tmp_path / "run")[3:]) == 130
    undo()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "partial checkpoint at step 300" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(tmp_path / "run"), "--episodes", "2", "--allow-partial"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["partial"] is True and result["checkpoint_step"] == 300 and "partial" in captured.err


def test_existing_run_in_out_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "sarsa", "CliffWalking-v1", "--episodes", "20", "--out", str(run), "--quiet",
            "--eval-episodes", "1"]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(base) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "q_learning", *base[2:]]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_kill_inside_a_checkpoint_write_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """The journal: a kill after phase 1 (staged, renamed) is rolled forward; one before it is ignored."""
    import classic_rl
    from classic_rl import checkpoint

    agent = classic_rl.make("dqn", "CartPole-v1", seed=0, hidden=[8], learning_starts=10, buffer_size=200)
    agent.learn(total_steps=50, progress=False)
    agent.save(tmp_path / "a")
    agent.learn(total_steps=50, progress=False)

    monkeypatch.setattr(checkpoint, "finish_pending_checkpoint", lambda d: None)
    monkeypatch.setattr(checkpoint, "_fsync_dir", lambda d: None)
    agent.save(tmp_path / "a")  # phase 2 skipped: as if killed right after the commit, before any move
    assert (tmp_path / "a" / checkpoint.PENDING_DIR).is_dir()
    assert json.loads((tmp_path / "a" / "state.json").read_text())["num_timesteps"] == 50
    monkeypatch.undo()
    assert classic_rl.load(tmp_path / "a").num_timesteps == 100  # readers take the committed files

    def dies_while_staging(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        checkpoint.write_checkpoint(tmp_path / "a", {"model.safetensors": dies_while_staging})
    loaded = classic_rl.load(tmp_path / "a")
    assert loaded.num_timesteps == 100 and not (tmp_path / "a" / checkpoint.PENDING_DIR).exists()
    assert not list((tmp_path / "a").glob(".checkpoint-tmp-*"))


class _HiddenRandomnessEnv:
    """An env whose start state comes from a generator outside np_random: not replayable."""

    counter = [0]

    @staticmethod
    def make():
        import gymnasium as gym
        import numpy as np

        class Env(gym.Env):
            observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                _HiddenRandomnessEnv.counter[0] += 1
                self.t, self.x = 0, float(_HiddenRandomnessEnv.counter[0] % 7)
                return np.array([self.x, 0.0], np.float32), {}

            def step(self, action):
                self.t += 1
                self.x += 0.1 if action else -0.1
                return np.array([self.x, self.t], np.float32), 1.0, self.t >= 20, False, {}

        return Env()


@pytest.mark.slow
def test_a_resume_that_cannot_rebuild_the_episodes_keeps_the_learning(tmp_path):
    import gymnasium as gym

    import classic_rl

    gym.register("HiddenRandomness-v0", entry_point=_HiddenRandomnessEnv.make)
    agent = classic_rl.make("a2c", "HiddenRandomness-v0", seed=0, num_envs=2, n_steps=7)
    agent.learn(total_steps=70, progress=False)
    agent.save(tmp_path / "run")
    loaded = classic_rl.load(tmp_path / "run")
    with pytest.warns(RuntimeWarning, match="fresh episodes"):
        loaded.learn(total_steps=70, progress=False)
    assert loaded.num_timesteps == 140


@pytest.mark.parametrize("args, stop_at", [
    (["reinforce", "CartPole-v1", "--steps", "1200", "--set", "num_envs=2"], 300),
    (["trpo", "CartPole-v1", "--steps", "1536", "--set", "n_steps=256", "num_envs=2"], 700),
    (["ppo", "Pendulum-v1", "--steps", "2048", "--set", "num_envs=2", "n_steps=128", "n_epochs=2", "batch_size=64",
      "normalize_obs=true", "normalize_reward=true", "anneal_lr=true"], 900),
    (["td3", "Pendulum-v1", "--steps", "500", "--set", "hidden=[16,16]", "learning_starts=100", "batch_size=16",
      "n_envs=2", "vec_env=sync"], 260),
    (["rainbow", "CartPole-v1", "--steps", "400", "--set", "hidden=[16,16]", "learning_starts=100", "batch_size=16",
      "buffer_size=500"], 230),
    (["expected_sarsa", "FrozenLake-v1", "--episodes", "400", "--set", "epsilon_schedule=linear",
      "epsilon_decay_episodes=300"], 150),
    (["ars", "Pendulum-v1", "--steps", "2400", "--set", "n_workers=2", "n_directions=2"], 700),
], ids=["reinforce", "trpo", "ppo-normalised-annealed", "td3-vec-env", "rainbow", "expected_sarsa", "ars-workers"])
def test_ctrl_c_then_resume_equals_the_uninterrupted_run(args, stop_at, tmp_path, ctrl_c_at_step):
    """Ctrl-C at a known point (a step, or an episode for episode budgets), resume, compare."""
    undo = ctrl_c_at_step(stop_at)
    assert main(_train_cmd(args, tmp_path / "run", "--save-freq", "0")[3:]) == 130
    undo()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["run"]["status"] == "interrupted" and state["num_timesteps"] > 0
    assert main(["train", *args[:4], "--resume", str(tmp_path / "run"), "--quiet", "--eval-episodes", "3"]) == 0
    assert main(_train_cmd(args, tmp_path / "full")[3:]) == 0
    _assert_same_run(tmp_path / "run", tmp_path / "full")
