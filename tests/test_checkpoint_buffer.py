"""Off-policy checkpoints with or without the replay buffer (`checkpoint_buffer`): sizes are printed,
false makes checkpoints much smaller, and a resume from one refills the buffer with a printed warning."""

import json

from classic_rl import cli
from classic_rl.cli import main

DQN = ["train", "dqn", "CartPole-v1", "--steps", "3000", "--save-freq", "1000", "--eval-episodes", "1", "--quiet",
       "--set", "hidden=[32,32]", "buffer_size=5000", "learning_starts=500", "batch_size=32"]


def _sizes(run):
    return json.loads((run / "summary.json").read_text())["checkpoint_bytes"]


def test_checkpoint_sizes_are_printed_and_the_buffer_can_be_left_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "BIG_BUFFER_BYTES", 50_000)  # a real Atari buffer is gigabytes
    assert main([*DQN, "--out", str(tmp_path / "with")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    with_buffer = _sizes(tmp_path / "with")
    assert printed.startswith("checkpoint: ") and "training_state.pt" in printed
    assert "--set checkpoint_buffer=false leaves it out" in printed
    assert main([*DQN, "checkpoint_buffer=false", "--out", str(tmp_path / "without")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert "without the replay buffer (checkpoint_buffer=false)" in printed
    without = _sizes(tmp_path / "without")
    assert without["training_state.pt"] * 4 < with_buffer["training_state.pt"]  # the buffer was most of it


def test_resume_without_the_buffer_refills_it_and_warns(tmp_path, capsys, ctrl_c_at_step):
    run = tmp_path / "run"
    undo = ctrl_c_at_step(1500)
    assert main([*DQN, "checkpoint_buffer=false", "--out", str(run)]) == 130
    undo()
    capsys.readouterr()
    assert main(["train", "dqn", "CartPole-v1", "--resume", str(run), "--quiet", "--eval-episodes", "1"]) == 0
    err = capsys.readouterr().err
    assert err == ("classic-rl train: warning: the checkpoint at step 1500 holds no replay buffer "
                   "(checkpoint_buffer=false): training refills an empty buffer for 500 steps before it updates "
                   "again, so its numbers will differ from an uninterrupted run\n")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3000 and not summary["interrupted"]
