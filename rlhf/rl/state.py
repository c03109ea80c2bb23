"""The trainer state of an RL run: what a checkpoint holds and a resume restores, so a resumed run ends
with the weights and metrics of the uninterrupted one, under DDP, DeepSpeed ZeRO and FSDP2 alike.

``OUTPUT_DIR/checkpoint-<update>/`` holds the trained weights (``model.safetensors``, full even when
sharded), optimizer and scheduler (``torch.save``, read back with ``weights_only=True``; under DeepSpeed
ZeRO one optimizer partition per rank, see ``rlhf.rl.training_state``), every rank's RNG states, the
data position, the method's own state (e.g. the adaptive KL coefficient) and the metrics so far.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classic_rl.safe_io import UserError, atomic_write_text
from rlhf.common.checkpoints import checkpoint_writer, full_disk_reported, prune_checkpoints
from rlhf.common.distributed import describe_distribution
from rlhf.common.metrics import MetricsSink, metrics_text
from rlhf.common.resume_settings import check_same_settings, comparable
from rlhf.common.utils import METRICS_FILE, write_json
from rlhf.rl.prompts import PromptStream
from rlhf.rl.training_state import load_state_files, state_files, write_state_files

__all__ = ["TRAINER_STATE", "Progress", "TrainerState"]

TRAINER_STATE = "trainer_state.json"


@dataclass
class Progress:
    """Where the run is."""

    update: int = 0  # updates completed
    episode: int = 0  # sequences sampled for training so far (all ranks)
    before: dict[str, float] | None = None  # the held-out evaluation before training
    elapsed: float = 0.0  # training seconds before this process (resumed runs)


class TrainerState:
    """Saves and restores weights, optimizer, schedule, RNGs, data position, metrics and method state."""

    def __init__(self, accelerator, command: str, model, optimizer, scheduler, generators: dict[str, torch.Generator],
                 prompts: PromptStream, metrics: MetricsSink, save_total_limit: int | None, config: Any = None):
        self.accelerator, self.command = accelerator, command
        self.config = config  # the resolved settings: saved in every checkpoint, compared on resume
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generators, self.prompts, self.metrics = generators, prompts, metrics
        self.save_total_limit = save_total_limit
        self.written: list[Path] = []

    def _rng_state(self) -> dict[str, Any]:
        state = {name: g.get_state() for name, g in self.generators.items()}
        state.update({"torch": torch.get_rng_state(), "python": random.getstate()})
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        for name, g in self.generators.items():
            g.set_state(state[name])
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def save(self, output_dir: Path, progress: Progress, num_updates: int, extra: dict[str, Any]) -> Path | None:
        """Write ``output_dir/checkpoint-<update>`` (complete or not at all); prune per --save_total_limit.

        Every rank joins: under ZeRO-3 / FSDP2 the weights (and FSDP2's optimizer state) are gathered, and
        under DeepSpeed ZeRO each rank writes its own optimizer partition into the staging folder before
        rank 0 renames it into place."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        main = acc.is_main_process
        world = acc.num_processes
        rng_states = gather_object([self._rng_state()]) if world > 1 else [self._rng_state()]
        files = state_files(acc, self.model, self.optimizer)  # collectives under ZeRO-3 / FSDP2
        barrier = acc.wait_for_everyone if world > 1 else None
        final = output_dir / f"checkpoint-{progress.update}"
        with full_disk_reported(output_dir, final), \
                checkpoint_writer(output_dir, progress.update, main=main, barrier=barrier) as tmp:
            write_state_files(tmp, files)
            if main:
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                for rank, state in enumerate(rng_states):
                    torch.save(state, tmp / f"rng_state_{rank}.pth")
                write_json(tmp / TRAINER_STATE, {
                    "command": self.command, "update": progress.update, "num_updates": num_updates,
                    "episode": progress.episode, "world_size": world, **self.prompts.state_dict(),
                    "before": progress.before, "elapsed": progress.elapsed, "extra": extra,
                    "distribution": describe_distribution(acc),
                    **({"config": comparable(self.config)} if self.config is not None else {}),
                })
                atomic_write_text(tmp / METRICS_FILE, metrics_text(self.metrics.history))
        path = None
        if main:
            path = output_dir / f"checkpoint-{progress.update}"
            self.written.append(path)
            self.written = prune_checkpoints(self.written, self.save_total_limit)
        acc.wait_for_everyone()
        return path

    def load(self, path: Path, num_updates: int) -> tuple[Progress, dict[str, Any]]:
        """Continue from ``path`` (a folder written by :meth:`save` with the same settings and the same
        accelerate config); returns the progress and the method's state. Every rank joins."""
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise UserError(f"--resume_from_checkpoint {path}: no {TRAINER_STATE}; not a checkpoint of rlhf {self.command}")
        state = json.loads(state_file.read_text())
        self._check_compatible(path, state, num_updates)
        load_state_files(self.accelerator, self.model, self.optimizer, path)
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
        rank = self.accelerator.process_index
        self._set_rng_state(torch.load(path / f"rng_state_{rank}.pth", weights_only=True, map_location="cpu"))
        self.prompts.load_state_dict(state)
        self.metrics.history = [json.loads(line) for line in (path / METRICS_FILE).read_text().splitlines() if line.strip()]
        return Progress(state["update"], state["episode"], state["before"], state["elapsed"]), state["extra"]

    def _check_compatible(self, path: Path, state: dict[str, Any], num_updates: int) -> None:
        world = self.accelerator.num_processes
        if state.get("command") != self.command:
            raise UserError(f"--resume_from_checkpoint {path}: written by rlhf {state.get('command')}, not rlhf {self.command}")
        if state["world_size"] != world:
            raise UserError(
                f"--resume_from_checkpoint {path}: saved by {state['world_size']} processes, now {world}; "
                f"resume with {state['world_size']} processes (exact resume needs every rank's random state)"
            )
        saved_layout = state.get("distribution")  # absent in checkpoints of earlier versions (unsharded)
        sharding, now = sharding_name(saved_layout or {}), sharding_name(describe_distribution(self.accelerator))
        if sharding != now:  # each backend stores the optimizer state in its own layout
            raise UserError(f"--resume_from_checkpoint {path}: saved under {sharding}, now {now}; "
                            "resume with the accelerate config that wrote the checkpoint")
        if self.config is not None:  # before the derived count below: it names the flags themselves
            check_same_settings(path, state.get("config"), comparable(self.config), f"{path / TRAINER_STATE} has them")
        if state["num_updates"] != num_updates:
            raise UserError(f"--resume_from_checkpoint {path}: the run had {state['num_updates']} updates, these flags give "
                            f"{num_updates}; resume with the flags of the saved run")


def sharding_name(layout: dict[str, Any]) -> str:
    """How a run (``describe_distribution``) shards its model, in words; DDP and one process alike."""
    if "zero_stage" in layout:
        return f"DeepSpeed ZeRO-{layout['zero_stage']}"
    if "fsdp_version" in layout:
        return f"FSDP{layout['fsdp_version']}"
    return "no sharding (DDP or one process)"
