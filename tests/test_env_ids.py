"""`MODULE:NAME` env ids work for every algorithm as in `gymnasium.make`: MODULE is imported (it
registers NAME), then NAME is made; runs named so train, save, load and evaluate."""

import json
import sys

import gymnasium as gym
import pytest

import classic_rl
from classic_rl.cli import main

MODULE = '''import gymnasium

gymnasium.register(id="MyCart-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
                   max_episode_steps=50)
'''


@pytest.fixture
def mygymmod(tmp_path, monkeypatch):
    (tmp_path / "mygymmod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mygymmod:MyCart-v0"
    gym.envs.registry.pop("MyCart-v0", None)
    sys.modules.pop("mygymmod", None)


def test_module_colon_id_trains_saves_and_evaluates(tmp_path, mygymmod, capsys):
    run = tmp_path / "run"
    assert main(["train", "ppo", mygymmod, "--steps", "256", "--set", "n_steps=32", "--eval-episodes", "2",
                 "--out", str(run), "--quiet"]) == 0  # it was refused: Unknown environment 'mygymmod:MyCart-v0'
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env"] == mygymmod
    capsys.readouterr()
    # A fresh process would import the module again from config.yaml's env id; here it is cached.
    gym.envs.registry.pop("MyCart-v0")
    sys.modules.pop("mygymmod")
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["eval_return_mean"] == summary["eval_return_mean"]
    assert classic_rl.load(run).env.spec.max_episode_steps == 50


def test_same_rule_for_an_off_policy_algorithm(tmp_path, mygymmod):
    assert main(["train", "dqn", mygymmod, "--steps", "200", "--set", "learning_starts=50", "--eval-episodes", "1",
                 "--out", str(tmp_path / "dqn"), "--quiet"]) == 0


@pytest.mark.parametrize("env_id, message", [
    ("nosuchmodule:MyCart-v0", "cannot import module 'nosuchmodule'"),
    ("mygymmod:Other-v0", "Module 'mygymmod' was imported but registered no environment 'Other-v0'"),
])
def test_bad_module_ids_are_one_line_errors(tmp_path, mygymmod, capsys, env_id, message):
    assert main(["train", "ppo", env_id, "--steps", "64", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
