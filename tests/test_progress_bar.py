"""`classic-rl train`'s progress bar: the whole budget as its total, from the checkpoint on resume
("512/1000" rather than a bare count), never past the total, and in the budget's unit."""

import pytest

import classic_rl.logger as logger_module
from classic_rl.cli import main


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar made, with its last rendering (taken when it closes)."""
    made = []

    class Recorded(logger_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shown = None
            made.append(self)

        def close(self):
            if self.shown is None:
                self.shown = self.format_meter(**self.format_dict)
            super().close()

    monkeypatch.setattr(logger_module, "tqdm", Recorded)
    return made


def test_a_resumed_run_shows_the_whole_budget(tmp_path, bars, ctrl_c_at_step):
    run = str(tmp_path / "run")
    # Rollouts of 256 steps: the last one overshoots the 1000-step budget (to 1024).
    ppo = ["train", "ppo", "CartPole-v1", "--eval-episodes", "1"]
    undo = ctrl_c_at_step(500)
    assert main([*ppo, "--steps", "1000", "--set", "num_envs=2", "n_steps=128", "--out", run]) == 130
    undo()  # it stopped after the rollout that ended at step 512
    assert main([*ppo, "--resume", run]) == 0
    resumed = bars[-1]
    assert (resumed.initial, resumed.total, resumed.unit) == (512, 1000, "step")
    assert resumed.n == 1000 and "1000/1000" in resumed.shown  # stops at the total instead of dropping it


def test_an_episode_budget_counts_episodes(tmp_path, bars):
    assert main(["train", "dqn", "CartPole-v1", "--episodes", "5", "--set", "learning_starts=50",
                 "--eval-episodes", "1", "--out", str(tmp_path / "dqn")]) == 0
    bar = bars[-1]
    assert (bar.total, bar.n, bar.unit) == (5, 5, "episode") and "5/5" in bar.shown  # not 5 + the steps
