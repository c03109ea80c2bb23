"""`classic-rl`: user mistakes and damaged files are one-line errors (exit 2) that name the file,
line or flag; divergence and failed writes stop loudly and keep the last good checkpoint."""

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classic_rl.cli import main
from classic_rl.config import ConfigError
from classic_rl.safe_io import DEBUG_ENV

A2C = ["train", "a2c", "CartPole-v1", "--steps", "400", "--set", "num_envs=2", "n_steps=5", "--quiet",
       "--eval-episodes", "1"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _trained(tmp_path, name="run", *extra) -> str:
    out = str(tmp_path / name)
    assert main([*A2C, "--out", out, *extra]) == 0
    return out


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")  # --debug below sets it; monkeypatch restores it afterwards
    config = tmp_path / "ppo.yaml"
    config.write_text("learning_rate: 1.0e-3\ngamma: [0.9\nn_steps: 5\n")
    assert main([*A2C, "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert f"{config}:3:" in err and "invalid YAML" in err and "line 2" in err
    assert not (tmp_path / "run").exists()
    # --debug shows the traceback instead (the exception propagates)
    with pytest.raises(ConfigError):
        main([*A2C, "--config", str(config), "--out", str(tmp_path / "run"), "--debug"])


def test_a_setting_out_of_range_in_the_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "a2c.yaml"
    config.write_text("gamma: 1.5\n")
    assert main([*A2C, "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert str(config) in err and "gamma" in err and "[0, 1]" in err


def test_unknown_env_kwargs_key_lists_the_valid_ones(tmp_path, capsys):
    argv = ["train", "sarsa", "CliffWalking-v1", "--env-kwargs", '{"slippery": true}', "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "--env-kwargs" in err and "'slippery'" in err and "is_slippery" in err
    assert not (tmp_path / "r").exists()


def test_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main([*A2C, "--out", str(blocker / "run")]) == 2
    assert "--out" in _one_line_error(capsys) and blocker.read_text() == "not a folder"
    assert main([*A2C, "--out", str(blocker)]) == 2
    assert "not a directory" in _one_line_error(capsys)


@pytest.mark.parametrize("name, command", [("model.safetensors", "eval"), ("training_state.pt", "resume")])
def test_truncated_weight_files_are_a_one_line_error(tmp_path, capsys, name, command):
    run = _trained(tmp_path, "run", "--save-freq", "0")
    path = tmp_path / "run" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    if command == "eval":
        argv = ["eval", run, "--episodes", "1"]
    else:
        argv = ["train", "a2c", "CartPole-v1", "--steps", "800", "--resume", run, "--quiet"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert str(path) in err and "damaged or truncated" in err


def test_summary_json_is_strict_json(tmp_path):
    out = _trained(tmp_path, "run", "--eval-episodes", "0")  # no evaluation: the means are missing

    def refuse(token):
        raise AssertionError(f"bare {token} in summary.json")

    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["eval_return_mean"] is None and summary["eval_return_std"] is None
    json.loads((tmp_path / "run" / "state.json").read_text(), parse_constant=refuse)
    assert out


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from classic_rl.agents.actor_critic import A2C as A2CAgent

    update = A2CAgent.update

    def nan_at_update_35(self, rollout, progress_remaining):
        stats = update(self, rollout, progress_remaining)
        if self.n_updates + 1 == 35:  # the 35th update blows up: weights and loss become NaN
            with torch.no_grad():
                for p in self.policy.parameters():
                    p.fill_(float("nan"))
            stats["loss/policy"] = float("nan")
        return stats

    monkeypatch.setattr(A2CAgent, "update", nan_at_update_35)
    out = tmp_path / "run"
    assert main([*A2C, "--out", str(out), "--save-freq", "100"]) == 3
    err = _one_line_error(capsys)
    assert "diverged at update 35 (step 350)" in err and "loss/policy" in err and "(step 300)" in err
    state = json.loads((out / "state.json").read_text())
    assert state["num_timesteps"] == 300 and state["run"]["status"] == "running"
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(out / "model.safetensors")).values())


def test_divergence_found_in_the_weights_at_a_checkpoint(tmp_path, capsys, monkeypatch):
    """A NaN weight with finite losses (say, a poisoned optimizer step) is caught before it is saved."""
    from classic_rl.agents.actor_critic import A2C as A2CAgent

    update = A2CAgent.update

    def poison_weights_at_update_30(self, rollout, progress_remaining):
        stats = update(self, rollout, progress_remaining)
        if self.n_updates + 1 == 30:  # its losses were finite: the checkpoint at step 300 finds it
            with torch.no_grad():
                next(self.policy.parameters()).view(-1)[0] = float("inf")
        return stats

    monkeypatch.setattr(A2CAgent, "update", poison_weights_at_update_30)
    out = tmp_path / "run"
    assert main([*A2C, "--out", str(out), "--save-freq", "100"]) == 3
    assert "weight" in _one_line_error(capsys)
    assert json.loads((out / "state.json").read_text())["num_timesteps"] == 200


def test_a_failed_final_save_keeps_the_previous_checkpoint_resumable(tmp_path, capsys, monkeypatch):
    from classic_rl.agents import base

    save_file, calls = base.save_safetensors, [0]

    def disk_full_on_the_final_save(tensors, path):
        calls[0] += 1
        if calls[0] == 6:  # steps 0, 100, 200, 300, 400, then the final one
            raise OSError(28, "No space left on device")
        return save_file(tensors, path)

    monkeypatch.setattr(base, "save_safetensors", disk_full_on_the_final_save)
    out = tmp_path / "run"
    assert main([*A2C, "--out", str(out), "--save-freq", "100"]) == 1
    err = _one_line_error(capsys)
    assert f"no space left on device writing {out / 'model.safetensors'}" in err
    assert "the last complete checkpoint is step 400" in err
    monkeypatch.setattr(base, "save_safetensors", save_file)
    state = json.loads((out / "state.json").read_text())
    assert state["num_timesteps"] == 400 and state["run"]["status"] == "running"
    assert not list(out.glob(".checkpoint-*"))  # the failed write left nothing half-written
    assert main(["train", "a2c", "CartPole-v1", "--resume", str(out), "--quiet", "--eval-episodes", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 400 and math.isfinite(summary["eval_return_mean"])


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "config.yaml" in _one_line_error(capsys)


def test_truncated_run_config_names_the_file_and_the_setting(tmp_path, capsys):
    run = _trained(tmp_path)
    config = tmp_path / "run" / "config.yaml"
    text = config.read_text()
    config.write_text(text[: text.index("update_backend:") + len("update_backend:")])  # cut as a kill would
    expected = (f"{config}: setting 'update_backend' (the last one in the file) has no value; the file looks "
                "truncated or was edited")
    assert main(["eval", run, "--episodes", "1"]) == 2
    assert expected in _one_line_error(capsys)  # it said: update_backend must be one of ...; got 'None'
    assert main(["train", "a2c", "CartPole-v1", "--resume", run, "--quiet"]) == 2
    assert expected in _one_line_error(capsys)


def test_out_of_range_setting_in_a_run_config_names_the_file(tmp_path, capsys):
    run = _trained(tmp_path)
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("update_backend: fused", "update_backend: turbo"))
    assert main(["eval", run, "--episodes", "1"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"classic-rl eval: error: {config}: ") and "update_backend" in err


@pytest.mark.parametrize("command", ["plot", "eval"])
def test_yaml_tag_in_a_run_config_is_a_one_line_error(tmp_path, capsys, command):
    run = _trained(tmp_path)
    config = tmp_path / "run" / "config.yaml"
    config.write_text("algo: !python/name:os.system a2c\n" + config.read_text().split("\n", 1)[1])
    assert main([command, run]) == 2  # plot used to exit 1 with a ConstructorError
    err = _one_line_error(capsys)
    assert f"{config}:1:" in err and "invalid YAML" in err and "tag" in err


def test_run_files_get_the_umask_default_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        run = Path(_trained(tmp_path))
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert "summary.json" in modes and "model.safetensors" in modes and "episodes.csv" in modes
    assert set(modes.values()) == {0o640}, modes  # summary.json came out 0600 (mkstemp), the rest 0640
