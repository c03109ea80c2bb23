"""The micro-batch optimiser loop every method's update runs: passes over this rank's batch, micro
batches, gradient accumulation through ``accelerator.accumulate``, clipping, and a stop on a
non-finite gradient norm before the weights change."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rlhf.common.errors import TrainingDiverged

__all__ = ["LossFn", "OptimizerLoop"]

# micro batch -> (loss to backpropagate, detached statistics)
LossFn = Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


class OptimizerLoop:
    def __init__(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, micro_batch_size: int,
                 max_grad_norm: float | None, shuffle_generator: torch.Generator, output_dir: str | None):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.micro_batch_size, self.max_grad_norm = micro_batch_size, max_grad_norm
        self.shuffle_generator, self.output_dir = shuffle_generator, output_dir
        self.update = 0  # the update being optimised (1-based), for messages

    def micro_batches(self, tensors: dict[str, Tensor], shuffle: bool) -> list[dict[str, Tensor]]:
        """``tensors`` (this rank's rollout batch) split into micro batches of per_device_train_batch_size
        rows, in an order drawn from the seeded shuffle generator when ``shuffle``."""
        n = next(iter(tensors.values())).shape[0]
        size = self.micro_batch_size
        order = torch.randperm(n, generator=self.shuffle_generator) if shuffle else torch.arange(n)
        order = order.to(self.accelerator.device)
        return [{k: v[order[start : start + size]] for k, v in tensors.items()} for start in range(0, n, size)]

    def run(self, tensors: dict[str, Tensor], passes: int, shuffle: bool, loss_fn: LossFn
            ) -> tuple[list[dict[str, Tensor]], list[float]]:
        """``passes`` times over this rank's batch (PPO epochs, GRPO/RLOO iterations), in micro batches:
        each micro batch's ``loss_fn`` is backpropagated inside ``accelerator.accumulate``, which decides
        when the gradients are synchronised and the optimizer steps. Returns every micro batch's
        statistics and the gradient norm of every optimizer step."""
        stats: list[dict[str, Tensor]] = []
        grad_norms: list[float] = []
        for _pass in range(passes):
            for micro in self.micro_batches(tensors, shuffle):
                with self.accelerator.accumulate(self.model):
                    loss, micro_stats = loss_fn(micro)
                    self.accelerator.backward(loss)
                    norm = self.step()
                stats.append(micro_stats)
                if norm is not None:
                    grad_norms.append(norm)
        return stats, grad_norms

    def step(self) -> float | None:
        """Inside ``accelerator.accumulate`` after ``accelerator.backward``: on the last micro batch of an
        optimizer step (``sync_gradients``), clip the synchronised gradients, stop on a non-finite norm,
        step and zero. Returns the gradient norm on that micro batch, None on the others."""
        acc = self.accelerator
        norm = None
        if acc.sync_gradients:
            limit = self.max_grad_norm or float("inf")  # None or 0: no clipping, the norm still checked
            total = acc.clip_grad_norm_(self.model.parameters(), limit)
            if total is not None:
                norm = float(total)
                if not math.isfinite(norm):
                    raise TrainingDiverged(
                        f"the gradient norm is {norm} at update {self.update}; the run stops before "
                        "this step (weights not updated, nothing saved). Lower --learning_rate, check the reward scale, "
                        f"or resume from the last checkpoint in {self.output_dir}"
                    )
        self.optimizer.step()
        self.optimizer.zero_grad()
        return norm
