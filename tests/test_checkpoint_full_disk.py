"""A full disk while a checkpoint is written: one line naming the file and the last complete
checkpoint (exit 1), no staging folder left, the earlier checkpoint loads and resumes.

torch.save and safetensors report a failed write as their own errors (torch: RuntimeError
"[enforce fail at inline_container.cc:672] ... unexpected pos"), so the checkpoint writers go
through Python files that raise the OS's error; /dev/full gives a real ENOSPC."""

import builtins
import errno
import json
import os
import pathlib
import stat

import pytest
import torch

import classic_rl
from classic_rl import checkpoint
from classic_rl.checkpoint import save_safetensors, save_torch
from classic_rl.cli import main

A2C = ["train", "a2c", "CartPole-v1", "--steps", "400", "--set", "num_envs=2", "n_steps=5", "--quiet",
       "--eval-episodes", "1", "--save-freq", "100"]
FULL = "/dev/full"  # every write to it fails with ENOSPC

pytestmark = pytest.mark.skipif(not (os.path.exists(FULL) and stat.S_ISCHR(os.stat(FULL).st_mode)),
                                reason="needs the /dev/full device (Linux)")


def _full_disk(monkeypatch):
    """The checkpoint writers' open() for writing gives /dev/full. (/dev/full itself is never passed
    as a path: a writer that replaces its target by renaming, as safetensors' save_file does,
    would replace the device with a file when run as root.)"""

    def opener(path, mode="r", *args, **kwargs):
        return builtins.open(FULL if "w" in mode else path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", opener, raising=False)


def test_save_torch_raises_the_os_error_not_torchs_runtime_error(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as caught:
        save_torch({"buffer": torch.ones(100_000)}, tmp_path / "t.pt")  # torch.save raises RuntimeError here
    assert caught.value.errno == errno.ENOSPC


def test_save_safetensors_raises_the_os_error(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as caught:
        save_safetensors({"w": torch.ones(100_000)}, tmp_path / "m.safetensors")
    assert caught.value.errno == errno.ENOSPC


def _fails_at_step_200(tmp_path, capsys, file):
    out = tmp_path / "run"
    assert main([*A2C, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"write {out / file}" in err or f"writing {out / file}" in err and "; the last complete checkpoint is step 100 " in err
    assert not list(out.glob(".checkpoint-*"))  # the staging folder is cleaned up
    assert classic_rl.load(out).num_timesteps == 100  # the earlier checkpoint is whole
    return out, err


def _third_save_fails(monkeypatch, file, fail):
    """Make the third checkpoint (steps 0, 100, then 200) fail while writing ``file``."""
    calls = [0]

    def opener(path, mode="r", *args, **kwargs):
        if str(path).endswith(file) and "w" in mode:
            calls[0] += 1
            if calls[0] == 3:
                return fail(path, mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", opener, raising=False)  # the writers' open()


def test_disk_full_inside_torch_save(tmp_path, capsys, monkeypatch):
    _third_save_fails(monkeypatch, "training_state.pt", lambda path, mode, *a, **k: builtins.open(FULL, mode))
    out, err = _fails_at_step_200(tmp_path, capsys, "training_state.pt")
    assert err.startswith("classic-rl train: error: no space left on device writing")
    monkeypatch.undo()
    assert main(["train", "a2c", "CartPole-v1", "--resume", str(out), "--quiet", "--eval-episodes", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 400


def test_disk_full_writing_state_json(tmp_path, capsys, monkeypatch):
    write_text, calls = pathlib.Path.write_text, [0]

    def write_text_or_enospc(self, *args, **kwargs):
        if self.name == "state.json":
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text_or_enospc)
    _, err = _fails_at_step_200(tmp_path, capsys, "state.json")
    assert "no space left on device writing" in err


def test_torch_writer_runtime_error_names_the_file(tmp_path, capsys, monkeypatch):
    save, calls = torch.save, [0]

    def torch_save_fails(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torch_save_fails)
    _, err = _fails_at_step_200(tmp_path, capsys, "training_state.pt")
    assert "could not write" in err and "training_state.pt ([enforce fail at inline_container.cc:672] . unexpected pos" in err
