"""The rlhf output folder rules: refuse a non-empty folder, atomic checkpoints, pruning only our own."""

import pytest
from rlhf.checkpoints import (
    checkpoint_writer,
    latest_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    resolve_resume_path,
)

from classic_rl.safe_io import UserError


def test_non_empty_output_dir_is_refused_unless_overwrite_or_resume(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite_output_dir"):
        prepare_output_dir(tmp_path)
    assert prepare_output_dir(tmp_path, overwrite=True) == tmp_path.resolve()
    assert prepare_output_dir(tmp_path, resume=True) == tmp_path.resolve()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert prepare_output_dir(tmp_path / "new").is_dir()


def test_failed_checkpoint_write_leaves_earlier_checkpoints(tmp_path):
    with checkpoint_writer(tmp_path, 10) as ckpt:
        (ckpt / "model.safetensors").write_text("ten")
    with pytest.raises(RuntimeError), checkpoint_writer(tmp_path, 20) as ckpt:
        (ckpt / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert resolve_resume_path("true", tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_resume_path(None, tmp_path) is None


def test_pruning_deletes_only_this_runs_oldest_checkpoints(tmp_path):
    earlier = tmp_path / "checkpoint-1"
    earlier.mkdir()
    written = []
    for step in (2, 3, 4):
        with checkpoint_writer(tmp_path, step) as ckpt:
            (ckpt / "x").write_text(str(step))
        written.append(tmp_path / f"checkpoint-{step}")
    kept = prune_checkpoints(written, limit=2)
    assert [p.name for p in kept] == ["checkpoint-3", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]


def test_resume_from_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        resolve_resume_path("true", tmp_path)
    with pytest.raises(UserError, match="no such checkpoint"):
        resolve_resume_path(str(tmp_path / "checkpoint-9"), tmp_path)


def test_every_rank_writes_its_part_before_the_checkpoint_appears(tmp_path):
    """Several processes (threads here) write one checkpoint: rank 0 makes the staging folder, every rank
    writes its part, and checkpoint-<step> appears only once all parts are in."""
    import threading
    import time

    barrier = threading.Barrier(2)
    seen_before_commit = []

    def rank(index: int) -> None:
        with checkpoint_writer(tmp_path, 5, main=index == 0, barrier=barrier.wait) as folder:
            if index == 1:
                time.sleep(0.2)  # the slow rank: rank 0 must not commit without its part
            seen_before_commit.append((tmp_path / "checkpoint-5").exists())
            (folder / f"optimizer_rank{index}.pt").write_text(str(index))

    threads = [threading.Thread(target=rank, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen_before_commit == [False, False]
    assert sorted(p.name for p in (tmp_path / "checkpoint-5").iterdir()) == ["optimizer_rank0.pt", "optimizer_rank1.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]  # no staging folder left


def test_shardings_without_checkpoints_are_named_before_anything_loads():
    """FSDP1 and DeepSpeed's NVMe optimizer offload are refused with the fix; ZeRO (optimizer on the CPU
    or not offloaded), FSDP2 and plain runs can be checkpointed."""
    from types import SimpleNamespace

    from rlhf.training_state import checkpoint_refusal

    def launch(deepspeed=None, fsdp=None):
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=deepspeed, fsdp_plugin=fsdp))

    def zero(stage, device):
        config = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": device}}}
        return SimpleNamespace(zero_stage=stage, deepspeed_config=config)

    assert checkpoint_refusal(launch()) is None
    assert checkpoint_refusal(launch(fsdp=SimpleNamespace(fsdp_version=2))) is None
    assert "fsdp_version: 2" in checkpoint_refusal(launch(fsdp=SimpleNamespace(fsdp_version=1)))
    for stage in (2, 3):
        assert checkpoint_refusal(launch(deepspeed=zero(stage, "none"))) is None
        assert checkpoint_refusal(launch(deepspeed=zero(stage, "cpu"))) is None
        assert "NVMe" in checkpoint_refusal(launch(deepspeed=zero(stage, "nvme")))
